//! The HAL functions of `iot_import.h`: memory, time, text and the device identity.
//!
//! Firmware ported from iotkit brings its own `HAL_OS_<board>.c`, so libota's definitions are
//! weak defaults, written in C (`hal_default.c`: stable Rust defines neither weak nor variadic
//! functions) and declared here so that cbindgen puts their prototypes in `ota.h`. The identity
//! store stays in Rust, shared with [`crate::conninfo`]: the C defaults reach it through
//! `ota_hal_identity_set` / `ota_hal_identity_get`, internal symbols kept out of the header.
//!
//! The library itself calls one HAL function, `HAL_Printf` (declared in `printf.rs`, which
//! hands it libota's log lines). Its memory, clock and sleeps are Rust's own, whatever the
//! firmware defines.

#![allow(non_snake_case)]

pub use super::printf::HAL_Printf;

use std::ffi::{c_char, c_int, c_void};

use super::guard::write_c_str;
use crate::conninfo::{self, IdentityField};
use crate::log::Level;
use crate::ota_log;

// Weak defaults in hal_default.c; a firmware definition of the same name replaces each one.
extern "C" {
    /// Allocates `size` bytes. Default: `malloc`.
    ///
    /// Returns the memory, or NULL when out of memory (or, as `malloc` may, for `size` 0).
    /// Release it with `HAL_Free`.
    pub fn HAL_Malloc(size: u32) -> *mut c_void;

    /// Releases memory from `HAL_Malloc`. Default: `free`. NULL is accepted and does nothing;
    /// must not be called twice with the same pointer.
    pub fn HAL_Free(ptr: *mut c_void);

    /// `snprintf` into `str` of `len` bytes. Default: `vsnprintf`.
    ///
    /// Returns the length the whole text has (a value >= `len` means it was cut to `len - 1`
    /// bytes and a NUL), or a negative value on a format error or a negative `len` (nothing
    /// written then).
    pub fn HAL_Snprintf(str: *mut c_char, len: c_int, fmt: *const c_char, ...) -> c_int;

    /// Blocks the calling thread for at least `ms` milliseconds. Default: `nanosleep`, resumed
    /// after signals.
    pub fn HAL_SleepMs(ms: u32);

    /// Milliseconds on a monotonic clock; never goes backwards. Default: `CLOCK_MONOTONIC`.
    pub fn HAL_UptimeMs() -> u64;

    /// Sets the product key that `HAL_GetProductKey` returns.
    ///
    /// - `product_key`: NUL-terminated, at most `PRODUCT_KEY_LEN` bytes (copied).
    ///
    /// Returns the length stored (0 for an empty string, which clears the value), or -1 when
    /// `product_key` is NULL, not UTF-8 or too long (the previous value is kept).
    pub fn HAL_SetProductKey(product_key: *mut c_char) -> c_int;

    /// Sets the device name that `HAL_GetDeviceName` returns.
    ///
    /// - `device_name`: NUL-terminated, at most `DEVICE_NAME_LEN` bytes (copied).
    ///
    /// Returns the length stored (0 for an empty string, which clears the value), or -1 when
    /// `device_name` is NULL, not UTF-8 or too long (the previous value is kept).
    pub fn HAL_SetDeviceName(device_name: *mut c_char) -> c_int;

    /// Sets the device secret that `HAL_GetDeviceSecret` returns.
    ///
    /// - `device_secret`: NUL-terminated, at most `DEVICE_SECRET_LEN` bytes (copied).
    ///
    /// Returns the length stored (0 for an empty string, which clears the value), or -1 when
    /// `device_secret` is NULL, not UTF-8 or too long (the previous value is kept).
    pub fn HAL_SetDeviceSecret(device_secret: *mut c_char) -> c_int;

    /// Copies the product key set by `HAL_SetProductKey` (empty if never set), NUL-terminated.
    ///
    /// - `product_key`: buffer of `PRODUCT_KEY_LEN + 1` bytes.
    ///
    /// Returns the length written (without the NUL), or -1 when `product_key` is NULL.
    pub fn HAL_GetProductKey(product_key: *mut c_char) -> c_int;

    /// Copies the device name set by `HAL_SetDeviceName` (empty if never set), NUL-terminated.
    ///
    /// - `device_name`: buffer of `DEVICE_NAME_LEN + 1` bytes.
    ///
    /// Returns the length written (without the NUL), or -1 when `device_name` is NULL.
    pub fn HAL_GetDeviceName(device_name: *mut c_char) -> c_int;

    /// Copies the device secret set by `HAL_SetDeviceSecret` (empty if never set),
    /// NUL-terminated.
    ///
    /// - `device_secret`: buffer of `DEVICE_SECRET_LEN + 1` bytes.
    ///
    /// Returns the length written (without the NUL), or -1 when `device_secret` is NULL.
    pub fn HAL_GetDeviceSecret(device_secret: *mut c_char) -> c_int;

    /// Copies the running firmware's version, NUL-terminated: the environment variable
    /// `OTA_FIRMWARE_VERSION` when set and non-empty, else the version set from Rust
    /// (`ota::conninfo::set_identity`), else `"app-1.0.0-20180101.1000"` (as iotkit's Linux
    /// HAL).
    ///
    /// - `version`: buffer of `FIRMWARE_VERSION_MAXLEN` bytes (NUL included).
    ///
    /// Returns the length written (without the NUL), or -1 when `version` is NULL or
    /// `OTA_FIRMWARE_VERSION` is longer than `FIRMWARE_VERSION_MAXLEN - 1` (nothing written).
    pub fn HAL_GetFirmwareVersion(version: *mut c_char) -> c_int;
}

