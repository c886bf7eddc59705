//! Signed images through `IOT_OTA_Ioctl`: the image policy (keys, signature requirement,
//! running version and security counter, downgrade) set before a download, what the image's own
//! checks found queried after it, and one `IOT_OTA_Err_t` code per refusal; and the
//! confirm-after-boot flow (`IOT_OTA_ConfirmImage`, `IOT_OTA_RejectImage`). Over
//! [`crate::image`] and [`crate::ota::OtaSession`].
//!
//! The confirm-after-boot flow is drawn at `IOT_OTAC_CONFIRM_BOOTS` (so `ota.h` has it).

use std::ffi::{c_int, c_void};

use super::answer::{check_u32_len, get_u32, put_str, put_u32};
use super::ota::{reject, IOT_OTA_CmdType_t, OtaHandle, INVALID_PARAM};
use crate::error::Error;
use crate::image::{ImageKey, ImagePolicy, ImageVersion, VerifiedImage};
use crate::ota::BootState;

/// Configuration, before a download: buf = a vendor public key, `buf_len` its length: PEM text
/// (`imgtool getpub -e pem`; a trailing NUL is allowed), DER SubjectPublicKeyInfo, or raw (32
/// bytes Ed25519, 65 bytes uncompressed P-256). Adds it to the keys images may be signed with
/// (several for rotation; the image's key-hash TLV picks one). IOT_OTAE_INVALID_PARAM when it is
/// no such key.
pub const IOT_OTAC_ADD_IMAGE_KEY: IOT_OTA_CmdType_t = 19;
/// Configuration: uint32_t, buf_len 4: 1 = only MCUboot images signed with an added key are
/// accepted (recommended); 0 = the default, any image the platform's digest accepts (an MCUboot
/// image still gets every check that can be made: its hash, its signature when keys are added,
/// the downgrade rule).
pub const IOT_OTAC_REQUIRE_SIGNATURE: IOT_OTA_CmdType_t = 20;
/// Configuration: char buffer, NUL-terminated within `buf_len`: the running image's version,
/// `MAJOR[.MINOR[.REVISION[+BUILD]]]` as imgtool spells it. An image whose header version
/// (major.minor.revision) is lower is refused (IOT_OTAE_IMAGE_DOWNGRADE). An empty string
/// removes the rule.
pub const IOT_OTAC_RUNNING_VERSION: IOT_OTA_CmdType_t = 21;
/// Configuration: uint32_t, buf_len 4: the running image's security counter. An image whose
/// protected security-counter TLV is lower (none counts as 0) is refused
/// (IOT_OTAE_IMAGE_COUNTER_DOWNGRADE).
pub const IOT_OTAC_RUNNING_SECURITY_COUNTER: IOT_OTA_CmdType_t = 22;
/// Configuration: uint32_t, buf_len 4: 1 = lower versions and security counters are accepted
/// (a deliberate rollback); 0 = refused (the default).
pub const IOT_OTAC_ALLOW_DOWNGRADE: IOT_OTA_CmdType_t = 23;
/// uint32_t, buf_len 4, after IOT_OTAG_CHECK_FIRMWARE is 1: 1 when the image's signature
/// verified with an added key, else 0.
pub const IOT_OTAG_IMAGE_SIGNED: IOT_OTA_CmdType_t = 24;
/// int, buf_len 4, after IOT_OTAG_CHECK_FIRMWARE is 1: which added key verified the image (0 for
/// the first IOT_OTAC_ADD_IMAGE_KEY), -1 when none did.
pub const IOT_OTAG_IMAGE_KEY_INDEX: IOT_OTA_CmdType_t = 25;
/// char buffer, after IOT_OTAG_CHECK_FIRMWARE is 1: the MCUboot header's version
/// ("1.2.3", "+BUILD" when not 0); IOT_OTAE_INVALID_STATE for an image without an MCUboot header.
pub const IOT_OTAG_IMAGE_VERSION: IOT_OTA_CmdType_t = 26;
/// uint32_t, buf_len 4, after IOT_OTAG_CHECK_FIRMWARE is 1: where the payload starts in the
/// downloaded file (the MCUboot header size; 0 for a plain file), so Linux firmware that installs
/// the bare payload can strip the header.
pub const IOT_OTAG_PAYLOAD_OFFSET: IOT_OTA_CmdType_t = 27;
/// uint32_t, buf_len 4, after IOT_OTAG_CHECK_FIRMWARE is 1: the payload's length (the whole file
/// for a plain file).
pub const IOT_OTAG_PAYLOAD_SIZE: IOT_OTA_CmdType_t = 28;

