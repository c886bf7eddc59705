//! The stream invariant on in-memory transports, with firmware written like the iotkit v2.3
//! sample: it appends what FetchYield returns, never rewinds, reports "fetch failed" on every
//! return <= 0, leaves its loop only when IsFetchFinish is true and checks the image once.
//! For every fault the outcome is one of two: the appended bytes are the image and the check
//! passes, or the check fails and the platform got exactly one failure report.

mod common;
use common::recorder::{payloads, Recorder, Sent};
use common::wait;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::resume::{BreakpointStore, SavePolicy, StoreError};
use ota::source::{Chunk, FirmwareSource, OpenInfo};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::Firmware;

fn image(len: usize, seed: u8) -> Arc<[u8]> {
    (0..len)
        .map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

/// The image served at each URL.
type Images = Arc<Mutex<Vec<(String, Arc<[u8]>)>>>;

/// How the scripted server answers one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// Honours Range; the body ends after `cut` bytes when set.
    Normal { cut: Option<usize> },
    /// 200 with the whole file whatever the Range; `content_length` announced, the body ends
    /// after `cut` bytes when set.
    Whole {
        content_length: Option<u64>,
        cut: Option<usize>,
    },
    /// 206 whose Content-Range starts at `start` instead of the requested offset.
    WrongRange { start: u64 },
    /// This HTTP status.
    Status(u16),
    /// Nothing for this read: the answer is still on its way.
    Pending,
}

/// A whole-file answer announcing `content_length`, cut after `cut` bytes when set.
fn whole(content_length: u64, cut: Option<usize>) -> Answer {
    Answer::Whole {
        content_length: Some(content_length),
        cut,
    }
}

#[derive(Default)]
struct Script {
    /// One answer per request, in order; afterwards `Normal`.
    answers: VecDeque<Answer>,
    /// The offset and URL of every request.
    requests: Vec<(u64, String)>,
    /// Reads answered `Pending`.
    pending_reads: usize,
}

/// An HTTP server in memory that answers as its script says.
struct Scripted {
    /// The image served at each URL; any other URL serves the first.
    images: Images,
    image: Arc<[u8]>,
    script: Arc<Mutex<Script>>,
    /// The open response: answer, next byte of the file to send, bytes of body left.
    current: Option<(Answer, usize, usize)>,
    head_sent: bool,
    chunk: usize,
}

impl FirmwareSource for Scripted {
    fn open(&mut self, url: &str, offset: u64) -> Result<(), DownloadError> {
        let mut s = self.script.lock().unwrap();
        s.requests.push((offset, url.to_string()));
        let answer = s
            .answers
            .pop_front()
            .unwrap_or(Answer::Normal { cut: None });
        let images = self.images.lock().unwrap();
        self.image = images
            .iter()
            .find(|(u, _)| u == url)
            .unwrap_or(&images[0])
            .1
            .clone();
        let len = self.image.len();
        let off = offset as usize;
        self.current = Some(match answer {
            Answer::Status(code) => return Err(DownloadError::Status(code)),
            Answer::Normal { cut } => (answer, off, cut.unwrap_or(len - off).min(len - off)),
            Answer::Whole { cut, .. } => (answer, 0, cut.unwrap_or(len).min(len)),
            Answer::WrongRange { start } => (answer, start as usize, len - start as usize),
            Answer::Pending => (answer, off, 0),
        });
        self.head_sent = false;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], _timeout: Duration) -> Result<Chunk, DownloadError> {
        let total = self.image.len() as u64;
        let Some((answer, pos, left)) = self.current.as_mut() else {
            return Err(DownloadError::BadResponse("not open"));
        };
        if *answer == Answer::Pending {
            self.script.lock().unwrap().pending_reads += 1;
            return Ok(Chunk::Pending);
        }
        if !self.head_sent {
            self.head_sent = true;
            let info = match *answer {
                Answer::Whole { content_length, .. } => OpenInfo {
                    status: 200,
                    content_length,
                    range_start: None,
                    range_total: None,
                },
                _ if *pos == 0 => OpenInfo {
                    status: 200,
                    content_length: Some(total),
                    range_start: None,
                    range_total: None,
                },
                _ => OpenInfo {
                    status: 206,
                    content_length: Some(total - *pos as u64),
                    range_start: Some(*pos as u64),
                    range_total: Some(total),
                },
            };
            return Ok(Chunk::Opened(info));
        }
        let n = buf.len().min(self.chunk).min(*left);
        if n == 0 {
            return Ok(Chunk::End);
        }
        buf[..n].copy_from_slice(&self.image[*pos..*pos + n]);
        *pos += n;
        *left -= n;
        Ok(Chunk::Data(n))
    }

    fn close(&mut self) {
        self.current = None;
    }
}

