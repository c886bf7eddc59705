//! The C ABI as firmware calls it, for the tests that drive `IOT_MQTT_*` and `IOT_OTA_*`
//! against a real broker: the device (handles built purely through the C functions, every
//! Ioctl bounded and checked for writes past its buffer), the platform (an MQTT client that
//! publishes upgrades and records progress reports), and the iotkit sample's firmware loop.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ota::ffi::ioctl::IOT_OTA_Ioctl;
use ota::ffi::mqtt::{
    IOT_MQTT_CheckStateNormal, IOT_MQTT_Construct, IOT_MQTT_Destroy, IOT_MQTT_Yield,
};
use ota::ffi::ota::*;
use ota::mqtt::{MqttEvent, QoS};
use ota::{MqttClient, MqttOptions};
use ota_cloud::broker::EmbeddedBroker;

use super::cmqtt::mqtt_param;
use super::recorder::is_failure_report;

pub const PK: &str = "pkCapi";
/// Upper bound of every wait (a message to arrive, a download to end).
pub const WAIT: Duration = Duration::from_secs(10);
/// Upper bound of one Ioctl call (it never blocks on I/O; more means a deadlock).
pub const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Bytes of 0xAA after every buffer handed to the library, checked afterwards.
pub const GUARD: usize = 64;
pub const FILL: u8 = 0xAA;

pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// The device side, built purely through the C functions.
pub struct Device {
    pub mqtt: *mut c_void,
    pub ota: *mut c_void,
    /// SUBSCRIBE_SUCCESS events seen by `handle_event` (leaked: the client may outlive a panic).
    pub subacks: &'static AtomicUsize,
    /// A call never returned: the handles are leaked rather than freed under it.
    pub wedged: Cell<bool>,
}

impl Device {
    /// Connects the MQTT client only.
    pub fn connect(port: u16, dn: &str) -> Device {
        let subacks: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let client_id = cstring(&format!("{PK}.{dn}"));
        let mut param = mqtt_param(port, &client_id, subacks);
        let mqtt = unsafe { IOT_MQTT_Construct(&mut param) };
        assert!(!mqtt.is_null(), "IOT_MQTT_Construct to port {port} failed");
        Device {
            mqtt,
            ota: null_mut(),
            subacks,
            wedged: Cell::new(false),
        }
    }

    /// Connects and initialises OTA; returns once the upgrade topic subscription is acknowledged
    /// (so an upgrade published afterwards cannot be lost).
    pub fn new(port: u16, dn: &str) -> Device {
        let mut d = Device::connect(port, dn);
        d.init_ota(dn, None);
        d
    }

    /// [`new`](Self::new) on `protocol` (IOT_OTA_InitWithProtocol).
    pub fn with_protocol(port: u16, dn: &str, protocol: c_int) -> Device {
        let mut d = Device::connect(port, dn);
        d.init_ota(dn, Some(protocol));
        d
    }

