//! The C ABI (`IOT_MQTT_*`, `IOT_OTA_*`) called exactly as firmware calls it: `void *` handles,
//! NUL-terminated strings, raw buffers. Real parts only: the simulator's embedded MQTT broker
//! (`tools/ota-cloud/src/broker.rs`), firmware over HTTP on 127.0.0.1 (with injected faults), and
//! a second MQTT client playing the platform (messages as in `docs/protocols.md`).
//! Each test has its own broker and device names, and every wait is bounded.

mod common;
use common::capi::{cstring, sample, setup, Cloud, Device, FILL, PK, WAIT};
use common::cmqtt::mqtt_param;
use common::net::free_port;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::ffi::gateway::*;
use ota::ffi::ioctl::IOT_OTA_Ioctl;
use ota::ffi::mqtt::{
    iotx_mqtt_event_msg_pt, iotx_mqtt_event_type_t, iotx_mqtt_topic_info_t,
    IOT_MQTT_CheckStateNormal, IOT_MQTT_Construct, IOT_MQTT_Destroy, IOT_MQTT_Publish,
    IOT_MQTT_Subscribe, IOT_MQTT_Unsubscribe, IOT_MQTT_Yield, MqttHandle, FAIL_RETURN,
    IOTX_MQTT_QOS1, NULL_VALUE_ERROR,
};
use ota::ffi::ota::*;
use ota::mqtt::QoS;
use ota_cloud::broker::EmbeddedBroker;
use ota_cloud::http::{Faults, FirmwareServer};

const GENERAL: c_int = IOT_OTA_Err_t::IOT_OTAE_GENERAL as c_int;
const INVALID_PARAM: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int;
const INVALID_STATE: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_STATE as c_int;
const STR_TOO_LONG: c_int = IOT_OTA_Err_t::IOT_OTAE_STR_TOO_LONG as c_int;
const FETCH_FAILED: c_int = IOT_OTA_Err_t::IOT_OTAE_FETCH_FAILED as c_int;

/// The firmware's buffer.
const FIRMWARE_BUF: usize = 5000;

/// Subscription handler: appends the payload to the `Mutex<Vec<Vec<u8>>>` at `ctx`.
unsafe extern "C" fn collect_payloads(
    ctx: *mut c_void,
    _client: *mut c_void,
    msg: iotx_mqtt_event_msg_pt,
) {
    if ctx.is_null() || msg.is_null() {
        return;
    }
    if !matches!(
        (*msg).event_type,
        iotx_mqtt_event_type_t::IOTX_MQTT_EVENT_PUBLISH_RECEIVED
    ) {
        return;
    }
    let info = &*((*msg).msg as *const iotx_mqtt_topic_info_t);
    let payload = std::slice::from_raw_parts(info.payload as *const u8, info.payload_len as usize);
    (*(ctx as *const Mutex<Vec<Vec<u8>>>))
        .lock()
        .unwrap()
        .push(payload.to_vec());
}

/// An Aliyun upgrade to 2.0.0 announcing `size` bytes.
fn upgrade_msg(size: u64, url: &str, md5: &str) -> String {
    common::firmware::aliyun_notice_of(size as usize, md5, url, "2.0.0")
}

/// The iotkit sample's loop with the firmware's buffer: the bytes, and the first error if
/// FetchYield failed (a failing call writes nothing).
fn download(dev: &Device) -> (Vec<u8>, Option<c_int>) {
    let fetched = sample(dev, FIRMWARE_BUF);
    assert!(
        !fetched.wrote_on_error,
        "FetchYield failed with {:?} but wrote",
        fetched.failures
    );
    let error = fetched.error();
    (fetched.image, error)
}

// 1. NULL and foreign arguments

#[test]
fn every_ota_function_rejects_a_null_handle() {
    let mut buf = [0u8; 128];
    let b = buf.as_mut_ptr();
    let v = c"1.0.0".as_ptr();
    assert_eq!(unsafe { IOT_OTA_Deinit(null_mut()) }, INVALID_PARAM);
    assert_eq!(
        unsafe { IOT_OTA_ReportVersion(null_mut(), v) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_RequestImage(null_mut(), v) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(null_mut(), 50, null()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(null_mut(), 50, c"x".as_ptr()) },
        INVALID_PARAM
    );
    assert_eq!(IOT_OTA_IsFetching(null_mut()), 0);
    assert_eq!(IOT_OTA_IsFetchFinish(null_mut()), 0);
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(null_mut(), b.cast(), 128, 0) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(null_mut(), null_mut(), 0, 0) },
        INVALID_PARAM
    );
    for kind in IOT_OTAG_COTA_CONFIG_ID..=IOT_OTAG_STATE {
        assert_eq!(
            unsafe { IOT_OTA_Ioctl(null_mut(), kind, b.cast(), 4) },
            INVALID_PARAM,
            "type {kind}"
        );
        assert_eq!(
            unsafe { IOT_OTA_Ioctl(null_mut(), kind, b.cast(), 128) },
            INVALID_PARAM,
            "type {kind}"
        );
    }
    assert_eq!(IOT_OTA_GetLastError(null_mut()), INVALID_PARAM);
    assert!(
        buf.iter().all(|&x| x == 0),
        "a call with a NULL handle wrote into the buffer"
    );
    assert!(unsafe { IOT_OTA_Init(null(), null(), null_mut()) }.is_null());
    assert!(unsafe { IOT_OTA_Init(c"pk".as_ptr(), c"dn".as_ptr(), null_mut()) }.is_null());
}