/// A breakpoint store in memory that counts its saves.
#[derive(Clone, Default)]
struct CountingStore {
    record: Arc<Mutex<Vec<u8>>>,
    saves: Arc<Mutex<u32>>,
}

impl BreakpointStore for CountingStore {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let r = self.record.lock().unwrap();
        buf[..r.len()].copy_from_slice(&r);
        Ok(r.len())
    }
    fn save(&mut self, record: &[u8]) -> Result<(), StoreError> {
        *self.record.lock().unwrap() = record.to_vec();
        *self.saves.lock().unwrap() += 1;
        Ok(())
    }
    fn erase(&mut self) -> Result<(), StoreError> {
        self.record.lock().unwrap().clear();
        Ok(())
    }
}

struct Device {
    images: Images,
    s: OtaSession,
    sent: Sent,
    script: Arc<Mutex<Script>>,
    protocol: Protocol,
}

const URL: &str = "http://h/f.bin";

fn device(protocol: Protocol, img: &Arc<[u8]>) -> Device {
    let sent: Sent = Arc::default();
    let script = Arc::new(Mutex::new(Script::default()));
    let images = Arc::new(Mutex::new(vec![(URL.to_string(), img.clone())]));
    let mut config = OtaConfig::for_protocol(protocol);
    config.retry.base_delay = Duration::from_millis(1);
    config.retry.max_delay = Duration::from_millis(2);
    config.retry.max_attempts = 3;
    let s = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(Scripted {
            images: images.clone(),
            image: img.clone(),
            script: script.clone(),
            current: None,
            head_sent: false,
            chunk: 1000,
        }),
    )
    .unwrap();
    Device {
        images,
        s,
        sent,
        script,
        protocol,
    }
}

fn upgrade(protocol: Protocol, img: &[u8], version: &str, url: &str) -> String {
    let fw = Firmware::new(version, url, img);
    match protocol {
        Protocol::Aliyun => ota_cloud::aliyun::upgrade_message(&fw, 1),
        Protocol::Tencent => ota_cloud::tencent::update_message(&fw),
        Protocol::Ucloud => ota_cloud::ucloud::notify_message(&fw, "1.0.0", None, "t1"),
        Protocol::Sagoo => {
            ota_cloud::sagoo::upgrade_message(&fw, 1, ota_cloud::SignMethod::Md5, None, None)
        }
    }
}

/// What the iotkit-sample firmware ends with.
struct Outcome {
    flash: Vec<u8>,
    valid: bool,
    errors: Vec<Error>,
}

impl Device {
    fn announce(&self, img: &[u8], version: &str, url: &str) {
        let msg = upgrade(self.protocol, img, version, url);
        self.s
            .handle_message(self.s.downstream_topic(), msg.as_bytes())
            .unwrap();
    }

    fn serve(&self, url: &str, img: &Arc<[u8]>) {
        self.images
            .lock()
            .unwrap()
            .push((url.to_string(), img.clone()));
    }

    fn request_offsets(&self) -> Vec<u64> {
        let script = self.script.lock().unwrap();
        script.requests.iter().map(|r| r.0).collect()
    }

