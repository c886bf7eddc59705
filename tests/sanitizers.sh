#!/usr/bin/env bash
# The C API under sanitizers: builds the release library, then runs the ctest suite of examples-c
# twice (the fault matrix's core cases only: label matrix_extended left out, see CMakeLists.txt):
#   1. valgrind memcheck: every C program linked with libota runs under examples-c/memcheck.sh
#      (cmake -DOTA_MEMCHECK=ON; the simulator, the broker, python and the Rust example run
#      bare). Any memcheck error or definitely-lost block fails its test.
#   2. ASan + UBSan: the C programs built with -fsanitize=address,undefined (OTA_C_SANITIZE=ON)
#      and linked with the uninstrumented libota.a, LeakSanitizer on. Any report fails.
# and then the two-thread firmware (two_thread_firmware.c, a Yield thread beside the FetchYield
# loop) once more:
#   3. ThreadSanitizer, firmware only: built with -fsanitize=thread (OTA_C_TSAN=ON), linked with
#      the uninstrumented libota.so, whose own interceptor calls examples-c/tsan.supp ignores: every
#      access of the firmware's code (its callbacks too) is checked, libota's internals are not.
#   4. ThreadSanitizer, whole process: libota.a and the std it links built with
#      -Zsanitizer=thread -Zbuild-std (nightly + rust-src, installed with rustup when missing),
#      the firmware as in 3, one runtime (rustc's), no suppressions: libota's locks and atomics
#      are visible, so its internals are checked too.
#      Any report fails either run.
# Then prints a summary (tests, memcheck errors, definitely lost bytes, sanitizer reports) and
# exits non-zero on any failure. Installs valgrind, cmake, mosquitto, gcc, pkg-config and
# python3 with apt when missing, as tests/run.sh does.
#
# env: OTA_REQUIRE_MOSQUITTO=required (tests that need Mosquitto fail instead of skip; CI sets
#      it), CARGO_TARGET_DIR (default: target; the ctest build trees go under
#      $CARGO_TARGET_DIR/sanitizers/)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
start=$SECONDS

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v cmake >/dev/null || missing+=(cmake)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v cc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "cannot install ${missing[*]}: not root and no sudo" >&2
    fi
fi
if ! command -v valgrind >/dev/null; then
    echo "FAIL: valgrind is not installed and could not be installed" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
work=$target/sanitizers

step "release build (libota.a, libota.so, ota-cloud, the Rust example)"
CARGO_TARGET_DIR=$target cargo build --release -p ota -p ota-cloud --lib --bins --examples

# "N% tests passed, F tests failed out of T" -> "T F"
ctest_counts() {
    sed -n 's/.*tests passed, \([0-9]*\) tests\{0,1\} failed out of \([0-9]*\).*/\2 \1/p' "$1" | tail -n 1
}

# --- 1. valgrind memcheck ---------------------------------------------------------------------
step "ctest under valgrind memcheck"
mc_build=$work/memcheck
mc_logs=$work/memcheck-logs
rm -rf "$mc_logs"
mkdir -p "$mc_logs"
cmake -S examples-c -B "$mc_build" -DOTA_BUILD_RUST=OFF -DOTA_CARGO_TARGET_DIR="$target" \
    -DOTA_C_SANITIZE=OFF -DOTA_MEMCHECK=ON >/dev/null
cmake --build "$mc_build"
set +e
OTA_MEMCHECK_LOG_DIR=$mc_logs ctest --test-dir "$mc_build" -LE matrix_extended --output-on-failure 2>&1 | tee "$work/memcheck-ctest.txt"
mc_rc=${PIPESTATUS[0]}
set -e