#[test]
fn every_extension_rejects_a_null_handle() {
    let v = c"2.0.0".as_ptr();
    let mut kept = [7u8; 16];
    assert_eq!(
        unsafe { IOT_OTA_ReportModuleVersion(null_mut(), c"MCU".as_ptr(), v) },
        INVALID_PARAM
    );
    assert_eq!(IOT_OTA_StartDownload(null_mut(), 0, 0), INVALID_PARAM);
    assert_eq!(IOT_OTA_ResetClientMD5(null_mut()), INVALID_PARAM);
    unsafe { IOT_OTA_UpdateClientMd5(null_mut(), kept.as_mut_ptr().cast(), 16) }; // logged, no crash
    assert_eq!(IOT_OTA_ReportUpgradeBegin(null_mut()), INVALID_PARAM);
    assert_eq!(
        unsafe { IOT_OTA_ReportUpgradeSuccess(null_mut(), v) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportUpgradeFail(null_mut(), v) },
        INVALID_PARAM
    );
    assert_eq!(IOT_OTA_SetRetryPolicy(null_mut(), 3, 0), INVALID_PARAM);
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointFile(null_mut(), c"/tmp/x.bp".as_ptr()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointStore(null_mut(), null()) },
        INVALID_PARAM
    );
    assert_eq!(IOT_OTA_SetSaveInterval(null_mut(), 4096, 0), INVALID_PARAM);
    assert!(unsafe { IOT_OTA_InitWithProtocol(null(), null(), null_mut(), 0) }.is_null());
    assert_eq!(
        ota::ffi::image::IOT_OTA_ConfirmImage(null_mut()),
        INVALID_PARAM
    );
    assert_eq!(
        ota::ffi::image::IOT_OTA_RejectImage(null_mut()),
        INVALID_PARAM
    );
}

#[test]
fn protocol_numbers_are_the_documented_ones() {
    use ota::Protocol;
    for (c, p) in [
        (IOT_OTA_PROTOCOL_ALIYUN, Protocol::Aliyun),
        (IOT_OTA_PROTOCOL_SAGOO, Protocol::Sagoo),
        (IOT_OTA_PROTOCOL_TENCENT, Protocol::Tencent),
        (IOT_OTA_PROTOCOL_UCLOUD, Protocol::Ucloud),
    ] {
        assert_eq!(Protocol::from_id(c as u8), Some(p));
        assert_eq!(p.id() as c_int, c);
    }
    assert_eq!(Protocol::from_id(4), None);
}

#[test]
fn extensions_check_their_arguments_on_a_live_session() {
    let (_broker, dev, _cloud) = setup("ext-args");
    assert!(
        unsafe { IOT_OTA_InitWithProtocol(c"pk".as_ptr(), c"dn".as_ptr(), dev.mqtt, 4) }.is_null(),
        "unknown protocol"
    );
    assert!(
        unsafe { IOT_OTA_InitWithProtocol(c"pk".as_ptr(), c"dn".as_ptr(), dev.mqtt, -1) }.is_null(),
        "negative protocol"
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportModuleVersion(dev.ota, c"MCU".as_ptr(), null()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportModuleVersion(dev.ota, null(), c"1.0.0".as_ptr()) },
        0
    );
    // No upgrade yet: the Tencent-style calls are refused with INVALID_STATE.
    assert_eq!(IOT_OTA_StartDownload(dev.ota, 0, 0), INVALID_STATE);
    assert_eq!(IOT_OTA_ResetClientMD5(dev.ota), INVALID_STATE);
    assert_eq!(IOT_OTA_ReportUpgradeBegin(dev.ota), INVALID_STATE);
    assert_eq!(
        unsafe { IOT_OTA_ReportUpgradeSuccess(dev.ota, null()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointFile(dev.ota, null()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointFile(dev.ota, c"".as_ptr()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointStore(dev.ota, null()) },
        INVALID_PARAM
    );
    assert_eq!(IOT_OTA_SetSaveInterval(dev.ota, 0, 101), INVALID_PARAM);
    assert_eq!(IOT_OTA_SetSaveInterval(dev.ota, 65536, 10), 0);
    let dir = std::env::temp_dir().join(format!("ota-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = CString::new(dir.join("ota.bp").to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { IOT_OTA_SetBreakpointFile(dev.ota, path.as_ptr()) },
        0
    );
    assert_eq!(
        IOT_OTA_GetLastError(dev.ota),
        INVALID_PARAM,
        "the last refusal is kept"
    );

    // Confirm after boot: nothing waits for a confirmation on this boot.
    use ota::ffi::image::*;
    assert_eq!(IOT_OTA_ConfirmImage(dev.ota), INVALID_STATE);
    assert_eq!(IOT_OTA_RejectImage(dev.ota), INVALID_STATE);
    let mut v: u32 = 99;
    let ioctl = |kind, v: &mut u32, len| unsafe {
        IOT_OTA_Ioctl(dev.ota, kind, (v as *mut u32).cast(), len)
    };
    assert_eq!(ioctl(IOT_OTAG_BOOT_STATE, &mut v, 4), 0);
    assert_eq!(v, OTA_BOOT_NONE);
    assert_eq!(ioctl(IOT_OTAG_BOOT_STATE, &mut v, 8), INVALID_PARAM);
    v = 70_000;
    assert_eq!(ioctl(IOT_OTAC_CONFIRM_BOOTS, &mut v, 4), INVALID_PARAM);
    v = 3;
    assert_eq!(ioctl(IOT_OTAC_CONFIRM_BOOTS, &mut v, 4), 0);
}

#[test]
fn ota_init_rejects_null_arguments_and_foreign_handles() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut dev = Device::connect(broker.port(), "init-args");
    let (pk, dn) = (cstring(PK), cstring("init-args"));
    assert!(unsafe { IOT_OTA_Init(null(), dn.as_ptr(), dev.mqtt) }.is_null());
    assert!(unsafe { IOT_OTA_Init(pk.as_ptr(), null(), dev.mqtt) }.is_null());
    assert!(unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), null_mut()) }.is_null());
    assert!(unsafe { IOT_OTA_Init(c"".as_ptr(), dn.as_ptr(), dev.mqtt) }.is_null());
    assert!(unsafe { IOT_OTA_Init(pk.as_ptr(), c"a/b".as_ptr(), dev.mqtt) }.is_null());
    assert!(
        unsafe { IOT_OTA_Init(pk.as_ptr(), cstring(&"d".repeat(65)).as_ptr(), dev.mqtt) }.is_null()
    );
    // Some other memory where the MQTT handle belongs: a u64 on the stack, inside a zeroed block
    // at least as large as a real handle so the magic check reads only memory we own.
    let mut foreign = [0u64; 256];
    assert!(std::mem::size_of::<MqttHandle>() <= std::mem::size_of_val(&foreign));
    foreign[0] = 0x1234_5678_9abc_def0;
    let fake = foreign.as_mut_ptr().cast::<c_void>();
    assert!(unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), fake) }.is_null());
    foreign.fill(u64::MAX);
    assert!(unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), fake) }.is_null());
    // The same foreign memory is no MQTT handle either.
    assert_eq!(unsafe { IOT_MQTT_Yield(fake, 0) }, NULL_VALUE_ERROR);
    assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(fake) }, 0);

    // The MQTT handle is intact, and a valid init works.
    assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(dev.mqtt) }, 1);
    dev.init_ota("init-args", None);
    dev.assert_usable();
}