    /// IOT_OTA_Init, or IOT_OTA_InitWithProtocol with `protocol`; returns once the upgrade
    /// topic subscription is acknowledged.
    pub fn init_ota(&mut self, dn: &str, protocol: Option<c_int>) {
        let before = self.subacks.load(SeqCst);
        let (pk, dn) = (cstring(PK), cstring(dn));
        self.ota = match protocol {
            None => unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), self.mqtt) },
            Some(p) => unsafe { IOT_OTA_InitWithProtocol(pk.as_ptr(), dn.as_ptr(), self.mqtt, p) },
        };
        assert!(!self.ota.is_null(), "IOT_OTA_Init failed");
        self.wait_until("the upgrade topic subscription is acknowledged", || {
            self.subacks.load(SeqCst) > before
        });
    }

    pub fn yield_ms(&self, ms: c_int) {
        assert_eq!(
            unsafe { IOT_MQTT_Yield(self.mqtt, ms) },
            0,
            "IOT_MQTT_Yield"
        );
    }

    pub fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            self.yield_ms(50);
        }
    }

    pub fn last_error(&self) -> c_int {
        IOT_OTA_GetLastError(self.ota)
    }

    pub fn report_version(&self, version: &str) -> c_int {
        unsafe { IOT_OTA_ReportVersion(self.ota, cstring(version).as_ptr()) }
    }

    pub fn state(&self) -> u32 {
        self.ioctl_u32(IOT_OTAG_STATE).expect("IOT_OTAG_STATE")
    }

    /// Calls IOT_OTA_Ioctl on a `buf_len`-byte window of a larger 0xAA-filled buffer, on another
    /// thread so that a deadlock fails the test instead of hanging it. Checks that nothing was
    /// written past `buf_len`, and nothing at all on failure.
    pub fn ioctl(&self, kind: c_int, buf_len: usize) -> (c_int, Vec<u8>) {
        let mut buf = vec![FILL; buf_len + GUARD];
        let (h, p) = (self.ota as usize, buf.as_mut_ptr() as usize);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx
                .send(unsafe { IOT_OTA_Ioctl(h as *mut c_void, kind, p as *mut c_void, buf_len) });
        });
        let Ok(rc) = rx.recv_timeout(CALL_LIMIT) else {
            self.wedged.set(true);
            std::mem::forget(buf);
            panic!("IOT_OTA_Ioctl(type {kind}, buf_len {buf_len}) did not return within {CALL_LIMIT:?} (deadlock)");
        };
        assert!(
            buf[buf_len..].iter().all(|&b| b == FILL),
            "IOT_OTA_Ioctl(type {kind}, buf_len {buf_len}) wrote past buf_len"
        );
        if rc != 0 {
            assert!(
                buf.iter().all(|&b| b == FILL),
                "IOT_OTA_Ioctl(type {kind}, buf_len {buf_len}) failed with {rc} but wrote into the buffer"
            );
        }
        buf.truncate(buf_len);
        (rc, buf)
    }

    pub fn ioctl_u32(&self, kind: c_int) -> Result<u32, c_int> {
        match self.ioctl(kind, 4) {
            (0, b) => Ok(u32::from_ne_bytes(b[..4].try_into().unwrap())),
            (rc, _) => Err(rc),
        }
    }

    pub fn ioctl_str(&self, kind: c_int, buf_len: usize) -> Result<String, c_int> {
        match self.ioctl(kind, buf_len) {
            (0, b) => {
                let s =
                    CStr::from_bytes_until_nul(&b).expect("answer is NUL-terminated in buf_len");
                Ok(s.to_str().unwrap().to_string())
            }
            (rc, _) => Err(rc),
        }
    }

    /// A later valid call still works: the handles survived whatever came before.
    pub fn assert_usable(&self) {
        assert_eq!(unsafe { IOT_MQTT_CheckStateNormal(self.mqtt) }, 1);
        assert_eq!(
            self.report_version("1.0.0"),
            0,
            "ReportVersion after errors"
        );
        self.yield_ms(10);
        assert!(self.state() >= IOT_OTA_State_t::IOT_OTAS_INITED as u32);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.wedged.get() {
            return;
        }
        let quiet = std::thread::panicking();
        if !self.ota.is_null() {
            let rc = unsafe { IOT_OTA_Deinit(self.ota) };
            assert!(quiet || rc == 0, "IOT_OTA_Deinit returned {rc}");
        }
        if !self.mqtt.is_null() {
            let rc = unsafe { IOT_MQTT_Destroy(&mut self.mqtt) };
            assert!(
                quiet || (rc == 0 && self.mqtt.is_null()),
                "IOT_MQTT_Destroy returned {rc}"
            );
        }
    }
}

/// The platform: publishes upgrade notifications and records the device's progress reports.
pub struct Cloud {
    pub client: MqttClient,
    pub upgrade_topic: String,
    pub progress: Arc<Mutex<Vec<String>>>,
}

