#!/usr/bin/env bash
# One whole upgrade on this machine (protocol: OTA_PROTOCOL, default aliyun): mosquitto as the broker, a cloud, and the
# unchanged example firmware as the device.
#   upgrade  (default) ota-cloud announces 2.0.0, serves the image over HTTP and waits for the
#            device to report 2.0.0; the device must exit 0 with a byte-identical file.
#   bad-md5  bad_md5_cloud.py announces an image with a wrong md5; the device must report
#            step -3 (verify failed), not report 2.0.0, and exit 1.
#   delta    the device runs an old image (OTA_DELTA_OLD); ota-cloud serves the detools patch to
#            a new release made from it (--delta-from, needs detools from PyPI), cut once
#            mid-patch; the device must write the new image byte for byte and report 2.0.0.
#
# usage: run_upgrade_test.sh EXAMPLE_BIN OTA_CLOUD_BIN [upgrade|bad-md5|delta]
# env:   OTA_PROTOCOL (aliyun|sagoo|tencent|ucloud, default aliyun; bad-md5 is aliyun only),
#        OTA_BUF_LEN (bytes per FetchYield, default 5000), OTA_TEST_FIRMWARE_SIZE (default 3000000),
#        OTA_TIMEOUT_S (deadline of the device and of the cloud, default 120),
#        OTA_DELTA_COMPRESSION (delta: the patch's compression, heatshrink or none; default
#        heatshrink),
#        OTA_TEST_WRAPPER (a command the device is run under, split on spaces: the valgrind
#        wrapper memcheck.sh in the memcheck run; the cloud, broker and python run bare),
#        OTA_REQUIRE_MOSQUITTO=required (fail instead of skip without mosquitto),
#        OTA_KEEP_TMP=1 (keep the scratch directory), MOSQUITTO (path to the broker binary)
# exit:  0 pass, 1 fail, 77 skipped (no mosquitto)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

example=${1:?usage: run_upgrade_test.sh EXAMPLE_BIN OTA_CLOUD_BIN}
cloud=${2:?usage: run_upgrade_test.sh EXAMPLE_BIN OTA_CLOUD_BIN}
scenario=${3:-upgrade}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
buf_len=${OTA_BUF_LEN:-5000}
firmware_size=${OTA_TEST_FIRMWARE_SIZE:-3000000}
protocol=${OTA_PROTOCOL:-aliyun}
timeout_s=${OTA_TIMEOUT_S:-120}
read_wrapper
product_key=a1OtaTestPk
device_name=ota_ctest_device
device_secret=CtestSecretCtestSecretCtestSecre

find_mosquitto
require_executables "$example" "$cloud"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-upgrade-XXXXXX")
mosquitto_pid=
cloud_pid=
cloud_log_shown=0

cleanup() {
    local rc=$?
    for pid in $cloud_pid $mosquitto_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        show_log "mosquitto" "$tmp/mosquitto.log"
        if [[ $cloud_log_shown -eq 0 ]]; then
            show_log "ota-cloud" "$tmp/cloud.log"
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

case $scenario in
upgrade)
    "$cloud" serve --protocol "$protocol" --broker "127.0.0.1:$port" --product-key "$product_key" --device-name "$device_name" \
        --firmware-size "$firmware_size" --write-firmware "$tmp/served.bin" --version 2.0.0 \
        --timeout-s "$timeout_s" >"$tmp/cloud.log" 2>&1 &
    expected_device_rc=0
    ;;
delta)
    if ! python3 -c "import detools" 2>/dev/null; then
        if [[ ${OTA_REQUIRE_DETOOLS:-} == required ]]; then
            echo "FAIL: detools is not importable (pip install detools) and OTA_REQUIRE_DETOOLS=required" >&2
            exit 1
        fi
        echo "SKIP: detools is not importable (pip install detools)"
        exit 77
    fi
    # The device runs old.bin; the platform serves the detools patch (heatshrink) to a new
    # release made from it, cut once mid-patch: the device writes the new image byte for byte.
    python3 - "$tmp/old.bin" "$tmp/new.bin" <<'PY'
