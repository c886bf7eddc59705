//! The breakpoint record's less travelled paths: stores that fail, records without a digest
//! state (the firmware re-feeds its bytes), records the session cannot hold, completion reports
//! that cannot be sent after a reboot, and the record API's own checks.

mod common;
use common::flaky::{Flaky, QUEUE_FULL};
use common::recorder::{payloads, Sent};

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota::error::{Error, FetchError};
use ota::fetch::MemorySource;
use ota::protocol::{Limits, UpgradeNotice};
use ota::resume::{
    Breakpoint, BreakpointStore, FileStore, LoadError, MemoryStore, RecordState, SavePolicy,
    StoreError, RECORD_LEN,
};
use ota::{OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::cloud::Firmware;

const URL: &str = "http://h/f.bin";

fn image(len: usize, seed: u8) -> &'static [u8] {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect();
    Box::leak(v.into_boxed_slice())
}

fn tencent(img: &[u8], version: &str) -> String {
    ota_cloud::tencent::update_message(&Firmware::new(version, URL, img))
}

/// A [`MemoryStore`] the test keeps a handle on, whose saves and erases can be made to fail.
#[derive(Clone, Default)]
struct Shared {
    mem: Arc<Mutex<MemoryStore>>,
    fail_save: Arc<AtomicBool>,
    fail_erase: Arc<AtomicBool>,
}

impl Shared {
    /// A store holding a copy of this one's record (a second boot from the same flash).
    fn copy(&self) -> Shared {
        Shared {
            mem: Arc::new(Mutex::new(self.mem.lock().unwrap().clone())),
            ..Shared::default()
        }
    }

    fn contents(&self) -> Vec<u8> {
        self.mem.lock().unwrap().contents().to_vec()
    }

    fn record(&self) -> Breakpoint {
        Breakpoint::load(&mut *self.mem.lock().unwrap()).unwrap()
    }
}

impl BreakpointStore for Shared {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        self.mem.lock().unwrap().load(buf)
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if self.fail_save.load(Ordering::SeqCst) {
            return Err(StoreError::Io(ErrorKind::StorageFull));
        }
        self.mem.lock().unwrap().save(bytes)
    }

    fn erase(&mut self) -> Result<(), StoreError> {
        if self.fail_erase.load(Ordering::SeqCst) {
            return Err(StoreError::Callback(-1));
        }
        self.mem.lock().unwrap().erase()
    }
}

struct Device {
    s: OtaSession,
    sent: Sent,
    down: Arc<std::sync::atomic::AtomicBool>,
}

/// A device booting with `store`, saving every 100 bytes.
fn boot(protocol: Protocol, limits: Limits, img: &'static [u8], store: &Shared) -> Device {
    let sent: Sent = Arc::default();
    let (uplink, down) = Flaky::new(sent.clone());
    let config = OtaConfig {
        limits,
        ..OtaConfig::for_protocol(protocol)
    };
    let s = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(uplink),
        Box::new(MemorySource::new(img)),
    )
    .unwrap();
    s.set_breakpoint_store(Box::new(store.clone())).unwrap();
    s.set_save_policy(SavePolicy {
        every_bytes: 100,
        every_percent: 0,
    });
    Device { s, sent, down }
}

impl Device {
    fn announce(&self, msg: &str) {
        self.s
            .handle_message(self.s.downstream_topic(), msg.as_bytes())
            .unwrap();
    }

    /// Fetches in 100-byte reads until `stop_at` bytes or the end.
    fn fetch_to(&self, stop_at: u64) {
        let mut buf = [0u8; 100];
        while !self.s.is_fetch_finished() && self.s.fetched_size() < stop_at {
            self.s
                .fetch_yield(&mut buf, Duration::from_secs(1))
                .unwrap();
        }
    }