mc_processes=0
mc_errors=0
mc_lost=0
mc_broken=0
for log in "$mc_logs"/*.log; do
    [[ -e $log ]] || continue
    mc_processes=$((mc_processes + 1))
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
    lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tail -n 1 | tr -d ,)
    if [[ -z $errors ]]; then
        echo "memcheck: no ERROR SUMMARY in $log (valgrind killed or crashed)" >&2
        mc_broken=$((mc_broken + 1))
        continue
    fi
    mc_errors=$((mc_errors + errors))
    mc_lost=$((mc_lost + ${lost:-0}))
    if [[ $errors != 0 ]]; then
        echo "----- $log -----"
        cat "$log"
    fi
done
read -r mc_tests mc_failed <<<"$(ctest_counts "$work/memcheck-ctest.txt")"

# --- 2. ASan + UBSan --------------------------------------------------------------------------
step "ctest with the C programs under AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer on)"
as_build=$work/asan
as_logs=$work/asan-logs
rm -rf "$as_logs"
mkdir -p "$as_logs"
cmake -S examples-c -B "$as_build" -DOTA_BUILD_RUST=OFF -DOTA_CARGO_TARGET_DIR="$target" \
    -DOTA_C_SANITIZE=ON -DOTA_MEMCHECK=OFF -DOTA_TEST_WRAPPER= >/dev/null
cmake --build "$as_build"
# Reports go to files (one per process) so that passing tests are counted too; exit codes 96/95
# differ from every code a test program or script uses on its own.
set +e
ASAN_OPTIONS="detect_leaks=1:exitcode=96:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:log_path=$as_logs/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=95:log_path=$as_logs/ubsan" \
    ctest --test-dir "$as_build" -LE matrix_extended --output-on-failure 2>&1 | tee "$work/asan-ctest.txt"
as_rc=${PIPESTATUS[0]}
set -e
as_reports=0
for log in "$as_logs"/*; do
    [[ -e $log ]] || continue
    as_reports=$((as_reports + $(grep -c -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log" || true)))
    echo "----- $log -----"
    cat "$log"
done
read -r as_tests as_failed <<<"$(ctest_counts "$work/asan-ctest.txt")"

# --- 3. ThreadSanitizer (two-thread firmware) --------------------------------------------------
step "the two-thread firmware under ThreadSanitizer (libota.so uninstrumented, examples-c/tsan.supp)"
ts_build=$work/tsan
ts_logs=$work/tsan-logs
rm -rf "$ts_logs"
mkdir -p "$ts_logs"
cmake -S examples-c -B "$ts_build" -DOTA_BUILD_RUST=OFF -DOTA_CARGO_TARGET_DIR="$target" \
    -DOTA_C_SANITIZE=OFF -DOTA_MEMCHECK=OFF -DOTA_C_TSAN=ON -DOTA_TEST_WRAPPER= >/dev/null
cmake --build "$ts_build" --target two_thread_firmware
set +e
TSAN_OPTIONS="suppressions=$PWD/examples-c/tsan.supp:halt_on_error=1:exitcode=66:second_deadlock_stack=1:log_path=$ts_logs/tsan" \
    ctest --test-dir "$ts_build" -R '^two_thread_firmware' --output-on-failure 2>&1 | tee "$work/tsan-ctest.txt"
ts_rc=${PIPESTATUS[0]}
set -e
ts_reports=0
for log in "$ts_logs"/*; do
    [[ -e $log ]] || continue
    ts_reports=$((ts_reports + $(grep -c 'WARNING: ThreadSanitizer' "$log" || true)))
    echo "----- $log -----"
    cat "$log"
done
read -r ts_tests ts_failed <<<"$(ctest_counts "$work/tsan-ctest.txt")"

# --- 4. ThreadSanitizer (two-thread firmware and libota, both instrumented) ---------------------
step "the two-thread firmware and libota (nightly, -Zsanitizer=thread -Zbuild-std) under ThreadSanitizer"
host=$(rustc -vV | sed -n 's/^host: //p')
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "installing: the nightly toolchain with rust-src (rustup)"
    rustup toolchain install nightly --profile minimal --component rust-src || true
fi
tf_rc=1
tf_reports=0
tf_tests=
tf_failed=
tsan_runtime=$(rustc +nightly --print sysroot 2>/dev/null || true)/lib/rustlib/$host/lib/librustc-nightly_rt.tsan.a
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' || [[ ! -f $tsan_runtime ]]; then
    echo "FAIL: the nightly toolchain with rust-src and its TSan runtime is not installed and could not be (rustup toolchain install nightly --component rust-src)" >&2
else
    RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=$target/tsan \
        cargo +nightly build -Zbuild-std --target "$host" --release -p ota --lib
    tf_build=$work/tsan-full
    tf_logs=$work/tsan-full-logs
    rm -rf "$tf_logs"
    mkdir -p "$tf_logs"
    cmake -S examples-c -B "$tf_build" -DOTA_BUILD_RUST=OFF -DOTA_CARGO_TARGET_DIR="$target" \
        -DOTA_LIB_DIR="$target/tsan/$host/release" -DOTA_C_SANITIZE=OFF -DOTA_MEMCHECK=OFF \
        -DOTA_C_TSAN=ON -DOTA_TSAN_RUNTIME="$tsan_runtime" -DOTA_TEST_WRAPPER= >/dev/null
    cmake --build "$tf_build" --target two_thread_firmware
    set +e
    TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:log_path=$tf_logs/tsan" \
        ctest --test-dir "$tf_build" -R '^two_thread_firmware' --output-on-failure 2>&1 | tee "$work/tsan-full-ctest.txt"
    tf_rc=${PIPESTATUS[0]}
    set -e
    for log in "$tf_logs"/*; do
        [[ -e $log ]] || continue
        tf_reports=$((tf_reports + $(grep -c 'WARNING: ThreadSanitizer' "$log" || true)))
        echo "----- $log -----"
        cat "$log"
    done
    read -r tf_tests tf_failed <<<"$(ctest_counts "$work/tsan-full-ctest.txt")"
fi

# --- summary ----------------------------------------------------------------------------------
elapsed=$((SECONDS - start))
step "sanitizer summary (${elapsed} s)"
broken_note=
if ((mc_broken)); then
    broken_note=", $mc_broken without a memcheck summary"
fi
printf 'memcheck: %s tests, %s failed; %d processes checked: %d errors, %d bytes definitely lost%s\n' \
    "${mc_tests:-?}" "${mc_failed:-?}" "$mc_processes" "$mc_errors" "$mc_lost" "$broken_note"
printf 'asan:     %s tests, %s failed; %d AddressSanitizer/LeakSanitizer/UBSan reports\n' \
    "${as_tests:-?}" "${as_failed:-?}" "$as_reports"
printf 'tsan:     %s tests, %s failed; %d ThreadSanitizer reports (firmware code; libota uninstrumented)\n' \
    "${ts_tests:-?}" "${ts_failed:-?}" "$ts_reports"
printf 'tsan all: %s tests, %s failed; %d ThreadSanitizer reports (firmware and libota instrumented)\n' \
    "${tf_tests:-?}" "${tf_failed:-?}" "$tf_reports"

failed=0
if [[ $mc_rc -ne 0 || -z ${mc_tests:-} || $mc_errors -ne 0 || $mc_lost -ne 0 || $mc_broken -ne 0 || $mc_processes -eq 0 ]]; then
    echo "FAIL: memcheck run" >&2
    failed=1
fi
if [[ $as_rc -ne 0 || -z ${as_tests:-} || $as_reports -ne 0 ]]; then
    echo "FAIL: ASan/UBSan run" >&2
    failed=1
fi
# No two-thread test in the run (e.g. renamed) fails too: this step must not pass vacuously.
if [[ $ts_rc -ne 0 || -z ${ts_tests:-} || ${ts_tests:-0} -eq 0 || $ts_reports -ne 0 ]]; then
    echo "FAIL: ThreadSanitizer run" >&2
    failed=1
fi
if [[ $tf_rc -ne 0 || -z ${tf_tests:-} || ${tf_tests:-0} -eq 0 || $tf_reports -ne 0 ]]; then
    echo "FAIL: ThreadSanitizer run with libota instrumented" >&2
    failed=1
fi
total=$(( ${mc_tests:-0} + ${as_tests:-0} + ${ts_tests:-0} + ${tf_tests:-0} ))
bad=$(( ${mc_failed:-0} + ${as_failed:-0} + ${ts_failed:-0} + ${tf_failed:-0} ))
if ((failed && bad == 0)); then
    bad=1
fi
echo "sanitizers: $((total - bad)) passed, $bad failed"
exit "$failed"
