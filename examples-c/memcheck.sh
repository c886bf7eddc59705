#!/usr/bin/env bash
# Runs one C program linked with libota under valgrind memcheck; the test wrapper of the
# memcheck run (cmake -DOTA_MEMCHECK=ON, tests/sanitizers.sh).
#
# usage: memcheck.sh PROGRAM [ARGS...]
# env:   OTA_MEMCHECK_LOG_DIR  where the valgrind log of each run goes (default ./memcheck-logs);
#                              tests/sanitizers.sh sums these logs up
#        VALGRIND              the valgrind binary (default: valgrind on PATH)
#        OTA_MEMCHECK_ARGS     extra valgrind options, split on spaces (e.g. --gen-suppressions=all)
# exit:  the program's exit code, or 97 when memcheck found an error or a definitely lost block
#        (--error-exitcode); the log is then copied to stderr. 96 when valgrind is missing.
#
# What counts: invalid reads/writes, uses of uninitialised values, bad frees, overlapping
# copies, and definitely lost blocks (a leaked OTA or MQTT handle shows up as one). "Possibly
# lost" and "still reachable" do not: at exit, libota's process-wide settings (identity,
# connection settings) are still reachable, and Rust's std keeps each thread's handle (a 48-byte
# block, e.g. from the tokio runtime rumqttc builds) in thread-local storage through a pointer
# into the block, which memcheck calls "possibly lost"; threads alive at exit() look the same.
set -uo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: memcheck.sh PROGRAM [ARGS...]" >&2
    exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
valgrind_bin=${VALGRIND:-$(command -v valgrind || true)}
if [[ -z $valgrind_bin || ! -x $valgrind_bin ]]; then
    echo "FAIL: valgrind is not installed (apt-get install valgrind)" >&2
    exit 96
fi

log_dir=${OTA_MEMCHECK_LOG_DIR:-$PWD/memcheck-logs}
mkdir -p "$log_dir"
log=$(mktemp "$log_dir/$(basename "$1").XXXXXX")
mv "$log" "$log.log"
log=$log.log

extra=()
if [[ -n ${OTA_MEMCHECK_ARGS:-} ]]; then
    read -r -a extra <<<"$OTA_MEMCHECK_ARGS"
fi

echo "memcheck: $* (log: $log)" >&2
"$valgrind_bin" --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --error-exitcode=97 --num-callers=40 \
    --suppressions="$here/valgrind.supp" --log-file="$log" "${extra[@]}" "$@"
rc=$?

errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tail -n 1 | tr -d ,)
echo "memcheck: $(basename "$1") exit $rc, ${errors:-?} errors, ${lost:-0} bytes definitely lost" >&2
if [[ $rc -eq 97 || ${errors:-1} != 0 ]]; then
    echo "----- valgrind log $log -----" >&2
    cat "$log" >&2
fi
if [[ -z $errors ]]; then
    # No summary: valgrind itself failed or was killed (e.g. a test timeout).
    echo "FAIL: no memcheck ERROR SUMMARY in $log" >&2
    [[ $rc -ne 0 ]] || rc=97
fi
exit "$rc"
