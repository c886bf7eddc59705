#!/usr/bin/env bash
# Signed images (issue 14) through the C API: one case per run. Fresh keys and an image signed
# with the real imgtool (PyPI; ECDSA P-256 or Ed25519, version 3.4.5+6, security counter 9),
# tampered with as the case says; `ota-cloud serve --firmware` announces the served file (its
# size and digest, as a cloud would) over Mosquitto; signed_image_test.c is the device, written
# like the iotkit sample, with the image policy set through IOT_OTA_Ioctl. A case passes when:
#   valid    the device's checks pass (CHECK_FIRMWARE 1 and the image queries' answers), its file
#            is the served one, and the cloud ends "outcome: success 2.0.0";
#   refused  the device's checks pass (its IOT_OTAE_IMAGE_* code from FetchYield mid-image, or
#            from IOT_OTA_GetLastError at the end; CHECK_FIRMWARE 0), its file holds what was
#            handed out (all of it, or a prefix ending before the fault), and the cloud got
#            exactly one failure report in the protocol's terms (Aliyun/SagooIOT step -3,
#            Tencent fail -4, UCloud fail) naming the cause, and no protocol violation.
#
# usage: run_signed_test.sh TEST_BIN OTA_CLOUD_BIN CASE     one case
#        run_signed_test.sh --list                          the case names, one a line
# env:   OTA_REQUIRE_IMGTOOL=required (fail instead of skip without imgtool),
#        OTA_REQUIRE_MOSQUITTO=required (the same for mosquitto), OTA_TIMEOUT_S (the device's
#        bound, default 60; the cloud gets 20 s more), OTA_TEST_WRAPPER (a command the device is
#        run under, split on spaces: memcheck.sh), OTA_KEEP_TMP=1, MOSQUITTO (the broker binary)
# exit:  0 pass, 1 fail, 77 skipped (no mosquitto or no imgtool)
set -euo pipefail
# shellcheck source=test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/test_lib.sh"

readonly version=2.0.0

# name|protocol|key algorithm|image|expected|found|extras
#   image:    good, or the tampering (see make_variant below); plain: not an MCUboot image
#   expected: valid, or the IOT_OTAE_IMAGE_* code; found: stream (mid-image) or end
#   extras:   keys=stranger (only a key that did not sign; default: a key of the other
#             algorithm, then the signer's), require=0 (default 1), running-version=V,
#             running-counter=N
# Every protocol gets a valid image, refusals found at the end and one found mid-image.
readonly cases=(
    "good_ecdsa_aliyun|aliyun|ecdsa-p256|good|valid||"
    "good_ed25519_sagoo|sagoo|ed25519|good|valid||"
    "good_ed25519_tencent|tencent|ed25519|good|valid||"
    "good_ecdsa_ucloud|ucloud|ecdsa-p256|good|valid||"
    "plain_file_signature_not_required|aliyun|ecdsa-p256|plain|valid||require=0"
    "payload_flip|aliyun|ecdsa-p256|payload_flip|IOT_OTAE_IMAGE_HASH_MISMATCH|end|"
    "wrong_key|aliyun|ed25519|good|IOT_OTAE_IMAGE_UNKNOWN_KEY|end|keys=stranger"
    "truncated_tlv_area|aliyun|ecdsa-p256|truncated|IOT_OTAE_IMAGE_SIZE_MISMATCH|stream|"
    "header_flip|sagoo|ed25519|header_flip|IOT_OTAE_IMAGE_HASH_MISMATCH|end|"
    "no_signature|sagoo|ecdsa-p256|unsigned|IOT_OTAE_IMAGE_MISSING_SIGNATURE|end|"
    "not_mcuboot|sagoo|ed25519|plain|IOT_OTAE_IMAGE_NOT_MCUBOOT|stream|"
    "protected_tlv_flip|tencent|ecdsa-p256|protected_flip|IOT_OTAE_IMAGE_HASH_MISMATCH|end|"
    "downgrade|tencent|ed25519|good|IOT_OTAE_IMAGE_DOWNGRADE|end|running-version=3.4.6"
    "tlv_past_end|tencent|ecdsa-p256|past_end|IOT_OTAE_IMAGE_TLV_PAST_END|stream|"
    "signature_flip|ucloud|ed25519|signature_flip|IOT_OTAE_IMAGE_BAD_SIGNATURE|end|"
    "counter_downgrade|ucloud|ecdsa-p256|good|IOT_OTAE_IMAGE_COUNTER_DOWNGRADE|end|running-counter=10"
    "bad_tlv_info|ucloud|ed25519|tlv_info_flip|IOT_OTAE_IMAGE_BAD_TLV_INFO|stream|"
)

