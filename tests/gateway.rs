//! Gateways (issue 15): many OTA sessions on one MQTT client, the client's download slots, and
//! images the firmware keeps that other sessions stream instead of downloading them again.
//!
//! Real parts: the simulator's embedded broker (Mosquitto for the persistent-session case),
//! ota-cloud's firmware server on 127.0.0.1 with its request log, and a gateway firmware written
//! like the iotkit sample: one thread, appends what `fetch_yield` returns, never rewinds, and
//! leaves a device's loop only when `is_fetch_finished` is true.

mod common;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ota::mqtt::QoS;
use ota::ota::{Gateway, LocalImage, Waiting};
use ota::{Error, MqttClient, MqttOptions, OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::http::RequestLog;
use ota_cloud::{EmbeddedBroker, Firmware, FirmwareServer};

const LIMIT: Duration = Duration::from_secs(60);

/// Every log line of this test process.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn keep_line(tag: &str, module: &str, args: std::fmt::Arguments<'_>) -> bool {
    let line = format!("[{tag}] {module}: {args}");
    lock(&LINES).push(line);
    false
}

fn lines_with(text: &str) -> Vec<String> {
    lock(&LINES)
        .iter()
        .filter(|l| l.contains(text))
        .cloned()
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The upgrade message of `protocol` for `fw`, as the platform sends it (UCloud's task upgrades
/// from 1.0.0, which every device here runs).
fn notice(protocol: Protocol, fw: &Firmware) -> String {
    match protocol {
        Protocol::Aliyun => ota_cloud::aliyun::upgrade_message(fw, 1),
        Protocol::Sagoo => {
            ota_cloud::sagoo::upgrade_message(fw, 1, ota_cloud::SignMethod::Md5, None, None)
        }
        Protocol::Tencent => ota_cloud::tencent::update_message(fw),
        Protocol::Ucloud => ota_cloud::ucloud::notify_message(fw, "1.0.0", None, "task-1"),
    }
}

/// What the firmware stored for one device: its "file".
type Stored = Arc<Mutex<Vec<u8>>>;

/// The firmware's reader of a device's stored image; `corrupt_at` flips that byte of what it
/// reads (a flash that went bad, or a file another process changed).
struct Kept {
    stored: Stored,
    corrupt_at: Option<u64>,
}

impl LocalImage for Kept {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let stored = lock(&self.stored);
        let start = usize::try_from(offset).unwrap().min(stored.len());
        let n = buf.len().min(stored.len() - start);
        buf[..n].copy_from_slice(&stored[start..start + n]);
        if let Some(at) = self.corrupt_at {
            if (offset..offset + n as u64).contains(&at) {
                buf[(at - offset) as usize] ^= 0xff;
            }
        }
        Ok(n)
    }
}

/// One device behind the gateway, as the gateway firmware tracks it.
struct Device {
    name: String,
    session: Option<OtaSession>,
    stored: Stored,
    /// When its download started, in the order the gateway saw them start.
    started: Option<usize>,
    /// `check_firmware`'s verdict once its cycle ended.
    valid: Option<bool>,
    from_local: bool,
}

impl Device {
    fn attach(mqtt: &MqttClient, protocol: Protocol, name: &str, keeps: bool) -> Device {
        let session =
            OtaSession::attach(mqtt, "pk", name, OtaConfig::for_protocol(protocol)).unwrap();
        let stored: Stored = Arc::default();
        if keeps {
            session
                .set_local_image_source(Box::new(Kept {
                    stored: stored.clone(),
                    corrupt_at: None,
                }))
                .unwrap();
        }
        session.report_version("1.0.0").unwrap();
        Device {
            name: name.to_string(),
            session: Some(session),
            stored,
            started: None,
            valid: None,
            from_local: false,
        }
    }

    fn session(&self) -> &OtaSession {
        self.session.as_ref().expect("the device's session is open")
    }
}

/// The gateway firmware's loop, one round: yield MQTT, then for each device (in `order`) start
/// what may start and hand one `fetch_yield` to each download under way, as a single-threaded
/// gateway that serves every device a little each round does. True once every device is done.
fn round(mqtt: &MqttClient, devices: &mut [Device], order: &[usize], starts: &mut usize) -> bool {
    mqtt.yield_for(Duration::from_millis(2)).unwrap();
    let mut buf = [0u8; 2048];
    for &i in order {
        let d = &mut devices[i];
        let Some(s) = d.session.as_ref() else {
            continue;
        };
        if d.valid.is_some() {
            continue;
        }
        if d.started.is_none() {
            if !s.is_fetching() {
                continue;
            }
            d.started = Some(*starts);
            *starts += 1;
        }
        if !s.is_fetch_finished() {
            // The sample appends what it gets and reports a failure on <= 0 (held by the SDK).
            if let Ok(n) = s.fetch_yield(&mut buf, Duration::from_millis(50)) {
                lock(&d.stored).extend_from_slice(&buf[..n]);
            }
            d.from_local |= s.from_local_image();
        }
        if s.is_fetch_finished() {
            let valid = s.check_firmware().unwrap();
            d.valid = Some(valid);
            if valid {
                // The last mile is done and the device runs its new version: the success,
                // in its platform's terms.
                let version = s.with_notice(|n| n.version.as_str().to_string());
                s.report_upgrade_success(&version).unwrap();
            }
        }
    }
    devices
        .iter()
        .all(|d| d.valid.is_some() || d.session.is_none())
}

/// Runs rounds until every device is done (or `limit`), checking `each` after every round.
fn run(
    mqtt: &MqttClient,
    devices: &mut [Device],
    order: &[usize],
    mut each: impl FnMut(&[Device]),
) {
    let deadline = Instant::now() + LIMIT;
    let mut starts = 0;
    while !round(mqtt, devices, order, &mut starts) {
        each(devices);
        assert!(Instant::now() < deadline, "the gateway did not finish");
    }
}

struct Bench {
    _broker: EmbeddedBroker,
    mqtt: MqttClient,
    cloud: MqttClient,
    server: FirmwareServer,
}

impl Bench {
    fn new(client: &str) -> Bench {
        ota::log::set_sink(keep_line);
        ota::log::set_level(ota::log::Level::Info);
        let broker = EmbeddedBroker::start().unwrap();
        let mqtt =
            MqttClient::connect(&MqttOptions::new(broker.host(), broker.port(), client)).unwrap();
        let cloud = MqttClient::connect(&MqttOptions::new(
            broker.host(),
            broker.port(),
            &format!("{client}-cloud"),
        ))
        .unwrap();
        let server = FirmwareServer::start(common::firmware::image(1024, 0).to_vec()).unwrap();
        Bench {
            _broker: broker,
            mqtt,
            cloud,
            server,
        }
    }

    /// Serves `image` as `name`; its firmware description as version `version`.
    fn serve(&self, name: &str, image: &[u8], version: &str) -> Firmware {
        let url = self.server.add_image(name, image.to_vec()).unwrap();
        Firmware::new(version, url, image)
    }

    /// Publishes `message` on `session`'s upgrade topic, once (the gateway yields to get it).
    fn send(&self, session: &OtaSession, message: &str) {
        common::platform::send_upgrade(&self.cloud, session, message);
    }

    /// Sends each device its upgrade, in the order given, each after the gateway got the last.
    fn announce(&self, devices: &[Device], upgrades: &[(usize, Protocol, &Firmware)]) {
        for &(i, protocol, fw) in upgrades {
            let s = devices[i].session();
            let before = s.state();
            let deadline = Instant::now() + LIMIT;
            // Sent again until it arrives: the session's subscription may still be on its way
            // to the broker (the same upgrade again changes nothing).
            while s.state() == before {
                assert!(
                    Instant::now() < deadline,
                    "the upgrade message never arrived"
                );
                self.send(s, &notice(protocol, fw));
                common::wait::within(Duration::from_millis(200), || {
                    self.mqtt.yield_for(Duration::from_millis(5)).unwrap();
                    s.state() != before
                });
            }
        }
    }

    /// Subscribes the cloud to every device's upstream topics; what arrives is kept.
    fn record_upstream(&self) -> Arc<Mutex<Vec<(String, String)>>> {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        for filter in [
            "/ota/device/+/+/+",
            "$ota/report/+/+",
            "/$system/+/+/ota/upstream",
        ] {
            let seen = seen.clone();
            self.cloud
                .subscribe(filter, QoS::AtLeastOnce, move |m| {
                    let text = String::from_utf8_lossy(m.payload).into_owned();
                    lock(&seen).push((m.topic.to_string(), text));
                })
                .unwrap();
        }
        self.cloud.yield_for(Duration::from_millis(100)).unwrap();
        seen
    }

    /// Full downloads of `name` (GETs from byte 0), and all GETs of it, once the server logged
    /// at least `logged` requests (a request is logged when its response ends, which can be
    /// after the device has every byte).
    fn downloads_of(&self, name: &str, logged: usize) -> (usize, usize) {
        let log: Vec<RequestLog> = self.server.requests_when(logged, LIMIT);
        let gets: Vec<&RequestLog> = log
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains(name))
            .collect();
        let full = gets
            .iter()
            .filter(|r| r.range.as_deref().is_none_or(|r| r == "bytes=0-"))
            .count();
        (full, gets.len())
    }
}

