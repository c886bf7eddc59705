//! `ota`: a device-side OTA (firmware over-the-air upgrade) client.
//!
//! The crate is the engine behind `libota.a`, whose C ABI mirrors the Aliyun iotkit v2.3
//! `IOT_OTA_*` / `IOT_MQTT_*` API (see `include/ota.h`). Rust programs use the same engine directly:
//!
//! * [`MqttClient`]: a synchronous MQTT client (rumqttc) driven by [`MqttClient::yield_for`];
//! * [`OtaSession`]: one device's upgrade state machine for one [`Protocol`];
//! * [`Error`]: every failure, typed.
//!
//! Everything an [`OtaSession`] needs is allocated when it is created; afterwards it only writes
//! into those buffers and the caller's (see `tests/alloc.rs`).

// One home for the rule, src/ffi included: cbindgen copies those docs into include/ota.h.
#![deny(missing_docs)]

pub mod conninfo;
pub mod delta;
pub mod digest;
pub mod error;
pub mod image;
pub mod link;
pub mod log;
pub mod mqtt;
pub mod mqtt_source;
pub mod net;
pub mod ota;
pub mod protocol;
pub mod resume;
pub mod retry;
pub mod source;
pub mod tls;
#[cfg(feature = "tls")]
mod tls_link;

pub mod ffi;

pub use error::Error;
pub use mqtt::{MqttClient, MqttOptions};
pub use ota::{OtaConfig, OtaSession, OtaState};
pub use protocol::Protocol;