    fn answers(&self, answers: &[Answer]) {
        self.script.lock().unwrap().answers.extend(answers);
    }

    /// One cycle of the sample's loop; `between` runs where the sample yields MQTT, with the
    /// bytes appended so far.
    fn sample_cycle(&self, mut between: impl FnMut(&Device, usize)) -> Outcome {
        assert!(self.s.is_fetching(), "a cycle starts with IsFetching");
        let mut flash = vec![0u8; self.s.fetched_size() as usize];
        let mut errors = Vec::new();
        let mut buf = [0u8; 700];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the loop did not end");
            match self.s.fetch_yield(&mut buf, Duration::from_millis(20)) {
                Ok(n) if n > 0 => flash.extend_from_slice(&buf[..n]),
                other => {
                    if let Err(e) = other {
                        errors.push(e);
                    }
                    assert_eq!(self.s.report_progress(-2, None), Ok(()));
                }
            }
            between(self, flash.len());
            if self.s.is_fetch_finished() {
                break;
            }
        }
        let valid = self.s.check_firmware().unwrap();
        Outcome {
            flash,
            valid,
            errors,
        }
    }

    fn failures(&self) -> Vec<String> {
        payloads(&self.sent)
            .into_iter()
            .filter(|m| {
                m.contains(r#""step":"-"#)
                    || m.contains(r#""state":"fail""#)
                    || m.contains(r#""Method":"fail""#)
            })
            .collect()
    }
}

fn assert_valid(d: &Device, out: &Outcome, img: &[u8]) {
    assert!(out.flash == img, "the appended stream is the image");
    assert!(out.valid);
    assert!(d.failures().is_empty(), "{:?}", d.failures());
}

fn assert_one_failure(d: &Device, out: &Outcome, containing: &str) {
    assert!(!out.valid, "a failed cycle never checks valid");
    let failures = d.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains(containing), "{failures:?}");
}

#[test]
fn a_server_that_ignores_range_is_skipped_seamlessly() {
    let img = image(20_000, 1);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Normal { cut: Some(7_777) }, whole(20_000, None)]);
    d.announce(&img, "2.0.0", URL);
    let out = d.sample_cycle(|_, _| {});
    assert_valid(&d, &out, &img);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(d.s.restarts(), 1);
    let offsets = d.request_offsets();
    assert_eq!(offsets, [0, 7_777]);
}

#[test]
fn an_ignored_range_whose_body_is_shorter_than_the_skip_is_retried() {
    let img = image(20_000, 2);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[
        Answer::Normal { cut: Some(9_000) },
        // Ends while the SDK is still discarding: a truncated answer, retried with Range.
        whole(20_000, Some(4_000)),
    ]);
    d.announce(&img, "2.0.0", URL);
    let out = d.sample_cycle(|_, _| {});
    assert_valid(&d, &out, &img);
    let offsets = d.request_offsets();
    assert_eq!(offsets, [0, 9_000, 9_000]);
}

#[test]
fn a_whole_file_of_another_size_is_a_failure() {
    let img = image(20_000, 3);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Normal { cut: Some(5_000) }, whole(19_000, None)]);
    d.announce(&img, "2.0.0", URL);
    let out = d.sample_cycle(|_, _| {});
    assert_one_failure(&d, &out, r#""step":"-2""#);
    assert_eq!(out.flash.len(), 5_000, "nothing after the failure");
    assert_eq!(
        out.errors,
        [Error::Download(DownloadError::BadResponse(
            "server ignored Range and sent a file of another size"
        ))]
    );
}