/// Image `i` of `len` bytes (distinct per `i`).
fn image(len: usize, i: u8) -> Vec<u8> {
    common::firmware::image(len, 100 + i).to_vec()
}

const PROTOCOLS: [Protocol; 4] = [
    Protocol::Aliyun,
    Protocol::Sagoo,
    Protocol::Tencent,
    Protocol::Ucloud,
];

/// 64 sub-devices of four platforms on one client, four distinct images each shared by 16 of
/// them across the platforms: each image is downloaded from the network once, the other 60
/// devices stream the kept copies, never more than one network download runs, every device
/// stores its image byte for byte and reports its progress on its own platform's topic.
#[test]
fn sixty_four_sessions_of_four_platforms_download_each_distinct_image_once() {
    let bench = Bench::new("gw-64");
    let upstream = bench.record_upstream();
    let images: Vec<Vec<u8>> = (0..4).map(|i| image(48 * 1024 + i as usize, i)).collect();
    let firmware: Vec<Firmware> = (0..4)
        .map(|i| bench.serve(&format!("img-{i}.bin"), &images[i], "2.0.0"))
        .collect();
    let mut devices: Vec<Device> = (0..64)
        .map(|i| Device::attach(&bench.mqtt, PROTOCOLS[i % 4], &format!("sub-{i:02}"), true))
        .collect();
    let gateway = Gateway::of(&bench.mqtt);
    assert_eq!(gateway.sessions(), 64);
    assert_eq!(
        gateway.max_downloads(),
        1,
        "the default suits a cellular gateway"
    );
    // Image of device i: (i / 4) % 4, so each image goes to all four platforms.
    let upgrades: Vec<(usize, Protocol, &Firmware)> = (0..64)
        .map(|i| (i, PROTOCOLS[i % 4], &firmware[(i / 4) % 4]))
        .collect();
    bench.announce(&devices, &upgrades);
    let order: Vec<usize> = (0..64).collect();
    let mut most = 0;
    run(&bench.mqtt, &mut devices, &order, |_| {
        most = most.max(gateway.downloads_active());
    });
    assert_eq!(most, 1, "one network download at a time");
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.valid, Some(true), "{} verified", d.name);
        assert!(
            *lock(&d.stored) == images[(i / 4) % 4],
            "{} stored its image byte for byte",
            d.name
        );
    }
    for i in 0..4 {
        let (full, all) = bench.downloads_of(&format!("img-{i}.bin"), 4);
        assert_eq!(
            (full, all),
            (1, 1),
            "image {i}: one download, no other request"
        );
    }
    let local = devices.iter().filter(|d| d.from_local).count();
    assert_eq!(
        local, 60,
        "every device but the first of each image streamed a kept copy"
    );
    // Each device's platform heard its success on that device's own topic.
    let unheard = || -> Vec<String> {
        let seen = lock(&upstream);
        devices
            .iter()
            .filter(|d| {
                !seen.iter().any(|(topic, payload)| {
                    topic.contains(&format!("/{}", d.name))
                        && (payload.contains("\"2.0.0\"") || payload.contains("\"success\""))
                })
            })
            .map(|d| d.name.clone())
            .collect()
    };
    common::wait::within(LIMIT, || {
        bench.mqtt.yield_for(Duration::from_millis(5)).unwrap();
        bench.cloud.yield_for(Duration::from_millis(5)).unwrap();
        unheard().is_empty()
    });
    assert!(
        unheard().is_empty(),
        "no success heard from {:?}",
        unheard()
    );
}

