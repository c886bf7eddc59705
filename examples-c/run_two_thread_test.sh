#!/usr/bin/env bash
# Two-thread firmware (issue 12, item 3): two_thread_firmware.c, one thread looping
# IOT_MQTT_Yield(pclient, 200) and the main thread running the iotkit sample's FetchYield loop,
# with a 4 s MQTT keep-alive, through mosquitto, against `ota-cloud serve` whose downloads stall:
# --stall-ms (every response pauses between head and body), --stall-at (once, mid-body, 10 s) and
# a cut, so the resumed request pauses again. By default each FetchYield waits 5 s, longer than
# the keep-alive, and the head pause (6 s) outlasts it: the pings must go out while FetchYield
# waits. (The SDK retries a download after two FetchYields in a row without a byte, so the head
# pause must stay under twice the FetchYield timeout, or every retry stalls the same way.)
# Passes when:
#   - the device exits 0 with a file byte-identical to the served image (cmp) and the cloud
#     prints "outcome: success";
#   - the connection was never lost: the device's own count of IOTX_MQTT_EVENT_DISCONNECT is 0,
#     and the broker (log_type all) connected the device once, with keep-alive 4 s, never
#     logged "exceeded timeout", received PINGREQs from it (the keep-alive ran) and never went
#     longer than 1.5 x the keep-alive without a packet from it;
# and prints, without asserting (the machine may be shared), the device's "yield: max N ms over
# M calls" and histogram lines.
#
# usage: run_two_thread_test.sh FIRMWARE_BIN OTA_CLOUD_BIN
# env:   OTA_TEST_FIRMWARE_SIZE (default 1000000; the stall offsets are fractions of it),
#        OTA_STALL_MS (the mid-body stall, default 10000), OTA_HEAD_STALL_MS (the head-to-body
#        pause of every response, default 6000), OTA_FETCH_TIMEOUT_S (seconds each FetchYield
#        waits, default 5), OTA_TIMEOUT_S (device bound, default 120; the
#        cloud gets 20 s more), OTA_TEST_WRAPPER (a command the device is run under, split on
#        spaces: memcheck.sh, or nothing), OTA_REQUIRE_MOSQUITTO=required (fail instead of skip
#        without mosquitto), OTA_KEEP_TMP=1 (keep the scratch directory), MOSQUITTO (the broker)
# exit:  0 pass, 1 fail, 77 skipped (no mosquitto)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

firmware=${1:?usage: run_two_thread_test.sh FIRMWARE_BIN OTA_CLOUD_BIN}
cloud=${2:?usage: run_two_thread_test.sh FIRMWARE_BIN OTA_CLOUD_BIN}
firmware_size=${OTA_TEST_FIRMWARE_SIZE:-1000000}
stall_ms=${OTA_STALL_MS:-10000}
head_stall_ms=${OTA_HEAD_STALL_MS:-6000}
fetch_timeout_s=${OTA_FETCH_TIMEOUT_S:-5}
timeout_s=${OTA_TIMEOUT_S:-120}
readonly keepalive_s=4
read_wrapper
product_key=a1OtaTestPk
device_name=ota_two_thread_device
device_secret=TwoThreadSecretTwoThreadSecretTw
version=2.0.0

find_mosquitto
require_executables "$firmware" "$cloud"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-two-thread-XXXXXX")
mosquitto_pid=
cloud_pid=

cleanup() {
    local rc=$?
    for pid in $cloud_pid $mosquitto_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 && $rc -ne 77 ]]; then
        show_log "device" "$tmp/device.log"
        show_log "ota-cloud" "$tmp/cloud.log"
        # The broker logs every packet: only its connection lines and the device's last ones.
        echo "----- mosquitto (connections, timeouts, last 40 lines) -----"
        grep -E 'New client|exceeded timeout|disconnect' "$tmp/mosquitto.log" 2>/dev/null || true
        tail -n 40 "$tmp/mosquitto.log" 2>/dev/null || true
    fi
    if [[ -n ${OTA_KEEP_TMP:-} ]]; then
        echo "scratch directory kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

port=$(free_port)
# Every packet and every connection event, stamped with the epoch second: the broker's view of
# the device's keep-alive.
cat >"$tmp/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
log_dest stdout
log_type all
log_timestamp true
EOF
start_mosquitto "$tmp/mosquitto.log" "$tmp/mosquitto.conf"

# A pause on every response (first request and each resumed one), one long one mid-body, and a
# cut after it, so the resumed request pauses again.
faults=(--stall-ms "$head_stall_ms" --stall-at "$((firmware_size / 2)):$stall_ms"
    --cut-at "$((firmware_size * 3 / 4))")
echo "two-thread firmware, keep-alive ${keepalive_s} s, FetchYield timeout ${fetch_timeout_s} s, image $firmware_size bytes, faults: ${faults[*]}"
"$cloud" serve --protocol aliyun --broker "127.0.0.1:$port" --product-key "$product_key" \
    --device-name "$device_name" --firmware-size "$firmware_size" --write-firmware "$tmp/served.bin" \
    --version "$version" --timeout-s "$((timeout_s + 20))" "${faults[@]}" >"$tmp/cloud.log" 2>&1 &
cloud_pid=$!

wait_cloud_ready "$tmp/cloud.log" "$cloud_pid" || exit 1

