//! The old image's requirement of a delta upgrade (issue 17): the upgrade message's extData
//! names the image the patch was made from (`_delta_old_size`, `_delta_old_sha256`), and a
//! patch for another image than the running one is refused before any byte of the new image
//! is handed out, with its own error and one failure report. Real HTTP (the simulator's
//! server), the committed detools fixtures of tests/fixtures/delta, a session on SagooIOT (and
//! Aliyun), and one test through the exported C functions.

mod common;

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::delta::{device, fixture, sample, upgrade, DeltaSource, SLOT};
use common::recorder::{failure_reports, Sent};
use ota::delta::{DeltaError, OldImage, OldImageMismatch, OldReadError};
use ota::error::NoticeError;
use ota::ota::DeltaOptions;
use ota::{Error, OtaSession, Protocol};
use ota_cloud::{sha256_hex, FirmwareServer};

const PAIR: &str = "small-change";

fn old() -> Vec<u8> {
    fixture(&format!("{PAIR}.old"))
}

fn new() -> Vec<u8> {
    fixture(&format!("{PAIR}.new"))
}

fn patch() -> Vec<u8> {
    fixture(&format!("{PAIR}.heatshrink.patch"))
}

// The log lines of this process, for the tests that count them; the tests run one at a time
// so that each sees its own lines only.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SERIAL: Mutex<()> = Mutex::new(());

fn keep_line(tag: &str, module: &str, args: std::fmt::Arguments<'_>) -> bool {
    let line = format!("[{tag}] {module}: {args}");
    LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    true
}

fn serial() -> MutexGuard<'static, ()> {
    ota::log::set_sink(keep_line);
    ota::log::set_level(ota::log::Level::Info);
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LINES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    guard
}

fn lines_with(text: &str) -> Vec<String> {
    let lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
    lines.iter().filter(|l| l.contains(text)).cloned().collect()
}

/// A SagooIOT upgrade message for `served` at `url` (SHA-256), with `ext` as its extData.
fn sagoo_notice(served: &[u8], url: &str, ext: &str) -> String {
    format!(
        r#"{{"code":"200","data":{{"size":{},"version":"2.0.0","url":"{url}","sign":"{}","signMethod":"SHA256","module":"MCU","extData":{ext}}},"id":1626969597470,"message":"success"}}"#,
        served.len(),
        sha256_hex(served)
    )
}

/// extData naming an old image of `size` bytes with SHA-256 `sha256` (hex), beside a batch id.
fn requirement(size: &str, sha256: &str) -> String {
    format!(r#"{{"strategy":"b-7","_delta_old_size":{size},"_delta_old_sha256":"{sha256}"}}"#)
}

/// An old image in memory that counts the bytes read from it.
struct CountingOld {
    image: Vec<u8>,
    read: Arc<AtomicUsize>,
}

impl OldImage for CountingOld {
    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        let n = (&self.image[..]).read(offset, buf)?;
        self.read.fetch_add(n, SeqCst);
        Ok(n)
    }
}

/// A session of `protocol` with `old` as its delta source, before any upgrade message, and
/// the count of bytes read from `old`.
fn session(
    protocol: Protocol,
    old: Vec<u8>,
    options: DeltaOptions,
) -> (OtaSession, Sent, Arc<AtomicUsize>) {
    let read = Arc::new(AtomicUsize::new(0));
    let old = CountingOld {
        image: old,
        read: read.clone(),
    };
    let source = DeltaSource {
        image: Box::new(old),
        options,
    };
    let (s, sent) = device(protocol, Some(source), |_| {});
    (s, sent, read)
}

/// A SagooIOT session running `old`, told to upgrade with `notice`.
fn sagoo_device(old: Vec<u8>, notice: &str) -> (OtaSession, Sent) {
    let (s, sent, _) = session(Protocol::Sagoo, old, DeltaOptions::for_slot(SLOT));
    upgrade(&s, notice);
    (s, sent)
}

