//! Sequences of `IOT_OTA_*` calls with arbitrary arguments (checks in `src/c_api.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::c_api::run(data));
