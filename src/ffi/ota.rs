//! `IOT_OTA_*`: the OTA functions of iotkit v2.3 `iot_export_ota.h`, plus our extensions.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::guard::c_str;
use super::mqtt::MqttHandle;
use super::resume::ota_breakpoint_store_t;
use crate::error::Error;
use crate::image::ImageError;
use crate::log::Level;
use crate::mqtt::MqttClient;
use crate::ota::{OtaConfig, OtaSession};
use crate::ota_log;
use crate::protocol::Protocol;

/// OTA error codes (iotkit v2.3 values).
#[repr(C)]
#[allow(non_camel_case_types)]
pub enum IOT_OTA_Err_t {
    /// Any other failure (e.g. a rejected upgrade message).
    IOT_OTAE_GENERAL = -1,
    /// NULL handle or pointer, bad length, unknown Ioctl type, value out of range.
    IOT_OTAE_INVALID_PARAM = -2,
    /// The call is not allowed in the current state (e.g. FetchYield before an upgrade).
    IOT_OTAE_INVALID_STATE = -3,
    /// A string does not fit its buffer or the limit fixed at init.
    IOT_OTAE_STR_TOO_LONG = -4,
    /// The firmware download failed (HTTP status, connection, timeout, size).
    IOT_OTAE_FETCH_FAILED = -5,
    /// Allocation at init failed.
    IOT_OTAE_NOMEM = -6,
    /// The signalling channel (MQTT) failed to take a message.
    IOT_OTAE_OSC_FAILED = -7,
    /// A signature is required and the file is not an MCUboot image (extension: the image
    /// refusals, -20 to -39, each end the download with the protocol's verify-failed report
    /// naming the cause; see IOT_OTAC_REQUIRE_SIGNATURE).
    IOT_OTAE_IMAGE_NOT_MCUBOOT = -20,
    /// The MCUboot header's size is below its 32 bytes.
    IOT_OTAE_IMAGE_BAD_HEADER = -21,
    /// An encrypted MCUboot image: its hash and signature cover the plaintext, not what is
    /// downloaded.
    IOT_OTAE_IMAGE_ENCRYPTED = -22,
    /// The image ended inside its header or payload.
    IOT_OTAE_IMAGE_TRUNCATED = -23,
    /// A TLV area does not open with its info (magic, size).
    IOT_OTAE_IMAGE_BAD_TLV_INFO = -24,
    /// A TLV runs past the end of its area.
    IOT_OTAE_IMAGE_TLV_PAST_END = -25,
    /// A TLV the verifier needs has a length it cannot use.
    IOT_OTAE_IMAGE_TLV_LENGTH = -26,
    /// A TLV that must appear once appears twice.
    IOT_OTAE_IMAGE_DUPLICATE_TLV = -27,
    /// The image ended inside its TLV areas.
    IOT_OTAE_IMAGE_TLV_TRUNCATED = -28,
    /// Bytes follow the end of the image's TLV area.
    IOT_OTAE_IMAGE_TRAILING_BYTES = -29,
    /// The image's headers give another length than the announced size.
    IOT_OTAE_IMAGE_SIZE_MISMATCH = -30,
    /// Only a hash or signature of a kind this SDK does not check (SHA-384/512, RSA, pure).
    IOT_OTAE_IMAGE_UNSUPPORTED = -31,
    /// An MCUboot image without its SHA-256 TLV.
    IOT_OTAE_IMAGE_MISSING_HASH = -32,
    /// The image's SHA-256 TLV differs from the hash of the bytes received.
    IOT_OTAE_IMAGE_HASH_MISMATCH = -33,
    /// A signature is required and the image has none.
    IOT_OTAE_IMAGE_MISSING_SIGNATURE = -34,
    /// A signature is required and no key was added (IOT_OTAC_ADD_IMAGE_KEY).
    IOT_OTAE_IMAGE_NO_KEYS = -35,
    /// The image is signed with a key that was not added.
    IOT_OTAE_IMAGE_UNKNOWN_KEY = -36,
    /// The signature does not verify.
    IOT_OTAE_IMAGE_BAD_SIGNATURE = -37,
    /// The image's version is lower than the running one (IOT_OTAC_RUNNING_VERSION).
    IOT_OTAE_IMAGE_DOWNGRADE = -38,
    /// The image's security counter is lower than the running one.
    IOT_OTAE_IMAGE_COUNTER_DOWNGRADE = -39,
    /// The new image must be rolled back: it booted more often than IOT_OTAC_CONFIRM_BOOTS
    /// allows without IOT_OTA_ConfirmImage (returned by the version report after such a boot);
    /// the platform was told the upgrade failed.
    IOT_OTAE_IMAGE_ROLLBACK = -40,
    /// IOT_OTA_Init: a handle of the same device (product key, device name, protocol) is open
    /// on this MQTT client already; it would take that handle's upgrade messages (extension,
    /// see IOT_OTA_GetInitError).
    IOT_OTAE_DEVICE_TAKEN = -41,
    /// IOT_OTA_Init: the MQTT client carries IOT_OTA_MAX_HANDLES_PER_CLIENT OTA handles already
    /// (extension, see IOT_OTA_GetInitError).
    IOT_OTAE_TOO_MANY_HANDLES = -42,
    /// A delta patch was refused (malformed, over the applier's budget, not for the running
    /// image, ends early) or the old image could not be read (extension, see
    /// IOT_OTA_SetDeltaSource).
    IOT_OTAE_DELTA_REFUSED = -43,
    /// A delta patch whose upgrade message requires another old image (extData's
    /// `_delta_old_size` or `_delta_old_sha256`) than the running one: the download ended
    /// before any byte of the new image, with one failure report (extension, see
    /// IOT_OTA_SetDeltaSource).
    IOT_OTAE_DELTA_OLD_MISMATCH = -44,
    /// Success.
    IOT_OTAE_NONE = 0,
}