/// Configuration: uint32_t, buf_len 4: N > 0 turns the confirm-after-boot flow on (N boots into
/// a new image without IOT_OTA_ConfirmImage fail it; needs a breakpoint store); 0 = off (the
/// default: success at the first report of the new version). Set before the first
/// IOT_OTA_ReportVersion after a boot. At most 65535.
///
/// The confirm-after-boot flow (IOT_OTAC_CONFIRM_BOOTS = N > 0, with a breakpoint store):
///
/// ```text
///  download verified, CHECK_FIRMWARE 1 ──> record "pending reboot" ──> firmware flashes, reboots
///                                                                             │
///   IOT_OTA_ReportVersion(new version) at boot k ◄────────────────────────────┘
///     │ k <= N: nothing sent yet, IOT_OTAG_BOOT_STATE = PENDING_CONFIRM
///     ├── IOT_OTA_ConfirmImage ──> success to the platform (Aliyun/SagooIOT: the version report)
///     │                            BOOT_STATE = CONFIRMED
///     ├── IOT_OTA_RejectImage  ──> failure (-4 burn failed / Tencent, UCloud fail), BOOT_STATE =
///     │                            ROLLBACK: the firmware installs its previous image
///     └── reboot without either ──> boot k+1; k+1 > N: failure reported, ReportVersion returns
///                                   IOT_OTAE_IMAGE_ROLLBACK, BOOT_STATE = ROLLBACK
///   IOT_OTA_ReportVersion(another version): the bootloader rolled back: failure reported,
///   BOOT_STATE = ROLLED_BACK
/// ```
///
/// With N = 0 (the default) the first report of the new version is the success, as in iotkit.
pub const IOT_OTAC_CONFIRM_BOOTS: IOT_OTA_CmdType_t = 29;
/// uint32_t, buf_len 4: where the image running since this boot stands (OTA_BOOT_*).
pub const IOT_OTAG_BOOT_STATE: IOT_OTA_CmdType_t = 30;

/// IOT_OTAG_BOOT_STATE: no upgrade was pending at this boot.
pub const OTA_BOOT_NONE: u32 = 0;
/// IOT_OTAG_BOOT_STATE: the new image runs and waits for IOT_OTA_ConfirmImage.
pub const OTA_BOOT_PENDING_CONFIRM: u32 = 1;
/// IOT_OTAG_BOOT_STATE: the new image was confirmed and its success reported.
pub const OTA_BOOT_CONFIRMED: u32 = 2;
/// IOT_OTAG_BOOT_STATE: the firmware must roll back to its previous image (rejected, or not
/// confirmed within IOT_OTAC_CONFIRM_BOOTS boots); the failure was reported.
pub const OTA_BOOT_ROLLBACK: u32 = 3;
/// IOT_OTAG_BOOT_STATE: the device booted another version than the new one (the bootloader
/// rolled back); the failure was reported.
pub const OTA_BOOT_ROLLED_BACK: u32 = 4;

/// Confirms the image running since the reboot, after the firmware's own self-test: the
/// upgrade's success goes to the platform now (confirm-after-boot flow, IOT_OTAC_CONFIRM_BOOTS).
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL or foreign handle; IOT_OTAE_INVALID_STATE unless
/// an image waits for confirmation (IOT_OTAG_BOOT_STATE is OTA_BOOT_PENDING_CONFIRM).
#[no_mangle]
pub extern "C" fn IOT_OTA_ConfirmImage(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_ConfirmImage, ota(handle), INVALID_PARAM, |h| {
        match h.ota_session().confirm_image() {
            Ok(()) => 0,
            Err(e) => super::ota::err_code(&e),
        }
    })
}

