#!/usr/bin/env bash
# The fault matrix (issue 11): one misbehaving download per case, with sequential_writer.c (firmware
# written like the iotkit v2.3 OTA sample, appending what FetchYield returns, never seeking back)
# as the device, mosquitto as the broker and `ota-cloud serve` as the platform and firmware server.
# Each case ends in exactly one of two outcomes (the stream invariant: include/ota.h's opening
# comment, README.md):
#   VALID    writer exit 0, its file byte-identical to the served image, cloud "outcome: success"
#   INVALID  writer exit 2 (CHECK_FIRMWARE 0), cloud "outcome: failed ... reports=1"
# with no "violation:" from the cloud; anything else (exit 3: the loop did not end in time, a
# wrong file passed as valid, a second failure report, ...) fails the case. Each case declares
# the outcome it must have; a two-cycle case (supersede) declares one per cycle ("INVALID+VALID").
# The last line of a case is `matrix: CASE -> OUTCOME (expected EXPECTED)`, OUTCOME UNCLASSIFIED
# when the case ended in neither (the reasons are printed before it, the logs after).
# An older ota-cloud, without the outcome line and the flags in contract_flags below, prints no
# outcome line: its verdict is then taken from its exit status and log, and the cases that need
# those flags fail at once.
#
# usage: run_fault_matrix.sh WRITER_BIN OTA_CLOUD_BIN CASE     one case (exit 0 as expected)
#        run_fault_matrix.sh WRITER_BIN OTA_CLOUD_BIN all      every case, then a summary table
#        run_fault_matrix.sh --list                            the case names, one a line
# env:   OTA_BUF_LEN (writer's bytes per FetchYield, default 16384), OTA_TIMEOUT_S (the writer's
#        bound, default 30; the cloud gets 20 s more), OTA_TEST_WRAPPER (a command the writer is
#        run under, split on spaces, e.g. memcheck.sh; the run a case kills on purpose runs bare),
#        OTA_REQUIRE_MOSQUITTO=required (fail instead of skip without mosquitto),
#        OTA_KEEP_TMP=1 (keep the scratch directory), MOSQUITTO (path to the broker binary)
#        OTA_REQUIRE_DETOOLS=required (the delta cases fail instead of skip without detools)
# exit:  0 the outcome was the expected one, 1 not, 77 skipped (no mosquitto, or detools for a
#        delta case)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

# The image size the fault offsets below are chosen for.
readonly firmware_size=300000
readonly version=2.0.0

