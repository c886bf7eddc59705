#!/usr/bin/env bash
# Fuzzes every target for a bounded time and prints what each did.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Builds all targets once (cargo-fuzz: AddressSanitizer, debug assertions, overflow checks),
# on the stable toolchain too (RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags), then runs
# each for SECONDS_PER_TARGET. New inputs go to a scratch corpus under the target dir; the seeds
# in fuzz/corpus/ and the saved findings in fuzz/regressions/ are read, never written. Exits
# non-zero when any target crashed, leaked, timed out or failed a check, after printing where
# the input was saved and how to replay it. Installs cargo-fuzz when it is missing.
set -euo pipefail

seconds=${1:-60}
shift || true
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$fuzz")
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for f in "$fuzz"/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-fuzz}
export RUSTC_BOOTSTRAP=1
# A fuzz build must not rewrite the checked-in include/ota.h.
export OTA_SKIP_HEADER=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building the fuzz targets"
start=$(date +%s)
(cd "$root" && cargo fuzz build --target-dir "$CARGO_TARGET_DIR")
echo "== built in $(($(date +%s) - start)) s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin=$CARGO_TARGET_DIR/$host/release
work=$CARGO_TARGET_DIR/fuzz-run
failed=()
declare -A execs rate added verdict

for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    artifacts=$work/artifacts/$t/
    log=$work/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    reads=("$corpus")
    for dir in "$fuzz/corpus/$t" "$fuzz/regressions/$t"; do
        [[ -d $dir ]] && reads+=("$dir")
    done
    dict=()
    case $t in
        json | decode_* | files) dict=(-dict="$fuzz/json.dict") ;;
    esac
    echo "== $t: ${seconds} s"
    rc=0
    "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts" "${dict[@]}" "${reads[@]}" >"$log" 2>&1 || rc=$?
    grep -E '^(#[0-9]+ +DONE|stat::)' "$log" || true
    execs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate[$t]=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    added[$t]=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    if [[ $rc -eq 0 ]]; then
        verdict[$t]=ok
    else
        verdict[$t]="FAILED (exit $rc)"
        failed+=("$t")
        echo "---- $t failed; the end of its log ($log):"
        tail -n 60 "$log"
        grep -E 'Test unit written to|artifact' "$log" | sed 's/^/    /' || true
        for a in $(sed -n 's/.*Test unit written to //p' "$log"); do
            echo "    replay: $bin/$t $a"
        done
    fi
done

echo
printf '%-16s %14s %10s %10s  %s\n' target executions exec/s "new units" result
for t in "${targets[@]}"; do
    printf '%-16s %14s %10s %10s  %s\n' "$t" "${execs[$t]:-?}" "${rate[$t]:-?}" \
        "${added[$t]:-?}" "${verdict[$t]}"
done
echo "total wall time: $(($(date +%s) - start)) s (corpora and logs under $work)"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    echo "Fix the bug, save the input under fuzz/regressions/<target>/ and check that"
    echo "'cargo test --test fuzz_regressions' replays it."
    exit 1
fi
