//! Cloud playing UCloud IoT against a scripted fake device, through the embedded broker.

mod common;

use std::thread::JoinHandle;
use std::time::Duration;

use common::{broker_port, firmware_for_test, start_cloud, violation, FakeDevice};
use md5::{Digest, Md5};
use ota_cloud::{CloudOptions, DeviceMsg, Failure, Protocol, Success, Summary};
use serde_json::{json, Value};

const PSN: &str = "uc-product";
const T: Duration = Duration::from_secs(20);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Dev {
    dev: FakeDevice,
    up: String,
    down: String,
}

impl Dev {
    fn connect(dn: &str) -> Dev {
        let down = format!("/$system/{PSN}/{dn}/ota/downstream");
        Dev {
            dev: FakeDevice::connect_on(broker_port(), PSN, dn, &down),
            up: format!("/$system/{PSN}/{dn}/ota/upstream"),
            down,
        }
    }

    fn send(&self, payload: &str) {
        self.dev.publish(&self.up, payload);
    }

    fn method(&self, method: &str, task: &str) {
        self.send(&format!(
            r#"{{"Method":"{method}","Payload":{{"TaskID":"{task}"}}}}"#
        ));
    }

    fn fail(&self, task: &str, err: &str) {
        self.send(&format!(
            r#"{{"Method":"fail","Payload":{{"TaskID":"{task}","ErrMsg":"{err}"}}}}"#
        ));
    }

    /// Reports `version` and returns the task the cloud sends.
    fn report(&self, version: &str) -> Value {
        self.send(&format!(
            r#"{{"Method":"report","Payload":{{"Version":"{version}"}}}}"#
        ));
        self.task()
    }

    fn task(&self) -> Value {
        let (topic, msg) = self.dev.next_message();
        assert_eq!(topic, self.down);
        assert_eq!(msg["Method"], "notify");
        msg["Payload"].clone()
    }
}

fn setup(dn: &str, options: CloudOptions) -> (JoinHandle<Summary>, Dev) {
    let (_server, fw, _) = firmware_for_test();
    (
        start_cloud(Protocol::Ucloud, PSN, dn, &fw, options, T),
        Dev::connect(dn),
    )
}

