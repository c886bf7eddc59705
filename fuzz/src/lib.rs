//! The checks behind the fuzz targets in `fuzz_targets/`, shared with the main crate's
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so every saved input
//! is replayed by `cargo test` without libFuzzer.
//!
//! Each entry point takes the raw fuzz input, must never panic, and asserts the invariants of
//! what it exercises: a failed assertion is a finding, like a crash.

pub mod breakpoint;
pub mod c_api;
pub mod decode;
pub mod delta;
pub mod download;
pub mod image;
pub mod input;
pub mod json;
pub mod mqtt;
pub mod package;

/// What a target runs on one input; it panics when a check fails.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (the directories under `corpus/` and `regressions/`), with the
/// function each runs on an input.
pub const TARGETS: [(&str, Check); 12] = [
    ("decode_aliyun", decode::aliyun),
    ("decode_tencent", decode::tencent),
    ("decode_ucloud", decode::ucloud),
    ("decode_sagoo", decode::sagoo),
    ("json", json::run),
    ("breakpoint", breakpoint::run),
    ("c_api", c_api::run),
    ("mqtt_client", mqtt::run),
    ("image_tlv", image::run),
    ("files", package::run),
    ("download_reply", download::run),
    ("delta", delta::run),
];