/// OTA states (iotkit v2.3 values), as returned by `IOT_OTAG_STATE`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub enum IOT_OTA_State_t {
    /// iotkit's state before IOT_OTA_Init; never returned, as there is no handle to ask then.
    IOT_OTAS_UNINITED = 0,
    /// Initialised, no upgrade accepted (or the last one ended and was consumed).
    IOT_OTAS_INITED = 1,
    /// An upgrade was accepted; FetchYield downloads it.
    IOT_OTAS_FETCHING = 2,
    /// The download ended (complete, or failed: see IOT_OTAG_CHECK_FIRMWARE).
    IOT_OTAS_FETCHED = 3,
    /// An upgrade was accepted and waits for its turn among the handles on the MQTT client
    /// (extension; IOT_OTA_IsFetching is 0 meanwhile; IOT_OTAG_WAITING says why).
    IOT_OTAS_WAITING = 4,
}

/// Progress values for IOT_OTA_ReportProgress: 0..100 percent, or a failure -1..-4.
/// An `int` so that any percentage can be passed; the names are iotkit v2.3's.
#[allow(non_camel_case_types)]
pub type IOT_OTA_Progress_t = c_int;
/// Burning (flashing) the image failed.
pub const IOT_OTAP_BURN_FAILED: IOT_OTA_Progress_t = -4;
/// Verifying the image failed (iotkit's spelling).
pub const IOT_OTAP_CHECK_FALIED: IOT_OTA_Progress_t = -3;
/// Downloading the image failed.
pub const IOT_OTAP_FETCH_FAILED: IOT_OTA_Progress_t = -2;
/// The upgrade failed for another reason.
pub const IOT_OTAP_GENERAL_FAILED: IOT_OTA_Progress_t = -1;
/// Lowest download percentage (not sent to Aliyun or SagooIOT, whose steps start at 1).
pub const IOT_OTAP_FETCH_PERCENTAGE_MIN: IOT_OTA_Progress_t = 0;
/// Highest download percentage: the whole image.
pub const IOT_OTAP_FETCH_PERCENTAGE_MAX: IOT_OTA_Progress_t = 100;

/// IOT_OTA_Ioctl query types. An `int` so that an unknown value is an error, not undefined
/// behaviour. Values 0..11 are iotkit v2.3's (the six COTA queries first, so
/// IOT_OTAG_FETCHED_SIZE is 6); 12 and up are this SDK's extensions. These numbers never change.
#[allow(non_camel_case_types)]
pub type IOT_OTA_CmdType_t = c_int;
/// COTA (remote configuration) queries: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_CONFIG_ID: IOT_OTA_CmdType_t = 0;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_CONFIG_SIZE: IOT_OTA_CmdType_t = 1;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_SIGN: IOT_OTA_CmdType_t = 2;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_SIGN_METHOD: IOT_OTA_CmdType_t = 3;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_URL: IOT_OTA_CmdType_t = 4;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_COTA_GETTYPE: IOT_OTA_CmdType_t = 5;
/// uint32_t, buf_len 4: bytes fetched so far.
pub const IOT_OTAG_FETCHED_SIZE: IOT_OTA_CmdType_t = 6;
/// uint32_t, buf_len 4: the announced image size.
pub const IOT_OTAG_FILE_SIZE: IOT_OTA_CmdType_t = 7;
/// char buffer, buf_len >= 33: the announced MD5 as 32 lowercase hex digits
/// (IOT_OTAE_INVALID_STATE when the upgrade announced SHA-256 instead).
pub const IOT_OTAG_MD5SUM: IOT_OTA_CmdType_t = 8;
/// char buffer, buf_len >= length + 1 (OTA_VERSION_LEN_MAX always suffices): the upgrade's version.
pub const IOT_OTAG_VERSION: IOT_OTA_CmdType_t = 9;
/// uint32_t, buf_len 4: 1 when every announced byte arrived, no more, and the digest matches;
/// else 0, and IOT_OTA_GetLastError then says why (e.g. an IOT_OTAE_IMAGE_* code).
/// IOT_OTAE_INVALID_STATE before the download ended.
pub const IOT_OTAG_CHECK_FIRMWARE: IOT_OTA_CmdType_t = 10;
/// COTA: not supported, IOT_OTAE_INVALID_PARAM.
pub const IOT_OTAG_CHECK_CONFIG: IOT_OTA_CmdType_t = 11;
/// char buffer, buf_len >= 65: the announced SHA-256 as 64 lowercase hex digits
/// (IOT_OTAE_INVALID_STATE when the upgrade announced MD5).
pub const IOT_OTAG_SHA256SUM: IOT_OTA_CmdType_t = 12;
/// char buffer, buf_len >= 7: "MD5" or "SHA256".
pub const IOT_OTAG_SIGN_METHOD: IOT_OTA_CmdType_t = 13;
/// char buffer: the module of the upgrade ("default" when the platform named none).
pub const IOT_OTAG_MODULE: IOT_OTA_CmdType_t = 14;
/// char buffer: the platform task id; IOT_OTAE_INVALID_STATE where the protocol has none.
pub const IOT_OTAG_TASK_ID: IOT_OTA_CmdType_t = 15;
/// char buffer: extData as JSON text; IOT_OTAE_INVALID_STATE where the upgrade has none.
pub const IOT_OTAG_EXT_DATA: IOT_OTA_CmdType_t = 16;
/// uint32_t, buf_len 4: the offset the next download request starts from.
pub const IOT_OTAG_RESUME_OFFSET: IOT_OTA_CmdType_t = 17;
/// uint32_t, buf_len 4: the IOT_OTA_State_t value.
pub const IOT_OTAG_STATE: IOT_OTA_CmdType_t = 18;

/// Size of the buffer that always holds an upgrade's version plus its NUL.
pub const OTA_VERSION_LEN_MAX: usize = 64;

/// Protocols for IOT_OTA_InitWithProtocol (extension); IOT_OTA_Init speaks Aliyun. An `int`
/// so that an unknown value is refused (NULL), not undefined behaviour.
#[allow(non_camel_case_types)]
pub type IOT_OTA_Protocol_t = c_int;
/// Aliyun IoT (iotkit v2.3): `/ota/device/{inform,upgrade,progress,request}/{pk}/{dn}`.
pub const IOT_OTA_PROTOCOL_ALIYUN: IOT_OTA_Protocol_t = 0;
/// SagooIOT: Aliyun's topics, with string ids, a choice of digest and `extData`.
pub const IOT_OTA_PROTOCOL_SAGOO: IOT_OTA_Protocol_t = 1;
/// Tencent Cloud IoT: `$ota/update/{pk}/{dn}` down, `$ota/report/{pk}/{dn}` up.
pub const IOT_OTA_PROTOCOL_TENCENT: IOT_OTA_Protocol_t = 2;
/// UCloud IoT: `/$system/{pk}/{dn}/ota/{downstream,upstream}`, with task ids.
pub const IOT_OTA_PROTOCOL_UCLOUD: IOT_OTA_Protocol_t = 3;

