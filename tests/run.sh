#!/usr/bin/env bash
# The project's test command (see README): installs what is missing, then runs every check CI
# runs: format, lints, rustdoc, the committed C header, the Rust tests (embedded broker), and the C
# examples under ctest against Mosquitto. Set OTA_REQUIRE_MOSQUITTO=required to make Mosquitto
# tests fail instead of skip when the broker cannot be installed (CI does), and
# OTA_REQUIRE_IMGTOOL=required for the tests that sign MCUboot images with imgtool (PyPI), and
# OTA_REQUIRE_DETOOLS=required for those that make delta patches with detools (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v cc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v python3 >/dev/null || missing+=(python3)
command -v valgrind >/dev/null || missing+=(valgrind)
# pip, for imgtool and detools below (Debian ships it apart from python3).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        echo "cannot install $*: not root and no sudo" >&2
        return 1
    fi
}
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}" || true
fi

# The PyPI tools: imgtool (MCUboot's signing tool) signs fresh images in tests/image_verify.rs,
# detools makes delta patches in tests/delta.rs (`python3 -m detools`, `import detools`). Where
# pip may not touch the system Python (PEP 668, "externally managed"), they go into a venv under
# target/, put first on PATH (as is pip's user directory, where a non-root install lands), so its
# python3 is the one the tests run.
install_pypi() {
    python3 -m pip install -q "$1" 2>/dev/null && return 0
    local venv=$PWD/target/pypi-venv
    echo "pip refused the system Python (PEP 668?): $1 goes into $venv"
    if [ ! -x "$venv/bin/pip" ]; then
        rm -rf "$venv"
        # Debian ships venv's pip bootstrap (ensurepip) in python3-venv.
        python3 -m venv "$venv" 2>/dev/null ||
            { rm -rf "$venv" && apt_install python3-venv && python3 -m venv "$venv"; } || return 1
    fi
    "$venv/bin/pip" install -q "$1"
}
PATH="$PWD/target/pypi-venv/bin:$PATH:$(python3 -m site --user-base 2>/dev/null || echo ~/.local)/bin"
export PATH
if ! command -v imgtool >/dev/null; then
    echo "installing imgtool (pip)"
    if ! install_pypi imgtool; then
        echo "could not install imgtool: its tests skip, or fail under OTA_REQUIRE_IMGTOOL=required" >&2
    fi
    if command -v imgtool >/dev/null; then echo "imgtool $(imgtool version)"; fi
fi
if ! python3 -c "import detools" 2>/dev/null; then
    echo "installing detools (pip)"
    if ! install_pypi detools; then
        echo "could not install detools: its tests skip, or fail under OTA_REQUIRE_DETOOLS=required" >&2
    fi
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# That build ran build.rs, which regenerates include/ota.h from src/ffi: what is committed must
# be what it generates (tests/header.rs covers the cases where build.rs did not run).
step "include/ota.h is committed as generated"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if ! git diff --exit-code -- include/; then
        echo "include/ota.h as generated from src/ffi differs from the committed file (diff above):" >&2
        echo "commit the regenerated header (git add include/ota.h)" >&2
        exit 1
    fi
else
    echo "not a git checkout: skipped"
fi
step "cargo clippy, library without TLS (the \`tls\` feature off)"
cargo clippy -p ota --lib --no-default-features -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc -p ota --no-deps
step "cargo test"
cargo test --workspace
# The ChaCha20-Poly1305 suites exist only with this feature: the record layer meets them here.
step "cargo test, TLS records with ChaCha20-Poly1305 (feature tls-chacha20)"
cargo test -p ota --features tls-chacha20 --test tls_records
step "release build (libota.a, libota.so, ota-cloud, the Rust example)"
cargo build --release -p ota -p ota-cloud --lib --bins --examples
step "C examples under ctest"
cmake -S examples-c -B target/ctest -DOTA_BUILD_RUST=OFF >/dev/null
cmake --build target/ctest
ctest --test-dir target/ctest --output-on-failure
step "C API under valgrind memcheck and ASan/UBSan"
bash tests/sanitizers.sh
step "fuzzing: every fuzz/ target for 20 s (cargo-fuzz on stable; installed when missing)"
bash fuzz/run.sh 20
step "benchmark, quick mode (proves it still runs; no timing assertions)"
cargo run --release -p ota-bench -- --quick