/// The identity fields in the numbering of `enum ota_hal_identity` in hal_default.c, with the
/// HAL names used in log lines.
const IDENTITY_FIELDS: [(IdentityField, &str, &str); 4] = [
    (
        IdentityField::ProductKey,
        "HAL_SetProductKey",
        "HAL_GetProductKey",
    ),
    (
        IdentityField::DeviceName,
        "HAL_SetDeviceName",
        "HAL_GetDeviceName",
    ),
    (
        IdentityField::DeviceSecret,
        "HAL_SetDeviceSecret",
        "HAL_GetDeviceSecret",
    ),
    (IdentityField::FirmwareVersion, "", "HAL_GetFirmwareVersion"),
];

fn identity_field(field: c_int) -> Option<(IdentityField, &'static str, &'static str)> {
    usize::try_from(field)
        .ok()
        .and_then(|i| IDENTITY_FIELDS.get(i).copied())
}

/// The body of the default `HAL_Set*`: stores one identity value (internal to libota).
///
/// Returns the length stored, or -1 when `value` is NULL, not UTF-8 or too long, or `field` is
/// not a settable field (the firmware version is set from Rust or the environment only).
///
/// # Safety
/// `value` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ota_hal_identity_set(field: c_int, value: *const c_char) -> c_int {
    ffi_body!(ota_hal_identity_set, {
        let Some((field, name, _)) = identity_field(field) else {
            return -1;
        };
        if field == IdentityField::FirmwareVersion {
            return -1;
        }
        let v = try_str!(value, name, -1);
        match conninfo::set_identity(field, v) {
            Ok(len) => len as c_int,
            Err(e) => {
                ota_log!(Level::Error, "{name}: {e}");
                -1
            }
        }
    })
}

