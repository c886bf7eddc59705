//! The cloud's own announcements tied to the download (`--renotify-at`, `--supersede-at`):
//! scripted devices download over real HTTP, the firmware server counts the bytes and the
//! cloud publishes through the embedded broker.

mod common;

use std::thread::JoinHandle;
use std::time::Duration;

use common::{broker_port, start_cloud_with, violation, FakeDevice, HttpConn};
use ota_cloud::milestones::{next_image, NEXT_FILE_NAME};
use ota_cloud::{
    generate_firmware, md5_hex, Cloud, Firmware, FirmwareServer, Milestones, NextUpgrade, Protocol,
    Success, Summary, Supersede, TargetOutcome,
};
use serde_json::Value;

const PK: &str = "msPK";
const SIZE: usize = 50_000;
const T: Duration = Duration::from_secs(20);

struct Setup {
    server: FirmwareServer,
    image: Vec<u8>,
    next: Option<NextUpgrade>,
    cloud: JoinHandle<Summary>,
}

/// A server with a 50 000-byte image, and a cloud for `dn` running `milestones` on it.
fn setup(protocol: Protocol, dn: &str, milestones: Milestones) -> Setup {
    setup_with_grace(protocol, dn, milestones, Duration::from_millis(300))
}

fn setup_with_grace(
    protocol: Protocol,
    dn: &str,
    milestones: Milestones,
    grace: Duration,
) -> Setup {
    let image = generate_firmware(SIZE);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let fw = Firmware::new("2.0.0", server.url(), &image);
    let mut next = None;
    let cloud = start_cloud_with(protocol, PK, dn, &fw, T, |c: &mut Cloud| {
        c.set_grace(grace);
        next = milestones.install(c, &server, &fw).unwrap();
    });
    Setup {
        server,
        image,
        next,
        cloud,
    }
}

fn supersede_at(percent: u8) -> Milestones {
    Milestones {
        supersede: Some(Supersede {
            percent,
            version: None,
        }),
        renotify_at: None,
    }
}

/// GETs `range` of the first image; returns the body.
fn get(server: &FirmwareServer, range: &str) -> Vec<u8> {
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", range)]);
    assert_eq!(r.status, 206);
    r.body
}

fn step(dev: &FakeDevice, step: &str, desc: &str) {
    dev.send(
        "progress",
        &format!(r#"{{"id":2,"params":{{"step":"{step}","desc":"{desc}"}}}}"#),
    );
}

#[test]
fn renotify_at_publishes_the_same_upgrade_again_once_that_share_is_sent() {
    let dn = "ms-renotify";
    let s = setup(
        Protocol::Aliyun,
        dn,
        Milestones {
            supersede: None,
            renotify_at: Some(40),
        },
    );
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let first = dev.next_upgrade();
    assert_eq!(get(&s.server, "bytes=0-14999"), &s.image[..15_000]);
    assert!(
        dev.nothing_within(Duration::from_millis(300)),
        "not at 30 %"
    );
    assert_eq!(get(&s.server, "bytes=15000-"), &s.image[15_000..]);
    let again = dev.next_upgrade();
    assert_eq!(
        again["data"], first["data"],
        "same URL, version, digest, size"
    );
    assert!(dev.nothing_within(Duration::from_millis(300)), "once");
    step(&dev, "100", "");
    dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
    let summary = s.cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.upgrade_messages_sent, 2);
    assert_eq!(summary.upgrades.len(), 1);
    assert_eq!(summary.target().messages_sent, 2);
}

/// Takes the first image past 50 % (in two responses; nothing before) and returns the
/// superseding upgrade message's `data`, checked against `next`.
fn cross_half(s: &Setup, dev: &FakeDevice, upgrade: impl Fn(&FakeDevice) -> Value) -> Value {
    assert_eq!(get(&s.server, "bytes=0-19999"), &s.image[..20_000]);
    assert!(
        dev.nothing_within(Duration::from_millis(300)),
        "not at 40 %"
    );
    get(&s.server, "bytes=20000-");
    let msg = upgrade(dev);
    let next = s.next.as_ref().unwrap();
    assert_eq!(*next.image, next_image(&s.image)[..]);
    assert_ne!(*next.image, s.image[..]);
    assert_eq!(next.firmware.version, "2.0.0.1");
    assert_eq!(next.firmware.md5, md5_hex(&next.image));
    assert_ne!(next.firmware.md5, md5_hex(&s.image));
    assert_eq!(
        next.firmware.url,
        format!("http://127.0.0.1:{}/{NEXT_FILE_NAME}", s.server.port())
    );
    assert_eq!(common::http_get(&next.firmware.url), *next.image);
    msg
}

#[test]
fn supersede_at_publishes_a_different_upgrade_that_becomes_the_target() {
    let dn = "ms-supersede";
    let s = setup(Protocol::Aliyun, dn, supersede_at(50));
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let first = dev.next_upgrade()["data"].clone();
    assert_eq!(first["version"], "2.0.0");
    let data = cross_half(&s, &dev, |d| d.next_upgrade())["data"].clone();
    let next = &s.next.as_ref().unwrap().firmware;
    assert_eq!(data["version"], "2.0.0.1");
    assert_eq!(data["url"], next.url.as_str());
    assert_eq!(data["md5"], next.md5.as_str());
    assert_eq!(data["size"], SIZE as u64);

    // The device gives the old upgrade up (once) and installs the new one.
    step(&dev, "51", "");
    step(&dev, "-1", "superseded by 2.0.0.1");
    step(&dev, "30", "");
    step(&dev, "100", "");
    dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0.1"}}"#);
    let summary = s.cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(
        summary.target_outcome,
        TargetOutcome::Success {
            version: "2.0.0.1".into()
        }
    );
    assert_eq!(summary.outcome_line(), "outcome: success 2.0.0.1");
    let [old, new] = &summary.upgrades[..] else {
        panic!("{:?}", summary.upgrades)
    };
    assert!(old.superseded && !new.superseded);
    assert_eq!(old.failure_reports, 1);
    assert_eq!(new.failure_reports, 0);
    assert_eq!((old.messages_sent, new.messages_sent), (1, 1));
}

