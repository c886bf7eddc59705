//! `IOT_MQTT_*`: iotkit v2.3 `iot_export_mqtt.h` on [`crate::MqttClient`].
//!
//! Return codes follow iotkit: 0 (or a non-negative id) on success, -1 (`FAIL_RETURN`) on
//! failure, -2 (`NULL_VALUE_ERROR`) for a NULL or invalid argument.

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use super::guard::c_str;
use crate::error::{Error, MqttError};
use crate::log::Level;
use crate::mqtt::{Message, MqttClient, MqttEvent, MqttOptions, QoS};
use crate::ota_log;

/// Failure.
pub const FAIL_RETURN: c_int = -1;
/// A NULL or invalid argument.
pub const NULL_VALUE_ERROR: c_int = -2;

/// MQTT QoS levels: an `int`, so that any value a C caller passes is defined (an unknown one
/// is an argument error), with the iotkit v2.3 names as constants.
#[allow(non_camel_case_types)]
pub type iotx_mqtt_qos_t = c_int;
/// At most once: sent once, never acknowledged (no PUBLISH_SUCCESS event).
pub const IOTX_MQTT_QOS0: iotx_mqtt_qos_t = 0;
/// At least once: kept (and resent after a reconnection) until the broker's PUBACK, which
/// raises PUBLISH_SUCCESS.
pub const IOTX_MQTT_QOS1: iotx_mqtt_qos_t = 1;
/// Exactly once: the four-packet handshake; no PUBLISH_SUCCESS event is raised for it.
pub const IOTX_MQTT_QOS2: iotx_mqtt_qos_t = 2;

/// Events delivered to `handle_event` and to subscription handlers (iotkit v2.3 values, and
/// iotkit's SUBCRIBE spelling). The values marked "never raised" keep iotkit's numbering only.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub enum iotx_mqtt_event_type_t {
    /// Never raised.
    IOTX_MQTT_EVENT_UNDEF = 0,
    /// The connection was lost (not after IOT_MQTT_Destroy); `msg` is NULL. Later
    /// IOT_MQTT_Yield calls reconnect.
    IOTX_MQTT_EVENT_DISCONNECT = 1,
    /// The connection is back and the subscriptions are being renewed; `msg` is NULL.
    IOTX_MQTT_EVENT_RECONNECT = 2,
    /// The broker granted a subscription (SUBACK); `msg` is the SUBSCRIBE's packet id.
    IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS = 3,
    /// Never raised.
    IOTX_MQTT_EVENT_SUBCRIBE_TIMEOUT = 4,
    /// The broker refused a subscription (SUBACK failure code 0x80); `msg` is its packet id.
    IOTX_MQTT_EVENT_SUBCRIBE_NACK = 5,
    /// The broker confirmed an unsubscription (UNSUBACK); `msg` is its packet id.
    IOTX_MQTT_EVENT_UNSUBCRIBE_SUCCESS = 6,
    /// Never raised.
    IOTX_MQTT_EVENT_UNSUBCRIBE_TIMEOUT = 7,
    /// Never raised (MQTT 3.1.1 cannot refuse an unsubscription).
    IOTX_MQTT_EVENT_UNSUBCRIBE_NACK = 8,
    /// The broker acknowledged a QoS 1 publish (PUBACK); `msg` is its packet id.
    IOTX_MQTT_EVENT_PUBLISH_SUCCESS = 9,
    /// Never raised: an unacknowledged QoS 1 publish is resent after a reconnection.
    IOTX_MQTT_EVENT_PUBLISH_TIMEOUT = 10,
    /// Never raised.
    IOTX_MQTT_EVENT_PUBLISH_NACK = 11,
    /// A message arrived; `msg` is an `iotx_mqtt_topic_info_t *`, valid during the call only.
    IOTX_MQTT_EVENT_PUBLISH_RECEIVED = 12,
    /// Never raised: an incoming packet over the maximum packet size drops the connection
    /// (DISCONNECT, then RECONNECT).
    IOTX_MQTT_EVENT_BUFFER_OVERFLOW = 13,
}