/// What `IOT_OTA_Init` returns (as `void *`): the address of this, a key into the table of live
/// handles (never dereferenced from C's value).
pub struct OtaHandle {
    session: OtaSession,
    /// The `MqttHandle` the session is attached to (0: none, e.g. [`super::fuzzing`]).
    mqtt: usize,
}

impl OtaHandle {
    /// The session behind the handle.
    pub(crate) fn ota_session(&self) -> &OtaSession {
        &self.session
    }

    /// The MQTT client the handle was built on (None for a session on other transports).
    pub(crate) fn mqtt_client(&self) -> Option<&MqttClient> {
        // SAFETY: per the IOT_OTA_* contracts the client a live handle was built on is not
        // destroyed yet, and `mqtt` is 0 or what IOT_MQTT_Construct returned.
        unsafe { MqttHandle::from_ptr(self.mqtt as *mut c_void) }.map(|m| m.client())
    }

    /// The C handle of `session`, attached to `mqtt` (NULL: a session on other transports,
    /// e.g. [`super::fuzzing`]); IOT_OTA_Deinit releases it.
    pub(crate) fn into_raw(session: OtaSession, mqtt: *const MqttHandle) -> *mut c_void {
        let handle = Arc::new(OtaHandle {
            session,
            mqtt: mqtt as usize,
        });
        let key = Arc::as_ptr(&handle) as *mut c_void;
        handles().insert(handle);
        key
    }

    /// The session of a live handle; None for NULL, a released or a foreign pointer.
    ///
    /// # Safety
    /// The borrow must end before the handle is released (IOT_OTA_Deinit).
    pub(crate) unsafe fn session<'a>(h: *mut c_void) -> Option<&'a OtaSession> {
        let handle = lookup(h, "OtaHandle::session")?;
        // SAFETY: the table keeps its own reference until IOT_OTA_Deinit, which the borrow
        // does not outlive.
        Some(unsafe { &(*Arc::as_ptr(&handle)).session })
    }
}

/// The live OTA handles. A C handle is only a key into this table, never dereferenced, so a
/// foreign or released pointer is recognised without reading it, and a handle released on one
/// thread while another is inside a call stays alive until that call returns.
struct Handles {
    live: Vec<Arc<OtaHandle>>,
    /// The last keys released, so that a loop on another thread ends instead of spinning.
    released: [usize; 16],
    next_released: usize,
}

static HANDLES: Mutex<Handles> = Mutex::new(Handles {
    live: Vec::new(),
    released: [0; 16],
    next_released: 0,
});

fn handles() -> std::sync::MutexGuard<'static, Handles> {
    HANDLES.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a C handle is.
enum Lookup {
    Live(Arc<OtaHandle>),
    /// Released by IOT_OTA_Deinit (recently).
    Released,
    Unknown,
}

impl Handles {
    fn insert(&mut self, handle: Arc<OtaHandle>) {
        let key = Arc::as_ptr(&handle) as usize;
        for k in self.released.iter_mut().filter(|k| **k == key) {
            *k = 0;
        }
        self.live.push(handle);
    }

    fn lookup(&self, h: *mut c_void) -> Lookup {
        let key = h as usize;
        match self.live.iter().find(|x| Arc::as_ptr(x) as usize == key) {
            Some(x) => Lookup::Live(x.clone()),
            None if key != 0 && self.released.contains(&key) => Lookup::Released,
            None => Lookup::Unknown,
        }
    }

    fn remove(&mut self, h: *mut c_void) -> Option<Arc<OtaHandle>> {
        let key = h as usize;
        let i = self
            .live
            .iter()
            .position(|x| Arc::as_ptr(x) as usize == key)?;
        self.released[self.next_released] = key;
        self.next_released = (self.next_released + 1) % self.released.len();
        Some(self.live.swap_remove(i))
    }
}

/// The C code of an error.
pub fn err_code(e: &Error) -> c_int {
    match e {
        Error::InvalidParam(_) => IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int,
        Error::InvalidState(_) | Error::NotAvailable(_) => {
            IOT_OTA_Err_t::IOT_OTAE_INVALID_STATE as c_int
        }
        Error::TooLong { .. } => IOT_OTA_Err_t::IOT_OTAE_STR_TOO_LONG as c_int,
        Error::Download(_) => IOT_OTA_Err_t::IOT_OTAE_FETCH_FAILED as c_int,
        Error::NoMemory => IOT_OTA_Err_t::IOT_OTAE_NOMEM as c_int,
        Error::DeviceTaken => IOT_OTA_Err_t::IOT_OTAE_DEVICE_TAKEN as c_int,
        Error::TooManySessions => IOT_OTA_Err_t::IOT_OTAE_TOO_MANY_HANDLES as c_int,
        Error::Mqtt(_) => IOT_OTA_Err_t::IOT_OTAE_OSC_FAILED as c_int,
        Error::Notice(_) | Error::VersionRefused(_) => IOT_OTA_Err_t::IOT_OTAE_GENERAL as c_int,
        Error::Image(e) => image_err_code(e),
        Error::RollBack(_) => IOT_OTA_Err_t::IOT_OTAE_IMAGE_ROLLBACK as c_int,
        Error::Delta(_) => IOT_OTA_Err_t::IOT_OTAE_DELTA_REFUSED as c_int,
        Error::DeltaOldImage(_) => IOT_OTA_Err_t::IOT_OTAE_DELTA_OLD_MISMATCH as c_int,
    }
}

