//! Cloud (Aliyun) against a scripted fake device, through the embedded broker.

mod common;

use std::thread;
use std::time::Duration;

use common::{broker_port, FakeDevice};
use md5::{Digest, Md5};
use ota_cloud::{
    generate_firmware, Cloud, ExpireRule, Failure, Faults, Firmware, FirmwareServer, Success,
    Summary,
};

const PK: &str = "a1TestPK";

/// Starts the cloud for device `dn` in a thread (the test thread plays the device).
fn start_cloud(
    dn: &str,
    firmware: &Firmware,
    timeout: Duration,
    max: u32,
) -> thread::JoinHandle<Summary> {
    let mut cloud = Cloud::connect_aliyun("127.0.0.1", broker_port(), PK, dn).unwrap();
    cloud.set_max_upgrade_messages(max);
    let firmware = firmware.clone();
    thread::spawn(move || cloud.run(&firmware, timeout))
}

fn firmware_for_test() -> (FirmwareServer, Firmware, Vec<u8>) {
    let image = generate_firmware(50_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let fw = Firmware::new("2.0.0", server.url(), &image);
    (server, fw, image)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn full_upgrade_succeeds() {
    let dn = "dev-ok";
    let (server, fw, image) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);

    device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let msg = device.next_upgrade();
    assert_eq!(msg["code"], "1000");
    assert_eq!(msg["message"], "success");
    assert!(msg["id"].is_u64());
    let data = &msg["data"];
    assert_eq!(data["size"], image.len() as u64);
    assert_eq!(data["version"], "2.0.0");
    assert_eq!(data["url"], server.url());
    let md5 = data["md5"].as_str().unwrap();
    assert_eq!(md5, hex(&Md5::digest(&image)));
    assert!(md5.len() == 32 && md5.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(data.as_object().unwrap().len(), 4);
    // The advertised URL really serves the advertised bytes.
    assert_eq!(
        hex(&Md5::digest(common::http_get(
            data["url"].as_str().unwrap()
        ))),
        md5
    );

    // Asking again gets the same offer again.
    device.send("request", r#"{"id":"2","params":{"version":"1.0.0"}}"#);
    assert_eq!(device.next_upgrade()["data"], *data);

    for step in ["1", "50", "100"] {
        device.send(
            "progress",
            &format!(r#"{{"id":3,"params":{{"step":"{step}","desc":""}}}}"#),
        );
    }
    device.send(
        "inform",
        r#"{"id":4,"params":{"version":"2.0.0","module":"default"}}"#,
    );

    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.progress, [1, 50, 100]);
    assert_eq!(summary.versions, ["1.0.0", "2.0.0"]);
    assert_eq!(summary.upgrade_messages_sent, 2);
    assert_eq!(summary.requests_received, 1);
    assert!(summary.download_time.is_some());
}

#[test]
fn step_as_a_number_is_a_violation() {
    let dn = "dev-numstep";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    device.next_upgrade();
    device.send("progress", r#"{"id":2,"params":{"step":37}}"#);
    let summary = cloud.join().unwrap();
    match summary.outcome {
        Err(Failure::Violation {
            topic,
            reason,
            payload,
        }) => {
            assert_eq!(topic, format!("/ota/device/progress/{PK}/{dn}"));
            assert!(reason.contains("step"), "{reason}");
            assert!(payload.contains("37"));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn malformed_inform_is_a_violation() {
    let dn = "dev-badinform";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    device.send("inform", r#"{"id":1,"version":"1.0.0"}"#);
    let summary = cloud.join().unwrap();
    assert!(
        matches!(summary.outcome, Err(Failure::Violation { .. })),
        "{:?}",
        summary.outcome
    );
    assert_eq!(summary.upgrade_messages_sent, 0);
}

#[test]
fn download_failure_step_fails_the_run() {
    let dn = "dev-fail";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    device.next_upgrade();
    device.send("progress", r#"{"id":2,"params":{"step":"10"}}"#);
    device.send(
        "progress",
        r#"{"id":3,"params":{"step":"-2","desc":"connection reset"}}"#,
    );
    let summary = cloud.join().unwrap();
    assert_eq!(
        summary.outcome,
        Err(Failure::DeviceFailed {
            step: -2,
            desc: Some("connection reset".into())
        })
    );
    assert_eq!(summary.progress, [10, -2]);
}

#[test]
fn device_already_current_needs_no_upgrade() {
    let dn = "dev-current";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    device.send("inform", r#"{"id":1,"params":{"version":"2.0.0"}}"#);
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::AlreadyCurrent));
    assert_eq!(summary.upgrade_messages_sent, 0);
}

#[test]
fn upgrade_messages_are_bounded() {
    let dn = "dev-loop";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(20), 2);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    for _ in 0..2 {
        device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
        device.next_upgrade();
    }
    device.send("request", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Err(Failure::TooManyUpgradeMessages(2)));
}

#[test]
fn silence_times_out() {
    let (_server, fw, _) = firmware_for_test();
    let summary = start_cloud("dev-silent", &fw, Duration::from_millis(300), 5)
        .join()
        .unwrap();
    match summary.outcome {
        Err(Failure::Timeout { waiting_for }) => {
            assert!(waiting_for.contains("version"), "{waiting_for}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn hundred_percent_without_new_version_is_not_success() {
    let dn = "dev-noreboot";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(dn, &fw, Duration::from_secs(2), 5);
    let device = FakeDevice::connect(broker_port(), PK, dn);
    device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    device.next_upgrade();
    device.send("progress", r#"{"id":2,"params":{"step":"100"}}"#);
    let summary = cloud.join().unwrap();
    match summary.outcome {
        Err(Failure::Timeout { waiting_for }) => {
            assert!(waiting_for.contains("2.0.0"), "{waiting_for}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn connecting_to_no_broker_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = std::time::Instant::now();
    assert!(Cloud::connect_aliyun("127.0.0.1", port, PK, "x").is_err());
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_expired_url_is_renewed_when_the_device_asks_again_within_the_limit() {
    let dn = "dev-renew";
    let image = generate_firmware(20_000);
    let server = FirmwareServer::start_with(
        image.clone(),
        Faults {
            expire_after: Some(ExpireRule::Requests(0)),
            ..Faults::default()
        },
    )
    .unwrap();
    let fw = Firmware::new("2.0.0", server.url(), &image);
    let mut cloud = Cloud::connect_aliyun("127.0.0.1", broker_port(), PK, dn).unwrap();
    let renewer = server.url_renewer();
    cloud
        .set_max_upgrade_messages(3)
        .set_url_renewer(move || renewer.renew());
    let cloud = thread::spawn(move || cloud.run(&fw, Duration::from_secs(20)));
    let device = FakeDevice::connect(broker_port(), PK, dn);

    device.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let first = device.next_upgrade()["data"]["url"].clone();
    assert_eq!(first, server.url().as_str());
    let mut seen = vec![first];
    for token in 1..=2 {
        device.send("request", r#"{"id":2,"params":{"version":"1.0.0"}}"#);
        let data = device.next_upgrade()["data"].clone();
        assert_eq!(data["md5"], hex(&Md5::digest(&image)));
        assert!(
            data["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("?token={token}")),
            "{data}"
        );
        assert!(!seen.contains(&data["url"]));
        seen.push(data["url"].clone());
    }
    // The limit still applies.
    device.send("request", r#"{"id":3,"params":{"version":"1.0.0"}}"#);
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Err(Failure::TooManyUpgradeMessages(3)));
    assert_eq!(summary.urls_renewed, 2);
}
