//! The SagooIOT and Aliyun package decoders on arbitrary bytes (checks in `src/package.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::package::run(data));
