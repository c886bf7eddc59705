//! Resume across restarts: the breakpoint record in a real file (atomic writes), a session
//! dropped mid-download (a power cut, as far as the SDK can tell), and a new session that
//! continues from the record; success or failure reported after the reboot.

mod common;
use common::recorder::{payloads, Recorder, Sent};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ota::fetch::{HttpConfig, HttpSource};
use ota::resume::{FileStore, SavePolicy};
use ota::{OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::http::FirmwareServer;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ota-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A session as firmware builds it after a (re)boot: with the breakpoint file.
fn boot(protocol: Protocol, record: &PathBuf, policy: SavePolicy) -> (OtaSession, Sent) {
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

fn aliyun_notice(image: &[u8], url: &str, version: &str) -> String {
    format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"{version}","url":"{url}","md5":"{}"}},"id":1,"message":"success"}}"#,
        image.len(),
        ota_cloud::cloud::md5_hex(image)
    )
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

#[test]
fn a_download_cut_by_a_restart_resumes_from_the_record() {
    let dir = temp_dir("cut");
    let record = dir.join("ota.bp");
    let image = ota_cloud::generate_firmware(1_000_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let msg = aliyun_notice(&image, &server.url(), "2.0.0");
    let mut flash = vec![0u8; image.len()];

    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
    s.handle_message(s.downstream_topic(), msg.as_bytes())
        .unwrap();
    fetch_into(&s, &mut flash, 456_789);
    let reached = s.fetched_size();
    drop(s); // power cut: no clean shutdown

    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
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
    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
    let msg = aliyun_notice(&image, &server.url(), "2.0.0");
    s.handle_message(s.downstream_topic(), msg.as_bytes())
        .unwrap();
    fetch_into(&s, &mut flash, 200_000);
    drop(s);

    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
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
        let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
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

        let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
        s.handle_message(s.downstream_topic(), msg.as_bytes())
            .unwrap();
        assert_eq!(s.fetched_size(), 0, "{damage} record is not trusted");
        fetch_into(&s, &mut flash, u64::MAX);
        assert!(s.check_firmware().unwrap());
    }
}

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
        let (s, _) = boot(Protocol::Ucloud, &record, EVERY_64K);
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

        let (s, sent) = boot(Protocol::Ucloud, &record, EVERY_64K);
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
    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
    s.handle_message(
        s.downstream_topic(),
        aliyun_notice(&image, &server.url(), "2.0.0").as_bytes(),
    )
    .unwrap();
    let mut flash = vec![0u8; image.len()];
    fetch_into(&s, &mut flash, u64::MAX);
    drop(s);
    let (s, sent) = boot(Protocol::Aliyun, &record, EVERY_64K);
    s.report_version("2.0.0").unwrap();
    assert_eq!(
        payloads(&sent),
        [r#"{"id":1,"params":{"version":"2.0.0"}}"#]
    );
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
    let (s, _) = boot(Protocol::Aliyun, &record, EVERY_64K);
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
                "sigkill_child_device",
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