/// A message, as passed to subscription handlers (`msg->msg` of a PUBLISH_RECEIVED event) and
/// to IOT_MQTT_Publish. `ptopic` is not NUL-terminated: use `topic_len`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct iotx_mqtt_topic_info_t {
    /// Received: the PUBLISH's packet id (0 for QoS 0). Ignored by IOT_MQTT_Publish, which
    /// assigns its own.
    pub packet_id: u16,
    /// The message's QoS, an `iotx_mqtt_qos_t` value (0..=2); IOT_MQTT_Publish refuses others.
    pub qos: u8,
    /// Received: 1 when the broker is resending the message. Ignored by IOT_MQTT_Publish.
    pub dup: u8,
    /// 1 when the message is (received) or is to be (published) retained by the broker, else 0.
    pub retain: u8,
    /// Received: length of `ptopic` in bytes. Ignored by IOT_MQTT_Publish, whose topic is
    /// `topic_name`.
    pub topic_len: u16,
    /// Length of `payload` in bytes (0 for an empty message).
    pub payload_len: u32,
    /// Received: the topic, `topic_len` bytes, not NUL-terminated, valid during the handler
    /// call only. Ignored by IOT_MQTT_Publish.
    pub ptopic: *const c_char,
    /// The message body, `payload_len` bytes, not NUL-terminated. Received: valid during the
    /// handler call only. Published: copied by IOT_MQTT_Publish; may be NULL when
    /// `payload_len` is 0.
    pub payload: *const c_char,
}

/// Pointer to `iotx_mqtt_topic_info_t`, as iotkit declares it.
#[allow(non_camel_case_types)]
pub type iotx_mqtt_topic_info_pt = *mut iotx_mqtt_topic_info_t;

/// An event: `msg` is the packet id (cast to a pointer) for (un)subscribe/publish events and
/// an `iotx_mqtt_topic_info_t *` (never NULL, valid during the call) for PUBLISH_RECEIVED.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct iotx_mqtt_event_msg_t {
    /// What happened.
    pub event_type: iotx_mqtt_event_type_t,
    /// Depends on `event_type`: NULL, a packet id cast to a pointer, or an
    /// `iotx_mqtt_topic_info_t *` (see `iotx_mqtt_event_type_t`).
    pub msg: *mut c_void,
}

/// Pointer to `iotx_mqtt_event_msg_t`, as handlers receive it (valid during the call only).
#[allow(non_camel_case_types)]
pub type iotx_mqtt_event_msg_pt = *mut iotx_mqtt_event_msg_t;

/// Event and message callback: `pcontext` is the context registered with it, `pclient` the
/// MQTT handle it came from. Runs inside IOT_MQTT_Yield on the caller's thread.
#[allow(non_camel_case_types)]
pub type iotx_mqtt_event_handle_func_fpt = Option<
    unsafe extern "C" fn(pcontext: *mut c_void, pclient: *mut c_void, msg: iotx_mqtt_event_msg_pt),
>;

/// The connection-wide handler of `iotx_mqtt_param_t`: connection events, acknowledgements,
/// and every message no subscription matches.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct iotx_mqtt_event_handle_t {
    /// The handler, or NULL for none.
    pub h_fp: iotx_mqtt_event_handle_func_fpt,
    /// Passed to `h_fp` as `pcontext`, never read by the SDK; must stay valid until
    /// IOT_MQTT_Destroy.
    pub pcontext: *mut c_void,
}

