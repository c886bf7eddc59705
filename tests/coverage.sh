#!/usr/bin/env bash
# Line coverage of the library (src/): runs the `ota` package's unit and integration tests
# under cargo-tarpaulin (installed from crates.io when missing) and prints the coverage of each
# file under src/, the total, and the "engine" (src/protocol/*, src/ota/*, src/digest.rs,
# src/source.rs, src/resume.rs). The tools/* crates and the examples are not measured.
#
#   tests/coverage.sh
#
# Engine: tarpaulin's `llvm` engine (-C instrument-coverage; tarpaulin reads the profiles
# itself, so no llvm-tools are needed). It follows the child processes the tests spawn
# (this test binary re-run as a device, the C API probes) and the worker threads, which the
# `ptrace` engine handles less well. Every test runs; tests that need Mosquitto skip when it
# is not installed (OTA_REQUIRE_MOSQUITTO is cleared: coverage does not require it).
#
# Environment:
#   OTA_COVERAGE_DIR         build and report directory (default target/coverage: its own,
#                            because instrumented builds would otherwise evict normal ones)
#   OTA_COVERAGE_MIN_ENGINE  fail when the engine's line coverage is below this percentage
#                            (default 90; 0 disables the check)
#
# Output: the table on stdout; target/coverage/report/lcov.info and tarpaulin-report.json
# (per-line data, e.g. for an editor); the full test log in target/coverage/tarpaulin.log.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${OTA_COVERAGE_DIR:-target/coverage}
min_engine=${OTA_COVERAGE_MIN_ENGINE:-90}
unset OTA_REQUIRE_MOSQUITTO

if ! cargo tarpaulin --version >/dev/null 2>&1; then
    echo "installing cargo-tarpaulin (crates.io)"
    cargo install cargo-tarpaulin --locked --version 0.37.5
fi

mkdir -p "$dir/report"
rm -f "$dir/report/lcov.info"
log="$dir/tarpaulin.log"
echo "building and running the ota tests under coverage (log: $log)"
start=$(date +%s)
status=0
cargo tarpaulin -p ota --tests --engine llvm \
    --target-dir "$dir" --skip-clean --color never \
    --include-files 'src/*' \
    --out Lcov --out Json --output-dir "$dir/report" \
    --timeout 300 --no-fail-fast >"$log" 2>&1 || status=$?
elapsed=$(($(date +%s) - start))

# What ran: one line per test binary with its result.
awk '
    /running .*\/deps\// { n = $0; sub(/.*\/deps\//, "", n); sub(/-[0-9a-f]+$/, "", n) }
    /^test result:/ { printf "  %-20s %s\n", n, $0 }
' "$log"

if [ ! -s "$dir/report/lcov.info" ]; then
    tail -n 40 "$log" >&2
    echo "coverage: no report (tarpaulin exit $status); full log: $log" >&2
    exit 1
fi

# Per file, the total and the engine, from the LCOV line records (DA:line,hits).
awk -v root="$PWD/" -v min="$min_engine" '
    /^SF:/ {
        f = substr($0, 4)
        if (index(f, root) == 1) f = substr(f, length(root) + 1)
        next
    }
    /^DA:/ {
        split(substr($0, 4), a, ",")
        total[f]++; if (a[2] > 0) hit[f]++
        next
    }
    function pct(h, t) { return t ? 100 * h / t : 100 }
    function engine(f) {
        return f ~ /^src\/(protocol|ota)\// || f == "src/digest.rs" || f == "src/source.rs" \
            || f == "src/resume.rs"
    }
    END {
        n = 0
        for (f in total) names[++n] = f
        # insertion sort: awk has no portable sort
        for (i = 2; i <= n; i++) {
            v = names[i]; j = i - 1
            while (j > 0 && names[j] > v) { names[j + 1] = names[j]; j-- }
            names[j + 1] = v
        }
        printf "\n%-28s %9s %7s\n", "file", "lines", "cover"
        for (i = 1; i <= n; i++) {
            f = names[i]; h = hit[f] + 0
            printf "%-28s %4d/%-4d %6.1f%%%s\n", f, h, total[f], pct(h, total[f]), \
                engine(f) ? "  (engine)" : ""
            T += total[f]; H += h
            if (engine(f)) { ET += total[f]; EH += h }
        }
        printf "%-28s %4d/%-4d %6.1f%%\n", "engine", EH, ET, pct(EH, ET)
        printf "%-28s %4d/%-4d %6.1f%%\n", "total src/", H, T, pct(H, T)
        if (min > 0 && pct(EH, ET) < min) {
            printf "engine coverage %.1f%% is below %s%%\n", pct(EH, ET), min > "/dev/stderr"
            exit 2
        }
    }
' "$dir/report/lcov.info" || status=$((status ? status : $?))

echo "coverage run: ${elapsed}s; per-line report: $dir/report/lcov.info; log: $log"
if [ "$status" -ne 0 ]; then
    echo "coverage: failed (exit $status; 2: engine below ${min_engine}%, else see $log)" >&2
fi
exit "$status"
