//! A delta patch survives a power loss (issue 17, item 3): the breakpoint record holds the patch
//! offset and digest, the new image's offset and the applier's state (its delta tail), so a new
//! session after the restart asks the server for the rest of the patch with `Range` and the
//! firmware, written like the iotkit sample, appends the rest of the NEW image at
//! `IOT_OTAG_FETCHED_SIZE`. Only stored bytes count: a record never covers bytes the firmware
//! got in the call the power loss interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::delta::{device, fixture, upgrade, DeltaSource, SampleFirmware};
use ota::resume::{FileStore, SavePolicy, RECORD_LEN};
use ota::{OtaSession, Protocol};
use ota_cloud::FirmwareServer;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ota-delta-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A device after a (re)start: the record in `record`, saved at every call that may save,
/// `old` as its delta source when given, told to upgrade to what `server` serves.
fn boot(server: &FirmwareServer, served: &[u8], old: Option<&[u8]>, record: &Path) -> OtaSession {
    let notice = common::firmware::aliyun_notice(served, &server.url(), "2.0.0");
    boot_with(old, record, &notice)
}

/// [`boot`] with the upgrade message `notice`.
fn boot_with(old: Option<&[u8]>, record: &Path, notice: &str) -> OtaSession {
    let (s, _) = device(Protocol::Aliyun, old.map(DeltaSource::in_memory), |s| {
        s.set_breakpoint_store(Box::new(FileStore::new(record)))
            .unwrap();
        s.set_save_policy(SavePolicy {
            every_bytes: 1,
            every_percent: 0,
        });
    });
    upgrade(&s, notice);
    s
}