if [[ ${1:-} == --list ]]; then
    for c in "${cases[@]}"; do
        echo "${c%%|*}"
    done
    exit 0
fi

device=${1:?usage: run_signed_test.sh TEST_BIN OTA_CLOUD_BIN CASE (or --list)}
cloud=${2:?usage: run_signed_test.sh TEST_BIN OTA_CLOUD_BIN CASE (or --list)}
case_name=${3:?usage: run_signed_test.sh TEST_BIN OTA_CLOUD_BIN CASE (or --list)}

spec=
for c in "${cases[@]}"; do
    if [[ ${c%%|*} == "$case_name" ]]; then
        spec=$c
    fi
done
if [[ -z $spec ]]; then
    echo "unknown case $case_name (run_signed_test.sh --list)" >&2
    exit 1
fi
IFS='|' read -r _ protocol kind variant expected found extras <<<"$spec"
keys_choice=default
require=1
running_version=
running_counter=
for extra in $extras; do
    case $extra in
    keys=*) keys_choice=${extra#keys=} ;;
    require=*) require=${extra#require=} ;;
    running-version=*) running_version=${extra#running-version=} ;;
    running-counter=*) running_counter=${extra#running-counter=} ;;
    esac
done
timeout_s=${OTA_TIMEOUT_S:-60}
read_wrapper
product_key=a1OtaSignPk
device_name=ota_signed_device
device_secret=SignedSecretSignedSecretSignedSe

imgtool_bin=$(command -v imgtool || true)
if [[ -z $imgtool_bin ]]; then
    if [[ ${OTA_REQUIRE_IMGTOOL:-} == required ]]; then
        echo "FAIL: imgtool is not on PATH but OTA_REQUIRE_IMGTOOL=required (pip install imgtool)" >&2
        exit 1
    fi
    echo "SKIP: imgtool is not on PATH (pip install imgtool); set OTA_REQUIRE_IMGTOOL=required to fail instead"
    exit 77
fi
find_mosquitto
require_executables "$device" "$cloud"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-signed-XXXXXX")
mosquitto_pid=
cloud_pid=
logs_shown=0

show_logs() {
    if [[ $logs_shown -eq 0 ]]; then
        logs_shown=1
        show_log "device" "$tmp/device.log"
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

# ---- the image ----
other_kind=ed25519
header_size=0x200
if [[ $kind == ed25519 ]]; then
    other_kind=ecdsa-p256
    header_size=0x80
fi
keygen() { # NAME KIND
    "$imgtool_bin" keygen -k "$tmp/$1.pem" -t "$2"
    "$imgtool_bin" getpub -k "$tmp/$1.pem" -e pem -o "$tmp/$1.pub.pem"
}
keygen signer "$kind"
keygen bystander "$other_kind"
keygen stranger "$kind"
python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 13 + i // 101) & 0xff for i in range(30000)))' >"$tmp/payload.bin"
sign_args=(--header-size "$header_size" --pad-header --align 8 --slot-size 0x100000
    --version 3.4.5+6 --security-counter 9)
"$imgtool_bin" sign --key "$tmp/signer.pem" "${sign_args[@]}" "$tmp/payload.bin" "$tmp/signed.bin"
"$imgtool_bin" sign "${sign_args[@]}" "$tmp/payload.bin" "$tmp/unsigned.bin"

# make_variant VARIANT: writes $tmp/served.bin from the signed image and prints, for a refusal,
# "desc=" the refusal's one-line description and "refused_by=" the offset before which a
# mid-image refusal shows (the layout read here, from MCUboot's format description).
make_variant() {
    python3 - "$1" "$tmp/signed.bin" "$tmp/unsigned.bin" "$tmp/served.bin" <<'EOF'
import struct, sys
variant, signed_path, unsigned_path, out_path = sys.argv[1:]
image = bytearray(open(signed_path, "rb").read())
hdr_size, protect, img_size = struct.unpack_from("<HHI", image, 8)
protected_at = hdr_size + img_size
unprotected_at = protected_at + protect
end = unprotected_at + struct.unpack_from("<H", image, unprotected_at + 2)[0]
tlvs = []  # (offset of the TLV header, type, length)
for start, stop in ((protected_at, unprotected_at), (unprotected_at, end)):
    at = start + 4
    while at < stop:
        t, n = struct.unpack_from("<HH", image, at)
        tlvs.append((at, t, n))
        at += 4 + n
def value(tlv_type):
    at, _, n = next(t for t in tlvs if t[1] == tlv_type)
    return at + 4, n
assert len(image) == end, "imgtool wrote bytes past the image"
out = {}
if variant == "good":
    pass
elif variant == "plain":
    image = bytearray(b"\x5a" * 20000)
    out = {"desc": "not an MCUboot image (magic 0x5a5a5a5a) but a signed image is required", "refused_by": 4}
elif variant == "unsigned":
    image = bytearray(open(unsigned_path, "rb").read())
elif variant == "payload_flip":
    image[hdr_size + img_size // 2] ^= 1
elif variant == "header_flip":
    image[21] ^= 1  # the minor version: an attacker's "upgrade"
elif variant == "protected_flip":
    image[value(0x50)[0]] ^= 1  # the security counter
elif variant == "signature_flip":
    at, n = value(0x24) if any(t[1] == 0x24 for t in tlvs) else value(0x22)
    image[at + n // 2] ^= 1
elif variant == "truncated":
    image = image[:end - 10]  # inside the signature; announced as served
    out = {"desc": f"announced size {end - 10} but the image's headers say {end}", "refused_by": unprotected_at + 4}
elif variant == "past_end":
    last, _, n = tlvs[-1]
    struct.pack_into("<H", image, last + 2, n + 1)
    out = {"desc": f"TLV at byte {last} runs past the end of its area at byte {end}", "refused_by": last + 4}
elif variant == "tlv_info_flip":
    image[unprotected_at] ^= 1
    out = {"desc": f"bad TLV area info at byte {unprotected_at}: magic 0x6906, size {end - unprotected_at}",
           "refused_by": unprotected_at + 4}
else:
    sys.exit(f"unknown variant {variant}")
open(out_path, "wb").write(image)
for k, v in out.items():
    print(f"{k}={v}")
EOF
}
variant_out=$(make_variant "$variant")
desc=$(sed -n 's/^desc=//p' <<<"$variant_out")
refused_by=$(sed -n 's/^refused_by=//p' <<<"$variant_out")
case $expected in
valid) ;;
IOT_OTAE_IMAGE_HASH_MISMATCH) desc="image hash mismatch" ;;
IOT_OTAE_IMAGE_BAD_SIGNATURE) desc="bad signature" ;;
IOT_OTAE_IMAGE_UNKNOWN_KEY) desc="signed with an unknown key" ;;
IOT_OTAE_IMAGE_MISSING_SIGNATURE) desc="signature TLV missing" ;;
IOT_OTAE_IMAGE_DOWNGRADE) desc="downgrade from $running_version to 3.4.5+6" ;;
IOT_OTAE_IMAGE_COUNTER_DOWNGRADE) desc="security counter downgrade from $running_counter to 9" ;;
esac
served_size=$(stat -c %s "$tmp/served.bin")

