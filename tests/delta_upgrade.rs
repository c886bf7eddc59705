//! Delta upgrades through the session (issue 17): the platform serves a detools sequential patch
//! (the committed fixtures of tests/fixtures/delta, made by the real detools) over real HTTP,
//! the session has the running image as its delta source, and the firmware, written like the
//! iotkit sample (appends what FetchYield returns, never rewinds, leaves on IsFetchFinish),
//! stores the NEW image byte for byte.

mod common;
use common::delta::fixture;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::recorder::{payloads, Recorder, Sent};
use ota::delta::DeltaError;
use ota::ota::DeltaOptions;
use ota::source::{HttpConfig, HttpSource};
use ota::{Error, OtaConfig, OtaSession, Protocol};
use ota_cloud::http::Faults;
use ota_cloud::FirmwareServer;

/// A session on Aliyun with `old` as its delta source (a slot of 64 KiB), told to upgrade to
/// what `server` serves.
fn device(server: &FirmwareServer, served: &[u8], old: Option<Vec<u8>>) -> (OtaSession, Sent) {
    let sent: Sent = Arc::default();
    let source = HttpSource::new(HttpConfig::default()).unwrap();
    let session = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(Protocol::Aliyun),
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .unwrap();
    if let Some(old) = old {
        let old: &'static [u8] = Box::leak(old.into_boxed_slice());
        session
            .set_delta_source(Box::new(old), DeltaOptions::for_slot(64 * 1024))
            .unwrap();
    }
    session.report_version("1.0.0").unwrap();
    let notice = common::firmware::aliyun_notice(served, &server.url(), "2.0.0");
    session
        .handle_message(session.downstream_topic(), notice.as_bytes())
        .unwrap();
    assert!(session.is_fetching());
    (session, sent)
}

/// The iotkit sample's loop with a `buf_len`-byte buffer: the bytes stored, and the verdict.
fn sample(s: &OtaSession, buf_len: usize) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stored = Vec::new();
    let mut buf = vec![0u8; buf_len];
    while !s.is_fetch_finished() {
        assert!(Instant::now() < deadline, "stuck at {}", stored.len());
        if let Ok(n) = s.fetch_yield(&mut buf, Duration::from_secs(1)) {
            assert_eq!(
                stored.len() as u64 + n as u64,
                s.fetched_size(),
                "FETCHED_SIZE counts what the caller got"
            );
            stored.extend_from_slice(&buf[..n]);
        }
    }
    (stored, s.check_firmware().unwrap())
}

#[test]
fn every_fixture_patch_makes_the_new_image_through_fetch_yield() {
    for pair in [
        "small-change",
        "inserted-block",
        "appended",
        "unrelated",
        "empty-old",
    ] {
        for compression in ["none", "heatshrink"] {
            let patch = fixture(&format!("{pair}.{compression}.patch"));
            let (old, new) = (
                fixture(&format!("{pair}.old")),
                fixture(&format!("{pair}.new")),
            );
            for buf_len in [1, 777, 5000] {
                let server = FirmwareServer::start(patch.clone()).unwrap();
                let (s, _) = device(&server, &patch, Some(old.clone()));
                let (stored, valid) = sample(&s, buf_len);
                let what = format!("{pair}.{compression} in {buf_len}-byte calls");
                assert!(
                    stored == new,
                    "{what}: {} bytes of {}",
                    stored.len(),
                    new.len()
                );
                assert!(valid, "{what}");
                assert_eq!(
                    s.file_size(),
                    new.len() as u64,
                    "{what}: FILE_SIZE is the new image's"
                );
            }
        }
    }
}

#[test]
fn a_plain_image_with_a_delta_source_set_is_handed_out_as_it_comes() {
    // A Cortex-M image starts with its stack pointer, little-endian 0x2000_8000: first byte 0,
    // a detools header's "sequential, uncompressed".
    let mut image = common::firmware::image(20_000, 5).to_vec();
    image[..4].copy_from_slice(&0x2000_8000u32.to_le_bytes());
    let server = FirmwareServer::start(image.clone()).unwrap();
    let (s, _) = device(&server, &image, Some(fixture("small-change.old")));
    let (stored, valid) = sample(&s, 5000);
    assert!(stored == image && valid);
}

#[test]
fn a_cut_patch_resumes_with_range_and_the_new_image_stays_whole() {
    let patch = fixture("inserted-block.heatshrink.patch");
    let new = fixture("inserted-block.new");
    let faults = Faults {
        cut_at: Some(300),
        ..Faults::default()
    };
    let server = FirmwareServer::start_with(patch.clone(), faults).unwrap();
    let (s, _) = device(&server, &patch, Some(fixture("inserted-block.old")));
    let (stored, valid) = sample(&s, 5000);
    assert!(stored == new && valid);
    let log = server.requests_when(2, Duration::from_secs(5));
    let ranges: Vec<Option<String>> = log.iter().map(|r| r.range.clone()).collect();
    assert_eq!(
        ranges,
        [None, Some("bytes=300-".into())],
        "the patch resumes where it was cut"
    );
}

#[test]
fn a_patch_for_another_old_image_fails_once_and_is_never_valid() {
    // The appended pair's patch reads all 6000 bytes of its old image; this one has 3000.
    let patch = fixture("appended.heatshrink.patch");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let (s, sent) = device(&server, &patch, Some(fixture("unrelated.old")));
    let (_, valid) = sample(&s, 5000);
    assert!(!valid);
    assert!(
        matches!(
            s.last_error(),
            Some(Error::Delta(DeltaError::OldRange { .. }))
        ),
        "{:?}",
        s.last_error()
    );
    let failures: Vec<String> = payloads(&sent)
        .into_iter()
        .filter(|p| p.contains("\"step\":\"-"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("delta patch"), "{failures:?}");
}

#[test]
fn a_corrupted_patch_is_never_reported_valid() {
    let mut patch = fixture("small-change.heatshrink.patch");
    let announced = patch.clone();
    let last = patch.len() - 1;
    patch[last / 2] ^= 0x55;
    let server = FirmwareServer::start(patch).unwrap();
    // Announced with the digest of the good patch: the platform's digest catches it whatever
    // the applier makes of it.
    let (s, sent) = device(&server, &announced, Some(fixture("small-change.old")));
    let (stored, valid) = sample(&s, 5000);
    assert!(!valid, "a corrupted patch");
    assert!(stored.len() as u64 <= s.file_size());
    assert!(s.last_error().is_some());
    // Whichever check caught it (the applier, or the digest at the end), one report.
    let failures: Vec<String> = payloads(&sent)
        .into_iter()
        .filter(|p| p.contains("\"step\":\"-"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
}
