//! The state machine on in-memory transports (the table at the top of `src/ota/mod.rs`): its
//! transitions and the report each failure sends, then its less travelled paths — reports that
//! cannot be sent, expired URLs, sources that fail to open, end early or answer with the wrong
//! range, argument checks and fixed-size limits (the upstream message buffer, the running
//! versions table, the failure description buffer) — and sessions attached to an MQTT client.
//! What firmware stores under every fault is `stream_invariant.rs`.

mod common;
use common::firmware::{aliyun_notice_of, image};
use common::flaky::{Flaky, QUEUE_FULL};
use common::recorder::{payloads, Recorder, Sent};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::protocol::{Limits, NoticeError};
use ota::resume::MemoryStore;
use ota::retry::RetryPolicy;
use ota::source::{Chunk, FirmwareSource, HttpConfig, MemorySource, OpenInfo};
use ota::{MqttClient, OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::cloud::Firmware;

const URL: &str = "http://h/f.bin";
const PROGRESS: &str = "/ota/device/progress/pk/dn";
const REQUEST: &str = "/ota/device/request/pk/dn";

fn aliyun(img: &[u8], version: &str) -> String {
    ota_cloud::aliyun::upgrade_message(&Firmware::new(version, URL, img), 1)
}

fn tencent(img: &[u8], version: &str) -> String {
    ota_cloud::tencent::update_message(&Firmware::new(version, URL, img))
}

fn ucloud(img: &[u8], version: &str, current: &str, module: Option<&str>) -> String {
    ota_cloud::ucloud::notify_message(&Firmware::new(version, URL, img), current, module, "t1")
}

/// What a [`Scripted`] source does instead of serving its image.
#[derive(Default)]
struct Script {
    /// Returned by the next `open` calls, in order.
    open_errors: VecDeque<DownloadError>,
    /// Returned by the next `read` calls, in order; `None` lets the image answer that read.
    reads: VecDeque<Option<Result<Chunk, DownloadError>>>,
    /// The offset of every `open`.
    opens: Vec<u64>,
}

/// A [`MemorySource`] whose opens and reads can be overridden by a script.
struct Scripted {
    image: MemorySource,
    script: Arc<Mutex<Script>>,
}

impl FirmwareSource for Scripted {
    fn open(&mut self, url: &str, offset: u64) -> Result<(), DownloadError> {
        let mut s = self.script.lock().unwrap();
        s.opens.push(offset);
        if let Some(e) = s.open_errors.pop_front() {
            return Err(e);
        }
        self.image.open(url, offset)
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, DownloadError> {
        if let Some(Some(step)) = self.script.lock().unwrap().reads.pop_front() {
            return step;
        }
        self.image.read(buf, timeout)
    }

    fn close(&mut self) {
        self.image.close();
    }
}

struct Rig {
    s: OtaSession,
    sent: Sent,
    down: Arc<AtomicBool>,
    script: Arc<Mutex<Script>>,
}

fn rig(protocol: Protocol, limits: Limits, img: &'static [u8], chunk: usize) -> Rig {
    let sent: Sent = Arc::default();
    let (uplink, down) = Flaky::new(sent.clone());
    let script = Arc::new(Mutex::new(Script::default()));
    let mut source = MemorySource::new(img);
    source.chunk = chunk;
    let config = OtaConfig {
        limits,
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            stall_timeout: Duration::from_secs(5),
        },
        ..OtaConfig::for_protocol(protocol)
    };
    let s = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(uplink),
        Box::new(Scripted {
            image: source,
            script: script.clone(),
        }),
    )
    .unwrap();
    Rig {
        s,
        sent,
        down,
        script,
    }
}

impl Rig {
    fn announce(&self, msg: &str) -> ota::error::Result<()> {
        self.s
            .handle_message(self.s.downstream_topic(), msg.as_bytes())
    }

    /// Fetches until the download ends; the bytes, and the error that ended it (if any).
    fn fetch_all(&self) -> (Vec<u8>, Option<Error>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 700];
        while !self.s.is_fetch_finished() {
            match self.s.fetch_yield(&mut buf, Duration::from_secs(1)) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn payloads(&self) -> Vec<String> {
        payloads(&self.sent)
    }

    fn topics(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }
}

/// The main rows of the table, and the report each failure sends.
mod transitions {
    use super::*;

    const TOPIC: &str = "/ota/device/upgrade/pk/dn";

    fn notice(size: usize, version: &str, md5: &str) -> String {
        aliyun_notice_of(size, md5, URL, version)
    }

    fn session(source: MemorySource) -> (OtaSession, Sent) {
        let sent: Sent = Arc::default();
        let s = OtaSession::new(
            "pk",
            "dn",
            OtaConfig::default(),
            Box::new(Recorder(sent.clone())),
            Box::new(source),
        )
        .unwrap();
        (s, sent)
    }

    fn fetch_all(s: &OtaSession) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        while !s.is_fetch_finished() {
            match s.fetch_yield(&mut buf, Duration::from_millis(10)) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        out
    }