/// With two slots, six sub-devices with distinct images (UCloud, whose platform hears
/// "upgrading" when a download starts): two download, four wait (`Waiting::Slot`, no
/// "upgrading" report), and they start in the order their upgrades arrived even though the
/// firmware asks them in the reverse order; never more than two download at once.
#[test]
fn download_slots_bound_network_downloads_and_start_in_arrival_order() {
    let bench = Bench::new("gw-slots");
    let upstream = bench.record_upstream();
    let gateway = Gateway::of(&bench.mqtt);
    assert_eq!(
        gateway.set_max_downloads(0),
        Err(Error::InvalidParam("at least one download must be allowed"))
    );
    gateway.set_max_downloads(2).unwrap();
    let images: Vec<Vec<u8>> = (0..6).map(|i| image(96 * 1024, i)).collect();
    let firmware: Vec<Firmware> = (0..6)
        .map(|i| bench.serve(&format!("slot-{i}.bin"), &images[i as usize], "2.0.0"))
        .collect();
    let mut devices: Vec<Device> = (0..6)
        .map(|i| Device::attach(&bench.mqtt, Protocol::Ucloud, &format!("node-{i}"), false))
        .collect();
    let upgrades: Vec<(usize, Protocol, &Firmware)> = (0..6)
        .map(|i| (i, Protocol::Ucloud, &firmware[i]))
        .collect();
    bench.announce(&devices, &upgrades);
    for (i, d) in devices.iter().enumerate() {
        let s = d.session();
        if i < 2 {
            assert!(s.is_fetching(), "{} has a slot", d.name);
        } else {
            assert!(!s.is_fetching(), "{} waits", d.name);
            assert_eq!(s.state(), OtaState::Waiting);
            assert_eq!(s.waiting(), Waiting::Slot);
        }
    }
    assert_eq!(gateway.waiting(), 4);
    // One waiting device is removed from the gateway (IOT_OTA_Deinit): the others keep
    // their places.
    let gone = devices[3].session.take().unwrap();
    gone.release();
    drop(gone);
    assert_eq!(gateway.waiting(), 3);
    assert_eq!(gateway.sessions(), 5);
    let order: Vec<usize> = (0..6).rev().collect();
    let mut most = 0;
    let mut misleading = Vec::new();
    run(&bench.mqtt, &mut devices, &order, |devices| {
        most = most.max(gateway.downloads_active());
        bench.cloud.yield_for(Duration::ZERO).unwrap();
        // A waiting device has told its platform nothing but the receipt.
        for d in devices.iter().filter(|d| d.started.is_none()) {
            let seen = lock(&upstream);
            if seen
                .iter()
                .any(|(t, p)| t.contains(&format!("/{}/", d.name)) && p.contains("upgrading"))
            {
                misleading.push(d.name.clone());
            }
        }
    });
    assert_eq!(most, 2, "two slots, both used");
    assert!(
        misleading.is_empty(),
        "waiting devices reported upgrading: {misleading:?}"
    );
    // The first two started at once (the gateway saw them in its own order); the others in
    // the order their upgrades arrived.
    let mut started: Vec<Option<usize>> = devices.iter().map(|d| d.started).collect();
    started[..2].sort();
    assert_eq!(
        started,
        vec![Some(0), Some(1), Some(2), None, Some(3), Some(4)],
        "arrival order"
    );
    for (i, d) in devices.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert_eq!(d.valid, Some(true));
        assert!(*lock(&d.stored) == images[i]);
    }
}

