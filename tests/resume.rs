//! Resume across restarts with the breakpoint record: a session dropped mid-download (a power
//! cut, as far as the SDK can tell) or a device killed, and a new session that continues from
//! the record in a real file (atomic writes); success or failure reported after the reboot;
//! and the record's less travelled paths: stores that fail, records without a digest state (the
//! firmware re-feeds its bytes), records the session cannot hold, completion reports that
//! cannot be sent after a reboot, the record API's own checks.

mod common;
use common::firmware::{aliyun_notice, image};
use common::flaky::{Flaky, QUEUE_FULL};
use common::recorder::{payloads, Recorder, Sent};

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota::error::{DownloadError, Error};
use ota::protocol::{Limits, UpgradeNotice};
use ota::resume::{
    Breakpoint, BreakpointStore, FileStore, LoadError, MemoryStore, RecordState, SavePolicy,
    StoreError, RECORD_LEN,
};
use ota::source::{HttpConfig, HttpSource, MemorySource};
use ota::{OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::cloud::Firmware;
use ota_cloud::http::FirmwareServer;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ota-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A session as firmware builds it after a (re)boot: with the breakpoint file.
fn boot_from_file(protocol: Protocol, record: &Path, policy: SavePolicy) -> (OtaSession, Sent) {
    let sent: Sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(protocol),
        Box::new(Recorder(sent.clone())),
        Box::new(HttpSource::new(HttpConfig::default()).unwrap()),
    )
    .unwrap();
    s.set_breakpoint_store(Box::new(FileStore::new(record)))
        .unwrap();
    s.set_save_policy(policy);
    (s, sent)
}

/// Downloads into `flash` at the offset the session reports, until `stop_at` bytes or the end.
fn fetch_into(s: &OtaSession, flash: &mut [u8], stop_at: u64) {
    let mut buf = vec![0u8; 5000];
    while !s.is_fetch_finished() && s.fetched_size() < stop_at {
        let at = s.fetched_size() as usize;
        let n = s.fetch_yield(&mut buf, Duration::from_secs(2)).unwrap();
        flash[at..at + n].copy_from_slice(&buf[..n]);
    }
}

const EVERY_64K: SavePolicy = SavePolicy {
    every_bytes: 64 * 1024,
    every_percent: 0,
};

const URL: &str = "http://h/f.bin";

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
    let config = OtaConfig {
        limits,
        ..OtaConfig::for_protocol(protocol)
    };
    boot_with(config, img, store)
}