/// Env var that makes `foreign_handle_at_a_page_end_is_rejected` run one probe itself.
const FOREIGN_CHILD: &str = "OTA_CAPI_FOREIGN_CHILD";

/// A u64 that ends right before an unreadable page is passed where a handle belongs: the magic
/// check must look only at the start of the object. Each probe runs in a child process (this
/// test binary, filtered to this test), because a wrong read is a SIGSEGV that would end the
/// whole run.
#[test]
fn foreign_handle_at_a_page_end_is_rejected() {
    if let Some(probe) = std::env::var_os(FOREIGN_CHILD) {
        probe_foreign_handle_at_page_end(probe.to_str().unwrap());
        return;
    }
    let mut failed = Vec::new();
    for probe in ["IOT_OTA_Init", "IOT_MQTT_*", "IOT_OTA_*"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "foreign_handle_at_a_page_end_is_rejected",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(FOREIGN_CHILD, probe)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        if !status.success() {
            failed.push(format!("{probe}: {status}"));
        }
    }
    assert!(
        failed.is_empty(),
        "a handle check read past an 8-byte foreign object: {failed:?}"
    );
}

fn probe_foreign_handle_at_page_end(probe: &str) {
    // SAFETY: a plain anonymous mapping of two pages; the second is made unreadable.
    let obj = unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let base = libc::mmap(
            null_mut(),
            2 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        let guard = base.cast::<u8>().add(page).cast();
        assert_eq!(libc::mprotect(guard, page, libc::PROT_NONE), 0);
        let obj = base.cast::<u8>().add(page - 8).cast::<u64>();
        obj.write(0x1234_5678_9abc_def0);
        obj.cast::<c_void>()
    };
    match probe {
        "IOT_OTA_Init" => {
            assert!(unsafe { IOT_OTA_Init(c"pk".as_ptr(), c"dn".as_ptr(), obj) }.is_null());
        }
        "IOT_MQTT_*" => {
            assert_eq!(unsafe { IOT_MQTT_Yield(obj, 0) }, NULL_VALUE_ERROR);
            assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(obj) }, 0);
            let mut p = obj;
            assert_eq!(unsafe { IOT_MQTT_Destroy(&mut p) }, NULL_VALUE_ERROR);
        }
        _ => {
            assert_eq!(IOT_OTA_IsFetching(obj), 0);
            assert_eq!(IOT_OTA_GetLastError(obj), INVALID_PARAM);
            assert_eq!(unsafe { IOT_OTA_Deinit(obj) }, INVALID_PARAM);
        }
    }
}

#[test]
fn mqtt_functions_reject_null_arguments() {
    assert!(unsafe { IOT_MQTT_Construct(null_mut()) }.is_null());
    assert_eq!(unsafe { IOT_MQTT_Yield(null_mut(), 10) }, NULL_VALUE_ERROR);
    assert_eq!(unsafe { IOT_MQTT_Destroy(null_mut()) }, NULL_VALUE_ERROR);
    let mut nothing: *mut c_void = null_mut();
    assert_eq!(unsafe { IOT_MQTT_Destroy(&mut nothing) }, NULL_VALUE_ERROR);
    assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(null_mut()) }, 0);
    let qos1 = IOTX_MQTT_QOS1;
    let topic = c"capi/echo".as_ptr();
    let received: &'static Mutex<Vec<Vec<u8>>> = Box::leak(Box::new(Mutex::new(Vec::new())));
    let ctx = received as *const Mutex<Vec<Vec<u8>>> as *mut c_void;
    assert_eq!(
        unsafe { IOT_MQTT_Subscribe(null_mut(), topic, qos1, Some(collect_payloads), ctx) },
        NULL_VALUE_ERROR
    );
    assert_eq!(
        unsafe { IOT_MQTT_Unsubscribe(null_mut(), topic) },
        NULL_VALUE_ERROR
    );
    let payload = b"hello";
    let mut msg = iotx_mqtt_topic_info_t {
        packet_id: 0,
        qos: 1,
        dup: 0,
        retain: 0,
        topic_len: 0,
        payload_len: payload.len() as u32,
        ptopic: null(),
        payload: payload.as_ptr().cast(),
    };
    assert_eq!(
        unsafe { IOT_MQTT_Publish(null_mut(), topic, &mut msg) },
        NULL_VALUE_ERROR
    );

    let broker = EmbeddedBroker::start().unwrap();
    let subacks: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    for (host, client_id, port) in [
        (null(), c"c1".as_ptr(), broker.port()),
        (c"127.0.0.1".as_ptr(), null(), broker.port()),
        (c"127.0.0.1".as_ptr(), c"c1".as_ptr(), 0),
    ] {
        let mut param = mqtt_param(port, c"c1", subacks);
        param.host = host;
        param.client_id = client_id;
        assert!(unsafe { IOT_MQTT_Construct(&mut param) }.is_null());
    }

    let dev = Device::connect(broker.port(), "mqtt-args");
    let h = dev.mqtt;
    assert_eq!(
        unsafe { IOT_MQTT_Subscribe(h, null(), qos1, Some(collect_payloads), ctx) },
        NULL_VALUE_ERROR
    );
    assert_eq!(
        unsafe { IOT_MQTT_Subscribe(h, topic, qos1, None, ctx) },
        NULL_VALUE_ERROR
    );
    assert_eq!(
        unsafe { IOT_MQTT_Subscribe(h, c"capi/#/x".as_ptr(), qos1, Some(collect_payloads), ctx) },
        NULL_VALUE_ERROR
    );
    assert_eq!(unsafe { IOT_MQTT_Unsubscribe(h, null()) }, NULL_VALUE_ERROR);
    assert_eq!(
        unsafe { IOT_MQTT_Unsubscribe(h, c"capi/never".as_ptr()) },
        FAIL_RETURN
    );
    assert_eq!(
        unsafe { IOT_MQTT_Publish(h, topic, null_mut()) },
        NULL_VALUE_ERROR
    );
    assert_eq!(
        unsafe { IOT_MQTT_Publish(h, null(), &mut msg) },
        NULL_VALUE_ERROR
    );
    assert_eq!(
        unsafe { IOT_MQTT_Publish(h, c"capi/+".as_ptr(), &mut msg) },
        NULL_VALUE_ERROR
    );
    msg.qos = 3;
    assert_eq!(
        unsafe { IOT_MQTT_Publish(h, topic, &mut msg) },
        NULL_VALUE_ERROR
    );
    msg.qos = 1;
    msg.payload = null();
    assert_eq!(
        unsafe { IOT_MQTT_Publish(h, topic, &mut msg) },
        NULL_VALUE_ERROR
    );
    msg.payload = payload.as_ptr().cast();

    // Still usable: a message goes round through the broker to our own handler.
    assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(h) }, 1);
    assert_eq!(
        unsafe { IOT_MQTT_Subscribe(h, topic, qos1, Some(collect_payloads), ctx) },
        0
    );
    dev.wait_until("the echo subscription is acknowledged", || {
        dev.subacks.load(SeqCst) >= 1
    });
    assert_eq!(unsafe { IOT_MQTT_Publish(h, topic, &mut msg) }, 0);
    dev.wait_until("the echo arrives", || !received.lock().unwrap().is_empty());
    assert_eq!(received.lock().unwrap()[0], payload);
    assert_eq!(unsafe { IOT_MQTT_Unsubscribe(h, topic) }, 0);
}

