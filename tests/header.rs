//! The C header in the work tree is exactly what cbindgen generates from `src/ffi`.
//!
//! build.rs rewrites it only when `src/ffi` or `cbindgen.toml` changed, so this fails for a
//! header edited by hand or left stale by an `OTA_SKIP_HEADER` build; a regenerated header
//! that was not committed is caught by `tests/run.sh` (`git diff --exit-code -- include/`).

#[test]
fn checked_in_header_matches_cbindgen_output() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let checked_in = std::fs::read_to_string(root.join("include/ota.h")).unwrap();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let fresh = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    fresh.write(&mut out);
    assert!(
        String::from_utf8(out).unwrap() == checked_in,
        "include/ota.h differs from what cbindgen generates: regenerate it (`touch src/ffi/mod.rs && cargo build`: build.rs reruns when src/ffi changes) and commit it"
    );
}