/// The C code of an image refusal: one per cause.
pub(crate) fn image_err_code(e: &ImageError) -> c_int {
    use IOT_OTA_Err_t::*;
    (match e {
        ImageError::NotAnImage { .. } => IOT_OTAE_IMAGE_NOT_MCUBOOT,
        ImageError::HeaderTooSmall { .. } => IOT_OTAE_IMAGE_BAD_HEADER,
        ImageError::Encrypted { .. } => IOT_OTAE_IMAGE_ENCRYPTED,
        ImageError::Truncated { .. } => IOT_OTAE_IMAGE_TRUNCATED,
        ImageError::BadTlvInfo { .. } => IOT_OTAE_IMAGE_BAD_TLV_INFO,
        ImageError::TlvPastEnd { .. } => IOT_OTAE_IMAGE_TLV_PAST_END,
        ImageError::TlvLength { .. } => IOT_OTAE_IMAGE_TLV_LENGTH,
        ImageError::DuplicateTlv { .. } => IOT_OTAE_IMAGE_DUPLICATE_TLV,
        ImageError::TlvTruncated { .. } => IOT_OTAE_IMAGE_TLV_TRUNCATED,
        ImageError::TrailingBytes { .. } => IOT_OTAE_IMAGE_TRAILING_BYTES,
        ImageError::SizeMismatch { .. } => IOT_OTAE_IMAGE_SIZE_MISMATCH,
        ImageError::Unsupported { .. } => IOT_OTAE_IMAGE_UNSUPPORTED,
        ImageError::MissingHash => IOT_OTAE_IMAGE_MISSING_HASH,
        ImageError::HashMismatch => IOT_OTAE_IMAGE_HASH_MISMATCH,
        ImageError::MissingSignature => IOT_OTAE_IMAGE_MISSING_SIGNATURE,
        ImageError::NoKeys => IOT_OTAE_IMAGE_NO_KEYS,
        ImageError::UnknownKey => IOT_OTAE_IMAGE_UNKNOWN_KEY,
        ImageError::BadSignature => IOT_OTAE_IMAGE_BAD_SIGNATURE,
        ImageError::Downgrade { .. } => IOT_OTAE_IMAGE_DOWNGRADE,
        ImageError::CounterDowngrade { .. } => IOT_OTAE_IMAGE_COUNTER_DOWNGRADE,
    }) as c_int
}

pub(crate) const INVALID_PARAM: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int;
pub(crate) const STR_TOO_LONG: c_int = IOT_OTA_Err_t::IOT_OTAE_STR_TOO_LONG as c_int;

/// The live handle behind `h`, or None (after a log line) when it is NULL, released or not an
/// OTA handle (`func`: the caller's name, for the log). `h` is only compared, never read.
pub(crate) fn lookup(h: *mut c_void, func: &str) -> Option<Arc<OtaHandle>> {
    if h.is_null() {
        ota_log!(Level::Error, "{func}: NULL handle");
        return None;
    }
    let found = handles().lookup(h);
    match found {
        Lookup::Live(handle) => Some(handle),
        Lookup::Released => {
            ota_log!(Level::Error, "{func}: handle already released");
            None
        }
        Lookup::Unknown => {
            ota_log!(Level::Error, "{func}: not an OTA handle");
            None
        }
    }
}

/// Whether `h` was released by IOT_OTA_Deinit (recently).
fn released(h: *mut c_void) -> bool {
    matches!(handles().lookup(h), Lookup::Released)
}

/// Maps a result to 0 or the error code, recording an argument error on the session.
fn code(h: &OtaHandle, r: Result<(), Error>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            h.session.record_error(e);
            err_code(&e)
        }
    }
}

/// Records and returns an argument error found in the shim itself.
pub(crate) fn reject(h: &OtaHandle, func: &str, e: Error) -> c_int {
    reject_saying(h, func, e, format_args!(""))
}

/// [`reject`] with `detail` after the error in its log line (what the error's text cannot
/// carry, e.g. a number).
pub(crate) fn reject_saying(
    h: &OtaHandle,
    func: &str,
    e: Error,
    detail: std::fmt::Arguments<'_>,
) -> c_int {
    ota_log!(Level::Error, "{func}: {e}{detail}");
    h.session.record_error(e);
    err_code(&e)
}

/// The `version` argument of `func`, or its INVALID_PARAM answer (logged, kept for
/// IOT_OTA_GetLastError) when it is NULL or not UTF-8.
///
/// # Safety
/// `version` is NULL or a NUL-terminated string that outlives `'a`.
unsafe fn version_arg<'a>(
    h: &OtaHandle,
    func: &str,
    version: *const c_char,
) -> Result<&'a str, c_int> {
    // SAFETY: the caller's contract.
    unsafe { c_str(version) }
        .ok_or_else(|| reject(h, func, Error::InvalidParam("version is NULL or not UTF-8")))
}

