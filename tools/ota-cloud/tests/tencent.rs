//! Cloud playing Tencent Cloud IoT against a scripted fake device, through the embedded broker
//! (which, unlike rumqttd, routes `$`-topics).

mod common;

use std::time::Duration;

use common::{broker_port, firmware_for_test, start_cloud, violation, FakeDevice};
use md5::{Digest, Md5};
use ota_cloud::{CloudOptions, DeviceMsg, Failure, Protocol, Success, TencentState};
use serde_json::{json, Value};

const PID: &str = "TCPID01";
const T: Duration = Duration::from_secs(20);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Dev {
    dev: FakeDevice,
    report: String,
    update: String,
}

impl Dev {
    fn connect(dn: &str) -> Dev {
        let update = format!("$ota/update/{PID}/{dn}");
        Dev {
            dev: FakeDevice::connect_on(broker_port(), PID, dn, &update),
            report: format!("$ota/report/{PID}/{dn}"),
            update,
        }
    }

    fn report(&self, payload: &str) {
        self.dev.publish(&self.report, payload);
    }

    fn report_version(&self, version: &str) {
        self.report(&format!(
            r#"{{"type":"report_version","report":{{"version":"{version}"}}}}"#
        ));
    }

    fn progress(&self, progress: &str, version: &str) {
        self.report(&format!(
            r#"{{"type":"report_progress","report":{{"progress":{progress},"version":"{version}"}}}}"#
        ));
    }

    fn downloading(&self, percent: &str) {
        self.progress(
            &format!(
                r#"{{"state":"downloading","percent":"{percent}","result_code":"0","result_msg":""}}"#
            ),
            "2.0.0",
        );
    }

    fn state(&self, state: &str) {
        self.progress(
            &format!(r#"{{"state":"{state}","result_code":"0","result_msg":""}}"#),
            "2.0.0",
        );
    }

    fn next(&self) -> Value {
        let (topic, msg) = self.dev.next_message();
        assert_eq!(topic, self.update);
        msg
    }

    /// The reply to a version report, then (unless current) the upgrade.
    fn expect_reply(&self, version: &str) {
        assert_eq!(
            self.next(),
            json!({"type":"report_version_rsp","result_code":0,"result_msg":"success",
                   "version":version})
        );
    }
}

fn setup(dn: &str) -> (std::thread::JoinHandle<ota_cloud::Summary>, Dev) {
    let (_server, fw, _) = firmware_for_test();
    let c = start_cloud(Protocol::Tencent, PID, dn, &fw, CloudOptions::default(), T);
    (c, Dev::connect(dn))
}

#[test]
fn full_upgrade_succeeds_on_done() {
    let dn = "tc-ok";
    let (server, fw, image) = firmware_for_test();
    let cloud = start_cloud(Protocol::Tencent, PID, dn, &fw, CloudOptions::default(), T);
    let dev = Dev::connect(dn);

    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    let update = dev.next();
    assert_eq!(
        update,
        json!({"file_size": image.len(), "md5sum": hex(&Md5::digest(&image)),
               "type": "update_firmware", "url": server.url(), "version": "2.0.0"})
    );
    assert_eq!(common::http_get(update["url"].as_str().unwrap()), image);

    for percent in ["0", "50", "100"] {
        dev.downloading(percent);
    }
    dev.state("burning");
    dev.state("done");
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.progress, [0, 50, 100]);
    assert_eq!(summary.version_replies_sent, 1);
    assert_eq!(summary.upgrade_messages_sent, 1);
    assert!(summary.download_time.is_some());
    assert_eq!(
        summary.messages.last(),
        Some(&DeviceMsg::TencentProgress {
            version: "2.0.0".into(),
            state: TencentState::Done
        })
    );
}

