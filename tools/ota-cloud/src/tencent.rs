//! Tencent Cloud IoT OTA messages, cloud side: topics, a strict checker of what the device
//! sends, and the downstream messages (`report_version_rsp`, `update_firmware`). Pure: no I/O.
//!
//! The device publishes on `$ota/report/{pid}/{dn}`: `report_version` and `report_progress`
//! (states `downloading`, `burning`, `done`, `fail`); the cloud answers on
//! `$ota/update/{pid}/{dn}`. Shapes per `docs/protocols.md` (Tencent's OTA document); anything else
//! (unknown keys or `type`s, numbers where strings belong) is a violation.

use serde_json::{json, Map, Value};

use crate::platform::{DeviceMsg, Firmware, TencentState};

/// The two Tencent OTA topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Device → cloud.
    pub report: String,
    /// Cloud → device.
    pub update: String,
}

impl Topics {
    pub fn new(product_id: &str, device_name: &str) -> Topics {
        Topics {
            report: format!("$ota/report/{product_id}/{device_name}"),
            update: format!("$ota/update/{product_id}/{device_name}"),
        }
    }
}

/// Checks one device → cloud message. `Ok(None)` means the topic is not the report topic.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Option<DeviceMsg>, String> {
    if topic != topics.report {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("payload is not a JSON object".into());
    };
    only_keys(&obj, "", &["type", "report"])?;
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("\"type\" must be a JSON string, got {other}")),
        None => return Err("missing \"type\"".into()),
    };
    let report = object(&obj, "", "report")?;
    match kind {
        "report_version" => {
            only_keys(report, "report.", &["version"])?;
            let version = non_empty(report, "report.", "version")?;
            Ok(Some(DeviceMsg::Version {
                version,
                module: None,
            }))
        }
        "report_progress" => {
            only_keys(report, "report.", &["progress", "version"])?;
            let version = non_empty(report, "report.", "version")?;
            let progress = object(report, "report.", "progress")?;
            let at = "report.progress.";
            let state = string(progress, at, "state")?;
            let keys: &[&str] = if state == "downloading" {
                &["state", "percent", "result_code", "result_msg"]
            } else {
                &["state", "result_code", "result_msg"]
            };
            only_keys(progress, at, keys)?;
            let code = string(progress, at, "result_code")?;
            let msg = string(progress, at, "result_msg")?;
            let state = match state.as_str() {
                "downloading" | "burning" | "done" => {
                    if code != "0" {
                        return Err(format!(
                            "{at}result_code is {code:?} in state {state:?} (must be \"0\")"
                        ));
                    }
                    if !msg.is_empty() {
                        return Err(format!(
                            "{at}result_msg is {msg:?} in state {state:?} (must be \"\")"
                        ));
                    }
                    match state.as_str() {
                        "downloading" => TencentState::Downloading {
                            percent: parse_percent(&string(progress, at, "percent")?)?,
                        },
                        "burning" => TencentState::Burning,
                        _ => TencentState::Done,
                    }
                }
                "fail" => {
                    let code = match code.as_str() {
                        "-1" | "-2" | "-3" | "-4" | "-5" => code.parse().unwrap_or(-1),
                        _ => {
                            return Err(format!(
                                "{at}result_code {code:?} is not one of \"-1\"..\"-5\""
                            ))
                        }
                    };
                    if msg.is_empty() {
                        return Err(format!("{at}result_msg is empty in state \"fail\""));
                    }
                    TencentState::Fail { code, msg }
                }
                other => {
                    return Err(format!(
                        "{at}state {other:?} is not downloading, burning, done or fail"
                    ))
                }
            };
            Ok(Some(DeviceMsg::TencentProgress { version, state }))
        }
        other => Err(format!(
            "unknown \"type\" {other:?} (expected report_version or report_progress)"
        )),
    }
}

/// `"0"`…`"100"`, written as `%d` would.
fn parse_percent(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .parse()
        .map_err(|_| format!("report.progress.percent {s:?} is not an integer 0..100"))?;
    if n.to_string() != s || n > 100 {
        return Err(format!(
            "report.progress.percent {s:?} is not an integer 0..100"
        ));
    }
    Ok(n)
}

fn only_keys(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), String> {
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected key {at}{k}"));
    }
    Ok(())
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, String> {
    match obj.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(format!("{at}{key} must be an object, got {other}")),
        None => Err(format!("missing {at}{key}")),
    }
}

fn string(obj: &Map<String, Value>, at: &str, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{at}{key} must be a JSON string, got {other}")),
        None => Err(format!("missing {at}{key}")),
    }
}

fn non_empty(obj: &Map<String, Value>, at: &str, key: &str) -> Result<String, String> {
    let s = string(obj, at, key)?;
    if s.is_empty() {
        return Err(format!("{at}{key} is empty"));
    }
    Ok(s)
}

/// The answer to `report_version` (result 0: accepted), echoing the reported version.
pub fn version_reply(version: &str) -> String {
    json!({
        "type": "report_version_rsp",
        "result_code": 0,
        "result_msg": "success",
        "version": version,
    })
    .to_string()
}

