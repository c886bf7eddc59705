//! Delta upgrades through the session (issue 17): the platform serves a detools sequential patch
//! (the committed fixtures of tests/fixtures/delta, made by the real detools) over real HTTP,
//! the session has the running image as its delta source, and the firmware, written like the
//! iotkit sample (appends what FetchYield returns, never rewinds, leaves on IsFetchFinish),
//! stores the NEW image byte for byte.

mod common;

use std::time::Duration;

use common::delta::{aliyun_device, fixture, sample, DeltaSource, SampleFirmware};
use common::recorder::failure_reports;
use ota::delta::DeltaError;
use ota::Error;
use ota_cloud::http::Faults;
use ota_cloud::FirmwareServer;

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
            for buf_len in [1, 2, 3, 777, 5000] {
                let server = FirmwareServer::start(patch.clone()).unwrap();
                let (s, _) = aliyun_device(&server, &patch, Some(DeltaSource::in_memory(&old)));
                let out = sample(&s, buf_len);
                let what = format!("{pair}.{compression} in {buf_len}-byte calls");
                assert!(
                    out.stored == new,
                    "{what}: {} bytes of {}",
                    out.stored.len(),
                    new.len()
                );
                assert!(out.valid, "{what}: {:?}", out.errors);
                assert!(out.errors.is_empty(), "{what}: {:?}", out.errors);
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
    let old = DeltaSource::in_memory(&fixture("small-change.old"));
    let (s, _) = aliyun_device(&server, &image, Some(old));
    let out = sample(&s, 5000);
    assert!(out.stored == image && out.valid && out.errors.is_empty());
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
    let old = DeltaSource::in_memory(&fixture("inserted-block.old"));
    let (s, _) = aliyun_device(&server, &patch, Some(old));
    let out = sample(&s, 5000);
    assert!(
        out.stored == new && out.valid && out.errors.is_empty(),
        "{:?}",
        out.errors
    );
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
    let old = DeltaSource::in_memory(&fixture("unrelated.old"));
    let (s, sent) = aliyun_device(&server, &patch, Some(old));
    let out = sample(&s, 5000);
    assert!(!out.valid);
    assert!(
        matches!(
            s.last_error(),
            Some(Error::Delta(DeltaError::OldRange { .. }))
        ),
        "{:?}",
        s.last_error()
    );
    let failures = failure_reports(&sent);
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
    let old = DeltaSource::in_memory(&fixture("small-change.old"));
    let (s, sent) = aliyun_device(&server, &announced, Some(old));
    let out = sample(&s, 5000);
    assert!(!out.valid, "a corrupted patch");
    assert!(out.stored.len() as u64 <= s.file_size());
    assert!(s.last_error().is_some());
    // Whichever check caught it (the applier, or the digest at the end), one report.
    let failures = failure_reports(&sent);
    assert_eq!(failures.len(), 1, "{failures:?}");
}

/// Calls smaller than the patch's tail: the call that hands out the new image's last bytes
/// reads the rest of the patch too, so the download has ended when it returns (IsFetchFinish
/// true, no further call, no "fetch failed" report); before, the next call failed with
/// INVALID_STATE and an iotkit-style firmware reported -2 after a valid download.
#[test]
fn the_call_with_the_last_bytes_ends_a_delta_download_whatever_the_buffer() {
    for compression in ["none", "heatshrink"] {
        let patch = fixture(&format!("small-change.{compression}.patch"));
        let (old, new) = (fixture("small-change.old"), fixture("small-change.new"));
        for buf_len in 1..=8 {
            let what = format!("{compression} in {buf_len}-byte calls");
            let server = FirmwareServer::start(patch.clone()).unwrap();
            let (s, sent) = aliyun_device(&server, &patch, Some(DeltaSource::in_memory(&old)));
            let mut firmware = SampleFirmware::new(buf_len);
            while firmware.stored.len() < new.len() {
                assert!(!s.is_fetch_finished(), "{what}: ended early");
                firmware.call(&s);
            }
            assert!(
                s.is_fetch_finished(),
                "{what}: the last bytes came without the end"
            );
            assert!(firmware.stored == new, "{what}");
            assert!(firmware.errors.is_empty(), "{what}: {:?}", firmware.errors);
            assert!(s.check_firmware().unwrap(), "{what}");
            assert!(
                failure_reports(&sent).is_empty(),
                "{what}: {:?}",
                failure_reports(&sent)
            );
        }
    }
}

/// The same when the patch's tail is late: the call with the image's last bytes returns them
/// at its timeout, the next call reads the tail and ends the download with 0 bytes, and the
/// sample's "fetch failed" after it is dropped, not reported (nothing failed).
#[test]
fn a_late_patch_tail_ends_the_download_with_0_and_no_failure_report() {
    let patch = fixture("small-change.none.patch");
    let (old, new) = (fixture("small-change.old"), fixture("small-change.new"));
    let faults = Faults {
        stall_once: Some((patch.len() as u64 - 1, 1500)),
        ..Faults::default()
    };
    let server = FirmwareServer::start_with(patch.clone(), faults).unwrap();
    let (s, sent) = aliyun_device(&server, &patch, Some(DeltaSource::in_memory(&old)));
    let mut buf = [0u8; 1];
    let mut stored = Vec::new();
    let mut returns = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s.is_fetch_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at {}",
            stored.len()
        );
        let r = s.fetch_yield(&mut buf, Duration::from_millis(400));
        match r {
            Ok(n) => stored.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e:?} at {}", stored.len()),
        }
        if !matches!(r, Ok(n) if n > 0) {
            let _ = s.report_progress(-2, None);
        }
        if stored.len() == new.len() {
            returns.push(r.unwrap());
        }
    }
    assert!(stored == new);
    assert_eq!(
        returns.last(),
        Some(&0),
        "the download ended in a call after the last bytes: {returns:?}"
    );
    assert!(s.check_firmware().unwrap());
    assert!(
        failure_reports(&sent).is_empty(),
        "{:?}",
        failure_reports(&sent)
    );
}