#[test]
fn a_206_that_starts_elsewhere_is_a_failure() {
    let img = image(20_000, 4);
    let d = device(Protocol::Tencent, &img);
    d.s.report_version("1.0.0").unwrap();
    d.answers(&[
        Answer::Normal { cut: Some(6_000) },
        Answer::WrongRange { start: 5_000 },
    ]);
    d.announce(&img, "2.0.0", URL);
    let out = d.sample_cycle(|_, _| {});
    assert_one_failure(&d, &out, r#""state":"fail""#);
    assert_eq!(out.flash.len(), 6_000);
}

#[test]
fn a_different_upgrade_ends_the_cycle_and_starts_as_the_next() {
    for protocol in [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ] {
        let img = image(20_000, 5);
        let newer = image(20_000, 6);
        let d = device(protocol, &img);
        d.serve("http://h/newer.bin", &newer);
        d.s.report_version("1.0.0").unwrap();
        d.announce(&img, "2.0.0", URL);
        let mut pushed = false;
        let out = d.sample_cycle(|d, have| {
            if !pushed && have >= 6_000 {
                pushed = true;
                d.announce(&newer, "2.0.1", "http://h/newer.bin");
            }
        });
        // The sample leaves its loop on IsFetchFinish, usually before it sees the error.
        assert!(
            out.errors
                .iter()
                .all(|e| *e == Error::Download(DownloadError::Superseded)),
            "{protocol:?}: {:?}",
            out.errors
        );
        let mut buf = [0u8; 10];
        assert_eq!(
            d.s.fetch_yield(&mut buf, Duration::from_secs(5)),
            Err(Error::Download(DownloadError::Superseded))
        );
        assert_one_failure(&d, &out, "superseded by the upgrade to 2.0.1");
        assert!(out.flash.len() < img.len());
        // The firmware's own "fetch failed" after the error was dropped: still one report.
        assert_eq!(d.s.report_progress(-2, Some("again")), Ok(()));
        assert_eq!(d.failures().len(), 1, "{protocol:?}");
        // Until the firmware asks again nothing new starts; then a fresh cycle from byte 0.
        assert!(d.s.is_fetch_finished());
        assert!(d.s.is_fetching(), "{protocol:?}");
        assert_eq!(d.s.fetched_size(), 0);
        assert_eq!(d.s.with_notice(|n| n.version.as_str().to_string()), "2.0.1");
        let out = d.sample_cycle(|_, _| {});
        assert!(out.flash == *newer, "{protocol:?}: the new cycle is whole");
        assert!(out.valid, "{protocol:?}");
        assert_eq!(d.failures().len(), 1, "{protocol:?}: nothing failed since");
    }
}

#[test]
fn the_same_upgrade_announced_again_keeps_the_download_going() {
    let img = image(20_000, 7);
    let d = device(Protocol::Aliyun, &img);
    d.announce(&img, "2.0.0", URL);
    let mut pushed = false;
    let out = d.sample_cycle(|d, have| {
        if !pushed && have >= 6_000 {
            pushed = true;
            d.announce(&img, "2.0.0", "http://h/fresh.bin");
        }
    });
    assert_valid(&d, &out, &img);
    assert_eq!(
        d.s.with_notice(|n| n.url.as_str().to_string()),
        "http://h/fresh.bin"
    );
}

#[test]
fn a_supersede_during_the_skip_of_an_ignored_range_ends_the_cycle() {
    let img = image(20_000, 8);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Normal { cut: Some(15_000) }, whole(20_000, None)]);
    d.announce(&img, "2.0.0", URL);
    let mut calls = 0;
    let mut at_cut = None;
    let out = d.sample_cycle(|d, have| {
        calls += 1;
        if have == 15_000 && at_cut.is_none() {
            at_cut = Some(calls);
        }
        // The call after the cut reopens and discards part of the skip (700-byte buffers).
        if at_cut == Some(calls - 1) {
            d.announce(&image(20_000, 9), "3.0.0", URL);
        }
    });
    assert_one_failure(&d, &out, "superseded by the upgrade to 3.0.0");
    assert_eq!(
        out.flash[..],
        img[..out.flash.len()],
        "no byte of the skip leaked"
    );
}