#[test]
fn interrupted_download_gets_the_update_again() {
    let (cloud, dev) = setup("tc-resume");
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    let first = dev.next();
    dev.downloading("30");
    // Reconnected after an interruption: the old version again, the same update again.
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    assert_eq!(dev.next(), first);
    dev.downloading("100");
    dev.state("burning");
    dev.state("done");
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.version_replies_sent, 2);
    assert_eq!(summary.upgrade_messages_sent, 2);
}

#[test]
fn device_already_current_gets_only_the_reply() {
    let (cloud, dev) = setup("tc-current");
    dev.report_version("2.0.0");
    dev.expect_reply("2.0.0");
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::AlreadyCurrent));
    assert_eq!(summary.upgrade_messages_sent, 0);
    assert!(dev.dev.nothing_within(Duration::from_millis(300)));
}

#[test]
fn percent_as_a_number_is_a_violation() {
    let (cloud, dev) = setup("tc-numpercent");
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    dev.next();
    dev.progress(
        r#"{"state":"downloading","percent":10,"result_code":"0","result_msg":""}"#,
        "2.0.0",
    );
    let (topic, reason) = violation(&cloud.join().unwrap());
    assert_eq!(topic, format!("$ota/report/{PID}/tc-numpercent"));
    assert!(reason.contains("percent"), "{reason}");
}

#[test]
fn unknown_key_is_a_violation() {
    let (cloud, dev) = setup("tc-unknown");
    dev.report(r#"{"type":"report_version","report":{"version":"1.0.0","module":"MCU"}}"#);
    let summary = cloud.join().unwrap();
    let (_, reason) = violation(&summary);
    assert!(reason.contains("module"), "{reason}");
    assert_eq!(summary.version_replies_sent, 0);
}

#[test]
fn aliyun_topic_is_a_violation() {
    let (cloud, dev) = setup("tc-topic");
    dev.dev
        .send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let (topic, reason) = violation(&cloud.join().unwrap());
    assert_eq!(topic, format!("/ota/device/inform/{PID}/tc-topic"));
    assert!(reason.contains("not a tencent"), "{reason}");
}

#[test]
fn progress_for_another_version_or_done_before_burning_are_violations() {
    let (cloud, dev) = setup("tc-version");
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    dev.next();
    dev.progress(
        r#"{"state":"downloading","percent":"10","result_code":"0","result_msg":""}"#,
        "1.0.0",
    );
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("report.version"), "{reason}");

    let (cloud, dev) = setup("tc-early-done");
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    dev.next();
    dev.downloading("100");
    dev.state("done");
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("burning"), "{reason}");
}

#[test]
fn fail_state_fails_the_run_with_code_and_message() {
    let (cloud, dev) = setup("tc-fail");
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    dev.next();
    dev.downloading("100");
    dev.progress(
        r#"{"state":"fail","result_code":"-4","result_msg":"md5 mismatch: got 00ff, want 36eb"}"#,
        "2.0.0",
    );
    let summary = cloud.join().unwrap();
    assert_eq!(
        summary.outcome,
        Err(Failure::DeviceFailed {
            step: -4,
            desc: Some("md5 mismatch: got 00ff, want 36eb".into())
        })
    );
    assert_eq!(summary.progress, [100, -4]);
}

#[test]
fn version_report_without_done_is_not_success() {
    let (_server, fw, _) = firmware_for_test();
    let dn = "tc-nodone";
    let cloud = start_cloud(
        Protocol::Tencent,
        PID,
        dn,
        &fw,
        CloudOptions::default(),
        Duration::from_secs(2),
    );
    let dev = Dev::connect(dn);
    dev.report_version("1.0.0");
    dev.expect_reply("1.0.0");
    dev.next();
    dev.downloading("100");
    dev.state("burning");
    dev.report_version("2.0.0");
    dev.expect_reply("2.0.0");
    match cloud.join().unwrap().outcome {
        Err(Failure::Timeout { waiting_for }) => {
            assert!(waiting_for.contains("done"), "{waiting_for}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