/// Rejects the image running since the reboot (its self-test failed): the upgrade fails in the
/// platform's terms (Aliyun/SagooIOT step -4 "burn failed", Tencent and UCloud fail) and the
/// firmware must roll back to its previous image (IOT_OTAG_BOOT_STATE is then
/// OTA_BOOT_ROLLBACK).
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL or foreign handle; IOT_OTAE_INVALID_STATE unless
/// an image waits for confirmation.
#[no_mangle]
pub extern "C" fn IOT_OTA_RejectImage(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_RejectImage, ota(handle), INVALID_PARAM, |h| {
        match h.ota_session().reject_image() {
            Ok(()) => 0,
            Err(e) => super::ota::err_code(&e),
        }
    })
}

/// Whether `kind` is one of this file's Ioctl types.
pub(crate) fn is_image_ioctl(kind: c_int) -> bool {
    (IOT_OTAC_ADD_IMAGE_KEY..=IOT_OTAG_BOOT_STATE).contains(&kind)
}

/// Answers one of this file's Ioctl types; `buf` is the caller's buffer (read for the
/// configuration types, written for the queries).
pub(crate) fn ioctl(h: &OtaHandle, kind: c_int, buf: &mut [u8]) -> c_int {
    match kind {
        IOT_OTAC_ADD_IMAGE_KEY => {
            // PEM text passed with its NUL counted is still the same text.
            let bytes = buf.strip_suffix(&[0]).unwrap_or(buf);
            match ImageKey::parse(bytes) {
                Ok(key) => configure(h, |p| p.keys.push(key)),
                Err(e) => {
                    crate::ota_log!(crate::log::Level::Error, "IOT_OTA_Ioctl: image key: {e}");
                    reject(
                        h,
                        "IOT_OTA_Ioctl",
                        Error::InvalidParam("not an Ed25519 or P-256 public key"),
                    )
                }
            }
        }
        IOT_OTAC_REQUIRE_SIGNATURE => match flag(h, buf) {
            Ok(on) => configure(h, |p| p.require_signature = on),
            Err(code) => code,
        },
        IOT_OTAC_ALLOW_DOWNGRADE => match flag(h, buf) {
            Ok(on) => configure(h, |p| p.allow_downgrade = on),
            Err(code) => code,
        },
        IOT_OTAC_CONFIRM_BOOTS => match get_u32(h, buf).map(u16::try_from) {
            Ok(Ok(n)) => {
                h.ota_session().set_confirm_boots(n);
                0
            }
            Ok(Err(_)) => reject(
                h,
                "IOT_OTA_Ioctl",
                Error::InvalidParam("at most 65535 boots"),
            ),
            Err(code) => code,
        },
        IOT_OTAG_BOOT_STATE => {
            let v = match h.ota_session().boot_state() {
                BootState::None => OTA_BOOT_NONE,
                BootState::PendingConfirm { .. } => OTA_BOOT_PENDING_CONFIRM,
                BootState::Confirmed => OTA_BOOT_CONFIRMED,
                BootState::RollBack => OTA_BOOT_ROLLBACK,
                BootState::RolledBack => OTA_BOOT_ROLLED_BACK,
            };
            put_u32(h, buf, v.into())
        }
        IOT_OTAC_RUNNING_SECURITY_COUNTER => match get_u32(h, buf) {
            Ok(v) => configure(h, |p| p.running_security_counter = Some(v)),
            Err(code) => code,
        },
        IOT_OTAC_RUNNING_VERSION => {
            let text = buf
                .iter()
                .position(|&b| b == 0)
                .and_then(|n| std::str::from_utf8(&buf[..n]).ok());
            match text {
                None => reject(
                    h,
                    "IOT_OTA_Ioctl",
                    Error::InvalidParam(
                        "running version is not NUL-terminated UTF-8 within buf_len",
                    ),
                ),
                Some("") => configure(h, |p| p.running_version = None),
                Some(text) => match ImageVersion::parse(text) {
                    Some(v) => configure(h, |p| p.running_version = Some(v)),
                    None => reject(
                        h,
                        "IOT_OTA_Ioctl",
                        Error::InvalidParam(
                            "running version is not MAJOR[.MINOR[.REVISION[+BUILD]]]",
                        ),
                    ),
                },
            }
        }
        _ => query(h, kind, buf),
    }
}

/// A 0/1 uint32_t argument.
fn flag(h: &OtaHandle, buf: &[u8]) -> Result<bool, c_int> {
    match get_u32(h, buf)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("value must be 0 or 1"),
        )),
    }
}

