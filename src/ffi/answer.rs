//! Writing `IOT_OTA_Ioctl` answers into the caller's buffer: a uint32_t of exactly 4 bytes, a
//! NUL-terminated string that fits or nothing at all, and the refusals that go with them. Shared
//! by the query types of `ioctl.rs` and `image.rs`.

use std::ffi::c_int;

use super::guard::put_c_str;
use super::ota::{reject, OtaHandle, STR_TOO_LONG};
use crate::error::Error;
use crate::log::Level;
use crate::ota_log;
use crate::protocol::UpgradeNotice;

/// Rejects a `buf_len` other than 4 for a uint32_t answer (before any state check).
pub(crate) fn check_u32_len(h: &OtaHandle, buf_len: usize) -> Result<(), c_int> {
    if buf_len != 4 {
        return Err(reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("buf_len must be 4 for this type"),
        ));
    }
    Ok(())
}

/// Writes a uint32_t answer; `out` must be 4 bytes.
pub(crate) fn put_u32(h: &OtaHandle, out: &mut [u8], v: u64) -> c_int {
    if let Err(code) = check_u32_len(h, out.len()) {
        return code;
    }
    let Ok(v) = u32::try_from(v) else {
        return reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("value exceeds uint32_t"),
        );
    };
    out.copy_from_slice(&v.to_ne_bytes());
    0
}

/// Writes a NUL-terminated string answer.
pub(crate) fn put_str(h: &OtaHandle, out: &mut [u8], s: &[u8]) -> c_int {
    if put_c_str(out, s) {
        0
    } else {
        too_small(h, out.len(), s.len())
    }
}

/// Writes a field of the accepted upgrade as a NUL-terminated string, under the session lock.
pub(crate) fn put_notice_str(
    h: &OtaHandle,
    out: &mut [u8],
    field: fn(&UpgradeNotice) -> &[u8],
) -> c_int {
    let buf_len = out.len();
    let missing = h.ota_session().with_notice(|n| {
        let v = field(n);
        (!put_c_str(out, v)).then_some(v.len())
    });
    // Errors are recorded after the lock is released (recording takes it again).
    match missing {
        None => 0,
        Some(len) => too_small(h, buf_len, len),
    }
}

pub(crate) fn too_small(h: &OtaHandle, buf_len: usize, len: usize) -> c_int {
    ota_log!(
        Level::Error,
        "IOT_OTA_Ioctl: buffer of {buf_len} bytes cannot hold {len} bytes plus NUL"
    );
    h.ota_session().record_error(Error::TooLong {
        what: "Ioctl answer",
        len: len + 1,
        max: buf_len,
    });
    STR_TOO_LONG
}

pub(crate) fn not_available(h: &OtaHandle, what: &'static str) -> c_int {
    reject(h, "IOT_OTA_Ioctl", Error::NotAvailable(what))
}

/// A `uint32_t` argument of a configuration Ioctl (its length checked as for the answers).
pub(crate) fn get_u32(h: &OtaHandle, buf: &[u8]) -> Result<u32, c_int> {
    check_u32_len(h, buf.len())?;
    let mut v = [0u8; 4];
    v.copy_from_slice(buf);
    Ok(u32::from_ne_bytes(v))
}