/// [`boot`] with any session settings.
fn boot_with(config: OtaConfig, img: &'static [u8], store: &Shared) -> Device {
    let sent: Sent = Arc::default();
    let (uplink, down) = Flaky::new(sent.clone());
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

/// Downloads cut by a restart or a kill, resumed from the record in a file.
mod restarts {
    use super::*;

    /// A signed image (the ECDSA fixture), and a policy requiring its key.
    fn signed() -> (&'static [u8], ota::image::ImagePolicy) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcuboot");
        let image = std::fs::read(format!("{dir}/ecdsa-p256.bin")).unwrap();
        let key = std::fs::read(format!("{dir}/test-only-ecdsa-p256.pub.pem")).unwrap();
        let policy = ota::image::ImagePolicy {
            keys: vec![ota::image::ImageKey::parse(&key).unwrap()],
            require_signature: true,
            ..Default::default()
        };
        (Box::leak(image.into_boxed_slice()), policy)
    }

    /// A device under `policy` booting with `store`.
    fn boot_signed(img: &'static [u8], policy: &ota::image::ImagePolicy, store: &Shared) -> Device {
        let config = OtaConfig {
            image: policy.clone(),
            ..OtaConfig::default()
        };
        boot_with(config, img, store)
    }

    #[test]
    fn a_signed_download_cut_by_a_restart_resumes_its_checks_from_the_record() {
        let (img, policy) = signed();
        let msg = aliyun_notice(img, URL, "2.0.0");
        let store = Shared::default();
        let d = boot_signed(img, &policy, &store);
        d.announce(&msg);
        d.fetch_to(1500);
        drop(d); // power cut
        let record = store.record();
        assert!(record.offset() > 0 && !record.image_state().is_empty());

        let d = boot_signed(img, &policy, &store);
        d.announce(&msg);
        assert_eq!(
            d.s.fetched_size(),
            record.offset(),
            "resumed from the record"
        );
        d.fetch_to(u64::MAX);
        assert!(d.s.check_firmware().unwrap(), "{:?}", d.s.last_error());
        assert!(d.s.verified_image().unwrap().signed);
    }

    #[test]
    fn a_record_without_image_checks_starts_over_when_signatures_are_required() {
        let (img, policy) = signed();
        let msg = aliyun_notice(img, URL, "2.0.0");
        // A record as an earlier build (no image checks) leaves it: 1500 bytes in.
        let store = Shared::default();
        let d = boot_signed(img, &ota::image::ImagePolicy::default(), &store);
        d.announce(&msg);
        d.fetch_to(1500);
        drop(d);
        let mut bp = store.record();
        let offset = bp.offset();
        bp.set_progress(offset, bp.restore_digest().as_ref(), None)
            .unwrap();
        bp.save(&mut store.clone()).unwrap();

        let d = boot_signed(img, &policy, &store);
        d.announce(&msg);
        assert_eq!(d.s.fetched_size(), 0, "the image's checks need every byte");
        d.fetch_to(u64::MAX);
        assert!(d.s.check_firmware().unwrap(), "{:?}", d.s.last_error());
        assert!(d.s.verified_image().unwrap().signed);
    }

    #[test]
    fn a_download_cut_by_a_restart_resumes_from_the_record() {
        let dir = temp_dir("cut");
        let record = dir.join("ota.bp");
        let image = ota_cloud::generate_firmware(1_000_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        let mut flash = vec![0u8; image.len()];

        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        s.handle_message(s.downstream_topic(), msg.as_bytes())
            .unwrap();
        fetch_into(&s, &mut flash, 456_789);
        let reached = s.fetched_size();
        drop(s); // power cut: no clean shutdown

        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        s.report_version("1.0.0").unwrap();
        s.handle_message(s.downstream_topic(), msg.as_bytes())
            .unwrap();
        let resumed_at = s.fetched_size();
        assert!(resumed_at > 0, "resumed from the record");
        assert!(
            reached - resumed_at <= 64 * 1024,
            "refetched {} bytes, more than one save interval",
            reached - resumed_at
        );
        fetch_into(&s, &mut flash, u64::MAX);
        assert!(flash == image);
        assert!(
            s.check_firmware().unwrap(),
            "the restored digest covers the whole image"
        );
        let last = server.requests().last().unwrap().range.clone();
        assert_eq!(last, Some(format!("bytes={resumed_at}-")));
    }

    #[test]
    fn a_record_for_another_upgrade_is_discarded() {
        let dir = temp_dir("other");
        let record = dir.join("ota.bp");
        let image = ota_cloud::generate_firmware(300_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let mut flash = vec![0u8; image.len()];
        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        s.handle_message(s.downstream_topic(), msg.as_bytes())
            .unwrap();
        fetch_into(&s, &mut flash, 200_000);
        drop(s);

        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        let other = aliyun_notice(&image, &server.url(), "2.0.1");
        s.handle_message(s.downstream_topic(), other.as_bytes())
            .unwrap();
        assert_eq!(s.fetched_size(), 0, "another version starts from 0");
        fetch_into(&s, &mut flash, u64::MAX);
        assert!(s.check_firmware().unwrap());
    }

    #[test]
    fn a_torn_or_corrupt_record_is_ignored() {
        let image = ota_cloud::generate_firmware(300_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        for damage in ["torn", "flipped"] {
            let dir = temp_dir(damage);
            let record = dir.join("ota.bp");
            let mut flash = vec![0u8; image.len()];
            let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
            s.handle_message(s.downstream_topic(), msg.as_bytes())
                .unwrap();
            fetch_into(&s, &mut flash, 200_000);
            drop(s);
            let mut bytes = std::fs::read(&record).unwrap();
            if damage == "torn" {
                bytes.truncate(bytes.len() / 2);
            } else {
                bytes[60] ^= 0x10;
            }
            std::fs::write(&record, bytes).unwrap();

            let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
            s.handle_message(s.downstream_topic(), msg.as_bytes())
                .unwrap();
            assert_eq!(s.fetched_size(), 0, "{damage} record is not trusted");
            fetch_into(&s, &mut flash, u64::MAX);
            assert!(s.check_firmware().unwrap());
        }
    }

    /// The device side of the SIGKILL test, run in a child process (this test binary again):
    /// downloads into the flash file at the offsets the session reports, slowly, printing its
    /// offset after every write.
    #[test]
    #[ignore = "a child process of killed_mid_download_resumes_after_restart"]
    fn sigkill_child_device() {
        let Ok(flash_path) = std::env::var("OTA_CHILD_FLASH") else {
            return;
        };
        use std::io::{Seek, SeekFrom, Write};
        let record = PathBuf::from(std::env::var("OTA_CHILD_RECORD").unwrap());
        let msg = std::env::var("OTA_CHILD_NOTICE").unwrap();
        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        s.handle_message(s.downstream_topic(), msg.as_bytes())
            .unwrap();
        let mut flash = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&flash_path)
            .unwrap();
        let mut buf = vec![0u8; 5000];
        let mut out = std::io::stdout();
        while !s.is_fetch_finished() {
            let at = s.fetched_size();
            let n = s.fetch_yield(&mut buf, Duration::from_secs(2)).unwrap();
            flash.seek(SeekFrom::Start(at)).unwrap();
            flash.write_all(&buf[..n]).unwrap();
            flash.sync_data().unwrap();
            writeln!(out, "offset {}", at + n as u64).unwrap();
            out.flush().unwrap();
            // A slow device, so that the kill lands mid-download: pacing, not a synchronisation.
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(s.check_firmware().unwrap());
        writeln!(out, "verified").unwrap();
    }

    #[test]
    fn killed_mid_download_resumes_after_restart() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let dir = temp_dir("sigkill");
        let record = dir.join("ota.bp");
        let flash_path = dir.join("flash.bin");
        let image = ota_cloud::generate_firmware(2_000_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        let child = |capture: bool| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "restarts::sigkill_child_device",
                    "--nocapture",
                ])
                .env("OTA_CHILD_FLASH", &flash_path)
                .env("OTA_CHILD_RECORD", &record)
                .env("OTA_CHILD_NOTICE", &msg)
                .stdout(if capture {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut first = child(true);
        let lines = BufReader::new(first.stdout.take().unwrap());
        let mut written = 0u64;
        for line in lines.lines() {
            let line = line.unwrap();
            if let Some(v) = line.strip_prefix("offset ") {
                written = v.parse().unwrap();
                if written > 900_000 {
                    break;
                }
            }
        }
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        // What the device had written when it died (it may have gone on after its last line).
        let written = std::fs::metadata(&flash_path).unwrap().len().max(written);
        assert!(
            written > 900_000 && written < image.len() as u64,
            "killed mid-download"
        );

        let status = child(false).wait().unwrap();
        assert!(status.success(), "the restarted device finished");
        assert!(std::fs::read(&flash_path).unwrap() == image, "byte-exact");
        let requests = server.requests();
        let resumed_at: u64 = requests
            .last()
            .unwrap()
            .range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .expect("the restart resumed with Range")
            .parse()
            .unwrap();
        // A save happens at the start of a FetchYield, so the record may lag one save interval
        // plus the one buffer the device was writing.
        assert!(
        resumed_at <= written && written - resumed_at <= 64 * 1024 + 5000,
        "resumed at {resumed_at}, had written {written}: more than one save interval fetched again"
    );
    }
}

/// What is reported after the reboot into the new firmware (or back into the old one).
mod after_reboot {
    use super::*;

    fn ucloud_notice(image: &[u8], url: &str) -> String {
        format!(
            r#"{{"Method":"notify","Payload":{{"Version":"2.0","CurrentVersion":"1.0","URL":"{url}","MD5":"{}","Size":{},"TaskID":"task-42"}}}}"#,
            ota_cloud::cloud::md5_hex(image),
            image.len()
        )
    }

    #[test]
    fn after_the_reboot_the_pending_version_completes_the_upgrade() {
        let image = ota_cloud::generate_firmware(100_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        for (booted, expect) in [
            (
                "2.0",
                r#"{"Method":"success","Payload":{"TaskID":"task-42"}}"#,
            ),
            (
                "1.0",
                r#"{"Method":"fail","Payload":{"TaskID":"task-42","ErrMsg":"the device did not boot the new firmware"}}"#,
            ),
        ] {
            let dir = temp_dir(&format!("reboot-{booted}"));
            let record = dir.join("ota.bp");
            let (s, _) = boot_from_file(Protocol::Ucloud, &record, EVERY_64K);
            s.report_version("1.0").unwrap();
            s.handle_message(
                s.downstream_topic(),
                ucloud_notice(&image, &server.url()).as_bytes(),
            )
            .unwrap();
            let mut flash = vec![0u8; image.len()];
            fetch_into(&s, &mut flash, u64::MAX);
            assert!(s.check_firmware().unwrap());
            drop(s); // reboot into the new image

            let (s, sent) = boot_from_file(Protocol::Ucloud, &record, EVERY_64K);
            s.report_version(booted).unwrap();
            let sent = payloads(&sent);
            assert_eq!(sent[0], expect, "booted {booted}: {sent:?}");
            assert_eq!(
                sent[1],
                format!(r#"{{"Method":"report","Payload":{{"Version":"{booted}"}}}}"#)
            );
            assert_eq!(s.state(), OtaState::Idle);
            assert!(
                !record.exists(),
                "the record is gone once the outcome is reported"
            );
        }
    }

    #[test]
    fn aliyun_success_after_reboot_is_the_version_report_itself() {
        let dir = temp_dir("aliyun-reboot");
        let record = dir.join("ota.bp");
        let image = ota_cloud::generate_firmware(50_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let (s, _) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        s.handle_message(
            s.downstream_topic(),
            aliyun_notice(&image, &server.url(), "2.0.0").as_bytes(),
        )
        .unwrap();
        let mut flash = vec![0u8; image.len()];
        fetch_into(&s, &mut flash, u64::MAX);
        drop(s);
        let (s, sent) = boot_from_file(Protocol::Aliyun, &record, EVERY_64K);
        s.report_version("2.0.0").unwrap();
        assert_eq!(
            payloads(&sent),
            [r#"{"id":1,"params":{"version":"2.0.0"}}"#]
        );
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
}

/// Breakpoint stores that fail or overstate, records the session cannot use, the record API.
mod stores {
    use super::*;

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
            Some(Error::Download(DownloadError::BadResponse(
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
        assert_eq!(d.s.state(), OtaState::Downloading);
        d.fetch_to(u64::MAX);
        assert!(d.s.check_firmware().unwrap());
        assert!(store.contents().is_empty(), "no record was ever written");
        d.s.report_upgrade_success(&version).unwrap();
        assert_eq!(
            d.payloads().last().unwrap(),
            &report("done", 0, "", &version)
        );
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
        let dir = temp_dir("file-store");
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
}

/// Confirm after boot (`OtaConfig::confirm_boots`), across simulated reboots, on each platform.
mod confirm {
    use super::*;
    use ota::ota::BootState;

    const PROTOCOLS: [Protocol; 4] = [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ];

    fn notice(p: Protocol, img: &[u8]) -> String {
        let fw = Firmware::new("2.0", URL, img);
        match p {
            Protocol::Aliyun => ota_cloud::aliyun::upgrade_message(&fw, 1),
            Protocol::Sagoo => ota_cloud::sagoo::upgrade_message(
                &fw,
                1,
                ota_cloud::sagoo::SignMethod::Md5,
                None,
                None,
            ),
            Protocol::Tencent => ota_cloud::tencent::update_message(&fw),
            Protocol::Ucloud => ota_cloud::ucloud::notify_message(&fw, "1.0", None, "task-42"),
        }
    }

    /// A device that downloaded and verified 2.0 with the flow on (`boots` allowed), then
    /// rebooted: its store.
    fn flashed(p: Protocol, img: &'static [u8]) -> Shared {
        let store = Shared::default();
        let d = boot(p, Limits::default(), img, &store);
        d.s.set_confirm_boots(2);
        d.s.report_version("1.0").unwrap();
        d.announce(&notice(p, img));
        d.fetch_to(u64::MAX);
        assert!(d.s.check_firmware().unwrap());
        store
    }

    /// A boot of the device on `store`, running `version`.
    fn reboot(
        p: Protocol,
        img: &'static [u8],
        store: &Shared,
        version: &str,
    ) -> (Device, Result<(), Error>) {
        let d = boot(p, Limits::default(), img, store);
        d.s.set_confirm_boots(2);
        let r = d.s.report_version(version);
        (d, r)
    }

    fn is_success(p: Protocol, m: &str) -> bool {
        match p {
            Protocol::Aliyun | Protocol::Sagoo => m.contains(r#""version":"2.0""#),
            Protocol::Tencent => m.contains(r#""state":"done""#),
            Protocol::Ucloud => m.contains(r#""Method":"success""#),
        }
    }

    fn is_failure(p: Protocol, m: &str, desc: &str) -> bool {
        match p {
            Protocol::Aliyun | Protocol::Sagoo => m.contains(r#""step":"-4""#) && m.contains(desc),
            Protocol::Tencent => {
                m.contains(r#""state":"fail""#) && m.contains(r#""result_code":"-5""#)
            }
            Protocol::Ucloud => m.contains(r#""Method":"fail""#) && m.contains(desc),
        }
    }

    #[test]
    fn the_success_waits_for_the_confirmation() {
        let img = image(3000, 1);
        for p in PROTOCOLS {
            let store = flashed(p, img);
            let (d, r) = reboot(p, img, &store, "2.0");
            r.unwrap();
            assert_eq!(
                d.s.boot_state(),
                BootState::PendingConfirm { boots: 1 },
                "{p:?}"
            );
            assert_eq!(
                d.payloads(),
                Vec::<String>::new(),
                "{p:?}: nothing before the confirmation"
            );
            drop(d); // a second boot, still unconfirmed
            let (d, r) = reboot(p, img, &store, "2.0");
            r.unwrap();
            assert_eq!(
                d.s.boot_state(),
                BootState::PendingConfirm { boots: 2 },
                "{p:?}"
            );
            assert!(d.payloads().is_empty(), "{p:?}");
            d.s.confirm_image().unwrap();
            let sent = d.payloads();
            assert!(sent.iter().any(|m| is_success(p, m)), "{p:?}: {sent:?}");
            assert!(
                !sent.iter().any(|m| is_failure(p, m, "")),
                "{p:?}: {sent:?}"
            );
            assert_eq!(d.s.boot_state(), BootState::Confirmed);
            assert!(store.contents().is_empty(), "{p:?}: the record is gone");
            assert!(
                matches!(d.s.confirm_image(), Err(Error::InvalidState(_))),
                "once"
            );
        }
    }

    #[test]
    fn a_rejected_image_fails_the_upgrade_and_asks_for_a_rollback() {
        let img = image(3000, 2);
        for p in PROTOCOLS {
            let store = flashed(p, img);
            let (d, r) = reboot(p, img, &store, "2.0");
            r.unwrap();
            d.s.reject_image().unwrap();
            let sent = d.payloads();
            assert!(
                sent.iter()
                    .any(|m| is_failure(p, m, "the firmware rejected the new image")),
                "{p:?}: {sent:?}"
            );
            assert!(!sent.iter().any(|m| is_success(p, m)), "{p:?}: {sent:?}");
            assert_eq!(d.s.boot_state(), BootState::RollBack);
            assert!(store.contents().is_empty());
            assert!(matches!(d.s.reject_image(), Err(Error::InvalidState(_))));
        }
    }

    #[test]
    fn too_many_boots_without_a_confirmation_fail_the_upgrade() {
        let img = image(3000, 3);
        for p in PROTOCOLS {
            let store = flashed(p, img);
            for _ in 0..2 {
                let (d, r) = reboot(p, img, &store, "2.0");
                r.unwrap();
                assert!(d.payloads().is_empty());
            }
            let (d, r) = reboot(p, img, &store, "2.0");
            assert!(matches!(r, Err(Error::RollBack(_))), "{p:?}: {r:?}");
            let sent = d.payloads();
            assert!(
                sent.iter().any(|m| is_failure(p, m, "not confirmed")),
                "{p:?}: {sent:?}"
            );
            assert_eq!(d.s.boot_state(), BootState::RollBack);
            assert!(store.contents().is_empty());
        }
    }

    #[test]
    fn a_bootloader_rollback_is_reported_as_a_failure() {
        let img = image(3000, 4);
        for p in PROTOCOLS {
            let store = flashed(p, img);
            let (d, r) = reboot(p, img, &store, "2.0");
            r.unwrap();
            drop(d); // the bootloader reverts to 1.0 at the next boot
            let (d, r) = reboot(p, img, &store, "1.0");
            r.unwrap();
            assert_eq!(d.s.boot_state(), BootState::RolledBack, "{p:?}");
            let sent = d.payloads();
            assert!(
                sent.iter()
                    .any(|m| m.contains("did not boot the new firmware")
                        || m.contains(r#""result_code":"-5""#)),
                "{p:?}: {sent:?}"
            );
            assert!(!sent.iter().any(|m| is_success(p, m)), "{p:?}: {sent:?}");
        }
    }

    #[test]
    fn without_the_flow_the_first_report_is_the_success_as_before() {
        let img = image(3000, 5);
        for p in PROTOCOLS {
            let store = Shared::default();
            let d = boot(p, Limits::default(), img, &store);
            d.s.report_version("1.0").unwrap();
            d.announce(&notice(p, img));
            d.fetch_to(u64::MAX);
            assert!(d.s.check_firmware().unwrap());
            drop(d);
            let d = boot(p, Limits::default(), img, &store);
            d.s.report_version("2.0").unwrap();
            assert!(d.payloads().iter().any(|m| is_success(p, m)), "{p:?}");
            assert_eq!(d.s.boot_state(), BootState::None);
            assert!(matches!(d.s.confirm_image(), Err(Error::InvalidState(_))));
        }
    }
}