/// Connection parameters. `pub_key` = CA certificate PEM for TLS (or the bundled web roots' text
/// that `IOT_SetupConnInfo` puts there), NULL for plain TCP.
/// `pwrite_buf`/`pread_buf` are accepted for v2.0x compatibility and not used; `read_buf_size`,
/// when at least 1024, is the largest packet sent or received (otherwise 64 KiB).
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct iotx_mqtt_param_t {
    /// The broker's TCP port, not 0.
    pub port: u16,
    /// The broker's host name or IP address: NUL-terminated UTF-8, not NULL or empty.
    pub host: *const c_char,
    /// The MQTT client id: NUL-terminated UTF-8, not NULL.
    pub client_id: *const c_char,
    /// The MQTT user name, or NULL to connect without credentials.
    pub username: *const c_char,
    /// The MQTT password (NULL: empty); ignored when `username` is NULL.
    pub password: *const c_char,
    /// CA certificate(s) in PEM to verify the broker over TLS, or NULL for plain TCP (a library
    /// built without TLS refuses non-NULL).
    pub pub_key: *const c_char,
    /// MQTT's clean-session flag: 0 asks the broker to keep the subscriptions and queued QoS
    /// 1/2 messages across connections; any other value starts afresh.
    pub clean_session: u8,
    /// Connect and request timeout in milliseconds; 0 means the default, 5000.
    pub request_timeout_ms: u32,
    /// Keep-alive interval in milliseconds, sent to the broker in whole seconds (at least 1);
    /// 0 means the default, 60000.
    pub keepalive_interval_ms: u32,
    /// Not used (iotkit v2.0x's send buffer); may be NULL.
    pub pwrite_buf: *mut c_char,
    /// Not used (the size of `pwrite_buf`).
    pub write_buf_size: u32,
    /// Not used (iotkit v2.0x's receive buffer); may be NULL.
    pub pread_buf: *mut c_char,
    /// Largest MQTT packet sent or received, in bytes, when at least 1024; smaller values mean
    /// the default, 64 KiB.
    pub read_buf_size: u32,
    /// Connection events and unmatched messages; `h_fp` NULL for none.
    pub handle_event: iotx_mqtt_event_handle_t,
}

/// Pointer to `iotx_mqtt_param_t`, as iotkit declares it.
#[allow(non_camel_case_types)]
pub type iotx_mqtt_param_pt = *mut iotx_mqtt_param_t;

const MQTT_MAGIC: u32 = 0x4d51_5454;

/// What IOT_MQTT_Construct returns (as `void *`).
#[repr(C)]
pub struct MqttHandle {
    /// First, so checking it never reads past the start of a foreign pointer.
    magic: u32,
    client: MqttClient,
}

impl MqttHandle {
    /// Borrows a handle from C, or None when NULL or not an MQTT handle.
    ///
    /// # Safety
    /// `p` is NULL, a pointer returned by IOT_MQTT_Construct and not yet destroyed, or another
    /// pointer readable for 4 bytes; the borrow ends before the handle is destroyed.
    pub unsafe fn from_ptr<'a>(p: *mut c_void) -> Option<&'a MqttHandle> {
        if p.is_null() {
            return None;
        }
        // SAFETY: per the contract, readable for 4 bytes, and a live handle when they hold the
        // magic (read alone first, so a foreign pointer is never treated as a handle).
        unsafe {
            (std::ptr::read_unaligned(p as *const u32) == MQTT_MAGIC)
                .then(|| &*(p as *const MqttHandle))
        }
    }

    /// [`from_ptr`](Self::from_ptr), with one log line naming `func` when there is no handle.
    ///
    /// # Safety
    /// As [`from_ptr`](Self::from_ptr).
    pub(crate) unsafe fn lookup<'a>(p: *mut c_void, func: &str) -> Option<&'a MqttHandle> {
        // SAFETY: this function's contract.
        let h = unsafe { Self::from_ptr(p) };
        if h.is_none() {
            ota_log!(Level::Error, "{func}: NULL or foreign handle");
        }
        h
    }

    /// The Rust client behind the handle.
    pub fn client(&self) -> &MqttClient {
        &self.client
    }
}

/// A C pointer that the closures carry across the `Send` bound; C owns what it points to.
#[derive(Clone, Copy)]
struct CPtr(*mut c_void);
unsafe impl Send for CPtr {}

