//! Delta upgrades through the C ABI (issue 17): `IOT_OTA_SetDeltaSource(h, read, ctx,
//! old_size)` with an `extern "C"` reader over the running image, then the v2.3 calls as
//! firmware makes them. Real parts: the simulator's embedded MQTT broker, a client playing the
//! platform, and the patch (a committed fixture made by the real detools) over HTTP.

mod common;
use common::cmqtt::mqtt_param;
use common::delta::fixture;

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::ffi::delta::IOT_OTA_SetDeltaSource;
use ota::ffi::ioctl::IOT_OTA_Ioctl;
use ota::ffi::mqtt::{IOT_MQTT_Construct, IOT_MQTT_Destroy, IOT_MQTT_Yield};
use ota::ffi::ota::*;
use ota::mqtt::{MqttEvent, QoS};
use ota::{MqttClient, MqttOptions};
use ota_cloud::broker::EmbeddedBroker;
use ota_cloud::http::FirmwareServer;

const INVALID_PARAM: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int;
const INVALID_STATE: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_STATE as c_int;
const DELTA_REFUSED: c_int = IOT_OTA_Err_t::IOT_OTAE_DELTA_REFUSED as c_int;

const PK: &str = "pkDelta";
const WAIT: Duration = Duration::from_secs(10);
const FIRMWARE_BUF: usize = 1000;
/// Bytes of 0xAA after the firmware's buffer, checked after every call.
const GUARD: usize = 64;
const FILL: u8 = 0xAA;

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// How the test's reader of the running image answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Honest,
    /// The `n`-th read (from 1) returns -1.
    FailsAt(usize),
    /// The `n`-th read copies its bytes and returns `len - 1`.
    ShortAt(usize),
    /// The `n`-th read copies its bytes and returns `len + 1`.
    LongAt(usize),
}

/// The running image as firmware would read it from flash; `ctx` of [`read_old`].
struct Flash {
    image: Vec<u8>,
    /// The `old_size` given to IOT_OTA_SetDeltaSource.
    declared: u32,
    answer: Answer,
    reads: AtomicUsize,
    /// Reads outside `declared` (the SDK promises none).
    outside: AtomicUsize,
    /// Reads made while IOT_OTA_SetDeltaSource computed the image's SHA-256 (one pass over
    /// it): `answer` counts the reads after them, those of the patch.
    at_set: AtomicUsize,
}

/// The firmware's `IOT_OTA_OldImageRead`.
unsafe extern "C" fn read_old(ctx: *mut c_void, offset: u32, buf: *mut u8, len: u32) -> c_int {
    let flash = &*(ctx as *const Flash);
    let n = (flash.reads.fetch_add(1, SeqCst) + 1).wrapping_sub(flash.at_set.load(SeqCst));
    let (at, len) = (offset as usize, len as usize);
    if buf.is_null() || at + len > flash.declared as usize || at + len > flash.image.len() {
        flash.outside.fetch_add(1, SeqCst);
        return -1;
    }
    match flash.answer {
        Answer::FailsAt(k) if k == n => return -1,
        _ => {}
    }
    std::ptr::copy_nonoverlapping(flash.image[at..].as_ptr(), buf, len);
    match flash.answer {
        Answer::ShortAt(k) if k == n => len as c_int - 1,
        Answer::LongAt(k) if k == n => len as c_int + 1,
        _ => len as c_int,
    }
}

/// The device, built purely through the C functions.
struct Device {
    mqtt: *mut c_void,
    ota: *mut c_void,
}

impl Device {
    fn new(port: u16, dn: &str) -> Device {
        let subacks: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let client_id: &'static CString = Box::leak(Box::new(cstring(&format!("{PK}.{dn}"))));
        let mut param = mqtt_param(port, client_id, subacks);
        let mqtt = unsafe { IOT_MQTT_Construct(&mut param) };
        assert!(!mqtt.is_null(), "IOT_MQTT_Construct");
        let (pk, dn) = (cstring(PK), cstring(dn));
        let ota = unsafe { IOT_OTA_Init(pk.as_ptr(), dn.as_ptr(), mqtt) };
        assert!(!ota.is_null(), "IOT_OTA_Init");
        let d = Device { mqtt, ota };
        d.wait_until("the upgrade topic subscription is acknowledged", || {
            subacks.load(SeqCst) > 0
        });
        d
    }