std::thread_local! {
    /// Why this thread's last IOT_OTA_Init returned NULL (0 after a success).
    static INIT_ERROR: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

/// The code of the calling thread's last IOT_OTA_Init / IOT_OTA_InitWithProtocol: 0 when it
/// returned a handle; IOT_OTAE_INVALID_PARAM (a NULL, empty, too long or invalid argument, an
/// unknown protocol, a `ch_signal` that is not an MQTT handle), IOT_OTAE_DEVICE_TAKEN (a handle
/// of the same device is open on that MQTT client), IOT_OTAE_TOO_MANY_HANDLES (the client has
/// IOT_OTA_MAX_HANDLES_PER_CLIENT handles), IOT_OTAE_OSC_FAILED (the subscription could not be
/// queued) or IOT_OTAE_NOMEM when it returned NULL.
#[no_mangle]
pub extern "C" fn IOT_OTA_GetInitError() -> c_int {
    ffi_body!(IOT_OTA_GetInitError, { INIT_ERROR.with(|c| c.get()) })
}

/// # Safety
/// As IOT_OTA_Init.
unsafe fn init(
    product_key: *const c_char,
    device_name: *const c_char,
    ch_signal: *mut c_void,
    protocol: Option<Protocol>,
) -> *mut c_void {
    // SAFETY: this function's contract.
    let r = unsafe { try_init(product_key, device_name, ch_signal, protocol) };
    INIT_ERROR.with(|c| c.set(r.err().unwrap_or(0)));
    r.unwrap_or(std::ptr::null_mut())
}

/// # Safety
/// As IOT_OTA_Init.
unsafe fn try_init(
    product_key: *const c_char,
    device_name: *const c_char,
    ch_signal: *mut c_void,
    protocol: Option<Protocol>,
) -> Result<*mut c_void, c_int> {
    let Some(protocol) = protocol else {
        return Err(INVALID_PARAM);
    };
    let pk = try_str!(product_key, "IOT_OTA_Init: product_key", Err(INVALID_PARAM));
    let dn = try_str!(device_name, "IOT_OTA_Init: device_name", Err(INVALID_PARAM));
    // SAFETY: per IOT_OTA_Init's contract, ch_signal is NULL, live or readable for 4 bytes.
    let Some(mqtt) = (unsafe { MqttHandle::from_ptr(ch_signal) }) else {
        ota_log!(
            Level::Error,
            "IOT_OTA_Init: ch_signal is not an MQTT handle"
        );
        return Err(INVALID_PARAM);
    };
    let mut config = OtaConfig::for_protocol(protocol);
    config.http.ca_pem = crate::conninfo::https_ca();
    config.http.allow_plain_http = crate::conninfo::allow_plain_http();
    match OtaSession::attach(mqtt.client(), pk, dn, config) {
        Ok(session) => Ok(OtaHandle::into_raw(session, mqtt)),
        Err(e) => {
            ota_log!(Level::Error, "IOT_OTA_Init: {e}");
            Err(err_code(&e))
        }
    }
}

/// Initialises OTA on an MQTT connection and subscribes to the upgrade topic (Aliyun protocol).
///
/// `ch_signal` is the handle returned by IOT_MQTT_Construct; it must outlive the OTA handle
/// (call IOT_OTA_Deinit before IOT_MQTT_Destroy). All memory the session needs is allocated here.
///
/// Returns the OTA handle, or NULL when an argument is NULL, invalid or too long, the
/// subscription cannot be queued, an OTA handle of the same device is open on this MQTT
/// connection (it would take that handle's upgrade messages), or the connection carries
/// IOT_OTA_MAX_HANDLES_PER_CLIENT handles; IOT_OTA_GetInitError then says which. A gateway
/// calls it (or IOT_OTA_InitWithProtocol) once for itself and once per sub-device, with the
/// sub-device's product key and device name, on the same `ch_signal` (see IOT_OTA_SetMaxDownloads
/// and IOT_OTA_SetLocalImageSource). `product_key` and `device_name` must be non-empty UTF-8 of at
/// most 64 bytes without `/`, `+` or `#`; `ch_signal` must be a live MQTT handle (NULL or any
/// other pointer gives NULL).
///
/// # Safety
/// `product_key` and `device_name` are NULL or NUL-terminated strings; `ch_signal` is NULL, a
/// live MQTT handle, or another pointer readable for 4 bytes.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_Init(
    product_key: *const c_char,
    device_name: *const c_char,
    ch_signal: *mut c_void,
) -> *mut c_void {
    ffi_body!(IOT_OTA_Init, {
        // SAFETY: this function's contract.
        unsafe { init(product_key, device_name, ch_signal, Some(Protocol::Aliyun)) }
    })
}

/// Like IOT_OTA_Init, for the platform `protocol` (extension): 0 Aliyun, 1 SagooIOT,
/// 2 Tencent, 3 UCloud (see IOT_OTA_Protocol_t). Returns NULL also for an unknown protocol.
///
/// # Safety
/// As IOT_OTA_Init.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_InitWithProtocol(
    product_key: *const c_char,
    device_name: *const c_char,
    ch_signal: *mut c_void,
    protocol: IOT_OTA_Protocol_t,
) -> *mut c_void {
    ffi_body!(IOT_OTA_InitWithProtocol, {
        let known = u8::try_from(protocol).ok().and_then(Protocol::from_id);
        if known.is_none() {
            let other = protocol;
            ota_log!(
                Level::Error,
                "IOT_OTA_InitWithProtocol: unknown protocol {other}"
            );
        }
        // SAFETY: this function's contract, which is IOT_OTA_Init's.
        unsafe { init(product_key, device_name, ch_signal, known) }
    })
}

/// Releases an OTA handle and unsubscribes its upgrade topic; a download in progress is
/// abandoned (its connection closed, nothing reported: the platform re-sends the upgrade after
/// the next version report, and a breakpoint record resumes it). NULL is accepted
/// (IOT_OTAE_INVALID_PARAM).
///
/// Returns 0, or IOT_OTAE_INVALID_PARAM for a NULL, foreign or already released handle (one
/// that IOT_OTA_Init did not return, e.g. an MQTT handle).
///
/// Safe from another thread while one is inside an IOT_OTA_* call on the same handle: that call
/// returns (a FetchYield with IOT_OTAE_FETCH_FAILED) and the memory is freed after it. A loop on
/// that thread then ends: IOT_OTA_IsFetchFinish returns 1 and IOT_OTA_FetchYield
/// IOT_OTAE_FETCH_FAILED for a handle released recently (the last 16). Calling it after
/// IOT_MQTT_Destroy of the client the handle was built on is the caller's bug.
///
/// # Safety
/// The MQTT client a live `handle` was built on is not destroyed yet (`handle` itself may be
/// any value).
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_Deinit(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_Deinit, {
        if handle.is_null() {
            ota_log!(Level::Error, "IOT_OTA_Deinit: NULL handle");
            return INVALID_PARAM;
        }
        let removed = handles().remove(handle);
        let Some(h) = removed else {
            // Logs whether it was released before or never an OTA handle.
            let _ = lookup(handle, "IOT_OTA_Deinit");
            return INVALID_PARAM;
        };
        h.session.release();
        // SAFETY: per the contract, the client this handle was built on is still alive.
        if let Some(mqtt) = unsafe { MqttHandle::from_ptr(h.mqtt as *mut c_void) } {
            let _ = h.session.detach(mqtt.client());
        }
        0
    })
}

