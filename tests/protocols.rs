//! Full upgrades through the Rust API for every protocol: the simulator's embedded MQTT broker
//! (`tools/ota-cloud/src/broker.rs`), the `ota-cloud` simulator playing the platform and checking
//! every message the device sends (the shapes: `docs/protocols.md`), firmware over real HTTP on
//! 127.0.0.1.

use std::time::{Duration, Instant};

use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};
use ota_cloud::broker::EmbeddedBroker;
use ota_cloud::cloud::{Cloud, CloudOptions, Firmware, Success};
use ota_cloud::http::FirmwareServer;
use ota_cloud::sagoo::SignMethod;

fn connect(port: u16, client_id: &str) -> MqttClient {
    MqttClient::connect(&MqttOptions::new("127.0.0.1", port, client_id)).expect("broker reachable")
}

/// Plays the device until the download ends; returns the bytes it wrote.
fn download(mqtt: &MqttClient, session: &OtaSession, buf_len: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut image = Vec::new();
    let mut buf = vec![0u8; buf_len];
    let mut last = 0;
    while !session.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not finish");
        mqtt.yield_for(Duration::from_millis(if session.is_fetching() {
            0
        } else {
            50
        }))
        .unwrap();
        if session.is_fetching() {
            let n = session
                .fetch_yield(&mut buf, Duration::from_secs(1))
                .unwrap();
            image.extend_from_slice(&buf[..n]);
            let percent = (session.fetched_size() * 100 / session.file_size()) as i32;
            if percent > last {
                session.report_progress(percent, None).unwrap();
                last = percent;
            }
        }
    }
    image
}

struct Case {
    protocol: Protocol,
    size: usize,
    buf_len: usize,
    device: &'static str,
    module: Option<&'static str>,
    sign_method: SignMethod,
}

impl Case {
    fn new(protocol: Protocol, device: &'static str) -> Case {
        Case {
            protocol,
            size: 1_000_000,
            buf_len: 5000,
            device,
            module: None,
            sign_method: SignMethod::Md5,
        }
    }
}

fn cloud_protocol(p: Protocol) -> ota_cloud::cloud::Protocol {
    p.name().parse().unwrap()
}

fn full_upgrade(case: Case) {
    let Case {
        protocol,
        size,
        buf_len,
        device,
        module,
        sign_method,
    } = case;
    let broker = EmbeddedBroker::start().unwrap();
    let image = ota_cloud::generate_firmware(size);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let firmware = Firmware::new("2.0.0", server.url(), &image);
    let mut cloud = Cloud::connect(
        cloud_protocol(protocol),
        "127.0.0.1",
        broker.port(),
        "pk1",
        device,
    )
    .unwrap();
    cloud.set_quiet(true);
    cloud
        .set_options(CloudOptions {
            module: module.map(str::to_string),
            sign_method,
            ..CloudOptions::default()
        })
        .unwrap();
    let cloud_thread = std::thread::spawn(move || cloud.run(&firmware, Duration::from_secs(60)));

    let config = OtaConfig::for_protocol(protocol);
    let mqtt = connect(broker.port(), device);
    let session = OtaSession::attach(&mqtt, "pk1", device, config.clone()).unwrap();
    match module {
        Some(m) => session.report_module_version(m, "1.0.0").unwrap(),
        None => session.report_version("1.0.0").unwrap(),
    }
    let got = download(&mqtt, &session, buf_len);
    assert_eq!(got.len(), image.len());
    assert!(
        got == image,
        "downloaded bytes differ from the served image"
    );
    assert!(session.check_firmware().unwrap());
    assert_eq!(
        session.with_notice(|n| n.version.as_str().to_string()),
        "2.0.0"
    );
    assert_eq!(
        session.with_notice(|n| n.module_name().to_string()),
        module.unwrap_or("default")
    );
    session.report_upgrade_begin().unwrap();
    session.report_upgrade_success("2.0.0").unwrap();

    // "Reboot": a new session reports the version now running.
    session.detach(&mqtt).unwrap();
    drop(session);
    let session = OtaSession::attach(&mqtt, "pk1", device, config).unwrap();
    match module {
        Some(m) => session.report_module_version(m, "2.0.0").unwrap(),
        None => session.report_version("2.0.0").unwrap(),
    }
    let summary = loop {
        mqtt.yield_for(Duration::from_millis(50)).unwrap();
        if cloud_thread.is_finished() {
            break cloud_thread.join().unwrap();
        }
    };
    assert!(
        matches!(summary.outcome, Ok(Success::Upgraded)),
        "{protocol:?} cloud outcome: {:?}",
        summary.outcome
    );
    if protocol != Protocol::Ucloud {
        assert_eq!(
            summary.progress.last(),
            Some(&100),
            "{:?}",
            summary.progress
        );
    }
}

