//! The one error type of the crate. Its mapping to the C `IOT_OTA_Err_t` codes lives in `ffi/`.
//!
//! Every variant carries only static text and numbers, so building an error never allocates.

pub use crate::image::ImageError;
pub use crate::protocol::NoticeError;
pub use crate::source::DownloadError;

/// Why an MQTT operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The connection is down (lost and not yet re-established, or closed by `disconnect`).
    #[error("not connected to the broker")]
    NotConnected,
    /// 64 publishes or (un)subscriptions already wait for the next yield to send them.
    #[error("request queue full; call yield to flush it")]
    QueueFull,
    /// The broker answered CONNECT with this CONNACK return code (MQTT 3.1.1: 1 protocol
    /// version, 2 client id rejected, 3 server unavailable, 4 bad user name or password,
    /// 5 not authorized).
    #[error("broker refused the connection (CONNACK code {0})")]
    Refused(u8),
    /// A socket error other than a timeout: `UnexpectedEof` when the broker closed the
    /// connection, `NotFound` when the host resolved to no address.
    #[error("network error: {0}")]
    Io(std::io::ErrorKind),
    /// The TLS handshake or a record failed (e.g. the broker's certificate is not signed by
    /// the given CA, or does not name the host).
    #[error("TLS error")]
    Tls,
    /// Connecting (DNS, TCP, TLS, CONNACK) outlasted its window, a socket read or write timed
    /// out, or a PINGREQ was still unanswered when the next one was due.
    #[error("connection timed out")]
    Timeout,
    /// The broker sent bytes that are not an MQTT 3.1.1 packet, or a packet the protocol state
    /// does not expect (e.g. anything but CONNACK first).
    #[error("MQTT protocol error")]
    Protocol,
    /// A topic to publish is empty or holds `+`/`#`, or a filter is empty or misplaces a
    /// wildcard (`#` only as the last level, `+` and `#` only as whole levels).
    #[error("invalid topic or topic filter")]
    Topic,
    /// A subscription table is full; [`crate::MqttClient`] keeps a growable list and never
    /// returns it.
    #[error("no free subscription slot")]
    TooManySubscriptions,
    /// The packet would exceed the options'
    /// [`max_packet_size`](crate::MqttOptions::max_packet_size) or an MQTT limit (a string
    /// over 65535 bytes); it is refused before it is queued.
    #[error("packet larger than the maximum packet size")]
    TooLarge,
}

/// Every failure of the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument is missing, empty, malformed or not usable in this build; the text says
    /// which.
    #[error("invalid parameter: {0}")]
    InvalidParam(&'static str),
    /// The call does not fit the session's or client's state (e.g. no upgrade under way);
    /// the text says why.
    #[error("not allowed in the current state: {0}")]
    InvalidState(&'static str),
    /// A string or message does not fit its fixed limit or buffer; nothing was sent or written.
    #[error("{what} is {len} bytes, longer than the {max}-byte limit")]
    TooLong {
        /// The string or message that is too long (e.g. "version", "module").
        what: &'static str,
        /// Its length in bytes (for a buffer to fill: what it needs, NUL included).
        len: usize,
        /// The most bytes allowed or available.
        max: usize,
    },
    /// An upgrade message from the platform could not be parsed or was refused.
    #[error("upgrade message rejected: {0}")]
    Notice(#[from] NoticeError),
    /// The firmware download failed (network, HTTP, size or digest).
    #[error("download failed: {0}")]
    Download(#[from] DownloadError),
    /// The image was refused by its own checks (MCUboot hash, signature, key, downgrade, TLV
    /// layout); the platform's digest matched or had not been checked yet.
    #[error("image refused: {0}")]
    Image(#[from] ImageError),
    /// A delta patch was refused by the applier or its old image could not be read (see
    /// [`crate::delta::DeltaError`]); no valid image comes of it.
    #[error("delta patch refused: {0}")]
    Delta(#[from] crate::delta::DeltaError),
    /// A delta patch's upgrade message requires another old image than the running one (its
    /// size or SHA-256); refused before any new-image byte was handed out.
    #[error("delta patch not for the running image: {0}")]
    DeltaOldImage(#[from] crate::delta::OldImageMismatch),
    /// The new image must be rolled back: it booted too often without a confirmation (see
    /// `OtaConfig::confirm_boots`); the platform was told the upgrade failed.
    #[error("roll back: {0}")]
    RollBack(&'static str),
    /// The MQTT connection or a request on it failed.
    #[error("MQTT: {0}")]
    Mqtt(#[from] MqttError),
    /// The platform answered the version report with this non-zero `result_code` (Tencent's
    /// `report_version_rsp`).
    #[error("the platform refused the version report (result_code {0})")]
    VersionRefused(i64),
    /// The upgrade under way does not carry what was asked for (e.g. no task id); the text
    /// says what is missing.
    #[error("not available: {0}")]
    NotAvailable(&'static str),
    /// The MQTT client carries [`crate::ota::MAX_SESSIONS_PER_CLIENT`] OTA sessions already
    /// (C: `IOT_OTAE_TOO_MANY_HANDLES`).
    #[error("too many OTA sessions on this MQTT client")]
    TooManySessions,
    /// An OTA session of this device (product key, device name and protocol's topic) is
    /// attached to this MQTT client already (C: `IOT_OTAE_DEVICE_TAKEN`).
    #[error("an OTA session of this device is attached to this MQTT client already")]
    DeviceTaken,
    /// Creating a session failed for want of memory or another resource (C: `IOT_OTAE_NOMEM`).
    #[error("out of memory")]
    NoMemory,
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
