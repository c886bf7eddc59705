#!/usr/bin/env bash
# Packages and downloads over MQTT (issue 16) under ctest: package_example.c against
# `ota-cloud serve --files-sizes ... | --firmware-size ... [--mqtt-download]` through mosquitto,
# one case per run. Every case checks, besides its own assertions below:
#   VALID    the example exits 0 and says "package: 2.0.0 -> VALID", every file it checked is
#            VALID, every served file (ota-cloud --write-files) is byte-identical to the one it
#            stored, the cloud prints "outcome: success 2.0.0" and exits 0
#   INVALID  the example exits 2, the file the fault hits (bad=I) is the only one it checked
#            INVALID and the last one it fetched, the files before it are byte-identical, the
#            cloud prints "outcome: failed 2.0.0 reports=1" (one failure report for the
#            package) and exits 1, and never hears version 2.0.0
# and no "violation:" line from the cloud. The fault flags mean: over HTTP a cut is resumed with
# Range, a flipped byte makes a bad file (INVALID); over MQTT a cut drops a block's reply and a
# flipped byte fails the block's CRC, both asked again (VALID).
# The last line of a case is `package: CASE -> OUTCOME (expected EXPECTED)`, OUTCOME UNCLASSIFIED
# when a check failed (the reasons are printed before it, the logs after).
#
# usage: run_package_test.sh EXAMPLE_BIN OTA_CLOUD_BIN CASE     one case (exit 0 as expected)
#        run_package_test.sh --list                              the case names, one a line
# env:   OTA_TIMEOUT_S (each run of the example, default 25; the cloud gets 30 s more),
#        OTA_TEST_WRAPPER (a command the example is run under, split on spaces; the run a case
#        kills on purpose runs bare), OTA_REQUIRE_MOSQUITTO=required (fail instead of skip
#        without mosquitto), OTA_KEEP_TMP=1 (keep the scratch directory), MOSQUITTO
# exit:  0 the outcome was the expected one, 1 not, 77 skipped (no mosquitto)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

readonly version=2.0.0
readonly block_size=5120
# Three files: a cut or flip at an offset past the first file's end falls in the second.
readonly three=60000,240000,30000

# name|protocol|transport|files|expected|ota-cloud fault flags|extras
#   files: sizes for --files-sizes (file1.bin, ...), or single:N (one image, firmware.bin)
#   extras: bad=I (INVALID: file I, from 1, is the bad one), cut=NAME (HTTP: NAME is asked for
#   twice, the second time from where the cut left it), kill-after-bytes=N (a first run aborts
#   after storing N bytes, a second run resumes), resume=I (the second run starts in file I,
#   past byte 0)
readonly cases=(
    "package_http_cut|aliyun|http|$three|VALID|--cut-at 100000|cut=file2.bin"
    "package_http_cut_sagoo|sagoo|http|$three|VALID|--cut-at 100000|cut=file2.bin"
    # The byte flips in every response that sends it; file 2 is the first to get one.
    "package_http_flip|aliyun|http|$three|INVALID|--flip-at 100000|bad=2"
    "package_http_flip_sagoo|sagoo|http|$three|INVALID|--flip-at 20000|bad=1"
    # Over MQTT each fault fires once: the flip in file 1, the cut in file 2.
    "package_mqtt_cut_flip|aliyun|mqtt|$three|VALID|--cut-at 100000 --flip-at 20000|"
    "package_mqtt_cut_flip_sagoo|sagoo|mqtt|$three|VALID|--cut-at 100000 --flip-at 20000|"
    "mqtt_single_cut_flip|aliyun|mqtt|single:150000|VALID|--cut-at 60000 --flip-at 20000|"
    "mqtt_single_cut_flip_sagoo|sagoo|mqtt|single:150000|VALID|--cut-at 60000 --flip-at 20000|"
    "package_resume_after_kill|aliyun|http|$three|VALID||kill-after-bytes=180000 resume=2"
    "mqtt_resume_after_kill|aliyun|mqtt|single:300000|VALID||kill-after-bytes=150000 resume=1"
)

if [[ ${1:-} == --list ]]; then
    for c in "${cases[@]}"; do
        echo "${c%%|*}"
    done
    exit 0
