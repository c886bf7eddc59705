//! Upgrades downloaded over MQTT (`dProtocol` `mqtt`, issue 16 item 2) through the whole
//! session: the simulator's platform ([`MqttDownloadServer`]) answers block requests on the
//! embedded broker, and the device is firmware written like the iotkit sample (appends what
//! FetchYield returns, never rewinds, leaves only on IsFetchFinish).

mod common;

use std::time::{Duration, Instant};

use ota::mqtt::QoS;
use ota::source::MqttDownloadConfig;
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::{CloudOptions, Protocol as CloudProtocol};
use ota_cloud::{EmbeddedBroker, MqttDownloadServer, MqttFaults, Package};

const PK: &str = "a1pk";
const DN: &str = "dev1";
const LIMIT: Duration = Duration::from_secs(60);

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new("127.0.0.1", port, id);
    o.request_timeout = Duration::from_secs(1);
    o
}

/// Yields `client` until `done`, failing after [`LIMIT`].
fn yield_until(client: &MqttClient, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        client.yield_for(Duration::from_millis(20)).unwrap();
    }
}

/// The iotkit sample's loop: what FetchYield returns is appended; the loop ends only on
/// IsFetchFinish.
fn sample_fetch(session: &OtaSession) -> Vec<u8> {
    let deadline = Instant::now() + LIMIT;
    let mut image = Vec::new();
    let mut buf = vec![0u8; 5000];
    while !session.is_fetch_finished() {
        assert!(
            Instant::now() < deadline,
            "download stuck at {}",
            image.len()
        );
        if let Ok(n) = session.fetch_yield(&mut buf, Duration::from_secs(1)) {
            image.extend_from_slice(&buf[..n]);
        }
    }
    image
}

#[test]
fn a_single_image_comes_over_mqtt_byte_exact_through_faults() {
    let broker = EmbeddedBroker::start().unwrap();
    let image = common::firmware::image(40_000, 9).to_vec();
    let package = Package::single_over_mqtt("2.0.0", "app.bin", image.clone(), 77);
    let faults = MqttFaults {
        cuts: vec![12_000],
        flip_at: Some(25_000),
        ..MqttFaults::default()
    };
    let server =
        MqttDownloadServer::start(broker.host(), broker.port(), PK, DN, &package, 5120, faults)
            .unwrap();
    let device = MqttClient::connect(&options(broker.port(), "device")).unwrap();
    let mut config = OtaConfig::for_protocol(Protocol::Aliyun);
    config.mqtt_download = Some(MqttDownloadConfig {
        block_timeout: Duration::from_millis(500),
        ..MqttDownloadConfig::default()
    });
    let session = OtaSession::attach(&device, PK, DN, config).unwrap();
    let cloud = MqttClient::connect(&options(broker.port(), "cloud")).unwrap();
    let message = package
        .upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())
        .unwrap();
    yield_until(&device, "the upgrade message", || {
        cloud
            .publish(
                session.downstream_topic(),
                QoS::AtLeastOnce,
                false,
                message.as_bytes(),
            )
            .unwrap();
        cloud.yield_for(Duration::ZERO).unwrap();
        device.yield_for(Duration::from_millis(100)).unwrap();
        session.is_fetching()
    });
    let got = sample_fetch(&session);
    assert!(
        got == image,
        "{} bytes, the image has {}",
        got.len(),
        image.len()
    );
    assert!(session.check_firmware().unwrap());
    let stats = server.stats();
    assert!(stats.repeated_requests >= 2, "{stats:?}");
}
