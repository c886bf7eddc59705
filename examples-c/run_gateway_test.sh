#!/usr/bin/env bash
# A gateway upgrading itself and N sub-devices over one MQTT connection (issue 15): mosquitto as
# the broker, `ota-cloud fleet` as the platform of all N+1 devices, and gateway_example as the
# gateway firmware.
#   shared   (default) the sub-devices share one image, the gateway has its own
#   distinct every device has its own image (fleet --distinct)
# Passes when both exit 0, each device's file is byte-identical to the image served for it, the
# fleet's summary counts exactly one full download of each distinct image, and the gateway says
# it verified one image per distinct image from the network and streamed the rest from the
# devices that downloaded them.
#
# usage: run_gateway_test.sh GATEWAY_BIN OTA_CLOUD_BIN N [shared|distinct]
# env:   OTA_PROTOCOL (aliyun|sagoo|tencent|ucloud, default aliyun),
#        OTA_TEST_FIRMWARE_SIZE (the shared image, default 1000000; the gateway's is half as big),
#        OTA_TIMEOUT_S (deadline of the gateway and of the fleet, default 300),
#        OTA_TEST_WRAPPER (a command the gateway is run under, split on spaces: memcheck.sh in
#        the memcheck run; the fleet and the broker run bare),
#        OTA_REQUIRE_MOSQUITTO=required (fail instead of skip without mosquitto),
#        OTA_KEEP_TMP=1 (keep the scratch directory), MOSQUITTO (path to the broker binary)
# exit:  0 pass, 1 fail, 77 skipped (no mosquitto)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

usage="usage: run_gateway_test.sh GATEWAY_BIN OTA_CLOUD_BIN N"
gateway=${1:?$usage}
cloud=${2:?$usage}
sub_count=${3:?$usage}
scenario=${4:-shared}
protocol=${OTA_PROTOCOL:-aliyun}
firmware_size=${OTA_TEST_FIRMWARE_SIZE:-1000000}
gateway_firmware_size=$((firmware_size / 2 + 1))
timeout_s=${OTA_TIMEOUT_S:-300}
read_wrapper
gateway_pk=a1OtaGwTestPk
gateway_dn=ota_ctest_gateway
gateway_secret=GatewaySecretGatewaySecretGatewa
sub_pk=a1OtaSubTestPk
sub_prefix=sub-

case $scenario in
shared) fleet_images=() images_expected=2 ;;
distinct) fleet_images=(--distinct) images_expected=$((sub_count + 1)) ;;
*)
    echo "unknown scenario $scenario (expected shared or distinct)" >&2
    exit 1
    ;;
esac

find_mosquitto
require_executables "$gateway" "$cloud"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-gateway-XXXXXX")
mosquitto_pid=
cloud_pid=
logs_shown=0

