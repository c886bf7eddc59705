//! Cloud playing SagooIOT against a scripted fake device, through the embedded broker.

mod common;

use std::time::Duration;

use common::{broker_port, firmware_for_test, start_cloud, violation, FakeDevice};
use md5::{Digest, Md5};
use ota_cloud::{CloudOptions, DeviceMsg, Failure, Protocol, SignMethod, Success};
use serde_json::{json, Value};
use sha2::Sha256;

const PK: &str = "sagooPK";
const T: Duration = Duration::from_secs(20);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn device(dn: &str) -> FakeDevice {
    FakeDevice::connect(broker_port(), PK, dn)
}

fn progress(step: &str, extra: &str) -> String {
    format!(r#"{{"id":"p{step}","params":{{"step":"{step}"{extra}}}}}"#)
}

#[test]
fn full_upgrade_with_md5_and_default_module() {
    let dn = "sg-ok";
    let (server, fw, image) = firmware_for_test();
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, CloudOptions::default(), T);
    let dev = device(dn);

    dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
    let msg = dev.next_upgrade();
    assert_eq!(msg["code"], "200");
    assert_eq!(msg["message"], "success");
    assert!(msg["id"].is_u64());
    assert_eq!(
        msg["data"],
        json!({
            "size": image.len(),
            "version": "2.0.0",
            "url": server.url(),
            "sign": hex(&Md5::digest(&image)),
            "signMethod": "MD5",
            "extData": {"key1": "value1", "strategy": "batch-7",
                        "_package_udi": "{\"ota_notice\":\"demo\"}"},
        })
    );
    assert_eq!(msg.as_object().unwrap().len(), 4);

    for step in ["1", "50", "100"] {
        dev.send(
            "progress",
            &progress(step, r#","desc":"downloading","strategy":"batch-7""#),
        );
    }
    dev.send(
        "inform",
        r#"{"id":"5","params":{"version":"2.0.0","module":"default"}}"#,
    );
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.progress, [1, 50, 100]);
    assert_eq!(summary.versions, ["1.0.0", "2.0.0"]);
    assert_eq!(
        summary.messages[1],
        DeviceMsg::Progress {
            step: 1,
            desc: Some("downloading".into()),
            module: None,
            strategy: Some("batch-7".into()),
        }
    );
}

#[test]
fn full_upgrade_with_sha256_and_a_module() {
    let dn = "sg-mcu";
    let (_server, fw, image) = firmware_for_test();
    let options = CloudOptions {
        module: Some("MCU".into()),
        sign_method: SignMethod::Sha256,
        ..CloudOptions::default()
    };
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, options, T);
    let dev = device(dn);

    // The default module's version does not concern an MCU upgrade.
    dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
    assert!(dev.nothing_within(Duration::from_millis(300)));
    dev.send(
        "inform",
        r#"{"id":"2","params":{"version":"1.0.0","module":"MCU"}}"#,
    );
    let data = dev.next_upgrade()["data"].clone();
    assert_eq!(data["sign"], hex(&Sha256::digest(&image)));
    assert_eq!(data["signMethod"], "SHA256");
    assert_eq!(data["module"], "MCU");

    dev.send(
        "progress",
        &progress("100", r#","module":"MCU","strategy":"batch-7""#),
    );
    // Version 2.0.0 of another module is not the upgrade's success.
    dev.send("inform", r#"{"id":"4","params":{"version":"2.0.0"}}"#);
    dev.send(
        "inform",
        r#"{"id":"5","params":{"version":"2.0.0","module":"MCU"}}"#,
    );
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.versions, ["1.0.0", "1.0.0", "2.0.0", "2.0.0"]);
    assert_eq!(summary.upgrade_messages_sent, 1);
}

#[test]
fn without_a_strategy_progress_must_not_invent_one() {
    let dn = "sg-nostrat";
    let (_server, fw, _) = firmware_for_test();
    let options = CloudOptions {
        strategy: None,
        ..CloudOptions::default()
    };
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, options, T);
    let dev = device(dn);
    dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
    let msg = dev.next_upgrade();
    assert!(msg["data"]["extData"].get("strategy").is_none());
    dev.send("progress", &progress("100", ""));
    dev.send("progress", &progress("100", r#","strategy":"batch-7""#));
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("strategy"), "{reason}");
}