# name|protocol|expected outcome|ota-cloud fault flags|extras: cycles=N (OTA_CYCLES),
# kill-after-save=N (OTA_ABORT_AFTER_SAVE in a first run), bound=S (the writer's least bound),
# fresh-url-wait=S (OTA_FRESH_URL_WAIT_S: IOT_OTA_SetFreshUrlWait)
readonly cases=(
    # One per fault flag of ota-cloud, on Aliyun.
    "cut_at|aliyun|VALID|--cut-at 100000|"
    "random_cuts|aliyun|VALID|--random-cuts 4:7|"
    "stall_ms|aliyun|VALID|--stall-ms 300|"
    "stall_at|aliyun|VALID|--stall-at 150000:600|"
    # Longer than the FetchYield timeout: FetchYield returns 0 and the sample reports
    # IOT_OTAP_FETCH_FAILED; the SDK holds that report while it recovers the download.
    "stall_at_beyond_fetch_timeout|aliyun|VALID|--stall-at 150000:2500|"
    "short_body|aliyun|VALID|--short-body 100000|"
    "flip_at|aliyun|INVALID|--flip-at 150000|"
    "ignore_range|aliyun|VALID|--ignore-range|"
    # Not retried (a persistent 5xx is, for most of a minute: fail_first covers those).
    "status_401|aliyun|INVALID|--status 401|"
    "fail_first|aliyun|VALID|--fail-first 503,503|"
    "close_before_headers|aliyun|VALID|--close-before-headers 2|"
    # 403 on the request after the cut; the SDK asks for the upgrade again and gets a fresh URL.
    "expire_after|aliyun|VALID|--expire-after 1 --cut-at 100000|"
    "expire_after_s|aliyun|VALID|--expire-after-s 1 --cut-at 250000|"
    "redirect_loop|aliyun|INVALID|--redirect {self}|"
    "endless_body|aliyun|VALID|--endless-body|"
    "content_length_oversize|aliyun|INVALID|--content-length 400000|"
    "slow_head_ms|aliyun|VALID|--slow-head-ms 2|"
    "huge_head|aliyun|INVALID|--huge-head 32768|"
    # The scenarios of issue 11, on Aliyun.
    "supersede|aliyun|INVALID+VALID|--supersede-at 30|cycles=2"
    "renotify|aliyun|VALID|--renotify-at 30|"
    "cut_then_ignore_range|aliyun|VALID|--cut-at 150000 --ignore-range|"
    "not_found|aliyun|INVALID|--status 404|"
    "expired_url_refreshed|aliyun|VALID|--expire-after 2 --cut-at 100000,200000|"
    # The SDK waits IOT_OTA_SetFreshUrlWait's time (default 60 s) for a fresh URL first.
    "expired_url_not_refreshed|aliyun|INVALID|--expire-after 1 --cut-at 100000 --ignore-requests|fresh-url-wait=5"
    "kill_after_save|aliyun|VALID||kill-after-save=3"
    # The other protocols.
    "sagoo_cut_at|sagoo|VALID|--cut-at 100000|"
    "tencent_cut_at|tencent|VALID|--cut-at 100000|"
    "ucloud_cut_at|ucloud|VALID|--cut-at 100000|"
    "tencent_supersede|tencent|INVALID+VALID|--supersede-at 30|cycles=2"
    # Delta upgrades (issue 17): the writer runs old.bin (OTA_DELTA_OLD, IOT_OTA_SetDeltaSource)
    # and must end with new.bin; the platform serves the detools patch between them (needs
    # detools from PyPI), so fault offsets count in the patch. {new} is new.bin's path.
    "delta_cut_at|sagoo|VALID|--cut-at 3000|delta"
    "delta_kill_after_save|sagoo|VALID|--delta-compression none|delta kill-after-save=3"
    # The same with heatshrink (ota-cloud's default): 64 KiB of new code inserted, so the patch
    # is long enough for three saves; the restart resumes the decompressor's saved state.
    "delta_kill_after_save_heatshrink|sagoo|VALID||delta delta-insert=65536 kill-after-save=3"
    "delta_old_mismatch|sagoo|INVALID|--delta-claim-old {new}|delta"
    # 3-byte FetchYields, fewer than the patch's tail: the call with the image's last bytes
    # must end the download (no INVALID_STATE call after it, no "fetch failed" report).
    "delta_small_calls|sagoo|VALID||delta buf=3 yield-ms=0"
)

# Flags an older simulator may not have (see the opening comment).
readonly contract_flags=(--supersede-at --renotify-at --ignore-requests)

if [[ ${1:-} == --list ]]; then
    for c in "${cases[@]}"; do
        echo "${c%%|*}"
    done
    exit 0
fi

writer=${1:?usage: run_fault_matrix.sh WRITER_BIN OTA_CLOUD_BIN CASE|all (or --list)}
cloud=${2:?usage: run_fault_matrix.sh WRITER_BIN OTA_CLOUD_BIN CASE|all (or --list)}
case_name=${3:?usage: run_fault_matrix.sh WRITER_BIN OTA_CLOUD_BIN CASE|all (or --list)}

if [[ $case_name == all ]]; then
    summary=()
    failed=0
    for c in "${cases[@]}"; do
        name=${c%%|*}
        set +e
        "$BASH" "${BASH_SOURCE[0]}" "$writer" "$cloud" "$name" >"${TMPDIR:-/tmp}/matrix-$name.log" 2>&1
        rc=$?
        set -e
        line=$(grep '^matrix: ' "${TMPDIR:-/tmp}/matrix-$name.log" | tail -n 1)
        [[ $rc -eq 0 ]] || failed=$((failed + 1))
        summary+=("$(printf '%-4s %s' "$([[ $rc -eq 0 ]] && echo ok || echo FAIL)" "${line:-matrix: $name -> (no result, exit $rc)}")")
        echo "${summary[-1]}"
    done
    echo "$((${#cases[@]} - failed)) passed, $failed failed (logs: ${TMPDIR:-/tmp}/matrix-CASE.log)"
    [[ $failed -eq 0 ]]
    exit
fi

spec=
for c in "${cases[@]}"; do
    if [[ ${c%%|*} == "$case_name" ]]; then
        spec=$c
    fi
done
if [[ -z $spec ]]; then
    echo "unknown case $case_name (run_fault_matrix.sh --list)" >&2
    exit 1
