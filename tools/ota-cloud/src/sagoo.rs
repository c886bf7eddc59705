//! SagooIOT OTA messages, cloud side: topics, a strict checker of what the device sends, and
//! the upgrade notification. Pure: no I/O.
//!
//! Same topic family as Aliyun (`/ota/device/{inform,progress,upgrade}/{pk}/{dn}`, no
//! `request` topic), with string message ids, modules, a choice of digest (`sign` +
//! `signMethod`) and `extData`. As in [`crate::aliyun`], anything beyond the documented shapes
//! (`docs/protocols.md`, from SagooIOT's OTA document) is a violation.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use crate::aliyun::{check_keys, envelope, parse_step, IdRule};
use crate::delta::OldImageClaim;
use crate::platform::{DeviceMsg, Firmware};

/// Longest progress `desc` the platform accepts, in characters.
pub const MAX_DESC_CHARS: usize = 128;

/// The batch id the simulator puts in `extData.strategy` unless told otherwise.
pub const DEFAULT_STRATEGY: &str = "batch-7";

/// The `_package_udi` custom string of the simulator's `extData`.
pub const PACKAGE_UDI: &str = r#"{"ota_notice":"demo"}"#;

/// The three SagooIOT OTA topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub inform: String,
    pub progress: String,
    pub upgrade: String,
}

impl Topics {
    pub fn new(product_key: &str, device_name: &str) -> Topics {
        let t = |kind: &str| format!("/ota/device/{kind}/{product_key}/{device_name}");
        Topics {
            inform: t("inform"),
            progress: t("progress"),
            upgrade: t("upgrade"),
        }
    }

    /// Topics the device publishes on.
    pub fn from_device(&self) -> [&str; 2] {
        [&self.inform, &self.progress]
    }
}

/// The digest an upgrade announces (`signMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignMethod {
    #[default]
    Md5,
    Sha256,
}

impl SignMethod {
    /// The platform spelling.
    pub fn name(self) -> &'static str {
        match self {
            SignMethod::Md5 => "MD5",
            SignMethod::Sha256 => "SHA256",
        }
    }
}

