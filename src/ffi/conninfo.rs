//! `IOT_SetupConnInfo`, `IOT_Ioctl`, the length macros of `iot_export.h` and the connection
//! info struct, over [`crate::conninfo`].

#![allow(non_snake_case, non_camel_case_types)]

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

use crate::conninfo::{self, CaPem, IdentityField, Region};
use crate::log::Level;
use crate::ota_log;

/// Longest product key the HAL stores (buffers are `PRODUCT_KEY_LEN + 1`).
pub const PRODUCT_KEY_LEN: usize = 20;
/// Longest device name (buffers are `DEVICE_NAME_LEN + 1`).
pub const DEVICE_NAME_LEN: usize = 32;
/// Longest device id.
pub const DEVICE_ID_LEN: usize = 64;
/// Longest device secret (buffers are `DEVICE_SECRET_LEN + 1`).
pub const DEVICE_SECRET_LEN: usize = 64;
/// Longest product secret.
pub const PRODUCT_SECRET_LEN: usize = 64;
/// Size of the `HAL_GetFirmwareVersion` buffer, NUL included.
pub const FIRMWARE_VERSION_MAXLEN: usize = 32;
/// Longest MQTT host name.
pub const HOST_ADDRESS_LEN: usize = 128;
/// Longest port, as text.
pub const HOST_PORT_LEN: usize = 8;
/// Longest MQTT client id.
pub const CLIENT_ID_LEN: usize = 256;
/// Longest MQTT username.
pub const USER_NAME_LEN: usize = 512;
/// Longest MQTT password.
pub const PASSWORD_LEN: usize = 256;

const _: () = {
    assert!(PRODUCT_KEY_LEN == IdentityField::ProductKey.max_len());
    assert!(DEVICE_NAME_LEN == IdentityField::DeviceName.max_len());
    assert!(DEVICE_SECRET_LEN == IdentityField::DeviceSecret.max_len());
    assert!(FIRMWARE_VERSION_MAXLEN == IdentityField::FirmwareVersion.max_len() + 1);
    assert!(HOST_ADDRESS_LEN == conninfo::MAX_HOST_LEN);
};

/// MQTT connection info filled by `IOT_SetupConnInfo` (iotkit v2.3 layout). Every string is
/// NUL-terminated.
// cbindgen cannot evaluate `LEN + 1` in an array length, so the sizes are literals;
// `EMPTY_CONN_INFO` below fails to compile if they drift from the constants.
#[repr(C)]
pub struct iotx_conn_info_t {
    /// The broker's TCP port: 1883, 443 with `IOTX_IOCTL_SET_MQTT_TLS`, or the
    /// `IOTX_IOCTL_SET_MQTT_PORT` / `IOTX_MQTT_PORT` one.
    pub port: u16,
    /// `HOST_ADDRESS_LEN + 1` bytes.
    pub host_name: [c_char; 129],
    /// `CLIENT_ID_LEN + 1` bytes.
    pub client_id: [c_char; 257],
    /// `USER_NAME_LEN + 1` bytes.
    pub username: [c_char; 513],
    /// `PASSWORD_LEN + 1` bytes.
    pub password: [c_char; 257],
    /// CA certificate (PEM) for TLS, or NULL for plain TCP.
    pub pub_key: *const c_char,
}

/// Pointer to `iotx_conn_info_t`, as iotkit's samples declare it.
pub type iotx_conn_info_pt = *mut iotx_conn_info_t;