#[test]
fn numeric_id_is_a_violation() {
    let dn = "sg-numid";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, CloudOptions::default(), T);
    let dev = device(dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let summary = cloud.join().unwrap();
    let (topic, reason) = violation(&summary);
    assert_eq!(topic, format!("/ota/device/inform/{PK}/{dn}"));
    assert!(reason.contains("id"), "{reason}");
    assert_eq!(summary.upgrade_messages_sent, 0);
}

#[test]
fn strategy_must_be_echoed_exactly() {
    for (dn, extra) in [
        ("sg-strat-missing", r#","desc":"x""#),
        ("sg-strat-wrong", r#","strategy":"batch-8""#),
    ] {
        let (_server, fw, _) = firmware_for_test();
        let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, CloudOptions::default(), T);
        let dev = device(dn);
        dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
        dev.next_upgrade();
        dev.send("progress", &progress("10", r#","strategy":"batch-7""#));
        dev.send("progress", &progress("20", extra));
        let summary = cloud.join().unwrap();
        let (_, reason) = violation(&summary);
        assert!(reason.contains("strategy"), "{dn}: {reason}");
        assert_eq!(summary.progress, [10], "{dn}");
    }
}

#[test]
fn progress_for_another_module_is_a_violation() {
    let dn = "sg-module";
    let (_server, fw, _) = firmware_for_test();
    let options = CloudOptions {
        module: Some("MCU".into()),
        ..CloudOptions::default()
    };
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, options, T);
    let dev = device(dn);
    dev.send(
        "inform",
        r#"{"id":"1","params":{"version":"1.0.0","module":"MCU"}}"#,
    );
    dev.next_upgrade();
    // No module means the default module.
    dev.send("progress", &progress("10", r#","strategy":"batch-7""#));
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("module"), "{reason}");
}

#[test]
fn long_desc_unknown_key_and_request_topic_are_violations() {
    let long = "长".repeat(129);
    let cases = [
        (
            "sg-longdesc",
            "progress",
            progress("-1", &format!(r#","desc":"{long}","strategy":"batch-7""#)),
            "desc",
        ),
        (
            "sg-unknown",
            "progress",
            progress("5", r#","strategy":"batch-7","speed":"fast""#),
            "speed",
        ),
        (
            "sg-request",
            "request",
            r#"{"id":"2","params":{"version":"1.0.0"}}"#.to_string(),
            "topic",
        ),
    ];
    for (dn, kind, payload, word) in cases {
        let (_server, fw, _) = firmware_for_test();
        let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, CloudOptions::default(), T);
        let dev = device(dn);
        dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
        dev.next_upgrade();
        dev.send(kind, &payload);
        let (topic, reason) = violation(&cloud.join().unwrap());
        assert_eq!(topic, format!("/ota/device/{kind}/{PK}/{dn}"));
        assert!(reason.contains(word), "{dn}: {reason}");
    }
}

#[test]
fn failure_step_fails_the_run() {
    let dn = "sg-fail";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud(Protocol::Sagoo, PK, dn, &fw, CloudOptions::default(), T);
    let dev = device(dn);
    dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
    dev.next_upgrade();
    dev.send(
        "progress",
        &progress("-3", r#","desc":"sha256 mismatch","strategy":"batch-7""#),
    );
    let summary = cloud.join().unwrap();
    assert_eq!(
        summary.outcome,
        Err(Failure::DeviceFailed {
            step: -3,
            desc: Some("sha256 mismatch".into())
        })
    );
}

#[test]
fn upgrade_message_is_valid_json_with_the_udi_as_a_string() {
    let dn = "sg-udi";
    let (_server, fw, _) = firmware_for_test();
    let _cloud = start_cloud(
        Protocol::Sagoo,
        PK,
        dn,
        &fw,
        CloudOptions::default(),
        Duration::from_secs(2),
    );
    let dev = device(dn);
    dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
    let msg = dev.next_upgrade();
    let udi: Value =
        serde_json::from_str(msg["data"]["extData"]["_package_udi"].as_str().unwrap()).unwrap();
    assert_eq!(udi, json!({"ota_notice": "demo"}));
}
