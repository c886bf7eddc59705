//! `IOT_OTA_Ioctl`: one entry point for every query and option type, dispatched here to the
//! upgrade's answers (below) and to the signed-image types (`image.rs`).

use std::ffi::{c_int, c_void};

use super::answer::{check_u32_len, not_available, put_notice_str, put_str, put_u32};
use super::ota::*;
use crate::error::Error;
use crate::ota::{Once, OtaState};

/// Answers one query about the current upgrade; see IOT_OTA_CmdType_t for each type's buffer.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle/buffer, a `buf_len` other than 4 for a
/// uint32_t type (checked before the state), or an unknown/unsupported type;
/// IOT_OTAE_STR_TOO_LONG when a string and its NUL do not fit `buf_len`; IOT_OTAE_INVALID_STATE
/// when the value does not exist yet (no upgrade, download not finished) or not in this upgrade
/// (e.g. SHA-256 of an MD5 upgrade). Nothing is written to `buf` on an error, and a string
/// answer writes exactly its length plus the NUL.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_Ioctl(
    handle: *mut c_void,
    r#type: IOT_OTA_CmdType_t,
    buf: *mut c_void,
    buf_len: usize,
) -> c_int {
    ffi_body!(IOT_OTA_Ioctl, ota(handle), INVALID_PARAM, |h| {
        if buf.is_null() {
            return reject(&h, "IOT_OTA_Ioctl", Error::InvalidParam("buf is NULL"));
        }
        let len = buf_len.min(isize::MAX as usize);
        // SAFETY: non-NULL, and per the contract valid for buf_len >= len bytes of writes.
        let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
        ioctl(&h, r#type, out)
    })
}

fn ioctl(h: &OtaHandle, kind: c_int, out: &mut [u8]) -> c_int {
    let s = h.ota_session();
    let state = s.state();
    match kind {
        IOT_OTAG_FETCHED_SIZE => put_u32(h, out, s.fetched_size()),
        IOT_OTAG_FILE_SIZE => put_u32(h, out, s.file_size()),
        IOT_OTAG_RESUME_OFFSET => put_u32(h, out, s.fetched_size()),
        IOT_OTAG_STATE => {
            let v = match state {
                OtaState::Idle => IOT_OTA_State_t::IOT_OTAS_INITED,
                OtaState::Waiting => IOT_OTA_State_t::IOT_OTAS_WAITING,
                OtaState::Downloading => IOT_OTA_State_t::IOT_OTAS_FETCHING,
                OtaState::Fetched => IOT_OTA_State_t::IOT_OTAS_FETCHED,
            };
            put_u32(h, out, v as u64)
        }
        IOT_OTAG_CHECK_FIRMWARE => {
            // The length is an argument error whatever the state, as for the other uint32_t types.
            if let Err(code) = check_u32_len(h, out.len()) {
                return code;
            }
            match s.check_firmware() {
                Ok(valid) => put_u32(h, out, valid as u64),
                Err(e) => err_code(&e),
            }
        }
        k if super::image::is_image_ioctl(k) => super::image::ioctl(h, k, out),
        k if super::gateway::is_gateway_ioctl(k) => super::gateway::ioctl(h, k, out),
        k if super::package::is_package_ioctl(k) => super::package::ioctl(h, k, out),
        k if NOTICE_QUERIES.contains(&k) => {
            if s.state() == OtaState::Idle {
                return not_available(h, "no upgrade has been accepted");
            }
            notice_query(h, k, out)
        }
        IOT_OTAG_COTA_CONFIG_ID..=IOT_OTAG_COTA_GETTYPE | IOT_OTAG_CHECK_CONFIG => reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("COTA queries are not supported"),
        ),
        _ => reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("unknown Ioctl type"),
        ),
    }
}

/// The Ioctl types answered from the accepted upgrade message.
const NOTICE_QUERIES: [c_int; 7] = [
    IOT_OTAG_MD5SUM,
    IOT_OTAG_VERSION,
    IOT_OTAG_SHA256SUM,
    IOT_OTAG_SIGN_METHOD,
    IOT_OTAG_MODULE,
    IOT_OTAG_TASK_ID,
    IOT_OTAG_EXT_DATA,
];

fn notice_query(h: &OtaHandle, kind: c_int, out: &mut [u8]) -> c_int {
    use crate::protocol::DigestKind;
    let s = h.ota_session();
    match kind {
        IOT_OTAG_MD5SUM | IOT_OTAG_SHA256SUM => {
            let want = if kind == IOT_OTAG_MD5SUM {
                DigestKind::Md5
            } else {
                DigestKind::Sha256
            };
            let mut hex = [0u8; 64];
            // The current file's (a package's files have their own digests).
            let n = s.with_file_digest(|kind, digest| {
                (kind == want).then(|| crate::digest::to_hex(digest, &mut hex).len())
            });
            match n {
                Some(n) => put_str(h, out, &hex[..n]),
                // Firmware asking for MD5 in its loop on a SHA-256 upgrade: one log line.
                None if s.first_in_upgrade(Once::OtherDigest) => {
                    not_available(h, "the upgrade announced another digest")
                }
                None => {
                    let e = Error::NotAvailable("the upgrade announced another digest");
                    s.record_error(e);
                    err_code(&e)
                }
            }
        }
        IOT_OTAG_SIGN_METHOD => {
            let name = s.with_file_digest(|kind, _| kind.name());
            put_str(h, out, name.as_bytes())
        }
        IOT_OTAG_VERSION => put_notice_str(h, out, |n| n.version.as_bytes()),
        IOT_OTAG_MODULE => put_notice_str(h, out, |n| n.module_name().as_bytes()),
        IOT_OTAG_TASK_ID if s.with_notice(|n| n.task_id.is_empty()) => {
            not_available(h, "the upgrade has no task id")
        }
        IOT_OTAG_TASK_ID => put_notice_str(h, out, |n| n.task_id.as_bytes()),
        IOT_OTAG_EXT_DATA if s.with_notice(|n| n.ext_data.is_empty()) => {
            not_available(h, "the upgrade has no extData")
        }
        IOT_OTAG_EXT_DATA => put_notice_str(h, out, |n| n.ext_data.as_bytes()),
        _ => reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("unknown Ioctl type"),
        ),
    }
}