/// Aliyun regions for `IOTX_IOCTL_SET_REGION` / `IOTX_IOCTL_GET_REGION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum iotx_cloud_region_types_t {
    /// China East 2, `cn-shanghai` (the default).
    IOTX_CLOUD_REGION_SHANGHAI = 0,
    /// Singapore, `ap-southeast-1`.
    IOTX_CLOUD_REGION_SINGAPORE = 1,
    /// Japan (Tokyo), `ap-northeast-1`.
    IOTX_CLOUD_REGION_JAPAN = 2,
    /// US West (Silicon Valley), `us-west-1`.
    IOTX_CLOUD_REGION_USA_WEST = 3,
    /// Germany (Frankfurt), `eu-central-1`.
    IOTX_CLOUD_REGION_GERMANY = 4,
    /// The host is the domain set by `IOTX_IOCTL_SET_MQTT_DOMAIN`.
    IOTX_CLOUD_REGION_CUSTOM = 5,
    /// Number of regions; not a region.
    IOTX_CLOUD_DOMAIN_MAX = 6,
}

const REGIONS: [(iotx_cloud_region_types_t, Region); 6] = {
    use iotx_cloud_region_types_t::*;
    [
        (IOTX_CLOUD_REGION_SHANGHAI, Region::Shanghai),
        (IOTX_CLOUD_REGION_SINGAPORE, Region::Singapore),
        (IOTX_CLOUD_REGION_JAPAN, Region::Japan),
        (IOTX_CLOUD_REGION_USA_WEST, Region::UsWest),
        (IOTX_CLOUD_REGION_GERMANY, Region::Germany),
        (IOTX_CLOUD_REGION_CUSTOM, Region::Custom),
    ]
};

fn region_from_c(v: c_int) -> Option<Region> {
    REGIONS
        .iter()
        .find(|(c, _)| *c as c_int == v)
        .map(|&(_, r)| r)
}

fn region_to_c(r: Region) -> c_int {
    REGIONS
        .iter()
        .find(|(_, rr)| *rr == r)
        .map_or(-1, |&(c, _)| c as c_int)
}

/// `IOT_Ioctl` options: the iotkit v2.3 values, then this library's extensions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum iotx_ioctl_option_t {
    /// `data`: `int *` holding an `iotx_cloud_region_types_t` (not `IOTX_CLOUD_DOMAIN_MAX`).
    IOTX_IOCTL_SET_REGION = 0,
    /// `data`: `int *` receiving the current `iotx_cloud_region_types_t`.
    IOTX_IOCTL_GET_REGION = 1,
    /// `data`: `const char *` MQTT host (at most `HOST_ADDRESS_LEN`), copied; also sets the
    /// region to `IOTX_CLOUD_REGION_CUSTOM`.
    IOTX_IOCTL_SET_MQTT_DOMAIN = 2,
    /// `data`: `const char *` HTTP domain (at most `HOST_ADDRESS_LEN`), copied; stored only, as
    /// this library does no HTTP authentication.
    IOTX_IOCTL_SET_HTTP_DOMAIN = 3,
    /// `data`: `int *`; only 0 is accepted (dynamic registration is not supported).
    IOTX_IOCTL_SET_DYNAMIC_REGISTER = 4,
    /// `data`: `int *` receiving 0.
    IOTX_IOCTL_GET_DYNAMIC_REGISTER = 5,
    /// Extension. `data`: `int *` port in 1..=65535, or 0 to restore the default (1883, or 443
    /// with TLS).
    IOTX_IOCTL_SET_MQTT_PORT = 6,
    /// Extension. `data`: `int *`, 1 = TLS (port 443 unless set, `pub_key` = a copy of the PEM
    /// set by `IOTX_IOCTL_SET_MQTT_CA`, else the bundled web roots' marker, `WEB_ROOTS_PEM` in
    /// the Rust API), 0 = plain TCP (port 1883, `pub_key` NULL). Default, as iotkit: TLS,
    /// except when `IOTX_MQTT_HOST` or `IOTX_MQTT_PORT` points at another (local) broker.
    IOTX_IOCTL_SET_MQTT_TLS = 7,
    /// Extension. `data`: `const char *` CA certificate PEM, checked and copied at the call
    /// (the `pub_key` of the connection info points at the copy until the next successful
    /// `IOT_SetupConnInfo`). -1 when the text holds no usable PEM certificate.
    IOTX_IOCTL_SET_MQTT_CA = 8,
    /// Extension. `data`: `const char *` CA certificate(s) in PEM, copied at the call: HTTPS
    /// firmware downloads of OTA handles initialised afterwards trust exactly these roots (host
    /// name and chain are always verified). NULL goes back to the bundled web roots. -1 when the
    /// text holds no usable PEM certificate.
    IOTX_IOCTL_SET_HTTPS_CA = 9,
    /// Extension. `data`: `int *`, 1 = firmware may be downloaded over plain `http://` (the
    /// default, as the platforms' documents use such URLs; each download logs a warning), 0 =
    /// HTTPS only: `http://` URLs and redirects to them fail the download (reported to the
    /// cloud). Applies to OTA handles initialised afterwards.
    IOTX_IOCTL_SET_HTTP_PLAIN = 10,
}

