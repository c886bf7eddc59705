#!/usr/bin/env bash
# What each release-profile setting buys: builds libota.a once per variant (own target dir under
# target-size/, the profile changed through CARGO_PROFILE_RELEASE_* variables, nothing edited),
# links examples-c/ota_mqtt_example.c against it, strips it, and prints the sizes.
#
# Usage: tools/ota-bench/size-matrix.sh [VARIANT...]   (default: all; takes minutes per variant)
# Variants: base (the profile in Cargo.toml), z, O3, thin-lto, no-lto, cgu16, abort, no-tls,
# chacha20 (the tls-chacha20 feature)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
all=(base z O3 thin-lto no-lto cgu16 abort no-tls chacha20)
variants=("${@:-${all[@]}}")

printf '%-10s %12s %12s %14s %16s %16s %16s\n' variant libota.a libota.so example example+gc \
    "example+gc+relr" "example+gc+no-pie"
for v in "${variants[@]}"; do
    env=()
    feat=()
    case $v in
        base) ;;
        z) env=(CARGO_PROFILE_RELEASE_OPT_LEVEL=z) ;;
        O3) env=(CARGO_PROFILE_RELEASE_OPT_LEVEL=3) ;;
        thin-lto) env=(CARGO_PROFILE_RELEASE_LTO=thin) ;;
        no-lto) env=(CARGO_PROFILE_RELEASE_LTO=false) ;;
        cgu16) env=(CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
        # Not usable (the FFI guard needs unwinding); shows what unwinding costs.
        abort) env=(CARGO_PROFILE_RELEASE_PANIC=abort) ;;
        no-tls) feat=(--no-default-features) ;;
        chacha20) feat=(--features tls-chacha20) ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    dir=$root/target-size/$v
    env "${env[@]}" OTA_SKIP_HEADER=1 CARGO_TARGET_DIR="$dir" \
        cargo build -q --release -p ota --lib "${feat[@]}"
    lib=$dir/release/libota.a
    out=$dir/ex
    cc -O2 -I"$root/include" examples-c/ota_mqtt_example.c "$lib" "${libs[@]}" -o "$out"
    cc -O2 -I"$root/include" -ffunction-sections -fdata-sections -Wl,--gc-sections \
        examples-c/ota_mqtt_example.c "$lib" "${libs[@]}" -o "$out.gc"
    cc -O2 -I"$root/include" -ffunction-sections -fdata-sections -Wl,--gc-sections \
        -Wl,-z,pack-relative-relocs examples-c/ota_mqtt_example.c "$lib" "${libs[@]}" -o "$out.relr"
    cc -O2 -no-pie -I"$root/include" -ffunction-sections -fdata-sections -Wl,--gc-sections \
        examples-c/ota_mqtt_example.c "$lib" "${libs[@]}" -o "$out.gcnp"
    strip "$out" "$out.gc" "$out.relr" "$out.gcnp"
    printf '%-10s %12d %12d %14d %16d %16d %16d\n' "$v" "$(stat -c %s "$lib")" \
        "$(stat -c %s "$dir/release/libota.so")" "$(stat -c %s "$out")" \
        "$(stat -c %s "$out.gc")" "$(stat -c %s "$out.relr")" "$(stat -c %s "$out.gcnp")"
done