fn event_type(e: &MqttEvent) -> (iotx_mqtt_event_type_t, usize) {
    use iotx_mqtt_event_type_t as T;
    match *e {
        MqttEvent::Disconnected => (T::IOTX_MQTT_EVENT_DISCONNECT, 0),
        MqttEvent::Reconnected => (T::IOTX_MQTT_EVENT_RECONNECT, 0),
        MqttEvent::SubscribeAck { packet_id } => {
            (T::IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS, packet_id as usize)
        }
        MqttEvent::SubscribeNack { packet_id } => {
            (T::IOTX_MQTT_EVENT_SUBCRIBE_NACK, packet_id as usize)
        }
        MqttEvent::UnsubscribeAck { packet_id } => {
            (T::IOTX_MQTT_EVENT_UNSUBCRIBE_SUCCESS, packet_id as usize)
        }
        MqttEvent::PublishAck { packet_id } => {
            (T::IOTX_MQTT_EVENT_PUBLISH_SUCCESS, packet_id as usize)
        }
    }
}

/// Calls a C handler with a PUBLISH_RECEIVED event for `m`, whose topic info lives on the stack
/// for the call: subscription handlers get matching messages this way, `handle_event` the rest.
///
/// # Safety
/// `func` is a valid C function; `ctx` and `me` are what it expects.
unsafe fn deliver_to_c(
    func: unsafe extern "C" fn(*mut c_void, *mut c_void, iotx_mqtt_event_msg_pt),
    ctx: CPtr,
    me: CPtr,
    m: &Message<'_>,
) {
    let mut info = iotx_mqtt_topic_info_t {
        packet_id: m.packet_id,
        qos: m.qos as u8,
        dup: m.dup as u8,
        retain: m.retain as u8,
        topic_len: m.topic.len().min(u16::MAX as usize) as u16,
        payload_len: m.payload.len().min(u32::MAX as usize) as u32,
        ptopic: m.topic.as_ptr() as *const c_char,
        payload: m.payload.as_ptr() as *const c_char,
    };
    let mut msg = iotx_mqtt_event_msg_t {
        event_type: iotx_mqtt_event_type_t::IOTX_MQTT_EVENT_PUBLISH_RECEIVED,
        msg: &mut info as *mut iotx_mqtt_topic_info_t as *mut c_void,
    };
    // SAFETY: this function's contract; `msg` and `info` outlive the call.
    unsafe { func(ctx.0, me.0, &mut msg) };
}

/// # Safety
/// The strings of `p` are NULL or NUL-terminated.
unsafe fn options_from(p: &iotx_mqtt_param_t) -> Result<MqttOptions, &'static str> {
    let strings = [p.host, p.client_id, p.username, p.password, p.pub_key];
    // SAFETY: this function's contract.
    let [host, client_id, username, password, pub_key] = strings.map(|s| unsafe { c_str(s) });
    let host = host.ok_or("host is NULL")?;
    let client_id = client_id.ok_or("client_id is NULL")?;
    let mut o = MqttOptions::new(host, p.port, client_id);
    o.username = username.map(str::to_string);
    o.password = password.map(str::to_string);
    if !p.pub_key.is_null() {
        let pem = pub_key.ok_or("pub_key is not text")?;
        o.ca_pem = Some(pem.as_bytes().to_vec());
    }
    o.clean_session = p.clean_session != 0;
    if p.request_timeout_ms != 0 {
        o.request_timeout = Duration::from_millis(p.request_timeout_ms as u64);
    }
    if p.keepalive_interval_ms != 0 {
        o.keepalive = Duration::from_millis(p.keepalive_interval_ms as u64);
    }
    if p.read_buf_size >= 1024 {
        o.max_packet_size = p.read_buf_size as usize;
    }
    Ok(o)
}

