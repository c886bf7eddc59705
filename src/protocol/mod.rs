//! The four platforms' OTA wire formats: topics, upstream messages (encode) and upgrade
//! notifications (decode). Pure: bytes in, bytes out; no I/O, no allocation after the buffers
//! sized by [`Limits`] at init.
//!
//! One file per platform; adding a platform touches this folder and [`Protocol`] only.
//! The four formats side by side, with the readings taken where a platform's document is
//! ambiguous: `docs/protocols.md`.

pub mod aliyun;
pub mod delta_old;
mod fields;
pub mod fixed;
pub mod json;
pub mod mqtt_download;
pub mod package;
pub mod sagoo;
pub mod tencent;
pub mod ucloud;

pub use delta_old::DeltaRequirement;
pub use fixed::{FixedStr, SetJsonError, TooLong};
use json::JsonError;
pub use package::{FileList, PackageFile, Transfer};

/// The IoT platform whose OTA protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Aliyun IoT (iotkit v2.3): `/ota/device/{inform,upgrade,progress,request}/{pk}/{dn}`.
    Aliyun,
    /// SagooIOT: Aliyun's topics, with string ids, a choice of digest and `extData`.
    Sagoo,
    /// Tencent Cloud IoT: `$ota/update` down, `$ota/report` up, messages typed by `type`.
    Tencent,
    /// UCloud IoT: `/$system/{pk}/{dn}/ota/{downstream,upstream}`, with task ids.
    Ucloud,
}

impl Protocol {
    /// The four, in the order of their [`id`](Self::id)s.
    pub const ALL: [Protocol; 4] = [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ];

    /// This platform's facts, kept in its own file.
    fn facts(self) -> &'static Facts {
        match self {
            Protocol::Aliyun => &aliyun::FACTS,
            Protocol::Sagoo => &sagoo::FACTS,
            Protocol::Tencent => &tencent::FACTS,
            Protocol::Ucloud => &ucloud::FACTS,
        }
    }

    /// Lowercase name (`aliyun`, `sagoo`, `tencent`, `ucloud`), for logs and configuration.
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// The number stored in breakpoint records and passed to `IOT_OTA_InitWithProtocol`;
    /// fixed forever, independent of the enum's order.
    pub fn id(self) -> u8 {
        self.facts().id
    }

    /// The protocol whose [`id`](Self::id) is `id`; `None` for an unknown number.
    pub fn from_id(id: u8) -> Option<Protocol> {
        Self::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The device can ask for the upgrade (and so a fresh URL) itself: Aliyun's request topic.
    pub fn can_request_upgrade(self) -> bool {
        self.facts().can_request_upgrade
    }

    /// The platform counts the new version's report as the upgrade's success, so a success
    /// report and a version report are one message (Aliyun, SagooIOT).
    pub fn success_is_version_report(self) -> bool {
        self.facts().success_is_version_report
    }

    /// The largest message id the platform accepts (Aliyun documents 0..=4294967295).
    pub fn max_message_id(self) -> u64 {
        self.facts().max_message_id
    }

    /// Whether a 0 % progress report may be sent: Aliyun's and SagooIOT's `step` runs 1..100
    /// (a "0" is outside the platform's range), Tencent's percent 0..100.
    pub fn sends_zero_percent(self) -> bool {
        self.facts().sends_zero_percent
    }

    /// Whether upgrade messages carry `extData` (SagooIOT's), kept in
    /// [`UpgradeNotice::ext_data`]; the others need no room for it.
    pub fn carries_ext_data(self) -> bool {
        self.facts().carries_ext_data
    }

    /// Whether the platform's upgrades may be packages (a `files` array): Aliyun, SagooIOT.
    pub fn carries_packages(self) -> bool {
        self.facts().carries_packages
    }
}