    fn yield_ms(&self, ms: c_int) {
        assert_eq!(unsafe { IOT_MQTT_Yield(self.mqtt, ms) }, 0);
    }

    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            self.yield_ms(50);
        }
    }

    fn ioctl_u32(&self, kind: c_int) -> Result<u32, c_int> {
        let mut v = [FILL; 4 + GUARD];
        let rc = unsafe { IOT_OTA_Ioctl(self.ota, kind, v.as_mut_ptr().cast(), 4) };
        assert!(v[4..].iter().all(|&b| b == FILL), "Ioctl wrote past 4");
        match rc {
            0 => Ok(u32::from_ne_bytes(v[..4].try_into().unwrap())),
            rc => Err(rc),
        }
    }

    fn set_delta_source(&self, flash: &Flash) -> c_int {
        let ctx = flash as *const Flash as *mut c_void;
        // Honest while the SDK reads the whole image to know its SHA-256.
        flash.at_set.store(usize::MAX / 2, SeqCst);
        let rc = unsafe { IOT_OTA_SetDeltaSource(self.ota, Some(read_old), ctx, flash.declared) };
        flash.at_set.store(flash.reads.load(SeqCst), SeqCst);
        rc
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        unsafe {
            IOT_OTA_Deinit(self.ota);
            IOT_MQTT_Destroy(&mut self.mqtt);
        }
    }
}

/// The platform: publishes the upgrade and records the device's progress reports.
struct Cloud {
    client: MqttClient,
    dn: String,
    progress: Arc<Mutex<Vec<String>>>,
}

impl Cloud {
    fn new(port: u16, dn: &str) -> Cloud {
        let client =
            MqttClient::connect(&MqttOptions::new("127.0.0.1", port, &format!("cloud.{dn}")))
                .expect("cloud connects");
        let acks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&acks);
        client.on_event(move |e| {
            if matches!(e, MqttEvent::SubscribeAck { .. }) {
                counter.fetch_add(1, SeqCst);
            }
        });
        let progress = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&progress);
        let topic = format!("/ota/device/progress/{PK}/{dn}");
        client
            .subscribe(&topic, QoS::AtLeastOnce, move |m| {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(m.payload).into_owned());
            })
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while acks.load(SeqCst) == 0 {
            assert!(Instant::now() < deadline, "cloud subscription");
            client.yield_for(Duration::from_millis(50)).unwrap();
        }
        Cloud {
            client,
            dn: dn.to_string(),
            progress,
        }
    }

    /// Announces `served` at `url` and waits until the device is fetching.
    fn announce(&self, dev: &Device, served: &[u8], url: &str) {
        let msg = common::firmware::aliyun_notice(served, url, "2.0.0");
        let topic = format!("/ota/device/upgrade/{PK}/{}", self.dn);
        self.client
            .publish(&topic, QoS::AtLeastOnce, false, msg.as_bytes())
            .unwrap();
        self.client.yield_for(Duration::from_millis(50)).unwrap();
        dev.wait_until("the upgrade is accepted", || {
            IOT_OTA_IsFetching(dev.ota) == 1
        });
    }

    /// Failure reports received after driving both sides for a while (so a second one, if
    /// the SDK sent it, has arrived too); `expected`: wait for the first one up to [`WAIT`].
    fn failures(&self, dev: &Device, expected: bool) -> Vec<String> {
        let failed = |p: &Vec<String>| -> Vec<String> {
            p.iter()
                .filter(|m| m.contains(r#""step":"-"#))
                .cloned()
                .collect()
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

fn setup(dn: &str) -> (EmbeddedBroker, Device, Cloud) {
    let broker = EmbeddedBroker::start().expect("broker starts");
    let cloud = Cloud::new(broker.port(), dn);
    let dev = Device::new(broker.port(), dn);
    (broker, dev, cloud)
}

/// What the sample's loop ended with.
struct Fetched {
    image: Vec<u8>,
    /// Every return ≤ 0 of FetchYield.
    failures: Vec<c_int>,
    /// A FetchYield that returned an error had written into the buffer (its documentation:
    /// "only `buf[0..n)` is written, nothing on an error").
    wrote_on_error: bool,
}

/// The iotkit sample's loop: FetchYield into a 1000-byte buffer, append what it returns,
/// report FETCH_FAILED on ≤ 0, leave on IsFetchFinish. Checks that nothing is written past the
/// count returned and that FETCHED_SIZE follows; notes a write on failure.
fn sample(dev: &Device) -> Fetched {
    let mut buf = vec![FILL; FIRMWARE_BUF + GUARD];
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
                FIRMWARE_BUF as u32,
                1,
            )
        };
        if n <= 0 {
            assert!(
                buf[FIRMWARE_BUF..].iter().all(|&b| b == FILL),
                "wrote past buf_len"
            );
            out.wrote_on_error |= buf.iter().any(|&b| b != FILL);
            out.failures.push(n);
            let rc = unsafe { IOT_OTA_ReportProgress(dev.ota, IOT_OTAP_FETCH_FAILED, null()) };
            assert!(rc <= 0);
        } else {
            let n = n as usize;
            assert!(n <= FIRMWARE_BUF);
            assert!(buf[n..].iter().all(|&b| b == FILL), "wrote beyond {n}");
            out.image.extend_from_slice(&buf[..n]);
            assert_eq!(
                dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE),
                Ok(out.image.len() as u32)
            );
        }
        dev.yield_ms(0);
    }
    out
}