import random, sys
rng = random.Random(17)
old = bytearray(rng.getrandbits(8) for _ in range(300000))
new = bytearray(old)
for at in range(0, len(new), 4096):
    new[at] ^= 0x5A
new[150000:150000] = bytes(rng.getrandbits(8) for _ in range(1024))
new += bytes(rng.getrandbits(8) for _ in range(2048))
open(sys.argv[1], "wb").write(old)
open(sys.argv[2], "wb").write(new)
PY
    "$cloud" serve --protocol "$protocol" --broker "127.0.0.1:$port" --product-key "$product_key" --device-name "$device_name" \
        --firmware "$tmp/new.bin" --delta-from "$tmp/old.bin" --delta-compression "${OTA_DELTA_COMPRESSION:-heatshrink}" --cut-at 5000 \
        --write-patch "$tmp/patch.bin" --version 2.0.0 --timeout-s "$timeout_s" >"$tmp/cloud.log" 2>&1 &
    cp "$tmp/new.bin" "$tmp/served.bin"
    delta_old=$tmp/old.bin
    expected_device_rc=0
    ;;
bad-md5)
    python3 "$here/bad_md5_cloud.py" "$port" "$product_key" "$device_name" 300000 "${OTA_TIMEOUT_S:-60}" >"$tmp/cloud.log" 2>&1 &
    expected_device_rc=1
    ;;
*)
    echo "unknown scenario $scenario (expected upgrade, delta or bad-md5)" >&2
    exit 1
    ;;
esac
cloud_pid=$!

wait_cloud_ready "$tmp/cloud.log" "$cloud_pid" || exit 1

echo "running $example (OTA_PROTOCOL=$protocol, OTA_BUF_LEN=$buf_len)"
set +e
# The served images are not signed: the examples require a signature unless told otherwise.
IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT=$port OTA_REQUIRE_SIGNATURE=0 \
    OTA_PRODUCT_KEY=$product_key OTA_DEVICE_NAME=$device_name OTA_DEVICE_SECRET=$device_secret \
    OTA_FIRMWARE_VERSION=1.0.0 OTA_PROTOCOL=$protocol OTA_BUF_LEN=$buf_len OTA_TIMEOUT_S=$timeout_s \
    OTA_DELTA_OLD=${delta_old:-} "${wrapper[@]}" "$example" "$tmp/ota.bin"
device_rc=$?
wait "$cloud_pid"
cloud_rc=$?
set -e
cloud_pid=

show_log "ota-cloud" "$tmp/cloud.log"
cloud_log_shown=1
echo "device exit code: $device_rc (expected $expected_device_rc), cloud exit code: $cloud_rc (expected 0)"
if [[ $device_rc -ne $expected_device_rc || $cloud_rc -ne 0 ]]; then
    echo "FAIL: scenario $scenario did not end as expected" >&2
    exit 1
fi
if [[ $scenario == bad-md5 ]]; then
    echo "PASS: the device rejected the image with the wrong md5 and reported verify failure"
    exit 0
fi
if ! cmp "$tmp/served.bin" "$tmp/ota.bin"; then
    echo "FAIL: the downloaded firmware differs from the served one" >&2
    exit 1
fi
if [[ $scenario == delta ]]; then
    # The device got the patch, not the image: ota-cloud served a patch (no copy of the image).
    patch_len=$(stat -c %s "$tmp/patch.bin" 2>/dev/null || echo 0)
    if ! grep -q '^delta: old ' "$tmp/cloud.log" || [[ $patch_len -eq 0 ]] || cmp -s "$tmp/patch.bin" "$tmp/ota.bin"; then
        echo "FAIL: no delta patch was served (patch.bin: $patch_len bytes)" >&2
        exit 1
    fi
    echo "PASS: a $(stat -c %s "$tmp/patch.bin")-byte patch made the $(stat -c %s "$tmp/ota.bin")-byte new image, identical, new version reported"
    exit 0
fi
echo "PASS: $(stat -c %s "$tmp/ota.bin") bytes downloaded, identical to the served image, new version reported"
