//! Generates `include/ota.h` from `src/ffi` with cbindgen, then compiles the weak HAL defaults
//! (`src/ffi/hal_default.c`) into a static library that rustc bundles into the rlib, libota.a
//! and libota.so.
//!
//! rustc's version script for a cdylib exports Rust items only (`local: *` for the rest), so
//! libota.so would hide the C defaults. A second version script listing the HAL names exports
//! them; rust-lld merges it with rustc's, GNU ld refuses two, so a probe link decides.
//!
//! The header is checked in. `tests/run.sh` fails when a build changed it (regenerated, not
//! committed); `tests/header.rs` fails when it differs from a fresh generation without this
//! script having rewritten it (edited by hand, or built with `OTA_SKIP_HEADER`).
//! Set `OTA_SKIP_HEADER=1` to skip regeneration (e.g. when building from a read-only source).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The functions hal_default.c defines for firmware; libota.so exports them.
const HAL_FUNCTIONS: [&str; 13] = [
    "HAL_Malloc",
    "HAL_Free",
    "HAL_Printf",
    "HAL_Snprintf",
    "HAL_SleepMs",
    "HAL_UptimeMs",
    "HAL_SetProductKey",
    "HAL_SetDeviceName",
    "HAL_SetDeviceSecret",
    "HAL_GetProductKey",
    "HAL_GetDeviceName",
    "HAL_GetDeviceSecret",
    "HAL_GetFirmwareVersion",
];

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/iot_import.h");
    println!("cargo:rerun-if-env-changed=OTA_SKIP_HEADER");
    // A SONAME, so programs linked against libota.so record the name, not the build path.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libota.so");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    if std::env::var_os("OTA_SKIP_HEADER").is_none() {
        generate_header(&crate_dir);
    }
    // After the header: hal_default.c includes it, so the compiler checks each default against
    // the prototype firmware sees.
    cc::Build::new()
        .file(crate_dir.join("src/ffi/hal_default.c"))
        .include(crate_dir.join("include"))
        .std("c99")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("ota_hal_default");
    export_hal_from_cdylib();
}

/// Adds the version script that exports [`HAL_FUNCTIONS`] from libota.so, when the linker
/// accepts it next to rustc's own (probed with the same rustc, target, flags and linker).
fn export_hal_from_cdylib() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let map = out.join("hal_exports.map");
    let names: String = HAL_FUNCTIONS
        .iter()
        .map(|f| format!("    {f};\n"))
        .collect();
    std::fs::write(&map, format!("{{\n  global:\n{names}}};\n")).unwrap();
    let probe_map = out.join("probe_exports.map");
    std::fs::write(&probe_map, "{\n  global:\n    ota_link_probe;\n};\n").unwrap();
    if links_with_second_version_script(&out, &probe_map) {
        println!(
            "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
            map.display()
        );
    } else {
        println!(
            "cargo:warning=a cdylib did not link with a second version script (GNU ld takes \
             one only): libota.so will not export the HAL_* defaults (libota.a has them); \
             link with rust-lld to export them"
        );
    }
}

/// Whether a cdylib links with a second version script besides rustc's.
fn links_with_second_version_script(out: &Path, map: &Path) -> bool {
    let src = out.join("ota_link_probe.rs");
    std::fs::write(
        &src,
        "#[no_mangle]\npub extern \"C\" fn ota_link_probe() {}\n",
    )
    .unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("--crate-type=cdylib")
        .arg("--crate-name=ota_link_probe")
        .arg("--edition=2021")
        .arg("--target")
        .arg(std::env::var("TARGET").unwrap())
        .arg("--out-dir")
        .arg(out)
        .arg("-C")
        .arg(format!("link-arg=-Wl,--version-script={}", map.display()));
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    cmd.arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn generate_header(crate_dir: &Path) {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    match cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(crate_dir.join("include/ota.h"));
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}