#[test]
fn mqtt_construct_to_a_closed_port_fails_within_seconds() {
    let subacks: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let mut param = mqtt_param(free_port(), c"nobody", subacks);
    let start = Instant::now();
    assert!(unsafe { IOT_MQTT_Construct(&mut param) }.is_null());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "IOT_MQTT_Construct took {:?}",
        start.elapsed()
    );
}

/// Publishes `payload` to `topic` at QoS 1 through IOT_MQTT_Publish.
fn c_publish(mqtt: *mut c_void, topic: &CStr, payload: &[u8]) {
    let mut msg = iotx_mqtt_topic_info_t {
        packet_id: 0,
        qos: 1,
        dup: 0,
        retain: 0,
        topic_len: 0,
        payload_len: payload.len() as u32,
        ptopic: null(),
        payload: payload.as_ptr().cast(),
    };
    assert_eq!(
        unsafe { IOT_MQTT_Publish(mqtt, topic.as_ptr(), &mut msg) },
        0
    );
}

/// A handler that panics inside IOT_MQTT_Yield (a bug in Rust code the client runs, such as the
/// OTA session's upgrade handler): the guard turns the panic into FAIL_RETURN, and the client
/// stays usable: the next Yield returns 0 and the same handler gets the next message.
#[test]
fn a_panic_in_a_handler_inside_yield_leaves_the_client_usable() {
    let broker = EmbeddedBroker::start().unwrap();
    let dev = Device::connect(broker.port(), "panic-once");
    let client = unsafe { MqttHandle::from_ptr(dev.mqtt) }
        .expect("an MQTT handle")
        .client();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    client
        .subscribe("capi/panic", QoS::AtLeastOnce, move |m| {
            assert_ne!(m.payload, b"first", "a handler bug");
            sink.lock().unwrap().push(m.payload.to_vec());
        })
        .unwrap();
    dev.wait_until("the subscription is acknowledged", || {
        dev.subacks.load(SeqCst) >= 1
    });

    c_publish(dev.mqtt, c"capi/panic", b"first");
    let deadline = Instant::now() + WAIT;
    loop {
        match unsafe { IOT_MQTT_Yield(dev.mqtt, 50) } {
            0 => assert!(Instant::now() < deadline, "the handler never ran"),
            FAIL_RETURN => break,
            rc => panic!("IOT_MQTT_Yield returned {rc}"),
        }
    }

    c_publish(dev.mqtt, c"capi/panic", b"second");
    dev.wait_until("the next message reaches the same handler", || {
        !received.lock().unwrap().is_empty()
    });
    assert_eq!(*received.lock().unwrap(), [b"second".to_vec()]);
    assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(dev.mqtt) }, 1);
}

// 2. Wrong state and bad arguments on a live session

