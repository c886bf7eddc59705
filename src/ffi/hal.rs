//! The HAL functions of `iot_import.h` that firmware calls itself (Linux implementations):
//! memory, time, and the device identity kept in [`crate::conninfo`].
//!
//! `HAL_Printf` and `HAL_Snprintf` are variadic and cannot be defined in stable Rust; the header
//! maps them to `printf` / `snprintf`.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::conninfo::{
    DEVICE_NAME_LEN, DEVICE_SECRET_LEN, FIRMWARE_VERSION_MAXLEN, PRODUCT_KEY_LEN,
};
use super::guard::{write_c_str, PanicValue};
use crate::conninfo::{self, IdentityField};
use crate::log::Level;
use crate::ota_log;

impl PanicValue for u64 {
    fn on_panic() -> Self {
        0
    }
}

/// Allocates `size` bytes with the C allocator (`malloc`).
///
/// Returns the memory, or NULL when out of memory (or, as `malloc` may, for `size` 0). Release
/// it with `HAL_Free`.
#[no_mangle]
pub extern "C" fn HAL_Malloc(size: u32) -> *mut c_void {
    ffi_guard!("HAL_Malloc", {
        // SAFETY: malloc has no preconditions.
        unsafe { libc::malloc(size as usize) }
    })
}

/// Releases memory from `HAL_Malloc`. NULL is accepted and does nothing; must not be called
/// twice with the same pointer.
///
/// # Safety
/// `ptr` is NULL or a live pointer returned by `HAL_Malloc`.
#[no_mangle]
pub unsafe extern "C" fn HAL_Free(ptr: *mut c_void) {
    ffi_guard!("HAL_Free", {
        // SAFETY: the caller passes NULL or a live malloc pointer; free(NULL) is a no-op.
        unsafe { libc::free(ptr) }
    })
}

/// Blocks the calling thread for at least `ms` milliseconds.
#[no_mangle]
pub extern "C" fn HAL_SleepMs(ms: u32) {
    ffi_guard!("HAL_SleepMs", {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
    })
}

/// Milliseconds elapsed on a monotonic clock since the first call of this function (which
/// returns 0). Never goes backwards.
#[no_mangle]
pub extern "C" fn HAL_UptimeMs() -> u64 {
    ffi_guard!("HAL_UptimeMs", {
        static START: OnceLock<Instant> = OnceLock::new();
        let ms = START.get_or_init(Instant::now).elapsed().as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    })
}

/// Stores one identity string; the shared body of the setters.
///
/// # Safety
/// `value` is NULL or NUL-terminated.
unsafe fn set(name: &str, field: IdentityField, value: *const c_char) -> c_int {
    let v = try_str!(value, name, -1);
    match conninfo::set_identity(field, v) {
        Ok(len) => len as c_int,
        Err(e) => {
            ota_log!(Level::Error, "{name}: {e}");
            -1
        }
    }
}

/// Writes `value` and a NUL into `buf` of `size` bytes; the shared body of the getters.
///
/// # Safety
/// `buf` is NULL or valid for `size` bytes of writes.
unsafe fn get(name: &str, value: &str, buf: *mut c_char, size: usize) -> c_int {
    try_nonnull!(buf, name, -1);
    // SAFETY: buf is non-NULL and, per the caller, valid for `size` bytes.
    if unsafe { write_c_str(buf as *mut c_void, size, value.as_bytes()) } {
        value.len() as c_int
    } else {
        ota_log!(Level::Error, "{name}: value does not fit in {size} bytes");
        -1
    }
}

/// Sets the product key that `HAL_GetProductKey` returns.
///
/// - `product_key`: NUL-terminated, at most `PRODUCT_KEY_LEN` bytes (copied).
///
/// Returns the length stored (0 for an empty string, which clears the value), or -1 when
/// `product_key` is NULL, not UTF-8 or too long (the previous value is kept).
///
/// # Safety
/// `product_key` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn HAL_SetProductKey(product_key: *mut c_char) -> c_int {
    ffi_guard!("HAL_SetProductKey", {
        unsafe { set("HAL_SetProductKey", IdentityField::ProductKey, product_key) }
    })
}

/// Sets the device name that `HAL_GetDeviceName` returns.
///
/// - `device_name`: NUL-terminated, at most `DEVICE_NAME_LEN` bytes (copied).
///
/// Returns the length stored (0 for an empty string, which clears the value), or -1 when
/// `device_name` is NULL, not UTF-8 or too long (the previous value is kept).
///
/// # Safety
/// `device_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn HAL_SetDeviceName(device_name: *mut c_char) -> c_int {
    ffi_guard!("HAL_SetDeviceName", {
        unsafe { set("HAL_SetDeviceName", IdentityField::DeviceName, device_name) }
    })
}

/// Sets the device secret that `HAL_GetDeviceSecret` returns.
///
/// - `device_secret`: NUL-terminated, at most `DEVICE_SECRET_LEN` bytes (copied).
///
/// Returns the length stored (0 for an empty string, which clears the value), or -1 when
/// `device_secret` is NULL, not UTF-8 or too long (the previous value is kept).
///
/// # Safety
/// `device_secret` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn HAL_SetDeviceSecret(device_secret: *mut c_char) -> c_int {
    ffi_guard!("HAL_SetDeviceSecret", {
        unsafe {
            set(
                "HAL_SetDeviceSecret",
                IdentityField::DeviceSecret,
                device_secret,
            )
        }
    })
}