const IOCTL_OPTIONS: [iotx_ioctl_option_t; 11] = {
    use iotx_ioctl_option_t::*;
    [
        IOTX_IOCTL_SET_REGION,
        IOTX_IOCTL_GET_REGION,
        IOTX_IOCTL_SET_MQTT_DOMAIN,
        IOTX_IOCTL_SET_HTTP_DOMAIN,
        IOTX_IOCTL_SET_DYNAMIC_REGISTER,
        IOTX_IOCTL_GET_DYNAMIC_REGISTER,
        IOTX_IOCTL_SET_MQTT_PORT,
        IOTX_IOCTL_SET_MQTT_TLS,
        IOTX_IOCTL_SET_MQTT_CA,
        IOTX_IOCTL_SET_HTTPS_CA,
        IOTX_IOCTL_SET_HTTP_PLAIN,
    ]
};

/// The static `iotx_conn_info_t` handed out by `IOT_SetupConnInfo`, as iotkit's
/// `g_iotx_conn_info`. Rust writes it only under `CONN_INFO_CA`; C reads it through the
/// returned pointer.
struct ConnInfoCell(UnsafeCell<iotx_conn_info_t>);

// SAFETY: writes are serialised by CONN_INFO_CA; the CA pointer it holds is only handed back
// to C, never dereferenced here.
unsafe impl Sync for ConnInfoCell {}

const EMPTY_CONN_INFO: iotx_conn_info_t = iotx_conn_info_t {
    port: 0,
    host_name: [0; HOST_ADDRESS_LEN + 1],
    client_id: [0; CLIENT_ID_LEN + 1],
    username: [0; USER_NAME_LEN + 1],
    password: [0; PASSWORD_LEN + 1],
    pub_key: std::ptr::null(),
};

static CONN_INFO: ConnInfoCell = ConnInfoCell(UnsafeCell::new(EMPTY_CONN_INFO));
/// The CA whose text `CONN_INFO.pub_key` points at, kept alive while it does (until the next
/// successful `IOT_SetupConnInfo`); its lock serialises the writers of `CONN_INFO`.
static CONN_INFO_CA: Mutex<Option<CaPem>> = Mutex::new(None);

/// Copies `s` into the zeroed `dst`, leaving at least one NUL; false (and one log line) when it
/// does not fit.
fn copy_field<const N: usize>(dst: &mut [c_char; N], s: &str, what: &str) -> bool {
    if s.len() >= N {
        ota_log!(
            Level::Error,
            "IOT_SetupConnInfo: {what} is {} bytes, the field holds {}",
            s.len(),
            N - 1
        );
        return false;
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as c_char;
    }
    true
}