#[test]
fn wrong_state_and_bad_arguments_on_a_live_session() {
    let (_broker, dev, cloud) = setup("state");
    let h = dev.ota;
    let mut buf = vec![FILL; 64];

    assert_eq!(IOT_OTA_IsFetching(h), 0);
    assert_eq!(IOT_OTA_IsFetchFinish(h), 0);
    assert_eq!(dev.last_error(), 0);
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), 64, 0) },
        INVALID_STATE
    );
    assert_eq!(dev.last_error(), INVALID_STATE);
    assert!(buf.iter().all(|&b| b == FILL));
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(h, null_mut(), 64, 0) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), 0, 0) },
        INVALID_PARAM
    );
    assert_eq!(dev.last_error(), INVALID_PARAM);

    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(h, 50, null()) },
        INVALID_STATE
    );
    assert_eq!(dev.last_error(), INVALID_STATE);
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(h, 150, null()) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(h, -5, null()) },
        INVALID_PARAM
    );
    assert_eq!(dev.last_error(), INVALID_PARAM);

    assert_eq!(dev.report_version(&"9".repeat(64)), STR_TOO_LONG);
    assert_eq!(dev.last_error(), STR_TOO_LONG);
    assert_eq!(dev.report_version(&"9".repeat(63)), 0);
    assert_eq!(dev.report_version(""), INVALID_PARAM);
    assert_eq!(unsafe { IOT_OTA_ReportVersion(h, null()) }, INVALID_PARAM);
    assert_eq!(
        unsafe { IOT_OTA_RequestImage(h, cstring(&"9".repeat(64)).as_ptr()) },
        STR_TOO_LONG
    );
    assert_eq!(
        unsafe { IOT_OTA_RequestImage(h, c"".as_ptr()) },
        INVALID_PARAM
    );
    assert_eq!(unsafe { IOT_OTA_RequestImage(h, null()) }, INVALID_PARAM);
    assert_eq!(unsafe { IOT_OTA_RequestImage(h, c"1.0.0".as_ptr()) }, 0);

    assert_eq!(dev.ioctl(999, 64).0, INVALID_PARAM);
    assert_eq!(dev.ioctl(-1, 64).0, INVALID_PARAM);
    assert_eq!(dev.last_error(), INVALID_PARAM);
    for kind in (IOT_OTAG_COTA_CONFIG_ID..=IOT_OTAG_COTA_GETTYPE).chain([IOT_OTAG_CHECK_CONFIG]) {
        assert_eq!(dev.ioctl(kind, 4).0, INVALID_PARAM, "COTA type {kind}");
        assert_eq!(dev.ioctl(kind, 64).0, INVALID_PARAM, "COTA type {kind}");
    }
    assert_eq!(
        unsafe { IOT_OTA_Ioctl(h, IOT_OTAG_STATE, null_mut(), 4) },
        INVALID_PARAM
    );
    assert_eq!(dev.ioctl(IOT_OTAG_FETCHED_SIZE, 3).0, INVALID_PARAM);
    assert_eq!(dev.ioctl(IOT_OTAG_FETCHED_SIZE, 8).0, INVALID_PARAM);
    assert_eq!(dev.ioctl(IOT_OTAG_FETCHED_SIZE, 0).0, INVALID_PARAM);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE), Ok(0));
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(0));
    assert_eq!(dev.state(), IOT_OTA_State_t::IOT_OTAS_INITED as u32);
    for kind in [
        IOT_OTAG_VERSION,
        IOT_OTAG_MD5SUM,
        IOT_OTAG_SHA256SUM,
        IOT_OTAG_SIGN_METHOD,
        IOT_OTAG_MODULE,
        IOT_OTAG_TASK_ID,
        IOT_OTAG_EXT_DATA,
    ] {
        assert_eq!(
            dev.ioctl_str(kind, OTA_VERSION_LEN_MAX),
            Err(INVALID_STATE),
            "type {kind}"
        );
    }
    assert_eq!(dev.last_error(), INVALID_STATE);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Err(INVALID_STATE));
    dev.assert_usable();

    // An accepted upgrade that has not been downloaded yet.
    let md5 = "93230c3bde425a9d7984a594ac55ea1e";
    cloud.announce(
        &dev,
        &upgrade_msg(1000, "http://127.0.0.1:9/firmware.bin", md5),
    );
    assert_eq!(dev.state(), IOT_OTA_State_t::IOT_OTAS_FETCHING as u32);
    assert_eq!(IOT_OTA_IsFetchFinish(h), 0);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Err(INVALID_STATE));
    assert_eq!(dev.last_error(), INVALID_STATE);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(1000));
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE), Ok(0));
    assert_eq!(dev.ioctl_str(IOT_OTAG_MD5SUM, 33).as_deref(), Ok(md5));
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(h, 150, null()) },
        INVALID_PARAM
    );
    // Aliyun's steps run 1..100: a 0 % report is accepted and dropped, never sent as "0".
    assert_eq!(
        unsafe { IOT_OTA_ReportProgress(h, 0, c"starting".as_ptr()) },
        0
    );
    assert_eq!(unsafe { IOT_OTA_ReportProgress(h, 1, c"one".as_ptr()) }, 0);
    cloud.wait_progress(&dev, "with step 1", |m| {
        m.contains(r#""step":"1""#) && m.contains("one")
    });
    let sent = cloud.progress.lock().unwrap().clone();
    assert!(
        !sent.iter().any(|m| m.contains(r#""step":"0""#)),
        "step 0 reached the platform: {sent:?}"
    );
    dev.assert_usable();
}

// 3. A good upgrade

#[test]
fn good_upgrade_through_the_c_api() {
    let (_broker, dev, cloud) = setup("good");
    let h = dev.ota;
    let image = ota_cloud::generate_firmware(300 * 1024);
    let md5 = ota_cloud::cloud::md5_hex(&image);
    let server = FirmwareServer::start(image.clone()).unwrap();
    assert_eq!(dev.report_version("1.0.0"), 0);
    cloud.announce(&dev, &upgrade_msg(image.len() as u64, &server.url(), &md5));

    let (got, failed) = download(&dev);
    assert_eq!(failed, None);
    assert_eq!(got.len(), image.len());
    assert!(got == image, "downloaded bytes differ from the image");
    assert_eq!(IOT_OTA_IsFetching(h), 0);
    assert_eq!(IOT_OTA_IsFetchFinish(h), 1);
    let len = image.len() as u32;
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE), Ok(len));
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(len));

    assert_eq!(
        dev.ioctl_str(IOT_OTAG_MD5SUM, 33).as_deref(),
        Ok(md5.as_str())
    );
    assert_eq!(dev.ioctl_str(IOT_OTAG_MD5SUM, 32), Err(STR_TOO_LONG));
    assert_eq!(dev.last_error(), STR_TOO_LONG);
    assert_eq!(dev.ioctl_str(IOT_OTAG_MD5SUM, 0), Err(STR_TOO_LONG));
    assert_eq!(dev.ioctl_str(IOT_OTAG_SIGN_METHOD, 7).as_deref(), Ok("MD5"));
    assert_eq!(dev.ioctl_str(IOT_OTAG_SIGN_METHOD, 3), Err(STR_TOO_LONG));
    assert_eq!(dev.ioctl_str(IOT_OTAG_SHA256SUM, 65), Err(INVALID_STATE));
    assert_eq!(dev.ioctl_str(IOT_OTAG_TASK_ID, 64), Err(INVALID_STATE));
    assert_eq!(dev.ioctl_str(IOT_OTAG_EXT_DATA, 1024), Err(INVALID_STATE));
    assert_eq!(dev.state(), IOT_OTA_State_t::IOT_OTAS_FETCHED as u32);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
    assert_eq!(dev.ioctl_u32(IOT_OTAG_RESUME_OFFSET), Ok(len));
    assert_eq!(dev.ioctl_str(IOT_OTAG_VERSION, 6).as_deref(), Ok("2.0.0"));
    assert_eq!(
        dev.ioctl_str(IOT_OTAG_VERSION, OTA_VERSION_LEN_MAX)
            .as_deref(),
        Ok("2.0.0")
    );
    assert_eq!(dev.ioctl_str(IOT_OTAG_MODULE, 8).as_deref(), Ok("default"));

    // The download is over: FetchYield is a state error, not a new download.
    let mut buf = [FILL; 16];
    assert_eq!(
        unsafe { IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), 16, 0) },
        INVALID_STATE
    );
    assert_eq!(unsafe { IOT_OTA_ReportProgress(h, 100, null()) }, 0);
    cloud.wait_progress(&dev, "with step 100", |m| m.contains(r#""step":"100""#));
    dev.assert_usable();
}

/// A string answer that does not fit is refused without writing anything, and the handle keeps
/// working. Separate from the good upgrade (one test per type) so a hang is reported on its own.
fn short_buffer_is_refused(dn: &str, kind: c_int, buf_len: usize) {
    let (_broker, dev, cloud) = setup(dn);
    let md5 = "93230c3bde425a9d7984a594ac55ea1e";
    cloud.announce(
        &dev,
        &upgrade_msg(1000, "http://127.0.0.1:9/firmware.bin", md5),
    );
    assert_eq!(dev.ioctl_str(kind, buf_len), Err(STR_TOO_LONG));
    assert_eq!(dev.last_error(), STR_TOO_LONG);
    assert!(dev.ioctl_str(kind, buf_len + 1).is_ok());
    dev.assert_usable();
}

#[test]
fn version_into_a_too_small_buffer_is_refused() {
    // "2.0.0" needs 6 bytes with its NUL.
    short_buffer_is_refused("short-version", IOT_OTAG_VERSION, 5);
}

#[test]
fn module_into_a_too_small_buffer_is_refused() {
    // "default" needs 8 bytes with its NUL.
    short_buffer_is_refused("short-module", IOT_OTAG_MODULE, 7);
}

// 4. Bad upgrade messages

#[test]
fn bad_upgrade_messages_change_nothing() {
    let (_broker, dev, cloud) = setup("bad-msgs");
    let h = dev.ota;
    let md5 = "93230c3bde425a9d7984a594ac55ea1e";
    let url = "http://127.0.0.1:9/firmware.bin";
    let long_url = format!("http://127.0.0.1:9/{}", "a".repeat(3000));
    let huge_url = format!("http://127.0.0.1:9/{}", "a".repeat(10_000));
    let bad: Vec<(&str, String)> = vec![
        (
            "code 1001",
            upgrade_msg(1000, url, md5).replace("\"1000\"", "\"1001\""),
        ),
        (
            "missing md5",
            format!(
                r#"{{"code":"1000","data":{{"size":1000,"version":"2.0.0","url":"{url}"}},"id":1,"message":"success"}}"#
            ),
        ),
        ("md5 too short", upgrade_msg(1000, url, "93230c3b")),
        ("size 0", upgrade_msg(0, url, md5)),
        ("size 2^32", upgrade_msg(4_294_967_296, url, md5)),
        ("not JSON", "this is not json {".to_string()),
        ("ftp URL", upgrade_msg(1000, "ftp://x", md5)),
        ("3000-byte URL", upgrade_msg(1000, &long_url, md5)),
        ("10 KB message", upgrade_msg(1000, &huge_url, md5)),
    ];
    let check_all = |dev: &Device, expect_state: IOT_OTA_State_t| {
        let expect_state = expect_state as u32;
        for (what, msg) in &bad {
            // Leave a different error behind, so the -1 below comes from this message.
            assert_eq!(
                unsafe { IOT_OTA_ReportProgress(h, 150, null()) },
                INVALID_PARAM
            );
            cloud.publish(msg.as_bytes());
            dev.wait_until(&format!("the {what} message is rejected"), || {
                dev.last_error() == GENERAL
            });
            assert_eq!(dev.state(), expect_state, "{what} changed the state");
        }
    };

    check_all(&dev, IOT_OTA_State_t::IOT_OTAS_INITED);
    assert_eq!(IOT_OTA_IsFetching(h), 0);
    assert_eq!(IOT_OTA_IsFetchFinish(h), 0);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(0));
    dev.assert_usable();

    // A good message is still accepted; bad ones afterwards leave the accepted upgrade alone.
    cloud.announce(&dev, &upgrade_msg(1234, url, md5));
    check_all(&dev, IOT_OTA_State_t::IOT_OTAS_FETCHING);
    assert_eq!(IOT_OTA_IsFetching(h), 1);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(1234));
    assert_eq!(dev.ioctl_str(IOT_OTAG_MD5SUM, 33).as_deref(), Ok(md5));
    assert_eq!(dev.ioctl_str(IOT_OTAG_VERSION, 64).as_deref(), Ok("2.0.0"));
    dev.assert_usable();
}

