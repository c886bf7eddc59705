//! The MQTT client against a broker sending arbitrary bytes (checks in `src/mqtt.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_fuzz::mqtt::run(data));