/// Computes the MQTT connection info for an Aliyun device and stores it in a process-wide static
/// `iotx_conn_info_t` (overwritten by the next call; not thread-safe against readers).
///
/// Host `{product_key}.iot-as-mqtt.{region}.aliyuncs.com` (region from `IOTX_IOCTL_SET_REGION`,
/// default cn-shanghai) or the `IOTX_IOCTL_SET_MQTT_DOMAIN` domain; port 443 with TLS (the
/// default), 1883 on plain TCP, or the `IOTX_IOCTL_SET_MQTT_PORT` port. The environment
/// variables `IOTX_MQTT_HOST` and `IOTX_MQTT_PORT`, when set and non-empty, override host and
/// port, and then plain TCP is the default (see `IOTX_IOCTL_SET_MQTT_TLS`). `pub_key` is NULL
/// on plain TCP; with TLS a copy of the `IOTX_IOCTL_SET_MQTT_CA` PEM, or a text standing for
/// the bundled web roots, which `IOT_MQTT_Construct` understands.
///
/// - `product_key`: at most 64 bytes (Aliyun's are 11), non-empty.
/// - `device_name`: at most `DEVICE_NAME_LEN` bytes, non-empty.
/// - `device_secret`: at most `DEVICE_SECRET_LEN` bytes, non-empty.
/// - `info_ptr`: receives a pointer to the static `iotx_conn_info_t`.
///
/// Returns 0 on success; -1 (the value of `IOT_OTAE_GENERAL`) when any pointer is NULL, a string
/// is empty, too long or not UTF-8, the region is custom without a domain, `IOTX_MQTT_PORT` is not
/// a port, or TLS is on without a CA. On failure `*info_ptr` and the static are left unchanged.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `info_ptr` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn IOT_SetupConnInfo(
    product_key: *const c_char,
    device_name: *const c_char,
    device_secret: *const c_char,
    info_ptr: *mut *mut c_void,
) -> c_int {
    ffi_body!(IOT_SetupConnInfo, {
        let pk = try_str!(product_key, "IOT_SetupConnInfo: product_key", -1);
        let dn = try_str!(device_name, "IOT_SetupConnInfo: device_name", -1);
        let secret = try_str!(device_secret, "IOT_SetupConnInfo: device_secret", -1);
        try_nonnull!(info_ptr, "IOT_SetupConnInfo: info_ptr", -1);

        let info = match conninfo::aliyun_conn_info(pk, dn, secret) {
            Ok(info) => info,
            Err(e) => {
                ota_log!(Level::Error, "IOT_SetupConnInfo: {e}");
                return -1;
            }
        };

        let mut out = EMPTY_CONN_INFO;
        if !copy_field(&mut out.host_name, &info.host, "host")
            || !copy_field(&mut out.client_id, &info.client_id, "client id")
            || !copy_field(&mut out.username, &info.username, "username")
            || !copy_field(&mut out.password, &info.password, "password")
        {
            return -1;
        }
        out.port = info.port;
        out.pub_key = info
            .ca
            .as_ref()
            .map_or(std::ptr::null(), |ca| ca.as_c_str().as_ptr());
        let mut kept_ca = CONN_INFO_CA.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the only Rust writer holds CONN_INFO_CA; C readers race as with iotkit.
        unsafe { *CONN_INFO.0.get() = out };
        *kept_ca = info.ca;
        // SAFETY: checked non-NULL above; the caller guarantees it is writable.
        unsafe { *info_ptr = CONN_INFO.0.get() as *mut c_void };
        0
    })
}

/// Reads the `int` behind `data`.
///
/// # Safety
/// `data` is non-NULL and points to an `int`.
unsafe fn read_int(data: *mut c_void) -> c_int {
    unsafe { *(data as *const c_int) }
}

