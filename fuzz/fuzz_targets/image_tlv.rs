//! The MCUboot image header/TLV parser and streaming verifier on arbitrary images, chunkings
//! and save/restore points (checks in `src/image.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::image::run(data));
