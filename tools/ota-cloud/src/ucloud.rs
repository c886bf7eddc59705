//! UCloud IoT OTA messages, cloud side: topics, a strict checker of what the device sends, and
//! the task notification. Pure: no I/O.
//!
//! Device → cloud on `/$system/{productSN}/{deviceSN}/ota/upstream`:
//! `{"Method":"report","Payload":{"Version":"…"[,"Module":"…"]}}`, then for a task
//! `{"Method":"notify"|"upgrading"|"success","Payload":{"TaskID":"…"}}` and
//! `{"Method":"fail","Payload":{"TaskID":"…","ErrMsg":"…"}}`. Cloud → device on
//! `…/ota/downstream`: `{"Method":"notify","Payload":{"Version","CurrentVersion","Module"?,
//! "URL","MD5","Size","TaskID"}}`. Shapes per `docs/protocols.md` (UCloud's OTA document);
//! the older SDK generation's Method names (`report_version`, `report_progress`, …) are
//! violations.
//!
//! Stricter than UCloud's document on one point: `ErrMsg` is required (and non-empty) in `fail`,
//! as devices should say why they fail (the SDK always does: `docs/protocols.md`, "UCloud").

use serde_json::{json, Map, Value};

use crate::platform::{DeviceMsg, Firmware};

/// The two UCloud OTA topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Device → cloud.
    pub upstream: String,
    /// Cloud → device.
    pub downstream: String,
}

impl Topics {
    pub fn new(product_sn: &str, device_sn: &str) -> Topics {
        let t = |dir: &str| format!("/$system/{product_sn}/{device_sn}/ota/{dir}");
        Topics {
            upstream: t("upstream"),
            downstream: t("downstream"),
        }
    }
}

/// Checks one device → cloud message. `Ok(None)` means the topic is not the upstream topic.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Option<DeviceMsg>, String> {
    if topic != topics.upstream {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("payload is not a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| *k != "Method" && *k != "Payload") {
        return Err(format!("unexpected top-level key {k:?}"));
    }
    let method = match obj.get("Method") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("\"Method\" must be a JSON string, got {other}")),
        None => return Err("missing \"Method\"".into()),
    };
    let payload = match obj.get("Payload") {
        Some(Value::Object(p)) => p,
        Some(other) => return Err(format!("\"Payload\" must be an object, got {other}")),
        None => return Err("missing \"Payload\"".into()),
    };
    let allowed: &[(&str, bool)] = match method {
        "report" => &[("Version", true), ("Module", false)],
        "notify" | "upgrading" | "success" => &[("TaskID", true)],
        "fail" => &[("TaskID", true), ("ErrMsg", true)],
        "report_version" | "update_firmware" | "report_progress" | "report_success"
        | "report_fail" | "cancel_update" => {
            return Err(format!(
                "Method {method:?} belongs to the older UCloud SDK generation \
                 (expected report, notify, upgrading, success or fail)"
            ))
        }
        other => {
            return Err(format!(
                "unknown Method {other:?} (expected report, notify, upgrading, success or fail)"
            ))
        }
    };
    for (key, value) in payload {
        if !allowed.iter().any(|(k, _)| k == key) {
            return Err(format!("unexpected key Payload.{key} in {method:?}"));
        }
        match value {
            Value::String(s) if s.is_empty() => return Err(format!("Payload.{key} is empty")),
            Value::String(_) => {}
            other => return Err(format!("Payload.{key} must be a JSON string, got {other}")),
        }
    }
    for (key, required) in allowed {
        if *required && !payload.contains_key(*key) {
            return Err(format!("missing Payload.{key} in {method:?}"));
        }
    }
    let get = |key: &str| str_of(payload, key);
    let task_id = || get("TaskID").unwrap_or_default();
    Ok(Some(match method {
        "report" => DeviceMsg::Version {
            version: get("Version").unwrap_or_default(),
            module: get("Module"),
        },
        "notify" => DeviceMsg::TaskAck { task_id: task_id() },
        "upgrading" => DeviceMsg::TaskUpgrading { task_id: task_id() },
        "success" => DeviceMsg::TaskSuccess { task_id: task_id() },
        _ => DeviceMsg::TaskFail {
            task_id: task_id(),
            err_msg: get("ErrMsg").unwrap_or_default(),
        },
    }))
}