impl Cloud {
    pub fn new(port: u16, dn: &str) -> Cloud {
        let client =
            MqttClient::connect(&MqttOptions::new("127.0.0.1", port, &format!("cloud.{dn}")))
                .expect("cloud connects to the broker");
        let acks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&acks);
        client.on_event(move |e| {
            if matches!(e, MqttEvent::SubscribeAck { .. }) {
                counter.fetch_add(1, SeqCst);
            }
        });
        let progress = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&progress);
        client
            .subscribe(
                &format!("/ota/device/progress/{PK}/{dn}"),
                QoS::AtLeastOnce,
                move |m| {
                    let text = String::from_utf8_lossy(m.payload).into_owned();
                    sink.lock().unwrap().push(text);
                },
            )
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while acks.load(SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "cloud subscription not acknowledged"
            );
            client.yield_for(Duration::from_millis(50)).unwrap();
        }
        Cloud {
            client,
            upgrade_topic: format!("/ota/device/upgrade/{PK}/{dn}"),
            progress,
        }
    }

    /// Publishes `msg` on the upgrade topic and waits until the device is fetching.
    pub fn announce(&self, dev: &Device, msg: &str) {
        self.publish(msg.as_bytes());
        dev.wait_until("the upgrade is accepted", || {
            IOT_OTA_IsFetching(dev.ota) == 1
        });
    }

    pub fn publish(&self, payload: &[u8]) {
        self.client
            .publish(&self.upgrade_topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
        self.client.yield_for(Duration::from_millis(50)).unwrap();
    }

    /// Drives both sides until a progress report matching `pred` arrives; returns it.
    pub fn wait_progress(&self, dev: &Device, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.progress.lock().unwrap().iter().find(|m| pred(m)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no progress report {what}; got {:?}",
                self.progress.lock().unwrap()
            );
            dev.yield_ms(20);
            self.client.yield_for(Duration::from_millis(30)).unwrap();
        }
    }

    /// Failure reports received after driving both sides for a while (so a second one, if
    /// the SDK sent it, has arrived too); `expected`: wait for the first one up to [`WAIT`].
    pub fn failures(&self, dev: &Device, expected: bool) -> Vec<String> {
        let failed = |p: &Vec<String>| -> Vec<String> {
            p.iter().filter(|m| is_failure_report(m)).cloned().collect()
        };
        let deadline = Instant::now() + WAIT;
        while expected
            && failed(&self.progress.lock().unwrap()).is_empty()
            && Instant::now() < deadline
        {
            dev.yield_ms(20);
            self.client.yield_for(Duration::from_millis(30)).unwrap();
        }
        for _ in 0..10 {
            dev.yield_ms(20);
            self.client.yield_for(Duration::from_millis(30)).unwrap();
        }
        failed(&self.progress.lock().unwrap())
    }
}

/// A broker of its own, the platform and the device `dn` on it.
pub fn setup(dn: &str) -> (EmbeddedBroker, Device, Cloud) {
    let broker = EmbeddedBroker::start().expect("broker starts");
    let cloud = Cloud::new(broker.port(), dn);
    let dev = Device::new(broker.port(), dn);
    (broker, dev, cloud)
}

/// What the sample's loop ended with.
pub struct Fetched {
    pub image: Vec<u8>,
    /// Every return ≤ 0 of FetchYield, in order.
    pub failures: Vec<c_int>,
    /// A FetchYield that returned ≤ 0 had written into the buffer (its documentation: "only
    /// `buf[0..n)` is written, nothing on an error").
    pub wrote_on_error: bool,
}

impl Fetched {
    /// The first error FetchYield returned (a negative code), if any.
    pub fn error(&self) -> Option<c_int> {
        self.failures.iter().copied().find(|&n| n < 0)
    }
}

/// The iotkit sample's loop: FetchYield(…, 1 s) into a `buf_len`-byte buffer, append what it
/// returns, report FETCH_FAILED on every return ≤ 0, leave only when IsFetchFinish. Checks at
/// every call that nothing is written past `buf_len` nor past the count returned, and that
/// FETCHED_SIZE counts the bytes stored; notes a write on failure.
pub fn sample(dev: &Device, buf_len: usize) -> Fetched {
    let mut buf = vec![FILL; buf_len + GUARD];
    let mut out = Fetched {
        image: Vec::new(),
        failures: Vec::new(),
        wrote_on_error: false,
    };
    let deadline = Instant::now() + WAIT;
    while IOT_OTA_IsFetchFinish(dev.ota) == 0 {
        assert!(Instant::now() < deadline, "the download did not end");
        buf.fill(FILL);
        let n = unsafe {
            IOT_OTA_FetchYield(
                dev.ota,
                buf.as_mut_ptr().cast::<c_char>(),
                buf_len as u32,
                1,
            )
        };
        if n <= 0 {
            assert!(
                buf[buf_len..].iter().all(|&b| b == FILL),
                "FetchYield returned {n} and wrote past buf_len"
            );
            out.wrote_on_error |= buf.iter().any(|&b| b != FILL);
            out.failures.push(n);
            let rc = unsafe { IOT_OTA_ReportProgress(dev.ota, IOT_OTAP_FETCH_FAILED, null()) };
            assert!(rc <= 0);
        } else {
            let n = n as usize;
            assert!(n <= buf_len, "FetchYield returned {n} > buf_len");
            assert!(
                buf[n..].iter().all(|&b| b == FILL),
                "FetchYield wrote beyond the {n} bytes it returned"
            );
            out.image.extend_from_slice(&buf[..n]);
            assert_eq!(
                dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE),
                Ok(out.image.len() as u32),
                "FETCHED_SIZE counts the bytes stored"
            );
        }
        dev.yield_ms(0);
    }
    out
}
