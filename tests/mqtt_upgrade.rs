//! Upgrades downloaded over MQTT (`dProtocol` `mqtt`, issue 16 item 2) through the whole
//! session: the simulator's platform ([`MqttDownloadServer`]) answers block requests on the
//! embedded broker, and the device is firmware written like the iotkit sample (appends what
//! FetchYield returns, never rewinds, leaves only on IsFetchFinish).

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::platform::send_upgrade;
use ota::mqtt::QoS;
use ota::resume::{FileStore, SavePolicy};
use ota::source::{DownloadError, MqttDownloadConfig};
use ota::{Error, MqttClient, MqttOptions, OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::cloud::{CloudOptions, Protocol as CloudProtocol};
use ota_cloud::{EmbeddedBroker, MqttDownloadServer, MqttFaults, Package};

const PK: &str = "a1pk";
const DN: &str = "dev1";
const LIMIT: Duration = Duration::from_secs(60);
const BLOCK: u32 = 5120;

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new("127.0.0.1", port, id);
    o.request_timeout = Duration::from_secs(1);
    o
}

/// A dropped reply is asked again after half a second (the Link SDK waits 10 s).
fn quick_blocks() -> MqttDownloadConfig {
    MqttDownloadConfig {
        block_timeout: Duration::from_millis(500),
        ..MqttDownloadConfig::default()
    }
}

/// The broker, the platform's side (its MQTT client, recording what the device publishes),
/// and the package it offers.
struct Platform {
    broker: EmbeddedBroker,
    cloud: MqttClient,
    heard: Arc<Mutex<Vec<(String, String)>>>,
    package: Package,
}

impl Platform {
    fn start(package: Package) -> Platform {
        let broker = EmbeddedBroker::start().unwrap();
        let cloud = MqttClient::connect(&options(broker.port(), "cloud")).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        cloud
            .subscribe("/ota/device/#", QoS::AtLeastOnce, move |m| {
                let text = String::from_utf8_lossy(m.payload).into_owned();
                sink.lock().unwrap().push((m.topic.to_string(), text));
            })
            .unwrap();
        cloud.yield_for(Duration::from_millis(100)).unwrap();
        Platform {
            broker,
            cloud,
            heard,
            package,
        }
    }

    /// A platform offering one image of `len` bytes over MQTT (stream `stream_id`), and the
    /// image.
    fn single(len: usize, seed: u8, stream_id: u32) -> (Platform, Vec<u8>) {
        let image = common::firmware::image(len, seed).to_vec();
        let package = Package::single_over_mqtt("2.0.0", "app.bin", image.clone(), stream_id);
        (Platform::start(package), image)
    }

    fn serve(&self, faults: MqttFaults) -> MqttDownloadServer {
        let (host, port) = (self.broker.host(), self.broker.port());
        MqttDownloadServer::start(host, port, PK, DN, &self.package, BLOCK, faults).unwrap()
    }

    fn device(&self) -> MqttClient {
        MqttClient::connect(&options(self.broker.port(), "device")).unwrap()
    }

    /// Sends the upgrade until the session starts fetching (its subscription may still be on
    /// the way to the broker).
    fn announce(&self, device: &MqttClient, session: &OtaSession) {
        let message = self
            .package
            .upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())
            .unwrap();
        self.announce_text(device, session, &message);
    }

    fn announce_text(&self, device: &MqttClient, session: &OtaSession, message: &str) {
        let deadline = Instant::now() + LIMIT;
        while !session.is_fetching() {
            assert!(Instant::now() < deadline, "the upgrade never started");
            send_upgrade(&self.cloud, session, message);
            device.yield_for(Duration::from_millis(100)).unwrap();
        }
    }

    /// Sends the upgrade until the session's refusal is heard (its subscription may still be
    /// on the way to the broker): a step -1 report, and the session stays idle.
    fn assert_refused(&self, device: &MqttClient, session: &OtaSession) {
        let message = self
            .package
            .upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())
            .unwrap();
        let deadline = Instant::now() + LIMIT;
        let failures = loop {
            send_upgrade(&self.cloud, session, &message);
            device.yield_for(Duration::from_millis(100)).unwrap();
            let heard = self.heard_within(
                device,
                "progress",
                |g| !g.is_empty(),
                Duration::from_millis(500),
            );
            if !heard.is_empty() || Instant::now() >= deadline {
                break heard;
            }
        };
        assert!(
            failures
                .first()
                .is_some_and(|m| m.contains("\"step\":\"-1\"")),
            "{failures:?}"
        );
        assert_eq!(session.state(), OtaState::Idle);
    }

    /// What `device` published on `topic_part` topics, once `until` holds for them (both
    /// clients yielded meanwhile: the device's reports wait in its queue until it yields).
    fn heard_when(
        &self,
        device: &MqttClient,
        topic_part: &str,
        until: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        self.heard_within(device, topic_part, until, Duration::from_secs(10))
    }

    /// [`Platform::heard_when`], giving up after `within`.
    fn heard_within(
        &self,
        device: &MqttClient,
        topic_part: &str,
        until: impl Fn(&[String]) -> bool,
        within: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            device.yield_for(Duration::from_millis(10)).unwrap();
            self.cloud.yield_for(Duration::from_millis(10)).unwrap();
            let got: Vec<String> = self
                .heard
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t.contains(topic_part))
                .map(|(_, p)| p.clone())
                .collect();
            if until(&got) || Instant::now() >= deadline {
                return got;
            }
        }
    }
}

