//! Aliyun IoT MQTT connection info (host, port, client id, username, HMAC-SHA1 password) and the
//! process-wide settings that iotkit keeps behind `IOT_Ioctl` and the `HAL_Set*` / `HAL_Get*`
//! device identity calls.
//!
//! Pure Rust: nothing here knows about C. `ffi/conninfo.rs` and `ffi/hal.rs` translate.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::source::{check_ca_pem, CaPemError};
use crate::tls::{is_web_roots, WEB_ROOTS_PEM};

/// Timestamp signed into every password; iotkit v2.3 uses the same fixed value (2050-01-01), so
/// one password stays valid and needs no clock.
const TIMESTAMP: &str = "2524608000000";

/// Longest product key [`aliyun_conn_info`] accepts. Aliyun keys are 11 characters (iotkit's
/// `PRODUCT_KEY_LEN` is 20), but the product ids of the other platforms run to 64, and the
/// client id and username have room for them.
pub(crate) const MAX_PRODUCT_KEY_LEN: usize = 64;
/// Longest device name [`aliyun_conn_info`] accepts (iotkit's `DEVICE_NAME_LEN`).
pub(crate) const MAX_DEVICE_NAME_LEN: usize = 32;
/// Longest device secret [`aliyun_conn_info`] accepts (iotkit's `DEVICE_SECRET_LEN`).
pub(crate) const MAX_DEVICE_SECRET_LEN: usize = 64;
/// Longest host name: custom MQTT/HTTP domain or `IOTX_MQTT_HOST` (iotkit's
/// `HOST_ADDRESS_LEN`).
pub(crate) const MAX_HOST_LEN: usize = 128;

/// Environment variable that, when set and non-empty, replaces the computed MQTT host.
pub const ENV_MQTT_HOST: &str = "IOTX_MQTT_HOST";
/// Environment variable that, when set and non-empty, replaces the computed MQTT port (1..=65535).
pub const ENV_MQTT_PORT: &str = "IOTX_MQTT_PORT";
/// Environment variable that, when set and non-empty, is the firmware version the HAL reports.
pub const ENV_FIRMWARE_VERSION: &str = "OTA_FIRMWARE_VERSION";
/// Firmware version reported when neither the environment nor a setter gave one (as iotkit's
/// Linux HAL).
pub const DEFAULT_FIRMWARE_VERSION: &str = "app-1.0.0-20180101.1000";

const PORT_PLAIN: u16 = 1883;
const PORT_TLS: u16 = 443;

/// Aliyun IoT region: selects the MQTT host, unless `Custom` (then the custom domain is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// China (Shanghai), `cn-shanghai` (the default).
    Shanghai,
    /// Singapore, `ap-southeast-1`.
    Singapore,
    /// Japan (Tokyo), `ap-northeast-1`.
    Japan,
    /// US West (Silicon Valley), `us-west-1`.
    UsWest,
    /// Germany (Frankfurt), `eu-central-1`.
    Germany,
    /// No Aliyun region: the host is the domain given to [`set_mqtt_domain`].
    Custom,
}

impl Region {
    /// Aliyun's region id (`cn-shanghai` …); `None` for `Custom`.
    pub fn id(self) -> Option<&'static str> {
        match self {
            Region::Shanghai => Some("cn-shanghai"),
            Region::Singapore => Some("ap-southeast-1"),
            Region::Japan => Some("ap-northeast-1"),
            Region::UsWest => Some("us-west-1"),
            Region::Germany => Some("eu-central-1"),
            Region::Custom => None,
        }
    }
}

/// One device identity value kept for the HAL getters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityField {
    /// The product key (Aliyun; the product id of the other platforms), at most 20 bytes.
    ProductKey,
    /// The device name within the product, at most 32 bytes.
    DeviceName,
    /// The device secret that signs the MQTT password, at most 64 bytes.
    DeviceSecret,
    /// The running firmware version, at most 31 bytes; see [`firmware_version`].
    FirmwareVersion,
}

