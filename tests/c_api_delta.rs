//! Delta upgrades through the C ABI (issue 17): `IOT_OTA_SetDeltaSource(h, read, ctx,
//! old_size)` with an `extern "C"` reader over the running image, then the v2.3 calls as
//! firmware makes them. Real parts: the simulator's embedded MQTT broker, a client playing the
//! platform, and the patch (a committed fixture made by the real detools) over HTTP.

mod common;

use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::Ordering::SeqCst;

use common::capi::{sample, setup, Fetched};
use common::delta::{fixture, read_old, set_delta_source, Answer, Flash};
use common::firmware::aliyun_notice;
use ota::ffi::delta::IOT_OTA_SetDeltaSource;
use ota::ffi::ota::*;
use ota_cloud::http::FirmwareServer;

const INVALID_PARAM: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int;
const INVALID_STATE: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_STATE as c_int;
const DELTA_REFUSED: c_int = IOT_OTA_Err_t::IOT_OTAE_DELTA_REFUSED as c_int;

/// The firmware's buffer.
const FIRMWARE_BUF: usize = 1000;

#[test]
fn set_delta_source_checks_its_arguments_and_the_state() {
    let (_broker, dev, cloud) = setup("args");
    let old = Flash::of("inserted-block", Answer::Honest);
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
    cloud.announce(&dev, &aliyun_notice(&patch, &server.url(), "2.0.0"));
    assert_eq!(set_delta_source(dev.ota, old), INVALID_STATE);
    assert_eq!(IOT_OTA_GetLastError(dev.ota), INVALID_STATE);
    // The download goes on as a plain one: the firmware gets the patch's bytes.
    let got = sample(&dev, FIRMWARE_BUF);
    assert!(got.failures.is_empty() && got.image == patch);
    assert_eq!(
        old.reads.load(SeqCst),
        0,
        "the refused reader is never called"
    );
    assert_eq!(
        set_delta_source(dev.ota, old),
        INVALID_STATE,
        "nor after it"
    );
}

#[test]
fn a_delta_upgrade_through_the_c_api_gives_the_new_image() {
    for compression in ["heatshrink", "none"] {
        let dn = format!("good-{compression}");
        let (_broker, dev, cloud) = setup(&dn);
        let old = Flash::of("inserted-block", Answer::Honest);
        assert_eq!(set_delta_source(dev.ota, old), 0);
        let patch = fixture(&format!("inserted-block.{compression}.patch"));
        let new = fixture("inserted-block.new");
        let server = FirmwareServer::start(patch.clone()).unwrap();
        assert_eq!(dev.ioctl_u32(IOT_OTAG_FILE_SIZE), Ok(0));
        cloud.announce(&dev, &aliyun_notice(&patch, &server.url(), "2.0.0"));
        let got = sample(&dev, FIRMWARE_BUF);
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
    let old = Flash::of("inserted-block", answer);
    assert_eq!(set_delta_source(dev.ota, old), 0);
    let patch = fixture("inserted-block.heatshrink.patch");
    let new = fixture("inserted-block.new");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    cloud.announce(&dev, &aliyun_notice(&patch, &server.url(), "2.0.0"));
    let got = sample(&dev, FIRMWARE_BUF);
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