/// The iotkit sample's loop: what FetchYield returns is appended; the loop ends only on
/// IsFetchFinish (or after `stop_after` bytes, a power cut, which loses what the last call
/// returned: the firmware had not written it yet, so a record must not count it).
fn sample_fetch(session: &OtaSession, image: &mut Vec<u8>, stop_after: Option<usize>) {
    let deadline = Instant::now() + LIMIT;
    let mut buf = vec![0u8; 5000];
    let mut before_last = image.len();
    while !session.is_fetch_finished() {
        assert!(
            Instant::now() < deadline,
            "download stuck at {}",
            image.len()
        );
        if stop_after.is_some_and(|n| image.len() >= n) {
            image.truncate(before_last);
            return;
        }
        before_last = image.len();
        if let Ok(n) = session.fetch_yield(&mut buf, Duration::from_secs(1)) {
            image.extend_from_slice(&buf[..n]);
        }
    }
}

/// Announces the upgrade, fetches it as the sample does, and checks that it arrived byte-exact
/// and was judged valid.
fn upgrade_and_check(p: &Platform, device: &MqttClient, session: &OtaSession, image: &[u8]) {
    p.announce(device, session);
    let mut got = Vec::new();
    sample_fetch(session, &mut got, None);
    let len = got.len();
    assert!(got == image, "{len} bytes, the image has {}", image.len());
    assert!(session.check_firmware().unwrap());
}

fn attach(device: &MqttClient, config: MqttDownloadConfig) -> OtaSession {
    let mut c = OtaConfig::for_protocol(Protocol::Aliyun);
    c.mqtt_download = Some(config);
    OtaSession::attach(device, PK, DN, c).unwrap()
}

#[test]
fn a_single_image_comes_over_mqtt_byte_exact_through_a_dropped_and_a_corrupted_block() {
    let (p, image) = Platform::single(40_000, 9, 77);
    let server = p.serve(MqttFaults {
        cuts: vec![12_000],
        flip_at: Some(25_000),
        ..MqttFaults::default()
    });
    let device = p.device();
    let session = attach(&device, quick_blocks());
    upgrade_and_check(&p, &device, &session, &image);
    let stats = server.stats();
    assert_eq!(stats.faults_fired.len(), 2, "{stats:?}");
    // The dropped block and the corrupted one were each asked again, nothing else.
    assert_eq!(stats.repeated_requests, 2, "{stats:?}");
    assert!(stats.violations.is_empty(), "{stats:?}");
    assert_eq!(stats.requests, 40_000u64.div_ceil(BLOCK.into()) + 2);
    // The platform heard the firmware's progress, never a failure.
    session.report_progress(100, None).unwrap();
    let progress = p.heard_when(&device, "progress", |g| !g.is_empty());
    assert!(
        progress.iter().all(|m| !m.contains("\"step\":\"-")),
        "{progress:?}"
    );
    assert!(
        progress.iter().any(|m| m.contains("\"step\":\"100\"")),
        "{progress:?}"
    );
}

/// A package's files: name and bytes, in install order.
type Files = Vec<(String, Arc<[u8]>)>;

/// A package of three files (app, MCU image, configuration) and its files.
fn three_files() -> (Package, Files) {
    let files: Files = [
        (30_000usize, "app.bin"),
        (1_000, "mcu.bin"),
        (12_345, "config.json"),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(len, name))| {
        (
            name.to_string(),
            Arc::from(common::firmware::image(len, 50 + i as u8)),
        )
    })
    .collect();
    let package = Package::new("2.0.0", files.clone()).unwrap().over_mqtt(91);
    (package, files)
}

