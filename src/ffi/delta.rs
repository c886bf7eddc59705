//! Delta upgrades through the C API: the firmware's reader of the image it runs, over
//! [`crate::ota::OtaSession::set_delta_source`].

use std::ffi::{c_int, c_void};

use super::ota::INVALID_PARAM;
use crate::delta::{OldImage, OldReadError};
use crate::ota::DeltaOptions;

/// The firmware's reader of the image it runs (the old image a delta patch applies to): copies
/// `len` bytes from byte `offset` of it into `buf` and returns `len`, or a negative value when
/// it cannot (the download then fails with IOT_OTAE_DELTA_REFUSED; a short count fails it too).
/// Called inside IOT_OTA_SetDeltaSource (the whole image, once) and IOT_OTA_FetchYield, on the
/// caller's thread, with no SDK lock held; it must not call IOT_OTA_* functions.
/// `offset + len` never exceeds the `old_size` given.
#[allow(non_camel_case_types)]
pub type IOT_OTA_OldImageRead =
    Option<unsafe extern "C" fn(ctx: *mut c_void, offset: u32, buf: *mut u8, len: u32) -> c_int>;

/// The C reader, as the applier's [`OldImage`].
struct COldImage {
    read: unsafe extern "C" fn(*mut c_void, u32, *mut u8, u32) -> c_int,
    ctx: *mut c_void,
    size: u32,
}

// SAFETY: per IOT_OTA_SetDeltaSource's contract, `read` may be called with `ctx` from any thread
// that calls IOT_OTA_FetchYield.
unsafe impl Send for COldImage {}

impl OldImage for COldImage {
    fn size(&self) -> u64 {
        u64::from(self.size)
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        // The applier reads inside the old image only, in pieces of its budget's chunk.
        let (Ok(offset), Ok(len)) = (u32::try_from(offset), u32::try_from(buf.len())) else {
            return Err(OldReadError { code: -1 });
        };
        // SAFETY: `buf` is valid for `len` bytes of writes; the contract covers `read` and `ctx`.
        let n = unsafe { (self.read)(self.ctx, offset, buf.as_mut_ptr(), len) };
        // A count above `len` would claim bytes never written: refused as a failure.
        match usize::try_from(n) {
            Ok(n) if n <= buf.len() => Ok(n),
            _ => Err(OldReadError { code: n.min(-1) }),
        }
    }
}

/// Sets the image the device runs as the base of delta upgrades (extension, issue 17): from
/// then on, a download that starts with a detools sequential patch (`detools create_patch
/// --patch-type sequential --compression heatshrink|none OLD NEW PATCH`) is applied on the
/// way, reading the old image through `read(ctx, offset, buf, len)`, and IOT_OTA_FetchYield
/// returns the bytes of the NEW image: the v2.3 loop writes them to its other slot exactly as a
/// full image. IOT_OTAG_FETCHED_SIZE and IOT_OTAG_FILE_SIZE then count the new image (from the
/// patch's header; until the first FetchYield has seen it, FILE_SIZE is the patch's); the
/// platform's size and digest are the patch's, and IOT_OTAG_CHECK_FIRMWARE is 1 only when the
/// whole patch matched its digest, the applier made a whole image of the header's size, that
/// image has the SHA-256 the message names (extData `_delta_new_sha256`, where the platform
/// carries it) and passed its own checks (IOT_OTAC_REQUIRE_SIGNATURE and the rest). Any other
/// download is
/// handed out as it comes, as without a delta source. A patch that reads outside the old image,
/// is malformed, needs a heatshrink window over 4 KiB or ends early ends the download with
/// IOT_OTAE_DELTA_REFUSED and one failure report. A cut connection resumes with `Range` as
/// usual; with a breakpoint store (IOT_OTA_SetBreakpointStore*), a patch resumes after a power
/// loss too: its record then carries the applier's state and takes up to
/// OTA_BREAKPOINT_DELTA_RECORD_LEN bytes (the store must hold them; set the store before or
/// after this call).
///
/// The old image's requirement: when the upgrade message's extData names the old image a patch
/// was made from (`_delta_old_size`, `_delta_old_sha256`: SagooIOT, and Aliyun's messages with
/// an extData object), a patch for another image than the running one ends the download before
/// any byte of the new image is returned, with IOT_OTAE_DELTA_OLD_MISMATCH and one failure
/// report (step -1, upgrade failed). To compare the digest this function computes the running
/// image's SHA-256: it reads the whole old image once through `read`, here, before returning
/// (at flash speed, about `old_size` / 512 calls of 512 bytes).
///
/// Memory, allocated here: about 4.3 KB for the applier and a 4 KiB patch buffer, and with a
/// breakpoint store 2 × 4.5 KB more for records with the applier's state. Call it once, after
/// IOT_OTA_Init and before the first upgrade.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL or foreign handle or a NULL `read`;
/// IOT_OTAE_INVALID_STATE once an upgrade was accepted; IOT_OTAE_DELTA_REFUSED when reading
/// the old image failed or came back short (nothing is set then).
///
/// # Safety
/// `read` is NULL or a function that writes at most `len` bytes to `buf`; it and `ctx` stay
/// usable, from any thread that calls IOT_OTA_FetchYield, until the handle is deinitialised.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_SetDeltaSource(
    handle: *mut c_void,
    read: IOT_OTA_OldImageRead,
    ctx: *mut c_void,
    old_size: u32,
) -> c_int {
    ffi_body!(IOT_OTA_SetDeltaSource, ota(handle), INVALID_PARAM, |h| {
        let Some(read) = read else {
            return super::ota::reject(
                &h,
                "IOT_OTA_SetDeltaSource",
                crate::error::Error::InvalidParam("read is NULL"),
            );
        };
        let old = COldImage {
            read,
            ctx,
            size: old_size,
        };
        // FETCHED_SIZE and FILE_SIZE are 32-bit in C: a new image up to 4 GiB - 1.
        let options = DeltaOptions::for_slot(u64::from(u32::MAX));
        match h.ota_session().set_delta_source(Box::new(old), options) {
            Ok(()) => 0,
            Err(e) => super::ota::reject(&h, "IOT_OTA_SetDeltaSource", e),
        }
    })
}
