//! The detools sequential-patch applier on arbitrary patches and saved states (checks in
//! `src/delta.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::delta::run(data));