#[test]
fn a_supersede_between_the_end_and_check_firmware_waits_for_the_next_cycle() {
    let img = image(5_000, 10);
    let d = device(Protocol::Aliyun, &img);
    d.announce(&img, "2.0.0", URL);
    let mut buf = [0u8; 5_000];
    while !d.s.is_fetch_finished() {
        d.s.fetch_yield(&mut buf, Duration::from_millis(20))
            .unwrap();
    }
    d.announce(&image(5_000, 11), "3.0.0", URL);
    assert!(
        d.s.check_firmware().unwrap(),
        "the check judges the bytes fetched"
    );
    assert_eq!(d.s.with_notice(|n| n.version.as_str().to_string()), "2.0.0");
    assert!(
        d.failures().is_empty(),
        "a verified image is not superseded"
    );
    assert!(d.s.is_fetching(), "the new upgrade is the next cycle");
    assert_eq!(d.s.with_notice(|n| n.version.as_str().to_string()), "3.0.0");
}

#[test]
fn a_failure_reported_by_the_firmware_ends_the_cycle() {
    let img = image(20_000, 12);
    let d = device(Protocol::Aliyun, &img);
    d.announce(&img, "2.0.0", URL);
    let mut buf = [0u8; 1000];
    assert_eq!(d.s.fetch_yield(&mut buf, Duration::ZERO), Ok(1000));
    d.s.report_progress(-3, Some("my own check failed"))
        .unwrap();
    assert!(d.s.is_fetch_finished());
    let t = Instant::now();
    assert_eq!(
        d.s.fetch_yield(&mut buf, Duration::from_secs(5)),
        Err(Error::Download(DownloadError::Abandoned))
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "no wait after the end"
    );
    assert!(!d.s.check_firmware().unwrap());
    for _ in 0..5 {
        assert_eq!(d.s.report_progress(-2, None), Ok(()));
    }
    let failures = d.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains(r#""step":"-3","desc":"my own check failed""#));
}

#[test]
fn fetch_failed_after_an_empty_yield_is_held_while_the_sdk_recovers() {
    let img = image(20_000, 13);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Pending]);
    d.announce(&img, "2.0.0", URL);
    let mut buf = [0u8; 1000];
    assert_eq!(d.s.fetch_yield(&mut buf, Duration::from_millis(10)), Ok(0));
    d.s.report_progress(-2, None).unwrap();
    assert!(d.s.is_fetching(), "held, not terminal");
    assert!(d.failures().is_empty());
    // The stall is recovered (reconnection) and the download completes.
    d.s.set_retry_policy(ota::retry::RetryPolicy {
        stall_timeout: Duration::from_millis(1),
        ..d.s.retry_policy()
    })
    .unwrap();
    let out = d.sample_cycle(|_, _| {});
    assert_valid(&d, &out, &img);

    // Held, then the SDK gives up: its own report, naming the cause, is the only one.
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Pending, Answer::Status(404)]);
    d.announce(&img, "2.0.0", URL);
    d.s.set_retry_policy(ota::retry::RetryPolicy {
        stall_timeout: Duration::from_millis(30),
        ..d.s.retry_policy()
    })
    .unwrap();
    let out = d.sample_cycle(|_, _| {});
    assert_one_failure(&d, &out, "firmware not found (HTTP 404)");
}