/// Copies the product key set by `HAL_SetProductKey` (empty if never set), NUL-terminated.
///
/// - `product_key`: buffer of `PRODUCT_KEY_LEN + 1` bytes.
///
/// Returns the length written (without the NUL), or -1 when `product_key` is NULL.
///
/// # Safety
/// `product_key` is NULL or valid for `PRODUCT_KEY_LEN + 1` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn HAL_GetProductKey(product_key: *mut c_char) -> c_int {
    ffi_guard!("HAL_GetProductKey", {
        let v = conninfo::identity(IdentityField::ProductKey);
        unsafe { get("HAL_GetProductKey", &v, product_key, PRODUCT_KEY_LEN + 1) }
    })
}

/// Copies the device name set by `HAL_SetDeviceName` (empty if never set), NUL-terminated.
///
/// - `device_name`: buffer of `DEVICE_NAME_LEN + 1` bytes.
///
/// Returns the length written (without the NUL), or -1 when `device_name` is NULL.
///
/// # Safety
/// `device_name` is NULL or valid for `DEVICE_NAME_LEN + 1` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn HAL_GetDeviceName(device_name: *mut c_char) -> c_int {
    ffi_guard!("HAL_GetDeviceName", {
        let v = conninfo::identity(IdentityField::DeviceName);
        unsafe { get("HAL_GetDeviceName", &v, device_name, DEVICE_NAME_LEN + 1) }
    })
}

/// Copies the device secret set by `HAL_SetDeviceSecret` (empty if never set), NUL-terminated.
///
/// - `device_secret`: buffer of `DEVICE_SECRET_LEN + 1` bytes.
///
/// Returns the length written (without the NUL), or -1 when `device_secret` is NULL.
///
/// # Safety
/// `device_secret` is NULL or valid for `DEVICE_SECRET_LEN + 1` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn HAL_GetDeviceSecret(device_secret: *mut c_char) -> c_int {
    ffi_guard!("HAL_GetDeviceSecret", {
        let v = conninfo::identity(IdentityField::DeviceSecret);
        unsafe {
            get(
                "HAL_GetDeviceSecret",
                &v,
                device_secret,
                DEVICE_SECRET_LEN + 1,
            )
        }
    })
}

/// Copies the running firmware's version, NUL-terminated: the environment variable
/// `OTA_FIRMWARE_VERSION` when set and non-empty, else the version set from Rust
/// (`ota::conninfo::set_identity`), else `"app-1.0.0-20180101.1000"` (as iotkit's Linux HAL).
///
/// - `version`: buffer of `FIRMWARE_VERSION_MAXLEN` bytes (NUL included).
///
/// Returns the length written (without the NUL), or -1 when `version` is NULL or
/// `OTA_FIRMWARE_VERSION` is longer than `FIRMWARE_VERSION_MAXLEN - 1` (nothing written).
///
/// # Safety
/// `version` is NULL or valid for `FIRMWARE_VERSION_MAXLEN` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn HAL_GetFirmwareVersion(version: *mut c_char) -> c_int {
    ffi_guard!("HAL_GetFirmwareVersion", {
        try_nonnull!(version, "HAL_GetFirmwareVersion", -1);
        let v = match conninfo::firmware_version() {
            Ok(v) => v,
            Err(e) => {
                ota_log!(Level::Error, "HAL_GetFirmwareVersion: {e}");
                return -1;
            }
        };
        unsafe {
            get(
                "HAL_GetFirmwareVersion",
                &v,
                version,
                FIRMWARE_VERSION_MAXLEN,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CStr, CString};
    use std::ptr;

    fn text(buf: &[c_char]) -> &str {
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap()
    }

    #[test]
    fn malloc_and_free() {
        let p = HAL_Malloc(64) as *mut u8;
        assert!(!p.is_null());
        unsafe {
            p.write_bytes(0xa5, 64);
            assert_eq!(*p.add(63), 0xa5);
            HAL_Free(p as *mut c_void);
            HAL_Free(ptr::null_mut());
        }
    }

    #[test]
    fn uptime_is_monotonic_and_sleep_waits() {
        let t0 = HAL_UptimeMs();
        HAL_SleepMs(20);
        let t1 = HAL_UptimeMs();
        assert!(t1 >= t0 + 20, "{t0} -> {t1}");
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
    fn identity_too_long_or_null() {
        let _g = conninfo::test_lock();
        let mut long = vec![b'p'; PRODUCT_KEY_LEN + 1];
        long.push(0);
        unsafe {
            assert_eq!(HAL_SetProductKey(long.as_mut_ptr() as *mut c_char), -1);
            assert_eq!(HAL_SetProductKey(ptr::null_mut()), -1);
            assert_eq!(HAL_SetDeviceName(ptr::null_mut()), -1);
            assert_eq!(HAL_SetDeviceSecret(ptr::null_mut()), -1);
            assert_eq!(HAL_GetProductKey(ptr::null_mut()), -1);
            assert_eq!(HAL_GetDeviceName(ptr::null_mut()), -1);
            assert_eq!(HAL_GetDeviceSecret(ptr::null_mut()), -1);
            assert_eq!(HAL_GetFirmwareVersion(ptr::null_mut()), -1);
        }
        assert_eq!(conninfo::identity(IdentityField::ProductKey), "");
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
