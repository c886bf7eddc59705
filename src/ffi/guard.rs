//! The panic boundary shared by every shim, and the pointer checks that run before any slice or
//! string is built from a C pointer.

use std::ffi::{c_char, c_int, c_void, CStr};

/// What a shim returns when its body panicked.
pub trait PanicValue {
    fn on_panic() -> Self;
}

impl PanicValue for c_int {
    /// `IOT_OTAE_GENERAL`.
    fn on_panic() -> Self {
        -1
    }
}

impl PanicValue for u32 {
    fn on_panic() -> Self {
        0
    }
}

impl PanicValue for () {
    fn on_panic() -> Self {}
}

impl<T> PanicValue for *mut T {
    fn on_panic() -> Self {
        std::ptr::null_mut()
    }
}

impl<T> PanicValue for *const T {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

/// Runs `f`, turning a panic into `R::on_panic()` and one log line.
pub fn guard<R: PanicValue>(name: &str, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            crate::ota_log!(
                crate::log::Level::Crit,
                "{name}: internal panic caught at the C boundary"
            );
            R::on_panic()
        }
    }
}

/// Wraps a shim body: `ffi_guard!("IOT_OTA_Init", { ... })`.
macro_rules! ffi_guard {
    ($name:expr, $body:block) => {
        $crate::ffi::guard::guard($name, move || $body)
    };
}

/// Borrows a C string as `&str`, or returns `$err` (after one log line) when it is NULL or not
/// UTF-8.
macro_rules! try_str {
    ($ptr:expr, $what:expr, $err:expr) => {
        match unsafe { $crate::ffi::guard::c_str($ptr) } {
            Some(s) => s,
            None => {
                $crate::ota_log!(
                    $crate::log::Level::Error,
                    "{}: NULL or non-UTF-8 string",
                    $what
                );
                return $err;
            }
        }
    };
}

/// Returns `$err` (after one log line) when `$ptr` is NULL.
macro_rules! try_nonnull {
    ($ptr:expr, $what:expr, $err:expr) => {
        if $ptr.is_null() {
            $crate::ota_log!($crate::log::Level::Error, "{}: NULL pointer", $what);
            return $err;
        }
    };
}

/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the returned borrow.
pub unsafe fn c_str<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    CStr::from_ptr(p).to_str().ok()
}

/// Copies `s` plus a NUL into `buf[..len]`; false (nothing written) when it does not fit.
///
/// # Safety
/// `buf` is valid for `len` bytes of writes.
pub unsafe fn write_c_str(buf: *mut c_void, len: usize, s: &[u8]) -> bool {
    if buf.is_null() || s.len() >= len {
        return false;
    }
    let out = std::slice::from_raw_parts_mut(buf as *mut u8, len);
    out[..s.len()].copy_from_slice(s);
    out[s.len()] = 0;
    true
}
