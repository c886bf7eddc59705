//! The rules of an upgrade's life, checked by the cloud against scripted devices through the
//! embedded broker: one failure report per upgrade, silence about an upgrade after it, no step
//! "0", the grace period after a failure, and which requests get an answer.

mod common;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{broker_port, firmware_for_test, start_cloud_with, violation, FakeDevice};
use ota_cloud::{Failure, Protocol, Success, Summary, TargetOutcome};
use serde_json::Value;

const PK: &str = "checksPK";
const T: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_millis(300);

/// An Aliyun cloud (grace shortened) for `dn` and its device, which has reported 1.0.0 and got
/// the upgrade.
fn aliyun(dn: &str) -> (JoinHandle<Summary>, FakeDevice, Value) {
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud_with(Protocol::Aliyun, PK, dn, &fw, T, |c| {
        c.set_grace(GRACE);
    });
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let upgrade = dev.next_upgrade();
    (cloud, dev, upgrade)
}

fn step(dev: &FakeDevice, step: &str, desc: &str) {
    dev.send(
        "progress",
        &format!(r#"{{"id":2,"params":{{"step":"{step}","desc":"{desc}"}}}}"#),
    );
}

fn failed(version: &str, reports: u32, desc: &str) -> TargetOutcome {
    TargetOutcome::Failed {
        version: version.into(),
        reports,
        desc: desc.into(),
    }
}

#[test]
fn aliyun_progress_after_a_failure_report_is_a_violation() {
    let dn = "ck-step-after-fail";
    let (cloud, dev, _) = aliyun(dn);
    step(&dev, "10", "");
    step(&dev, "-2", "download failed: connection reset");
    step(&dev, "50", "");
    let summary = cloud.join().unwrap();
    let (topic, reason) = violation(&summary);
    assert_eq!(topic, format!("/ota/device/progress/{PK}/{dn}"));
    assert!(
        reason.contains("step 50") && reason.contains("failed"),
        "{reason}"
    );
    assert_eq!(
        summary.target_outcome,
        failed("2.0.0", 1, "download failed: connection reset")
    );
    assert_eq!(
        summary.outcome_line(),
        "outcome: failed 2.0.0 reports=1 desc=download failed: connection reset"
    );
    assert_eq!(summary.progress, [10, -2, 50]);
}

#[test]
fn aliyun_new_version_after_a_failure_report_is_a_violation() {
    let dn = "ck-version-after-fail";
    let (cloud, dev, _) = aliyun(dn);
    step(&dev, "-2", "download failed");
    dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
    let summary = cloud.join().unwrap();
    let (topic, reason) = violation(&summary);
    assert_eq!(topic, format!("/ota/device/inform/{PK}/{dn}"));
    assert!(reason.contains("version report"), "{reason}");
    assert_eq!(
        summary.target_outcome,
        failed("2.0.0", 1, "download failed")
    );
    assert!(summary.violation().is_some());
}

#[test]
fn aliyun_step_0_is_a_violation() {
    let (cloud, dev, _) = aliyun("ck-step-0");
    step(&dev, "0", "starting");
    let summary = cloud.join().unwrap();
    let (_, reason) = violation(&summary);
    assert!(reason.contains("\"0\""), "{reason}");
    assert_eq!(summary.target_outcome, TargetOutcome::Timeout);
    assert_eq!(summary.outcome_line(), "outcome: timeout");
}

#[test]
fn two_failure_reports_for_one_upgrade_are_a_violation() {
    let (cloud, dev, _) = aliyun("ck-two-failures");
    step(&dev, "-2", "download failed: HTTP 404");
    step(&dev, "-1", "upgrade failed");
    let summary = cloud.join().unwrap();
    let (_, reason) = violation(&summary);
    assert!(reason.contains("second failure report"), "{reason}");
    assert_eq!(
        summary.target_outcome,
        failed("2.0.0", 2, "download failed: HTTP 404")
    );
    assert_eq!(summary.target().failure_reports, 2);
}

#[test]
fn a_failure_report_ends_the_run_after_the_grace_period_without_answering_more() {
    let (cloud, dev, _) = aliyun("ck-grace");
    step(&dev, "-3", "md5 mismatch");
    let sent = Instant::now();
    // Restarted after the failure: the upgrade is over, no new offer.
    dev.send("inform", r#"{"id":4,"params":{"version":"1.0.0"}}"#);
    assert!(dev.nothing_within(Duration::from_millis(150)));
    let summary = cloud.join().unwrap();
    assert!(sent.elapsed() >= GRACE - Duration::from_millis(50));
    assert_eq!(
        summary.outcome,
        Err(Failure::DeviceFailed {
            step: -3,
            desc: Some("md5 mismatch".into())
        })
    );
    assert_eq!(summary.violation(), None);
    assert_eq!(
        summary.outcome_line(),
        "outcome: failed 2.0.0 reports=1 desc=md5 mismatch"
    );
    assert_eq!(summary.upgrade_messages_sent, 1);
}

#[test]
fn ignore_requests_leaves_requests_and_re_reported_versions_unanswered() {
    let (_server, fw, _) = firmware_for_test();
    let dn = "ck-ignore";
    let cloud = start_cloud_with(Protocol::Aliyun, PK, dn, &fw, T, |c| {
        c.set_ignore_requests(true);
    });
    let dev = FakeDevice::connect(broker_port(), PK, dn);
    // The first report is not a request: it gets the upgrade.
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    dev.next_upgrade();
    dev.send("request", r#"{"id":2,"params":{"version":"1.0.0"}}"#);
    assert!(dev.nothing_within(Duration::from_millis(500)));
    dev.send("inform", r#"{"id":3,"params":{"version":"1.0.0"}}"#);
    assert!(dev.nothing_within(Duration::from_millis(500)));
    step(&dev, "100", "");
    dev.send("inform", r#"{"id":4,"params":{"version":"2.0.0"}}"#);
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.outcome_line(), "outcome: success 2.0.0");
    assert_eq!(summary.requests_received, 1);
    assert_eq!(summary.requests_ignored, 2);
    assert_eq!(summary.upgrade_messages_sent, 1);
}

#[test]
fn a_re_reported_old_version_gets_the_pending_upgrade_again() {
    for (protocol, dn, id) in [
        (Protocol::Aliyun, "ck-resume-aliyun", "1"),
        (Protocol::Sagoo, "ck-resume-sagoo", "\"1\""),
    ] {
        let (_server, fw, _) = firmware_for_test();
        let cloud = start_cloud_with(protocol, PK, dn, &fw, T, |_| {});
        let dev = FakeDevice::connect(broker_port(), PK, dn);
        let inform = format!(r#"{{"id":{id},"params":{{"version":"1.0.0"}}}}"#);
        dev.send("inform", &inform);
        let first = dev.next_upgrade();
        // Power cut, restart: the old version again, the same upgrade again.
        dev.send("inform", &inform);
        let again = dev.next_upgrade();
        assert_eq!(again["data"], first["data"], "{protocol}");
        dev.send(
            "inform",
            &format!(r#"{{"id":{id},"params":{{"version":"2.0.0"}}}}"#),
        );
        let summary = cloud.join().unwrap();
        assert_eq!(summary.outcome, Ok(Success::Upgraded), "{protocol}");
        assert_eq!(summary.upgrade_messages_sent, 2);
    }
}

/// Tencent: the report topic and `report_progress` for `version`.
fn tencent_progress(dev: &FakeDevice, dn: &str, version: &str, progress: &str) {
    dev.publish(
        &format!("$ota/report/{PK}/{dn}"),
        &format!(
            r#"{{"type":"report_progress","report":{{"progress":{progress},"version":"{version}"}}}}"#
        ),
    );
}

#[test]
fn tencent_a_second_fail_or_progress_after_fail_is_a_violation() {
    let fail = r#"{"state":"fail","result_code":"-2","result_msg":"download failed"}"#;
    for (dn, after, why) in [
        ("ck-tc-two-fails", fail, "second failure report"),
        (
            "ck-tc-progress-after-fail",
            r#"{"state":"downloading","percent":"60","result_code":"0","result_msg":""}"#,
            "state downloading (60%) for the upgrade to 2.0.0 after reporting it failed",
        ),
    ] {
        let (_server, fw, _) = firmware_for_test();
        let cloud = start_cloud_with(Protocol::Tencent, PK, dn, &fw, T, |c| {
            c.set_grace(GRACE);
        });
        let dev = FakeDevice::connect_on(broker_port(), PK, dn, &format!("$ota/update/{PK}/{dn}"));
        dev.publish(
            &format!("$ota/report/{PK}/{dn}"),
            r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
        );
        assert_eq!(dev.next_message().1["type"], "report_version_rsp");
        assert_eq!(dev.next_message().1["type"], "update_firmware");
        tencent_progress(&dev, dn, "2.0.0", fail);
        tencent_progress(&dev, dn, "2.0.0", after);
        let summary = cloud.join().unwrap();
        let (_, reason) = violation(&summary);
        assert!(reason.contains(why), "{dn}: {reason}");
        assert!(
            matches!(summary.target_outcome, TargetOutcome::Failed { .. }),
            "{dn}: {:?}",
            summary.target_outcome
        );
    }
}

#[test]
fn ucloud_two_fails_for_one_task_are_a_violation() {
    let dn = "ck-uc-two-fails";
    let (_server, fw, _) = firmware_for_test();
    let cloud = start_cloud_with(Protocol::Ucloud, PK, dn, &fw, T, |c| {
        c.set_grace(GRACE);
    });
    let up = format!("/$system/{PK}/{dn}/ota/upstream");
    let dev = FakeDevice::connect_on(
        broker_port(),
        PK,
        dn,
        &format!("/$system/{PK}/{dn}/ota/downstream"),
    );
    dev.publish(&up, r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#);
    let task = dev.next_message().1["Payload"]["TaskID"].clone();
    let fail =
        format!(r#"{{"Method":"fail","Payload":{{"TaskID":{task},"ErrMsg":"download failed"}}}}"#);
    dev.publish(&up, &fail);
    dev.publish(&up, &fail);
    let summary = cloud.join().unwrap();
    let (_, reason) = violation(&summary);
    assert!(reason.contains("second failure report"), "{reason}");
    assert_eq!(
        summary.target_outcome,
        failed("2.0.0", 2, "download failed")
    );
}