// 5. Download failures

/// After a failed download: finished, not valid, the handle still usable.
fn assert_failed_download(dev: &Device) {
    assert_eq!(IOT_OTA_IsFetchFinish(dev.ota), 1);
    assert_eq!(IOT_OTA_IsFetching(dev.ota), 0);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(0));
    assert_eq!(dev.state(), IOT_OTA_State_t::IOT_OTAS_FETCHED as u32);
    dev.assert_usable();
}

#[test]
fn http_404_fails_the_download_and_is_reported_as_step_minus_2() {
    let (_broker, dev, cloud) = setup("http-404");
    let image = ota_cloud::generate_firmware(10_000);
    let faults = Faults {
        status: Some(404),
        ..Faults::default()
    };
    let server = FirmwareServer::start_with(image.clone(), faults).unwrap();
    let md5 = ota_cloud::cloud::md5_hex(&image);
    cloud.announce(&dev, &upgrade_msg(image.len() as u64, &server.url(), &md5));
    let (got, failed) = download(&dev);
    assert_eq!(failed, Some(FETCH_FAILED));
    assert!(got.is_empty());
    assert_eq!(dev.last_error(), FETCH_FAILED);
    assert_failed_download(&dev);
    let report = cloud.wait_progress(&dev, "with step -2", |m| m.contains(r#""step":"-2""#));
    assert!(
        report.contains("404"),
        "report does not mention 404: {report}"
    );
}

#[test]
fn refused_connection_fails_the_download_after_the_retry_limit() {
    let (_broker, dev, cloud) = setup("refused");
    // Two reconnection attempts (about 0.1 + 0.2 s of backoff), then the download fails.
    assert_eq!(IOT_OTA_SetRetryPolicy(dev.ota, 2, 0), 0);
    assert_eq!(IOT_OTA_SetRetryPolicy(dev.ota, 1001, 0), INVALID_PARAM);
    assert_eq!(
        IOT_OTA_SetRetryPolicy(std::ptr::null_mut(), 2, 0),
        INVALID_PARAM
    );
    let url = format!("http://127.0.0.1:{}/firmware.bin", free_port());
    cloud.announce(
        &dev,
        &upgrade_msg(1000, &url, "93230c3bde425a9d7984a594ac55ea1e"),
    );
    let (got, failed) = download(&dev);
    assert_eq!(failed, Some(FETCH_FAILED));
    assert!(got.is_empty());
    assert_failed_download(&dev);
    cloud.wait_progress(&dev, "with step -2", |m| m.contains(r#""step":"-2""#));
}

#[test]
fn server_file_larger_than_announced_is_cut_at_the_announced_size() {
    let (_broker, dev, cloud) = setup("oversize");
    let image = ota_cloud::generate_firmware(50_000);
    let announced = image.len() - 100;
    // The digest of exactly the announced bytes: only the size mismatch can fail the check.
    let md5 = ota_cloud::cloud::md5_hex(&image[..announced]);
    let server = FirmwareServer::start(image.clone()).unwrap();
    cloud.announce(&dev, &upgrade_msg(announced as u64, &server.url(), &md5));
    let (got, failed) = download(&dev);
    assert_eq!(failed, None);
    assert_eq!(
        got.len(),
        announced,
        "more or fewer bytes than announced were written"
    );
    assert!(got[..] == image[..announced]);
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE), Ok(announced as u32));
    assert_failed_download(&dev);
    cloud.wait_progress(&dev, "with step -3", |m| m.contains(r#""step":"-3""#));
}

#[test]
fn wrong_md5_is_rejected_and_reported_as_step_minus_3() {
    let (_broker, dev, cloud) = setup("bad-md5");
    let image = ota_cloud::generate_firmware(40_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let wrong = ota_cloud::cloud::md5_hex(b"not the image");
    cloud.announce(
        &dev,
        &upgrade_msg(image.len() as u64, &server.url(), &wrong),
    );
    let (got, failed) = download(&dev);
    assert_eq!(failed, None);
    assert!(got == image);
    assert_failed_download(&dev);
    cloud.wait_progress(&dev, "with step -3", |m| m.contains(r#""step":"-3""#));
}

// Gateways: many handles on one MQTT client (issue 15)

/// The firmware's kept images for the gateway test: `ctx` is a `Mutex<Vec<u8>>`.
unsafe extern "C" fn read_kept(
    ctx: *mut c_void,
    offset: u32,
    buf: *mut c_char,
    buf_len: u32,
) -> c_int {
    let kept = (*(ctx as *const Mutex<Vec<u8>>)).lock().unwrap();
    let start = (offset as usize).min(kept.len());
    let n = (buf_len as usize).min(kept.len() - start);
    std::ptr::copy_nonoverlapping(kept[start..].as_ptr(), buf.cast::<u8>(), n);
    n as c_int
}

/// A reader that claims more bytes than the buffer holds (a firmware bug): never trusted.
unsafe extern "C" fn read_lying(
    ctx: *mut c_void,
    offset: u32,
    buf: *mut c_char,
    buf_len: u32,
) -> c_int {
    let n = read_kept(ctx, offset, buf, buf_len);
    if n > 0 {
        n + 100
    } else {
        n
    }
}

/// Two handles of two devices on one client through the C API: a second handle of the same
/// device is refused (IOT_OTA_GetInitError says why); with the default single download slot
/// and a kept image, the second device waits for the first one's download of the same image
/// (IOT_OTAS_WAITING, OTA_WAITING_SAME_IMAGE, IsFetching 0) and then streams the kept copy
/// through the firmware's reader: one HTTP download for both. A reader that claims more bytes
/// than it was given is not trusted: that device downloads the image itself.
#[test]
fn gateway_handles_share_one_download_through_the_firmware_reader() {
    let broker = EmbeddedBroker::start().unwrap();
    let image = common::firmware::image(30_000, 21);
    let server = FirmwareServer::start(image.to_vec()).unwrap();
    let msg = upgrade_msg(
        image.len() as u64,
        &server.url(),
        &ota_cloud::md5_hex(image),
    );
    let clouds: Vec<Cloud> = ["gw-hold", "gw-read", "gw-third"]
        .iter()
        .map(|dn| Cloud::new(broker.port(), dn))
        .collect();
    let holder = Device::new(broker.port(), "gw-hold");
    let init = |dn: &str| {
        let before = holder.subacks.load(SeqCst);
        let (pk, dn) = (cstring(PK), cstring(dn));
        let h = unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), holder.mqtt) };
        if !h.is_null() {
            holder.wait_until("the subscription", || holder.subacks.load(SeqCst) > before);
        }
        h
    };
    // The same device twice: refused, and Init says why.
    assert!(init("gw-hold").is_null());
    assert_eq!(
        IOT_OTA_GetInitError(),
        IOT_OTA_Err_t::IOT_OTAE_DEVICE_TAKEN as c_int
    );
    let reader = Device {
        mqtt: holder.mqtt,
        ota: init("gw-read"),
        subacks: holder.subacks,
        wedged: std::cell::Cell::new(false),
    };
    assert!(!reader.ota.is_null());
    assert_eq!(IOT_OTA_GetInitError(), 0);
    // The slot setting checks its arguments.
    assert_eq!(
        unsafe { IOT_OTA_SetMaxDownloads(null_mut(), 1) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetMaxDownloads(holder.mqtt, 0) },
        INVALID_PARAM
    );
    assert_eq!(
        unsafe { IOT_OTA_SetMaxDownloads(holder.ota, 1) },
        INVALID_PARAM
    );
    assert_eq!(unsafe { IOT_OTA_SetMaxDownloads(holder.mqtt, 1) }, 0);
    assert_eq!(
        unsafe { IOT_OTA_SetLocalImageSource(null_mut(), Some(read_kept), null_mut()) },
        INVALID_PARAM
    );
    let kept: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
    let ctx = kept as *const Mutex<Vec<u8>> as *mut c_void;
    assert_eq!(
        unsafe { IOT_OTA_SetLocalImageSource(holder.ota, Some(read_kept), ctx) },
        0
    );
    assert_eq!(reader.ioctl_u32(IOT_OTAG_WAITING), Ok(OTA_WAITING_NONE));
    assert_eq!(reader.ioctl(IOT_OTAG_WAITING, 3).0, INVALID_PARAM);

    clouds[0].publish(msg.as_bytes());
    clouds[1].publish(msg.as_bytes());
    holder.wait_until("both upgrades arrived", || {
        IOT_OTA_IsFetching(holder.ota) == 1
            && reader.state() == IOT_OTA_State_t::IOT_OTAS_WAITING as u32
    });
    assert_eq!(IOT_OTA_IsFetching(reader.ota), 0);
    assert_eq!(
        reader.ioctl_u32(IOT_OTAG_WAITING),
        Ok(OTA_WAITING_SAME_IMAGE)
    );
    let (got, err) = download(&holder);
    assert_eq!((got.as_slice(), err), (image, None));
    *kept.lock().unwrap() = got;
    assert_eq!(holder.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
    assert_eq!(holder.ioctl_u32(IOT_OTAG_LOCAL_IMAGE), Ok(0));

    reader.wait_until("the reader starts", || IOT_OTA_IsFetching(reader.ota) == 1);
    let (got, err) = download(&reader);
    assert_eq!((got.as_slice(), err), (image, None));
    assert_eq!(reader.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
    assert_eq!(reader.ioctl_u32(IOT_OTAG_LOCAL_IMAGE), Ok(1));
    assert_eq!(
        server.requests_when(1, WAIT).len(),
        1,
        "one download for both"
    );

    // A lying reader: the third device gets the image from the network, byte for byte.
    assert_eq!(
        unsafe { IOT_OTA_SetLocalImageSource(reader.ota, None, null_mut()) },
        0
    );
    assert_eq!(
        unsafe { IOT_OTA_SetLocalImageSource(holder.ota, Some(read_lying), ctx) },
        0
    );
    let third = Device {
        mqtt: holder.mqtt,
        ota: init("gw-third"),
        subacks: holder.subacks,
        wedged: std::cell::Cell::new(false),
    };
    clouds[2].publish(msg.as_bytes());
    third.wait_until("the third starts", || IOT_OTA_IsFetching(third.ota) == 1);
    let (got, err) = download(&third);
    assert_eq!((got.as_slice(), err), (image, None));
    assert_eq!(third.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
    assert_eq!(third.ioctl_u32(IOT_OTAG_LOCAL_IMAGE), Ok(0));
    assert_eq!(server.requests_when(2, WAIT).len(), 2);
    for d in [reader, third] {
        assert_eq!(unsafe { IOT_OTA_Deinit(d.ota) }, 0);
        std::mem::forget(d); // its MQTT client is the holder's
    }
}

/// The package Ioctls on a live handle: an idle session answers for its single image, and the
/// switch checks its argument and platform (issue 16).
#[test]
fn package_ioctls_answer_and_check_their_arguments() {
    use ota::ffi::package::*;
    let broker = EmbeddedBroker::start().unwrap();
    let dev = Device::new(broker.port(), "pkg-ioctl");
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_COUNT), Ok(1));
    assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_INDEX), Ok(0));
    assert_eq!(dev.ioctl_str(IOT_OTAG_FILE_NAME, 16), Ok(String::new()));
    let set = |n: u32| {
        let mut v = n.to_ne_bytes();
        unsafe { IOT_OTA_Ioctl(dev.ota, IOT_OTAC_MAX_FILES, v.as_mut_ptr().cast(), 4) }
    };
    assert_eq!(set(17), INVALID_PARAM);
    assert_eq!(dev.last_error(), INVALID_PARAM);
    assert_eq!(set(4), 0);
    let mut short = [0u8; 2];
    assert_eq!(
        unsafe { IOT_OTA_Ioctl(dev.ota, IOT_OTAC_MAX_FILES, short.as_mut_ptr().cast(), 2) },
        INVALID_PARAM
    );
    dev.assert_usable();
}

/// Download over MQTT through the C API (issue 16): IOT_OTAC_MQTT_BLOCK_SIZE checks its
/// argument, platform and state, and with it set the firmware's usual FetchYield loop gets the
/// image from the platform's block replies on the same connection, through a dropped reply and
/// a corrupted block.
#[test]
fn mqtt_download_through_the_c_api() {
    use ota::ffi::package::IOT_OTAC_MQTT_BLOCK_SIZE;
    use ota_cloud::cloud::{CloudOptions, Protocol as CloudProtocol};
    use ota_cloud::{MqttDownloadServer, MqttFaults, Package};
    let dn = "mqtt-dl";
    let (broker, dev, cloud) = setup(dn);
    let set = |h: *mut c_void, n: u32| {
        let mut v = n.to_ne_bytes();
        unsafe { IOT_OTA_Ioctl(h, IOT_OTAC_MQTT_BLOCK_SIZE, v.as_mut_ptr().cast(), 4) }
    };
    // The reply frame of a 64 KiB block cannot fit the connection's 64 KiB read buffer.
    assert_eq!(set(dev.ota, 65_536), INVALID_PARAM);
    assert_eq!(dev.last_error(), INVALID_PARAM);
    assert_eq!(set(dev.ota, 0), 0);
    assert_eq!(set(dev.ota, 4096), 0);
    // Tencent has no download over MQTT.
    let (pk, other) = (cstring(PK), cstring("mqtt-dl-tencent"));
    let tencent = unsafe {
        IOT_OTA_InitWithProtocol(
            pk.as_ptr(),
            other.as_ptr(),
            dev.mqtt,
            IOT_OTA_PROTOCOL_TENCENT,
        )
    };
    assert!(!tencent.is_null());
    assert_eq!(set(tencent, 4096), INVALID_PARAM);
    assert_eq!(unsafe { IOT_OTA_Deinit(tencent) }, 0);

    let image = common::firmware::image(30_000, 21).to_vec();
    let package = Package::single_over_mqtt("2.0.0", "app.bin", image.clone(), 3);
    let faults = MqttFaults {
        cuts: vec![5_000],
        flip_at: Some(20_000),
        ..MqttFaults::default()
    };
    let server =
        MqttDownloadServer::start(broker.host(), broker.port(), PK, dn, &package, 4096, faults)
            .unwrap();
    let msg = package
        .upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())
        .unwrap();
    cloud.announce(&dev, &msg);
    // Set once an upgrade is under way: refused, the download goes on.
    assert_eq!(set(dev.ota, 2048), INVALID_STATE);
    assert_eq!(set(dev.ota, 0), INVALID_STATE, "nor turned off");
    let (got, err) = download(&dev);
    assert_eq!(err, None);
    assert!(got == image, "{} bytes of {}", got.len(), image.len());
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
    let stats = server.stats();
    assert_eq!(
        (stats.faults_fired.len(), stats.repeated_requests),
        (2, 2),
        "{stats:?}"
    );
}
