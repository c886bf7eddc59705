//! Hidden hooks for `fuzz/` and `tests/fuzz_regressions.rs`: an `IOT_OTA_*` handle over a
//! session on in-memory transports, so sequences of C calls run without a broker or a server.
//! Plain Rust functions, not part of the C API (cbindgen leaves them out of `ota.h`).

use std::ffi::c_void;

use super::ota::OtaHandle;
use crate::ota::OtaSession;

/// Wraps `session` (from [`OtaSession::new`], on any uplink and firmware source) in a handle
/// that the `IOT_OTA_*` functions accept. Release it with `IOT_OTA_Deinit`.
#[doc(hidden)]
pub fn handle_from_session(session: OtaSession) -> *mut c_void {
    OtaHandle::into_raw(session, std::ptr::null())
}

/// The session behind `handle`, to feed it downstream messages
/// ([`OtaSession::handle_message`]) as MQTT does in production. None for NULL or a pointer
/// that is not an OTA handle.
///
/// # Safety
/// `handle` is NULL, a live handle (not yet passed to `IOT_OTA_Deinit`), or readable for 4
/// bytes; the borrow must end before the handle is released.
#[doc(hidden)]
pub unsafe fn session<'a>(handle: *mut c_void) -> Option<&'a OtaSession> {
    // SAFETY: this function's contract, which is OtaHandle::session's.
    unsafe { OtaHandle::session(handle) }
}
