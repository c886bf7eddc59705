//! Packages of several files (issue 16, item 1): an Aliyun or SagooIOT upgrade with a `files`
//! array, walked by firmware written like the iotkit sample (appends, never rewinds) with the
//! v2.3 loop once per file, over real HTTP (ota-cloud's firmware server) and a recording uplink.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::recorder::{payloads, Recorder, Sent};
use ota::source::{HttpConfig, HttpSource};
use ota::{Error, OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::{md5_hex, FirmwareServer};

/// The upgrade message of a package (docs/packages.md's field names), `files` as (name, url,
/// bytes); `sign` replaces one file's digest when given.
fn package_message(
    protocol: Protocol,
    version: &str,
    files: &[(&str, String, &[u8])],
    bad: Option<usize>,
) -> String {
    let list: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (name, url, bytes))| {
            let sign = match bad == Some(i) {
                true => "0123456789abcdef0123456789abcdef".to_string(),
                false => md5_hex(bytes),
            };
            format!(
                r#"{{"fileName":"{name}","fileUrl":"{url}","fileSize":{},"fileSign":"{sign}"}}"#,
                bytes.len()
            )
        })
        .collect();
    // Aliyun's success code is "1000", SagooIOT's "200".
    let code = if protocol == Protocol::Sagoo {
        "200"
    } else {
        "1000"
    };
    format!(
        r#"{{"code":"{code}","data":{{"version":"{version}","signMethod":"MD5","files":[{}]}},"id":7,"message":"success"}}"#,
        list.join(",")
    )
}

struct Bench {
    session: OtaSession,
    sent: Sent,
    files: Vec<Vec<u8>>,
    message: String,
    server: FirmwareServer,
}

fn bench(protocol: Protocol, max_files: usize, bad: Option<usize>) -> Bench {
    let files: Vec<Vec<u8>> = [30_000usize, 1_000, 12_345]
        .iter()
        .enumerate()
        .map(|(i, &len)| common::firmware::image(len, 40 + i as u8).to_vec())
        .collect();
    let server = FirmwareServer::start(files[0].clone()).unwrap();
    let names = ["app.bin", "mcu.bin", "config.json"];
    let listed: Vec<(&str, String, &[u8])> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let url = server.add_image(names[i], f.clone()).unwrap();
            (names[i], url, f.as_slice())
        })
        .collect();
    let message = package_message(protocol, "2.0.0", &listed, bad);
    let sent: Sent = Arc::default();
    let recorder = Recorder(sent.clone());
    let config = OtaConfig::for_protocol(protocol);
    let source = HttpSource::new(HttpConfig::default()).unwrap();
    let session =
        OtaSession::new("pk", "dn", config, Box::new(recorder), Box::new(source)).unwrap();
    session.set_max_files(max_files).unwrap();
    session.report_version("1.0.0").unwrap();
    Bench {
        session,
        sent,
        files,
        message,
        server,
    }
}

/// The firmware: for each file, the v2.3 loop; returns the files it stored and the last
/// CHECK_FIRMWARE verdict. Reports each file's percent as the sample does.
fn walk(s: &OtaSession) -> (Vec<Vec<u8>>, bool) {
    let mut stored = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(s.is_fetching(), "the next file starts");
        let index = s.file_index();
        assert_eq!(index, stored.len(), "files in order");
        let size = s.file_size();
        let mut file = Vec::new();
        let mut buf = [0u8; 4096];
        let mut last = 0;
        while !s.is_fetch_finished() {
            assert!(Instant::now() < deadline);
            if let Ok(n) = s.fetch_yield(&mut buf, Duration::from_secs(1)) {
                file.extend_from_slice(&buf[..n]);
            }
            let percent = (file.len() as u64 * 100 / size) as i32;
            if percent >= last + 50 || (percent == 100 && last != 100) {
                last = percent;
                let _ = s.report_progress(percent, None);
            }
        }
        stored.push(file);
        let valid = s.check_firmware().unwrap();
        if !valid || index + 1 == s.file_count() {
            return (stored, valid);
        }
    }
}

