//! Packages of several files and downloads over MQTT, end to end through the embedded broker:
//! the cloud (with a FirmwareServer or an MqttDownloadServer) against a small device side
//! written here (rumqttc and raw HTTP), which fetches each file, checks its digest, and reports
//! byte-weighted progress; devices that get it wrong make the run fail.

mod common;

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{broker_port, http_get, violation};
use ota_cloud::mqtt_download::{self, parse_frame, Topics};
use ota_cloud::package::{generated_files, HttpPackageMeter};
use ota_cloud::{
    md5_hex, sha256_hex, Cloud, CloudOptions, FirmwareServer, MqttDownloadServer, MqttFaults,
    Package, Protocol, Success, Summary,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const PK: &str = "pkgPK";
const T: Duration = Duration::from_secs(30);
const SIZES: [usize; 3] = [3000, 7000, 5000];

/// The device side: one MQTT connection subscribed to the upgrade topic and the download
/// replies.
struct Device {
    client: Client,
    rx: Receiver<(String, Vec<u8>)>,
    dn: String,
    topics: Topics,
}

impl Device {
    fn connect(dn: &str) -> Device {
        let mut options = MqttOptions::new(format!("pkg-dev-{dn}"), "127.0.0.1", broker_port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut connection) = Client::new(options, 64);
        let (tx, rx) = mpsc::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let topics = Topics::new(PK, dn);
        for t in [
            format!("/ota/device/upgrade/{PK}/{dn}"),
            topics.reply.clone(),
        ] {
            client.subscribe(t, QoS::AtLeastOnce).unwrap();
            ack_rx.recv_timeout(T).expect("subscribed");
        }
        Device {
            client,
            rx,
            dn: dn.into(),
            topics,
        }
    }

    fn send(&self, kind: &str, params: &str) {
        let payload = format!(r#"{{"id":"1","params":{{{params}}}}}"#);
        self.client
            .publish(
                format!("/ota/device/{kind}/{PK}/{}", self.dn),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }

    fn inform(&self, version: &str) {
        self.send("inform", &format!(r#""version":"{version}""#));
    }

    /// Aliyun progress (no strategy to echo).
    fn progress(&self, step: u64) {
        self.send("progress", &format!(r#""step":"{step}""#));
    }

    fn upgrade(&self) -> Value {
        loop {
            let (topic, payload) = self.rx.recv_timeout(T).expect("an upgrade message");
            if topic.starts_with("/ota/device/upgrade/") {
                return serde_json::from_slice(&payload).unwrap();
            }
        }
    }
}

/// How the device side misbehaves, to show the cloud catches it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quirk {
    None,
    /// Progress by files done, not bytes.
    ProgressByFileCount,
    /// Never fetches the last file, yet reports the new version.
    SkipLastFile,
    /// Keeps a block whose CRC fails.
    IgnoreCrc,
}

/// The files of the message: (name, size, sign, url or streamFileId).
fn files_of(msg: &Value) -> Vec<(String, u64, String, Value)> {
    let data = &msg["data"];
    match data["files"].as_array() {
        Some(files) => files
            .iter()
            .map(|f| {
                let at = if f.get("fileUrl").is_some() {
                    f["fileUrl"].clone()
                } else {
                    f["streamFileId"].clone()
                };
                (
                    f["fileName"].as_str().unwrap().to_string(),
                    f["fileSize"].as_u64().unwrap(),
                    f["fileSign"].as_str().unwrap().to_string(),
                    at,
                )
            })
            .collect(),
        None => vec![(
            "firmware.bin".into(),
            data["size"].as_u64().unwrap(),
            data["sign"].as_str().unwrap().to_string(),
            data.get("url")
                .cloned()
                .unwrap_or_else(|| data["streamFileId"].clone()),
        )],
    }
}

fn digest_ok(msg: &Value, sign: &str, bytes: &[u8]) -> bool {
    match msg["data"]["signMethod"].as_str() {
        Some("SHA256") => sha256_hex(bytes) == sign,
        _ => md5_hex(bytes) == sign,
    }
}

/// Reports byte-weighted progress (each new percent once).
struct Progress {
    total: u64,
    done: u64,
    last: u64,
}

impl Progress {
    fn add(&mut self, dev: &Device, n: u64) {
        self.done += n;
        let pct = self.done * 100 / self.total;
        if pct > self.last && pct < 100 {
            self.last = pct;
            dev.progress(pct);
        }
    }
}

/// Plays one package upgrade over HTTP; returns the files fetched.
fn install_over_http(dev: &Device, quirk: Quirk) -> Vec<Vec<u8>> {
    dev.inform("1.0.0");
    let msg = dev.upgrade();
    let files = files_of(&msg);
    let total = files.iter().map(|f| f.1).sum();
    let mut progress = Progress {
        total,
        done: 0,
        last: 0,
    };
    let mut out = Vec::new();
    for (i, (name, size, sign, url)) in files.iter().enumerate() {
        if quirk == Quirk::SkipLastFile && i == files.len() - 1 {
            break;
        }
        let bytes = http_get(url.as_str().unwrap());
        assert_eq!(bytes.len() as u64, *size, "{name}");
        assert!(digest_ok(&msg, sign, &bytes), "{name}: digest");
        if quirk == Quirk::ProgressByFileCount {
            dev.progress((i as u64 + 1) * 100 / files.len() as u64);
            // The cloud weighs a step against the bytes sent when the step arrives: give it
            // time to arrive before the next file goes out, as a slow device would.
            thread::sleep(Duration::from_millis(500));
        } else {
            progress.add(dev, *size);
        }
        out.push(bytes);
    }
    if quirk != Quirk::ProgressByFileCount {
        dev.progress(100);
    }
    dev.inform(msg["data"]["version"].as_str().unwrap());
    out
}

/// What the MQTT download of one file cost the device.
#[derive(Default, Debug)]
struct Retries {
    timeouts: u32,
    bad_crc: u32,
    bad_frame: u32,
    wrong_offset: u32,
}

/// Fetches one file over MQTT in blocks of `block`, re-asking after a bad CRC, a bad frame or
/// a timeout, ignoring replies for another offset.
#[allow(clippy::too_many_arguments)]
fn fetch_over_mqtt(
    dev: &Device,
    stream_id: u64,
    file_id: u64,
    size: u64,
    block: u64,
    quirk: Quirk,
    progress: &mut Progress,
    retries: &mut Retries,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut token = mqtt_download::DEFAULT_TOKEN.to_string();
    let mut id = 0u64;
    let give_up = Instant::now() + T;
    while (out.len() as u64) < size {
        assert!(Instant::now() < give_up, "download of file {file_id} stuck");
        let offset = out.len() as u64;
        let want = block.min(size - offset);
        id += 1;
        let req =
            mqtt_download::request(id, &token, stream_id as u32, file_id as u32, offset, want);
        dev.client
            .publish(&dev.topics.request, QoS::AtMostOnce, false, req)
            .unwrap();
        let deadline = Instant::now() + Duration::from_millis(700);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((topic, payload)) = dev.rx.recv_timeout(left) else {
                retries.timeouts += 1;
                break;
            };
            if topic != dev.topics.reply {
                continue;
            }
            let frame = match parse_frame(&payload) {
                Ok(f) => f,
                Err(_) => {
                    retries.bad_frame += 1;
                    break;
                }
            };
            assert_eq!(frame.code, 200);
            if frame.b_offset != offset || frame.file_length != size {
                retries.wrong_offset += 1;
                continue; // another block (late, or wrong): wait on, then time out
            }
            if !frame.crc_ok() {
                retries.bad_crc += 1;
                if quirk != Quirk::IgnoreCrc {
                    break;
                }
            }
            if let Some(t) = frame.token {
                token = t;
            }
            out.extend_from_slice(&frame.data);
            progress.add(dev, frame.b_size);
            break;
        }
    }
    out
}

/// Plays one upgrade over MQTT; returns the files fetched and what they cost.
fn install_over_mqtt(dev: &Device, block: u64, quirk: Quirk) -> (Vec<Vec<u8>>, Retries) {
    dev.inform("1.0.0");
    let msg = dev.upgrade();
    assert_eq!(msg["data"]["dProtocol"], "mqtt");
    let stream_id = msg["data"]["streamId"].as_u64().unwrap();
    let files = files_of(&msg);
    let mut progress = Progress {
        total: files.iter().map(|f| f.1).sum(),
        done: 0,
        last: 0,
    };
    let mut retries = Retries::default();
    let mut out = Vec::new();
    for (name, size, sign, file_id) in &files {
        let bytes = fetch_over_mqtt(
            dev,
            stream_id,
            file_id.as_u64().unwrap(),
            *size,
            block,
            quirk,
            &mut progress,
            &mut retries,
        );
        if quirk != Quirk::IgnoreCrc {
            assert!(digest_ok(&msg, sign, &bytes), "{name}: digest");
        }
        out.push(bytes);
    }
    dev.progress(100);
    dev.inform(msg["data"]["version"].as_str().unwrap());
    (out, retries)
}

fn three_files() -> Package {
    let files = generated_files(&SIZES);
    Package::new("2.0.0", files).unwrap()
}

fn http_cloud(
    protocol: Protocol,
    dn: &str,
) -> (FirmwareServer, Package, thread::JoinHandle<Summary>) {
    let server = FirmwareServer::start(vec![0u8; 1]).unwrap();
    let mut package = three_files();
    package.serve_on(&server).unwrap();
    let mut cloud = Cloud::connect(protocol, "127.0.0.1", broker_port(), PK, dn).unwrap();
    cloud.set_quiet(true).set_grace(Duration::from_millis(300));
    if protocol == Protocol::Sagoo {
        // No batch id to echo: the device side here sends bare progress.
        cloud
            .set_options(CloudOptions {
                strategy: None,
                ..CloudOptions::default()
            })
            .unwrap();
    }
    let meter = Arc::new(HttpPackageMeter::new(&server, &package));
    cloud.set_package(package.clone(), meter).unwrap();
    let run = thread::spawn(move || cloud.run_package(T));
    (server, package, run)
}

#[test]
fn a_package_of_three_files_is_downloaded_and_reported() {
    for protocol in [Protocol::Aliyun, Protocol::Sagoo] {
        let dn = format!("pkg-ok-{protocol}");
        let (server, package, run) = http_cloud(protocol, &dn);
        let dev = Device::connect(&dn);
        let got = install_over_http(&dev, Quirk::None);
        let summary = run.join().unwrap();
        assert_eq!(summary.outcome, Ok(Success::Upgraded), "{protocol}");
        assert_eq!(got.len(), 3);
        for (file, bytes) in package.files.iter().zip(&got) {
            assert_eq!(&file.data[..], &bytes[..], "{}", file.name);
        }
        // One GET per file, each whole.
        let log = server.requests();
        for file in &package.files {
            let n = log
                .iter()
                .filter(|r| r.path.ends_with(&format!("/{}", file.name)) && r.status == 200)
                .count();
            assert_eq!(n, 1, "{}", file.name);
        }
        assert_eq!(*summary.progress.last().unwrap(), 100);
    }
}

#[test]
fn the_package_message_lists_every_file_and_no_single_file_fields() {
    let dn = "pkg-shape";
    let (_server, package, run) = http_cloud(Protocol::Aliyun, dn);
    let dev = Device::connect(dn);
    dev.inform("1.0.0");
    let msg = dev.upgrade();
    let data = msg["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["files", "signMethod", "version"]);
    let files = msg["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for (f, p) in files.iter().zip(&package.files) {
        assert_eq!(f["fileName"], p.name.as_str());
        assert_eq!(f["fileSize"], p.size());
        assert_eq!(f["fileSign"], p.md5.as_str());
        assert_eq!(http_get(f["fileUrl"].as_str().unwrap()), &p.data[..]);
    }
    dev.send("progress", r#""step":"-1","desc":"not this time""#);
    let summary = run.join().unwrap();
    assert!(matches!(
        summary.outcome,
        Err(ota_cloud::Failure::DeviceFailed { step: -1, .. })
    ));
}

#[test]
fn progress_by_file_count_is_a_violation() {
    let dn = "pkg-count";
    let (_server, _package, run) = http_cloud(Protocol::Aliyun, dn);
    let dev = Device::connect(dn);
    install_over_http(&dev, Quirk::ProgressByFileCount);
    let (_, reason) = violation(&run.join().unwrap());
    assert!(reason.contains("weighted by bytes"), "{reason}");
}

#[test]
fn progress_that_goes_back_is_a_violation() {
    let dn = "pkg-back";
    let (_server, package, run) = http_cloud(Protocol::Aliyun, dn);
    let dev = Device::connect(dn);
    dev.inform("1.0.0");
    let msg = dev.upgrade();
    for f in files_of(&msg) {
        http_get(f.3.as_str().unwrap());
    }
    assert_eq!(package.files.len(), 3);
    dev.progress(60);
    dev.progress(20);
    let (_, reason) = violation(&run.join().unwrap());
    assert!(reason.contains("never goes back"), "{reason}");
}

/// A device that restarts (reports its old version again) resumes from its last saved record,
/// behind what it reported before: lower progress after that is no violation.
#[test]
fn progress_may_go_back_after_a_restart() {
    let dn = "pkg-restart";
    let (_server, _package, run) = http_cloud(Protocol::Aliyun, dn);
    let dev = Device::connect(dn);
    dev.inform("1.0.0");
    for f in files_of(&dev.upgrade()) {
        http_get(f.3.as_str().unwrap());
    }
    dev.progress(60);
    dev.inform("1.0.0");
    dev.upgrade();
    dev.progress(40);
    dev.progress(100);
    dev.inform("2.0.0");
    let summary = run.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.progress, [60, 40, 100]);
}

#[test]
fn a_new_version_without_every_file_is_a_violation() {
    let dn = "pkg-skip";
    let (_server, _package, run) = http_cloud(Protocol::Sagoo, dn);
    let dev = Device::connect(dn);
    install_over_http(&dev, Quirk::SkipLastFile);
    let (_, reason) = violation(&run.join().unwrap());
    // Step 100 comes first: not every byte was sent by then.
    assert!(reason.contains("100%"), "{reason}");
}

#[test]
fn platforms_without_packages_refuse_one() {
    for protocol in [Protocol::Tencent, Protocol::Ucloud] {
        let mut cloud =
            Cloud::connect(protocol, "127.0.0.1", broker_port(), PK, "pkg-none").unwrap();
        let meter = Arc::new(HttpPackageMeter::new(
            &FirmwareServer::start(vec![1u8]).unwrap(),
            &three_files(),
        ));
        let err = cloud.set_package(three_files(), meter).err().unwrap();
        assert!(err.contains("has no packages"), "{err}");
    }
}

/// Starts a cloud and a download server for a package over MQTT.
fn mqtt_cloud(
    dn: &str,
    package: Package,
    block: u32,
    faults: MqttFaults,
) -> (MqttDownloadServer, thread::JoinHandle<Summary>) {
    let server =
        MqttDownloadServer::start("127.0.0.1", broker_port(), PK, dn, &package, block, faults)
            .unwrap();
    let mut cloud = Cloud::connect(Protocol::Aliyun, "127.0.0.1", broker_port(), PK, dn).unwrap();
    cloud.set_quiet(true).set_grace(Duration::from_millis(300));
    cloud.set_package(package, server.meter()).unwrap();
    (server, thread::spawn(move || cloud.run_package(T)))
}

/// A three-file package over MQTT with `faults`: the device ends with every file exact.
fn mqtt_package_with(dn: &str, faults: MqttFaults) -> (ota_cloud::MqttDownloadStats, Retries) {
    let package = three_files().over_mqtt(77);
    let (server, run) = mqtt_cloud(dn, package.clone(), 1024, faults);
    let dev = Device::connect(dn);
    let (got, retries) = install_over_mqtt(&dev, 1024, Quirk::None);
    let summary = run.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded), "{dn}");
    for (file, bytes) in package.files.iter().zip(&got) {
        assert_eq!(&file.data[..], &bytes[..], "{}", file.name);
    }
    let stats = server.stats();
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    (stats, retries)
}

#[test]
fn mqtt_package_without_faults() {
    let (stats, retries) = mqtt_package_with("mq-ok", MqttFaults::default());
    let blocks: u64 = SIZES.iter().map(|s| s.div_ceil(1024) as u64).sum();
    assert_eq!(stats.requests, blocks);
    assert_eq!(stats.blocks_served, blocks);
    assert_eq!(stats.repeated_requests, 0);
    assert_eq!(stats.bytes_served, SIZES.iter().sum::<usize>() as u64);
    assert_eq!(retries.timeouts + retries.bad_crc, 0);
}

#[test]
fn mqtt_bad_crc_is_asked_again() {
    let faults = MqttFaults {
        flip_at: Some(2500),
        ..MqttFaults::default()
    };
    let (stats, retries) = mqtt_package_with("mq-flip", faults);
    assert_eq!(retries.bad_crc, 1);
    assert_eq!(stats.repeated_requests, 1);
    assert_eq!(stats.faults_fired.len(), 1, "{:?}", stats.faults_fired);
}

#[test]
fn mqtt_dropped_reply_is_asked_again() {
    let faults = MqttFaults {
        cuts: vec![100, 6000],
        ..MqttFaults::default()
    };
    let (stats, retries) = mqtt_package_with("mq-cut", faults);
    assert_eq!(stats.replies_dropped, 2);
    assert_eq!(retries.timeouts, 2);
    assert_eq!(stats.repeated_requests, 2);
}

#[test]
fn mqtt_stalled_reply_is_asked_again_and_the_late_one_ignored() {
    let faults = MqttFaults {
        stall_at: Some((1500, Duration::from_millis(1200))),
        ..MqttFaults::default()
    };
    let (stats, retries) = mqtt_package_with("mq-stall", faults);
    assert_eq!(retries.timeouts, 1);
    assert_eq!(stats.repeated_requests, 1);
    assert_eq!(stats.faults_fired.len(), 1);
}

#[test]
fn mqtt_header_past_frame_and_wrong_offset_are_asked_again() {
    let faults = MqttFaults {
        header_past_frame_at: Some(10),
        wrong_offset_at: Some(4000),
        ..MqttFaults::default()
    };
    let (stats, retries) = mqtt_package_with("mq-frame", faults);
    assert_eq!(retries.bad_frame, 1);
    assert_eq!(retries.wrong_offset, 1);
    assert_eq!(retries.timeouts, 1); // after the wrong offset, the device waits it out
    assert_eq!(stats.repeated_requests, 2);
    assert_eq!(stats.faults_fired.len(), 2);
}

#[test]
fn a_device_that_keeps_a_bad_crc_block_is_caught() {
    let dn = "mq-ignore-crc";
    let package = three_files().over_mqtt(5);
    let faults = MqttFaults {
        flip_at: Some(50),
        ..MqttFaults::default()
    };
    let (_server, run) = mqtt_cloud(dn, package, 1024, faults);
    let dev = Device::connect(dn);
    let (_, retries) = install_over_mqtt(&dev, 1024, Quirk::IgnoreCrc);
    assert_eq!(retries.bad_crc, 1);
    let (_, reason) = violation(&run.join().unwrap());
    assert!(reason.contains("not downloaded whole"), "{reason}");
    assert!(reason.contains("file1.bin"), "{reason}");
}

#[test]
fn a_single_file_over_mqtt() {
    let dn = "mq-single";
    let image = ota_cloud::generate_firmware(9000);
    let package = Package::single_over_mqtt("3.0.0", "firmware.bin", image.clone(), 9);
    let (server, run) = mqtt_cloud(dn, package, 4096, MqttFaults::default());
    let dev = Device::connect(dn);
    let (got, _) = install_over_mqtt(&dev, 4096, Quirk::None);
    assert_eq!(got, vec![image]);
    assert_eq!(run.join().unwrap().outcome, Ok(Success::Upgraded));
    assert_eq!(server.stats().blocks_served, 3);
}

#[test]
fn block_requests_against_the_protocol_end_the_run() {
    let dn = "mq-bad-req";
    let package = three_files().over_mqtt(77);
    let (server, run) = mqtt_cloud(dn, package, 1024, MqttFaults::default());
    let dev = Device::connect(dn);
    dev.inform("1.0.0");
    dev.upgrade();
    // Twice the block size allowed.
    let req = mqtt_download::request(1, "default", 77, 1, 0, 2048);
    dev.client
        .publish(&dev.topics.request, QoS::AtMostOnce, false, req)
        .unwrap();
    let (topic, payload) = dev.rx.recv_timeout(T).unwrap();
    assert_eq!(topic, dev.topics.reply);
    assert_eq!(parse_frame(&payload).unwrap().code, 400);
    let (topic, reason) = violation(&run.join().unwrap());
    assert_eq!(topic, server.topics().request);
    assert!(reason.contains("block size"), "{reason}");
    for (bad, why) in [
        (
            mqtt_download::request(2, "default", 78, 1, 0, 10),
            "streamId",
        ),
        (mqtt_download::request(3, "default", 77, 9, 0, 10), "fileId"),
        (
            mqtt_download::request(4, "default", 77, 1, 3000, 10),
            "offset",
        ),
        (
            mqtt_download::request(5, "other", 77, 1, 0, 10),
            "fileToken",
        ),
    ] {
        dev.client
            .publish(&dev.topics.request, QoS::AtMostOnce, false, bad)
            .unwrap();
        let stats = server.stats_when(T, |s| s.violations.iter().any(|v| v.contains(why)));
        assert!(
            stats.violations.iter().any(|v| v.contains(why)),
            "{why}: {:?}",
            stats.violations
        );
    }
}