/// What sets one platform apart besides its message formats. Each platform's file defines its
/// own `FACTS`; [`Protocol`]'s methods read them, so adding a platform adds one file and one
/// arm of `Protocol::facts`.
pub(crate) struct Facts {
    /// [`Protocol::name`].
    pub(crate) name: &'static str,
    /// [`Protocol::id`]: written into breakpoint records, so never reused or changed.
    pub(crate) id: u8,
    /// [`Protocol::can_request_upgrade`].
    pub(crate) can_request_upgrade: bool,
    /// [`Protocol::success_is_version_report`].
    pub(crate) success_is_version_report: bool,
    /// [`Protocol::max_message_id`]: where message ids wrap.
    pub(crate) max_message_id: u64,
    /// [`Protocol::sends_zero_percent`].
    pub(crate) sends_zero_percent: bool,
    /// [`Protocol::carries_ext_data`].
    pub(crate) carries_ext_data: bool,
    /// [`Protocol::carries_packages`].
    pub(crate) carries_packages: bool,
    /// The device's topics from its product key and device name ([`Topics::new`]).
    pub(crate) topics: fn(product_key: &str, device_name: &str) -> Topics,
}

pub use crate::digest::DigestKind;

/// Field limits fixed at init; longer values are rejected with [`NoticeError::TooLong`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Firmware URL, bytes.
    pub url: usize,
    /// Version strings, bytes.
    pub version: usize,
    /// Module names, bytes.
    pub module: usize,
    /// Task ids (UCloud), bytes.
    pub task_id: usize,
    /// `extData` JSON text (SagooIOT), bytes.
    pub ext_data: usize,
    /// Largest upstream message this session builds, bytes.
    pub message: usize,
    /// Largest downstream message accepted, bytes.
    pub downstream: usize,
    /// Most files one package (`files` array) may hold; more is [`NoticeError::TooManyFiles`].
    /// Each costs a URL's room in every notice the session keeps (three), so the default is 0
    /// (a `files` array is refused as too many files) until the engine walks packages;
    /// sessions of platforms without packages (Tencent, UCloud) always get 0.
    pub max_files: usize,
    /// Longest file name in a package, bytes.
    pub max_file_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            url: 2048,
            version: 63,
            module: 63,
            task_id: 63,
            ext_data: 1024,
            message: 1024,
            downstream: 8192,
            max_files: 0,
            max_file_name: 64,
        }
    }
}

/// A decoded upgrade notification. Allocated once at init with [`UpgradeNotice::new`]; decoding
/// overwrites it in place.
#[derive(Debug, Clone)]
pub struct UpgradeNotice {
    /// The version the upgrade installs (never empty once decoded).
    pub version: FixedStr,
    /// Where the image is downloaded from, `http://` or `https://` (often pre-signed, so it
    /// may expire and be renewed by a later notification).
    pub url: FixedStr,
    /// Module to upgrade; empty means `default`.
    pub module: FixedStr,
    /// Platform task id (UCloud); empty where the protocol has none.
    pub task_id: FixedStr,
    /// `extData` as JSON text (SagooIOT); empty where absent.
    pub ext_data: FixedStr,
    /// The version the task upgrades from (UCloud `CurrentVersion`); empty where absent.
    pub current_version: FixedStr,
    /// The batch id to echo in progress reports (SagooIOT `extData.strategy`); empty where absent.
    pub batch: FixedStr,
    /// Image size in bytes, 1 ..= `u32::MAX`.
    pub size: u64,
    /// Which digest [`digest`](Self::digest) holds.
    pub digest_kind: DigestKind,
    /// Expected digest; the first `digest_kind.len()` bytes are meaningful.
    pub digest: [u8; 32],
    /// The message id, where the protocol sends one.
    pub message_id: u64,
    /// The files of a package (`files` array): empty for a single-file upgrade (today's
    /// shape), else one entry per file in the platform's order. For a package of one file the
    /// fields above repeat that file; for more, `url` is empty, `size` is the sum of the files'
    /// sizes and `digest` all zero (each file has its own).
    pub files: FileList,
    /// How the image is fetched: HTTP(S) from `url`, or blocks over MQTT (`dProtocol`).
    pub transfer: Transfer,
    /// What a delta patch requires of the running image (`extData`'s `_delta_old_size` and
    /// `_delta_old_sha256`, SagooIOT and Aliyun); empty where the message declares nothing.
    pub delta_old: DeltaRequirement,
}

