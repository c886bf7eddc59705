//! sagoo OTA protocol: being written (see ../shared/PROTOCOLS.md).

use super::json::JsonError;
use super::{Channel, Downstream, Limits, NoticeError, Report, UpgradeNotice};

/// Decodes a downstream message into `out`.
pub fn decode(
    _payload: &[u8],
    _limits: &Limits,
    _out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    Err(NoticeError::Unsupported(
        "this protocol is not implemented yet",
    ))
}

/// Encodes a device report; `None` when the protocol has no message for it.
pub fn encode(
    _report: &Report<'_>,
    _id: u64,
    _out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    Ok(None)
}