impl IdentityField {
    /// Longest accepted value: iotkit's `PRODUCT_KEY_LEN`, `DEVICE_NAME_LEN`,
    /// `DEVICE_SECRET_LEN`, and `FIRMWARE_VERSION_MAXLEN - 1` (that buffer includes the NUL).
    pub const fn max_len(self) -> usize {
        match self {
            IdentityField::ProductKey => 20,
            IdentityField::DeviceName => 32,
            IdentityField::DeviceSecret => 64,
            IdentityField::FirmwareVersion => 31,
        }
    }

    fn name(self) -> &'static str {
        match self {
            IdentityField::ProductKey => "product key",
            IdentityField::DeviceName => "device name",
            IdentityField::DeviceSecret => "device secret",
            IdentityField::FirmwareVersion => "firmware version",
        }
    }
}

/// Why connection info or a setting was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnInfoError {
    /// A required value is empty.
    Empty(&'static str),
    /// A value is longer than its limit (never truncated).
    TooLong {
        /// The value refused (e.g. "device name", or the environment variable's name).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most bytes allowed.
        max: usize,
    },
    /// The region is `Custom` but no custom MQTT domain was set.
    NoCustomDomain,
    /// `IOTX_MQTT_PORT` is set but is not a port number in 1..=65535.
    InvalidEnvPort(String),
    /// The HTTPS CA is not a usable PEM certificate.
    InvalidCa(CaPemError),
    /// The MQTT CA is not a usable PEM certificate.
    InvalidMqttCa(CaPemError),
}

impl fmt::Display for ConnInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnInfoError::Empty(what) => write!(f, "{what} is empty"),
            ConnInfoError::TooLong { what, len, max } => {
                write!(f, "{what} is {len} bytes long, the limit is {max}")
            }
            ConnInfoError::NoCustomDomain => {
                f.write_str("region is custom but no custom MQTT domain is set")
            }
            ConnInfoError::InvalidEnvPort(v) => {
                write!(f, "{ENV_MQTT_PORT}={v:?} is not a port number in 1..=65535")
            }
            ConnInfoError::InvalidCa(e) => write!(f, "HTTPS CA rejected: {e}"),
            ConnInfoError::InvalidMqttCa(e) => write!(f, "MQTT CA rejected: {e}"),
        }
    }
}

impl std::error::Error for ConnInfoError {}

/// What a device needs to open its MQTT connection to Aliyun IoT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The broker's host name (regional, custom domain, or `IOTX_MQTT_HOST`).
    pub host: String,
    /// The broker's port: 1883, 443 with TLS, or the custom or `IOTX_MQTT_PORT` one.
    pub port: u16,
    /// `{pk}.{dn}|timestamp=…,securemode=…,signmethod=hmacsha1,…|`: the MQTT client id, which
    /// carries the signing parameters.
    pub client_id: String,
    /// `{dn}&{pk}`.
    pub username: String,
    /// Lowercase hex HMAC-SHA1 of the client id, device name, product key and timestamp,
    /// keyed with the device secret (40 characters).
    pub password: String,
    /// The CA that authenticates the broker when MQTT runs over TLS ([`set_mqtt_tls`]): the one
    /// set with [`set_mqtt_ca`], else [`WEB_ROOTS_PEM`] (the bundled web roots); `None` for
    /// plain TCP.
    pub ca: Option<CaPem>,
}

/// A CA certificate PEM as checked and copied by [`set_mqtt_ca`]. It keeps a NUL after the
/// text, so C callers get it as the `pub_key` string of `iotx_conn_info_t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaPem(Arc<[u8]>);

impl CaPem {
    fn new(pem: &[u8]) -> CaPem {
        let mut bytes = Vec::with_capacity(pem.len() + 1);
        bytes.extend_from_slice(pem);
        bytes.push(0);
        CaPem(Arc::from(bytes))
    }

    /// The PEM text (without the trailing NUL).
    pub fn pem(&self) -> &[u8] {
        self.0.split_last().map_or(&[], |(_, text)| text)
    }