/// A kept copy that does not match the digest (a bad flash): the device that would have
/// streamed it reads it once, finds the mismatch before handing out a byte, says so once and
/// downloads from the network; later devices no longer try that copy.
#[test]
fn a_kept_image_that_does_not_match_falls_back_to_the_network_once() {
    let bench = Bench::new("gw-bad-copy");
    let img = image(40 * 1024, 7);
    let fw = bench.serve("shared-bad.bin", &img, "2.0.0");
    let mut devices = vec![
        Device::attach(&bench.mqtt, Protocol::Aliyun, "holder-bad", false),
        Device::attach(&bench.mqtt, Protocol::Tencent, "reader-bad", true),
        Device::attach(&bench.mqtt, Protocol::Aliyun, "third-bad", false),
    ];
    devices[0]
        .session()
        .set_local_image_source(Box::new(Kept {
            stored: devices[0].stored.clone(),
            corrupt_at: Some(20_000),
        }))
        .unwrap();
    bench.announce(
        &devices,
        &[
            (0, Protocol::Aliyun, &fw),
            (1, Protocol::Tencent, &fw),
            (2, Protocol::Aliyun, &fw),
        ],
    );
    assert_eq!(devices[1].session().waiting(), Waiting::SameImage);
    run(&bench.mqtt, &mut devices, &[0, 1, 2], |_| {});
    for d in &devices {
        assert_eq!(d.valid, Some(true), "{}", d.name);
        assert!(*lock(&d.stored) == img, "{} stored the image", d.name);
    }
    assert!(!devices[1].from_local, "the reader ended on the network");
    // The third streamed the reader's good copy, not the holder's bad one.
    assert!(devices[2].from_local, "the third streamed a good copy");
    let (full, all) = bench.downloads_of("shared-bad.bin", 2);
    assert_eq!(
        (full, all),
        (2, 2),
        "the holder's download and the reader's fallback"
    );
    let said = lines_with("does not match the announced digest (session #");
    assert_eq!(said.len(), 1, "said once: {said:?}");
}