/// The firmware's walk through a package from file `first` on, as the sample's loop once per
/// file: each file byte-exact and judged valid. A power cut after `cut_after` bytes of file
/// `cut_in` ends the walk there; what that file got so far is returned.
fn walk_files(
    device: &MqttClient,
    session: &OtaSession,
    files: &[(String, Arc<[u8]>)],
    first: usize,
    mut got: Vec<u8>,
    cut: Option<(usize, usize)>,
) -> Vec<u8> {
    for (index, (name, data)) in files.iter().enumerate().skip(first) {
        let deadline = Instant::now() + LIMIT;
        while !session.is_fetching() {
            assert!(Instant::now() < deadline, "file {index} never started");
            device.yield_for(Duration::from_millis(20)).unwrap();
        }
        assert_eq!(session.file_index(), index);
        assert_eq!(session.with_file_name(|n| n.to_string()), *name);
        let stop = cut.filter(|&(at, _)| at == index).map(|(_, n)| n);
        sample_fetch(session, &mut got, stop);
        if stop.is_some() {
            return got;
        }
        let len = got.len();
        assert!(
            got == data[..],
            "file {name}: {len} of {} bytes",
            data.len()
        );
        assert!(session.check_firmware().unwrap(), "file {name}");
        got.clear();
    }
    got
}

#[test]
fn a_package_of_three_files_comes_over_mqtt_one_file_after_another() {
    let (package, files) = three_files();
    let p = Platform::start(package);
    let server = p.serve(MqttFaults {
        cuts: vec![500],
        flip_at: Some(11_000),
        ..MqttFaults::default()
    });
    let device = p.device();
    let session = attach(&device, quick_blocks());
    session.set_max_files(4).unwrap();
    p.announce(&device, &session);
    walk_files(&device, &session, &files, 0, Vec::new(), None);
    let stats = server.stats();
    assert_eq!(stats.faults_fired.len(), 2, "{stats:?}");
    assert!(stats.violations.is_empty(), "{stats:?}");
    // Every byte once, and the corrupted block (file 1's third) twice; the dropped reply was
    // never sent.
    assert_eq!(
        stats.bytes_served,
        30_000 + 1_000 + 12_345 + u64::from(BLOCK)
    );
}

