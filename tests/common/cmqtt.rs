//! C-API MQTT scaffolding shared by the tests that drive `IOT_MQTT_*` from Rust: connection
//! parameters for a broker on 127.0.0.1 and a `handle_event` callback counting SUBACKs.

use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use ota::ffi::mqtt::{
    iotx_mqtt_event_handle_t, iotx_mqtt_event_msg_pt, iotx_mqtt_event_type_t, iotx_mqtt_param_t,
};

/// `handle_event` callback: counts SUBSCRIBE_SUCCESS events into the `AtomicUsize` at `ctx`.
///
/// # Safety
/// `ctx` is NULL or an `AtomicUsize` that outlives the client; `msg` is NULL or valid.
pub unsafe extern "C" fn count_subacks(
    ctx: *mut c_void,
    _client: *mut c_void,
    msg: iotx_mqtt_event_msg_pt,
) {
    if !ctx.is_null()
        && !msg.is_null()
        && matches!(
            (*msg).event_type,
            iotx_mqtt_event_type_t::IOTX_MQTT_EVENT_SUBCRIBE_SUCCESS
        )
    {
        (*(ctx as *const AtomicUsize)).fetch_add(1, SeqCst);
    }
}

/// Plain-TCP parameters for a broker on 127.0.0.1:`port`, counting SUBACKs into `subacks`.
/// `client_id` and `subacks` must outlive the client.
pub fn mqtt_param(port: u16, client_id: &CStr, subacks: &AtomicUsize) -> iotx_mqtt_param_t {
    iotx_mqtt_param_t {
        port,
        host: c"127.0.0.1".as_ptr(),
        client_id: client_id.as_ptr(),
        username: null(),
        password: null(),
        pub_key: null(),
        clean_session: 1,
        request_timeout_ms: 2000,
        keepalive_interval_ms: 60_000,
        pwrite_buf: null_mut(),
        write_buf_size: 0,
        pread_buf: null_mut(),
        read_buf_size: 0,
        handle_event: iotx_mqtt_event_handle_t {
            h_fp: Some(count_subacks),
            pcontext: subacks as *const AtomicUsize as *mut c_void,
        },
    }
}
