//! The state machine's transitions on in-memory transports (the table at the top of
//! `src/ota/mod.rs`; its less travelled rows are in `engine_edges.rs` and `stream_invariant.rs`),
//! plus the reports each failure sends.

mod common;
use common::recorder::{Recorder, Sent};

use std::sync::Arc;
use std::time::Duration;

use ota::error::{Error, FetchError};
use ota::fetch::MemorySource;
use ota::protocol::NoticeError;
use ota::{OtaConfig, OtaSession, OtaState};

const TOPIC: &str = "/ota/device/upgrade/pk/dn";

fn image(len: usize, seed: u8) -> &'static [u8] {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    Box::leak(v.into_boxed_slice())
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn notice(size: usize, version: &str, md5: &str) -> String {
    format!(
        r#"{{"code":"1000","data":{{"size":{size},"version":"{version}","url":"http://h/f.bin","md5":"{md5}"}},"id":7,"message":"success"}}"#
    )
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
    s.handle_message(TOPIC, notice(img.len(), "2.0.0", &md5_hex(img)).as_bytes())
        .unwrap();
    assert_eq!(s.state(), OtaState::Fetching);
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
    let good = notice(img.len(), "2.0.0", &md5_hex(img));
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
    assert_eq!(s.state(), OtaState::Fetching);
    assert_eq!(s.fetched_size(), 40);
    assert_eq!(s.with_notice(|n| n.version.as_str().to_string()), "2.0.0");
}

#[test]
fn same_image_keeps_the_offset_and_another_image_ends_the_cycle() {
    let img = image(1000, 4);
    let (s, _) = session(MemorySource::new(img));
    let first = notice(img.len(), "2.0.0", &md5_hex(img));
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
    let other = notice(img.len(), "3.0.0", &md5_hex(img));
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
    let wrong = md5_hex(b"something else");
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
    s.handle_message(TOPIC, notice(img.len(), "2.0.0", &md5_hex(img)).as_bytes())
        .unwrap();
    let mut buf = [0u8; 1000];
    let r = s.fetch_yield(&mut buf, Duration::ZERO);
    assert!(
        matches!(r, Err(Error::Fetch(FetchError::BadResponse(_)))),
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
    s.handle_message(TOPIC, notice(400, "2.0.0", &md5_hex(announced)).as_bytes())
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
    s.handle_message(TOPIC, notice(img.len(), "2.0.0", &md5_hex(img)).as_bytes())
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
    s.handle_message(TOPIC, notice(img.len(), "2.0.0", &md5_hex(img)).as_bytes())
        .unwrap();
    let mut buf = [0u8; 100];
    s.fetch_yield(&mut buf, Duration::ZERO).unwrap();
    s.handle_message(TOPIC, notice(img.len(), "3.0.0", &md5_hex(img)).as_bytes())
        .unwrap();
    let last = sent.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(
        last,
        r#"{"id":1,"params":{"step":"-1","desc":"superseded by the upgrade to 3.0.0"}}"#
    );
    assert!(matches!(
        s.fetch_yield(&mut buf, Duration::ZERO),
        Err(Error::Fetch(FetchError::Superseded))
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
    let msg = notice(img.len(), "2.0.0", &md5_hex(img));
    s.handle_message(TOPIC, msg.as_bytes()).unwrap();
    assert_eq!(fetch_all(&s), img);
    s.handle_message(TOPIC, msg.as_bytes()).unwrap();
    assert_eq!(s.state(), OtaState::Fetched);
    assert!(s.check_firmware().unwrap(), "no second download");
}