/// Reports the running firmware version on the inform topic.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for NULL arguments or an empty or non-UTF-8 version;
/// IOT_OTAE_STR_TOO_LONG when the version exceeds OTA_VERSION_LEN_MAX - 1 bytes;
/// IOT_OTAE_OSC_FAILED when MQTT cannot queue the message.
///
/// # Safety
/// `version` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_ReportVersion(
    handle: *mut c_void,
    version: *const c_char,
) -> c_int {
    ffi_body!(IOT_OTA_ReportVersion, ota(handle), INVALID_PARAM, |h| {
        // SAFETY: this function's contract.
        let v = match unsafe { version_arg(&h, "IOT_OTA_ReportVersion", version) } {
            Ok(v) => v,
            Err(code) => return code,
        };
        code(&h, h.session.report_version(v))
    })
}

/// Reports the running `version` of `module` (extension; "default", "" or NULL module = the
/// firmware itself). Aliyun/SagooIOT inform with `module`, UCloud `report` with `Module`;
/// Tencent has no modules and reports the version alone.
///
/// Returns 0 or an error code as IOT_OTA_ReportVersion (IOT_OTAE_INVALID_PARAM also for a
/// non-UTF-8 module, IOT_OTAE_STR_TOO_LONG for a module longer than the limit fixed at init,
/// 63 bytes).
///
/// # Safety
/// `module` and `version` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_ReportModuleVersion(
    handle: *mut c_void,
    module: *const c_char,
    version: *const c_char,
) -> c_int {
    ffi_body!(
        IOT_OTA_ReportModuleVersion,
        ota(handle),
        INVALID_PARAM,
        |h| {
            // SAFETY (module below too): this function's contract.
            let v = match unsafe { version_arg(&h, "IOT_OTA_ReportModuleVersion", version) } {
                Ok(v) => v,
                Err(code) => return code,
            };
            let m = if module.is_null() {
                "default"
            } else {
                match unsafe { c_str(module) } {
                    Some(m) => m,
                    None => {
                        return reject(
                            &h,
                            "IOT_OTA_ReportModuleVersion",
                            Error::InvalidParam("module is not UTF-8"),
                        )
                    }
                }
            };
            code(&h, h.session.report_module_version(m, v))
        }
    )
}

/// Asks the platform to (re)send the upgrade for the running `version` (request topic).
///
/// Returns 0 or an error code as IOT_OTA_ReportVersion.
///
/// # Safety
/// `version` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_RequestImage(
    handle: *mut c_void,
    version: *const c_char,
) -> c_int {
    ffi_body!(IOT_OTA_RequestImage, ota(handle), INVALID_PARAM, |h| {
        // SAFETY: this function's contract.
        let v = match unsafe { version_arg(&h, "IOT_OTA_RequestImage", version) } {
            Ok(v) => v,
            Err(code) => return code,
        };
        code(&h, h.session.request_image(v))
    })
}

/// Reports download progress (0..100) or a failure (-1..-4, see IOT_OTA_Progress_t) with an
/// optional description `msg` (NULL: none).
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle, a progress outside -4..100 or a
/// non-UTF-8 `msg`; IOT_OTAE_STR_TOO_LONG when the message with `msg` does not fit the
/// 1024-byte message buffer fixed at init (SagooIOT cuts `msg` to 128 characters instead);
/// IOT_OTAE_INVALID_STATE before an upgrade was accepted, or for a
/// percentage after the upgrade's failure was reported; IOT_OTAE_OSC_FAILED when MQTT cannot
/// queue the message. A failure (-1..-4) ends the download (IOT_OTA_IsFetchFinish 1,
/// CHECK_FIRMWARE 0); after the upgrade's failure was already reported it returns 0 and sends
/// nothing. IOT_OTAP_FETCH_FAILED right after a FetchYield that returned 0 is held while the SDK
/// recovers (see the header's opening comment). Progress 0 returns 0 and is not sent to Aliyun
/// or SagooIOT, whose steps run 1..100.
///
/// # Safety
/// `msg` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_ReportProgress(
    handle: *mut c_void,
    progress: IOT_OTA_Progress_t,
    msg: *const c_char,
) -> c_int {
    ffi_body!(IOT_OTA_ReportProgress, ota(handle), INVALID_PARAM, |h| {
        let desc = if msg.is_null() {
            None
        } else {
            // SAFETY: this function's contract.
            match unsafe { c_str(msg) } {
                Some(s) => Some(s),
                None => {
                    return reject(
                        &h,
                        "IOT_OTA_ReportProgress",
                        Error::InvalidParam("msg is not UTF-8"),
                    )
                }
            }
        };
        code(&h, h.session.report_progress(progress, desc))
    })
}

/// Returns 1 while an accepted upgrade is being fetched, else 0 (also for a NULL handle). An
/// upgrade that arrived during or after the last download starts here, as a new cycle from
/// IOT_OTAG_FETCHED_SIZE, once IOT_OTA_IsFetchFinish (or CHECK_FIRMWARE) showed that end.
#[no_mangle]
pub extern "C" fn IOT_OTA_IsFetching(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_IsFetching, ota(handle), 0, |h| {
        h.session.is_fetching() as c_int
    })
}

/// Returns 1 once the download ended (complete, failed or superseded; see
/// IOT_OTAG_CHECK_FIRMWARE) and stays 1 until the next upgrade's cycle starts, else 0 (also for
/// a NULL handle).
#[no_mangle]
pub extern "C" fn IOT_OTA_IsFetchFinish(handle: *mut c_void) -> c_int {
    // Released (by another thread): nothing more will come, so the loop must end.
    ffi_body!(
        IOT_OTA_IsFetchFinish,
        ota(handle),
        released(handle) as c_int,
        |h| { h.session.is_fetch_finished() as c_int }
    )
}