/// The buffer of the firmware here.
const BUF: usize = 777;

#[test]
fn a_patch_for_the_running_image_makes_the_new_image() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let ext = requirement(&old.len().to_string(), &sha256_hex(&old));
    let (s, sent) = sagoo_device(old, &sagoo_notice(&patch, &server.url(), &ext));
    let out = sample(&s, BUF);
    assert!(out.stored == new(), "{} bytes", out.stored.len());
    assert!(out.valid && out.errors.is_empty(), "{:?}", out.errors);
    assert!(
        failure_reports(&sent).is_empty(),
        "{:?}",
        failure_reports(&sent)
    );
    assert!(lines_with("nothing ties").is_empty());
    // The size may come as a string of digits, the digest in capitals.
    let old = self::old();
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let ext = requirement(
        &format!("\"{}\"", old.len()),
        &sha256_hex(&old).to_uppercase(),
    );
    let (s, _) = sagoo_device(old, &sagoo_notice(&patch, &server.url(), &ext));
    let out = sample(&s, BUF);
    assert!(out.stored == new() && out.valid && out.errors.is_empty());
}

/// Runs a patch whose message requires another old image: nothing is handed out, the
/// download ends with `Error::DeltaOldImage(want)`, one failure report saying `desc`.
fn refused(s: &OtaSession, sent: &Sent, want: OldImageMismatch, desc: &str) {
    let out = sample(s, BUF);
    assert!(
        out.stored.is_empty(),
        "{} bytes handed out",
        out.stored.len()
    );
    assert!(!out.valid, "never a valid verdict");
    assert_eq!(out.errors, [Error::DeltaOldImage(want)]);
    assert_eq!(s.last_error(), Some(Error::DeltaOldImage(want)));
    assert_eq!(s.fetched_size(), 0);
    let failures = failure_reports(sent);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(r#""step":"-1""#) && failures[0].contains(desc),
        "{failures:?}"
    );
    // A later call says the same, and nothing more is reported.
    let mut buf = [0u8; 64];
    assert_eq!(
        s.fetch_yield(&mut buf, Duration::from_millis(10)),
        Err(Error::DeltaOldImage(want))
    );
    assert!(!s.check_firmware().unwrap());
    assert_eq!(failure_reports(sent).len(), 1);
    // One line for the refusal (the later call's "after the download ended" aside).
    let logged: Vec<String> = lines_with("not for the running image")
        .into_iter()
        .filter(|l| !l.contains("after the download ended"))
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].starts_with("[err]"), "{logged:?}");
}

#[test]
fn a_wrong_old_digest_is_refused_before_any_byte() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let other = fixture("unrelated.old");
    let ext = requirement(&old.len().to_string(), &sha256_hex(&other));
    let (s, sent) = sagoo_device(old, &sagoo_notice(&patch, &server.url(), &ext));
    refused(
        &s,
        &sent,
        OldImageMismatch::Sha256,
        "for an old image of another SHA-256",
    );
}

#[test]
fn a_wrong_old_size_is_refused_before_any_byte() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let running = old.len() as u64;
    let ext = requirement(&(running + 1).to_string(), &sha256_hex(&old));
    let (s, sent) = sagoo_device(old, &sagoo_notice(&patch, &server.url(), &ext));
    refused(
        &s,
        &sent,
        OldImageMismatch::Size {
            required: running + 1,
            running,
        },
        "for an old image of another size",
    );
}

