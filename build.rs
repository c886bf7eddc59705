//! Generates `include/ota.h` from `src/ffi` with cbindgen.
//!
//! The header is checked in. `tests/run.sh` fails when a build changed it (regenerated, not
//! committed); `tests/header.rs` fails when it differs from a fresh generation without this
//! script having rewritten it (edited by hand, or built with `OTA_SKIP_HEADER`).
//! Set `OTA_SKIP_HEADER=1` to skip regeneration (e.g. when building from a read-only source).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=OTA_SKIP_HEADER");
    // A SONAME, so programs linked against libota.so record the name, not the build path.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libota.so");
    if std::env::var_os("OTA_SKIP_HEADER").is_some() {
        return;
    }
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(crate_dir.join("include/ota.h"));
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}
