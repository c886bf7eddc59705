//! The vocabulary the platform modules ([`crate::aliyun`], [`crate::sagoo`], [`crate::tencent`],
//! [`crate::ucloud`]) share with the orchestrator ([`crate::Cloud`]): what the cloud offers the
//! device ([`Firmware`]) and what the device said, once checked ([`DeviceMsg`]). Kept apart so
//! the platform modules need nothing from the orchestrator, which uses them.

use md5::{Digest, Md5};
use sha2::Sha256;

/// What the cloud offers the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub version: String,
    pub url: String,
    pub size: u64,
    /// 32 lowercase hex digits.
    pub md5: String,
    /// 64 lowercase hex digits (SagooIOT with `signMethod` SHA256).
    pub sha256: String,
}

impl Firmware {
    /// Describes `image`, served at `url`, as version `version`.
    pub fn new(version: impl Into<String>, url: impl Into<String>, image: &[u8]) -> Firmware {
        Firmware {
            version: version.into(),
            url: url.into(),
            size: image.len() as u64,
            md5: md5_hex(image),
            sha256: sha256_hex(image),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of `data` as 32 lowercase hex digits.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// SHA-256 of `data` as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// A Tencent `report_progress` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TencentState {
    /// Download percent 0..=100.
    Downloading { percent: u8 },
    /// The download is complete; flashing starts.
    Burning,
    /// The upgrade is complete.
    Done,
    /// `result_code` -1..=-5 and its (non-empty) `result_msg`.
    Fail { code: i32, msg: String },
}

/// A checked device → cloud message, independent of the platform's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMsg {
    /// The device reports its running version (at start-up, and again after the reboot):
    /// Aliyun/SagooIOT `inform`, Tencent `report_version`, UCloud `report`.
    Version {
        version: String,
        module: Option<String>,
    },
    /// Aliyun/SagooIOT progress: download percent 0..=100, or a failure step -1..=-4.
    /// `module` and `strategy` are SagooIOT's (always `None` for Aliyun).
    Progress {
        step: i32,
        desc: Option<String>,
        module: Option<String>,
        strategy: Option<String>,
    },
    /// The device asks for the firmware again (Aliyun).
    Request {
        version: String,
        module: Option<String>,
    },
    /// Tencent `report_progress` for `version`.
    TencentProgress {
        version: String,
        state: TencentState,
    },
    /// UCloud `notify`: the device accepted task `task_id`.
    TaskAck { task_id: String },
    /// UCloud `upgrading`.
    TaskUpgrading { task_id: String },
    /// UCloud `success`.
    TaskSuccess { task_id: String },
    /// UCloud `fail` with its `ErrMsg`.
    TaskFail { task_id: String, err_msg: String },
}