fi

example=${1:?usage: run_package_test.sh EXAMPLE_BIN OTA_CLOUD_BIN CASE (or --list)}
cloud=${2:?usage: run_package_test.sh EXAMPLE_BIN OTA_CLOUD_BIN CASE (or --list)}
case_name=${3:?usage: run_package_test.sh EXAMPLE_BIN OTA_CLOUD_BIN CASE (or --list)}

spec=
for c in "${cases[@]}"; do
    if [[ ${c%%|*} == "$case_name" ]]; then
        spec=$c
    fi
done
if [[ -z $spec ]]; then
    echo "unknown case $case_name (run_package_test.sh --list)" >&2
    exit 1
fi
IFS='|' read -r _ protocol transport files expected flag_text extras <<<"$spec"
read -r -a fault_flags <<<"$flag_text"
timeout_s=${OTA_TIMEOUT_S:-25}
bad=0
cut_file=
kill_after_bytes=0
resume_file=0
for extra in $extras; do
    case $extra in
    bad=*) bad=${extra#bad=} ;;
    cut=*) cut_file=${extra#cut=} ;;
    kill-after-bytes=*) kill_after_bytes=${extra#kill-after-bytes=} ;;
    resume=*) resume_file=${extra#resume=} ;;
    esac
done
read_wrapper
product_key=a1OtaTestPk
device_name=ota_package_device
device_secret=PackageSecretPackageSecretPackag

find_mosquitto
require_executables "$example" "$cloud"

verdict() {
    echo "package: $case_name -> $1 (expected $expected)"
    [[ $1 == "$expected" ]]
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-package-XXXXXX")
mosquitto_pid=
cloud_pid=

cleanup() {
    local rc=$?
    for pid in $cloud_pid $mosquitto_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 && $rc -ne 77 ]]; then
        for log in "$tmp"/device*.log; do
            [[ -e $log ]] && show_log "$(basename "$log" .log)" "$log"
        done
        show_log "ota-cloud" "$tmp/cloud.log"
        show_log "mosquitto" "$tmp/mosquitto.log"
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

transfer_flags=()
device_env=()
if [[ $transport == mqtt ]]; then
    transfer_flags=(--mqtt-download --block-size "$block_size")
    device_env=(OTA_MQTT_BLOCK_SIZE="$block_size")
fi
if [[ $files == single:* ]]; then
    file_flags=(--firmware-size "${files#single:}")
else
    file_flags=(--files-sizes "$files")
fi

echo "case $case_name: $protocol over $transport, files $files, faults: ${flag_text:-none}${extras:+, $extras}; expected $expected"
"$cloud" serve --protocol "$protocol" --broker "127.0.0.1:$port" --product-key "$product_key" \
    --device-name "$device_name" --version "$version" "${file_flags[@]}" --write-files "$tmp/served" \
    "${transfer_flags[@]}" --timeout-s "$((timeout_s * 2 + 30))" "${fault_flags[@]}" \
    >"$tmp/cloud.log" 2>&1 &
cloud_pid=$!
wait_cloud_ready "$tmp/cloud.log" "$cloud_pid" || verdict UNCLASSIFIED || exit 1

# run_device LOG [--bare] [ENV=VALUE...]: runs the example once; its exit code in $device_rc.
run_device() {
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
        OTA_FIRMWARE_VERSION=1.0.0 OTA_PROTOCOL="$protocol" OTA_BUF_LEN=16384 \
        OTA_TIMEOUT_S="$timeout_s" "${device_env[@]}" "$@" \
        "${run[@]}" "$example" "$tmp/device" >"$log" 2>&1
    device_rc=$?
    set -e
}

reasons=()
if [[ $kill_after_bytes -gt 0 ]]; then
    # The power cut: abort() once N bytes are stored. Not wrapped: a process killed
    # mid-download has nothing to say about leaks.
    run_device "$tmp/device-killed.log" --bare OTA_ABORT_AFTER_BYTES="$kill_after_bytes"
    echo "killed run: exit code $device_rc (expected 134, SIGABRT)"
    if [[ $device_rc -ne 134 ]] || ! grep -q '^package: abort() after' "$tmp/device-killed.log"; then
        reasons+=("the example was not killed by its abort() after $kill_after_bytes bytes (exit $device_rc)")
    fi
fi
run_device "$tmp/device.log"

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
log=$tmp/device.log
outcome=$(sed -n 's/^package: [^ ]* -> \([A-Z]*\)$/\1/p' "$log" | tail -n 1)
mapfile -t checked < <(sed -n 's/^package: file \([0-9]*\)\/[0-9]* \([^ ]*\) -> \([A-Z]*\)$/\1 \2 \3/p' "$log")
mapfile -t outcome_lines < <(grep '^outcome: ' "$tmp/cloud.log" || true)
cloud_outcome=${outcome_lines[0]:-}
violations=$(grep -cE '^violation:|protocol violation' "$tmp/cloud.log" || true)
echo "device: exit code $device_rc, ${outcome:-no outcome}; files checked: ${checked[*]:-none}"
echo "ota-cloud: exit code $cloud_rc, ${cloud_outcome:-no outcome}, $violations violation(s)"
grep -E '^(http|mqtt download): ' "$tmp/cloud.log" || true

if [[ ${#outcome_lines[@]} -ne 1 ]]; then
    reasons+=("ota-cloud printed ${#outcome_lines[@]} outcome lines, not 1")
fi
if [[ $violations -ne 0 ]]; then
    reasons+=("ota-cloud saw $violations protocol violation(s)")
fi
# The served files, in package order (file1.bin, file2.bin, ...; firmware.bin alone).
served=()
if [[ $files == single:* ]]; then
    served=(firmware.bin)
    sizes=("${files#single:}")
else
    IFS=',' read -r -a sizes <<<"$files"
    for i in "${!sizes[@]}"; do
        served+=("file$((i + 1)).bin")
    done
fi

case $outcome in
VALID)
    [[ $device_rc -eq 0 ]] || reasons+=("the example said VALID but exited $device_rc")
    for name in "${served[@]}"; do
        if ! cmp "$tmp/served/$name" "$tmp/device/$name"; then
            reasons+=("$name as stored differs from the served one")
        fi
    done
    for c in "${checked[@]}"; do
        [[ $c == *" VALID" ]] || reasons+=("a file was checked ${c##* } in a VALID package: $c")
    done
    if [[ $cloud_outcome != "outcome: success $version" || $cloud_rc -ne 0 ]]; then
        reasons+=("the example says VALID, the cloud '${cloud_outcome:-nothing}' (exit $cloud_rc), not success for $version")
    fi
    ;;
INVALID)
    [[ $device_rc -eq 2 ]] || reasons+=("the example said INVALID but exited $device_rc")
    last=${checked[${#checked[@]} - 1]:-}
    if [[ $last != "$bad ${served[bad - 1]:-?} INVALID" ]]; then
        reasons+=("the last file checked is '${last:-none}', not file $bad INVALID")
    fi
    if [[ ${#checked[@]} -gt 1 ]]; then
        for c in "${checked[@]:0:${#checked[@]}-1}"; do
            [[ $c == *" VALID" ]] || reasons+=("a file before the bad one was checked ${c##* }: $c")
        done
    fi
    for ((i = 1; i < bad; i++)); do
        if ! cmp "$tmp/served/${served[i - 1]}" "$tmp/device/${served[i - 1]}"; then
            reasons+=("${served[i - 1]}, before the bad file, differs from the served one")
        fi
    done
    if [[ $cloud_outcome != "outcome: failed $version reports=1"* || $cloud_rc -ne 1 ]]; then
        reasons+=("the example says INVALID, the cloud '${cloud_outcome:-nothing}' (exit $cloud_rc), not one failure report for $version")
    fi
    if grep -q "device reports version $version" "$tmp/cloud.log"; then
        reasons+=("the device reported version $version after an invalid file")
    fi
    ;;
*)
    reasons+=("the example ended ${outcome:-without an outcome line} (exit $device_rc)")
    ;;
esac

# What the cloud's counters say about the transfer.
http_line() { grep "^http: $1: " "$tmp/cloud.log" || true; }
http_requests() { http_line "$1" | sed -n 's/^http: [^:]*: \([0-9]*\) requests, .*/\1/p'; }
http_bytes() { http_line "$1" | sed -n 's/.* requests, \([0-9]*\) of .*/\1/p'; }
if [[ $transport == http ]]; then
    for i in "${!served[@]}"; do
        name=${served[i]}
        size=${sizes[i]}
        requests=$(http_requests "$name")
        bytes=$(http_bytes "$name")
        if [[ $expected == INVALID && $((i + 1)) -gt $bad ]]; then
            # The package ended at the bad file: nothing after it is fetched.
            [[ ${requests:-0} -eq 0 ]] || reasons+=("$name, after the bad file, was requested $requests times")
        elif [[ $expected == INVALID && $((i + 1)) -eq $bad ]]; then
            :
        elif [[ $name == "$cut_file" ]]; then
            # Cut once, resumed with Range: two requests that add up to the file, once.
            if [[ $requests != 2 || $bytes != "$size" ]]; then
                reasons+=("$name (cut): $requests requests, $bytes bytes sent, not 2 requests for $size bytes")
            fi
        elif [[ $kill_after_bytes -gt 0 && $((i + 1)) -eq $resume_file ]]; then
            # Killed in this file: one request before the kill, one resuming after it.
            [[ $requests == 2 ]] || reasons+=("$name (killed in it): $requests requests, not 2")
        else
            # Every other file once, whole: no second download after a restart.
            if [[ $requests != 1 || $bytes != "$size" ]]; then
                reasons+=("$name: $requests requests, $bytes bytes sent, not 1 request for $size bytes (downloaded again?)")
            fi
        fi
    done
else
    mqtt_line=$(grep '^mqtt download: [0-9]* requests' "$tmp/cloud.log" || true)
    repeated=$(sed -n 's/.* \([0-9]*\) repeated requests.*/\1/p' <<<"$mqtt_line")
    dropped=$(sed -n 's/.* \([0-9]*\) replies dropped.*/\1/p' <<<"$mqtt_line")
    faults_fired=$(grep -c '^cloud: fault: ' "$tmp/cloud.log" || true)
    faults_set=$(grep -c '^fault: ' "$tmp/cloud.log" || true)
    if [[ -z $mqtt_line ]]; then
        reasons+=("ota-cloud printed no MQTT download summary")
    elif [[ $faults_fired -ne $faults_set ]]; then
        reasons+=("$faults_set MQTT fault(s) set, $faults_fired fired")
    elif [[ $faults_set -gt 0 && ${repeated:-0} -lt $faults_set ]]; then
        # Each dropped or corrupted block must have been asked for again.
        reasons+=("$faults_set block(s) dropped or corrupted but only ${repeated:-0} asked again")
    fi
fi

if [[ $kill_after_bytes -gt 0 ]]; then
    # The second run's first file line: where it resumed (file I of N, from byte B).
    first=$(sed -n 's/^package: file \([0-9]*\)\/[0-9]* [^ ]*, [0-9]* bytes, from byte \([0-9]*\)$/\1 \2/p' "$log" | head -n 1)
    read -r resumed_file resumed_at <<<"${first:-0 0}"
    echo "restarted run: resumed in file $resumed_file at byte $resumed_at"
    if [[ $resumed_file != "$resume_file" || $resumed_at -eq 0 ]]; then
        reasons+=("the restarted example began in file $resumed_file at byte $resumed_at, not in file $resume_file past byte 0 (the package started over)")
    fi
    if [[ $transport == mqtt && $resumed_at -gt 0 ]]; then
        # Starting over would ask again for every block below the resume offset; resuming asks
        # again only for those between the last saved record and the kill.
        below=$((resumed_at / block_size))
        if [[ ${repeated:-0} -ge $below ]]; then
            reasons+=("${repeated:-?} blocks asked for again, as many as the $below below the resume offset: the restart began before it")
        fi
        if [[ ${dropped:-1} -ne 0 ]]; then
            reasons+=("${dropped:-?} replies dropped without a fault set")
        fi
    fi
fi

result=${outcome:-NONE}
if [[ ${#reasons[@]} -gt 0 ]]; then
    for r in "${reasons[@]}"; do
        echo "FAIL: $r" >&2
    done
    result=UNCLASSIFIED
fi
verdict "$result"
