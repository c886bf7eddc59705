//! The breakpoint-record reader on arbitrary bytes (checks in `src/breakpoint.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::breakpoint::run(data));