impl UpgradeNotice {
    /// An empty notice whose text fields hold up to the sizes in `limits` (`current_version`
    /// takes the version's limit, `batch` the task id's); the only allocation.
    pub fn new(limits: &Limits) -> Self {
        UpgradeNotice {
            version: FixedStr::with_capacity(limits.version),
            url: FixedStr::with_capacity(limits.url),
            module: FixedStr::with_capacity(limits.module),
            task_id: FixedStr::with_capacity(limits.task_id),
            ext_data: FixedStr::with_capacity(limits.ext_data),
            current_version: FixedStr::with_capacity(limits.version),
            batch: FixedStr::with_capacity(limits.task_id),
            size: 0,
            digest_kind: DigestKind::Md5,
            digest: [0; 32],
            message_id: 0,
            files: FileList::new(limits),
            transfer: Transfer::Http,
            delta_old: DeltaRequirement::default(),
        }
    }

    /// Resets every field (capacities kept).
    pub fn clear(&mut self) {
        self.version.clear();
        self.url.clear();
        self.module.clear();
        self.task_id.clear();
        self.ext_data.clear();
        self.current_version.clear();
        self.batch.clear();
        self.size = 0;
        self.digest_kind = DigestKind::Md5;
        self.digest = [0; 32];
        self.message_id = 0;
        self.files.clear();
        self.transfer = Transfer::Http;
        self.delta_old = DeltaRequirement::default();
    }

    /// The expected digest bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest[..self.digest_kind.len()]
    }

    /// The module name, `default` when the platform sent none.
    pub fn module_name(&self) -> &str {
        if self.module.is_empty() {
            "default"
        } else {
            self.module.as_str()
        }
    }

    /// Whether `other` announces the same image (version, module, size and digest, the files of
    /// a package of several, and the transfer); a re-sent notification of the same upgrade may
    /// carry fresh URLs.
    pub fn same_image(&self, other: &UpgradeNotice) -> bool {
        self.version == other.version
            && self.module_name() == other.module_name()
            && self.size == other.size
            && self.digest_kind == other.digest_kind
            && self.digest() == other.digest()
            && self.task_id == other.task_id
            && self.files.same_files(&other.files)
            && self.transfer == other.transfer
    }

    /// Whether this upgrade is a package of several files (the engine fetches one file today).
    pub fn is_package(&self) -> bool {
        self.files.len() > 1
    }
}

/// Why an upgrade notification was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// The payload is not one well-formed JSON object.
    #[error("not a valid JSON object ({0})")]
    Json(JsonError),
    /// The payload is longer than [`Limits::downstream`].
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Bytes of the payload.
        len: usize,
        /// [`Limits::downstream`].
        max: usize,
    },
    /// A required field is absent (named).
    #[error("missing field \"{0}\"")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field \"{field}\" is a {found}, expected a {expected}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// The type the protocol requires (`string`, `number`, `integer`, `object`).
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// The notification's `code` is not the success code (Aliyun `1000`, SagooIOT `200`).
    #[error("the platform reports a failure (code is not the success code)")]
    NotSuccess,
    /// A text field does not fit its [`Limits`] (never truncated).
    #[error("field \"{field}\" is {len} bytes, longer than the {max}-byte limit fixed at init")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its length in bytes, unescaped.
        len: usize,
        /// The limit fixed at init.
        max: usize,
    },
    /// A field that must have a value is empty (e.g. `version`).
    #[error("field \"{0}\" is empty")]
    Empty(&'static str),
    /// A text field holds `\u0000`, which would cut it short in C.
    #[error("field \"{0}\" contains a NUL character, which a C string cannot carry")]
    Nul(&'static str),
    /// The named digest field is not exactly 32 (MD5) or 64 (SHA-256) hex digits.
    #[error("digest \"{0}\" is not the expected number of hex digits")]
    BadDigest(&'static str),
    /// The size is not an integer in 1..=4294967295.
    #[error("size must be 1 ..= 4294967295 bytes")]
    BadSize,
    /// The URL is not `http://` or `https://` followed by a host.
    #[error("url must start with http:// or https://")]
    BadUrl,
    /// A valid notification asks for something the SDK does not do (SagooIOT packages over
    /// MQTT, an unknown `signMethod`); it is refused with a failure report.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The upgrade is for devices on another version (UCloud `CurrentVersion`); refused with
    /// a failure report.
    #[error("the task upgrades from another version than the one running")]
    NotForRunningVersion,
    /// The package's `files` array holds no file.
    #[error("the package's \"files\" array is empty")]
    EmptyPackage,
    /// The package holds more files than [`Limits::max_files`].
    #[error("the package holds {count} files, more than the {max} fixed at init")]
    TooManyFiles {
        /// Files in the array.
        count: usize,
        /// [`Limits::max_files`].
        max: usize,
    },
    /// A file's name is longer than [`Limits::max_file_name`] (never truncated).
    #[error(
        "the name of file {index} is {len} bytes, longer than the {max}-byte limit fixed at init"
    )]
    FileNameTooLong {
        /// The file's place in the array, from 0.
        index: usize,
        /// The name's length in bytes, unescaped.
        len: usize,
        /// [`Limits::max_file_name`].
        max: usize,
    },
    /// A file of the package lacks a field it needs (its URL, digest, size or name).
    #[error("file {index} of the package has no \"{field}\"")]
    FileIncomplete {
        /// The file's place in the array, from 0.
        index: usize,
        /// The missing field.
        field: &'static str,
    },
    /// Two files of the package have the same name.
    #[error("file {index} of the package repeats the name of an earlier file")]
    DuplicateFileName {
        /// The later file's place in the array, from 0.
        index: usize,
    },
}

