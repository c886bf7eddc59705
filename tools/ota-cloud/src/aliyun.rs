//! Aliyun IoT OTA messages, cloud side: topics, a strict checker of what the device sends,
//! and the upgrade notification. Pure: no I/O.
//!
//! The checker is deliberately stricter than the real platform: it is there to catch a device
//! SDK that drifts from the documented shapes (`docs/protocols.md`), so an unknown key or a
//! wrong JSON type is a violation rather than something to tolerate.

use serde_json::{json, Map, Value};

use crate::delta::OldImageClaim;
use crate::platform::{DeviceMsg, Firmware};

/// The four Aliyun OTA topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub inform: String,
    pub progress: String,
    pub request: String,
    pub upgrade: String,
}

impl Topics {
    pub fn new(product_key: &str, device_name: &str) -> Topics {
        let t = |kind: &str| format!("/ota/device/{kind}/{product_key}/{device_name}");
        Topics {
            inform: t("inform"),
            progress: t("progress"),
            request: t("request"),
            upgrade: t("upgrade"),
        }
    }

    /// Topics the cloud subscribes to (device → cloud).
    pub fn from_device(&self) -> [&str; 3] {
        [&self.inform, &self.progress, &self.request]
    }
}

/// Checks one device → cloud message. `Ok(None)` means the topic is not an OTA device topic.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Option<DeviceMsg>, String> {
    let allowed: &[(&str, bool)] = if topic == topics.inform {
        &[("version", true), ("module", false)]
    } else if topic == topics.progress {
        &[("step", true), ("desc", false)]
    } else if topic == topics.request {
        // The brief's shape is {version}; newer platforms add `module` as they do on inform.
        &[("version", true), ("module", false)]
    } else {
        return Ok(None);
    };
    let params = envelope(payload, IdRule::NumberOrString)?;
    check_keys(&params, allowed)?;
    let string = |key: &str| params.get(key).and_then(Value::as_str).map(str::to_string);
    let msg = if topic == topics.progress {
        let step = string("step").unwrap_or_default();
        DeviceMsg::Progress {
            step: parse_step(&step)?,
            desc: string("desc"),
            module: None,
            strategy: None,
        }
    } else {
        let version = string("version").unwrap_or_default();
        if version.is_empty() {
            return Err("params.version is empty".into());
        }
        let module = string("module");
        if topic == topics.inform {
            DeviceMsg::Version { version, module }
        } else {
            DeviceMsg::Request { version, module }
        }
    };
    Ok(Some(msg))
}

/// What the envelope's `id` may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdRule {
    /// Aliyun: a number, or a string of digits, in 0..=4294967295 (the documented range).
    NumberOrString,
    /// SagooIOT: a non-empty string.
    String,
}

/// `{"id": <id>, "params": {...}}` and nothing else; returns `params`.
pub(crate) fn envelope(payload: &[u8], id: IdRule) -> Result<Map<String, Value>, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("payload is not a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| *k != "id" && *k != "params") {
        return Err(format!("unexpected top-level key {k:?}"));
    }
    match (id, obj.get("id")) {
        (IdRule::NumberOrString, Some(v @ (Value::Number(_) | Value::String(_)))) => {
            let n = match v {
                Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                Value::String(_) => None,
                _ => v.as_u64(),
            };
            if n.is_none_or(|n| n > u64::from(u32::MAX)) {
                return Err(format!("\"id\" {v} is not an integer in 0..=4294967295"));
            }
        }
        (IdRule::NumberOrString, Some(other)) => {
            return Err(format!("\"id\" must be a number or a string, got {other}"))
        }
        (IdRule::String, Some(Value::String(s))) if !s.is_empty() => {}
        (IdRule::String, Some(Value::String(_))) => return Err("\"id\" is empty".into()),
        (IdRule::String, Some(other)) => {
            return Err(format!("\"id\" must be a JSON string, got {other}"))
        }
        (_, None) => return Err("missing \"id\"".into()),
    }
    match obj.remove("params") {
        Some(Value::Object(p)) => Ok(p),
        Some(other) => Err(format!("\"params\" must be an object, got {other}")),
        None => Err("missing \"params\"".into()),
    }
}

/// Every key must be allowed and a string; required keys must be present.
pub(crate) fn check_keys(
    params: &Map<String, Value>,
    allowed: &[(&str, bool)],
) -> Result<(), String> {
    for (key, value) in params {
        if !allowed.iter().any(|(k, _)| k == key) {
            return Err(format!("unexpected key params.{key}"));
        }
        if !value.is_string() {
            return Err(format!("params.{key} must be a JSON string, got {value}"));
        }
    }
    for (key, required) in allowed {
        if *required && !params.contains_key(*key) {
            return Err(format!("missing params.{key}"));
        }
    }
    Ok(())
}

/// `"1"`…`"100"` percent or `"-1"`…`"-4"` failures, written exactly as `%d` would. `"0"` is
/// not a step: the platform reads every step as progress or failure, and 0 % says nothing.
pub(crate) fn parse_step(s: &str) -> Result<i32, String> {
    let n: i32 = s
        .parse()
        .map_err(|_| format!("params.step {s:?} is not an integer"))?;
    if n.to_string() != s {
        return Err(format!(
            "params.step {s:?} is not written as a plain integer"
        ));
    }
    if !(-4..=100).contains(&n) {
        return Err(format!("params.step {n} is outside -4..=100"));
    }
    if n == 0 {
        return Err("params.step \"0\" is not a step (1..100 progress, -1..-4 failure)".into());
    }
    Ok(n)
}