keys="$tmp/bystander.pub.pem:$tmp/signer.pub.pem"
if [[ $keys_choice == stranger ]]; then
    keys="$tmp/stranger.pub.pem"
fi
# What the valid image's queries must answer.
expect_env=()
if [[ $expected == valid && $variant == plain ]]; then
    expect_env=(OTA_EXPECT_SIGNED=0 OTA_EXPECT_KEY_INDEX=-1 OTA_EXPECT_IMAGE_VERSION=-
        OTA_EXPECT_PAYLOAD_OFFSET=0 OTA_EXPECT_PAYLOAD_SIZE="$served_size")
elif [[ $expected == valid ]]; then
    expect_env=(OTA_EXPECT_SIGNED=1 OTA_EXPECT_KEY_INDEX=1 OTA_EXPECT_IMAGE_VERSION=3.4.5+6
        OTA_EXPECT_PAYLOAD_OFFSET=$((header_size)) OTA_EXPECT_PAYLOAD_SIZE=30000)
fi

# ---- the run ----
port=$(free_port)
start_mosquitto "$tmp/mosquitto.log"
cloud_args=(serve --protocol "$protocol" --broker "127.0.0.1:$port" --product-key "$product_key"
    --device-name "$device_name" --firmware "$tmp/served.bin" --version "$version"
    --timeout-s "$((timeout_s + 20))")