    /// The PEM text as a C string (valid as long as this value or a clone of it lives).
    pub fn as_c_str(&self) -> &std::ffi::CStr {
        std::ffi::CStr::from_bytes_until_nul(&self.0).unwrap_or_default()
    }
}

struct Settings {
    region: Region,
    mqtt_domain: Option<String>,
    http_domain: Option<String>,
    mqtt_port: Option<u16>,
    https_ca: Option<Arc<[u8]>>,
    /// `None`: the default (TLS unless an environment override points at a local broker).
    mqtt_tls: Option<bool>,
    mqtt_ca: Option<CaPem>,
    allow_plain_http: bool,
    product_key: String,
    device_name: String,
    device_secret: String,
    firmware_version: String,
}

impl Settings {
    const DEFAULT: Settings = Settings {
        region: Region::Shanghai,
        mqtt_domain: None,
        http_domain: None,
        mqtt_port: None,
        https_ca: None,
        mqtt_tls: None,
        mqtt_ca: None,
        allow_plain_http: true,
        product_key: String::new(),
        device_name: String::new(),
        device_secret: String::new(),
        firmware_version: String::new(),
    };

    fn identity_mut(&mut self, field: IdentityField) -> &mut String {
        match field {
            IdentityField::ProductKey => &mut self.product_key,
            IdentityField::DeviceName => &mut self.device_name,
            IdentityField::DeviceSecret => &mut self.device_secret,
            IdentityField::FirmwareVersion => &mut self.firmware_version,
        }
    }
}

static SETTINGS: Mutex<Settings> = Mutex::new(Settings::DEFAULT);

fn settings() -> MutexGuard<'static, Settings> {
    // The settings are plain values; a panic while holding the lock cannot leave them torn.
    SETTINGS.lock().unwrap_or_else(|e| e.into_inner())
}