/// Connects to the broker described by `pInitParams` and returns the client handle, or NULL
/// when `pInitParams`, `host` or `client_id` is NULL, `host` is empty or not UTF-8, `port` is 0, `pub_key` is not a PEM
/// certificate, or the connection fails (refused, unreachable, timeout after
/// `request_timeout_ms`, default 5000). `handle_event`, when set, gets the connection events
/// and every message no subscription matches (PUBLISH_RECEIVED, `msg` an
/// `iotx_mqtt_topic_info_t *`, as iotkit does).
///
/// # Safety
/// `pInitParams` is NULL or points to a readable `iotx_mqtt_param_t` whose strings are NULL or
/// NUL-terminated (they are copied); `handle_event.h_fp`, when set, is a function of its type
/// that may be called with `handle_event.pcontext` until the client is destroyed.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn IOT_MQTT_Construct(pInitParams: *mut iotx_mqtt_param_t) -> *mut c_void {
    ffi_body!(IOT_MQTT_Construct, {
        try_nonnull!(
            pInitParams,
            "IOT_MQTT_Construct: pInitParams",
            std::ptr::null_mut()
        );
        // SAFETY: non-NULL, and per the contract readable, with strings as options_from needs.
        let p = unsafe { &*pInitParams };
        let options = match unsafe { options_from(p) } {
            Ok(o) => o,
            Err(what) => {
                ota_log!(Level::Error, "IOT_MQTT_Construct: {what}");
                return std::ptr::null_mut();
            }
        };
        let client = match MqttClient::connect(&options) {
            Ok(c) => c,
            Err(e) => {
                ota_log!(Level::Error, "IOT_MQTT_Construct: {e}");
                return std::ptr::null_mut();
            }
        };
        let handle = Box::into_raw(Box::new(MqttHandle {
            magic: MQTT_MAGIC,
            client,
        }));
        if let Some(h_fp) = p.handle_event.h_fp {
            let ctx = CPtr(p.handle_event.pcontext);
            let me = CPtr(handle as *mut c_void);
            // SAFETY: just made, and not yet returned to anyone who could destroy it.
            let client = &unsafe { &*handle }.client;
            client.on_event(move |e| {
                let (event_type, id) = event_type(e);
                let mut msg = iotx_mqtt_event_msg_t {
                    event_type,
                    msg: id as *mut c_void,
                };
                let (ctx, me) = (ctx, me);
                // SAFETY (both handlers): this function's contract on handle_event.
                unsafe { h_fp(ctx.0, me.0, &mut msg) };
            });
            // As in iotkit, a message no subscription matches goes to handle_event.
            client.on_unmatched(move |m| {
                let (ctx, me) = (ctx, me);
                unsafe { deliver_to_c(h_fp, ctx, me, m) };
            });
        }
        handle as *mut c_void
    })
}

/// Disconnects and frees the client, then sets `*phandle` to NULL.
///
/// Returns 0, or NULL_VALUE_ERROR (-2) when `phandle` or `*phandle` is NULL or not a client.
/// Release OTA handles built on this client first. Calling it again through the same variable
/// is safe (it is NULL by then: -2); destroying through another copy of the pointer, using any
/// copy afterwards, or calling IOT_OTA_Deinit on a handle of a destroyed client is the caller's
/// bug (undefined).
///
/// # Safety
/// `phandle` is NULL or valid for reading and writing one pointer; `*phandle` is NULL, a live
/// handle or another pointer readable for 4 bytes; no other call uses the handle during or
/// after this one.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_Destroy(phandle: *mut *mut c_void) -> c_int {
    ffi_body!(IOT_MQTT_Destroy, {
        try_nonnull!(phandle, "IOT_MQTT_Destroy: phandle", NULL_VALUE_ERROR);
        // SAFETY (the three blocks): this function's contract; `p` holds the magic, so it came
        // from Box::into_raw in IOT_MQTT_Construct, and no one else uses it any more.
        let p = unsafe { *phandle };
        if unsafe { MqttHandle::from_ptr(p) }.is_none() {
            ota_log!(Level::Error, "IOT_MQTT_Destroy: not an MQTT handle");
            return NULL_VALUE_ERROR;
        }
        let mut boxed = unsafe { Box::from_raw(p as *mut MqttHandle) };
        boxed.magic = 0;
        boxed.client.disconnect(Duration::from_millis(200));
        drop(boxed);
        unsafe { *phandle = std::ptr::null_mut() };
        0
    })
}

