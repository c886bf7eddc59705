//! No allocation after init: a counting global allocator watches a full upgrade
//! (notify → fetch → verify → report) on in-memory transports.

use std::time::Duration;

use ota::ota::{OtaConfig, Uplink};
use ota::source::MemorySource;
use ota::{OtaSession, OtaState};
use ota_cloud::counting::{allocated_bytes, allocations, set_counting, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Records what the session publishes into fixed storage.
struct MemoryUplink {
    log: &'static std::sync::Mutex<([u8; 4096], usize, usize)>,
}

impl Uplink for MemoryUplink {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        let mut g = self.log.lock().unwrap();
        let (buf, len, count) = &mut *g;
        for part in [topic.as_bytes(), b" ", payload, b"\n"] {
            let end = (*len + part.len()).min(buf.len());
            buf[*len..end].copy_from_slice(&part[..end - *len]);
            *len = end;
        }
        *count += 1;
        Ok(())
    }
}

static LOG: std::sync::Mutex<([u8; 4096], usize, usize)> = std::sync::Mutex::new(([0; 4096], 0, 0));

fn image() -> &'static [u8] {
    let v: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    Box::leak(v.into_boxed_slice())
}

/// The counter is process-wide, and the test harness's own thread allocates when a test ends:
/// one test function runs both checks in turn.
#[test]
fn upgrades_allocate_nothing_after_init() {
    a_full_upgrade_allocates_nothing_after_init();
    a_signed_upgrade_allocates_nothing_after_init();
    a_delta_upgrade_allocates_nothing_after_init();
}

fn a_full_upgrade_allocates_nothing_after_init() {
    // Quiet: logging must not allocate either, but keep test output clean.
    ota::log::set_level(ota::log::Level::Error);
    let image = image();
    let md5 = {
        use md5::Digest;
        let d = md5::Md5::digest(image);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let notice = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"http:\/\/127.0.0.1\/fw.bin","md5":"{md5}"}},"id":1,"message":"success"}}"#,
        image.len()
    );
    let topic = "/ota/device/upgrade/pk/dn";
    let mut source = MemorySource::new(image);
    source.chunk = 4096;
    let session = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::default(),
        Box::new(MemoryUplink { log: &LOG }),
        Box::new(source),
    )
    .unwrap();
    let mut buf = vec![0u8; 5000];
    let mut hex = [0u8; 64];

    // The counter sees an allocation (so the 0 below means something).
    let before = allocations();
    set_counting(true);
    drop(std::hint::black_box(Box::new(7u64)));
    set_counting(false);
    assert_eq!(allocations() - before, 1, "the counting allocator counts");
    let (base, base_bytes) = (allocations(), allocated_bytes());

    set_counting(true);
    session.report_version("1.0.0").unwrap();
    session.handle_message(topic, notice.as_bytes()).unwrap();
    assert!(session.is_fetching());
    let mut last = 0;
    let mut total = 0;
    let mut reports = 0;
    while !session.is_fetch_finished() {
        let n = session
            .fetch_yield(&mut buf, Duration::from_secs(1))
            .unwrap();
        assert_eq!(&buf[..n], &image[total..total + n]);
        total += n;
        let percent = (session.fetched_size() * 100 / session.file_size()) as i32;
        if percent > last {
            session.report_progress(percent, None).unwrap();
            last = percent;
            reports += 1;
        }
    }
    let valid = session.check_firmware().unwrap();
    let announced = session.with_notice(|n| ota::ota::notice_digest_hex(n, &mut hex).len());
    session.report_version("2.0.0").unwrap();
    set_counting(false);

    let allocs = allocations() - base;
    let bytes = allocated_bytes() - base_bytes;
    assert!(valid, "the image verifies");
    assert_eq!(&hex[..announced], md5.as_bytes());
    assert_eq!(total, image.len());
    assert_eq!(session.state(), OtaState::Fetched);
    let (_, _, published) = *LOG.lock().unwrap();
    assert!(reports > 50, "progress was reported along the way");
    assert_eq!(
        published,
        1 + reports + 1,
        "version, progress reports, new version"
    );
    assert_eq!(last, 100);
    assert_eq!(allocs, 0, "{allocs} allocations ({bytes} bytes) after init");
}

