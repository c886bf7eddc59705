//! The one error type of the crate. Its mapping to the C `IOT_OTA_Err_t` codes lives in `ffi/`.
//!
//! Every variant carries only static text and numbers, so building an error never allocates.

pub use crate::fetch::FetchError;
pub use crate::protocol::NoticeError;

/// Why an MQTT operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("request queue full; call yield to flush it")]
    QueueFull,
    #[error("broker refused the connection (CONNACK code {0})")]
    Refused(u8),
    #[error("network error: {0}")]
    Io(std::io::ErrorKind),
    #[error("TLS error")]
    Tls,
    #[error("connection timed out")]
    Timeout,
    #[error("MQTT protocol error")]
    Protocol,
    #[error("invalid topic or topic filter")]
    Topic,
    #[error("no free subscription slot")]
    TooManySubscriptions,
    #[error("packet larger than the maximum packet size")]
    TooLarge,
}

/// Every failure of the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid parameter: {0}")]
    InvalidParam(&'static str),
    #[error("not allowed in the current state: {0}")]
    InvalidState(&'static str),
    #[error("{what} is {len} bytes, longer than the {max}-byte limit")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("upgrade message rejected: {0}")]
    Notice(#[from] NoticeError),
    #[error("download failed: {0}")]
    Fetch(#[from] FetchError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] MqttError),
    #[error("the platform refused the version report (result_code {0})")]
    VersionRefused(i64),
    #[error("not available: {0}")]
    NotAvailable(&'static str),
    #[error("out of memory")]
    NoMemory,
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