#[test]
fn progress_zero_is_never_sent_where_steps_start_at_one() {
    let img = image(1_000, 14);
    for (protocol, sent_zero) in [
        (Protocol::Aliyun, false),
        (Protocol::Sagoo, false),
        (Protocol::Tencent, true),
    ] {
        let d = device(protocol, &img);
        d.s.report_version("1.0.0").unwrap();
        d.announce(&img, "2.0.0", URL);
        d.s.report_progress(0, None).unwrap();
        d.s.report_progress(1, None).unwrap();
        let sent = payloads(&d.sent);
        let zero = sent
            .iter()
            .any(|m| m.contains(r#""step":"0""#) || m.contains(r#""percent":"0""#));
        assert_eq!(zero, sent_zero, "{protocol:?}: {sent:?}");
        assert!(
            sent.iter()
                .any(|m| m.contains(r#""step":"1""#) || m.contains(r#""percent":"1""#)),
            "{protocol:?}: {sent:?}"
        );
    }
}

#[test]
fn an_expired_url_on_aliyun_is_refreshed_without_a_negative_step() {
    let img = image(20_000, 15);
    let d = device(Protocol::Aliyun, &img);
    d.s.report_version("1.0.0").unwrap();
    d.answers(&[Answer::Normal { cut: Some(8_000) }, Answer::Status(403)]);
    d.announce(&img, "2.0.0", URL);
    let mut answered = false;
    let out = d.sample_cycle(|d, _| {
        let asked = d.sent.lock().unwrap().iter().any(|(topic, m)| {
            topic == "/ota/device/request/pk/dn" && m.ends_with(r#""params":{"version":"1.0.0"}}"#)
        });
        if asked && !answered {
            answered = true;
            d.announce(&img, "2.0.0", "http://h/fresh.bin");
        }
    });
    assert!(answered, "the SDK asked for a fresh URL");
    assert_valid(&d, &out, &img);
    let requests = d.script.lock().unwrap().requests.clone();
    assert_eq!(
        requests.last().unwrap(),
        &(8_000, "http://h/fresh.bin".to_string())
    );
}

/// The breakpoint rule: a record never covers bytes the firmware has not had back from an
/// earlier FetchYield. The device "loses power" right after the N-th save, before it writes
/// what that call returns; after the restart the file, cut to the resume offset and appended
/// to, is byte-exact.
#[test]
fn a_power_cut_right_after_any_save_resumes_byte_exact() {
    let img = image(30_000, 16);
    for cut_after in 1..=6u32 {
        let store = CountingStore::default();
        let boot = |store: &CountingStore| {
            let d = device(Protocol::Tencent, &img);
            d.s.set_breakpoint_store(Box::new(store.clone())).unwrap();
            d.s.set_save_policy(SavePolicy {
                every_bytes: 2_500,
                every_percent: 0,
            });
            d.s.report_version("1.0.0").unwrap();
            d.announce(&img, "2.0.0", URL);
            d
        };
        let d = boot(&store);
        let mut flash: Vec<u8> = Vec::new();
        let mut buf = [0u8; 700];
        loop {
            let n =
                d.s.fetch_yield(&mut buf, Duration::from_millis(20))
                    .unwrap();
            if *store.saves.lock().unwrap() > cut_after {
                break; // power cut: these n bytes never reach the flash
            }
            flash.extend_from_slice(&buf[..n]);
        }
        drop(d);
        let d = boot(&store);
        let offset = d.s.fetched_size() as usize;
        assert!(
            offset > 0 && offset <= flash.len(),
            "resumed at {offset} of {}",
            flash.len()
        );
        flash.truncate(offset);
        let out = d.sample_cycle(|_, _| {});
        flash.extend_from_slice(&out.flash[offset..]);
        assert!(out.valid, "cut after save {cut_after}");
        assert!(flash == *img, "cut after save {cut_after}: byte-exact");
    }
}

/// Deinit from another thread ends the fetching thread's loop: its call in progress returns,
/// IsFetchFinish answers 1 and FetchYield FETCH_FAILED for the released handle, at once.
#[test]
fn deinit_from_another_thread_ends_the_fetch_loop() {
    use ota::ffi::ota::{
        IOT_OTA_Deinit, IOT_OTA_Err_t, IOT_OTA_FetchYield, IOT_OTA_IsFetchFinish,
        IOT_OTA_IsFetching,
    };
    let img = image(20_000, 17);
    let d = device(Protocol::Aliyun, &img);
    d.answers(&[Answer::Pending; 64]);
    d.announce(&img, "2.0.0", URL);
    let script = d.script.clone();
    let h = ota::ffi::fuzzing::handle_from_session(d.s) as usize;
    assert_eq!(IOT_OTA_IsFetching(h as *mut _), 1);
    let fetcher = std::thread::spawn(move || {
        let h = h as *mut std::ffi::c_void;
        let mut buf = [0u8; 512];
        let mut last = 0;
        let start = Instant::now();
        while IOT_OTA_IsFetchFinish(h) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the loop did not end"
            );
            last = unsafe { IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), buf.len() as u32, 1) };
        }
        (last, unsafe {
            IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), 512, 1)
        })
    });
    // Deinit while a FetchYield (of up to a second) waits for the answer.
    wait::until("a FetchYield waiting", Duration::from_secs(10), || {
        script.lock().unwrap().pending_reads > 0
    });
    assert_eq!(unsafe { IOT_OTA_Deinit(h as *mut _) }, 0);
    let (last, after) = fetcher.join().unwrap();
    let failed = IOT_OTA_Err_t::IOT_OTAE_FETCH_FAILED as i32;
    assert!(last == 0 || last == failed, "{last}");
    assert_eq!(after, failed);
    assert_eq!(IOT_OTA_IsFetchFinish(h as *mut _), 1);
    assert_eq!(
        unsafe { IOT_OTA_Deinit(h as *mut _) },
        IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as i32,
        "a second release is refused, not undefined"
    );
    // A pointer that never was a handle is recognised without being read.
    let mut not_a_handle = 0u8;
    let p = (&mut not_a_handle as *mut u8).cast();
    assert_eq!(IOT_OTA_IsFetchFinish(p), 0);
    assert_eq!(
        unsafe { IOT_OTA_Deinit(p) },
        IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as i32
    );
}

