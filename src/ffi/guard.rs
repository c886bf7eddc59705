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
    // The firmware's HAL_Printf, when it has one, gets libota's log lines.
    crate::log::set_sink(crate::ffi::printf::log_to_firmware);
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

/// The opening of every exported function, written once: the panic boundary and, for a handle
/// argument, the lookup with the value returned when there is no live handle.
///
/// - `ffi_body!(NAME, { ... })` runs the block inside [`guard`]: a panic becomes the return
///   type's [`PanicValue`] and one log line, never an unwind into C.
/// - `ffi_body!(NAME, ota(handle), DEFAULT, |h| { ... })` also binds `h` to the live OTA handle
///   (an `Arc<OtaHandle>`), or returns `DEFAULT` after one log line when `handle` is NULL,
///   released or not an OTA handle.
/// - `ffi_body!(NAME, mqtt(handle), DEFAULT, |h| { ... })` does the same for an MQTT handle (a
///   `&MqttHandle`). That lookup reads the handle's memory, so it compiles only inside an
///   `unsafe fn`, whose `# Safety` section covers `handle`.
///
/// `NAME` is the function's own identifier: log lines name it, and a misspelt one does not
/// compile. The signature stays written out by hand, with `#[no_mangle]`, because cbindgen reads
/// the source without expanding macros and would leave a generated function out of `ota.h`.
macro_rules! ffi_body {
    ($name:ident, ota($handle:expr), $default:expr, |$h:ident| $body:block) => {
        ffi_body!($name, {
            // DEFAULT is `()` for a function that returns nothing.
            #[allow(clippy::unused_unit)]
            let Some($h) = $crate::ffi::ota::lookup($handle, stringify!($name)) else {
                return $default;
            };
            $body
        })
    };
    ($name:ident, mqtt($handle:expr), $default:expr, |$h:ident| $body:block) => {
        ffi_body!($name, {
            // No unsafe block on purpose: only the enclosing unsafe fn's contract makes it sound.
            #[allow(unsafe_op_in_unsafe_fn)]
            let Some($h) = $crate::ffi::mqtt::MqttHandle::lookup($handle, stringify!($name)) else {
                return $default;
            };
            $body
        })
    };
    ($name:ident, $body:block) => {{
        // Names an item, so that a misspelt NAME fails to compile.
        let _ = $name;
        $crate::ffi::guard::guard(stringify!($name), move || $body)
    }};
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
    // SAFETY: non-NULL, and per the contract NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// Copies `s` plus a NUL into `buf[..len]`; false (nothing written) when it does not fit.
///
/// # Safety
/// `buf` is valid for `len` bytes of writes.
pub unsafe fn write_c_str(buf: *mut c_void, len: usize, s: &[u8]) -> bool {
    if buf.is_null() || s.len() >= len {
        return false;
    }
    // SAFETY: non-NULL, and per the contract valid for `len` bytes; only s.len() + 1 are written.
    let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, s.len() + 1) };
    put_c_str(out, s)
}

/// Copies `s` plus a NUL into the start of `out`; false (nothing written) when it does not fit.
pub fn put_c_str(out: &mut [u8], s: &[u8]) -> bool {
    if s.len() >= out.len() {
        return false;
    }
    out[..s.len()].copy_from_slice(s);
    out[s.len()] = 0;
    true
}