#[test]
fn a_digest_the_firmware_declares_is_used_and_the_image_not_read() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    // The firmware declares a digest that is not its image's: it is believed.
    let declared = DeltaOptions {
        old_sha256: Some([7; 32]),
        ..DeltaOptions::for_slot(SLOT)
    };
    let (s, sent, read) = session(Protocol::Sagoo, old.clone(), declared);
    assert_eq!(read.load(SeqCst), 0, "a declared digest spares the read");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let ext = requirement(&old.len().to_string(), &sha256_hex(&old));
    upgrade(&s, &sagoo_notice(&patch, &server.url(), &ext));
    refused(
        &s,
        &sent,
        OldImageMismatch::Sha256,
        "for an old image of another SHA-256",
    );
    // Without a declared digest the image is read once, whole, when the source is set.
    let (_, _, read) = session(
        Protocol::Sagoo,
        old.clone(),
        DeltaOptions::for_slot(1 << 16),
    );
    assert_eq!(read.load(SeqCst), old.len());
}

/// An old image whose reads fail.
struct Unreadable(u64);

impl OldImage for Unreadable {
    fn size(&self) -> u64 {
        self.0
    }

    fn read(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<usize, OldReadError> {
        Err(OldReadError { code: -5 })
    }
}

#[test]
fn an_unreadable_old_image_is_refused_when_it_is_set() {
    let _g = serial();
    let (s, _) = device(Protocol::Sagoo, None, |_| {});
    let r = s.set_delta_source(Box::new(Unreadable(100)), DeltaOptions::for_slot(1 << 16));
    assert_eq!(
        r,
        Err(Error::Delta(DeltaError::OldRead {
            offset: 0,
            code: -5
        }))
    );
}

#[test]
fn a_malformed_old_digest_refuses_the_notice() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let (s, sent, _) = session(
        Protocol::Sagoo,
        old.clone(),
        DeltaOptions::for_slot(1 << 16),
    );
    let ext = requirement(&old.len().to_string(), &sha256_hex(&old)[..63]);
    let notice = sagoo_notice(&patch, "http://127.0.0.1:9/p.bin", &ext);
    let r = s.handle_message(s.downstream_topic(), notice.as_bytes());
    assert_eq!(
        r,
        Err(Error::Notice(NoticeError::BadDigest("_delta_old_sha256")))
    );
    assert!(!s.is_fetching());
    assert!(
        failure_reports(&sent).is_empty(),
        "a malformed message is not reported"
    );
    let ext = requirement("\"12a\"", &sha256_hex(&old));
    let notice = sagoo_notice(&patch, "http://127.0.0.1:9/p.bin", &ext);
    let r = s.handle_message(s.downstream_topic(), notice.as_bytes());
    assert!(
        matches!(
            r,
            Err(Error::Notice(NoticeError::WrongType {
                field: "_delta_old_size",
                ..
            }))
        ),
        "{r:?}"
    );
    assert!(!s.is_fetching());
}

#[test]
fn no_requirement_works_as_before_and_says_so_once() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let ext = r#"{"strategy":"b-7","key1":"value1"}"#;
    let (s, sent) = sagoo_device(old, &sagoo_notice(&patch, &server.url(), ext));
    let out = sample(&s, BUF);
    assert!(
        out.stored == new() && out.valid && out.errors.is_empty(),
        "{:?}",
        out.errors
    );
    assert!(failure_reports(&sent).is_empty());
    let said = lines_with("nothing ties the patch to the running image");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("[inf]"), "{said:?}");
}

#[test]
fn aliyun_reads_the_requirement_from_an_ext_data_object() {
    let _g = serial();
    let (patch, old) = (patch(), old());
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let (s, sent, _) = session(
        Protocol::Aliyun,
        old.clone(),
        DeltaOptions::for_slot(1 << 16),
    );
    let notice = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{}","md5":"{}","extData":{{"_delta_old_sha256":"{}"}}}},"id":1,"message":"success"}}"#,
        patch.len(),
        server.url(),
        ota_cloud::md5_hex(&patch),
        sha256_hex(&fixture("unrelated.old"))
    );
    s.handle_message(s.downstream_topic(), notice.as_bytes())
        .unwrap();
    refused(
        &s,
        &sent,
        OldImageMismatch::Sha256,
        "for an old image of another SHA-256",
    );
}

// Through the C API: IOT_OTA_SetDeltaSource reads the image, FetchYield returns -44.

