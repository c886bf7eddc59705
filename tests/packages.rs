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