fn a_signed_upgrade_allocates_nothing_after_init() {
    ota::log::set_level(ota::log::Level::Error);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcuboot");
    for (file, key) in [
        ("ecdsa-p256.bin", "test-only-ecdsa-p256.pub.pem"),
        ("ed25519.bin", "test-only-ed25519.pub.pem"),
    ] {
        let image: &'static [u8] = Box::leak(
            std::fs::read(format!("{dir}/{file}"))
                .unwrap()
                .into_boxed_slice(),
        );
        let key = std::fs::read(format!("{dir}/{key}")).unwrap();
        let md5 = {
            use md5::Digest;
            let d = md5::Md5::digest(image);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let notice = format!(
            r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"http:\/\/127.0.0.1\/fw.bin","md5":"{md5}"}},"id":1,"message":"success"}}"#,
            image.len()
        );
        let config = OtaConfig {
            image: ota::image::ImagePolicy {
                keys: vec![ota::image::ImageKey::parse(&key).unwrap()],
                require_signature: true,
                running_version: ota::image::ImageVersion::parse("1.0.0"),
                ..Default::default()
            },
            ..OtaConfig::default()
        };
        let mut source = MemorySource::new(image);
        source.chunk = 700;
        let session = OtaSession::new(
            "pk",
            "dn",
            config,
            Box::new(MemoryUplink { log: &LOG }),
            Box::new(source),
        )
        .unwrap();
        let mut buf = vec![0u8; 1000];
        let (base, base_bytes) = (allocations(), allocated_bytes());
        set_counting(true);
        session
            .handle_message("/ota/device/upgrade/pk/dn", notice.as_bytes())
            .unwrap();
        while !session.is_fetch_finished() {
            session
                .fetch_yield(&mut buf, Duration::from_secs(1))
                .unwrap();
        }
        let valid = session.check_firmware().unwrap();
        let signed = session.verified_image().is_some_and(|v| v.signed);
        set_counting(false);
        let allocs = allocations() - base;
        let bytes = allocated_bytes() - base_bytes;
        assert!(valid && signed, "{file}: the signed image verifies");
        assert_eq!(
            allocs, 0,
            "{file}: {allocs} allocations ({bytes} bytes) after init"
        );
    }
}

/// Issue 17: the delta source (old image, applier, patch buffer) is set at init; the download
/// of a detools heatshrink patch (a committed fixture made by the real detools), applied on the
/// way through `fetch_yield`, and the verdict allocate nothing: the same phases counted as in
/// the full upgrade above (from the notification to the new version's report).
fn a_delta_upgrade_allocates_nothing_after_init() {
    ota::log::set_level(ota::log::Level::Error);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/delta");
    let read = |name: &str| -> &'static [u8] {
        Box::leak(
            std::fs::read(format!("{dir}/{name}"))
                .unwrap()
                .into_boxed_slice(),
        )
    };
    let (patch, old, new) = (
        read("inserted-block.heatshrink.patch"),
        read("inserted-block.old"),
        read("inserted-block.new"),
    );
    let md5 = {
        use md5::Digest;
        let d = md5::Md5::digest(patch);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let notice = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"http:\/\/127.0.0.1\/fw.bin","md5":"{md5}"}},"id":1,"message":"success"}}"#,
        patch.len()
    );
    // Small network reads and a small caller buffer: many steps of each kind (patch bytes
    // waiting in the buffer, output full, the next network read).
    let mut source = MemorySource::new(patch);
    source.chunk = 37;
    let session = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::default(),
        Box::new(MemoryUplink { log: &LOG }),
        Box::new(source),
    )
    .unwrap();
    session
        .set_delta_source(Box::new(old), ota::ota::DeltaOptions::for_slot(64 * 1024))
        .unwrap();
    let mut buf = vec![0u8; 500];
    let mut stored = vec![0u8; new.len() + 500];
    let (base, base_bytes) = (allocations(), allocated_bytes());
    set_counting(true);
    session.report_version("1.0.0").unwrap();
    session
        .handle_message("/ota/device/upgrade/pk/dn", notice.as_bytes())
        .unwrap();
    let mut total = 0;
    let mut calls = 0;
    while !session.is_fetch_finished() && calls < 10_000 {
        let n = session
            .fetch_yield(&mut buf, Duration::from_secs(1))
            .unwrap();
        let end = (total + n).min(stored.len());
        stored[total..end].copy_from_slice(&buf[..end - total]);
        total += n;
        calls += 1;
    }
    let size = session.file_size();
    let valid = session.check_firmware().unwrap();
    session.report_version("2.0.0").unwrap();
    set_counting(false);
    let allocs = allocations() - base;
    let bytes = allocated_bytes() - base_bytes;
    assert!(calls > 10, "the patch came in {calls} calls");
    assert_eq!(
        total,
        new.len(),
        "FetchYield handed out the new image's size"
    );
    assert!(&stored[..total] == new, "the new image, byte for byte");
    assert_eq!(size, new.len() as u64, "FILE_SIZE is the new image's");
    assert!(valid, "the patched image verifies");
    assert_eq!(
        allocs, 0,
        "delta: {allocs} allocations ({bytes} bytes) after init"
    );
}