set +e
env IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT="$port" \
    OTA_PRODUCT_KEY=$product_key OTA_DEVICE_NAME=$device_name OTA_DEVICE_SECRET=$device_secret \
    OTA_FIRMWARE_VERSION=1.0.0 OTA_KEEPALIVE_MS=$((keepalive_s * 1000)) OTA_FETCH_TIMEOUT_S="$fetch_timeout_s" \
    OTA_TIMEOUT_S="$timeout_s" \
    "${wrapper[@]}" "$firmware" "$tmp/ota.bin" >"$tmp/device.log" 2>&1
device_rc=$?
set -e

# The cloud ends by itself once the device reported the new version.
for _ in $(seq 200); do
    kill -0 "$cloud_pid" 2>/dev/null || break
    sleep 0.1
done
set +e
kill "$cloud_pid" 2>/dev/null
wait "$cloud_pid"
cloud_rc=$?
set -e
cloud_pid=

reasons=()
echo "device: exit code $device_rc; $(grep -m1 '^two_thread: upgrade' "$tmp/device.log" || echo 'no upgrade line')"
grep -E '^(yield|fetch|mqtt): ' "$tmp/device.log" || true
if [[ $device_rc -ne 0 ]]; then
    reasons+=("the device exited $device_rc, not 0")
fi
if ! cmp "$tmp/served.bin" "$tmp/ota.bin"; then
    reasons+=("the device's file differs from the served image")
fi
cloud_outcome=$(grep -m1 '^outcome: ' "$tmp/cloud.log" || true)
echo "ota-cloud: exit code $cloud_rc, ${cloud_outcome:-no outcome line}"
if [[ $cloud_rc -ne 0 || $cloud_outcome != "outcome: success $version" ]]; then
    reasons+=("the cloud did not see the upgrade succeed (exit $cloud_rc)")
fi
# The stalls must have happened, or the test proves nothing about them.
if ! grep -q 'stall' "$tmp/cloud.log"; then
    reasons+=("the cloud's log does not mention its stalls")
fi
if ! grep -q '^yield: max .* ms over [1-9][0-9]* calls' "$tmp/device.log"; then
    reasons+=("the device printed no yield measurements")
fi
disconnects=$(sed -n 's/^mqtt: \([0-9]*\) disconnects.*/\1/p' "$tmp/device.log")
if [[ ${disconnects:-x} != 0 ]]; then
    reasons+=("the device saw ${disconnects:-an unknown number of} MQTT disconnect event(s)")
fi

# ---- the broker's view ----
# "New client connected from 127.0.0.1:P as CLIENT_ID (p2, c0, k4, u'...')."
mapfile -t device_connects < <(grep "New client connected .* as [^ ]*$device_name" "$tmp/mosquitto.log" || true)
client_id=
if [[ ${#device_connects[@]} -ne 1 ]]; then
    reasons+=("the broker saw the device connect ${#device_connects[@]} times, not once")
fi
if [[ ${#device_connects[@]} -ge 1 ]]; then
    client_id=$(sed -n 's/.* as \([^ ]*\) (.*/\1/p' <<<"${device_connects[0]}")
    if [[ ${device_connects[0]} != *", k$keepalive_s,"* && ${device_connects[0]} != *", k$keepalive_s)"* ]]; then
        reasons+=("the device did not connect with keep-alive $keepalive_s s: ${device_connects[0]}")
    fi
fi
timeouts=$(grep -c 'exceeded timeout' "$tmp/mosquitto.log" || true)
if [[ $timeouts -ne 0 ]]; then
    reasons+=("the broker disconnected $timeouts client(s) for exceeding the keep-alive")
fi
if [[ -n $client_id ]]; then
    pings=$(grep -cF "Received PINGREQ from $client_id" "$tmp/mosquitto.log" || true)
    # Epoch seconds of every packet from the device; the longest gap between two of them.
    silence=$(grep -F "from $client_id" "$tmp/mosquitto.log" | grep -E '^[0-9]+: Received ' |
        awk -F: 'NR > 1 && $1 - last > max { max = $1 - last } { last = $1 } END { print max + 0 }')
    echo "broker: device connected once as $client_id; $pings PINGREQs received; longest silence ${silence} s (whole seconds; the broker allows 1.5 x $keepalive_s s)"
    # Progress reports count as traffic too, so only the stalls force pings: at least one.
    if [[ $pings -lt 1 ]]; then
        reasons+=("the broker received no PINGREQ from the device: the keep-alive never ran")
    fi
    # Whole seconds: a silence the broker tolerates (1.5 x keep-alive) shows as 6 at most. The
    # decisive check: mosquitto 2.0.11 did not disconnect a device whose Yield thread was held
    # for 9 s (no "exceeded timeout"), this caught it.
    if [[ $silence -gt $((keepalive_s * 3 / 2)) ]]; then
        reasons+=("the device was silent for ${silence} s, past 1.5 x the keep-alive")
    fi
fi

if [[ ${#reasons[@]} -gt 0 ]]; then
    for r in "${reasons[@]}"; do
        echo "FAIL: $r" >&2
    done
    exit 1
fi
echo "PASS: upgrade byte-exact through stalls of ${stall_ms} ms and ${head_stall_ms} ms with a ${keepalive_s} s keep-alive, no disconnect"