/// Downloads the next part of the firmware into `buf` (at most `buf_len` bytes, and never past
/// the announced size), waiting at most `timeout_s` seconds (0: only what is already there).
///
/// Returns the number of bytes written (> 0; only `buf[0..n)` is written, nothing on an error),
/// 0 when nothing arrived in time,
/// IOT_OTAE_INVALID_PARAM for a NULL handle/buffer or `buf_len` 0, IOT_OTAE_INVALID_STATE when
/// no upgrade is being fetched, IOT_OTAE_FETCH_FAILED at once, from then on, when the download
/// failed or a different upgrade superseded it (the platform has been told;
/// IOT_OTA_IsFetchFinish is then 1 and IOT_OTAG_CHECK_FIRMWARE 0). With a delta source
/// (IOT_OTA_SetDeltaSource) the call that finds a patch refused returns
/// IOT_OTAE_DELTA_REFUSED, or IOT_OTAE_DELTA_OLD_MISMATCH for a patch made for another old
/// image, and the calls after it IOT_OTAE_FETCH_FAILED; new-image bytes made before a refusal
/// come in the call before it. The bytes returned over a cycle are one image, in order (the
/// stream invariant in the header's opening comment).
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_FetchYield(
    handle: *mut c_void,
    buf: *mut c_char,
    buf_len: u32,
    timeout_s: u32,
) -> c_int {
    ffi_body!(
        IOT_OTA_FetchYield,
        ota(handle),
        // Released (by another thread): the download is over for this loop.
        if released(handle) {
            IOT_OTA_Err_t::IOT_OTAE_FETCH_FAILED as c_int
        } else {
            INVALID_PARAM
        },
        |h| {
            if buf.is_null() || buf_len == 0 {
                return reject(
                    &h,
                    "IOT_OTA_FetchYield",
                    Error::InvalidParam("buf is NULL or buf_len is 0"),
                );
            }
            let len = (buf_len as usize).min(c_int::MAX as usize);
            // SAFETY: non-NULL, and per the contract valid for buf_len >= len bytes of writes.
            let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
            match h
                .session
                .fetch_yield(out, Duration::from_secs(timeout_s as u64))
            {
                Ok(n) => n as c_int,
                Err(e) => err_code(&e),
            }
        }
    )
}

/// Returns the code of the last error any call or incoming message produced on this handle
/// (0 when none), or IOT_OTAE_INVALID_PARAM for a NULL handle.
#[no_mangle]
pub extern "C" fn IOT_OTA_GetLastError(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_GetLastError, ota(handle), INVALID_PARAM, |h| {
        h.session.last_error().map_or(0, |e| err_code(&e))
    })
}

/// Tencent's resume call, in every protocol: the next IOT_OTA_FetchYield requests the image
/// from byte `offset` (HTTP Range). `size` is the announced size (or 0). When resuming, feed
/// the `offset` bytes already stored to IOT_OTA_UpdateClientMd5 first, so the digest covers
/// the whole image; otherwise IOT_OTAG_CHECK_FIRMWARE will be 0.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle, `offset` > size or a `size` other than
/// the announced one; IOT_OTAE_INVALID_STATE when no upgrade was accepted or it already verified.
#[no_mangle]
pub extern "C" fn IOT_OTA_StartDownload(handle: *mut c_void, offset: u32, size: u32) -> c_int {
    ffi_body!(IOT_OTA_StartDownload, ota(handle), INVALID_PARAM, |h| {
        code(&h, h.session.start_download(offset as u64, size as u64))
    })
}

/// Feeds `size` bytes the firmware already holds into the image digest (Tencent's call, in
/// every protocol). NULL handle, or NULL `buff` with a non-zero size: logged, nothing done
/// (the v2.3 signature returns nothing; IOT_OTA_GetLastError tells: IOT_OTAE_INVALID_PARAM).
/// Before an upgrade was accepted: logged, nothing done, IOT_OTAE_INVALID_STATE.
///
/// # Safety
/// `buff` is NULL or readable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_UpdateClientMd5(
    handle: *mut c_void,
    buff: *mut c_char,
    size: u32,
) {
    ffi_body!(IOT_OTA_UpdateClientMd5, ota(handle), (), |h| {
        let bytes: &[u8] = if size == 0 {
            &[]
        } else if buff.is_null() {
            reject(
                &h,
                "IOT_OTA_UpdateClientMd5",
                Error::InvalidParam("buff is NULL"),
            );
            return;
        } else {
            // SAFETY: non-NULL, and per the contract readable for `size` bytes.
            unsafe { std::slice::from_raw_parts(buff as *const u8, size as usize) }
        };
        let _ = code(&h, h.session.update_client_digest(bytes));
    })
}

/// Restarts the image digest from nothing (Tencent's call, in every protocol).
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle; IOT_OTAE_INVALID_STATE when no upgrade
/// was accepted.
#[no_mangle]
pub extern "C" fn IOT_OTA_ResetClientMD5(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_OTA_ResetClientMD5, ota(handle), INVALID_PARAM, |h| {
        code(&h, h.session.reset_client_digest())
    })
}

/// Reports that the image is downloaded and flashing begins: Aliyun/SagooIOT step 100 with
/// desc "burning", Tencent `burning`, UCloud `upgrading` (if not sent yet).
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle; IOT_OTAE_INVALID_STATE before an
/// upgrade or after its failure was reported; IOT_OTAE_OSC_FAILED when MQTT cannot queue it.
#[no_mangle]
pub extern "C" fn IOT_OTA_ReportUpgradeBegin(handle: *mut c_void) -> c_int {
    ffi_body!(
        IOT_OTA_ReportUpgradeBegin,
        ota(handle),
        INVALID_PARAM,
        |h| { code(&h, h.session.report_upgrade_begin()) }
    )
}

/// Reports that the upgrade succeeded and `version` now runs: Aliyun/SagooIOT inform with
/// the version (success is the version the platform sees), Tencent `done`, UCloud `success`.
///
/// Returns 0 or an error code as IOT_OTA_ReportUpgradeBegin (IOT_OTAE_INVALID_PARAM also for a
/// NULL or empty version, IOT_OTAE_STR_TOO_LONG for an oversize one).
///
/// # Safety
/// `version` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_ReportUpgradeSuccess(
    handle: *mut c_void,
    version: *const c_char,
) -> c_int {
    ffi_body!(
        IOT_OTA_ReportUpgradeSuccess,
        ota(handle),
        INVALID_PARAM,
        |h| {
            // SAFETY: this function's contract.
            let v = match unsafe { version_arg(&h, "IOT_OTA_ReportUpgradeSuccess", version) } {
                Ok(v) => v,
                Err(code) => return code,
            };
            code(&h, h.session.report_upgrade_success(v))
        }
    )
}

