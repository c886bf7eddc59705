//! Gateways: many OTA handles on one MQTT client (the gateway's and its sub-devices'), the
//! client's download slots, and images the firmware keeps that other handles stream instead of
//! downloading them again. Over [`crate::ota::Gateway`] and
//! [`crate::ota::OtaSession::set_local_image_source`].

use std::ffi::{c_char, c_int, c_void};

use super::answer::put_u32;
use super::ota::{IOT_OTA_CmdType_t, OtaHandle, INVALID_PARAM};
use crate::ota::{Gateway, LocalImage, Waiting};

/// Most OTA handles on one MQTT client (IOT_OTA_Init returns NULL beyond, with
/// IOT_OTAE_TOO_MANY_HANDLES). Each costs about 31 KB of heap.
pub const IOT_OTA_MAX_HANDLES_PER_CLIENT: u32 = 1024;
const _: () =
    assert!(IOT_OTA_MAX_HANDLES_PER_CLIENT as usize == crate::ota::MAX_SESSIONS_PER_CLIENT);

/// Query, `uint32_t`: why the accepted upgrade has not started (IOT_OTAS_WAITING,
/// IOT_OTA_IsFetching 0): OTA_WAITING_NONE, _SLOT, _SAME_IMAGE or _READERS.
pub const IOT_OTAG_WAITING: IOT_OTA_CmdType_t = 31;
/// Query, `uint32_t`: 1 when the current (or last) download streams another handle's kept
/// image (IOT_OTA_SetLocalImageSource) instead of the network, 0 otherwise (also after it fell
/// back to the network).
pub const IOT_OTAG_LOCAL_IMAGE: IOT_OTA_CmdType_t = 32;

/// IOT_OTAG_WAITING: not waiting.
pub const OTA_WAITING_NONE: u32 = 0;
/// IOT_OTAG_WAITING: every download slot of the MQTT client is taken (IOT_OTA_SetMaxDownloads);
/// the upgrade starts, in arrival order, when one frees and IOT_OTA_IsFetching is called.
pub const OTA_WAITING_SLOT: u32 = 1;
/// IOT_OTAG_WAITING: another handle, whose firmware keeps its images, is downloading the same
/// image; this one streams it from there once it is verified (or downloads it if that fails).
pub const OTA_WAITING_SAME_IMAGE: u32 = 2;
/// IOT_OTAG_WAITING: other handles are still reading this handle's kept image; its firmware
/// must not overwrite it yet.
pub const OTA_WAITING_READERS: u32 = 3;

/// The firmware's reader of the image it keeps for one handle: copies up to `buf_len` bytes of
/// the image from byte `offset` into `buf`, and returns the count (1..=buf_len), or a negative
/// value when it cannot. Called inside another handle's IOT_OTA_FetchYield, on its thread; it
/// must not call IOT_OTA_* functions.
#[allow(non_camel_case_types)]
pub type IOT_OTA_LocalImageRead = Option<
    unsafe extern "C" fn(ctx: *mut c_void, offset: u32, buf: *mut c_char, buf_len: u32) -> c_int,
>;

/// Sets the most simultaneous firmware downloads from the network among all OTA handles on
/// the MQTT client `pclient` (default 1, what a cellular gateway wants). A handle whose upgrade
/// arrives while every slot is taken waits (IOT_OTA_IsFetching 0, IOT_OTAG_STATE
/// IOT_OTAS_WAITING, IOT_OTAG_WAITING OTA_WAITING_SLOT; nothing is reported to its platform but
/// the receipt some platforms expect) and starts in arrival order when a slot frees.
/// Streaming a kept image (IOT_OTA_SetLocalImageSource) takes no slot. Downloads under way go
/// on; the limit applies to those that start afterwards.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL or foreign `pclient` or `max_downloads` < 1.
///
/// # Safety
/// `pclient` is NULL, a live MQTT handle, or another pointer readable for 4 bytes.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_SetMaxDownloads(
    pclient: *mut c_void,
    max_downloads: c_int,
) -> c_int {
    ffi_body!(IOT_OTA_SetMaxDownloads, mqtt(pclient), INVALID_PARAM, |h| {
        let Ok(max) = usize::try_from(max_downloads) else {
            return INVALID_PARAM;
        };
        match Gateway::of(h.client()).set_max_downloads(max) {
            Ok(()) => 0,
            Err(e) => super::ota::err_code(&e),
        }
    })
}