/// The upgrade notification, as the platform sends it.
pub fn upgrade_message(firmware: &Firmware, id: u64) -> String {
    upgrade_message_with(firmware, id, None)
}

/// [`upgrade_message`]; with a delta patch's old image, an `extData` object (as Link SDK 4.x
/// messages carry) holding it.
pub fn upgrade_message_with(
    firmware: &Firmware,
    id: u64,
    delta_old: Option<&OldImageClaim>,
) -> String {
    let mut data = json!({
        "size": firmware.size,
        "version": firmware.version,
        "url": firmware.url,
        "md5": firmware.md5,
    });
    if let Some(claim) = delta_old {
        let mut ext = Map::new();
        claim.insert_into(&mut ext);
        data["extData"] = Value::Object(ext);
    }
    json!({
        "code": "1000",
        "data": data,
        "id": id,
        "message": "success",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("pk", "dn")
    }

    fn p(topic: &str, payload: &str) -> Result<Option<DeviceMsg>, String> {
        parse(&topics(), topic, payload.as_bytes())
    }

    #[test]
    fn seed_examples_are_accepted() {
        let t = topics();
        assert_eq!(
            p(&t.inform, r#"{"id":1,"params":{"version":"1.0.0"}}"#),
            Ok(Some(DeviceMsg::Version {
                version: "1.0.0".into(),
                module: None
            }))
        );
        assert_eq!(
            p(
                &t.inform,
                r#"{"id":"7","params":{"version":"1.0.0","module":"MCU"}}"#
            ),
            Ok(Some(DeviceMsg::Version {
                version: "1.0.0".into(),
                module: Some("MCU".into())
            }))
        );
        assert_eq!(
            p(&t.progress, r#"{"id":1,"params":{"step":"1","desc":"x"}}"#),
            Ok(Some(DeviceMsg::Progress {
                step: 1,
                desc: Some("x".into()),
                module: None,
                strategy: None,
            }))
        );
        assert_eq!(
            p(&t.progress, r#"{"id":1,"params":{"step":"-4"}}"#),
            Ok(Some(DeviceMsg::Progress {
                step: -4,
                desc: None,
                module: None,
                strategy: None,
            }))
        );
        assert_eq!(
            p(&t.request, r#"{"id":1,"params":{"version":"1.0.0"}}"#),
            Ok(Some(DeviceMsg::Request {
                version: "1.0.0".into(),
                module: None
            }))
        );
        // The ends of the documented id range, as a number and as a string.
        for id in ["0", "4294967295", r#""0""#, r#""4294967295""#] {
            let msg = format!(r#"{{"id":{id},"params":{{"version":"1.0.0"}}}}"#);
            assert!(p(&t.inform, &msg).is_ok(), "{msg}");
        }
        assert_eq!(p("/other", "not json"), Ok(None));
    }

    #[test]
    fn violations_are_rejected() {
        let t = topics();
        for (topic, payload) in [
            (&t.inform, "not json"),
            (&t.inform, "[1]"),
            (&t.inform, r#"{"params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":null,"params":{"version":"1"}}"#),
            // Outside 0..=4294967295, e.g. a millisecond timestamp.
            (&t.inform, r#"{"id":4294967296,"params":{"version":"1"}}"#),
            (
                &t.inform,
                r#"{"id":1748736000000,"params":{"version":"1"}}"#,
            ),
            (&t.inform, r#"{"id":"4294967296","params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":-1,"params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":1.5,"params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":"","params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":"12a","params":{"version":"1"}}"#),
            (&t.inform, r#"{"id":1,"params":{"version":"1"},"x":1}"#),
            (&t.inform, r#"{"id":1,"params":{}}"#),
            (&t.inform, r#"{"id":1,"params":{"version":1}}"#),
            (&t.inform, r#"{"id":1,"params":{"version":""}}"#),
            (
                &t.inform,
                r#"{"id":1,"params":{"version":"1","extra":"x"}}"#,
            ),
            (&t.inform, r#"{"id":1,"params":"version"}"#),
            (&t.progress, r#"{"id":1,"params":{"step":37}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"101"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"-5"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"0"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"-0"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"+5"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"05"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"5%"}}"#),
            (&t.progress, r#"{"id":1,"params":{"desc":"x"}}"#),
            (&t.progress, r#"{"id":1,"params":{"step":"5","desc":5}}"#),
            (&t.request, r#"{"id":1,"params":{}}"#),
        ] {
            assert!(
                p(topic, payload).is_err(),
                "{topic} {payload} should be rejected"
            );
        }
    }

    #[test]
    fn upgrade_message_shape() {
        let fw = Firmware {
            version: "2.0.0".into(),
            url: "http://h/firmware.bin".into(),
            size: 432945,
            md5: "93230c3bde425a9d7984a594ac55ea1e".into(),
            sha256: "00".repeat(32),
        };
        let v: Value = serde_json::from_str(&upgrade_message(&fw, 1507707025)).unwrap();
        assert_eq!(
            v,
            json!({"code":"1000","data":{"size":432945,"version":"2.0.0","url":"http://h/firmware.bin",
                   "md5":"93230c3bde425a9d7984a594ac55ea1e"},"id":1507707025,"message":"success"})
        );
        let claim = OldImageClaim::of(b"old");
        let v: Value = serde_json::from_str(&upgrade_message_with(&fw, 1, Some(&claim))).unwrap();
        assert_eq!(
            v["data"]["extData"],
            json!({"_delta_old_size":3,
                   "_delta_old_sha256":"cba06b5736faf67e54b07b561eae94395e774c517a7d910a54369e1263ccfbd4"})
        );
    }
}