/// Reports that flashing the upgrade failed: Aliyun/SagooIOT step -4, Tencent `fail` -5,
/// UCloud `fail`. `version` (the version that failed) may be NULL; it is not sent (the report
/// names the accepted upgrade).
///
/// Returns 0 (also, sending nothing, when this upgrade's failure was already reported);
/// IOT_OTAE_INVALID_PARAM for a NULL handle; IOT_OTAE_INVALID_STATE before an upgrade was
/// accepted; IOT_OTAE_OSC_FAILED when MQTT cannot queue it.
///
/// # Safety
/// `version` is NULL or a NUL-terminated string (not read today).
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_ReportUpgradeFail(
    handle: *mut c_void,
    version: *const c_char,
) -> c_int {
    ffi_body!(IOT_OTA_ReportUpgradeFail, ota(handle), INVALID_PARAM, |h| {
        let _ = version;
        code(&h, h.session.report_upgrade_fail("firmware update failed"))
    })
}

/// Sets how a broken download is retried (extension): at most `max_attempts` reconnections in
/// a row without progress (0: fail at the first error), each after an exponential backoff with
/// jitter; a download that delivers nothing for `stall_timeout_s` seconds (0: keep the current
/// value) is reconnected. Retries resume from the current offset with HTTP Range.
///
/// Returns 0, or IOT_OTAE_INVALID_PARAM for a NULL handle or `max_attempts` above 1000.
#[no_mangle]
pub extern "C" fn IOT_OTA_SetRetryPolicy(
    handle: *mut c_void,
    max_attempts: u32,
    stall_timeout_s: u32,
) -> c_int {
    ffi_body!(IOT_OTA_SetRetryPolicy, ota(handle), INVALID_PARAM, |h| {
        let mut policy = crate::retry::RetryPolicy {
            max_attempts,
            ..h.session.retry_policy()
        };
        if stall_timeout_s != 0 {
            policy.stall_timeout = Duration::from_secs(stall_timeout_s as u64);
        }
        // The bound is the core's (RetryPolicy::check), as for Rust callers.
        match h.session.set_retry_policy(policy) {
            Ok(()) => 0,
            Err(e) => reject(&h, "IOT_OTA_SetRetryPolicy", e),
        }
    })
}

/// Sets how long, after the firmware URL expired (HTTP 403), the SDK waits for the fresh URL it
/// asked the platform for (Aliyun's request topic) before it reports the download failed
/// (extension; default 60 s; 0 reports at once). Meanwhile IOT_OTA_FetchYield returns 0.
///
/// Returns 0, or IOT_OTAE_INVALID_PARAM for a NULL handle or more than 3600 seconds.
#[no_mangle]
pub extern "C" fn IOT_OTA_SetFreshUrlWait(handle: *mut c_void, seconds: u32) -> c_int {
    ffi_body!(IOT_OTA_SetFreshUrlWait, ota(handle), INVALID_PARAM, |h| {
        match h
            .session
            .set_fresh_url_wait(Duration::from_secs(seconds as u64))
        {
            Ok(()) => 0,
            Err(e) => reject(&h, "IOT_OTA_SetFreshUrlWait", e),
        }
    })
}

/// Keeps the breakpoint record (resume after power loss, success after reboot) through the
/// caller's flash callbacks (extension; see ota_breakpoint_store_t). The table is copied;
/// `store->ctx` must stay valid until IOT_OTA_Deinit. Replaces any store set before. Call it
/// right after IOT_OTA_Init, before IOT_OTA_ReportVersion, so a record from before a restart is
/// found.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle or table, or a NULL callback;
/// IOT_OTAE_INVALID_STATE while an upgrade is being fetched.
///
/// # Safety
/// `store` is NULL or points to a readable `ota_breakpoint_store_t` whose callbacks are NULL or
/// functions of their types; they, and `store->ctx`, stay valid until IOT_OTA_Deinit.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_SetBreakpointStore(
    handle: *mut c_void,
    store: *const ota_breakpoint_store_t,
) -> c_int {
    ffi_body!(
        IOT_OTA_SetBreakpointStore,
        ota(handle),
        INVALID_PARAM,
        |h| {
            // SAFETY: this function's contract.
            match unsafe { super::resume::callback_store(store) } {
                Ok(s) => code(&h, h.session.set_breakpoint_store(Box::new(s))),
                Err(e) => reject(&h, "IOT_OTA_SetBreakpointStore", e),
            }
        }
    )
}

/// Keeps the breakpoint record in the file `path` (extension; Linux default store): each save
/// writes `path.tmp`, fsyncs it, renames it over `path` and fsyncs the directory, so a power cut
/// leaves the old record or the new one; a torn or corrupt file is ignored. Keep `path` under 384
/// bytes (longer paths cost one allocation per file operation). The directory must exist.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle or path, an empty path or one ending in
/// '/'; IOT_OTAE_INVALID_STATE while an upgrade is being fetched.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_OTA_SetBreakpointFile(
    handle: *mut c_void,
    path: *const c_char,
) -> c_int {
    ffi_body!(IOT_OTA_SetBreakpointFile, ota(handle), INVALID_PARAM, |h| {
        // SAFETY: this function's contract.
        match unsafe { super::resume::file_store(path) } {
            Ok(s) => code(&h, h.session.set_breakpoint_store(Box::new(s))),
            Err(e) => reject(&h, "IOT_OTA_SetBreakpointFile", e),
        }
    })
}

/// Sets how often the breakpoint record is written while downloading (extension): after
/// `bytes` bytes or `percent` percent of the image since the last save, whichever comes first;
/// 0 disables that threshold, both 0 disable saving. The record is also written when the
/// download completes. Default: 65536 bytes or 10 percent.
///
/// Returns 0; IOT_OTAE_INVALID_PARAM for a NULL handle or `percent` above 100.
#[no_mangle]
pub extern "C" fn IOT_OTA_SetSaveInterval(handle: *mut c_void, bytes: u32, percent: u32) -> c_int {
    ffi_body!(IOT_OTA_SetSaveInterval, ota(handle), INVALID_PARAM, |h| {
        match super::resume::save_policy(bytes, percent) {
            Ok(p) => {
                h.session.set_save_policy(p);
                0
            }
            Err(e) => reject(&h, "IOT_OTA_SetSaveInterval", e),
        }
    })
}
