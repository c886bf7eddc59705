//! The checked-in C header is exactly what cbindgen generates from `src/ffi`.

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
        "include/ota.h is stale: run `cargo build` and commit the regenerated header"
    );
}