fn flash(pair: &str, answer: Answer) -> &'static Flash {
    let image = fixture(&format!("{pair}.old"));
    Box::leak(Box::new(Flash {
        declared: image.len() as u32,
        image,
        answer,
        reads: AtomicUsize::new(0),
        outside: AtomicUsize::new(0),
        at_set: AtomicUsize::new(0),
    }))
}

#[test]
fn set_delta_source_checks_its_arguments_and_the_state() {
    let (_broker, dev, cloud) = setup("args");
    let old = flash("inserted-block", Answer::Honest);
    let ctx = old as *const Flash as *mut c_void;
    assert_eq!(
        unsafe { IOT_OTA_SetDeltaSource(null_mut(), Some(read_old), ctx, old.declared) },
        INVALID_PARAM,
        "NULL handle"
    );
    assert_eq!(
        unsafe { IOT_OTA_SetDeltaSource(dev.ota, None, ctx, old.declared) },
        INVALID_PARAM,
        "NULL read"
    );
    assert_eq!(IOT_OTA_GetLastError(dev.ota), INVALID_PARAM);
    // A NULL ctx is the firmware's business (its reader may need none).
    // Once an upgrade is accepted, the source is too late for it.
    let server = FirmwareServer::start(fixture("inserted-block.heatshrink.patch")).unwrap();
    let patch = fixture("inserted-block.heatshrink.patch");
    cloud.announce(&dev, &patch, &server.url());
    assert_eq!(dev.set_delta_source(old), INVALID_STATE);
    assert_eq!(IOT_OTA_GetLastError(dev.ota), INVALID_STATE);
    // The download goes on as a plain one: the firmware gets the patch's bytes.
    let got = sample(&dev);
    assert!(got.failures.is_empty() && got.image == patch);
    assert_eq!(
        old.reads.load(SeqCst),
        0,
        "the refused reader is never called"
    );
    assert_eq!(dev.set_delta_source(old), INVALID_STATE, "nor after it");
}