    #[test]
    fn idle_rejects_fetch_and_progress_until_an_upgrade_arrives() {
        let (s, sent) = session(MemorySource::new(image(100, 1)));
        assert_eq!(s.state(), OtaState::Idle);
        let mut buf = [0u8; 10];
        assert!(matches!(
            s.fetch_yield(&mut buf, Duration::ZERO),
            Err(Error::InvalidState(_))
        ));
        assert!(matches!(
            s.report_progress(10, None),
            Err(Error::InvalidState(_))
        ));
        assert!(matches!(s.check_firmware(), Err(Error::InvalidState(_))));
        assert!(matches!(s.last_error(), Some(Error::InvalidState(_))));
        assert!(sent.lock().unwrap().is_empty());
    }

    #[test]
    fn valid_upgrade_is_fetched_verified_and_progress_reported() {
        let img = image(2500, 2);
        let (s, sent) = session(MemorySource::new(img));
        s.handle_message(
            TOPIC,
            notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img)).as_bytes(),
        )
        .unwrap();
        assert_eq!(s.state(), OtaState::Downloading);
        assert_eq!(fetch_all(&s), img);
        assert_eq!(s.state(), OtaState::Fetched);
        assert!(s.check_firmware().unwrap());
        s.report_progress(100, Some("done")).unwrap();
        let sent = sent.lock().unwrap();
        assert_eq!(
            sent.last().unwrap(),
            &(
                "/ota/device/progress/pk/dn".to_string(),
                r#"{"id":1,"params":{"step":"100","desc":"done"}}"#.to_string()
            )
        );
    }

    #[test]
    fn bad_messages_and_wrong_topics_change_nothing() {
        let img = image(100, 3);
        let (s, _) = session(MemorySource::new(img));
        let good = notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img));
        assert!(matches!(
            s.handle_message("/ota/device/upgrade/pk/other", good.as_bytes()),
            Err(Error::InvalidParam("topic"))
        ));
        assert_eq!(s.state(), OtaState::Idle);
        for (msg, want) in [
            (good.replace("1000", "1001"), NoticeError::NotSuccess),
            (
                good.replace("\"size\":100", "\"size\":0"),
                NoticeError::BadSize,
            ),
            (
                good[..good.len() - 1].to_string(),
                NoticeError::Json(ota::protocol::json::JsonError::Syntax),
            ),
        ] {
            assert_eq!(
                s.handle_message(TOPIC, msg.as_bytes()),
                Err(Error::Notice(want)),
                "{msg}"
            );
            assert_eq!(s.state(), OtaState::Idle);
            assert_eq!(s.last_error(), Some(Error::Notice(want)));
        }
        // Mid-download, a bad message leaves the download where it was.
        s.handle_message(TOPIC, good.as_bytes()).unwrap();
        let mut buf = [0u8; 40];
        assert_eq!(s.fetch_yield(&mut buf, Duration::ZERO).unwrap(), 40);
        assert!(s.handle_message(TOPIC, b"{}").is_err());
        assert_eq!(s.state(), OtaState::Downloading);
        assert_eq!(s.fetched_size(), 40);
        assert_eq!(s.with_notice(|n| n.version.as_str().to_string()), "2.0.0");
    }

    #[test]
    fn same_image_keeps_the_offset_and_another_image_ends_the_cycle() {
        let img = image(1000, 4);
        let (s, _) = session(MemorySource::new(img));
        let first = notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img));
        s.handle_message(TOPIC, first.as_bytes()).unwrap();
        let mut buf = [0u8; 300];
        s.fetch_yield(&mut buf, Duration::ZERO).unwrap();
        s.handle_message(TOPIC, first.replace("f.bin", "fresh.bin").as_bytes())
            .unwrap();
        assert_eq!(s.fetched_size(), 300);
        assert_eq!(
            s.with_notice(|n| n.url.as_str().to_string()),
            "http://h/fresh.bin",
            "the fresh URL is taken"
        );
        let other = notice(img.len(), "3.0.0", &ota_cloud::md5_hex(img));
        s.handle_message(TOPIC, other.as_bytes()).unwrap();
        assert!(s.is_fetch_finished(), "a different upgrade ends this cycle");
        assert!(!s.check_firmware().unwrap());
        assert!(s.is_fetching(), "and starts as the next one");
        assert_eq!(s.fetched_size(), 0, "from byte 0");
        assert_eq!(fetch_all(&s), img);
        assert!(s.check_firmware().unwrap());
    }

    #[test]
    fn digest_mismatch_is_rejected_and_reported_as_step_minus_3() {
        let img = image(500, 5);
        let (s, sent) = session(MemorySource::new(img));
        let wrong = ota_cloud::md5_hex(b"something else");
        s.handle_message(TOPIC, notice(img.len(), "2.0.0", &wrong).as_bytes())
            .unwrap();
        assert_eq!(fetch_all(&s).len(), img.len());
        assert!(!s.check_firmware().unwrap());
        let count = sent.lock().unwrap().len();
        {
            let sent = sent.lock().unwrap();
            let (topic, text) = sent.last().unwrap();
            assert_eq!(topic, "/ota/device/progress/pk/dn");
            assert!(text.contains(r#""step":"-3""#), "{text}");
        }
        // The firmware's own reports after the SDK's must not contradict or repeat it.
        assert!(matches!(
            s.report_progress(100, None),
            Err(Error::InvalidState(_))
        ));
        assert_eq!(s.report_progress(-3, Some("md5 mismatch")), Ok(()));
        assert_eq!(sent.lock().unwrap().len(), count, "nothing more was sent");
    }

    #[test]
    fn a_short_server_file_fails_the_download_with_step_minus_2() {
        let img = image(500, 6);
        let (s, sent) = session(MemorySource::new(&img[..400]));
        s.handle_message(
            TOPIC,
            notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img)).as_bytes(),
        )
        .unwrap();
        let mut buf = [0u8; 1000];
        let r = s.fetch_yield(&mut buf, Duration::ZERO);
        assert!(
            matches!(r, Err(Error::Download(DownloadError::BadResponse(_)))),
            "a server file smaller than announced is refused at once: {r:?}"
        );
        assert_eq!(s.state(), OtaState::Fetched);
        assert!(!s.check_firmware().unwrap());
        let sent = sent.lock().unwrap();
        assert!(sent.last().unwrap().1.contains(r#""step":"-2""#));
    }

    #[test]
    fn a_larger_server_file_is_cut_at_the_announced_size_and_rejected() {
        let img = image(500, 7);
        let (s, _) = session(MemorySource::new(img));
        let announced = &img[..400];
        s.handle_message(
            TOPIC,
            notice(400, "2.0.0", &ota_cloud::md5_hex(announced)).as_bytes(),
        )
        .unwrap();
        let got = fetch_all(&s);
        assert_eq!(got, announced, "never more than the announced size");
        assert!(
            !s.check_firmware().unwrap(),
            "the server's copy is not the announced image"
        );
    }

    #[test]
    fn progress_and_versions_are_validated() {
        let img = image(10, 8);
        let (s, sent) = session(MemorySource::new(img));
        assert!(matches!(s.report_version(""), Err(Error::InvalidParam(_))));
        assert!(matches!(
            s.report_version(&"1".repeat(64)),
            Err(Error::TooLong {
                what: "version",
                ..
            })
        ));
        s.report_version("1.0.0").unwrap();
        s.request_image("1.0.0").unwrap();
        s.handle_message(
            TOPIC,
            notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img)).as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            s.report_progress(101, None),
            Err(Error::InvalidParam(_))
        ));
        assert!(matches!(
            s.report_progress(-5, None),
            Err(Error::InvalidParam(_))
        ));
        s.report_progress(-4, Some("flash write failed")).unwrap();
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0].0, "/ota/device/inform/pk/dn");
        assert_eq!(sent[0].1, r#"{"id":1,"params":{"version":"1.0.0"}}"#);
        assert_eq!(sent[1].0, "/ota/device/request/pk/dn");
        assert_eq!(
            sent[2].1,
            r#"{"id":3,"params":{"step":"-4","desc":"flash write failed"}}"#
        );
    }

    #[test]
    fn a_different_upgrade_mid_download_reports_the_old_one_superseded() {
        let img = image(1000, 9);
        let (s, sent) = session(MemorySource::new(img));
        s.handle_message(
            TOPIC,
            notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img)).as_bytes(),
        )
        .unwrap();
        let mut buf = [0u8; 100];
        s.fetch_yield(&mut buf, Duration::ZERO).unwrap();
        s.handle_message(
            TOPIC,
            notice(img.len(), "3.0.0", &ota_cloud::md5_hex(img)).as_bytes(),
        )
        .unwrap();
        let last = sent.lock().unwrap().last().unwrap().1.clone();
        assert_eq!(
            last,
            r#"{"id":1,"params":{"step":"-1","desc":"superseded by the upgrade to 3.0.0"}}"#
        );
        assert!(matches!(
            s.fetch_yield(&mut buf, Duration::ZERO),
            Err(Error::Download(DownloadError::Superseded))
        ));
        assert!(s.is_fetch_finished());
        assert!(!s.check_firmware().unwrap());
        assert!(s.is_fetching());
        assert_eq!(s.fetched_size(), 0);
        assert_eq!(fetch_all(&s), img);
        assert!(s.check_firmware().unwrap());
    }

    #[test]
    fn the_same_verified_image_announced_again_is_ignored() {
        let img = image(1000, 10);
        let (s, _) = session(MemorySource::new(img));
        let msg = notice(img.len(), "2.0.0", &ota_cloud::md5_hex(img));
        s.handle_message(TOPIC, msg.as_bytes()).unwrap();
        assert_eq!(fetch_all(&s), img);
        s.handle_message(TOPIC, msg.as_bytes()).unwrap();
        assert_eq!(s.state(), OtaState::Fetched);
        assert!(s.check_firmware().unwrap(), "no second download");
    }

    #[test]
    fn progress_step_minus_one_reports_an_upgrade_failure_once() {
        let img = image(100, 15);
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        r.s.report_progress(-1, Some("user cancelled")).unwrap();
        r.s.report_progress(-1, None).unwrap();
        assert_eq!(
            r.payloads(),
            [r#"{"id":1,"params":{"step":"-1","desc":"user cancelled"}}"#]
        );
        assert_eq!(
            r.s.report_progress(50, None),
            Err(Error::InvalidState("this upgrade already failed"))
        );
    }

    /// Tencent-style resume with every byte already kept: nothing is fetched, the image is checked
    /// at once from the bytes the firmware fed back (fuzzing found it retrying to a failure).
    #[test]
    fn starting_a_download_with_every_byte_kept_checks_the_image_at_once() {
        let img = image(3000, 9);
        let r = rig(Protocol::Tencent, Limits::default(), img, usize::MAX);
        r.s.report_version("1.0.0").unwrap();
        r.announce(&tencent(img, "2.0.0")).unwrap();
        r.s.update_client_digest(img).unwrap();
        r.s.start_download(img.len() as u64, img.len() as u64)
            .unwrap();
        assert!(r.s.is_fetch_finished());
        assert_eq!(r.s.fetched_size(), img.len() as u64);
        assert!(r.s.check_firmware().unwrap());

        // The same with the wrong bytes kept: rejected and reported, not retried.
        let r = rig(Protocol::Tencent, Limits::default(), img, usize::MAX);
        r.s.report_version("1.0.0").unwrap();
        r.announce(&tencent(img, "2.0.0")).unwrap();
        r.s.update_client_digest(image(3000, 10)).unwrap();
        r.s.start_download(img.len() as u64, 0).unwrap();
        assert!(r.s.is_fetch_finished());
        assert!(!r.s.check_firmware().unwrap());
        assert!(
            r.payloads().iter().any(|p| p.contains(r#""state":"fail""#)),
            "{:?}",
            r.payloads()
        );
    }
}

/// Reports the uplink cannot send: lost, and the upgrade goes on regardless.
mod lost_reports {
    use super::*;

    #[test]
    fn a_failing_uplink_loses_reports_but_not_the_upgrade() {
        // UCloud acknowledges a task and reports the download start: both are lost here, and the
        // upgrade goes on regardless.
        let img = image(2000, 1);
        let r = rig(Protocol::Ucloud, Limits::default(), img, usize::MAX);
        r.set_down(true);
        assert_eq!(r.s.report_version("1.0.0"), Err(QUEUE_FULL));
        assert_eq!(r.s.last_error(), Some(QUEUE_FULL));
        r.set_down(false);
        r.s.report_version("1.0.0").unwrap();
        r.set_down(true);
        r.announce(&ucloud(img, "2.0.0", "1.0.0", None)).unwrap();
        assert_eq!(r.s.state(), OtaState::Downloading);
        let (got, err) = r.fetch_all();
        assert_eq!((got.as_slice(), err), (img, None));
        assert!(r.s.check_firmware().unwrap());
        assert_eq!(r.s.report_upgrade_success("2.0.0"), Err(QUEUE_FULL));
        assert_eq!(r.s.last_error(), Some(QUEUE_FULL));
        assert_eq!(
            r.payloads(),
            [r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#],
            "only the version report sent while the uplink worked went out"
        );
    }

    #[test]
    fn a_failure_that_cannot_be_reported_still_ends_the_download() {
        // The server's file is shorter than announced: refused at once, whether or not the
        // failure report goes out.
        let img = image(500, 2);
        let r = rig(Protocol::Aliyun, Limits::default(), &img[..400], usize::MAX);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        r.set_down(true);
        let (_, err) = r.fetch_all();
        assert_eq!(
            err,
            Some(Error::Download(DownloadError::BadResponse(
                "server file is smaller than the announced size"
            )))
        );
        assert_eq!(r.s.state(), OtaState::Fetched);
        assert!(!r.s.check_firmware().unwrap());
        // The SDK counts the failure as reported: the firmware's own -2 adds nothing.
        r.set_down(false);
        r.s.report_progress(-2, Some("again")).unwrap();
        assert!(r.payloads().is_empty(), "{:?}", r.payloads());

        // A digest mismatch is rejected the same way.
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.announce(&aliyun(image(500, 3), "2.0.0")).unwrap();
        r.set_down(true);
        assert_eq!(r.fetch_all(), (img.to_vec(), None));
        assert_eq!(r.s.state(), OtaState::Fetched);
        // The last error names the mismatch, not the report that could not be sent.
        assert_eq!(
            r.s.last_error(),
            Some(Error::Download(DownloadError::BadResponse(
                "digest mismatch"
            )))
        );
        assert!(!r.s.check_firmware().unwrap());
        r.set_down(false);
        assert_eq!(
            r.s.report_progress(100, None),
            Err(Error::InvalidState("this upgrade already failed"))
        );
        assert!(r.payloads().is_empty());
    }

    #[test]
    fn superseding_and_refusing_work_without_their_reports() {
        let img = image(1000, 4);
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(r.s.fetch_yield(&mut buf, Duration::ZERO), Ok(100));
        r.set_down(true);
        r.announce(&aliyun(img, "3.0.0")).unwrap();
        assert!(r.s.is_fetch_finished(), "the superseded cycle ends");
        assert!(r.s.is_fetching(), "the new upgrade is the next cycle");
        assert_eq!(r.s.fetched_size(), 0, "the new upgrade starts over");
        assert_eq!(r.s.with_notice(|n| n.version.as_str().to_string()), "3.0.0");
        r.set_down(false);
        assert_eq!(r.fetch_all(), (img.to_vec(), None));
        assert!(r.s.check_firmware().unwrap());
        assert!(r.payloads().is_empty(), "{:?}", r.payloads());

        // UCloud: a task for another running version is refused; the refusal is lost and the
        // session stays idle.
        let r = rig(Protocol::Ucloud, Limits::default(), img, usize::MAX);
        r.s.report_version("1.0.0").unwrap();
        r.set_down(true);
        assert_eq!(
            r.announce(&ucloud(img, "2.0.0", "0.9.0", None)),
            Err(Error::Notice(NoticeError::NotForRunningVersion))
        );
        assert_eq!(r.s.state(), OtaState::Idle);
        assert_eq!(r.payloads().len(), 1, "{:?}", r.payloads());
    }
}

/// An expired download URL (HTTP 403): a fresh one asked for where the platform has a request
/// message, the failure reported otherwise.
mod expired_urls {
    use super::*;

    #[test]
    fn an_expired_url_asks_for_a_fresh_one_only_when_it_can() {
        let img = image(800, 5);
        let expired = || {
            let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
            r.script()
                .reads
                .extend([None, Some(Err(DownloadError::Status(403)))]);
            r
        };
        let desc = r#""step":"-2","desc":"download failed: URL expired (HTTP 403)""#;

        // No version reported yet: nothing to ask with.
        let r = expired();
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert_eq!(
            r.fetch_all().1,
            Some(Error::Download(DownloadError::Status(403)))
        );
        assert_eq!(r.topics(), [PROGRESS]);
        assert!(r.payloads()[0].contains(desc), "{:?}", r.payloads());

        // With a running version the request goes out first; -2 follows only when no fresh URL
        // came within the wait, and its desc names the expiry.
        let r = expired();
        r.s.set_fresh_url_wait(Duration::from_millis(50)).unwrap();
        r.s.report_version("1.0.0").unwrap();
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert_eq!(
            r.fetch_all().1,
            Some(Error::Download(DownloadError::Status(403)))
        );
        let sent = r.sent.lock().unwrap().clone();
        let topics: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
        let request = topics
            .iter()
            .position(|t| *t == REQUEST)
            .expect("request sent");
        let failure = sent
            .iter()
            .position(|(_, p)| p.contains(r#""step":"-2""#))
            .expect("-2 sent after the wait");
        assert!(request < failure, "{sent:?}");
        assert!(
            sent[request]
                .1
                .ends_with(r#""params":{"version":"1.0.0"}}"#),
            "{sent:?}"
        );
        assert!(
            sent[failure]
                .1
                .contains("URL expired (HTTP 403) and no fresh URL within"),
            "{sent:?}"
        );
    }

    #[test]
    fn an_expired_url_is_only_reported_where_the_device_cannot_ask_for_the_upgrade() {
        // Tencent has no request message: the platform hears of the expiry (result_code -3) and
        // re-sends the task itself.
        let img = image(800, 18);
        let r = rig(Protocol::Tencent, Limits::default(), img, usize::MAX);
        r.script()
            .reads
            .extend([None, Some(Err(DownloadError::Status(403)))]);
        r.s.report_version("1.0.0").unwrap();
        let fw = Firmware::new("2.0.0", URL, img);
        r.announce(&ota_cloud::tencent::update_message(&fw))
            .unwrap();
        assert_eq!(
            r.fetch_all().1,
            Some(Error::Download(DownloadError::Status(403)))
        );
        assert_eq!(
            r.payloads(),
            [
                r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
                r#"{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-3","result_msg":"download failed: URL expired (HTTP 403)"},"version":"2.0.0"}}"#
            ]
        );
    }

    #[test]
    fn an_expired_url_whose_request_is_lost_is_not_retried() {
        let img = image(800, 6);
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.script()
            .reads
            .extend([None, Some(Err(DownloadError::Status(403)))]);
        r.s.report_version("1.0.0").unwrap();
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        r.set_down(true);
        assert_eq!(
            r.fetch_all().1,
            Some(Error::Download(DownloadError::Status(403)))
        );
        assert_eq!(r.s.state(), OtaState::Fetched);
        r.set_down(false);
        assert_eq!(
            r.topics(),
            ["/ota/device/inform/pk/dn"],
            "neither failure nor request"
        );
    }
}

/// Sources that fail to open, end early, keep the caller waiting or answer with the wrong range.
mod source_failures {
    use super::*;

    #[test]
    fn every_download_failure_is_reported_with_its_cause() {
        let img = image(600, 7);
        let cases = [
            (
                DownloadError::Status(404),
                "download failed: firmware not found (HTTP 404)",
            ),
            (
                DownloadError::Status(500),
                "download failed: HTTP error status",
            ),
            (
                DownloadError::Connect,
                "download failed: cannot connect to the server",
            ),
            (
                DownloadError::Resolve,
                "download failed: cannot connect to the server",
            ),
            (DownloadError::Timeout, "download failed: timed out"),
            (
                DownloadError::Tls,
                "download failed: TLS verification failed",
            ),
            (
                DownloadError::TlsBroken,
                "download failed: TLS connection broken",
            ),
            (
                DownloadError::Truncated,
                "download failed: connection ended early",
            ),
            (
                DownloadError::Oversize,
                "download failed: file larger than announced",
            ),
            (
                DownloadError::Redirects,
                "download failed: too many redirects",
            ),
            (
                DownloadError::RedirectScheme,
                "download failed: redirect to a weaker scheme refused",
            ),
            (
                DownloadError::PlainHttp,
                "download failed: plain http:// not allowed",
            ),
            (
                DownloadError::BadResponse("x"),
                "download failed: malformed HTTP response",
            ),
            (DownloadError::Url, "download failed"),
            (
                DownloadError::Io(std::io::ErrorKind::ConnectionReset),
                "download failed",
            ),
            (DownloadError::Restarted, "download failed"),
        ];
        for (e, desc) in cases {
            let r = rig(Protocol::Aliyun, Limits::default(), img, 250);
            r.s.set_retry_policy(RetryPolicy {
                max_attempts: 0,
                ..r.s.retry_policy()
            })
            .unwrap();
            r.script().reads.extend([None, None, Some(Err(e))]);
            r.announce(&aliyun(img, "2.0.0")).unwrap();
            let (got, err) = r.fetch_all();
            assert_eq!(got.len(), 250, "{e:?}");
            assert_eq!(err, Some(Error::Download(e)));
            assert_eq!(r.s.state(), OtaState::Fetched, "{e:?}");
            assert!(!r.s.check_firmware().unwrap());
            assert_eq!(r.s.retries(), 0);
            let last = r.payloads().last().cloned().unwrap();
            assert!(
                last.ends_with(&format!(r#""step":"-2","desc":"{desc}"}}}}"#)),
                "{e:?}: {last}"
            );
        }
    }

    #[test]
    fn a_source_that_cannot_open_is_retried_then_reported() {
        let img = image(3000, 8);
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.script()
            .open_errors
            .extend([DownloadError::Connect, DownloadError::Timeout]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert_eq!(r.fetch_all(), (img.to_vec(), None));
        assert!(r.s.check_firmware().unwrap());
        assert_eq!(r.s.retries(), 2);
        assert_eq!(r.script().opens, [0, 0, 0]);

        // More failures in a row than the policy allows (3): the download fails.
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.script().open_errors.extend([DownloadError::Connect; 4]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert_eq!(
            r.fetch_all().1,
            Some(Error::Download(DownloadError::Connect))
        );
        assert_eq!(r.script().opens.len(), 4);
        assert!(r.payloads()[0].contains("cannot connect to the server"));
    }

    #[test]
    fn a_body_that_ends_early_resumes_from_the_offset() {
        let img = image(1000, 9);
        let r = rig(Protocol::Aliyun, Limits::default(), img, 300);
        // Headers, 300 bytes, then the end of the body (no error): 700 bytes are missing.
        r.script().reads.extend([None, None, Some(Ok(Chunk::End))]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert_eq!(r.fetch_all(), (img.to_vec(), None));
        assert!(r.s.check_firmware().unwrap());
        assert_eq!(r.script().opens, [0, 300]);
        assert_eq!(r.s.retries(), 1);
        assert!(r.payloads().is_empty());
    }

    #[test]
    fn an_early_pending_does_not_end_the_fetch_yield_call() {
        let img = image(1000, 10);
        let r = rig(Protocol::Aliyun, Limits::default(), img, usize::MAX);
        r.script()
            .reads
            .extend([None, Some(Ok(Chunk::Pending)), Some(Ok(Chunk::Pending))]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        let mut buf = [0u8; 400];
        assert_eq!(
            r.s.fetch_yield(&mut buf, Duration::from_secs(5)),
            Ok(400),
            "the call goes on waiting until its own timeout"
        );
        assert_eq!(&buf[..], &img[..400]);
    }

    #[test]
    fn a_partial_answer_for_another_range_fails_the_download() {
        let img = image(1000, 11);
        let opened = |start, total| {
            Some(Ok(Chunk::Opened(OpenInfo {
                status: 206,
                content_length: Some(1000 - start),
                range_start: Some(start),
                range_total: Some(total),
            })))
        };
        let bad = r#""step":"-2","desc":"download failed: malformed HTTP response""#;
        // The connection breaks at 300; the resumed request is answered from byte 0.
        let r = rig(Protocol::Aliyun, Limits::default(), img, 300);
        r.script().reads.extend([
            None,
            None,
            Some(Err(DownloadError::Io(std::io::ErrorKind::ConnectionReset))),
            opened(0, 1000),
        ]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        let (got, err) = r.fetch_all();
        assert_eq!(got, &img[..300]);
        assert_eq!(
            err,
            Some(Error::Download(DownloadError::BadResponse(
                "Content-Range does not match the request"
            )))
        );
        assert_eq!(r.script().opens, [0, 300]);
        assert!(r.payloads()[0].contains(bad));
        // A range of another total size, at the right offset, fails the same way.
        let r = rig(Protocol::Aliyun, Limits::default(), img, 300);
        r.script().reads.extend([opened(0, 2000)]);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        assert!(matches!(
            r.fetch_all(),
            (v, Some(Error::Download(DownloadError::BadResponse(_)))) if v.is_empty()
        ));
    }

    #[test]
    fn a_resume_offset_past_the_servers_file_fails_with_its_status() {
        // The image is announced at 1000 bytes but the server holds 500: a resume at 800 gets 416.
        let img = image(1000, 12);
        let r = rig(Protocol::Aliyun, Limits::default(), &img[..500], usize::MAX);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        r.s.start_download(800, 1000).unwrap();
        assert_eq!(r.s.fetched_size(), 800);
        let mut buf = [0u8; 100];
        assert_eq!(
            r.s.fetch_yield(&mut buf, Duration::ZERO),
            Err(Error::Download(DownloadError::Status(416)))
        );
        assert!(r.payloads()[0].contains("HTTP error status"));
    }
}

/// Argument checks and fixed-size limits.
mod limits {
    use super::*;

    #[test]
    fn calls_with_bad_arguments_or_in_the_wrong_state_change_nothing() {
        let img = image(1000, 13);
        let r = rig(Protocol::Tencent, Limits::default(), img, usize::MAX);
        assert_eq!(
            r.s.reset_client_digest(),
            Err(Error::InvalidState("no upgrade accepted"))
        );
        assert_eq!(
            r.s.update_client_digest(&img[..10]),
            Err(Error::InvalidState("no upgrade accepted"))
        );
        assert_eq!(
            r.s.report_module_version(&"m".repeat(64), "1.0.0"),
            Err(Error::TooLong {
                what: "module",
                len: 64,
                max: 63
            })
        );
        assert_eq!(
            r.s.set_breakpoint_store(Box::new(MemoryStore::default())),
            Ok(())
        );
        let fw = Firmware::new("2.0.0", URL, img);
        r.announce(&ota_cloud::tencent::update_message(&fw))
            .unwrap();
        let mut buf = [0u8; 300];
        assert_eq!(r.s.fetch_yield(&mut buf, Duration::ZERO), Ok(300));
        assert_eq!(
            r.s.fetch_yield(&mut [], Duration::ZERO),
            Err(Error::InvalidParam("buffer is empty"))
        );
        assert_eq!(
            r.s.start_download(0, 999),
            Err(Error::InvalidParam("size differs from the announced size"))
        );
        assert_eq!(
            r.s.set_breakpoint_store(Box::new(MemoryStore::default())),
            Err(Error::InvalidState(
                "cannot change the store while fetching"
            ))
        );
        assert_eq!(
            r.s.last_error(),
            Some(Error::InvalidState(
                "cannot change the store while fetching"
            ))
        );
        // None of it disturbed the download.
        assert_eq!(r.s.state(), OtaState::Downloading);
        assert_eq!(r.s.fetched_size(), 300);
        let (rest, err) = r.fetch_all();
        assert_eq!((&rest[..], err), (&img[300..], None));
        assert!(r.s.check_firmware().unwrap());
    }

    #[test]
    fn a_report_larger_than_the_message_buffer_is_refused() {
        // `{"id":N,"params":{"version":"1.0"}}` takes 34 bytes besides the id (an Aliyun id, at
        // most 10 digits): 44 at most; with the long version, 56 at least.
        let limits = Limits {
            message: 50,
            ..Limits::default()
        };
        let r = rig(Protocol::Aliyun, limits, image(10, 14), usize::MAX);
        r.s.report_version("1.0").unwrap();
        let long = "1.0.0-with-a-long-suffix";
        assert_eq!(
            r.s.report_version(long),
            Err(Error::TooLong {
                what: "upstream message",
                len: 51,
                max: 50
            })
        );
        assert_eq!(
            r.payloads(),
            [r#"{"id":1,"params":{"version":"1.0"}}"#],
            "nothing half-written went out"
        );
        // The session goes on after the refused message.
        r.s.report_version("1.1").unwrap();
        assert_eq!(r.payloads()[1], r#"{"id":2,"params":{"version":"1.1"}}"#);
    }

    #[test]
    fn the_ninth_module_replaces_the_oldest_running_version() {
        // UCloud refuses a task that upgrades from a version the module does not run; a session
        // remembers eight modules' versions, so the first one reported is forgotten by the ninth.
        let img = image(100, 16);
        let r = rig(Protocol::Ucloud, Limits::default(), img, usize::MAX);
        for i in 0..9 {
            r.s.report_module_version(&format!("m{i}"), "1.0").unwrap();
        }
        assert_eq!(
            r.announce(&ucloud(img, "2.0", "0.9", Some("m1"))),
            Err(Error::Notice(NoticeError::NotForRunningVersion)),
            "m1 is still known to run 1.0"
        );
        assert!(r.payloads()[9].contains("refused: task upgrades from 0.9 but 1.0 runs"));
        assert_eq!(
            r.announce(&ucloud(img, "2.0", "0.9", Some("m0"))),
            Ok(()),
            "m0's version was forgotten: nothing to contradict the task"
        );
        assert_eq!(r.s.state(), OtaState::Downloading);
        // Reporting a known module again updates it in place.
        r.s.report_module_version("m8", "1.1").unwrap();
        assert_eq!(
            r.announce(&ucloud(img, "2.0", "1.0", Some("m8"))),
            Err(Error::Notice(NoticeError::NotForRunningVersion))
        );
    }

    #[test]
    fn a_failure_description_is_cut_on_a_character_boundary() {
        // The description buffer holds 256 bytes; "superseded by the upgrade to " takes 29, and
        // the new version (two-byte characters) cannot end exactly on the limit.
        let limits = Limits {
            version: 400,
            ..Limits::default()
        };
        let img = image(500, 17);
        let r = rig(Protocol::Aliyun, limits, img, usize::MAX);
        r.announce(&aliyun(img, "2.0.0")).unwrap();
        let mut buf = [0u8; 10];
        r.s.fetch_yield(&mut buf, Duration::ZERO).unwrap();
        let long = "é".repeat(150);
        r.announce(&aliyun(img, &long)).unwrap();
        assert!(
            r.s.is_fetch_finished() && r.s.is_fetching(),
            "the next cycle"
        );
        assert_eq!(r.s.with_notice(|n| n.version.len()), 300);
        let expected = format!("superseded by the upgrade to {}", "é".repeat(113));
        assert_eq!(expected.len(), 255);
        assert_eq!(
            r.payloads(),
            [format!(
                r#"{{"id":1,"params":{{"step":"-1","desc":"{expected}"}}}}"#
            )]
        );
    }

    /// The bounds of the retry policy and of the fresh-URL wait are the core's, so a Rust caller
    /// meets them as the C API does: refused at construction and by the setters, which then change
    /// nothing and leave the error for `last_error`.
    #[test]
    fn retry_and_fresh_url_bounds_are_the_cores() {
        let too_many = RetryPolicy {
            max_attempts: ota::retry::MAX_ATTEMPTS_LIMIT + 1,
            ..RetryPolicy::default()
        };
        let build = |config: OtaConfig| {
            let (uplink, _down) = Flaky::new(Sent::default());
            OtaSession::new(
                "pk",
                "dn",
                config,
                Box::new(uplink),
                Box::new(MemorySource::new(image(10, 1))),
            )
        };
        assert!(matches!(
            build(OtaConfig {
                retry: too_many,
                ..OtaConfig::default()
            }),
            Err(Error::InvalidParam(_))
        ));
        assert!(matches!(
            build(OtaConfig {
                fresh_url_wait: ota::ota::MAX_FRESH_URL_WAIT + Duration::from_secs(1),
                ..OtaConfig::default()
            }),
            Err(Error::InvalidParam(_))
        ));
        let r = rig(Protocol::Aliyun, Limits::default(), image(10, 1), 4);
        let before = r.s.retry_policy();
        assert!(matches!(
            r.s.set_retry_policy(too_many),
            Err(Error::InvalidParam(_))
        ));
        assert_eq!(r.s.retry_policy().max_attempts, before.max_attempts);
        let at_limit = RetryPolicy {
            max_attempts: ota::retry::MAX_ATTEMPTS_LIMIT,
            ..before
        };
        r.s.set_retry_policy(at_limit).unwrap();
        assert_eq!(r.s.retry_policy().max_attempts, 1000);
        assert!(matches!(
            r.s.set_fresh_url_wait(Duration::from_secs(3601)),
            Err(Error::InvalidParam(_))
        ));
        r.s.set_fresh_url_wait(Duration::from_secs(3600)).unwrap();
    }
}

/// Sessions attached to an MQTT client (the embedded broker).
mod attach {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn attach_refuses_a_ca_that_is_not_a_certificate() {
        let broker = ota_cloud::EmbeddedBroker::start().unwrap();
        let mqtt = MqttClient::connect(&ota::MqttOptions::new(
            broker.host(),
            broker.port(),
            "ca-check",
        ))
        .unwrap();
        let config = OtaConfig {
            http: HttpConfig {
                ca_pem: Some(Arc::from(&b"not a certificate"[..])),
                ..HttpConfig::default()
            },
            ..OtaConfig::default()
        };
        assert!(matches!(
            OtaSession::attach(&mqtt, "pk", "dn", config),
            Err(Error::InvalidParam("HTTPS CA is not a PEM certificate"))
        ));
        // The client is still usable for a session with a sound configuration.
        let s = OtaSession::attach(&mqtt, "pk", "dn", OtaConfig::default()).unwrap();
        s.report_version("1.0.0").unwrap();
    }

    /// Two sessions of one device on one client would share one subscription, the second taking
    /// the first one's upgrade messages: the second is refused while the first is attached; another
    /// device on the same client is fine, and after a detach the device can attach again and gets
    /// its messages.
    #[test]
    fn a_second_session_of_the_same_device_on_one_client_is_refused() {
        let broker = ota_cloud::EmbeddedBroker::start().unwrap();
        let connect = |id: &str| {
            MqttClient::connect(&ota::MqttOptions::new(broker.host(), broker.port(), id)).unwrap()
        };
        let mqtt = connect("one-client");
        let first = OtaSession::attach(&mqtt, "pk", "dn", OtaConfig::default()).unwrap();
        assert!(matches!(
            OtaSession::attach(&mqtt, "pk", "dn", OtaConfig::default()),
            Err(Error::DeviceTaken)
        ));
        let _other = OtaSession::attach(&mqtt, "pk", "dn2", OtaConfig::default()).unwrap();
        first.detach(&mqtt).unwrap();
        let again = OtaSession::attach(&mqtt, "pk", "dn", OtaConfig::default()).unwrap();
        // Its subscription is the live one: an upgrade message starts its download.
        let cloud = connect("cloud");
        let notice = r#"{"code":"1000","data":{"size":10,"version":"2.0.0","url":"http://127.0.0.1:9/fw.bin","md5":"0123456789abcdef0123456789abcdef"},"id":1,"message":"success"}"#;
        let deadline = Instant::now() + WAIT;
        while !again.is_fetching() {
            assert!(
                Instant::now() < deadline,
                "the upgrade message never arrived"
            );
            cloud
                .publish(
                    again.downstream_topic(),
                    ota::mqtt::QoS::AtLeastOnce,
                    false,
                    notice.as_bytes(),
                )
                .unwrap();
            cloud.yield_for(Duration::from_millis(50)).unwrap();
            mqtt.yield_for(Duration::from_millis(200)).unwrap();
        }
        assert!(!first.is_fetching(), "the detached session got nothing");
    }
}