fi
IFS='|' read -r _ protocol expected flag_text extras <<<"$spec"
read -r -a fault_flags <<<"$flag_text"
buf_len=${OTA_BUF_LEN:-16384}
yield_ms=${OTA_YIELD_MS:-100}
timeout_s=${OTA_TIMEOUT_S:-30}
cycles=1
kill_after_save=0
fresh_url_wait=0
delta=0
delta_insert=1024
for extra in $extras; do
    case $extra in
    delta) delta=1 ;;
    delta-insert=*) delta_insert=${extra#delta-insert=} ;;
    buf=*) buf_len=${extra#buf=} ;;
    yield-ms=*) yield_ms=${extra#yield-ms=} ;;
    cycles=*) cycles=${extra#cycles=} ;;
    kill-after-save=*) kill_after_save=${extra#kill-after-save=} ;;
    bound=*) timeout_s=$((timeout_s > ${extra#bound=} ? timeout_s : ${extra#bound=})) ;;
    fresh-url-wait=*) fresh_url_wait=${extra#fresh-url-wait=} ;;
    esac
done
read_wrapper
product_key=a1OtaTestPk
device_name=ota_matrix_device
device_secret=MatrixSecretMatrixSecretMatrixSe

find_mosquitto
require_executables "$writer" "$cloud"
if [[ $delta -eq 1 ]] && ! python3 -c "import detools" 2>/dev/null; then
    if [[ ${OTA_REQUIRE_DETOOLS:-} == required ]]; then
        echo "FAIL: detools is not importable (pip install detools) and OTA_REQUIRE_DETOOLS=required" >&2
        exit 1
    fi
    echo "SKIP: detools is not importable (pip install detools)"
    exit 77
fi

# The verdict of the case; anything but the expected outcome makes the case fail.
verdict() {
    echo "matrix: $case_name -> $1 (expected $expected)"
    [[ $1 == "$expected" ]]
}

# A simulator without the contract's additions has no outcome line either: say so instead of
# failing every case on a missing line.
cloud_help=$("$cloud" help 2>&1 || true)
contract_cloud=1
for flag in "${contract_flags[@]}"; do
    if ! grep -q -- "$flag" <<<"$cloud_help"; then
        contract_cloud=0
    fi
done
if [[ $contract_cloud -eq 0 ]]; then
    for flag in "${fault_flags[@]}"; do
        if [[ " ${contract_flags[*]} " == *" $flag "* ]]; then
            echo "FAIL: this ota-cloud has no $flag (contract.md: added on the simulator's branch)" >&2
            verdict UNCLASSIFIED || exit 1
        fi
    done
    echo "note: this ota-cloud predates contract.md (no outcome line): its verdict comes from its exit status and log"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-matrix-XXXXXX")
mosquitto_pid=
cloud_pid=
logs_shown=0

show_logs() {
    if [[ $logs_shown -eq 0 ]]; then
        logs_shown=1
        for log in "$tmp"/writer*.log; do
            [[ -e $log ]] && show_log "$(basename "$log" .log)" "$log"
        done
        show_log "ota-cloud" "$tmp/cloud.log"
        show_log "mosquitto" "$tmp/mosquitto.log"
    fi
}

cleanup() {
    local rc=$?
    for pid in $cloud_pid $mosquitto_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 && $rc -ne 77 ]]; then
        show_logs
    fi
    if [[ -n ${OTA_KEEP_TMP:-} ]]; then
        echo "scratch directory kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

port=$(free_port)
start_mosquitto "$tmp/mosquitto.log"

echo "case $case_name: $protocol, faults: ${flag_text:-none}${extras:+, $extras}; expected $expected"
image_flags=(--firmware-size "$firmware_size" --write-firmware "$tmp/served.bin")
delta_old=
if [[ $delta -eq 1 ]]; then
    # A pair as releases differ: bytes changed every 4 KiB, a block inserted (delta-insert
    # bytes, 1 KiB by default), data appended.
    python3 - "$tmp/old.bin" "$tmp/served.bin" "$firmware_size" "$delta_insert" <<'PY'
import random, sys
rng = random.Random(11)
old = bytearray(rng.getrandbits(8) for _ in range(int(sys.argv[3])))
new = bytearray(old)
for at in range(0, len(new), 4096):
    new[at] ^= 0x5A
new[150000:150000] = bytes(rng.getrandbits(8) for _ in range(int(sys.argv[4])))
new += bytes(rng.getrandbits(8) for _ in range(2048))
open(sys.argv[1], "wb").write(old)
open(sys.argv[2], "wb").write(new)
PY
    image_flags=(--firmware "$tmp/served.bin" --delta-from "$tmp/old.bin")
    delta_old=$tmp/old.bin
    for i in "${!fault_flags[@]}"; do
        fault_flags[i]=${fault_flags[i]//\{new\}/$tmp/served.bin}
    done
fi
"$cloud" serve --protocol "$protocol" --broker "127.0.0.1:$port" --product-key "$product_key" \
    --device-name "$device_name" "${image_flags[@]}" \
    --version "$version" --timeout-s "$((timeout_s + 20))" "${fault_flags[@]}" >"$tmp/cloud.log" 2>&1 &
cloud_pid=$!

# The device reports its version once at start-up; the cloud must be subscribed before that.
ready=0
for _ in $(seq 100); do
    if grep -q "waiting for the device's version report" "$tmp/cloud.log" 2>/dev/null; then
        ready=1
        break
    fi
    if ! kill -0 "$cloud_pid" 2>/dev/null; then
        echo "FAIL: ota-cloud exited before it was ready" >&2
        verdict UNCLASSIFIED || exit 1
    fi
    sleep 0.1
done
if [[ $ready -eq 0 ]]; then
    echo "note: ota-cloud printed no ready line within 10 s; starting the device anyway"
fi

# run_writer LOG [ENV=VALUE...]: runs the device once; its exit code in $writer_rc.
run_writer() {
    local log=$1
    shift
    local run=("${wrapper[@]}")
    if [[ ${1:-} == --bare ]]; then
        run=()
        shift
    fi
    set +e
    env IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT="$port" \
        OTA_PRODUCT_KEY=$product_key OTA_DEVICE_NAME=$device_name OTA_DEVICE_SECRET=$device_secret \
        OTA_FIRMWARE_VERSION=1.0.0 OTA_PROTOCOL="$protocol" OTA_BUF_LEN="$buf_len" OTA_YIELD_MS="$yield_ms" \
        OTA_TIMEOUT_S="$timeout_s" OTA_CYCLES="$cycles" OTA_FRESH_URL_WAIT_S="$fresh_url_wait" \
        OTA_DELTA_OLD="$delta_old" "$@" \
        "${run[@]}" "$writer" "$tmp/ota.bin" >"$log" 2>&1
    writer_rc=$?
    set -e
}

reasons=()
if [[ $kill_after_save -gt 0 ]]; then
    # The power cut: abort() inside the N-th save of the breakpoint record. This run is not
    # wrapped: a process killed mid-download has nothing to say about leaks.
    run_writer "$tmp/writer-killed.log" --bare OTA_BREAKPOINT_FILE="$tmp/breakpoint.rec" \
        OTA_ABORT_AFTER_SAVE="$kill_after_save"
    echo "killed run: exit code $writer_rc (expected 134, SIGABRT)"
    if [[ $writer_rc -ne 134 ]] || ! grep -q "^writer: abort() after save $kill_after_save" "$tmp/writer-killed.log"; then
        reasons+=("the writer was not killed by its abort() after save $kill_after_save (exit $writer_rc)")
    fi
    run_writer "$tmp/writer.log" OTA_BREAKPOINT_FILE="$tmp/breakpoint.rec"
    resumed_at=$(sed -n 's/^writer: cycle 1 fetching .* from byte \([0-9]*\)$/\1/p' "$tmp/writer.log" | head -n 1)
    echo "restarted run: resumed at byte ${resumed_at:-?}"
    if [[ -z $resumed_at || $resumed_at -eq 0 ]]; then
        reasons+=("the restarted writer did not resume (offset ${resumed_at:-none})")
    fi
else
    run_writer "$tmp/writer.log"
fi

# The cloud ends by itself: at once on success, after its grace on a failure report.
for _ in $(seq 200); do
    kill -0 "$cloud_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$cloud_pid" 2>/dev/null; then
    reasons+=("ota-cloud still running 20 s after the device exited")
    kill "$cloud_pid" 2>/dev/null || true
fi
set +e
wait "$cloud_pid"
cloud_rc=$?
set -e
cloud_pid=

# ---- classification ----
expected_image=$tmp/served.bin
target=$version
if [[ $expected == *+* ]]; then
    # A superseded first cycle: the second downloads the other image.
    expected_image=$tmp/served.bin.next
    target=$version.1
fi

mapfile -t cycle_outcomes < <(sed -n 's/^writer: cycle [0-9]* -> \([A-Z]*\)$/\1/p' "$tmp/writer.log")
writer_outcome=$(IFS=+; echo "${cycle_outcomes[*]}")
last_cycle=
earlier_cycles=()
if [[ ${#cycle_outcomes[@]} -gt 0 ]]; then
    last_cycle=${cycle_outcomes[${#cycle_outcomes[@]} - 1]}
    earlier_cycles=("${cycle_outcomes[@]:0:${#cycle_outcomes[@]} - 1}")
fi
echo "writer: exit code $writer_rc, cycles: ${writer_outcome:-none}"

mapfile -t outcome_lines < <(grep '^outcome: ' "$tmp/cloud.log" || true)
violations=$(grep -cE '^violation:|protocol violation' "$tmp/cloud.log" || true)
if [[ $contract_cloud -eq 1 || ${#outcome_lines[@]} -gt 0 ]]; then
    if [[ ${#outcome_lines[@]} -ne 1 ]]; then
        reasons+=("ota-cloud printed ${#outcome_lines[@]} outcome lines, not 1")
    fi
    cloud_outcome=${outcome_lines[0]:-}
else
    # An older ota-cloud: exit 0 only for success; it stopped at the first failure report.
    failure_reports=$(grep -cE 'device reports fail' "$tmp/cloud.log" || true)
    if [[ $cloud_rc -eq 0 ]]; then
        cloud_outcome="outcome: success $target"
    elif [[ $failure_reports -gt 0 ]]; then
        cloud_outcome="outcome: failed $target reports=$failure_reports"
    else
        cloud_outcome="outcome: $(grep -m1 'upgrade failed' "$tmp/cloud.log" || echo 'no verdict')"
    fi
fi
echo "ota-cloud: exit code $cloud_rc, ${cloud_outcome:-no outcome}, $violations violation(s)"
if [[ $violations -ne 0 ]]; then
    reasons+=("ota-cloud saw $violations protocol violation(s)")
fi

# Each check adds its reason; the outcome stands only when none did.
case $last_cycle in
VALID)
    if ! cmp "$expected_image" "$tmp/ota.bin"; then
        reasons+=("CHECK_FIRMWARE 1 over a file that differs from the served $(basename "$expected_image")")
    fi
    if [[ $writer_rc -ne 0 ]]; then
        reasons+=("the writer's last cycle was VALID but it exited $writer_rc")
    fi
    if [[ $cloud_outcome != "outcome: success $target" || $cloud_rc -ne 0 ]]; then
        reasons+=("the writer says VALID, the cloud '${cloud_outcome:-nothing}' (exit $cloud_rc), not success for $target")
    fi
    ;;
INVALID)
    if [[ $writer_rc -ne 2 ]]; then
        reasons+=("the writer's last cycle was INVALID but it exited $writer_rc")
    fi
    if [[ $cloud_outcome != "outcome: failed $target reports=1"* || $cloud_rc -ne 1 ]]; then
        reasons+=("the writer says INVALID, the cloud '${cloud_outcome:-nothing}' (exit $cloud_rc), not one failure report for $target")
    fi
    ;;
*)
    reasons+=("the writer ended its last cycle ${last_cycle:-without a cycle line} (exit $writer_rc)")
    ;;
esac
# A delta case serves a patch, and a VALID one was made by applying it (not by a plain image).
if [[ $delta -eq 1 ]]; then
    if ! grep -q '^delta: old .* patch [0-9]* bytes' "$tmp/cloud.log"; then
        reasons+=("ota-cloud did not serve a delta patch")
    fi
    if [[ $last_cycle == VALID ]] && ! grep -qE 'ota::ota::delta: delta patch \(|resuming the delta patch' "$tmp/writer.log"; then
        reasons+=("the writer's SDK did not apply a patch")
    fi
    # After a power cut the restarted writer goes on inside the patch, not from its start.
    if [[ $kill_after_save -gt 0 ]] && ! grep -q 'resuming the delta patch' "$tmp/writer.log"; then
        reasons+=("the restarted writer did not resume the delta patch")
    fi
fi
# Every cycle before the last ends INVALID, never anything else.
for o in "${earlier_cycles[@]}"; do
    if [[ $o != INVALID ]]; then
        reasons+=("an earlier cycle ended $o")
    fi
done
if [[ $expected == *+* && $protocol =~ ^(aliyun|sagoo)$ ]] && ! grep -q 'supersed' "$tmp/cloud.log"; then
    reasons+=("the superseded upgrade's failure report does not say \"superseded\"")
fi

outcome=$writer_outcome
if [[ ${#reasons[@]} -gt 0 ]]; then
    for r in "${reasons[@]}"; do
        echo "FAIL: $r" >&2
    done
    outcome=UNCLASSIFIED
fi
verdict "$outcome"
