//! The MQTT download reply frame parser on arbitrary bytes (checks in `src/download.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::download::run(data));