#[test]
fn after_a_supersede_the_new_upgrade_is_checked_on_its_own() {
    let dn = "ms-supersede-then-fail";
    let s = setup(Protocol::Aliyun, dn, supersede_at(50));
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    dev.next_upgrade();
    cross_half(&s, &dev, |d| d.next_upgrade());
    step(&dev, "-1", "superseded");
    step(&dev, "-2", "download failed: HTTP 404");
    step(&dev, "20", "");
    let summary = s.cloud.join().unwrap();
    let (_, reason) = violation(&summary);
    assert!(reason.contains("2.0.0.1"), "{reason}");
    assert_eq!(
        summary.outcome_line(),
        "outcome: failed 2.0.0.1 reports=1 desc=download failed: HTTP 404"
    );
}

#[test]
fn no_supersede_once_the_upgrade_failed() {
    let dn = "ms-supersede-after-fail";
    let s = setup_with_grace(
        Protocol::Aliyun,
        dn,
        supersede_at(50),
        Duration::from_secs(3),
    );
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    dev.next_upgrade();
    step(&dev, "-3", "md5 mismatch");
    // Give the cloud the report, then cross 50 % during the grace period.
    std::thread::sleep(Duration::from_millis(500));
    get(&s.server, "bytes=0-");
    assert!(dev.nothing_within(Duration::from_millis(100)));
    let summary = s.cloud.join().unwrap();
    assert_eq!(summary.upgrades.len(), 1);
    assert_eq!(
        summary.outcome_line(),
        "outcome: failed 2.0.0 reports=1 desc=md5 mismatch"
    );
}

#[test]
fn tencent_supersede_is_told_apart_by_version() {
    let dn = "ms-tc-supersede";
    let s = setup(Protocol::Tencent, dn, supersede_at(50));
    let dev = FakeDevice::connect_on(broker_port(), PK, dn, &format!("$ota/update/{PK}/{dn}"));
    let report = format!("$ota/report/{PK}/{dn}");
    let progress = |version: &str, progress: &str| {
        dev.publish(
            &report,
            &format!(
                r#"{{"type":"report_progress","report":{{"progress":{progress},"version":"{version}"}}}}"#
            ),
        )
    };
    dev.publish(
        &report,
        r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
    );
    assert_eq!(dev.next_message().1["type"], "report_version_rsp");
    assert_eq!(dev.next_message().1["version"], "2.0.0");
    let update = cross_half(&s, &dev, |d| d.next_message().1);
    assert_eq!(update["type"], "update_firmware");
    assert_eq!(update["version"], "2.0.0.1");
    assert_eq!(
        update["md5sum"],
        s.next.as_ref().unwrap().firmware.md5.as_str()
    );
    let ok = |state: &str| format!(r#"{{"state":"{state}","result_code":"0","result_msg":""}}"#);
    progress(
        "2.0.0",
        r#"{"state":"fail","result_code":"-1","result_msg":"superseded by 2.0.0.1"}"#,
    );
    progress(
        "2.0.0.1",
        r#"{"state":"downloading","percent":"100","result_code":"0","result_msg":""}"#,
    );
    progress("2.0.0.1", &ok("burning"));
    progress("2.0.0.1", &ok("done"));
    let summary = s.cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.outcome_line(), "outcome: success 2.0.0.1");
    assert_eq!(summary.upgrades[0].failure_reports, 1);
}

#[test]
fn ucloud_supersede_is_a_new_task() {
    let dn = "ms-uc-supersede";
    let s = setup(Protocol::Ucloud, dn, supersede_at(50));
    let dev = FakeDevice::connect_on(
        broker_port(),
        PK,
        dn,
        &format!("/$system/{PK}/{dn}/ota/downstream"),
    );
    let up = format!("/$system/{PK}/{dn}/ota/upstream");
    let task = |method: &str, id: &Value| {
        dev.publish(
            &up,
            &format!(r#"{{"Method":"{method}","Payload":{{"TaskID":{id}}}}}"#),
        )
    };
    dev.publish(&up, r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#);
    let first = dev.next_message().1["Payload"].clone();
    task("notify", &first["TaskID"]);
    task("upgrading", &first["TaskID"]);
    let second = cross_half(&s, &dev, |d| d.next_message().1)["Payload"].clone();
    assert_ne!(second["TaskID"], first["TaskID"]);
    assert_eq!(second["Version"], "2.0.0.1");
    assert_eq!(second["CurrentVersion"], "1.0.0");
    dev.publish(
        &up,
        &format!(
            r#"{{"Method":"fail","Payload":{{"TaskID":{},"ErrMsg":"superseded"}}}}"#,
            first["TaskID"]
        ),
    );
    for method in ["notify", "upgrading", "success"] {
        task(method, &second["TaskID"]);
    }
    let summary = s.cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.outcome_line(), "outcome: success 2.0.0.1");
    assert_eq!(summary.task_id.as_deref(), second["TaskID"].as_str());
}