#[test]
fn aliyun_upgrade_with_sample_sized_buffer() {
    full_upgrade(Case::new(Protocol::Aliyun, "dev-5000"));
}

#[test]
fn aliyun_upgrade_with_64k_buffer_and_odd_size() {
    full_upgrade(Case {
        size: 3_000_001,
        buf_len: 64 * 1024,
        ..Case::new(Protocol::Aliyun, "dev-64k")
    });
}

#[test]
fn sagoo_upgrade() {
    full_upgrade(Case::new(Protocol::Sagoo, "dev-sagoo"));
}

#[test]
fn sagoo_module_upgrade_with_sha256() {
    full_upgrade(Case {
        module: Some("MCU"),
        sign_method: SignMethod::Sha256,
        ..Case::new(Protocol::Sagoo, "dev-sagoo-mcu")
    });
}

#[test]
fn tencent_upgrade() {
    full_upgrade(Case::new(Protocol::Tencent, "dev-tencent"));
}

#[test]
fn ucloud_upgrade() {
    full_upgrade(Case::new(Protocol::Ucloud, "dev-ucloud"));
}

#[test]
fn ucloud_module_upgrade() {
    full_upgrade(Case {
        module: Some("module_a"),
        ..Case::new(Protocol::Ucloud, "dev-ucloud-mod")
    });
}

#[test]
fn repeated_upgrade_message_keeps_the_download_going() {
    let broker = EmbeddedBroker::start().unwrap();
    let image = ota_cloud::generate_firmware(200_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let md5 = ota_cloud::cloud::md5_hex(&image);
    let msg = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{}","md5":"{md5}"}},"id":1,"message":"success"}}"#,
        image.len(),
        server.url()
    );
    let mqtt = connect(broker.port(), "dev-repeat");
    let session = OtaSession::attach(&mqtt, "pk1", "dev-repeat", OtaConfig::default()).unwrap();
    let topic = session.downstream_topic().to_string();
    session.handle_message(&topic, msg.as_bytes()).unwrap();
    let mut buf = vec![0u8; 50_000];
    let first = session
        .fetch_yield(&mut buf, Duration::from_secs(2))
        .unwrap();
    assert!(first > 0);
    session.handle_message(&topic, msg.as_bytes()).unwrap();
    assert!(session.is_fetching());
    assert_eq!(session.fetched_size(), first as u64, "offset kept");
    let mut got = buf[..first].to_vec();
    while !session.is_fetch_finished() {
        let n = session
            .fetch_yield(&mut buf, Duration::from_secs(2))
            .unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == image);
    assert!(session.check_firmware().unwrap());
}

/// A yield that dispatches an upgrade message returns right after it (the firmware gets to
/// FetchYield at once); other messages, and a repeat of the upgrade already being fetched, let
/// the yield run its whole time.
#[test]
fn yield_returns_when_an_upgrade_starts() {
    let broker = EmbeddedBroker::start().unwrap();
    let image = ota_cloud::generate_firmware(10_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let md5 = ota_cloud::cloud::md5_hex(&image);
    let msg = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{}","md5":"{md5}"}},"id":1,"message":"success"}}"#,
        image.len(),
        server.url()
    );
    let mqtt = connect(broker.port(), "dev-early");
    let session = OtaSession::attach(&mqtt, "pk1", "dev-early", OtaConfig::default()).unwrap();
    let topic = session.downstream_topic().to_string();
    let cloud = connect(broker.port(), "cloud-early");
    // Let the subscription reach the broker (nothing to dispatch yet).
    mqtt.yield_for(Duration::from_millis(300)).unwrap();
    let publish = |payload: &str| {
        cloud
            .publish(
                &topic,
                ota::mqtt::QoS::AtLeastOnce,
                false,
                payload.as_bytes(),
            )
            .unwrap();
        cloud.yield_for(Duration::from_millis(20)).unwrap();
    };

    // Not an upgrade (ignored by the decoder): the yield runs to its end.
    publish(r#"{"code":"1000","data":{},"id":2,"message":"success"}"#);
    let t = Instant::now();
    mqtt.yield_for(Duration::from_millis(400)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert!(!session.is_fetching());

    // The upgrade: the yield returns long before its 10 s.
    publish(&msg);
    let t = Instant::now();
    mqtt.yield_for(Duration::from_secs(10)).unwrap();
    assert!(session.is_fetching(), "the upgrade was dispatched");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "yield went on for {:?} after the upgrade",
        t.elapsed()
    );

    // The same upgrade again while fetching: nothing new starts, the yield runs its time.
    publish(&msg);
    let t = Instant::now();
    mqtt.yield_for(Duration::from_millis(400)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert!(session.is_fetching());
}