/// The child side of `repeated_refusals_are_logged_once_per_upgrade` (this binary run again):
/// firmware that repeats refused calls in its loop.
#[test]
#[ignore = "a child process of repeated_refusals_are_logged_once_per_upgrade"]
fn repeated_refusals_child() {
    use ota::ffi::ioctl::IOT_OTA_Ioctl;
    use ota::ffi::ota::{IOT_OTA_FetchYield, IOT_OTA_ReportProgress, IOT_OTAG_MD5SUM};
    if std::env::var_os("OTA_CHILD_REFUSALS").is_none() {
        return;
    }
    ota::log::set_level(ota::log::Level::Info);
    let img = image(3_000, 18);
    let d = device(Protocol::Sagoo, &img);
    d.answers(&[Answer::Status(404)]);
    let fw = Firmware::new("2.0.0", URL, &img);
    let msg = ota_cloud::sagoo::upgrade_message(&fw, 1, ota_cloud::SignMethod::Sha256, None, None);
    d.s.handle_message(d.s.downstream_topic(), msg.as_bytes())
        .unwrap();
    let sent = d.sent.clone();
    let h = ota::ffi::fuzzing::handle_from_session(d.s);
    let mut md5 = [0u8; 33];
    let mut buf = [0u8; 100];
    for _ in 0..10 {
        assert!(unsafe { IOT_OTA_Ioctl(h, IOT_OTAG_MD5SUM, md5.as_mut_ptr().cast(), 33) } < 0);
        unsafe { IOT_OTA_FetchYield(h, buf.as_mut_ptr().cast(), 100, 1) };
        assert_eq!(
            unsafe { IOT_OTA_ReportProgress(h, -2, std::ptr::null()) },
            0
        );
    }
    let failures = payloads(&sent)
        .into_iter()
        .filter(|m| m.contains(r#""step":"-"#))
        .count();
    assert_eq!(failures, 1);
}

#[test]
fn repeated_refusals_are_logged_once_per_upgrade() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "repeated_refusals_child",
            "--nocapture",
        ])
        .env("OTA_CHILD_REFUSALS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let count = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        count("ota::ota: download failed: HTTP status 404"),
        1,
        "{stderr}"
    );
    assert_eq!(count("the upgrade announced another digest"), 1, "{stderr}");
    assert_eq!(count("FetchYield after the download ended"), 1, "{stderr}");
    assert_eq!(count("later failure reports are dropped"), 1, "{stderr}");
}