/// The holder of a kept image is deinitialised while another device streams it: the reader
/// goes on from the network at the byte it reached (a Range request), the bytes it handed out
/// stay right, and nothing else is disturbed.
#[test]
fn deinit_of_the_holder_mid_read_sends_the_reader_to_the_network_at_its_offset() {
    let bench = Bench::new("gw-drop-holder");
    let img = image(64 * 1024, 9);
    let fw = bench.serve("shared-drop.bin", &img, "2.0.0");
    let mut devices = vec![
        Device::attach(&bench.mqtt, Protocol::Sagoo, "holder-drop", true),
        Device::attach(&bench.mqtt, Protocol::Sagoo, "reader-drop", true),
    ];
    bench.announce(
        &devices,
        &[(0, Protocol::Sagoo, &fw), (1, Protocol::Sagoo, &fw)],
    );
    let mut dropped_at = None;
    let deadline = Instant::now() + LIMIT;
    let mut starts = 0;
    while !round(&bench.mqtt, &mut devices, &[0, 1], &mut starts) {
        assert!(Instant::now() < deadline);
        let have = lock(&devices[1].stored).len();
        if dropped_at.is_none() && devices[1].from_local && have >= 8 * 1024 {
            // IOT_OTA_Deinit of the holder.
            let holder = devices[0].session.take().unwrap();
            holder.release();
            drop(holder);
            dropped_at = Some(have);
        }
    }
    let at = dropped_at.expect("the holder was dropped mid-read");
    assert_eq!(devices[1].valid, Some(true));
    assert!(*lock(&devices[1].stored) == img, "no gap, no repeat");
    let log = bench.server.requests_when(2, LIMIT);
    let ranges: Vec<Option<String>> = log
        .iter()
        .filter(|r| r.path.contains("shared-drop.bin"))
        .map(|r| r.range.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={at}-"))]);
}

/// A device whose kept image is being streamed gets an upgrade of its own: it waits
/// (`Waiting::Readers`, `is_fetching` false) until the reader has all its bytes, then starts;
/// the reader's stream is not disturbed.
#[test]
fn a_holder_with_a_new_upgrade_waits_until_its_kept_image_is_read() {
    let bench = Bench::new("gw-busy-holder");
    let img = image(64 * 1024, 11);
    let next = image(20 * 1024, 12);
    let fw = bench.serve("shared-busy.bin", &img, "2.0.0");
    let fw_next = bench.serve("next-busy.bin", &next, "3.0.0");
    let mut devices = vec![
        Device::attach(&bench.mqtt, Protocol::Aliyun, "holder-busy", true),
        Device::attach(&bench.mqtt, Protocol::Aliyun, "reader-busy", true),
    ];
    bench.announce(
        &devices,
        &[(0, Protocol::Aliyun, &fw), (1, Protocol::Aliyun, &fw)],
    );
    let deadline = Instant::now() + LIMIT;
    let mut starts = 0;
    let mut announced = false;
    while !round(&bench.mqtt, &mut devices, &[0, 1], &mut starts) {
        assert!(Instant::now() < deadline);
        if !announced && devices[1].from_local && lock(&devices[1].stored).len() >= 4096 {
            announced = true;
            let holder = devices[0].session();
            let message = notice(Protocol::Aliyun, &fw_next);
            bench.send(holder, &message);
            // It arrives (the holder's cycle ended and was seen: the next one is due), and the
            // holder waits for its reader instead of starting.
            common::wait::until("the holder's new upgrade", LIMIT, || {
                bench.mqtt.yield_for(Duration::from_millis(5)).unwrap();
                !holder.is_fetching() && holder.state() == OtaState::Waiting
            });
            assert_eq!(holder.waiting(), Waiting::Readers);
        }
    }
    assert!(announced);
    assert!(*lock(&devices[1].stored) == img);
    assert!(devices[1].from_local, "the reader streamed to the end");
    // Now the holder's new upgrade starts, and it downloads the new image.
    lock(&devices[0].stored).clear();
    devices[0].started = None;
    devices[0].valid = None;
    run(&bench.mqtt, &mut devices, &[0, 1], |_| {});
    assert!(*lock(&devices[0].stored) == next);
}

/// A second session of one device on one client is refused with its own error; without a kept
/// image a device that shares an image with another downloads it itself.
#[test]
fn a_device_twice_is_refused_and_devices_without_a_kept_copy_download_themselves() {
    let bench = Bench::new("gw-plain");
    let img = image(30 * 1024, 13);
    let fw = bench.serve("plain.bin", &img, "2.0.0");
    let mut devices = vec![
        Device::attach(&bench.mqtt, Protocol::Tencent, "plain-a", false),
        Device::attach(&bench.mqtt, Protocol::Tencent, "plain-b", false),
    ];
    assert!(matches!(
        OtaSession::attach(
            &bench.mqtt,
            "pk",
            "plain-a",
            OtaConfig::for_protocol(Protocol::Tencent)
        ),
        Err(Error::DeviceTaken)
    ));
    bench.announce(
        &devices,
        &[(0, Protocol::Tencent, &fw), (1, Protocol::Tencent, &fw)],
    );
    assert_eq!(devices[1].session().waiting(), Waiting::Slot);
    run(&bench.mqtt, &mut devices, &[0, 1], |_| {});
    assert!(devices
        .iter()
        .all(|d| d.valid == Some(true) && !d.from_local));
    assert_eq!(bench.downloads_of("plain.bin", 2), (2, 2));
}

/// An upgrade for a device whose session is gone, which the broker still delivers to the
/// gateway's persistent session (Mosquitto keeps it): ignored with one log line; the device
/// with a session on the same client upgrades as usual.
#[test]
fn an_upgrade_for_a_device_without_a_session_is_ignored_with_one_log_line() {
    let Some(binary) = common::mosquitto::binary_or_skip() else {
        return;
    };
    ota::log::set_sink(keep_line);
    let port = common::net::free_port();
    let broker = common::mosquitto::Mosquitto::start(&binary, port);
    let persistent = |id: &str| {
        let mut o = MqttOptions::new("127.0.0.1", port, id);
        o.clean_session = false;
        MqttClient::connect(&o).unwrap()
    };
    // The gateway's first life: a session for "gone", subscribed at the broker.
    let mqtt = persistent("gw-persistent");
    let gone = OtaSession::attach(&mqtt, "pk", "gone", OtaConfig::default()).unwrap();
    let topic = gone.downstream_topic().to_string();
    mqtt.yield_for(Duration::from_millis(300)).unwrap();
    mqtt.disconnect(Duration::from_secs(2));
    drop(gone);
    drop(mqtt);
    // The platform publishes while the gateway is away; the broker queues it.
    let cloud =
        MqttClient::connect(&MqttOptions::new("127.0.0.1", port, "gw-persistent-cloud")).unwrap();
    let server = FirmwareServer::start(image(8 * 1024, 14)).unwrap();
    let fw = Firmware::new("2.0.0", server.url(), server.image());
    cloud
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            notice(Protocol::Aliyun, &fw).as_bytes(),
        )
        .unwrap();
    cloud.yield_for(Duration::from_millis(300)).unwrap();
    // Its second life, without "gone" (removed from the gateway) but with "kept".
    let mqtt = persistent("gw-persistent");
    let mut devices = vec![Device::attach(&mqtt, Protocol::Aliyun, "kept", false)];
    common::wait::until("the queued message", LIMIT, || {
        mqtt.yield_for(Duration::from_millis(20)).unwrap();
        !lines_with(&format!("message on {topic} matches no subscription")).is_empty()
    });
    assert_eq!(
        lines_with(&format!("message on {topic} matches no subscription")).len(),
        1
    );
    cloud
        .publish(
            devices[0].session().downstream_topic(),
            QoS::AtLeastOnce,
            false,
            notice(Protocol::Aliyun, &fw).as_bytes(),
        )
        .unwrap();
    cloud.yield_for(Duration::from_millis(50)).unwrap();
    run(&mqtt, &mut devices, &[0], |_| {});
    assert_eq!(devices[0].valid, Some(true));
    broker.stop();
}