/// The topics one device uses, built once at init.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Where upgrade notifications arrive (the session subscribes to it).
    pub downstream: String,
    /// Version reports.
    pub inform: String,
    /// Progress reports.
    pub progress: String,
    /// Firmware requests (Aliyun); equal to `inform` where the protocol has one upstream topic.
    pub request: String,
}

impl Topics {
    /// The topics of `protocol` for the device `device_name` of `product_key` (used as given,
    /// not checked).
    pub fn new(protocol: Protocol, product_key: &str, device_name: &str) -> Topics {
        (protocol.facts().topics)(product_key, device_name)
    }

    /// A device's topics where every upstream message shares one topic (Tencent, UCloud).
    pub(crate) fn one_upstream(downstream: String, upstream: String) -> Topics {
        Topics {
            downstream,
            inform: upstream.clone(),
            progress: upstream.clone(),
            request: upstream,
        }
    }

    /// The topic messages of `channel` are published to.
    pub fn for_channel(&self, channel: Channel) -> &str {
        match channel {
            Channel::Inform => &self.inform,
            Channel::Progress => &self.progress,
            Channel::Request => &self.request,
        }
    }
}

/// Which upstream topic a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Version reports (and success, where that is a version report).
    Inform,
    /// Progress, burning, failure and task-state reports (success too where it is not a
    /// version report).
    Progress,
    /// Requests for the upgrade (Aliyun).
    Request,
}

/// Why an upgrade failed, as precisely as the SDK knows; each protocol maps it to its own
/// codes (Aliyun/SagooIOT `step`, Tencent `result_code`, UCloud `ErrMsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The download timed out (Tencent −1).
    DownloadTimeout,
    /// The firmware file does not exist (HTTP 404; Tencent −2).
    NotFound,
    /// The signed URL expired (HTTP 403; Tencent −3).
    UrlExpired,
    /// Any other download failure (connection, HTTP status, size).
    DownloadFailed,
    /// The image's digest did not match (Tencent −4).
    DigestMismatch,
    /// Writing the image to flash failed.
    BurnFailed,
    /// The upgrade failed for another reason (or was refused).
    UpgradeFailed,
}

impl FailureCause {
    /// The Aliyun/SagooIOT progress `step`: −1 upgrade, −2 download, −3 verify, −4 burn.
    pub fn step(self) -> i32 {
        match self {
            FailureCause::DownloadTimeout
            | FailureCause::NotFound
            | FailureCause::UrlExpired
            | FailureCause::DownloadFailed => -2,
            FailureCause::DigestMismatch => -3,
            FailureCause::BurnFailed => -4,
            FailureCause::UpgradeFailed => -1,
        }
    }