/// Drives the connection for `timeout_ms` milliseconds (0, or negative: one non-blocking pass):
/// sends queued publishes, delivers arrived messages to their handlers and events to
/// `handle_event`, and reconnects (with backoff) after a drop. It returns early, right after the message, when an
/// upgrade message starts a firmware download (an OTA handle made by IOT_OTA_Init on this
/// client), so the firmware's loop reaches IOT_OTA_FetchYield without waiting out the timeout.
///
/// Returns 0, or NULL_VALUE_ERROR (-2) for a NULL handle, or FAIL_RETURN (-1) when called from
/// inside one of this client's handlers or while another firmware thread is inside
/// IOT_MQTT_Yield on the same client. While the SDK itself drives the connection on another
/// thread (an MQTT download inside IOT_OTA_FetchYield, or its reconnection), the call waits
/// for it within `timeout_ms` and returns 0. A panic inside (a bug in the SDK's own handlers) returns
/// FAIL_RETURN once; the client stays usable.
///
/// # Safety
/// `handle` is NULL, a live handle from IOT_MQTT_Construct, or another pointer readable for 4
/// bytes (refused). The C handlers it calls are those registered under their own contracts.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_Yield(handle: *mut c_void, timeout_ms: c_int) -> c_int {
    ffi_body!(IOT_MQTT_Yield, mqtt(handle), NULL_VALUE_ERROR, |h| {
        let ms = timeout_ms.max(0) as u64;
        match h.client.yield_for(Duration::from_millis(ms)) {
            Ok(()) => 0,
            Err(e) => {
                ota_log!(Level::Error, "IOT_MQTT_Yield: {e}");
                FAIL_RETURN
            }
        }
    })
}

/// Returns 1 when connected to the broker, 0 otherwise (also for a NULL handle).
///
/// # Safety
/// As IOT_MQTT_Yield.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_CheckStateNormal(handle: *mut c_void) -> c_int {
    ffi_body!(IOT_MQTT_CheckStateNormal, mqtt(handle), 0, |h| {
        h.client.is_connected() as c_int
    })
}

fn qos_from(q: c_int) -> Option<QoS> {
    match q {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

/// Subscribes `topic_filter` (wildcards allowed); `topic_handle_func` runs inside IOT_MQTT_Yield
/// for every matching message with a PUBLISH_RECEIVED event whose `msg` is an
/// `iotx_mqtt_topic_info_t *` valid during the call. Subscribing the same filter again replaces
/// the handler.
///
/// Returns 0; NULL_VALUE_ERROR (-2) for a NULL handle/filter/handler, an empty, non-UTF-8 or
/// otherwise invalid filter, a QoS other than 0..=2, or a filter too long for one packet;
/// FAIL_RETURN (-1) when the request cannot be queued.
///
/// # Safety
/// `handle` as for IOT_MQTT_Yield; `topic_filter` is NULL or a NUL-terminated string;
/// `topic_handle_func`, when set, may be called with `pcontext` until the filter is
/// unsubscribed or the client destroyed.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_Subscribe(
    handle: *mut c_void,
    topic_filter: *const c_char,
    qos: iotx_mqtt_qos_t,
    topic_handle_func: iotx_mqtt_event_handle_func_fpt,
    pcontext: *mut c_void,
) -> c_int {
    ffi_body!(IOT_MQTT_Subscribe, mqtt(handle), NULL_VALUE_ERROR, |h| {
        let filter = try_str!(
            topic_filter,
            "IOT_MQTT_Subscribe: topic_filter",
            NULL_VALUE_ERROR
        );
        let Some(func) = topic_handle_func else {
            ota_log!(Level::Error, "IOT_MQTT_Subscribe: NULL handler");
            return NULL_VALUE_ERROR;
        };
        let Some(qos) = qos_from(qos) else {
            return NULL_VALUE_ERROR;
        };
        let ctx = CPtr(pcontext);
        let me = CPtr(handle);
        let r = h.client.subscribe(filter, qos, move |m: &Message<'_>| {
            let (ctx, me) = (ctx, me);
            // SAFETY: the contract of the IOT_MQTT_Subscribe that registered `func`.
            unsafe { deliver_to_c(func, ctx, me, m) };
        });
        match r {
            Ok(()) => 0,
            Err(Error::Mqtt(MqttError::Topic | MqttError::TooLarge)) => NULL_VALUE_ERROR,
            Err(e) => {
                ota_log!(Level::Error, "IOT_MQTT_Subscribe: {e}");
                FAIL_RETURN
            }
        }
    })
}

