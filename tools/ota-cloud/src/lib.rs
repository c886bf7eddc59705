//! `ota-cloud`: a local OTA platform simulator for testing device firmware without a cloud
//! account.
//!
//! - [`FirmwareServer`] serves one firmware image over HTTP/1.1 on 127.0.0.1 (Range, keep-alive,
//!   HEAD) and can inject faults ([`Faults`]).
//! - [`EmbeddedBroker`] runs a small MQTT 3.1.1 broker in-process (our own: rumqttd refuses the
//!   `$`-topics Tencent uses).
//! - [`Cloud`] plays the platform's side of an OTA upgrade over MQTT and checks every message
//!   the device sends against the protocol ([`Protocol`]: Aliyun, SagooIOT, Tencent, UCloud;
//!   one pure module each: [`aliyun`], [`sagoo`], [`tencent`], [`ucloud`], which share the
//!   types of [`platform`] and need nothing from [`cloud`]).
//! - [`Milestones`] tie the cloud's own announcements (the same upgrade again, a different one
//!   that supersedes it) to the share of the image the server has sent.
//! - [`Package`]: an upgrade of several files (`files`) or over MQTT (`dProtocol` `mqtt`),
//!   Aliyun and SagooIOT; [`MqttDownloadServer`] answers the device's block requests.
//! - [`demo`] runs a whole upgrade on one machine, also with an image signed by MCUboot's
//!   `imgtool` ([`imgtool`] runs it) or tampered with, or as a delta upgrade.
//! - [`delta`]: delta upgrades, where the platform serves a detools sequential patch from the
//!   device's old image to the new one ([`delta::Detools`] runs the real detools).
//!
//! This crate deliberately does not depend on the `ota` crate: it is an independent checker of
//! what the device sends, so a bug shared by both sides cannot hide.

pub mod aliyun;
pub mod broker;
pub mod cloud;
pub mod console;
pub mod counting;
pub mod delta;
pub mod demo;
pub mod fleet;
pub mod http;
pub mod imgtool;
pub mod milestones;
pub mod mqtt_download;
pub mod options;
pub mod package;
pub mod platform;
pub mod sagoo;
pub mod tencent;
pub mod ucloud;

pub use broker::EmbeddedBroker;
pub use cloud::{
    AliyunCloud, Announcement, Cloud, CloudOptions, Failure, Observer, Protocol, SharedConnection,
    Stage, Success, Summary, TargetOutcome, Trigger, UpgradeRecord, DEFAULT_GRACE,
    DEFAULT_MAX_UPGRADE_MESSAGES,
};
pub use http::{ExpireRule, Faults, FirmwareServer, RequestLog, SentMeter, UrlRenewer};
pub use milestones::{Milestones, NextUpgrade, Supersede};
pub use mqtt_download::{MqttDownloadServer, MqttDownloadStats, MqttFaults};
pub use package::{Delivery, HttpPackageMeter, Package, PackageFile, PackageMeter};
pub use platform::{md5_hex, sha256_hex, DeviceMsg, Firmware, TencentState};
pub use sagoo::SignMethod;

/// The seed of [`generate_firmware`].
pub const FIRMWARE_SEED: u64 = 0x5eed_f1a3_0000_0001;

/// The seed of the image that supersedes the first one ([`Milestones`]): same size, other
/// bytes.
pub const NEXT_FIRMWARE_SEED: u64 = 0x5eed_f1a3_0000_0002;

/// A deterministic pseudo-random firmware image of `size` bytes (the same bytes every time), so
/// a test or a second process can regenerate it instead of shipping a binary.
pub fn generate_firmware(size: usize) -> Vec<u8> {
    generate_firmware_seeded(size, FIRMWARE_SEED)
}

/// [`generate_firmware`] from another seed: another image of the same size.
pub fn generate_firmware_seeded(size: usize, seed: u64) -> Vec<u8> {
    // splitmix64: tiny, fast, and good enough that the image does not compress to nothing.
    let mut state: u64 = seed;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_firmware_is_deterministic_and_prefix_stable() {
        let a = super::generate_firmware(1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, super::generate_firmware(1000));
        assert_eq!(&super::generate_firmware(1003)[..1000], &a[..]);
        assert!(super::generate_firmware(0).is_empty());
        // Not constant: every byte value shows up in a few KiB.
        let b = super::generate_firmware(8192);
        assert_eq!(
            b.iter().collect::<std::collections::HashSet<_>>().len(),
            256
        );
    }
}