mod c_api {
    use super::*;
    use common::capi::{sample, Cloud, Device};
    use common::delta::{set_delta_source, Answer, Flash};
    use ota::ffi::ota::*;
    use ota_cloud::broker::EmbeddedBroker;

    #[test]
    fn a_patch_for_another_old_image_is_iot_otae_delta_old_mismatch() {
        let _g = serial();
        let (patch, old) = (patch(), old());
        let dn = "dnOld";
        let broker = EmbeddedBroker::start().expect("broker starts");
        // The platform: publishes the upgrade, records the progress reports.
        let cloud = Cloud::new(broker.port(), dn);
        // The device, through the C functions only.
        let dev = Device::with_protocol(broker.port(), dn, IOT_OTA_PROTOCOL_SAGOO);
        assert_eq!(
            set_delta_source(dev.ota, Flash::of(PAIR, Answer::Honest)),
            0
        );
        let server = FirmwareServer::start(patch.clone()).unwrap();
        let other = fixture("unrelated.old");
        let ext = requirement(&old.len().to_string(), &sha256_hex(&other));
        cloud.announce(&dev, &sagoo_notice(&patch, &server.url(), &ext));
        let got = sample(&dev, 4096);
        let mismatch = IOT_OTA_Err_t::IOT_OTAE_DELTA_OLD_MISMATCH as c_int;
        assert_eq!(mismatch, -44);
        assert_eq!(got.failures, [mismatch]);
        assert!(got.image.is_empty() && !got.wrote_on_error);
        assert_eq!(IOT_OTA_GetLastError(dev.ota), mismatch);
        assert_eq!(
            dev.ioctl_u32(IOT_OTAG_CHECK_FIRMWARE),
            Ok(0),
            "CHECK_FIRMWARE is never 1"
        );
        let failures = cloud.failures(&dev, true);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains(r#""step":"-1""#) && failures[0].contains("another SHA-256"),
            "{failures:?}"
        );
    }
}

// The second check: the new image's SHA-256 the message names (`_delta_new_sha256`).

/// extData naming the running old image and a new image of SHA-256 `new_sha256` (hex).
fn naming_the_new_image(new_sha256: &str) -> String {
    let old = old();
    format!(
        r#"{{"_delta_old_size":{},"_delta_old_sha256":"{}","_delta_new_sha256":"{new_sha256}"}}"#,
        old.len(),
        sha256_hex(&old)
    )
}

#[test]
fn the_new_image_the_message_names_is_checked_when_it_is_complete() {
    let _g = serial();
    let patch = patch();
    let server = FirmwareServer::start(patch.clone()).unwrap();
    // The patch's digest matches (the platform's check), and the image it makes is the one
    // named: valid.
    let ext = naming_the_new_image(&sha256_hex(&new()));
    let (s, sent) = sagoo_device(old(), &sagoo_notice(&patch, &server.url(), &ext));
    let out = sample(&s, BUF);
    assert!(out.stored == new() && out.valid, "{:?}", out.errors);
    assert!(out.errors.is_empty() && failure_reports(&sent).is_empty());
    // The message names another new image (what a patch made from another old image, or a
    // platform's wrong patch, comes to): every byte handed out, never valid, one verify-failed
    // report.
    let mut other = new();
    other[100] ^= 1;
    let ext = naming_the_new_image(&sha256_hex(&other));
    let (s, sent) = sagoo_device(old(), &sagoo_notice(&patch, &server.url(), &ext));
    let out = sample(&s, BUF);
    assert!(
        !out.valid,
        "a new image other than the one named is never valid"
    );
    assert_eq!(out.stored.len(), new().len());
    let failures = failure_reports(&sent);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(r#""step":"-3""#)
            && failures[0].contains("not the one the message names"),
        "{failures:?}"
    );
    assert!(
        matches!(s.last_error(), Some(Error::Download(_))),
        "{:?}",
        s.last_error()
    );
}