cleanup() {
    local rc=$?
    for pid in $cloud_pid $mosquitto_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        show_log "mosquitto" "$tmp/mosquitto.log"
        if [[ $logs_shown -eq 0 ]]; then
            show_log "ota-cloud fleet (stderr)" "$tmp/fleet.log"
            show_log "ota-cloud fleet (stdout)" "$tmp/fleet.out"
        fi
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

mkdir -p "$tmp/served" "$tmp/gateway"
"$cloud" fleet --broker "127.0.0.1:$port" --platform "$protocol" \
    --sub-devices "$sub_count" --product-key "$sub_pk" --name-prefix "$sub_prefix" \
    --version 2.0.0 --firmware-size "$firmware_size" "${fleet_images[@]}" \
    --gateway "$gateway_pk/$gateway_dn" --gateway-version 2.0.0 --gateway-firmware-size "$gateway_firmware_size" \
    --write-firmware-dir "$tmp/served" --timeout "$timeout_s" --json \
    >"$tmp/fleet.out" 2>"$tmp/fleet.log" &
cloud_pid=$!

# Every device reports its version once at start-up: the fleet must be subscribed before that.
for _ in $(seq 100); do
    if grep -q "waiting for the version reports" "$tmp/fleet.log" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$cloud_pid" 2>/dev/null; then
        echo "FAIL: ota-cloud fleet exited before it was ready" >&2
        exit 1
    fi
    sleep 0.1
done

echo "running $gateway $sub_count (OTA_PROTOCOL=$protocol, $scenario images of $firmware_size bytes)"
started=$(date +%s%N)
set +e
IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT=$port OTA_REQUIRE_SIGNATURE=0 \
    OTA_PRODUCT_KEY=$gateway_pk OTA_DEVICE_NAME=$gateway_dn OTA_DEVICE_SECRET=$gateway_secret \
    OTA_FIRMWARE_VERSION=1.0.0 OTA_SUB_PRODUCT_KEY=$sub_pk OTA_SUB_NAME_PREFIX=$sub_prefix \
    OTA_SUB_FIRMWARE_VERSION=1.0.0 OTA_PROTOCOL=$protocol OTA_TIMEOUT_S=$timeout_s \
    "${wrapper[@]}" "$gateway" "$sub_count" "$tmp/gateway" | tee "$tmp/gateway.out"
gateway_rc=${PIPESTATUS[0]}
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
wait "$cloud_pid"
cloud_rc=$?
set -e
cloud_pid=

show_log "ota-cloud fleet (stderr)" "$tmp/fleet.log"
show_log "ota-cloud fleet (stdout)" "$tmp/fleet.out"
logs_shown=1
echo "gateway exit code: $gateway_rc, fleet exit code: $cloud_rc (both expected 0); gateway ran ${elapsed_ms} ms"
if [[ $gateway_rc -ne 0 || $cloud_rc -ne 0 ]]; then
    echo "FAIL: the gateway or the fleet did not end with every device upgraded" >&2
    exit 1
fi

# The fleet's names: at least two digits, as many as N has.
width=$((${#sub_count} > 2 ? ${#sub_count} : 2))
names=("$gateway_dn")
for i in $(seq "$sub_count"); do
    names+=("$(printf '%s%0*d' "$sub_prefix" "$width" "$i")")
done
for dn in "${names[@]}"; do
    if ! cmp "$tmp/served/$dn.bin" "$tmp/gateway/$dn.bin"; then
        echo "FAIL: $dn's image differs from the one served for it" >&2
        exit 1
    fi
done

# The fleet's summary: each distinct image was served in full exactly once.
python3 - "$tmp/fleet.out" "$images_expected" "${names[@]/#/$tmp/served/}" <<'EOF'
import hashlib, json, sys

summary_path, expected, served = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
# With --json, stdout carries only the summary object.
images = {img["md5"]: img for img in json.load(open(summary_path))["images"]}
wanted = {hashlib.md5(open(p + ".bin", "rb").read()).hexdigest() for p in served}
failed = False
if len(wanted) != expected or set(images) != wanted:
    print(f"FAIL: {len(wanted)} distinct images served to the devices, {len(images)} in the "
          f"fleet's summary, expected {expected}")
    failed = True
for md5 in sorted(wanted & set(images)):
    img = images[md5]
    if img["full_downloads"] != 1:
        print(f"FAIL: image {img['name']} was downloaded in full {img['full_downloads']} times, not once")
        failed = True
counts = sorted({(img["full_downloads"], img["requests"]) for img in images.values()})
print(f"fleet: {len(images)} images; (full downloads, requests) per image: {counts}")
sys.exit(1 if failed else 0)
EOF

# The gateway's own account: one network download per distinct image, the rest streamed locally.
local_count=$(grep -c '^\[.*\] verified: .*source local image' "$tmp/gateway.out" || true)
network_count=$(grep -c '^\[.*\] verified: .*source network' "$tmp/gateway.out" || true)
local_expected=$((sub_count + 1 - images_expected))
if [[ $local_count -ne $local_expected || $network_count -ne $images_expected ]]; then
    echo "FAIL: $network_count images verified from the network and $local_count from a local image;" \
        "expected $images_expected and $local_expected" >&2
    exit 1
fi
echo "PASS: gateway + $sub_count sub-devices upgraded on $protocol ($scenario images) in ${elapsed_ms} ms;" \
    "$network_count network downloads, $local_count local streams, every image byte-identical to the one served"
