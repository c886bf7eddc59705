#!/usr/bin/env bash
# Installs this CMake project into a scratch prefix, then builds and runs examples-c/consumer
# against the installed files the way a downstream project would.
#
# usage: run_consumer_test.sh find_package|pkg_config CMAKE BUILD_DIR CONSUMER_SRC CC
#   find_package  configure the consumer's CMakeLists with CMAKE_PREFIX_PATH=prefix (ota::ota, static)
#   pkg_config    cc main.c $(pkg-config --cflags --libs --static ota) (links libota.so when both
#                 libota.so and libota.a are installed, as -lota does; run with LD_LIBRARY_PATH)
# env:   OTA_KEEP_TMP=1 keeps the scratch directory; OTA_TEST_WRAPPER (a command the consumer is
#        run under, split on spaces: the valgrind wrapper memcheck.sh in the memcheck run)
set -euo pipefail

usage="usage: run_consumer_test.sh find_package|pkg_config CMAKE BUILD_DIR CONSUMER_SRC CC"
mode=${1:?$usage}
cmake_bin=${2:?$usage}
build_dir=${3:?$usage}
consumer_src=${4:?$usage}
cc_bin=${5:?$usage}
wrapper=()
if [[ -n ${OTA_TEST_WRAPPER:-} ]]; then
    read -r -a wrapper <<<"$OTA_TEST_WRAPPER"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ota-consumer-XXXXXX")
cleanup() {
    if [[ -n ${OTA_KEEP_TMP:-} ]]; then
        echo "scratch directory kept: $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

prefix=$tmp/prefix
echo "== cmake --install $build_dir --prefix $prefix"
"$cmake_bin" --install "$build_dir" --prefix "$prefix"

libdir=$(dirname "$(find "$prefix" -name libota.a -print -quit)")
if [[ ! -f $libdir/libota.a || ! -f $libdir/libota.so ]]; then
    echo "FAIL: libota.a / libota.so not installed under $prefix" >&2
    exit 1
fi
for header in ota.h iot_export.h iot_import.h; do
    if [[ ! -f $prefix/include/$header ]]; then
        echo "FAIL: $header not installed under $prefix/include" >&2
        exit 1
    fi
done

case $mode in
find_package)
    echo "== configure and build the consumer with find_package(ota)"
    "$cmake_bin" -S "$consumer_src" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_C_COMPILER="$cc_bin" -DCMAKE_BUILD_TYPE=Release
    "$cmake_bin" --build "$tmp/build" --verbose
    consumer=$tmp/build/ota_consumer
    if ldd "$consumer" | grep -q libota; then
        echo "FAIL: ota::ota should link libota statically" >&2
        exit 1
    fi
    ;;
pkg_config)
    if ! command -v pkg-config >/dev/null 2>&1; then
        echo "FAIL: pkg-config is not installed (apt-get install pkg-config)" >&2
        exit 1
    fi
    export PKG_CONFIG_PATH=$libdir/pkgconfig
    echo "== pkg-config --modversion ota: $(pkg-config --modversion ota)"
    flags=$(pkg-config --cflags --libs --static ota)
    echo "== $cc_bin main.c $flags"
    # shellcheck disable=SC2086 # the flags are meant to split
    "$cc_bin" -std=c99 -Wall -Wextra -Werror "$consumer_src/main.c" -o "$tmp/ota_consumer" $flags
    export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "== run the dynamically linked consumer"
    "${wrapper[@]}" "$tmp/ota_consumer"

    # Libs.private must be complete: link libota.a explicitly with everything else pkg-config says.
    static_flags=()
    for flag in $flags; do
        [[ $flag == -lota ]] || static_flags+=("$flag")
    done
    echo "== $cc_bin main.c $libdir/libota.a ${static_flags[*]}"
    "$cc_bin" -std=c99 -Wall -Wextra -Werror "$consumer_src/main.c" -o "$tmp/ota_consumer_static" \
        "$libdir/libota.a" "${static_flags[@]}"
    consumer=$tmp/ota_consumer_static
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac

echo "== run $consumer"
"${wrapper[@]}" "$consumer"
echo "PASS: $mode consumer built against the installed package and ran"