/// Changes the session's image policy (refused during a download).
fn configure(h: &OtaHandle, change: impl FnOnce(&mut ImagePolicy)) -> c_int {
    let mut policy = h.ota_session().image_policy();
    change(&mut policy);
    match h.ota_session().set_image_policy(policy) {
        Ok(()) => 0,
        Err(e) => reject(h, "IOT_OTA_Ioctl", e),
    }
}

/// The queries about a verified image.
fn query(h: &OtaHandle, kind: c_int, buf: &mut [u8]) -> c_int {
    // The length is an argument error whatever the state, as for the other uint32_t types.
    if kind != IOT_OTAG_IMAGE_VERSION {
        if let Err(code) = check_u32_len(h, buf.len()) {
            return code;
        }
    }
    let Some(image): Option<VerifiedImage> = h.ota_session().verified_image() else {
        return reject(
            h,
            "IOT_OTA_Ioctl",
            Error::NotAvailable("no verified image (IOT_OTAG_CHECK_FIRMWARE is not 1)"),
        );
    };
    match kind {
        IOT_OTAG_IMAGE_SIGNED => put_u32(h, buf, image.signed as u64),
        IOT_OTAG_IMAGE_KEY_INDEX => {
            let index = image
                .key_index
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(-1);
            buf.copy_from_slice(&index.to_ne_bytes());
            0
        }
        IOT_OTAG_PAYLOAD_OFFSET => put_u32(h, buf, image.payload_offset),
        IOT_OTAG_PAYLOAD_SIZE => put_u32(h, buf, image.payload_size),
        IOT_OTAG_IMAGE_VERSION => match image.version {
            Some(v) => {
                // At most "255.255.65535+4294967295", 24 characters: no allocation.
                let mut text = [0u8; 32];
                let n = version_text(&v, &mut text);
                put_str(h, buf, &text[..n])
            }
            None => reject(
                h,
                "IOT_OTA_Ioctl",
                Error::NotAvailable("the image has no MCUboot header"),
            ),
        },
        _ => reject(
            h,
            "IOT_OTA_Ioctl",
            Error::InvalidParam("unknown Ioctl type"),
        ),
    }
}

/// Writes `v` as imgtool spells it into `out`; returns the length.
fn version_text(v: &ImageVersion, out: &mut [u8; 32]) -> usize {
    struct Into<'a>(&'a mut [u8; 32], usize);
    impl std::fmt::Write for Into<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    let mut w = Into(out, 0);
    let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{v}"));
    w.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ota::image_err_code;
    use crate::image::ImageError;

    #[test]
    fn every_refusal_has_its_own_code() {
        use crate::image::ImageVersion;
        let all = [
            ImageError::NotAnImage { magic: 0 },
            ImageError::HeaderTooSmall { hdr_size: 0 },
            ImageError::Encrypted { flags: 0 },
            ImageError::Truncated {
                received: 0,
                expected: 0,
            },
            ImageError::BadTlvInfo {
                offset: 0,
                magic: 0,
                size: 0,
            },
            ImageError::TlvPastEnd { offset: 0, end: 0 },
            ImageError::TlvLength {
                tlv_type: 0,
                len: 0,
            },
            ImageError::DuplicateTlv { tlv_type: 0 },
            ImageError::TlvTruncated {
                received: 0,
                expected: 0,
            },
            ImageError::TrailingBytes { expected: 0 },
            ImageError::SizeMismatch {
                announced: 0,
                image: 0,
            },
            ImageError::Unsupported { tlv_type: 0 },
            ImageError::MissingHash,
            ImageError::HashMismatch,
            ImageError::MissingSignature,
            ImageError::NoKeys,
            ImageError::UnknownKey,
            ImageError::BadSignature,
            ImageError::Downgrade {
                running: ImageVersion::new(1, 0, 0, 0),
                image: ImageVersion::new(0, 9, 0, 0),
            },
            ImageError::CounterDowngrade {
                running: 1,
                image: 0,
            },
        ];
        let mut codes: Vec<c_int> = all.iter().map(image_err_code).collect();
        assert!(codes.iter().all(|&c| c <= -20), "{codes:?}");
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "one code per refusal");
    }
}