/// The C reader, as the engine's [`LocalImage`].
struct CReader {
    read: unsafe extern "C" fn(*mut c_void, u32, *mut c_char, u32) -> c_int,
    ctx: *mut c_void,
}

// SAFETY: per IOT_OTA_SetLocalImageSource's contract, `read` may be called with `ctx` from any
// thread that calls IOT_OTA_FetchYield.
unsafe impl Send for CReader {}

impl LocalImage for CReader {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = u32::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let len = buf.len().min(c_int::MAX as usize) as u32;
        // SAFETY: `buf` is valid for `len` bytes of writes; the contract covers `read` and `ctx`.
        let n = unsafe { (self.read)(self.ctx, offset, buf.as_mut_ptr() as *mut c_char, len) };
        // A count above `len` is refused by the caller (it would claim bytes never written).
        usize::try_from(n).map_err(|_| std::io::ErrorKind::Other.into())
    }
}

/// Declares that the firmware keeps each image `handle` verifies (IOT_OTAG_CHECK_FIRMWARE 1)
/// and reads it back through `read(ctx, offset, buf, buf_len)` (extension, for gateways). Other
/// handles on the same MQTT client told to fetch the same image (same size and digest) then
/// stream it from there, without a download slot, instead of downloading it again: their
/// IOT_OTA_FetchYield first reads the whole kept image and checks its digest (nothing is
/// handed out before it matches; a mismatch, a read error or a withdrawal makes that handle go
/// on from the network, said once in the log), then hands out its bytes through the usual
/// checks (digest, signature) and reports progress and success to that handle's platform as
/// usual. And while this handle downloads an image, handles needing the same one wait for it
/// (OTA_WAITING_SAME_IMAGE) instead of downloading it in parallel.
///
/// Call it once, after IOT_OTA_Init. The image is offered from IOT_OTAG_CHECK_FIRMWARE 1 until
/// this handle accepts another upgrade (which then waits, OTA_WAITING_READERS, until the
/// handles reading the kept image are done, so the firmware never overwrites bytes being
/// read), `read` is NULL (withdrawn), or the handle is deinitialised. A withdrawal or
/// IOT_OTA_Deinit waits for a read in progress to return; readers then go on from the network.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL or foreign handle.
///
/// # Safety
/// `read` is NULL or a function that writes at most `buf_len` bytes to `buf`; it and `ctx`
/// stay usable, from any thread that calls IOT_OTA_FetchYield, until the source is withdrawn
/// or the handle deinitialised.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_SetLocalImageSource(
    handle: *mut c_void,
    read: IOT_OTA_LocalImageRead,
    ctx: *mut c_void,
) -> c_int {
    ffi_body!(
        IOT_OTA_SetLocalImageSource,
        ota(handle),
        INVALID_PARAM,
        |h| {
            let session = h.ota_session();
            let r = match read {
                Some(read) => session.set_local_image_source(Box::new(CReader { read, ctx })),
                None => session.withdraw_local_image_source(),
            };
            match r {
                Ok(()) => 0,
                Err(e) => super::ota::reject(&h, "IOT_OTA_SetLocalImageSource", e),
            }
        }
    )
}

/// Whether `kind` is one of this file's Ioctl types.
pub(crate) fn is_gateway_ioctl(kind: c_int) -> bool {
    (IOT_OTAG_WAITING..=IOT_OTAG_LOCAL_IMAGE).contains(&kind)
}

/// Answers one of this file's Ioctl queries into the caller's `buf`.
pub(crate) fn ioctl(h: &OtaHandle, kind: c_int, buf: &mut [u8]) -> c_int {
    let s = h.ota_session();
    let value = match kind {
        IOT_OTAG_WAITING => match s.waiting() {
            Waiting::No => OTA_WAITING_NONE,
            Waiting::Slot => OTA_WAITING_SLOT,
            Waiting::SameImage => OTA_WAITING_SAME_IMAGE,
            Waiting::Readers => OTA_WAITING_READERS,
        },
        _ => s.from_local_image() as u32,
    };
    put_u32(h, buf, value as u64)
}