if [[ $protocol == sagoo ]]; then
    # SagooIOT's SHA-256 digest, beside the image's own.
    cloud_args+=(--sign-method sha256)
fi
"$cloud" "${cloud_args[@]}" >"$tmp/cloud.log" 2>&1 &
cloud_pid=$!
wait_cloud_ready "$tmp/cloud.log" "$cloud_pid" || exit 1

echo "case $case_name: $protocol, $kind, image $variant ($served_size bytes), expected $expected${found:+ ($found)}"
set +e
env IOTX_MQTT_HOST=127.0.0.1 IOTX_MQTT_PORT="$port" \
    OTA_PRODUCT_KEY=$product_key OTA_DEVICE_NAME=$device_name OTA_DEVICE_SECRET=$device_secret \
    OTA_FIRMWARE_VERSION=1.0.0 OTA_PROTOCOL="$protocol" OTA_TIMEOUT_S="$timeout_s" \
    OTA_IMAGE_KEYS="$keys" OTA_REQUIRE_SIGNATURE="$require" OTA_RUNNING_VERSION="$running_version" \
    OTA_RUNNING_SECURITY_COUNTER="$running_counter" OTA_EXPECT="$expected" OTA_EXPECT_FOUND="$found" \
    "${expect_env[@]}" "${wrapper[@]}" "$device" "$tmp/ota.bin" >"$tmp/device.log" 2>&1
device_rc=$?
set -e
# The cloud ends by itself: at once on success, after its grace on a failure report.
for _ in $(seq 200); do
    kill -0 "$cloud_pid" 2>/dev/null || break
    sleep 0.1
done
set +e
wait "$cloud_pid"
cloud_rc=$?
set -e
cloud_pid=

reasons=()
checks_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$tmp/device.log" | tail -n 1 || true)
echo "device: exit code $device_rc, ${checks_line:-no check summary}"
if [[ $device_rc -ne 0 ]]; then
    reasons+=("the device's checks failed (exit $device_rc)")
fi
outcome=$(grep '^outcome: ' "$tmp/cloud.log" || true)
violations=$(grep -cE '^violation:|protocol violation' "$tmp/cloud.log" || true)
echo "ota-cloud: exit code $cloud_rc, ${outcome:-no outcome line}, $violations violation(s)"
if [[ $violations -ne 0 ]]; then
    reasons+=("ota-cloud saw $violations protocol violation(s)")
fi
held=0
[[ -f $tmp/ota.bin ]] && held=$(stat -c %s "$tmp/ota.bin")
if [[ $expected == valid ]]; then
    if ! cmp -s "$tmp/served.bin" "$tmp/ota.bin"; then
        reasons+=("the device's file ($held bytes) is not the served image")
    fi
    if [[ $outcome != "outcome: success $version" || $cloud_rc -ne 0 ]]; then
        reasons+=("the cloud did not see the upgrade succeed")
    fi
else
    if [[ $found == end ]] && ! cmp -s "$tmp/served.bin" "$tmp/ota.bin"; then
        reasons+=("a refusal found at the end: every byte is handed out, but the file has $held of $served_size")
    fi
    if [[ $found == stream ]]; then
        if [[ $held -ge $refused_by ]] || ! cmp -s -n "$held" "$tmp/served.bin" "$tmp/ota.bin"; then
            reasons+=("a refusal mid-image: the file ($held bytes) must be a prefix ending before byte $refused_by")
        fi
    fi
    if [[ $outcome != "outcome: failed $version reports=1 desc=$desc" || $cloud_rc -ne 1 ]]; then
        reasons+=("the cloud did not get one failure report saying \"$desc\"")
    fi
    case $protocol in
    aliyun | sagoo) report="device reports failure step -3: $desc" ;;
    tencent) report="device reports fail -4 for $version: $desc" ;;
    ucloud) report="device reports fail for task .*: $desc" ;;
    esac
    if ! grep -q -- "$report" "$tmp/cloud.log"; then
        reasons+=("no \"$report\" in the cloud's log")
    fi
fi

if [[ ${#reasons[@]} -gt 0 ]]; then
    for r in "${reasons[@]}"; do
        echo "FAIL: $r" >&2
    done
    exit 1
fi
echo "PASS: $case_name"