fn progress_of(sent: &Sent) -> Vec<i64> {
    payloads(sent)
        .iter()
        .filter_map(|p| {
            // `"step":"69"` (Aliyun, SagooIOT) or `"step":69`.
            let rest = &p[p.find(r#""step":"#)? + 7..];
            let rest = rest.trim_start_matches('"');
            let end = rest.find(|c: char| c != '-' && !c.is_ascii_digit())?;
            rest[..end].parse().ok()
        })
        .collect()
}

/// Three files walked in order, each checked and stored byte for byte, each downloaded once;
/// the platform hears byte-weighted progress over the package, rising to 100 only at the end,
/// and the file queries describe the current file.
#[test]
fn a_package_of_three_files_is_walked_file_by_file_with_package_progress() {
    for protocol in [Protocol::Aliyun, Protocol::Sagoo] {
        let b = bench(protocol, 4, None);
        b.session
            .handle_message(b.session.downstream_topic(), b.message.as_bytes())
            .unwrap();
        assert_eq!(b.session.file_count(), 3);
        assert_eq!(b.session.with_file_name(str::to_string), "app.bin");
        let (stored, valid) = walk(&b.session);
        assert!(valid, "{protocol:?}: the last file verified");
        assert_eq!(stored, b.files, "{protocol:?}: every file byte for byte");
        assert_eq!(b.session.with_file_name(str::to_string), "config.json");
        let steps = progress_of(&b.sent);
        assert!(!steps.is_empty());
        assert!(
            steps.windows(2).all(|w| w[0] <= w[1]),
            "monotonic: {steps:?}"
        );
        assert_eq!(
            steps.iter().filter(|&&s| s == 100).count(),
            1,
            "100 once: {steps:?}"
        );
        assert_eq!(*steps.last().unwrap(), 100);
        // The first file's 100 % is the package's 69 % (30000 of 43345 bytes).
        assert!(
            steps.contains(&69),
            "{protocol:?}: weighted progress: {steps:?}"
        );
        // The log is written when a response ends, which can be after the device has it.
        let gets = b.server.requests_when(3, Duration::from_secs(5));
        assert_eq!(gets.len(), 3, "one request per file");
    }
}

/// A file whose digest does not match ends the package there: one failure report, no later
/// file is fetched, and CHECK_FIRMWARE says 0.
#[test]
fn a_bad_file_fails_the_whole_package_once() {
    let b = bench(Protocol::Aliyun, 4, Some(1));
    b.session
        .handle_message(b.session.downstream_topic(), b.message.as_bytes())
        .unwrap();
    let (stored, valid) = walk(&b.session);
    assert!(!valid);
    assert_eq!(stored.len(), 2, "stopped at the bad file");
    assert!(!b.session.is_fetching(), "no later file starts");
    let failures = progress_of(&b.sent).iter().filter(|&&s| s < 0).count();
    assert_eq!(failures, 1, "one failure report for the package");
    assert_eq!(b.server.requests_when(2, Duration::from_secs(5)).len(), 2);
}

/// With packages off (the default), a `files` array is refused with a failure report naming
/// the switch; the session stays idle. Tencent and UCloud have no packages to switch on.
#[test]
fn packages_are_refused_unless_switched_on() {
    let b = bench(Protocol::Aliyun, 0, None);
    let r = b
        .session
        .handle_message(b.session.downstream_topic(), b.message.as_bytes());
    assert!(matches!(r, Err(Error::Notice(_))), "{r:?}");
    assert_eq!(b.session.state(), OtaState::Idle);
    assert!(payloads(&b.sent)
        .iter()
        .any(|p| p.contains("IOT_OTAC_MAX_FILES")));
    let tencent = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(Protocol::Tencent),
        Box::new(Recorder(Sent::default())),
        Box::new(HttpSource::new(HttpConfig::default()).unwrap()),
    )
    .unwrap();
    assert!(matches!(
        tencent.set_max_files(2),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        b.session.set_max_files(99),
        Err(Error::InvalidParam(_))
    ));
}

/// Resume of a package across a restart (issue 16, item 1): the simulator plays the platform
/// through the embedded broker, the files come over HTTP, the record lives in a real file.
mod across_restarts {
    use super::*;

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    use ota::resume::{Breakpoint, FileStore, SavePolicy};
    use ota::{MqttClient, MqttOptions};
    use ota_cloud::{
        Cloud, EmbeddedBroker, HttpPackageMeter, Package, PackageMeter, RequestLog, Success,
        Summary,
    };

    const NAMES: [&str; 3] = ["app.bin", "mcu.bin", "config.json"];
    /// The second file is the large one, so the device can stop in its middle.
    const SIZES: [usize; 3] = [30_000, 200_000, 12_345];
    const STOP_IN_FILE_2_AT: u64 = 100_000;

    fn files(seed: u8) -> Vec<Vec<u8>> {
        SIZES
            .iter()
            .enumerate()
            .map(|(i, &len)| common::firmware::image(len, seed + i as u8).to_vec())
            .collect()
    }

    fn record_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ota-pkgres-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("breakpoint.bin")
    }

    /// The platform playing `files` as package 2.0.0, served by a server of its own, in a thread
    /// that runs until the device reports 2.0.0 or `abort` is set.
    struct Platform {
        server: FirmwareServer,
        run: std::thread::JoinHandle<Summary>,
        abort: Arc<AtomicBool>,
    }

    fn platform(protocol: Protocol, port: u16, device: &str, files: &[Vec<u8>]) -> Platform {
        let named = NAMES
            .iter()
            .zip(files)
            .map(|(n, f)| (n.to_string(), Arc::<[u8]>::from(f.as_slice())))
            .collect();
        let mut package = Package::new("2.0.0", named).unwrap();
        let server = FirmwareServer::start(files[0].clone()).unwrap();
        package.serve_on(&server).unwrap();
        let meter: Arc<dyn PackageMeter> = Arc::new(HttpPackageMeter::new(&server, &package));
        let firmware = package.firmware();
        let mut cloud = Cloud::connect(
            protocol.name().parse().unwrap(),
            "127.0.0.1",
            port,
            "pk1",
            device,
        )
        .unwrap();
        cloud.set_quiet(true);
        cloud.set_package(package, meter).unwrap();
        let abort = Arc::new(AtomicBool::new(false));
        let stop = abort.clone();
        let run =
            std::thread::spawn(move || cloud.run_until(&firmware, Duration::from_secs(60), &stop));
        Platform { server, run, abort }
    }

    /// The device after a (re)boot: its MQTT client, a session with packages on and the
    /// breakpoint file, having reported `version`.
    struct Device {
        mqtt: MqttClient,
        session: OtaSession,
    }

    fn boot(protocol: Protocol, port: u16, device: &str, record: &Path, version: &str) -> Device {
        static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let client_id = format!("{device}-{}", BOOTS.fetch_add(1, Ordering::SeqCst));
        let mqtt = MqttClient::connect(&MqttOptions::new("127.0.0.1", port, &client_id)).unwrap();
        let session =
            OtaSession::attach(&mqtt, "pk1", device, OtaConfig::for_protocol(protocol)).unwrap();
        session.set_max_files(4).unwrap();
        session
            .set_breakpoint_store(Box::new(FileStore::new(record)))
            .unwrap();
        session.set_save_policy(SavePolicy {
            every_bytes: 16 * 1024,
            every_percent: 0,
        });
        session.report_version(version).unwrap();
        Device { mqtt, session }
    }

    /// An orderly reboot: the reports still queued go out first (a kill is a plain drop).
    fn reboot(d: Device) {
        d.mqtt.disconnect(Duration::from_secs(5));
    }

    /// Where the firmware's walk ended.
    #[derive(Debug, PartialEq)]
    enum Walk {
        /// Killed in file 2 (index 1), past [`STOP_IN_FILE_2_AT`] of its bytes.
        Stopped,
        /// CHECK_FIRMWARE's verdict on the last file it fetched.
        Judged(bool),
    }

    /// The firmware, as the iotkit sample with a file loop: waits for the upgrade, then fetches
    /// each file into `flash[index]` from FETCHED_SIZE on (the resume offset after a restart),
    /// reporting each file's percent; stops in file 2 when `stop` says so.
    fn walk(d: &Device, flash: &mut Vec<Vec<u8>>, stop: bool) -> Walk {
        let s = &d.session;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s.is_fetching() {
            assert!(Instant::now() < deadline, "no upgrade arrived");
            d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
        }
        flash.resize(s.file_count(), Vec::new());
        loop {
            let index = s.file_index();
            let file = &mut flash[index];
            file.truncate(s.fetched_size() as usize);
            let size = s.file_size();
            let mut buf = [0u8; 4096];
            let mut last = 0;
            while !s.is_fetch_finished() {
                assert!(Instant::now() < deadline, "the download did not finish");
                d.mqtt.yield_for(Duration::ZERO).unwrap();
                let n = s.fetch_yield(&mut buf, Duration::from_secs(1)).unwrap();
                assert_eq!(file.len() as u64 + n as u64, s.fetched_size(), "appends");
                file.extend_from_slice(&buf[..n]);
                let percent = (s.fetched_size() * 100 / size) as i32;
                if percent >= last + 25 || (percent == 100 && last != 100) {
                    last = percent;
                    s.report_progress(percent, None).unwrap();
                }
                if stop && index == 1 && s.fetched_size() >= STOP_IN_FILE_2_AT {
                    // The power cut takes what this call returned: not written yet.
                    file.truncate(file.len() - n);
                    return Walk::Stopped;
                }
            }
            let valid = s.check_firmware().unwrap();
            if !valid || index + 1 == s.file_count() {
                // As firmware does before it reboots: a yield sends the reports still queued
                // (the last percent), which the client would otherwise drop with the device.
                d.mqtt.yield_for(Duration::from_millis(100)).unwrap();
                return Walk::Judged(valid);
            }
            assert!(s.is_fetching(), "the next file starts");
        }
    }

    /// The GETs of file `name` in `log`, by arrival, as their `Range` headers.
    fn gets_of(log: &[RequestLog], name: &str) -> Vec<Option<String>> {
        let mut gets: Vec<&RequestLog> = log
            .iter()
            .filter(|r| r.method == "GET" && r.path.split('?').next().unwrap().ends_with(name))
            .collect();
        gets.sort_by_key(|r| r.seq);
        gets.iter().map(|r| r.range.clone()).collect()
    }

    /// After the last file: the reboot into the package's version, whose first report is the
    /// package's one success; the platform's verdict.
    fn reboot_and_conclude(
        protocol: Protocol,
        port: u16,
        device: &str,
        record: &Path,
        run: std::thread::JoinHandle<Summary>,
    ) -> Summary {
        let d = boot(protocol, port, device, record, "2.0.0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.is_finished() {
            assert!(Instant::now() < deadline, "the platform did not conclude");
            d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
        }
        run.join().unwrap()
    }

    /// The platform's verdict is one success of the package, with no failure on the way and
    /// progress that never went back (the simulator checks that too).
    fn assert_one_success(protocol: Protocol, summary: &Summary) {
        assert_eq!(
            summary.outcome,
            Ok(Success::Upgraded),
            "{protocol:?}: {summary:?}"
        );
        let successes = summary.versions.iter().filter(|v| *v == "2.0.0").count();
        assert_eq!(successes, 1, "{protocol:?}: {:?}", summary.versions);
        assert!(
            summary.progress.iter().all(|&s| s >= 0),
            "{protocol:?}: {:?}",
            summary.progress
        );
        assert!(
            summary.progress.windows(2).all(|w| w[0] <= w[1]),
            "{protocol:?}: {:?}",
            summary.progress
        );
        assert_eq!(summary.progress.last(), Some(&100), "{protocol:?}");
    }

    /// A three-file package killed in the middle of its second file; after the restart the
    /// platform sends the same package again (fresh session, same record file) and the download
    /// goes on in file 2 at the recorded offset, with `Range`, never touching file 1 again. The
    /// files are byte-exact, progress never goes back, and the package succeeds once.
    #[test]
    fn a_package_killed_in_its_second_file_resumes_there_after_the_restart() {
        for protocol in [Protocol::Aliyun, Protocol::Sagoo] {
            let broker = EmbeddedBroker::start().unwrap();
            let port = broker.port();
            let device = "dev-pkgres";
            let record = record_path(protocol.name());
            let files = files(60);
            let platform = platform(protocol, port, device, &files);
            let mut flash = Vec::new();

            let d = boot(protocol, port, device, &record, "1.0.0");
            assert_eq!(walk(&d, &mut flash, true), Walk::Stopped);
            drop(d); // the power cut: nothing more is written
            let bp = Breakpoint::load(&mut FileStore::new(&record)).unwrap();
            assert!(bp.is_package(), "{protocol:?}");
            assert_eq!((bp.file_index(), bp.file_count()), (1, 3));
            assert_eq!(bp.size(), SIZES[1] as u64, "the current file's size");
            let resume_at = bp.offset();
            assert!(
                resume_at > 0 && resume_at <= flash[1].len() as u64,
                "{protocol:?}: record at {resume_at}, {} bytes stored",
                flash[1].len()
            );

            let d = boot(protocol, port, device, &record, "1.0.0");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !d.session.is_fetching() {
                assert!(Instant::now() < deadline, "the package was not sent again");
                d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
            }
            assert_eq!(d.session.file_index(), 1, "{protocol:?}: resumes in file 2");
            assert_eq!(
                d.session.fetched_size(),
                resume_at,
                "at the recorded offset"
            );
            assert_eq!(d.session.file_size(), SIZES[1] as u64);
            assert_eq!(walk(&d, &mut flash, false), Walk::Judged(true));
            assert_eq!(flash, files, "{protocol:?}: every file byte for byte");
            reboot(d);

            let Platform { server, run, .. } = platform;
            let summary = reboot_and_conclude(protocol, port, device, &record, run);
            assert_one_success(protocol, &summary);
            assert!(
                std::fs::metadata(&record).is_err(),
                "{protocol:?}: the record is gone after the success"
            );

            let log = server.requests_when(4, Duration::from_secs(5));
            assert_eq!(
                gets_of(&log, "/app.bin"),
                [None],
                "{protocol:?}: file 1 once"
            );
            assert_eq!(
                gets_of(&log, "/mcu.bin"),
                [None, Some(format!("bytes={resume_at}-"))],
                "{protocol:?}: file 2 from the start, then from the record's offset"
            );
            assert_eq!(gets_of(&log, "/config.json"), [None], "{protocol:?}");
            let _ = std::fs::remove_dir_all(record.parent().unwrap());
        }
    }

    /// Killed after the firmware judged the first file good, before the second started: the
    /// record already names the second file at byte 0, so after the restart the download goes
    /// on there and the first file is not fetched again.
    #[test]
    fn a_package_killed_between_two_files_resumes_at_the_next_one() {
        let protocol = Protocol::Aliyun;
        let broker = EmbeddedBroker::start().unwrap();
        let port = broker.port();
        let device = "dev-pkgres-between";
        let record = record_path("between");
        let files = files(70);
        let platform = platform(protocol, port, device, &files);

        let d = boot(protocol, port, device, &record, "1.0.0");
        let s = &d.session;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s.is_fetching() {
            assert!(Instant::now() < deadline, "no upgrade arrived");
            d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
        }
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while !s.is_fetch_finished() {
            assert!(Instant::now() < deadline, "the first file did not finish");
            let n = s.fetch_yield(&mut buf, Duration::from_secs(1)).unwrap();
            first.extend_from_slice(&buf[..n]);
        }
        assert!(s.check_firmware().unwrap());
        drop(d); // the power cut, before the next IsFetching
        let bp = Breakpoint::load(&mut FileStore::new(&record)).unwrap();
        assert_eq!(
            (bp.file_index(), bp.offset()),
            (1, 0),
            "the next file, from 0"
        );

        let d = boot(protocol, port, device, &record, "1.0.0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.session.is_fetching() {
            assert!(Instant::now() < deadline, "the package was not sent again");
            d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
        }
        assert_eq!((d.session.file_index(), d.session.fetched_size()), (1, 0));
        let mut flash = vec![first];
        assert_eq!(walk(&d, &mut flash, false), Walk::Judged(true));
        assert_eq!(flash, files, "every file byte for byte");
        reboot(d);

        let Platform { server, run, .. } = platform;
        let summary = reboot_and_conclude(protocol, port, device, &record, run);
        assert_one_success(protocol, &summary);
        let log = server.requests_when(3, Duration::from_secs(5));
        for name in ["/app.bin", "/mcu.bin", "/config.json"] {
            assert_eq!(gets_of(&log, name), [None], "{name}: whole, once");
        }
        let _ = std::fs::remove_dir_all(record.parent().unwrap());
    }

    /// The same package sent again after the restart with one file re-signed (its bytes
    /// changed) is another package: the record is discarded and the download starts over at
    /// file 1, byte 0.
    #[test]
    fn a_package_with_a_file_changed_after_the_restart_starts_over() {
        let protocol = Protocol::Aliyun;
        let broker = EmbeddedBroker::start().unwrap();
        let port = broker.port();
        let device = "dev-pkgres-changed";
        let record = record_path("changed");
        let before = files(80);
        let first = platform(protocol, port, device, &before);
        let mut flash = Vec::new();

        let d = boot(protocol, port, device, &record, "1.0.0");
        assert_eq!(walk(&d, &mut flash, true), Walk::Stopped);
        drop(d);
        first.abort.store(true, Ordering::SeqCst);
        let _ = first.run.join().unwrap();
        let bp = Breakpoint::load(&mut FileStore::new(&record)).unwrap();
        assert_eq!(bp.file_index(), 1);
        assert!(bp.offset() > 0);

        // The third file's bytes, hence its digest, differ; the other two are the same.
        let mut after = before.clone();
        after[2] = common::firmware::image(SIZES[2], 99).to_vec();
        assert_ne!(after[2], before[2]);
        let second = platform(protocol, port, device, &after);
        let d = boot(protocol, port, device, &record, "1.0.0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.session.is_fetching() {
            assert!(Instant::now() < deadline, "the package was not sent");
            d.mqtt.yield_for(Duration::from_millis(20)).unwrap();
        }
        assert_eq!(d.session.file_index(), 0, "starts over at the first file");
        assert_eq!(d.session.fetched_size(), 0);
        let bp = Breakpoint::load(&mut FileStore::new(&record)).unwrap();
        assert_eq!((bp.file_index(), bp.offset()), (0, 0), "a fresh record");
        assert_eq!(walk(&d, &mut flash, false), Walk::Judged(true));
        assert_eq!(flash, after, "every file byte for byte");
        reboot(d);

        let Platform { server, run, .. } = second;
        let summary = reboot_and_conclude(protocol, port, device, &record, run);
        assert_one_success(protocol, &summary);
        let log = server.requests_when(3, Duration::from_secs(5));
        for name in ["/app.bin", "/mcu.bin", "/config.json"] {
            assert_eq!(gets_of(&log, name), [None], "{name}: whole, once");
        }
        let _ = std::fs::remove_dir_all(record.parent().unwrap());
    }
}