#[test]
fn a_delta_upgrade_through_the_c_api_gives_the_new_image() {
    for compression in ["heatshrink", "none"] {
        let dn = format!("good-{compression}");
        let (_broker, dev, cloud) = setup(&dn);
        let old = flash("inserted-block", Answer::Honest);
        assert_eq!(dev.set_delta_source(old), 0);
        let patch = fixture(&format!("inserted-block.{compression}.patch"));
        let new = fixture("inserted-block.new");
        let server = FirmwareServer::start(patch.clone()).unwrap();
        assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(0));
        cloud.announce(&dev, &patch, &server.url());
        let got = sample(&dev);
        assert_eq!(got.failures, [] as [c_int; 0], "{compression}");
        assert!(!got.wrote_on_error);
        assert!(got.image == new, "{compression}: {} bytes", got.image.len());
        let len = new.len() as u32;
        assert_eq!(dev.ioctl_u32(IOT_OTAG_FETCHED_SIZE), Ok(len));
        assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(len));
        assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(1));
        assert!(old.reads.load(SeqCst) > 0, "the old image was read");
        assert_eq!(old.outside.load(SeqCst), 0, "a read outside old_size");
        assert_eq!(cloud.failures(&dev, false), [] as [String; 0]);
    }
}

/// A reader that misbehaves once: FetchYield ≤ 0, IOT_OTAE_DELTA_REFUSED as the last error,
/// one failure report, CHECK_FIRMWARE 0, and what the firmware got is the new image's start.
fn misread(dn: &str, answer: Answer) -> Fetched {
    let (_broker, dev, cloud) = setup(dn);
    let old = flash("inserted-block", answer);
    assert_eq!(dev.set_delta_source(old), 0);
    let patch = fixture("inserted-block.heatshrink.patch");
    let new = fixture("inserted-block.new");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    cloud.announce(&dev, &patch, &server.url());
    let got = sample(&dev);
    assert_eq!(
        got.failures.first(),
        Some(&DELTA_REFUSED),
        "{answer:?}: {:?}",
        got.failures
    );
    assert_eq!(IOT_OTA_GetLastError(dev.ota), DELTA_REFUSED, "{answer:?}");
    assert_eq!(dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE), Ok(0), "{answer:?}");
    assert!(
        got.image.len() < new.len() && got.image[..] == new[..got.image.len()],
        "{answer:?}: {} bytes that are not the new image's start",
        got.image.len()
    );
    let failures = cloud.failures(&dev, true);
    assert_eq!(failures.len(), 1, "{answer:?}: {failures:?}");
    assert!(
        failures[0].contains("old image could not be read"),
        "{failures:?}"
    );
    assert_eq!(old.outside.load(SeqCst), 0);
    // The failing read was the last one: nothing is read after a refusal.
    let at = match answer {
        Answer::FailsAt(k) | Answer::ShortAt(k) | Answer::LongAt(k) => k,
        Answer::Honest => unreachable!(),
    };
    assert_eq!(
        old.reads.load(SeqCst) - old.at_set.load(SeqCst),
        at,
        "{answer:?}"
    );
    got
}

#[test]
fn a_read_callback_returning_minus_one_refuses_the_patch() {
    misread("fails-first", Answer::FailsAt(1));
    misread("fails-later", Answer::FailsAt(5));
}

#[test]
fn a_read_callback_returning_fewer_bytes_than_asked_refuses_the_patch() {
    misread("short", Answer::ShortAt(3));
}

#[test]
fn a_read_callback_claiming_more_bytes_than_asked_is_not_trusted() {
    misread("long", Answer::LongAt(2));
}

#[test]
fn a_fetch_yield_that_refuses_the_patch_writes_nothing() {
    // IOT_OTA_FetchYield: "only buf[0..n) is written, nothing on an error".
    for (dn, answer) in [
        ("nw-fails", Answer::FailsAt(5)),
        ("nw-short", Answer::ShortAt(3)),
        ("nw-long", Answer::LongAt(2)),
    ] {
        assert!(!misread(dn, answer).wrote_on_error, "{answer:?}");
    }
}