    /// The cause an Aliyun-style `step` names, when the SDK knows nothing more precise.
    pub fn from_step(step: i32) -> FailureCause {
        match step {
            -2 => FailureCause::DownloadFailed,
            -3 => FailureCause::DigestMismatch,
            -4 => FailureCause::BurnFailed,
            _ => FailureCause::UpgradeFailed,
        }
    }
}

/// A message from the device to the platform. Upgrade-related reports carry the accepted
/// [`UpgradeNotice`] so each protocol can echo what it needs (version, module, task id, batch).
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    /// The running version (of `module`, when given).
    Version {
        /// The version the device runs.
        version: &'a str,
        /// The module it is the version of; `None` or `default` for the default module.
        module: Option<&'a str>,
    },
    /// Ask the platform to (re)send the upgrade for the running `version`.
    Request {
        /// The version the device runs.
        version: &'a str,
        /// The module to upgrade; `None` or `default` for the default module.
        module: Option<&'a str>,
    },
    /// The upgrade was accepted (UCloud acknowledges the task).
    Accepted {
        /// The accepted upgrade.
        notice: &'a UpgradeNotice,
    },
    /// The download started (UCloud `upgrading`).
    Upgrading {
        /// The upgrade being downloaded.
        notice: &'a UpgradeNotice,
    },
    /// Download progress 0..=100, with an optional description.
    Progress {
        /// Percent of the image downloaded, 0..=100.
        percent: u8,
        /// Free text for the platform (may be empty; SagooIOT keeps 128 characters).
        desc: &'a str,
        /// The upgrade being downloaded.
        notice: &'a UpgradeNotice,
    },
    /// The image is downloaded and verified; flashing begins.
    Burning {
        /// The upgrade being flashed.
        notice: &'a UpgradeNotice,
    },
    /// The upgrade succeeded: `version` runs now.
    Success {
        /// The version the device runs after the upgrade.
        version: &'a str,
        /// The upgrade that succeeded.
        notice: &'a UpgradeNotice,
    },
    /// The upgrade failed.
    Failure {
        /// Why, mapped to the protocol's failure code.
        cause: FailureCause,
        /// Free text for the platform; when empty, Tencent and UCloud name `cause` instead.
        desc: &'a str,
        /// The upgrade that failed.
        notice: &'a UpgradeNotice,
    },
}

/// What a downstream message turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// An upgrade notification, decoded into the caller's [`UpgradeNotice`].
    Upgrade,
    /// The platform's answer to a version report (Tencent `report_version_rsp`); non-zero
    /// `result_code` means it was refused.
    VersionAck {
        /// 0 accepted; anything else refused.
        result_code: i64,
    },
    /// A message type this device does not act on (accepted without error).
    Ignored,
}

/// Decodes a message that arrived on the downstream topic. On error `out` may be partly
/// written (it is scratch); fields decoded before the error stay readable for a refusal report.
/// Packages of several files (up to [`Limits::max_files`]) and downloads over MQTT (SagooIOT,
/// Aliyun) decode to `Ok` ([`UpgradeNotice::is_package`], [`UpgradeNotice::transfer`]); a
/// session that has them off refuses them itself.
pub fn decode(
    protocol: Protocol,
    payload: &[u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    match protocol {
        Protocol::Aliyun => aliyun::decode(payload, limits, out),
        Protocol::Sagoo => sagoo::decode(payload, limits, out),
        Protocol::Tencent => tencent::decode(payload, limits, out),
        Protocol::Ucloud => ucloud::decode(payload, limits, out),
    }
}

/// Encodes `report` into `out`: the channel and length, or `None` when the protocol has no
/// message for it.
pub fn encode(
    protocol: Protocol,
    report: &Report<'_>,
    id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    match protocol {
        Protocol::Aliyun => aliyun::encode(report, id, out),
        Protocol::Sagoo => sagoo::encode(report, id, out),
        Protocol::Tencent => tencent::encode(report, id, out),
        Protocol::Ucloud => ucloud::encode(report, id, out),
    }
}