impl FromStr for SignMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<SignMethod, String> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(SignMethod::Md5),
            "sha256" => Ok(SignMethod::Sha256),
            _ => Err(format!(
                "unknown sign method {s:?} (expected md5 or sha256)"
            )),
        }
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks one device → cloud message. `Ok(None)` means the topic is not a SagooIOT device
/// topic.
///
/// inform: `{"id":"…","params":{"version":"…"[,"module":"…"]}}`;
/// progress: `{"id":"…","params":{"step":"…"[,"desc":"…"][,"module":"…"][,"strategy":"…"]}}`.
pub fn parse(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Option<DeviceMsg>, String> {
    let allowed: &[(&str, bool)] = if topic == topics.inform {
        &[("version", true), ("module", false)]
    } else if topic == topics.progress {
        &[
            ("step", true),
            ("desc", false),
            ("module", false),
            ("strategy", false),
        ]
    } else {
        return Ok(None);
    };
    let params = envelope(payload, IdRule::String)?;
    check_keys(&params, allowed)?;
    let string = |key: &str| params.get(key).and_then(Value::as_str).map(str::to_string);
    let module = string("module");
    if module.as_deref() == Some("") {
        return Err("params.module is empty (omit it for the default module)".into());
    }
    if topic == topics.progress {
        let step = parse_step(&string("step").unwrap_or_default())?;
        let desc = string("desc");
        if let Some(d) = &desc {
            let n = d.chars().count();
            if n > MAX_DESC_CHARS {
                return Err(format!(
                    "params.desc has {n} characters (at most {MAX_DESC_CHARS})"
                ));
            }
        }
        let strategy = string("strategy");
        if strategy.as_deref() == Some("") {
            return Err("params.strategy is empty".into());
        }
        return Ok(Some(DeviceMsg::Progress {
            step,
            desc,
            module,
            strategy,
        }));
    }
    let version = string("version").unwrap_or_default();
    if version.is_empty() {
        return Err("params.version is empty".into());
    }
    Ok(Some(DeviceMsg::Version { version, module }))
}

/// Whether a reported module (`None` = default) is the upgrade's module (`None` = default).
pub fn same_module(reported: Option<&str>, upgrade: Option<&str>) -> bool {
    reported.unwrap_or("default") == upgrade.unwrap_or("default")
}

/// Checks a progress report against the upgrade it belongs to: the module must be the
/// upgrade's (absent = default), and `strategy` must echo the upgrade's `extData.strategy`
/// exactly (and be absent when the upgrade carried none).
pub fn check_progress(
    msg: &DeviceMsg,
    upgrade_module: Option<&str>,
    upgrade_strategy: Option<&str>,
) -> Result<(), String> {
    let DeviceMsg::Progress {
        module, strategy, ..
    } = msg
    else {
        return Ok(());
    };
    if !same_module(module.as_deref(), upgrade_module) {
        return Err(format!(
            "progress for module {:?}, but the upgrade is for module {:?}",
            module.as_deref().unwrap_or("default"),
            upgrade_module.unwrap_or("default")
        ));
    }
    match (strategy.as_deref(), upgrade_strategy) {
        (Some(got), Some(want)) if got == want => Ok(()),
        (None, None) => Ok(()),
        (Some(got), Some(want)) => Err(format!(
            "params.strategy {got:?} does not echo the upgrade's extData.strategy {want:?}"
        )),
        (None, Some(want)) => Err(format!(
            "missing params.strategy (the upgrade's extData.strategy {want:?} must be echoed)"
        )),
        (Some(got), None) => Err(format!(
            "params.strategy {got:?} but the upgrade's extData carried no strategy"
        )),
    }
}

/// The simulator's `extData`: a custom key, the batch id as `strategy` when given, and
/// `_package_udi`.
pub fn ext_data(strategy: Option<&str>) -> Value {
    ext_data_with(strategy, None)
}

/// [`ext_data`], with a delta patch's old image when given.
pub fn ext_data_with(strategy: Option<&str>, delta_old: Option<&OldImageClaim>) -> Value {
    let mut ext = Map::new();
    ext.insert("key1".into(), json!("value1"));
    if let Some(s) = strategy {
        ext.insert("strategy".into(), json!(s));
    }
    ext.insert("_package_udi".into(), json!(PACKAGE_UDI));
    if let Some(claim) = delta_old {
        claim.insert_into(&mut ext);
    }
    Value::Object(ext)
}

/// The upgrade notification, as the platform sends it. `module` `None` is the default module
/// (the platform then omits the key); `strategy` goes into `extData` when given.
pub fn upgrade_message(
    firmware: &Firmware,
    id: u64,
    sign_method: SignMethod,
    module: Option<&str>,
    strategy: Option<&str>,
) -> String {
    upgrade_message_with(firmware, id, sign_method, module, (strategy, None))
}

/// [`upgrade_message`], with a delta patch's old image in `extData` when given.
pub fn upgrade_message_with(
    firmware: &Firmware,
    id: u64,
    sign_method: SignMethod,
    module: Option<&str>,
    (strategy, delta_old): (Option<&str>, Option<&OldImageClaim>),
) -> String {
    let sign = match sign_method {
        SignMethod::Md5 => &firmware.md5,
        SignMethod::Sha256 => &firmware.sha256,
    };
    let mut data = Map::new();
    data.insert("size".into(), json!(firmware.size));
    data.insert("version".into(), json!(firmware.version));
    data.insert("url".into(), json!(firmware.url));
    data.insert("sign".into(), json!(sign));
    data.insert("signMethod".into(), json!(sign_method.name()));
    if let Some(m) = module {
        data.insert("module".into(), json!(m));
    }
    data.insert("extData".into(), ext_data_with(strategy, delta_old));
    json!({
        "code": "200",
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
            p(
                &t.inform,
                r#"{"id":"123","params":{"version":"1.0.1","module":"MCU"}}"#
            ),
            Ok(Some(DeviceMsg::Version {
                version: "1.0.1".into(),
                module: Some("MCU".into())
            }))
        );
        assert_eq!(
            p(
                &t.progress,
                r#"{"id":"123","params":{"step":"-1","desc":"OTA升级失败，请求不到升级包信息。","module":"MCU"}}"#
            ),
            Ok(Some(DeviceMsg::Progress {
                step: -1,
                desc: Some("OTA升级失败，请求不到升级包信息。".into()),
                module: Some("MCU".into()),
                strategy: None,
            }))
        );
        assert_eq!(
            p(
                &t.progress,
                r#"{"id":"9","params":{"step":"50","strategy":"batch-7"}}"#
            ),
            Ok(Some(DeviceMsg::Progress {
                step: 50,
                desc: None,
                module: None,
                strategy: Some("batch-7".into()),
            }))
        );
        // 128 characters of 3 bytes each is fine: the limit counts characters.
        let desc = "é".repeat(MAX_DESC_CHARS);
        let ok = format!(r#"{{"id":"1","params":{{"step":"1","desc":"{desc}"}}}}"#);
        assert!(p(&t.progress, &ok).is_ok());
        // Millisecond timestamps, like the platform's own ids.
        let ms = r#"{"id":"1748736000000","params":{"version":"1.0.1"}}"#;
        assert!(p(&t.inform, ms).is_ok());
        // The request topic is Aliyun's; not a SagooIOT device topic.
        assert_eq!(p("/ota/device/request/pk/dn", "{}"), Ok(None));
        assert_eq!(p(&t.upgrade, "{}"), Ok(None));
    }

    #[test]
    fn violations_are_rejected() {
        let t = topics();
        let long = "x".repeat(MAX_DESC_CHARS + 1);
        let long_desc = format!(r#"{{"id":"1","params":{{"step":"1","desc":"{long}"}}}}"#);
        for (topic, payload) in [
            (&t.inform, r#"{"id":123,"params":{"version":"1.0.1"}}"#),
            (&t.inform, r#"{"id":"","params":{"version":"1.0.1"}}"#),
            (&t.inform, r#"{"params":{"version":"1.0.1"}}"#),
            (&t.inform, r#"{"id":"1","params":{"version":"1","x":"y"}}"#),
            (&t.inform, r#"{"id":"1","params":{"version":1}}"#),
            (
                &t.inform,
                r#"{"id":"1","params":{"version":"1","module":""}}"#,
            ),
            (&t.inform, r#"{"id":"1","params":{"module":"MCU"}}"#),
            (
                &t.inform,
                r#"{"id":"1","params":{"version":"1"},"ver":"1"}"#,
            ),
            (&t.progress, r#"{"id":1,"params":{"step":"1"}}"#),
            (&t.progress, r#"{"id":"1","params":{"step":1}}"#),
            (&t.progress, r#"{"id":"1","params":{"step":"-5"}}"#),
            (&t.progress, r#"{"id":"1","params":{"step":"0"}}"#),
            (&t.progress, long_desc.as_str()),
            (
                &t.progress,
                r#"{"id":"1","params":{"step":"1","strategy":7}}"#,
            ),
            (
                &t.progress,
                r#"{"id":"1","params":{"step":"1","strategy":""}}"#,
            ),
            (
                &t.progress,
                r#"{"id":"1","params":{"step":"1","batch":"b"}}"#,
            ),
        ] {
            assert!(
                p(topic, payload).is_err(),
                "{topic} {payload} should be rejected"
            );
        }
    }

    #[test]
    fn progress_must_echo_module_and_strategy() {
        let prog = |module: Option<&str>, strategy: Option<&str>| DeviceMsg::Progress {
            step: 5,
            desc: None,
            module: module.map(Into::into),
            strategy: strategy.map(Into::into),
        };
        let b7 = Some("batch-7");
        assert!(check_progress(&prog(None, b7), None, b7).is_ok());
        assert!(check_progress(&prog(Some("default"), b7), None, b7).is_ok());
        assert!(check_progress(&prog(Some("MCU"), b7), Some("MCU"), b7).is_ok());
        assert!(check_progress(&prog(None, None), None, None).is_ok());
        assert!(check_progress(&prog(None, None), None, b7).is_err());
        assert!(check_progress(&prog(None, Some("batch-8")), None, b7).is_err());
        assert!(check_progress(&prog(None, Some("BATCH-7")), None, b7).is_err());
        assert!(check_progress(&prog(None, b7), None, None).is_err());
        assert!(check_progress(&prog(None, b7), Some("MCU"), b7).is_err());
        assert!(check_progress(&prog(Some("DSP"), b7), Some("MCU"), b7).is_err());
    }

    #[test]
    fn upgrade_message_shape() {
        let fw = Firmware {
            version: "2.0.0".into(),
            url: "http://h/firmware.bin".into(),
            size: 432945,
            md5: "93230c3bde425a9d7984a594ac55ea1e".into(),
            sha256: "ab".repeat(32),
        };
        let v: Value = serde_json::from_str(&upgrade_message(
            &fw,
            1626969597470,
            SignMethod::Md5,
            None,
            Some(DEFAULT_STRATEGY),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"code":"200","data":{"size":432945,"version":"2.0.0","url":"http://h/firmware.bin",
                   "sign":"93230c3bde425a9d7984a594ac55ea1e","signMethod":"MD5",
                   "extData":{"key1":"value1","strategy":"batch-7",
                              "_package_udi":"{\"ota_notice\":\"demo\"}"}},
                   "id":1626969597470u64,"message":"success"})
        );
        let v: Value = serde_json::from_str(&upgrade_message(
            &fw,
            1,
            SignMethod::Sha256,
            Some("MCU"),
            None,
        ))
        .unwrap();
        assert_eq!(v["data"]["sign"], "ab".repeat(32));
        assert_eq!(v["data"]["signMethod"], "SHA256");
        assert_eq!(v["data"]["module"], "MCU");
        assert_eq!(
            v["data"]["extData"],
            json!({"key1":"value1","_package_udi":"{\"ota_notice\":\"demo\"}"})
        );
    }

    #[test]
    fn a_delta_old_image_goes_into_ext_data() {
        let fw = Firmware {
            version: "2.0.0".into(),
            url: "http://h/patch.bin".into(),
            size: 100,
            md5: "93230c3bde425a9d7984a594ac55ea1e".into(),
            sha256: "ab".repeat(32),
        };
        let claim = OldImageClaim::of(b"old");
        let text =
            upgrade_message_with(&fw, 1, SignMethod::Sha256, None, (Some("b"), Some(&claim)));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["data"]["extData"],
            json!({"key1":"value1","strategy":"b","_package_udi":"{\"ota_notice\":\"demo\"}",
                   "_delta_old_size":3,
                   "_delta_old_sha256":"cba06b5736faf67e54b07b561eae94395e774c517a7d910a54369e1263ccfbd4"})
        );
    }

    #[test]
    fn sign_method_parses_any_case() {
        assert_eq!("md5".parse(), Ok(SignMethod::Md5));
        assert_eq!("Md5".parse(), Ok(SignMethod::Md5));
        assert_eq!("SHA256".parse(), Ok(SignMethod::Sha256));
        assert!("sha1".parse::<SignMethod>().is_err());
    }
}
