//! What the integration tests share, declared once: each test crate says `mod common;` and
//! uses the parts it needs.

// Every test file is its own crate, and none uses all of this.
#![allow(dead_code)]

pub mod capi;
pub mod certs;
pub mod cmqtt;
pub mod delta;
pub mod firmware;
pub mod flaky;
pub mod imgtool;
pub mod mcuboot;
pub mod mosquitto;
pub mod mqtt_wire;
pub mod net;
pub mod platform;
pub mod recorder;
pub mod wait;