/// Unsubscribes `topic_filter`.
///
/// Returns 0; NULL_VALUE_ERROR (-2) for NULL arguments; FAIL_RETURN (-1) when the filter is not
/// subscribed or the request cannot be queued.
///
/// # Safety
/// `handle` as for IOT_MQTT_Yield; `topic_filter` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_Unsubscribe(
    handle: *mut c_void,
    topic_filter: *const c_char,
) -> c_int {
    ffi_body!(IOT_MQTT_Unsubscribe, mqtt(handle), NULL_VALUE_ERROR, |h| {
        let filter = try_str!(
            topic_filter,
            "IOT_MQTT_Unsubscribe: topic_filter",
            NULL_VALUE_ERROR
        );
        match h.client.unsubscribe(filter) {
            Ok(()) => 0,
            Err(e) => {
                ota_log!(Level::Error, "IOT_MQTT_Unsubscribe: {e}");
                FAIL_RETURN
            }
        }
    })
}

/// Queues `topic_msg->payload` (`payload_len` bytes) for `topic_name` with `topic_msg->qos`
/// and `retain`; it is sent during the next IOT_MQTT_Yield.
///
/// Returns 0; NULL_VALUE_ERROR (-2) for NULL arguments, a NULL payload with a non-zero length
/// (NULL with length 0 sends an empty message), a QoS above 2, an empty or non-UTF-8 topic or
/// one with wildcards, or a message too large for one packet (the client's maximum packet size:
/// `read_buf_size` when at least 1024, else 64 KiB); FAIL_RETURN (-1) when the queue is full.
///
/// # Safety
/// `handle` as for IOT_MQTT_Yield; `topic_name` is NULL or a NUL-terminated string;
/// `topic_msg` is NULL or points to a readable `iotx_mqtt_topic_info_t` whose `payload` is NULL
/// or readable for `payload_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn IOT_MQTT_Publish(
    handle: *mut c_void,
    topic_name: *const c_char,
    topic_msg: iotx_mqtt_topic_info_pt,
) -> c_int {
    ffi_body!(IOT_MQTT_Publish, mqtt(handle), NULL_VALUE_ERROR, |h| {
        let topic = try_str!(topic_name, "IOT_MQTT_Publish: topic_name", NULL_VALUE_ERROR);
        try_nonnull!(topic_msg, "IOT_MQTT_Publish: topic_msg", NULL_VALUE_ERROR);
        // SAFETY (both blocks): non-NULL, and per the contract readable.
        let m = unsafe { &*topic_msg };
        let payload: &[u8] = if m.payload_len == 0 {
            &[]
        } else {
            try_nonnull!(m.payload, "IOT_MQTT_Publish: payload", NULL_VALUE_ERROR);
            unsafe { std::slice::from_raw_parts(m.payload as *const u8, m.payload_len as usize) }
        };
        let Some(qos) = qos_from(m.qos as c_int) else {
            return NULL_VALUE_ERROR;
        };
        match h.client.publish(topic, qos, m.retain != 0, payload) {
            Ok(()) => 0,
            Err(Error::Mqtt(MqttError::Topic | MqttError::TooLarge)) => NULL_VALUE_ERROR,
            Err(e) => {
                ota_log!(Level::Error, "IOT_MQTT_Publish: {e}");
                FAIL_RETURN
            }
        }
    })
}