/// The body of the default `HAL_Get*`: copies one identity value and a NUL into `buf`, which
/// holds the field's longest value plus the NUL (internal to libota).
///
/// Returns the length written, or -1 when `buf` is NULL, `field` is unknown or the value does
/// not fit (nothing written).
///
/// # Safety
/// `buf` is NULL or valid for the field's documented buffer size of writes.
#[no_mangle]
pub unsafe extern "C" fn ota_hal_identity_get(field: c_int, buf: *mut c_char) -> c_int {
    ffi_body!(ota_hal_identity_get, {
        let Some((field, _, name)) = identity_field(field) else {
            return -1;
        };
        try_nonnull!(buf, name, -1);
        let value = if field == IdentityField::FirmwareVersion {
            match conninfo::firmware_version() {
                Ok(v) => v,
                Err(e) => {
                    ota_log!(Level::Error, "{name}: {e}");
                    return -1;
                }
            }
        } else {
            conninfo::identity(field)
        };
        let size = field.max_len() + 1;
        // SAFETY: buf is non-NULL and, per the caller, valid for `size` bytes.
        if unsafe { write_c_str(buf as *mut c_void, size, value.as_bytes()) } {
            value.len() as c_int
        } else {
            ota_log!(Level::Error, "{name}: value does not fit in {size} bytes");
            -1
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::conninfo::{
        DEVICE_NAME_LEN, DEVICE_SECRET_LEN, FIRMWARE_VERSION_MAXLEN, PRODUCT_KEY_LEN,
    };
    use std::ffi::{CStr, CString};
    use std::ptr;

    fn text(buf: &[c_char]) -> &str {
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap()
    }

    #[test]
    fn malloc_and_free() {
        unsafe {
            let p = HAL_Malloc(64) as *mut u8;
            assert!(!p.is_null());
            p.write_bytes(0xa5, 64);
            assert_eq!(*p.add(63), 0xa5);
            HAL_Free(p as *mut c_void);
            HAL_Free(ptr::null_mut());
        }
    }

    #[test]
    fn uptime_is_monotonic_and_sleep_waits() {
        let t0 = unsafe { HAL_UptimeMs() };
        unsafe { HAL_SleepMs(20) };
        let t1 = unsafe { HAL_UptimeMs() };
        assert!(t1 >= t0 + 20, "{t0} -> {t1}");
    }

    #[test]
    fn snprintf_formats_and_cuts() {
        let mut buf = [0x55 as c_char; 8];
        let n = unsafe { HAL_Snprintf(buf.as_mut_ptr(), 8, c"%s-%d".as_ptr(), c"v".as_ptr(), 2) };
        assert_eq!(n, 3);
        assert_eq!(text(&buf), "v-2");
        let n = unsafe { HAL_Snprintf(buf.as_mut_ptr(), 4, c"%s".as_ptr(), c"abcdef".as_ptr()) };
        assert_eq!(n, 6);
        assert_eq!(text(&buf), "abc");
        assert_eq!(buf[4], 0x55 as c_char);
        let n = unsafe { HAL_Snprintf(buf.as_mut_ptr(), -1, c"x".as_ptr()) };
        assert!(n < 0);
    }

    #[test]
    fn identity_set_and_get() {
        let _g = conninfo::test_lock();
        let mut pk = [0x55 as c_char; PRODUCT_KEY_LEN + 1];
        assert_eq!(unsafe { HAL_GetProductKey(pk.as_mut_ptr()) }, 0);
        assert_eq!(pk[0], 0);

        let mut v = CString::new("a1AbCdEfGhI").unwrap().into_bytes_with_nul();
        assert_eq!(
            unsafe { HAL_SetProductKey(v.as_mut_ptr() as *mut c_char) },
            11
        );
        assert_eq!(unsafe { HAL_GetProductKey(pk.as_mut_ptr()) }, 11);
        assert_eq!(text(&pk), "a1AbCdEfGhI");

        let mut dn = *b"dev-01\0";
        let mut name = [0 as c_char; DEVICE_NAME_LEN + 1];
        assert_eq!(
            unsafe { HAL_SetDeviceName(dn.as_mut_ptr() as *mut c_char) },
            6
        );
        assert_eq!(unsafe { HAL_GetDeviceName(name.as_mut_ptr()) }, 6);
        assert_eq!(text(&name), "dev-01");

        let mut ds = vec![b's'; DEVICE_SECRET_LEN];
        ds.push(0);
        let mut secret = [0 as c_char; DEVICE_SECRET_LEN + 1];
        assert_eq!(
            unsafe { HAL_SetDeviceSecret(ds.as_mut_ptr() as *mut c_char) },
            64
        );
        assert_eq!(unsafe { HAL_GetDeviceSecret(secret.as_mut_ptr()) }, 64);
        assert_eq!(secret[DEVICE_SECRET_LEN], 0);
    }

    #[test]
    fn identity_too_long_null_or_unknown() {
        let _g = conninfo::test_lock();
        let mut long = vec![b'p'; PRODUCT_KEY_LEN + 1];
        long.push(0);
        let mut buf = [0x55 as c_char; 64];
        unsafe {
            assert_eq!(HAL_SetProductKey(long.as_mut_ptr() as *mut c_char), -1);
            assert_eq!(HAL_SetProductKey(ptr::null_mut()), -1);
            assert_eq!(HAL_SetDeviceName(ptr::null_mut()), -1);
            assert_eq!(HAL_SetDeviceSecret(ptr::null_mut()), -1);
            assert_eq!(HAL_GetProductKey(ptr::null_mut()), -1);
            assert_eq!(HAL_GetDeviceName(ptr::null_mut()), -1);
            assert_eq!(HAL_GetDeviceSecret(ptr::null_mut()), -1);
            assert_eq!(HAL_GetFirmwareVersion(ptr::null_mut()), -1);
            assert_eq!(ota_hal_identity_set(3, c"app-9".as_ptr()), -1);
            assert_eq!(ota_hal_identity_set(4, c"x".as_ptr()), -1);
            assert_eq!(ota_hal_identity_set(-1, c"x".as_ptr()), -1);
            assert_eq!(ota_hal_identity_get(4, buf.as_mut_ptr()), -1);
            assert_eq!(ota_hal_identity_get(-1, buf.as_mut_ptr()), -1);
        }
        assert!(buf.iter().all(|&c| c == 0x55 as c_char));
        assert_eq!(conninfo::identity(IdentityField::ProductKey), "");
        assert_eq!(conninfo::identity(IdentityField::FirmwareVersion), "");
    }

    #[test]
    fn firmware_version() {
        let _g = conninfo::test_lock();
        let mut buf = [0x55 as c_char; FIRMWARE_VERSION_MAXLEN];
        assert_eq!(unsafe { HAL_GetFirmwareVersion(buf.as_mut_ptr()) }, 23);
        assert_eq!(text(&buf), "app-1.0.0-20180101.1000");

        conninfo::set_identity(IdentityField::FirmwareVersion, "app-1.1.0").unwrap();
        assert_eq!(unsafe { HAL_GetFirmwareVersion(buf.as_mut_ptr()) }, 9);
        assert_eq!(text(&buf), "app-1.1.0");

        let max = "v".repeat(FIRMWARE_VERSION_MAXLEN - 1);
        std::env::set_var(conninfo::ENV_FIRMWARE_VERSION, &max);
        assert_eq!(unsafe { HAL_GetFirmwareVersion(buf.as_mut_ptr()) }, 31);
        assert_eq!(text(&buf), max);

        std::env::set_var(
            conninfo::ENV_FIRMWARE_VERSION,
            "v".repeat(FIRMWARE_VERSION_MAXLEN),
        );
        let mut fresh = [0x55 as c_char; FIRMWARE_VERSION_MAXLEN];
        assert_eq!(unsafe { HAL_GetFirmwareVersion(fresh.as_mut_ptr()) }, -1);
        assert!(fresh.iter().all(|&c| c == 0x55));
    }
}