fn check(what: &'static str, value: &str, max: usize) -> Result<(), ConnInfoError> {
    if value.is_empty() {
        return Err(ConnInfoError::Empty(what));
    }
    if value.len() > max {
        return Err(ConnInfoError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// Restores every setting (region, domains, port, HTTPS CA, identity) to its default.
pub fn reset_settings() {
    *settings() = Settings::DEFAULT;
}

/// Selects the region. A custom domain set earlier is kept and used again when the region
/// goes back to `Custom`.
pub fn set_region(region: Region) {
    settings().region = region;
}

/// The current region (`Shanghai` by default).
pub fn region() -> Region {
    settings().region
}

/// Uses `domain` as the MQTT host, as is, and switches the region to `Custom`.
pub fn set_mqtt_domain(domain: &str) -> Result<(), ConnInfoError> {
    check("custom MQTT domain", domain, MAX_HOST_LEN)?;
    let mut s = settings();
    s.mqtt_domain = Some(domain.to_owned());
    s.region = Region::Custom;
    Ok(())
}

/// Stores a custom HTTP domain. Kept for iotkit compatibility; nothing in this crate uses HTTP
/// authentication or dynamic registration, so it does not change the region.
pub fn set_http_domain(domain: &str) -> Result<(), ConnInfoError> {
    check("custom HTTP domain", domain, MAX_HOST_LEN)?;
    settings().http_domain = Some(domain.to_owned());
    Ok(())
}

/// The custom HTTP domain, if one was set.
pub fn http_domain() -> Option<String> {
    settings().http_domain.clone()
}

/// Replaces the default MQTT port (1883, or 443 with TLS); `None` restores the default.
pub fn set_mqtt_port(port: Option<u16>) {
    settings().mqtt_port = port;
}

/// Trusts exactly the CA certificate(s) in `pem` for HTTPS firmware downloads of OTA sessions
/// created afterwards; `None` (or [`WEB_ROOTS_PEM`]) goes back to the bundled web roots. The
/// PEM is checked and copied.
pub fn set_https_ca(pem: Option<&[u8]>) -> Result<(), ConnInfoError> {
    let pem = pem.filter(|p| !is_web_roots(p));
    let ca = match pem {
        Some(pem) => {
            check_ca_pem(pem).map_err(ConnInfoError::InvalidCa)?;
            Some(Arc::from(pem))
        }
        None => None,
    };
    settings().https_ca = ca;
    Ok(())
}

/// The CA PEM set by [`set_https_ca`], if any (`None`: the web roots).
pub fn https_ca() -> Option<Arc<[u8]>> {
    settings().https_ca.clone()
}

/// Runs the MQTT connection of [`aliyun_conn_info`] over TLS (port 443 unless a port was set,
/// `securemode=2`; the broker verified against [`set_mqtt_ca`]'s CA, else the bundled web
/// roots) or plain TCP (port 1883, `securemode=3`). `None` restores the default: TLS, as
/// iotkit, except when `IOTX_MQTT_HOST` or `IOTX_MQTT_PORT` points the device at another
/// broker (a local test broker), and in a build without the `tls` feature.
pub fn set_mqtt_tls(tls: Option<bool>) {
    settings().mqtt_tls = tls;
}

/// Whether [`aliyun_conn_info`] gives a TLS connection now (see [`set_mqtt_tls`]).
pub fn mqtt_tls() -> bool {
    let explicit = settings().mqtt_tls;
    explicit.unwrap_or_else(|| {
        cfg!(feature = "tls")
            && env_non_empty(ENV_MQTT_HOST).is_none()
            && env_non_empty(ENV_MQTT_PORT).is_none()
    })
}

/// Trusts exactly the CA certificate(s) in `pem` for the broker when MQTT runs over TLS;
/// `None` goes back to the bundled web roots. The PEM is checked (it must hold a certificate that can be a trust anchor)
/// and copied, so the caller's buffer need not outlive the call.
pub fn set_mqtt_ca(pem: Option<&[u8]>) -> Result<(), ConnInfoError> {
    let ca = match pem {
        Some(pem) => {
            check_ca_pem(pem).map_err(ConnInfoError::InvalidMqttCa)?;
            Some(CaPem::new(pem))
        }
        None => None,
    };
    settings().mqtt_ca = ca;
    Ok(())
}

/// The CA set by [`set_mqtt_ca`], if any.
pub fn mqtt_ca() -> Option<CaPem> {
    settings().mqtt_ca.clone()
}

/// Whether OTA sessions created afterwards may download over plain `http://` (default true, as
/// the platforms' documents use such URLs; each such download logs a warning). False refuses
/// them and redirects to them.
pub fn set_allow_plain_http(allow: bool) {
    settings().allow_plain_http = allow;
}

/// See [`set_allow_plain_http`].
pub fn allow_plain_http() -> bool {
    settings().allow_plain_http
}

/// Stores one identity value for the HAL getters; returns its length.
pub fn set_identity(field: IdentityField, value: &str) -> Result<usize, ConnInfoError> {
    let max = field.max_len();
    if value.len() > max {
        return Err(ConnInfoError::TooLong {
            what: field.name(),
            len: value.len(),
            max,
        });
    }
    let mut s = settings();
    let slot = s.identity_mut(field);
    slot.clear();
    slot.push_str(value);
    Ok(value.len())
}

/// The stored identity value (empty when never set). For the firmware version use
/// [`firmware_version`], which also looks at the environment and the default.
pub fn identity(field: IdentityField) -> String {
    settings().identity_mut(field).clone()
}

/// The firmware version to report: `OTA_FIRMWARE_VERSION` when set and non-empty, else the last
/// value given to [`set_identity`], else [`DEFAULT_FIRMWARE_VERSION`].
pub fn firmware_version() -> Result<String, ConnInfoError> {
    let max = IdentityField::FirmwareVersion.max_len();
    if let Some(v) = env_non_empty(ENV_FIRMWARE_VERSION) {
        check(ENV_FIRMWARE_VERSION, &v, max)?;
        return Ok(v);
    }
    let stored = identity(IdentityField::FirmwareVersion);
    if stored.is_empty() {
        Ok(DEFAULT_FIRMWARE_VERSION.to_owned())
    } else {
        Ok(stored)
    }
}

fn env_non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Lowercase hex of HMAC-SHA1(`key`, `data`).
pub fn hmac_sha1_hex(key: &[u8], data: &[u8]) -> String {
    use std::fmt::Write;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = ring::hmac::sign(&key, data);
    let mut hex = String::with_capacity(tag.as_ref().len() * 2);
    for b in tag.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Computes the Aliyun MQTT connection info for one device, as iotkit v2.3 does.
///
/// Host: `{pk}.iot-as-mqtt.{region}.aliyuncs.com`, or the custom domain when the region is
/// `Custom`; port 1883 (443 with TLS, see [`set_mqtt_tls`]) or the custom port. `IOTX_MQTT_HOST` and
/// `IOTX_MQTT_PORT`, when set and non-empty, override both.
///
/// Errors: `pk`, `dn` or `secret` empty or longer than 64, 32 and 64 bytes
/// ([`ConnInfoError::Empty`], [`ConnInfoError::TooLong`]); custom region without a domain
/// ([`ConnInfoError::NoCustomDomain`]); `IOTX_MQTT_HOST` longer than 128 bytes;
/// `IOTX_MQTT_PORT` not in 1..=65535 ([`ConnInfoError::InvalidEnvPort`]).
pub fn aliyun_conn_info(pk: &str, dn: &str, secret: &str) -> Result<ConnInfo, ConnInfoError> {
    check("product key", pk, MAX_PRODUCT_KEY_LEN)?;
    check("device name", dn, MAX_DEVICE_NAME_LEN)?;
    check("device secret", secret, MAX_DEVICE_SECRET_LEN)?;
    let tls = mqtt_tls();
    let ca = tls.then(|| mqtt_ca().unwrap_or_else(|| CaPem::new(WEB_ROOTS_PEM.as_bytes())));

    let (host, port) = endpoint(pk, tls)?;
    let securemode = if tls { 2 } else { 3 };
    let client_id = format!(
        "{pk}.{dn}|timestamp={TIMESTAMP},_v=sdk-c-2.3.0,securemode={securemode},signmethod=hmacsha1,lan=C|"
    );
    let sign_source = format!("clientId{pk}.{dn}deviceName{dn}productKey{pk}timestamp{TIMESTAMP}");
    Ok(ConnInfo {
        host,
        port,
        client_id,
        username: format!("{dn}&{pk}"),
        password: hmac_sha1_hex(secret.as_bytes(), sign_source.as_bytes()),
        ca,
    })
}

fn endpoint(pk: &str, tls: bool) -> Result<(String, u16), ConnInfoError> {
    let (host, port) = {
        let s = settings();
        let host = match s.region.id() {
            Some(id) => format!("{pk}.iot-as-mqtt.{id}.aliyuncs.com"),
            None => s.mqtt_domain.clone().ok_or(ConnInfoError::NoCustomDomain)?,
        };
        let default_port = if tls { PORT_TLS } else { PORT_PLAIN };
        (host, s.mqtt_port.unwrap_or(default_port))
    };
    let host = match env_non_empty(ENV_MQTT_HOST) {
        Some(h) => {
            check(ENV_MQTT_HOST, &h, MAX_HOST_LEN)?;
            h
        }
        None => host,
    };
    let port = match env_non_empty(ENV_MQTT_PORT) {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(ConnInfoError::InvalidEnvPort(p)),
        },
        None => port,
    };
    Ok((host, port))
}

/// Serialises tests that touch the process-wide settings or the environment variables above.
#[cfg(test)]
pub(crate) fn test_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    reset_settings();
    for var in [ENV_MQTT_HOST, ENV_MQTT_PORT, ENV_FIRMWARE_VERSION] {
        std::env::remove_var(var);
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    // printf '%s' 'clientIda1.d1deviceNamed1productKeya1timestamp2524608000000' \
    //   | openssl dgst -sha1 -hmac secret
    const A1_D1_PASSWORD: &str = "1a3ae49436cc0fbaaafc89dea7e1255bbe831de2";

    #[test]
    fn hmac_sha1_rfc2202_case_2() {
        assert_eq!(
            hmac_sha1_hex(b"Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn plain_tcp_shanghai() {
        let _g = test_lock();
        set_mqtt_tls(Some(false));
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!(info.host, "a1.iot-as-mqtt.cn-shanghai.aliyuncs.com");
        assert_eq!(info.port, 1883);
        assert_eq!(
            info.client_id,
            "a1.d1|timestamp=2524608000000,_v=sdk-c-2.3.0,securemode=3,signmethod=hmacsha1,lan=C|"
        );
        assert_eq!(info.username, "d1&a1");
        assert_eq!(info.password, A1_D1_PASSWORD);
    }

    #[cfg(feature = "tls")]
    fn test_ca_pem() -> String {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        ca.cert.pem()
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_uses_port_443_and_securemode_2() {
        let _g = test_lock();
        let pem = test_ca_pem();
        set_mqtt_tls(Some(true));
        set_mqtt_ca(Some(pem.as_bytes())).unwrap();
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!(info.port, 443);
        assert!(info.client_id.contains(",securemode=2,"));
        assert_eq!(info.password, A1_D1_PASSWORD);
        let ca = info.ca.expect("the CA rides along with TLS");
        assert_eq!(ca.pem(), pem.as_bytes());
        assert_eq!(ca.as_c_str().to_bytes(), pem.as_bytes());

        set_mqtt_tls(Some(false));
        assert_eq!(aliyun_conn_info("a1", "d1", "secret").unwrap().ca, None);
    }

    #[test]
    #[cfg(feature = "tls")]
    fn tls_with_the_web_roots_is_the_default_except_for_a_local_broker() {
        let _g = test_lock();
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!(info.port, 443);
        assert!(info.client_id.contains(",securemode=2,"));
        assert!(is_web_roots(info.ca.as_ref().unwrap().pem()));
        assert!(crate::tls::mqtt_config(info.ca.unwrap().pem()).is_ok());

        for var in [ENV_MQTT_HOST, ENV_MQTT_PORT] {
            std::env::set_var(var, "1884");
            let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
            assert_eq!(info.ca, None, "{var} points at a local broker: plain TCP");
            assert!(info.client_id.contains(",securemode=3,"));
            set_mqtt_tls(Some(true));
            assert!(aliyun_conn_info("a1", "d1", "secret").unwrap().ca.is_some());
            set_mqtt_tls(None);
            std::env::remove_var(var);
        }
    }

    #[test]
    #[cfg(feature = "tls")]
    fn mqtt_ca_is_checked_and_copied() {
        let _g = test_lock();
        assert!(matches!(
            set_mqtt_ca(Some(
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            )),
            Err(ConnInfoError::InvalidMqttCa(_))
        ));
        assert_eq!(mqtt_ca(), None);
        let mut pem = test_ca_pem().into_bytes();
        set_mqtt_ca(Some(&pem)).unwrap();
        let kept = pem.clone();
        pem.fill(b'x');
        assert_eq!(mqtt_ca().unwrap().pem(), &kept[..]);
        set_mqtt_ca(None).unwrap();
        assert_eq!(mqtt_ca(), None);
    }

    #[test]
    fn every_region_id() {
        let _g = test_lock();
        for (r, id) in [
            (Region::Shanghai, "cn-shanghai"),
            (Region::Singapore, "ap-southeast-1"),
            (Region::Japan, "ap-northeast-1"),
            (Region::UsWest, "us-west-1"),
            (Region::Germany, "eu-central-1"),
        ] {
            set_region(r);
            assert_eq!(region(), r);
            let info = aliyun_conn_info("pk", "dn", "s").unwrap();
            assert_eq!(info.host, format!("pk.iot-as-mqtt.{id}.aliyuncs.com"));
        }
    }

    #[test]
    fn custom_domain_and_port() {
        let _g = test_lock();
        set_mqtt_domain("broker.example.com").unwrap();
        assert_eq!(region(), Region::Custom);
        set_mqtt_port(Some(8883));
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!(info.host, "broker.example.com");
        assert_eq!(info.port, 8883);

        set_region(Region::Japan);
        set_mqtt_port(None);
        set_mqtt_tls(Some(false));
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!(info.host, "a1.iot-as-mqtt.ap-northeast-1.aliyuncs.com");
        assert_eq!(info.port, 1883);
    }

    #[test]
    fn https_ca_is_checked_and_copied() {
        let _g = test_lock();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let pem = ca.cert.pem();
        set_https_ca(Some(pem.as_bytes())).unwrap();
        assert_eq!(https_ca().as_deref(), Some(pem.as_bytes()));
        for bad in [
            &b"not a pem"[..],
            b"",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ] {
            assert!(matches!(
                set_https_ca(Some(bad)),
                Err(ConnInfoError::InvalidCa(_))
            ));
        }
        assert_eq!(
            https_ca().as_deref(),
            Some(pem.as_bytes()),
            "a refused CA changes nothing"
        );
        set_https_ca(None).unwrap();
        assert!(https_ca().is_none());
    }

    #[test]
    fn custom_region_without_domain() {
        let _g = test_lock();
        set_region(Region::Custom);
        assert_eq!(
            aliyun_conn_info("a1", "d1", "secret"),
            Err(ConnInfoError::NoCustomDomain)
        );
    }

    #[test]
    fn env_overrides_host_and_port() {
        let _g = test_lock();
        set_mqtt_domain("ignored.example.com").unwrap();
        set_mqtt_port(Some(1));
        std::env::set_var(ENV_MQTT_HOST, "127.0.0.1");
        std::env::set_var(ENV_MQTT_PORT, "18830");
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!((info.host.as_str(), info.port), ("127.0.0.1", 18830));
        assert_eq!(info.password, A1_D1_PASSWORD);

        std::env::set_var(ENV_MQTT_HOST, "");
        std::env::set_var(ENV_MQTT_PORT, "");
        let info = aliyun_conn_info("a1", "d1", "secret").unwrap();
        assert_eq!((info.host.as_str(), info.port), ("ignored.example.com", 1));
    }

    #[test]
    fn env_port_must_be_a_port() {
        let _g = test_lock();
        for bad in ["0", "65536", "-1", "http", "18 83"] {
            std::env::set_var(ENV_MQTT_PORT, bad);
            assert_eq!(
                aliyun_conn_info("a1", "d1", "secret"),
                Err(ConnInfoError::InvalidEnvPort(bad.to_owned()))
            );
        }
        std::env::set_var(ENV_MQTT_PORT, "65535");
        assert_eq!(aliyun_conn_info("a1", "d1", "secret").unwrap().port, 65535);
    }

    #[test]
    fn env_host_too_long() {
        let _g = test_lock();
        std::env::set_var(ENV_MQTT_HOST, "h".repeat(MAX_HOST_LEN + 1));
        assert!(matches!(
            aliyun_conn_info("a1", "d1", "secret"),
            Err(ConnInfoError::TooLong {
                what: ENV_MQTT_HOST,
                ..
            })
        ));
    }

    #[test]
    fn empty_inputs() {
        let _g = test_lock();
        let cases = [
            ("", "d", "s", "product key"),
            ("p", "", "s", "device name"),
            ("p", "d", "", "device secret"),
        ];
        for (pk, dn, secret, what) in cases {
            assert_eq!(
                aliyun_conn_info(pk, dn, secret),
                Err(ConnInfoError::Empty(what))
            );
        }
        assert_eq!(
            set_mqtt_domain(""),
            Err(ConnInfoError::Empty("custom MQTT domain"))
        );
    }

    #[test]
    fn oversize_inputs() {
        let _g = test_lock();
        let pk = "p".repeat(MAX_PRODUCT_KEY_LEN);
        let dn = "d".repeat(MAX_DEVICE_NAME_LEN);
        let secret = "s".repeat(MAX_DEVICE_SECRET_LEN);
        assert!(aliyun_conn_info(&pk, &dn, &secret).is_ok());

        let long_pk = "p".repeat(MAX_PRODUCT_KEY_LEN + 1);
        let long_dn = "d".repeat(MAX_DEVICE_NAME_LEN + 1);
        let long_secret = "s".repeat(MAX_DEVICE_SECRET_LEN + 1);
        let too_long = |what, len, max| ConnInfoError::TooLong { what, len, max };
        assert_eq!(
            aliyun_conn_info(&long_pk, &dn, &secret).unwrap_err(),
            too_long("product key", 65, 64)
        );
        assert_eq!(
            aliyun_conn_info(&pk, &long_dn, &secret).unwrap_err(),
            too_long("device name", 33, 32)
        );
        assert_eq!(
            aliyun_conn_info(&pk, &dn, &long_secret).unwrap_err(),
            too_long("device secret", 65, 64)
        );
        assert_eq!(
            set_mqtt_domain(&"h".repeat(MAX_HOST_LEN + 1)).unwrap_err(),
            too_long("custom MQTT domain", 129, 128)
        );
        assert_eq!(
            set_http_domain(&"h".repeat(MAX_HOST_LEN + 1)).unwrap_err(),
            too_long("custom HTTP domain", 129, 128)
        );
    }

    #[test]
    fn error_messages_name_the_value() {
        let e = ConnInfoError::TooLong {
            what: "product key",
            len: 65,
            max: 64,
        };
        assert_eq!(
            e.to_string(),
            "product key is 65 bytes long, the limit is 64"
        );
        assert_eq!(
            ConnInfoError::InvalidEnvPort("x".into()).to_string(),
            "IOTX_MQTT_PORT=\"x\" is not a port number in 1..=65535"
        );
        assert!(ConnInfoError::NoCustomDomain.to_string().contains("custom"));
        assert_eq!(
            ConnInfoError::Empty("device name").to_string(),
            "device name is empty"
        );
    }

    #[test]
    fn identity_store() {
        let _g = test_lock();
        assert_eq!(identity(IdentityField::ProductKey), "");
        assert_eq!(set_identity(IdentityField::ProductKey, "a1"), Ok(2));
        assert_eq!(set_identity(IdentityField::DeviceName, "d1"), Ok(2));
        assert_eq!(set_identity(IdentityField::DeviceSecret, "s"), Ok(1));
        assert_eq!(identity(IdentityField::ProductKey), "a1");
        assert_eq!(identity(IdentityField::DeviceName), "d1");
        assert_eq!(identity(IdentityField::DeviceSecret), "s");
        assert_eq!(
            set_identity(IdentityField::ProductKey, &"p".repeat(21)),
            Err(ConnInfoError::TooLong {
                what: "product key",
                len: 21,
                max: 20
            })
        );
        assert_eq!(identity(IdentityField::ProductKey), "a1");
    }

    #[test]
    fn firmware_version_sources() {
        let _g = test_lock();
        assert_eq!(firmware_version().unwrap(), DEFAULT_FIRMWARE_VERSION);
        set_identity(IdentityField::FirmwareVersion, "app-2.0.0").unwrap();
        assert_eq!(firmware_version().unwrap(), "app-2.0.0");
        std::env::set_var(ENV_FIRMWARE_VERSION, "env-3.0.0");
        assert_eq!(firmware_version().unwrap(), "env-3.0.0");
        std::env::set_var(ENV_FIRMWARE_VERSION, "v".repeat(32));
        assert!(matches!(
            firmware_version(),
            Err(ConnInfoError::TooLong {
                len: 32,
                max: 31,
                ..
            })
        ));
    }

    #[test]
    fn http_domain_is_kept_and_region_unchanged() {
        let _g = test_lock();
        set_http_domain("iot-auth.example.com").unwrap();
        assert_eq!(http_domain().as_deref(), Some("iot-auth.example.com"));
        assert_eq!(region(), Region::Shanghai);
    }
}
