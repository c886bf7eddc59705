//! UCloud's downstream decoder on arbitrary bytes (checks in `src/decode.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::decode::ucloud(data));
