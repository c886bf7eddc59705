//! The zero-allocation JSON reader and writer on arbitrary text (checks in `src/json.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::json::run(data));