    fn payloads(&self) -> Vec<String> {
        payloads(&self.sent)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

fn report(state: &str, code: i32, msg: &str, version: &str) -> String {
    format!(
        r#"{{"type":"report_progress","report":{{"progress":{{"state":"{state}","result_code":"{code}","result_msg":"{msg}"}},"version":"{version}"}}}}"#
    )
}

#[test]
fn a_store_that_cannot_save_or_erase_does_not_stop_the_upgrade() {
    let img = image(1000, 1);
    let store = Shared::default();
    store.fail_save.store(true, Ordering::SeqCst);
    let d = boot(Protocol::Tencent, Limits::default(), img, &store);
    d.announce(&tencent(img, "2.0.0"));
    d.fetch_to(u64::MAX);
    assert!(d.s.check_firmware().unwrap());
    assert!(store.contents().is_empty(), "nothing could be saved");

    // Saving works again, erasing does not: the success is reported all the same.
    let store = Shared::default();
    let d = boot(Protocol::Tencent, Limits::default(), img, &store);
    d.announce(&tencent(img, "2.0.0"));
    d.fetch_to(u64::MAX);
    assert!(d.s.check_firmware().unwrap());
    assert_eq!(store.record().state(), RecordState::PendingReboot);
    store.fail_erase.store(true, Ordering::SeqCst);
    d.s.report_upgrade_success("2.0.0").unwrap();
    assert_eq!(
        d.payloads().last().unwrap(),
        &report("done", 0, "", "2.0.0")
    );
}

#[test]
fn a_record_without_digest_state_needs_the_firmware_to_refeed_its_bytes() {
    let img = image(1000, 2);
    let store = Shared::default();
    let d = boot(Protocol::Tencent, Limits::default(), img, &store);
    d.announce(&tencent(img, "2.0.0"));
    d.fetch_to(300);
    // Saved at the start of a FetchYield: the record covers what earlier calls returned.
    assert_eq!(store.record().offset(), 200);
    assert!(store.record().restore_digest().is_some());
    // The firmware restarts the digest and feeds only part of what it holds: from now on the
    // digest does not cover exactly the fetched bytes, so the record cannot hold its state.
    d.s.reset_client_digest().unwrap();
    d.s.update_client_digest(&img[..200]).unwrap();
    d.fetch_to(400);
    drop(d); // power cut
    let bp = store.record();
    assert_eq!((bp.state(), bp.offset()), (RecordState::Downloading, 300));
    assert!(bp.digest_state().is_empty() && bp.restore_digest().is_none());

    // After the restart the download resumes at 300; without the first 300 bytes fed back the
    // digest cannot cover the image, and the image is rejected.
    let d = boot(Protocol::Tencent, Limits::default(), img, &store.copy());
    d.s.report_version("1.0.0").unwrap();
    d.announce(&tencent(img, "2.0.0"));
    assert_eq!(d.s.fetched_size(), 300);
    d.fetch_to(u64::MAX);
    assert!(!d.s.check_firmware().unwrap());
    assert_eq!(
        d.s.last_error(),
        Some(Error::Fetch(FetchError::BadResponse(
            "digest does not cover the whole image"
        )))
    );
    assert_eq!(
        d.payloads().last().unwrap(),
        &report(
            "fail",
            -4,
            "verify failed: the digest does not cover the whole image",
            "2.0.0"
        )
    );

    // Fed back, they verify.
    let d = boot(Protocol::Tencent, Limits::default(), img, &store.copy());
    d.announce(&tencent(img, "2.0.0"));
    assert_eq!(d.s.fetched_size(), 300);
    d.s.update_client_digest(&img[..300]).unwrap();
    d.fetch_to(u64::MAX);
    assert!(d.s.check_firmware().unwrap());
}

#[test]
fn a_version_longer_than_a_record_holds_downloads_without_a_record() {
    let limits = Limits {
        version: 100,
        ..Limits::default()
    };
    let img = image(1000, 3);
    let version = format!("2.0.0-{}", "x".repeat(64));
    let store = Shared::default();
    let d = boot(Protocol::Tencent, limits, img, &store);
    d.announce(&tencent(img, &version));
    assert_eq!(d.s.state(), OtaState::Fetching);
    d.fetch_to(u64::MAX);
    assert!(d.s.check_firmware().unwrap());
    assert!(store.contents().is_empty(), "no record was ever written");
    d.s.report_upgrade_success(&version).unwrap();
    assert_eq!(
        d.payloads().last().unwrap(),
        &report("done", 0, "", &version)
    );
}

/// A Tencent device that downloaded and verified `version`, then rebooted: its store.
fn pending_reboot(img: &'static [u8], version: &str) -> Shared {
    let store = Shared::default();
    let d = boot(Protocol::Tencent, Limits::default(), img, &store);
    d.announce(&tencent(img, version));
    d.fetch_to(u64::MAX);
    assert!(d.s.check_firmware().unwrap());
    assert_eq!(store.record().pending_version(), Some(version));
    store
}

#[test]
fn a_pending_record_the_new_session_cannot_hold_is_dropped() {
    let img = image(500, 4);
    let version = "2.0.0-rc.1+build.20261124";
    let store = pending_reboot(img, version);
    // The same firmware with smaller limits: the record's version does not fit its notice.
    let limits = Limits {
        version: 10,
        ..Limits::default()
    };
    let d = boot(Protocol::Tencent, limits, img, &store.copy());
    d.s.report_version("1.0.0").unwrap();
    assert_eq!(
        d.payloads(),
        [r#"{"type":"report_version","report":{"version":"1.0.0"}}"#],
        "only the version report: the outcome cannot be told in the platform's terms"
    );
    assert_eq!(d.s.state(), OtaState::Idle);

    // With room for it, the rollback is reported as the upgrade's failure first.
    let copy = store.copy();
    let d = boot(Protocol::Tencent, Limits::default(), img, &copy);
    d.s.report_version("1.0.0").unwrap();
    assert_eq!(
        d.payloads(),
        [
            report(
                "fail",
                -5,
                "the device did not boot the new firmware",
                version
            ),
            r#"{"type":"report_version","report":{"version":"1.0.0"}}"#.to_string()
        ]
    );
    assert!(copy.contents().is_empty(), "the record is used up");
}

#[test]
fn reboot_reports_that_cannot_be_sent_fail_the_version_report() {
    let img = image(500, 5);
    let store = pending_reboot(img, "2.0.0");
    for running in ["2.0.0", "1.0.0"] {
        let copy = store.copy();
        let d = boot(Protocol::Tencent, Limits::default(), img, &copy);
        d.set_down(true);
        assert_eq!(d.s.report_version(running), Err(QUEUE_FULL), "{running}");
        assert_eq!(d.s.last_error(), Some(QUEUE_FULL));
        assert!(d.payloads().is_empty());
    }
}

/// A store that claims a record longer than the buffer it was given.
struct Overlong;

impl BreakpointStore for Overlong {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        Ok(buf.len() + 10)
    }
    fn save(&mut self, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn erase(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn a_store_that_overstates_its_record_is_not_trusted() {
    assert_eq!(
        Breakpoint::load(&mut Overlong).unwrap_err(),
        LoadError::Store(StoreError::TooLarge {
            len: RECORD_LEN + 11,
            max: RECORD_LEN + 1
        })
    );
    // The engine then starts the download from byte 0 and completes it.
    let img = image(700, 6);
    let sent: Sent = Arc::default();
    let (uplink, _) = Flaky::new(sent);
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(Protocol::Tencent),
        Box::new(uplink),
        Box::new(MemorySource::new(img)),
    )
    .unwrap();
    s.set_breakpoint_store(Box::new(Overlong)).unwrap();
    s.report_version("1.0.0").unwrap();
    s.handle_message(s.downstream_topic(), tencent(img, "2.0.0").as_bytes())
        .unwrap();
    assert_eq!(s.fetched_size(), 0);
    let mut buf = [0u8; 1000];
    while !s.is_fetch_finished() {
        s.fetch_yield(&mut buf, Duration::ZERO).unwrap();
    }
    assert!(s.check_firmware().unwrap());
}

#[test]
fn a_record_needs_a_size_and_a_version() {
    let limits = Limits::default();
    let mut notice = UpgradeNotice::new(&limits);
    let refused = Err(Error::InvalidParam(
        "breakpoint: image size 0 or empty version",
    ));
    assert_eq!(
        Breakpoint::for_upgrade(Protocol::Aliyun, &notice).map(|_| ()),
        refused
    );
    notice.size = 10;
    assert_eq!(
        Breakpoint::for_upgrade(Protocol::Aliyun, &notice).map(|_| ()),
        refused
    );
    notice.version.set("1.0").unwrap();
    let bp = Breakpoint::for_upgrade(Protocol::Aliyun, &notice).unwrap();
    assert_eq!((bp.size(), bp.offset(), bp.version()), (10, 0, "1.0"));
}

#[test]
fn file_store_reports_what_the_file_system_refuses() {
    let dir = std::env::temp_dir().join(format!("ota-resume-edges-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut buf = [0u8; RECORD_LEN];

    // Missing: nothing stored, not an error.
    assert_eq!(FileStore::new(dir.join("none.bp")).load(&mut buf), Ok(0));
    // Below a regular file: the path cannot exist.
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(
        FileStore::new(file.join("ota.bp")).load(&mut buf),
        Err(StoreError::Io(ErrorKind::NotADirectory))
    );
    // A directory where the record should be: it opens, but cannot be read.
    assert_eq!(
        FileStore::new(&dir).load(&mut buf),
        Err(StoreError::Io(ErrorKind::IsADirectory))
    );
    assert_eq!(
        Breakpoint::load(&mut FileStore::new(&dir)).unwrap_err(),
        LoadError::Store(StoreError::Io(ErrorKind::IsADirectory))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