fn str_of(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The task notification. `current_version` is the version the task upgrades from; `module`
/// `None` is the default module (the key is then omitted).
pub fn notify_message(
    firmware: &Firmware,
    current_version: &str,
    module: Option<&str>,
    task_id: &str,
) -> String {
    let mut p = Map::new();
    p.insert("Version".into(), json!(firmware.version));
    p.insert("CurrentVersion".into(), json!(current_version));
    if let Some(m) = module {
        p.insert("Module".into(), json!(m));
    }
    p.insert("URL".into(), json!(firmware.url));
    p.insert("MD5".into(), json!(firmware.md5));
    p.insert("Size".into(), json!(firmware.size));
    p.insert("TaskID".into(), json!(task_id));
    json!({"Method": "notify", "Payload": p}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("psn", "dsn")
    }

    fn p(payload: &str) -> Result<Option<DeviceMsg>, String> {
        parse(
            &topics(),
            "/$system/psn/dsn/ota/upstream",
            payload.as_bytes(),
        )
    }

    #[test]
    fn seed_examples_are_accepted() {
        assert_eq!(
            p(r#"{"Method":"report","Payload":{"Version":"1.0","Module":"module_a"}}"#),
            Ok(Some(DeviceMsg::Version {
                version: "1.0".into(),
                module: Some("module_a".into())
            }))
        );
        assert_eq!(
            p(r#"{"Method":"report","Payload":{"Version":"1.0"}}"#),
            Ok(Some(DeviceMsg::Version {
                version: "1.0".into(),
                module: None
            }))
        );
        let id = || "1".to_string();
        assert_eq!(
            p(r#"{"Method":"notify","Payload":{"TaskID":"1"}}"#),
            Ok(Some(DeviceMsg::TaskAck { task_id: id() }))
        );
        assert_eq!(
            p(r#"{"Method":"upgrading","Payload":{"TaskID":"1"}}"#),
            Ok(Some(DeviceMsg::TaskUpgrading { task_id: id() }))
        );
        assert_eq!(
            p(r#"{"Method":"success","Payload":{"TaskID":"1"}}"#),
            Ok(Some(DeviceMsg::TaskSuccess { task_id: id() }))
        );
        assert_eq!(
            p(r#"{"Method":"fail","Payload":{"TaskID":"1","ErrMsg":"firmware not exist"}}"#),
            Ok(Some(DeviceMsg::TaskFail {
                task_id: id(),
                err_msg: "firmware not exist".into()
            }))
        );
        assert_eq!(
            parse(&topics(), "/$system/psn/dsn/ota/downstream", b"x"),
            Ok(None)
        );
    }

    #[test]
    fn violations_are_rejected() {
        for payload in [
            "not json",
            r#"["report"]"#,
            r#"{"Payload":{"Version":"1.0"}}"#,
            r#"{"Method":"report"}"#,
            r#"{"Method":"report","Payload":"1.0"}"#,
            r#"{"Method":"report","Payload":{"Version":"1.0"},"ID":1}"#,
            r#"{"Method":"report","Payload":{"Version":1.0}}"#,
            r#"{"Method":"report","Payload":{"Version":""}}"#,
            r#"{"Method":"report","Payload":{"Module":"m"}}"#,
            r#"{"Method":"report","Payload":{"Version":"1.0","version":"1.0"}}"#,
            r#"{"Method":"report_version","Payload":{"Version":"1.0"}}"#,
            r#"{"Method":"report_progress","Payload":{"TaskID":"1"}}"#,
            r#"{"Method":"Report","Payload":{"Version":"1.0"}}"#,
            r#"{"Method":"notify","Payload":{"TaskID":1}}"#,
            r#"{"Method":"notify","Payload":{}}"#,
            r#"{"Method":"notify","Payload":{"TaskID":"1","Version":"2"}}"#,
            r#"{"Method":"upgrading","Payload":{"TaskID":"1","Progress":"5"}}"#,
            r#"{"Method":"success","Payload":{"TaskID":""}}"#,
            r#"{"Method":"success","Payload":{"TaskID":"1","ErrMsg":"x"}}"#,
            r#"{"Method":"fail","Payload":{"TaskID":"1"}}"#,
            r#"{"Method":"fail","Payload":{"TaskID":"1","ErrMsg":""}}"#,
            r#"{"Method":"fail","Payload":{"TaskID":"1","ErrMsg":5}}"#,
            r#"{"Method":1,"Payload":{"TaskID":"1"}}"#,
        ] {
            assert!(p(payload).is_err(), "{payload} should be rejected");
        }
    }

    #[test]
    fn notify_shape() {
        let fw = Firmware {
            version: "1.0".into(),
            url: "http://xxx/xxx.zip".into(),
            size: 1024,
            md5: "aa30e838c7cdbbcbf8be7668aaeebee3".into(),
            sha256: String::new(),
        };
        let v: Value =
            serde_json::from_str(&notify_message(&fw, "0.1", Some("module_a"), "1")).unwrap();
        assert_eq!(
            v,
            json!({"Method":"notify","Payload":{"Version":"1.0","CurrentVersion":"0.1",
                   "Module":"module_a","URL":"http://xxx/xxx.zip",
                   "MD5":"aa30e838c7cdbbcbf8be7668aaeebee3","Size":1024,"TaskID":"1"}})
        );
        let v: Value = serde_json::from_str(&notify_message(&fw, "0.1", None, "7")).unwrap();
        assert!(v["Payload"].get("Module").is_none());
        assert_eq!(v["Payload"]["TaskID"], "7");
    }
}