#[test]
fn a_package_over_mqtt_resumes_after_a_restart_in_the_file_it_stopped_in() {
    let (package, files) = three_files();
    let p = Platform::start(package);
    let dir = std::env::temp_dir().join(format!("ota-mqtt-pkg-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("bp");
    let _ = std::fs::remove_file(&record);
    let boot = || {
        let server = p.serve(MqttFaults::default());
        let device = p.device();
        let session = attach(&device, quick_blocks());
        session.set_max_files(4).unwrap();
        session
            .set_breakpoint_store(Box::new(FileStore::new(&record)))
            .unwrap();
        session.set_save_policy(SavePolicy {
            every_bytes: 2_000,
            every_percent: 0,
        });
        session.report_version("1.0.0").unwrap();
        p.announce(&device, &session);
        (server, device, session)
    };
    // A power cut in the third file, after two files were judged good.
    let stored = {
        let (server, device, session) = boot();
        let got = walk_files(&device, &session, &files, 0, Vec::new(), Some((2, 7_000)));
        assert_eq!(server.stats().bytes_served, 30_000 + 1_000 + 10_240);
        got
    };
    let (server, device, session) = boot();
    assert_eq!(session.file_index(), 2, "the record names the third file");
    let offset = session.fetched_size() as usize;
    assert!(
        (4_000..=stored.len()).contains(&offset),
        "resumed at {offset}"
    );
    let mut got = stored;
    got.truncate(offset);
    walk_files(&device, &session, &files, 2, got, None);
    // Only the rest of the third file came the second time.
    assert_eq!(server.stats().bytes_served, (12_345 - offset) as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_mqtt_download_resumes_after_a_restart_at_the_saved_offset() {
    let (p, image) = Platform::single(60_000, 11, 5);
    let dir = std::env::temp_dir().join(format!("ota-mqtt-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("bp");
    let _ = std::fs::remove_file(&record);
    let every_10k = SavePolicy {
        every_bytes: 10_000,
        every_percent: 0,
    };
    // One boot of the device: a session that keeps its record in `record`, told to upgrade.
    let boot = || {
        let server = p.serve(MqttFaults::default());
        let device = p.device();
        let session = attach(&device, quick_blocks());
        let store = Box::new(FileStore::new(&record));
        session.set_breakpoint_store(store).unwrap();
        session.set_save_policy(every_10k);
        session.report_version("1.0.0").unwrap();
        p.announce(&device, &session);
        (server, device, session)
    };
    let mut got = Vec::new();
    {
        let (server, _device, session) = boot();
        // A power cut after about half the image.
        sample_fetch(&session, &mut got, Some(30_000));
        assert!(server.stats().bytes_served < 60_000);
    }
    // The next boot: the record says how far the stored bytes go.
    let (server, _device, session) = boot();
    let offset = session.fetched_size() as usize;
    assert!(
        offset >= 20_000 && offset <= got.len(),
        "resumed at {offset} of {}",
        got.len()
    );
    got.truncate(offset);
    sample_fetch(&session, &mut got, None);
    assert!(
        got == image,
        "{} bytes, the image has {}",
        got.len(),
        image.len()
    );
    assert!(session.check_firmware().unwrap());
    // Only what was missing came over MQTT the second time.
    let stats = server.stats();
    assert_eq!(stats.bytes_served, (60_000 - offset) as u64, "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_download_over_mqtt_works_while_another_thread_yields_the_client() {
    let (p, image) = Platform::single(50_000, 12, 6);
    let server = p.serve(MqttFaults {
        cuts: vec![20_000],
        ..MqttFaults::default()
    });
    let device = Arc::new(p.device());
    let session = attach(&device, quick_blocks());
    p.announce(&device, &session);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let yielder = {
        let (device, stop) = (device.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                device.yield_for(Duration::from_millis(50)).unwrap();
            }
        })
    };
    let mut got = Vec::new();
    sample_fetch(&session, &mut got, None);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    yielder.join().unwrap();
    assert!(
        got == image,
        "{} bytes, the image has {}",
        got.len(),
        image.len()
    );
    assert!(session.check_firmware().unwrap());
    assert_eq!(server.stats().repeated_requests, 1);
}

#[test]
fn a_file_length_the_platform_disagrees_on_fails_the_upgrade_with_one_report() {
    let image = common::firmware::image(20_000, 13).to_vec();
    let p = Platform::start(Package::single_over_mqtt("2.0.0", "app.bin", image, 7));
    let _server = p.serve(MqttFaults::default());
    let device = p.device();
    let session = attach(&device, quick_blocks());
    let message = p
        .package
        .upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())
        .unwrap()
        .replace("\"size\":20000", "\"size\":20001");
    assert!(message.contains("20001"), "{message}");
    p.announce_text(&device, &session, &message);
    let mut got = Vec::new();
    sample_fetch(&session, &mut got, None);
    assert!(
        got.is_empty(),
        "no byte of a file of another length: {}",
        got.len()
    );
    assert!(
        matches!(session.last_error(), Some(Error::Download(_))),
        "{:?}",
        session.last_error()
    );
    let failures = p.heard_when(&device, "progress", |g| {
        g.iter().any(|m| m.contains("\"step\":\"-"))
    });
    assert_eq!(
        failures
            .iter()
            .filter(|m| m.contains("\"step\":\"-"))
            .count(),
        1,
        "{failures:?}"
    );
}

#[test]
fn mqtt_download_is_off_by_default_and_refused_with_a_failure_report() {
    let image = common::firmware::image(10_000, 14).to_vec();
    let p = Platform::start(Package::single_over_mqtt("2.0.0", "app.bin", image, 8));
    let device = p.device();
    let session = OtaSession::attach(&device, PK, DN, OtaConfig::default()).unwrap();
    p.assert_refused(&device, &session);
}

#[test]
fn a_block_too_large_for_the_client_is_refused_when_it_is_set() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut o = options(broker.port(), "device");
    o.max_packet_size = 8 * 1024;
    let device = MqttClient::connect(&o).unwrap();
    let mut c = OtaConfig::for_protocol(Protocol::Sagoo);
    c.mqtt_download = Some(MqttDownloadConfig {
        block_size: 8 * 1024,
        ..MqttDownloadConfig::default()
    });
    let r = OtaSession::attach(&device, PK, DN, c.clone());
    assert!(matches!(r, Err(Error::InvalidParam(_))), "{:?}", r.err());
    // The refused attach left nothing subscribed: the same device attaches with a block that fits.
    c.mqtt_download = Some(MqttDownloadConfig {
        block_size: 4 * 1024,
        ..MqttDownloadConfig::default()
    });
    let session = OtaSession::attach(&device, PK, DN, c).unwrap();
    // Enabled again with another block size: the reply topic is taken over, not refused.
    session
        .enable_mqtt_download(
            &device,
            MqttDownloadConfig {
                block_size: 1024,
                ..MqttDownloadConfig::default()
            },
        )
        .unwrap();
    // Tencent and UCloud have no download over MQTT.
    let mut t = OtaConfig::for_protocol(Protocol::Tencent);
    t.mqtt_download = Some(MqttDownloadConfig::default());
    let r = OtaSession::attach(&device, PK, "dev2", t);
    assert!(matches!(r, Err(Error::InvalidParam(_))), "{:?}", r.err());
}

#[test]
fn a_block_whose_retries_run_out_is_resumed_by_the_engine_at_the_same_offset() {
    let (p, image) = Platform::single(30_000, 15, 9);
    // Two replies dropped in a row for the block holding byte 12 000: the source, allowed no
    // retry of its own, fails with a timeout, and the engine's retry policy opens it again.
    let server = p.serve(MqttFaults {
        cuts: vec![12_000, 12_001],
        ..MqttFaults::default()
    });
    let device = p.device();
    let session = attach(
        &device,
        MqttDownloadConfig {
            block_timeout: Duration::from_millis(300),
            block_retries: 0,
            ..MqttDownloadConfig::default()
        },
    );
    upgrade_and_check(&p, &device, &session, &image);
    assert_eq!(session.retries(), 2, "one reopening per dropped reply");
    let stats = server.stats();
    assert_eq!(
        (stats.replies_dropped, stats.repeated_requests),
        (2, 2),
        "{stats:?}"
    );
    assert_eq!(stats.bytes_served, 30_000, "{stats:?}");
}

#[test]
fn detaching_during_a_download_over_mqtt_ends_it_as_abandoned_with_one_report() {
    let (p, image) = Platform::single(40_000, 15, 78);
    let _server = p.serve(MqttFaults::default());
    let device = p.device();
    let session = attach(&device, quick_blocks());
    p.announce(&device, &session);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 5000];
    let deadline = Instant::now() + LIMIT;
    while got.is_empty() {
        assert!(Instant::now() < deadline, "no block came");
        if let Ok(n) = session.fetch_yield(&mut buf, Duration::from_secs(1)) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(image.starts_with(&got));
    session.detach(&device).unwrap();
    // The sample's loop goes on: the download ends at its next call, without going to the
    // HTTP source with the MQTT file's name as a URL.
    assert_eq!(
        session.fetch_yield(&mut buf, Duration::from_secs(1)),
        Err(Error::Download(DownloadError::Abandoned))
    );
    assert!(session.is_fetch_finished());
    assert!(!session.check_firmware().unwrap());
    let failures = p.heard_when(&device, "progress", |g| {
        g.iter().any(|m| m.contains("\"step\":\"-"))
    });
    assert_eq!(
        failures
            .iter()
            .filter(|m| m.contains("\"step\":\"-"))
            .count(),
        1,
        "{failures:?}"
    );
}

#[test]
fn mqtt_download_turned_off_refuses_such_upgrades_and_cannot_be_once_one_runs() {
    let image = common::firmware::image(10_000, 16).to_vec();
    let p = Platform::start(Package::single_over_mqtt("2.0.0", "app.bin", image, 9));
    let device = p.device();
    let session = attach(&device, quick_blocks());
    session.disable_mqtt_download().unwrap();
    p.assert_refused(&device, &session);

    // Once an upgrade over MQTT runs, turning it off is refused and changes nothing: the
    // download goes on.
    let (p2, image) = Platform::single(12_000, 17, 10);
    let _server = p2.serve(MqttFaults::default());
    let device2 = p2.device();
    let session2 = attach(&device2, quick_blocks());
    p2.announce(&device2, &session2);
    assert!(matches!(
        session2.disable_mqtt_download(),
        Err(Error::InvalidState(_))
    ));
    let mut got = Vec::new();
    sample_fetch(&session2, &mut got, None);
    assert!(got == image);
    assert!(session2.check_firmware().unwrap());

    // Tencent has no download over MQTT to turn off.
    let mut c = OtaConfig::for_protocol(Protocol::Tencent);
    c.mqtt_download = None;
    let tencent = OtaSession::attach(&device, PK, "tencent-dev", c).unwrap();
    assert!(matches!(
        tencent.disable_mqtt_download(),
        Err(Error::InvalidParam(_))
    ));
}