/// A device streaming another's kept image gets a different upgrade of its own: its stream
/// ends (superseded, as any download), the new image comes from the network, and the holder
/// is no longer held back by that reader.
#[test]
fn a_reader_superseded_mid_stream_releases_the_kept_image() {
    let bench = Bench::new("gw-superseded-reader");
    let img = image(64 * 1024, 15);
    let other = image(16 * 1024, 16);
    let fw = bench.serve("shared-sup.bin", &img, "2.0.0");
    let fw_other = bench.serve("other-sup.bin", &other, "2.1.0");
    let mut devices = vec![
        Device::attach(&bench.mqtt, Protocol::Ucloud, "holder-sup", true),
        Device::attach(&bench.mqtt, Protocol::Ucloud, "reader-sup", true),
    ];
    bench.announce(
        &devices,
        &[(0, Protocol::Ucloud, &fw), (1, Protocol::Ucloud, &fw)],
    );
    let deadline = Instant::now() + LIMIT;
    let mut starts = 0;
    while !(devices[1].from_local && lock(&devices[1].stored).len() >= 4096) {
        assert!(Instant::now() < deadline);
        round(&bench.mqtt, &mut devices, &[0, 1], &mut starts);
    }
    let reader = devices[1].session();
    let message = notice(Protocol::Ucloud, &fw_other);
    bench.send(reader, &message);
    common::wait::until("the reader's stream ends", LIMIT, || {
        bench.mqtt.yield_for(Duration::from_millis(5)).unwrap();
        reader.is_fetch_finished()
    });
    assert_eq!(reader.check_firmware(), Ok(false));
    // The reader's new upgrade downloads from the network, from byte 0.
    lock(&devices[1].stored).clear();
    assert!(reader.is_fetching());
    assert!(!reader.from_local_image());
    devices[1].started = None;
    devices[1].valid = None;
    devices[1].from_local = false;
    run(&bench.mqtt, &mut devices, &[0, 1], |_| {});
    assert!(*lock(&devices[1].stored) == other);
    assert!(!devices[1].from_local);
    // Nobody reads the holder's image now: its next upgrade starts at once.
    let holder = devices[0].session();
    // It runs 2.0.0 now: the task upgrades from that.
    let message = ota_cloud::ucloud::notify_message(&fw_other, "2.0.0", None, "task-2");
    bench.send(holder, &message);
    common::wait::until("the holder's next upgrade starts", LIMIT, || {
        bench.mqtt.yield_for(Duration::from_millis(5)).unwrap();
        holder.is_fetching()
    });
    assert_eq!(holder.waiting(), Waiting::No);
}