/// Sets or reads a process-wide connection setting (see `iotx_ioctl_option_t` for what `data`
/// points to for each option).
///
/// - `option`: an `iotx_ioctl_option_t` value.
/// - `data`: per option, an `int *` or a `const char *`; must not be NULL, except for
///   `IOTX_IOCTL_SET_HTTPS_CA` (NULL = the bundled web roots).
///
/// Returns 0 on success; -1 when `option` is unknown, `data` is NULL, or the value is invalid
/// (unknown region, empty or too long domain, port outside 0..=65535, TLS or plain-HTTP flag
/// not 0/1, CA not a PEM, dynamic registration requested). On failure nothing changes.
///
/// # Safety
/// `data` is NULL or points to the type the option documents (an `int`, or a NUL-terminated
/// string).
#[no_mangle]
pub unsafe extern "C" fn IOT_Ioctl(option: c_int, data: *mut c_void) -> c_int {
    ffi_body!(IOT_Ioctl, {
        use iotx_ioctl_option_t::*;
        let Some(opt) = IOCTL_OPTIONS
            .iter()
            .copied()
            .find(|o| *o as c_int == option)
        else {
            ota_log!(Level::Error, "IOT_Ioctl: unknown option {option}");
            return -1;
        };
        if opt == IOTX_IOCTL_SET_HTTPS_CA && data.is_null() {
            return match conninfo::set_https_ca(None) {
                Ok(()) => 0,
                Err(_) => -1,
            };
        }
        try_nonnull!(data, "IOT_Ioctl: data", -1);
        // SAFETY (all three): `data` is non-NULL and, per the contract, points to what `opt` takes.
        let ok = match opt {
            IOTX_IOCTL_GET_REGION => {
                unsafe { *(data as *mut c_int) = region_to_c(conninfo::region()) };
                true
            }
            IOTX_IOCTL_GET_DYNAMIC_REGISTER => {
                unsafe { *(data as *mut c_int) = 0 };
                true
            }
            IOTX_IOCTL_SET_MQTT_DOMAIN
            | IOTX_IOCTL_SET_HTTP_DOMAIN
            | IOTX_IOCTL_SET_MQTT_CA
            | IOTX_IOCTL_SET_HTTPS_CA => {
                let text = try_str!(data as *const c_char, "IOT_Ioctl: data", -1);
                set_text_option(opt, text)
            }
            _ => set_int_option(opt, unsafe { read_int(data) }),
        };
        if ok {
            0
        } else {
            ota_log!(Level::Error, "IOT_Ioctl: invalid value for {opt:?}");
            -1
        }
    })
}

/// Applies an option whose `data` is an `int *`; false when the value is invalid.
fn set_int_option(opt: iotx_ioctl_option_t, v: c_int) -> bool {
    use iotx_ioctl_option_t::*;
    let flag = match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    };
    match opt {
        IOTX_IOCTL_SET_REGION => region_from_c(v).map(conninfo::set_region).is_some(),
        IOTX_IOCTL_SET_DYNAMIC_REGISTER => {
            if v != 0 {
                ota_log!(
                    Level::Error,
                    "IOT_Ioctl: dynamic registration is not supported"
                );
            }
            v == 0
        }
        IOTX_IOCTL_SET_MQTT_PORT => u16::try_from(v)
            .map(|port| conninfo::set_mqtt_port((port != 0).then_some(port)))
            .is_ok(),
        IOTX_IOCTL_SET_MQTT_TLS => flag.map(|tls| conninfo::set_mqtt_tls(Some(tls))).is_some(),
        IOTX_IOCTL_SET_HTTP_PLAIN => flag.map(conninfo::set_allow_plain_http).is_some(),
        _ => false,
    }
}

/// Applies an option whose `data` is a string; false when the value is refused.
fn set_text_option(opt: iotx_ioctl_option_t, text: &str) -> bool {
    use iotx_ioctl_option_t::*;
    log_err(match opt {
        IOTX_IOCTL_SET_MQTT_DOMAIN => conninfo::set_mqtt_domain(text),
        IOTX_IOCTL_SET_HTTP_DOMAIN => conninfo::set_http_domain(text),
        IOTX_IOCTL_SET_MQTT_CA => conninfo::set_mqtt_ca(Some(text.as_bytes())),
        IOTX_IOCTL_SET_HTTPS_CA => conninfo::set_https_ca(Some(text.as_bytes())),
        _ => return false,
    })
}