/// Kills the device after `calls` calls, losing what the last call returned (the firmware had
/// not written it yet), restarts it, and lets it finish: the new image is whole and valid,
/// the restart resumed mid-image, and the server was asked for the rest of the patch only.
fn killed_and_resumed(pair: &str, compression: &str, buf_len: usize, calls: usize) {
    let what = format!("{pair}.{compression}, {buf_len}-byte calls, killed after {calls}");
    let patch = fixture(&format!("{pair}.{compression}.patch"));
    let (old, new) = (
        fixture(&format!("{pair}.old")),
        fixture(&format!("{pair}.new")),
    );
    let dir = scratch(&format!("{pair}-{compression}-{buf_len}-{calls}"));
    let record = dir.join("ota.bp");
    let server = FirmwareServer::start(patch.clone()).unwrap();

    let s = boot(&server, &patch, Some(&old), &record);
    let mut firmware = SampleFirmware::new(buf_len);
    let tailed = || std::fs::metadata(&record).is_ok_and(|m| m.len() as usize > RECORD_LEN);
    // At least `calls` calls, and on until a record with the delta tail is on disk (it is
    // written when the patch bytes read so far are used up).
    assert_eq!(
        firmware.run_for(&s, calls),
        None,
        "{what}: ended before the kill"
    );
    while !tailed() {
        assert!(!s.is_fetch_finished(), "{what}: ended before the kill");
        firmware.call(&s);
    }
    assert!(!s.is_fetch_finished(), "{what}: ended before the kill");
    drop(s);
    // The power loss takes what the last call returned.
    firmware.kill();
    let on_disk = std::fs::metadata(&record).unwrap().len() as usize;
    assert!(
        on_disk > RECORD_LEN,
        "{what}: the record carries the delta tail ({on_disk} bytes)"
    );

    let s = boot(&server, &patch, Some(&old), &record);
    let stored = firmware.stored.len();
    // The sample writes at the offset the SDK gives after a restart, within what it stored.
    let resume_at = firmware.resume(&s);
    assert!(
        resume_at > 0,
        "{what}: resumes at new-image byte {resume_at}, within the {stored} stored",
    );
    assert_eq!(
        s.file_size(),
        new.len() as u64,
        "{what}: FILE_SIZE is the new image's"
    );
    let valid = firmware.run(&s);
    assert!(
        firmware.stored == new,
        "{what}: {} bytes of {}",
        firmware.stored.len(),
        new.len()
    );
    assert!(valid, "{what}");

    let mut log = server.requests_when(2, Duration::from_secs(5));
    // By arrival: the log is in the order the responses ended.
    log.sort_by_key(|r| r.seq);
    assert_eq!(log.len(), 2, "{what}: one request per boot");
    let resumed = log[1].range.clone().unwrap_or_default();
    let from: usize = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{what}: the restart asked for {resumed:?}"));
    assert!(
        from > 0 && from < patch.len(),
        "{what}: the patch resumed at byte {from} of {}",
        patch.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_heatshrink_patch_killed_mid_way_resumes_from_its_record() {
    // Very compressible: 100 patch bytes (one read of a 100-byte call) last about 50 calls,
    // and a record is written when they are used up, so the kills come later.
    for (buf_len, calls) in [(100, 60), (50, 100), (7, 400), (1, 700)] {
        killed_and_resumed("inserted-block", "heatshrink", buf_len, calls);
    }
    killed_and_resumed("appended", "heatshrink", 200, 20);
    killed_and_resumed("unrelated", "heatshrink", 64, 30);
}

#[test]
fn an_uncompressed_patch_killed_mid_way_resumes_from_its_record() {
    for (buf_len, calls) in [(100, 20), (1000, 4), (7, 500)] {
        killed_and_resumed("inserted-block", "none", buf_len, calls);
    }
    killed_and_resumed("small-change", "none", 500, 6);
}

#[test]
fn a_record_with_a_delta_tail_is_not_resumed_without_a_delta_source() {
    let patch = fixture("inserted-block.heatshrink.patch");
    let old = fixture("inserted-block.old");
    let dir = scratch("no-source");
    let record = dir.join("ota.bp");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let s = boot(&server, &patch, Some(&old), &record);
    assert_eq!(SampleFirmware::new(100).run_for(&s, 30), None);
    drop(s);
    assert!(std::fs::metadata(&record).unwrap().len() as usize > RECORD_LEN);
    // The firmware after the restart set no delta source: the patch's record means nothing to
    // it, and the download starts over (as the plain bytes of what is served).
    let s = boot(&server, &patch, None, &record);
    assert_eq!(s.fetched_size(), 0);
    let out = common::delta::sample(&s, 1000);
    assert!(out.valid && out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.stored == patch);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_corrupt_delta_tail_is_never_trusted() {
    let patch = fixture("inserted-block.heatshrink.patch");
    let (old, new) = (fixture("inserted-block.old"), fixture("inserted-block.new"));
    let dir = scratch("corrupt-tail");
    let record = dir.join("ota.bp");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    let s = boot(&server, &patch, Some(&old), &record);
    assert_eq!(SampleFirmware::new(100).run_for(&s, 30), None);
    drop(s);
    let bytes = std::fs::read(&record).unwrap();
    assert!(bytes.len() > RECORD_LEN + 100);
    // One bit in the applier's saved window, and a record cut inside its tail.
    for damage in ["flip", "cut"] {
        let mut damaged = bytes.clone();
        match damage {
            "flip" => damaged[RECORD_LEN + 100] ^= 0x01,
            _ => damaged.truncate(RECORD_LEN + 40),
        }
        std::fs::write(&record, &damaged).unwrap();
        let s = boot(&server, &patch, Some(&old), &record);
        assert_eq!(s.fetched_size(), 0, "{damage}: starts over");
        let out = common::delta::sample(&s, 1000);
        assert!(
            out.valid && out.errors.is_empty(),
            "{damage}: {:?}",
            out.errors
        );
        assert!(out.stored == new, "{damage}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An Aliyun upgrade message for `patch` whose extData requires the old image `required` and
/// names the new image `made`.
fn notice_requiring(patch: &[u8], url: &str, required: &[u8], made: &[u8]) -> String {
    format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{url}","md5":"{}","extData":{{"_delta_old_size":{},"_delta_old_sha256":"{}","_delta_new_sha256":"{}"}}}},"id":1,"message":"success"}}"#,
        patch.len(),
        ota_cloud::md5_hex(patch),
        required.len(),
        sha256_hex(required),
        sha256_hex(made)
    )
}

#[test]
fn the_old_image_requirement_holds_after_a_restart_too() {
    let patch = fixture("inserted-block.heatshrink.patch");
    let (old, new) = (fixture("inserted-block.old"), fixture("inserted-block.new"));
    let dir = scratch("requirement");
    let record = dir.join("ota.bp");
    let server = FirmwareServer::start(patch.clone()).unwrap();
    // The message names the new image too: its SHA-256 state goes through the record.
    let good = notice_requiring(&patch, &server.url(), &old, &new);
    let mut other = new.clone();
    other[5000] ^= 1;
    // What the second boot must end with: valid, refused before any byte (another old
    // image), or refused at the end (another new image).
    #[derive(PartialEq)]
    enum End {
        Valid,
        OldImage,
        NewImage,
    }
    for (second, end) in [
        (good.clone(), End::Valid),
        (
            notice_requiring(&patch, &server.url(), &new, &new),
            End::OldImage,
        ),
        (
            notice_requiring(&patch, &server.url(), &old, &other),
            End::NewImage,
        ),
    ] {
        let _ = std::fs::remove_file(&record);
        let s = boot_with(Some(&old), &record, &good);
        let mut firmware = SampleFirmware::new(50);
        assert_eq!(firmware.run_for(&s, 100), None);
        drop(s);
        firmware.kill();
        assert!(std::fs::metadata(&record).unwrap().len() as usize > RECORD_LEN);
        // After the restart the message (the same upgrade) names the running image, or, as if
        // the platform now meant the patch for another one, an image the device does not run.
        let s = boot_with(Some(&old), &record, &second);
        let resumed_at = firmware.resume(&s);
        assert!(resumed_at > 0, "resumed from the record");
        assert_eq!(firmware.run(&s), end == End::Valid);
        let stored = firmware.stored;
        let error = s.last_error();
        match end {
            End::Valid => assert!(stored == new),
            End::OldImage => {
                assert!(
                    matches!(error, Some(ota::Error::DeltaOldImage(_))),
                    "{error:?}"
                );
                assert_eq!(stored.len(), resumed_at, "nothing after the restart");
            }
            End::NewImage => {
                assert!(matches!(error, Some(ota::Error::Download(_))), "{error:?}");
                assert_eq!(stored.len(), new.len(), "refused at its end");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