/// The upgrade notification.
pub fn update_message(firmware: &Firmware) -> String {
    json!({
        "file_size": firmware.size,
        "md5sum": firmware.md5,
        "type": "update_firmware",
        "url": firmware.url,
        "version": firmware.version,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("pid", "dn")
    }

    fn p(payload: &str) -> Result<Option<DeviceMsg>, String> {
        parse(&topics(), "$ota/report/pid/dn", payload.as_bytes())
    }

    fn progress(state: TencentState) -> Result<Option<DeviceMsg>, String> {
        Ok(Some(DeviceMsg::TencentProgress {
            version: "0.2".into(),
            state,
        }))
    }

    #[test]
    fn seed_examples_are_accepted() {
        assert_eq!(
            p(r#"{"type":"report_version","report":{"version":"0.1"}}"#),
            Ok(Some(DeviceMsg::Version {
                version: "0.1".into(),
                module: None
            }))
        );
        assert_eq!(
            p(
                r#"{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"10","result_code":"0","result_msg":""},"version":"0.2"}}"#
            ),
            progress(TencentState::Downloading { percent: 10 })
        );
        assert_eq!(
            p(
                r#"{"type":"report_progress","report":{"progress":{"state":"burning","result_code":"0","result_msg":""},"version":"0.2"}}"#
            ),
            progress(TencentState::Burning)
        );
        assert_eq!(
            p(
                r#"{"type":"report_progress","report":{"progress":{"state":"done","result_code":"0","result_msg":""},"version":"0.2"}}"#
            ),
            progress(TencentState::Done)
        );
        assert_eq!(
            p(
                r#"{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-1","result_msg":"time_out"},"version":"0.2"}}"#
            ),
            progress(TencentState::Fail {
                code: -1,
                msg: "time_out".into()
            })
        );
        for percent in ["0", "100"] {
            let m = format!(
                r#"{{"type":"report_progress","report":{{"progress":{{"state":"downloading","percent":"{percent}","result_code":"0","result_msg":""}},"version":"0.2"}}}}"#
            );
            assert!(p(&m).is_ok(), "{m}");
        }
        assert_eq!(parse(&topics(), "$ota/update/pid/dn", b"{}"), Ok(None));
    }

    #[test]
    fn violations_are_rejected() {
        let prog = |progress: &str| {
            format!(
                r#"{{"type":"report_progress","report":{{"progress":{progress},"version":"0.2"}}}}"#
            )
        };
        let bad = [
            "not json".to_string(),
            "[]".into(),
            r#"{"report":{"version":"0.1"}}"#.into(),
            r#"{"type":1,"report":{"version":"0.1"}}"#.into(),
            r#"{"type":"report_version"}"#.into(),
            r#"{"type":"report_version","report":{"version":0.1}}"#.into(),
            r#"{"type":"report_version","report":{"version":""}}"#.into(),
            r#"{"type":"report_version","report":{"version":"0.1","module":"m"}}"#.into(),
            r#"{"type":"report_version","report":{"version":"0.1"},"id":1}"#.into(),
            r#"{"type":"report_version","report":"0.1"}"#.into(),
            r#"{"type":"update_firmware","report":{"version":"0.1"}}"#.into(),
            r#"{"type":"report_progress","report":{"progress":{"state":"done","result_code":"0","result_msg":""}}}"#.into(),
            prog(r#"{"state":"downloading","percent":10,"result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"downloading","percent":"101","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"downloading","percent":"-1","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"downloading","percent":"010","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"downloading","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"downloading","percent":"10","result_code":0,"result_msg":""}"#),
            prog(r#"{"state":"downloading","percent":"10","result_code":"0"}"#),
            prog(r#"{"state":"downloading","percent":"10","result_code":"-1","result_msg":""}"#),
            prog(r#"{"state":"burning","percent":"100","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"done","result_code":"0","result_msg":"ok"}"#),
            prog(r#"{"state":"fail","result_code":"-6","result_msg":"x"}"#),
            prog(r#"{"state":"fail","result_code":"0","result_msg":"x"}"#),
            prog(r#"{"state":"fail","result_code":"-1","result_msg":""}"#),
            prog(r#"{"state":"fail","result_code":-1,"result_msg":"x"}"#),
            prog(r#"{"state":"finished","result_code":"0","result_msg":""}"#),
            prog(r#"{"state":"done","result_code":"0","result_msg":"","extra":"x"}"#),
            prog(r#""done""#),
        ];
        for payload in bad {
            assert!(p(&payload).is_err(), "{payload} should be rejected");
        }
    }

    #[test]
    fn downstream_shapes() {
        let v: Value = serde_json::from_str(&version_reply("1.0.0")).unwrap();
        assert_eq!(
            v,
            json!({"type":"report_version_rsp","result_code":0,"result_msg":"success","version":"1.0.0"})
        );
        let fw = Firmware {
            version: "0.2".into(),
            url: "https://h/f.bin".into(),
            size: 708482,
            md5: "36eb5951179db14a631463a37a9322a2".into(),
            sha256: String::new(),
        };
        let v: Value = serde_json::from_str(&update_message(&fw)).unwrap();
        assert_eq!(
            v,
            json!({"file_size":708482,"md5sum":"36eb5951179db14a631463a37a9322a2",
                   "type":"update_firmware","url":"https://h/f.bin","version":"0.2"})
        );
    }
}