fn log_err(r: Result<(), conninfo::ConnInfoError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            ota_log!(Level::Error, "IOT_Ioctl: {e}");
            false
        }
    }
}

#[cfg(test)]
pub(crate) fn reset_for_test() {
    conninfo::reset_settings();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::ptr;

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        let g = conninfo::test_lock();
        reset_for_test();
        g
    }

    fn setup(pk: &CStr, dn: &CStr, secret: &CStr) -> Result<&'static iotx_conn_info_t, c_int> {
        let mut p: *mut c_void = ptr::null_mut();
        let rc = unsafe { IOT_SetupConnInfo(pk.as_ptr(), dn.as_ptr(), secret.as_ptr(), &mut p) };
        if rc != 0 {
            assert!(p.is_null());
            return Err(rc);
        }
        Ok(unsafe { &*(p as *const iotx_conn_info_t) })
    }

    fn text<const N: usize>(field: &[c_char; N]) -> &str {
        let bytes = unsafe { std::slice::from_raw_parts(field.as_ptr() as *const u8, N) };
        CStr::from_bytes_until_nul(bytes).unwrap().to_str().unwrap()
    }

    fn ioctl_int(opt: iotx_ioctl_option_t, mut v: c_int) -> c_int {
        unsafe { IOT_Ioctl(opt as c_int, &mut v as *mut c_int as *mut c_void) }
    }

    fn ioctl_str(opt: iotx_ioctl_option_t, s: &CStr) -> c_int {
        unsafe { IOT_Ioctl(opt as c_int, s.as_ptr() as *mut c_void) }
    }

    #[test]
    fn fills_the_static_struct() {
        let _g = lock();
        assert_eq!(
            ioctl_int(iotx_ioctl_option_t::IOTX_IOCTL_SET_MQTT_TLS, 0),
            0
        );
        let info = setup(c"a1", c"d1", c"secret").unwrap();
        assert_eq!(info.port, 1883);
        assert_eq!(
            text(&info.host_name),
            "a1.iot-as-mqtt.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(
            text(&info.client_id),
            "a1.d1|timestamp=2524608000000,_v=sdk-c-2.3.0,securemode=3,signmethod=hmacsha1,lan=C|"
        );
        assert_eq!(text(&info.username), "d1&a1");
        assert_eq!(
            text(&info.password),
            "1a3ae49436cc0fbaaafc89dea7e1255bbe831de2"
        );
        assert!(info.pub_key.is_null());
        assert_eq!(info.password[40], 0);
    }

    #[test]
    fn shorter_values_leave_no_stale_bytes() {
        let _g = lock();
        setup(c"a-long-product-key", c"a-long-device-name", c"s").unwrap();
        let info = setup(c"a1", c"d1", c"s").unwrap();
        assert!(info.username.iter().skip(5).all(|&c| c == 0));
    }

    #[test]
    fn env_overrides_host_and_port() {
        let _g = lock();
        std::env::set_var(conninfo::ENV_MQTT_HOST, "localhost");
        std::env::set_var(conninfo::ENV_MQTT_PORT, "11883");
        let info = setup(c"a1", c"d1", c"secret").unwrap();
        assert_eq!((text(&info.host_name), info.port), ("localhost", 11883));
        std::env::set_var(conninfo::ENV_MQTT_PORT, "70000");
        assert_eq!(setup(c"a1", c"d1", c"secret").err(), Some(-1));
    }

    #[test]
    fn null_args() {
        let _g = lock();
        let mut p: *mut c_void = ptr::null_mut();
        let (pk, dn, s) = (c"a1".as_ptr(), c"d1".as_ptr(), c"s".as_ptr());
        unsafe {
            assert_eq!(IOT_SetupConnInfo(ptr::null(), dn, s, &mut p), -1);
            assert_eq!(IOT_SetupConnInfo(pk, ptr::null(), s, &mut p), -1);
            assert_eq!(IOT_SetupConnInfo(pk, dn, ptr::null(), &mut p), -1);
            assert_eq!(IOT_SetupConnInfo(pk, dn, s, ptr::null_mut()), -1);
            assert_eq!(IOT_Ioctl(0, ptr::null_mut()), -1);
        }
        assert!(p.is_null());
    }

    #[test]
    fn invalid_inputs() {
        let _g = lock();
        let pk64 = std::ffi::CString::new("p".repeat(64)).unwrap();
        let pk65 = std::ffi::CString::new("p".repeat(65)).unwrap();
        assert!(setup(&pk64, c"d1", c"s").is_ok());
        assert_eq!(setup(&pk65, c"d1", c"s").err(), Some(-1));
        assert_eq!(setup(c"", c"d1", c"s").err(), Some(-1));
        assert_eq!(setup(c"a1", c"\xff", c"s").err(), Some(-1));
    }

    #[test]
    fn region_round_trip() {
        use iotx_cloud_region_types_t::*;
        use iotx_ioctl_option_t::*;
        let _g = lock();
        let mut got: c_int = -7;
        let get = |got: &mut c_int| unsafe {
            IOT_Ioctl(
                IOTX_IOCTL_GET_REGION as c_int,
                got as *mut c_int as *mut c_void,
            )
        };
        assert_eq!(get(&mut got), 0);
        assert_eq!(got, IOTX_CLOUD_REGION_SHANGHAI as c_int);
        assert_eq!(
            ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_REGION_GERMANY as c_int),
            0
        );
        assert_eq!(get(&mut got), 0);
        assert_eq!(got, IOTX_CLOUD_REGION_GERMANY as c_int);
        assert_eq!(
            text(&setup(c"a1", c"d1", c"s").unwrap().host_name),
            "a1.iot-as-mqtt.eu-central-1.aliyuncs.com"
        );
        for bad in [IOTX_CLOUD_DOMAIN_MAX as c_int, -1, 99] {
            assert_eq!(ioctl_int(IOTX_IOCTL_SET_REGION, bad), -1);
        }
        assert_eq!(
            ioctl_int(IOTX_IOCTL_SET_REGION, IOTX_CLOUD_REGION_CUSTOM as c_int),
            0
        );
        assert_eq!(setup(c"a1", c"d1", c"s").err(), Some(-1));
    }

    #[test]
    fn custom_domain_and_port() {
        use iotx_ioctl_option_t::*;
        let _g = lock();
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_DOMAIN, c"mqtt.local"), 0);
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, 1884), 0);
        let info = setup(c"a1", c"d1", c"s").unwrap();
        assert_eq!((text(&info.host_name), info.port), ("mqtt.local", 1884));
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, 0), 0);
        assert_eq!(
            setup(c"a1", c"d1", c"s").unwrap().port,
            443,
            "TLS by default"
        );
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 0), 0);
        assert_eq!(setup(c"a1", c"d1", c"s").unwrap().port, 1883);
        for bad in [-1, 65536] {
            assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_PORT, bad), -1);
        }
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_DOMAIN, c""), -1);
        let long = std::ffi::CString::new("h".repeat(HOST_ADDRESS_LEN + 1)).unwrap();
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_DOMAIN, &long), -1);
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_HTTP_DOMAIN, c"auth.local"), 0);
        assert_eq!(
            text(&setup(c"a1", c"d1", c"s").unwrap().host_name),
            "mqtt.local"
        );
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_trusts_the_web_roots_or_the_ca_set() {
        use iotx_ioctl_option_t::*;
        let _g = lock();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let mut pem = std::ffi::CString::new(ca.cert.pem()).unwrap();
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 2), -1);
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 1), 0);
        let info = setup(c"a1", c"d1", c"s").unwrap();
        let pub_key = unsafe { CStr::from_ptr(info.pub_key) }.to_bytes();
        assert_eq!(pub_key, crate::tls::WEB_ROOTS_PEM.as_bytes());
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_CA, c"not a pem"), -1);
        let fake = c"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_CA, fake), -1);
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_MQTT_CA, &pem), 0);
        // The CA is copied: the caller's buffer may go away.
        let pem_text = pem.as_bytes().to_vec();
        pem = std::ffi::CString::new(vec![b'x'; pem_text.len()]).unwrap();
        drop(pem);
        let info = setup(c"a1", c"d1", c"s").unwrap();
        assert_eq!(info.port, 443);
        assert_eq!(unsafe { CStr::from_ptr(info.pub_key) }.to_bytes(), pem_text);
        assert!(text(&info.client_id).contains(",securemode=2,"));
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_MQTT_TLS, 0), 0);
        assert!(setup(c"a1", c"d1", c"s").unwrap().pub_key.is_null());
    }

    #[test]
    fn plain_http_flag_takes_0_or_1() {
        let _g = lock();
        let set = |mut v: c_int| unsafe {
            IOT_Ioctl(
                iotx_ioctl_option_t::IOTX_IOCTL_SET_HTTP_PLAIN as c_int,
                (&mut v as *mut c_int).cast(),
            )
        };
        assert!(conninfo::allow_plain_http(), "allowed by default");
        assert_eq!(set(0), 0);
        assert!(!conninfo::allow_plain_http());
        assert_eq!(set(2), -1);
        assert!(!conninfo::allow_plain_http(), "a bad value changes nothing");
        assert_eq!(set(1), 0);
        assert!(conninfo::allow_plain_http());
        let rc = unsafe {
            IOT_Ioctl(
                iotx_ioctl_option_t::IOTX_IOCTL_SET_HTTP_PLAIN as c_int,
                ptr::null_mut(),
            )
        };
        assert_eq!(rc, -1);
    }

    #[test]
    #[cfg(feature = "tls")]
    fn https_ca_is_copied_and_null_resets() {
        use iotx_ioctl_option_t::*;
        let _g = lock();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let mut pem = std::ffi::CString::new(ca.cert.pem())
            .unwrap()
            .into_bytes_with_nul();
        let rc = unsafe { IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA as c_int, pem.as_mut_ptr().cast()) };
        assert_eq!(rc, 0);
        pem.fill(0);
        assert_eq!(
            conninfo::https_ca().as_deref(),
            Some(ca.cert.pem().as_bytes())
        );
        assert_eq!(ioctl_str(IOTX_IOCTL_SET_HTTPS_CA, c"not a pem"), -1);
        assert!(conninfo::https_ca().is_some());
        let rc = unsafe { IOT_Ioctl(IOTX_IOCTL_SET_HTTPS_CA as c_int, ptr::null_mut()) };
        assert_eq!(rc, 0);
        assert!(conninfo::https_ca().is_none());
    }

    #[test]
    fn dynamic_register_and_unknown_options() {
        use iotx_ioctl_option_t::*;
        let _g = lock();
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_DYNAMIC_REGISTER, 0), 0);
        assert_eq!(ioctl_int(IOTX_IOCTL_SET_DYNAMIC_REGISTER, 1), -1);
        let mut v: c_int = 7;
        let rc = unsafe {
            IOT_Ioctl(
                IOTX_IOCTL_GET_DYNAMIC_REGISTER as c_int,
                &mut v as *mut c_int as *mut c_void,
            )
        };
        assert_eq!((rc, v), (0, 0));
        assert_eq!(
            unsafe { IOT_Ioctl(11, &mut v as *mut c_int as *mut c_void) },
            -1
        );
        assert_eq!(
            unsafe { IOT_Ioctl(-1, &mut v as *mut c_int as *mut c_void) },
            -1
        );
    }
}