#[test]
fn full_upgrade_succeeds_on_success() {
    let dn = "uc-ok";
    let (server, fw, image) = firmware_for_test();
    let cloud = start_cloud(Protocol::Ucloud, PSN, dn, &fw, CloudOptions::default(), T);
    let dev = Dev::connect(dn);

    let task = dev.report("1.0.0");
    let id = task["TaskID"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    assert_eq!(
        task,
        json!({"Version":"2.0.0","CurrentVersion":"1.0.0","URL":server.url(),
               "MD5":hex(&Md5::digest(&image)),"Size":image.len(),"TaskID":id})
    );
    assert_eq!(common::http_get(task["URL"].as_str().unwrap()), image);
    dev.method("notify", &id);
    dev.method("upgrading", &id);
    dev.method("success", &id);
    let summary = cloud.join().unwrap();
    assert_eq!(summary.outcome, Ok(Success::Upgraded));
    assert_eq!(summary.task_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        summary.messages,
        [
            DeviceMsg::Version {
                version: "1.0.0".into(),
                module: None
            },
            DeviceMsg::TaskAck {
                task_id: id.clone()
            },
            DeviceMsg::TaskUpgrading {
                task_id: id.clone()
            },
            DeviceMsg::TaskSuccess { task_id: id },
        ]
    );
}

#[test]
fn module_is_announced_and_must_be_reported() {
    let options = CloudOptions {
        module: Some("module_a".into()),
        ..CloudOptions::default()
    };
    let (cloud, dev) = setup("uc-module", options);
    // The default module's report does not start a module_a task.
    dev.send(r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#);
    assert!(dev.dev.nothing_within(Duration::from_millis(300)));
    dev.send(r#"{"Method":"report","Payload":{"Version":"0.1","Module":"module_a"}}"#);
    let task = dev.task();
    assert_eq!(task["Module"], "module_a");
    assert_eq!(task["CurrentVersion"], "0.1");
    let id = task["TaskID"].as_str().unwrap();
    dev.method("notify", id);
    dev.method("upgrading", id);
    dev.method("success", id);
    assert_eq!(cloud.join().unwrap().outcome, Ok(Success::Upgraded));
}

#[test]
fn upgrading_before_the_ack_is_a_violation() {
    let (cloud, dev) = setup("uc-noack", CloudOptions::default());
    let task = dev.report("1.0.0");
    dev.method("upgrading", task["TaskID"].as_str().unwrap());
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("acknowledged"), "{reason}");
}

#[test]
fn wrong_task_id_is_a_violation() {
    let (cloud, dev) = setup("uc-taskid", CloudOptions::default());
    let task = dev.report("1.0.0");
    let id = task["TaskID"].as_str().unwrap();
    dev.method("notify", id);
    dev.method("upgrading", &format!("{id}0"));
    let (topic, reason) = violation(&cloud.join().unwrap());
    assert_eq!(topic, format!("/$system/{PSN}/uc-taskid/ota/upstream"));
    assert!(reason.contains("TaskID"), "{reason}");
}

#[test]
fn numeric_task_id_and_old_method_names_are_violations() {
    let (cloud, dev) = setup("uc-numid", CloudOptions::default());
    dev.report("1.0.0");
    dev.send(r#"{"Method":"notify","Payload":{"TaskID":1}}"#);
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("TaskID"), "{reason}");

    let (cloud, dev) = setup("uc-oldsdk", CloudOptions::default());
    dev.send(r#"{"Method":"report_version","Payload":{"Version":"1.0.0"}}"#);
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("report_version"), "{reason}");
}

#[test]
fn success_before_upgrading_is_a_violation() {
    let (cloud, dev) = setup("uc-early", CloudOptions::default());
    let task = dev.report("1.0.0");
    let id = task["TaskID"].as_str().unwrap();
    dev.method("notify", id);
    dev.method("success", id);
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("upgrading"), "{reason}");
}

#[test]
fn device_failure_fails_the_run() {
    let (cloud, dev) = setup("uc-fail", CloudOptions::default());
    let task = dev.report("1.0.0");
    let id = task["TaskID"].as_str().unwrap();
    dev.method("notify", id);
    dev.method("upgrading", id);
    dev.fail(id, "md5 mismatch");
    assert_eq!(
        cloud.join().unwrap().outcome,
        Err(Failure::DeviceFailed {
            step: -1,
            desc: Some("md5 mismatch".into())
        })
    );
}

/// A fake device that does what a correct one must: refuse a task whose CurrentVersion is
/// not the version it runs.
fn refusing_device(dev: &Dev, running: &str) {
    let task = dev.report(running);
    let id = task["TaskID"].as_str().unwrap();
    let from = task["CurrentVersion"].as_str().unwrap();
    if from == running {
        dev.method("notify", id);
        dev.method("upgrading", id);
        dev.method("success", id);
    } else {
        dev.fail(
            id,
            &format!("refused: task upgrades from {from} but {running} runs"),
        );
    }
}

#[test]
fn current_version_mismatch_is_refused() {
    let options = CloudOptions {
        current_version: Some("0.9".into()),
        ..CloudOptions::default()
    };
    let (cloud, dev) = setup("uc-mismatch", options);
    refusing_device(&dev, "1.0.0");
    let summary = cloud.join().unwrap();
    assert_eq!(
        summary.outcome,
        Err(Failure::DeviceFailed {
            step: -1,
            desc: Some("refused: task upgrades from 0.9 but 1.0.0 runs".into())
        })
    );
}

#[test]
fn going_on_with_a_mismatched_task_is_a_violation() {
    let options = CloudOptions {
        current_version: Some("0.9".into()),
        ..CloudOptions::default()
    };
    let (cloud, dev) = setup("uc-ignores", options);
    let task = dev.report("1.0.0");
    let id = task["TaskID"].as_str().unwrap();
    dev.method("notify", id);
    dev.method("upgrading", id);
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("refuse"), "{reason}");
}

#[test]
fn fail_without_errmsg_is_a_violation() {
    let (cloud, dev) = setup("uc-noerr", CloudOptions::default());
    let task = dev.report("1.0.0");
    dev.method("fail", task["TaskID"].as_str().unwrap());
    let (_, reason) = violation(&cloud.join().unwrap());
    assert!(reason.contains("ErrMsg"), "{reason}");
}
