//! SagooIOT OTA (`docs/protocols.md`, "SagooIOT"; the tests quote the platform's document, "the
//! seed", verbatim): the Aliyun topic family
//! `/ota/device/{inform,upgrade,progress}` with modules, a choice of digest and free-form
//! `extData`.
//!
//! Upgrade: `{"code":"200","data":{"size":N,"version":"…","url":"https://…","sign":"<hex>",
//! "signMethod":"MD5"|"SHA256"[,"module":"…"][,"extData":{…}][,"dProtocol":"…"]},"id":N,"message":"success"}`.
//! Version: `{"id":"N","params":{"version":"…"[,"module":"…"]}}` (`id` is a string).
//! Progress: `{"id":"N","params":{"step":"<-4..100>","desc":"<≤128 chars>"[,"module":"…"][,"strategy":"…"]}}`.

use super::aliyun::{encode_with, Style};
use super::fields::{
    check_url, parse_object, take_digest, take_nonempty_str, take_object, take_opt_str,
    take_raw_str, take_size, take_str,
};
use super::json::{JsonError, Object, Value};
use super::package;
use super::{
    Channel, DeltaRequirement, DigestKind, Downstream, Facts, Limits, NoticeError, Report,
    SetJsonError, UpgradeNotice,
};

/// SagooIOT: Aliyun's topics and success rule, no request topic, ids of any size (13-digit ms),
/// `step` 1..100, and `extData` in upgrade messages.
pub(crate) const FACTS: Facts = Facts {
    name: "sagoo",
    id: 1,
    can_request_upgrade: false,
    success_is_version_report: true,
    max_message_id: u64::MAX,
    sends_zero_percent: false,
    carries_ext_data: true,
    carries_packages: true,
    topics: super::aliyun::topics,
};

/// The `code` of a successful upgrade notification.
pub const SUCCESS_CODE: &str = "200";

/// SagooIOT's spelling of the Aliyun-family upstream messages: string ids, `desc` of at most
/// 128 characters, and the batch id (`extData.strategy`) echoed in progress reports.
pub const STYLE: Style = Style {
    id_as_string: true,
    desc_max_chars: 128,
    echo_batch: true,
};

/// Decodes an upgrade notification into `out` (which is scratch: partly written on error): one
/// file, a package of several (`files`), over HTTP(S) or MQTT (`dProtocol`). Whether a session
/// takes packages and downloads over MQTT is the engine's to say; `out.transfer` tells a
/// download over MQTT even when another field is wrong (it is marked before any other field
/// is decoded), and the module and batch are decoded first, for a refusal report.
pub fn decode(
    payload: &[u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    let data = upgrade_data(payload, limits, out)?;
    decode_data(&data, out).map(|()| Downstream::Upgrade)
}

/// The `data` object of a successful upgrade message; `out` cleared, with its message id.
fn upgrade_data<'a>(
    payload: &'a [u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Object<'a>, NoticeError> {
    let msg = parse_object(payload, limits)?;
    let code = take_raw_str(&msg, "code")?;
    if !code.eq_str(SUCCESS_CODE) {
        return Err(NoticeError::NotSuccess);
    }
    let data = take_object(&msg, "data")?;
    out.clear();
    out.message_id = msg.get("id").and_then(message_id).unwrap_or(0);
    Ok(data)
}

/// The fields of `data`, those a refusal report needs (module, batch) first. The seed gives
/// `url` and `sign` only for a package of one file: a `files` array describes the others.
fn decode_data(data: &Object<'_>, out: &mut UpgradeNotice) -> Result<(), NoticeError> {
    let mqtt = package::mark_transfer(data, out);
    take_opt_str(data, "module", &mut out.module)?;
    take_ext_data(data, out)?;
    take_nonempty_str(data, "version", &mut out.version)?;
    // A transfer error waits until size and digest are decoded, for the refusal report.
    let transfer = package::take_transfer(data);
    if package::has_files(data) {
        out.transfer = transfer?;
        return package::take_files(data, package::named_sign_method(data)?, out);
    }
    out.size = take_size(data, "size")?;
    if !mqtt {
        take_str(data, "url", &mut out.url)?;
        check_url(&out.url)?;
    }
    out.digest_kind = sign_method(data)?;
    take_digest(data, "sign", out.digest_kind, &mut out.digest)?;
    out.transfer = package::single_file_transfer(data, transfer?)?;
    Ok(())
}

/// `id` as a number (the seed's form) or as a string of digits (the upstream form).
fn message_id(id: Value<'_>) -> Option<u64> {
    match id {
        Value::Str(s) => s.as_plain()?.parse().ok(),
        other => other.as_u64(),
    }
}

/// The digest `signMethod` names, in any letter case. When it is absent the digest length
/// decides (32 hex digits MD5, 64 SHA256); other lengths fail as a bad `sign`.
fn sign_method(data: &Object<'_>) -> Result<DigestKind, NoticeError> {
    Ok(package::named_sign_method(data)?
        .unwrap_or_else(|| package::kind_by_length(data.get("sign"))))
}

/// `extData` into `out.ext_data` as its exact JSON text, its `strategy` (batch id) into
/// `out.batch` and a delta patch's old-image requirement into `out.delta_old`. The seed calls the field a "JSON string", so a string holding a JSON object is
/// accepted too (stored unescaped); `null` and `""` count as absent.
fn take_ext_data(data: &Object<'_>, out: &mut UpgradeNotice) -> Result<(), NoticeError> {
    const FIELD: &str = "extData";
    let too_long = |len, max| NoticeError::TooLong {
        field: FIELD,
        len,
        max,
    };
    match data.get(FIELD) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Str(s)) if s.raw().is_empty() => return Ok(()),
        Some(Value::Object(ext)) => {
            let text = core::str::from_utf8(ext.raw())
                .map_err(|_| NoticeError::Json(JsonError::Syntax))?;
            out.ext_data.set(text).map_err(|e| too_long(e.len, e.max))?;
        }
        Some(Value::Str(s)) => out.ext_data.set_json(s).map_err(|e| match e {
            SetJsonError::TooLong(t) => too_long(t.len, t.max),
            SetJsonError::Json(j) => NoticeError::Json(j),
        })?,
        Some(other) => {
            return Err(NoticeError::WrongType {
                field: FIELD,
                expected: "object",
                found: other.kind(),
            })
        }
    }
    let ext = Object::parse(out.ext_data.as_bytes()).map_err(|_| NoticeError::WrongType {
        field: FIELD,
        expected: "object",
        found: "string",
    })?;
    out.delta_old = DeltaRequirement::from_ext_data(&ext)?;
    // Only a string is a batch id to echo; other labels are the application's business.
    if let Some(Value::Str(_)) = ext.get("strategy") {
        take_str(&ext, "strategy", &mut out.batch)?;
    }
    Ok(())
}

/// Encodes a device report; `None` when SagooIOT has no message for it (acceptance, start of
/// the download).
pub fn encode(
    report: &Report<'_>,
    id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    encode_with(STYLE, report, id, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FailureCause, Transfer};

    /// The seed's version report, verbatim.
    const SEED_INFORM: &str = r#"{
  "id": "123",
  "params": {
    "version": "1.0.1",
    "module": "MCU"
  }
}
"#;

    /// The seed's upgrade message, verbatim (its markdown indentation included). Its `sign` is
    /// redacted (`***`); [`upgrade_message`] completes it.
    const SEED_UPGRADE: &str = r#"       {
           "code": "200",
           "data": {
               "size": 432945,
               "version": "2.0.0",
               "url": "https://***/nop***.tar.gz?Expires=1502955804&OSSAccessKeyId=***&Signature=XfgJu7P6DW***qAKU%3D&security-token=***Tz2IHtIf3***",
               "sign": "93230c3bde425a9d***",
               "signMethod": "MD5",
               "module": "MCU",
               "extData":{
                   "key1":"value1",
                   "key2":"value2",
                   "_package_udi":"{\"ota_notice\":\"升级底层摄像头驱动，解决视频图像模糊的问题。\"}"
               }
           },
           "id": 1626969597470,
           "message": "success"
       }
"#;

    /// The seed's progress report, verbatim.
    const SEED_PROGRESS: &str = r#"{
    "id": "123",
    "params": {
        "step": "-1",
        "desc": "OTA升级失败，请求不到升级包信息。",
        "module": "MCU"
    }
}
"#;

    const SEED_SIGN_REDACTED: &str = "93230c3bde425a9d***";
    const MD5_HEX: &str = "93230c3bde425a9d7984a594ac55ea1e";
    const SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The seed's upgrade message with a complete MD5 `sign`.
    fn upgrade_message() -> String {
        SEED_UPGRADE.replace(SEED_SIGN_REDACTED, MD5_HEX)
    }

    /// The JSON text with the whitespace between tokens removed (strings kept intact).
    fn compact(json: &str) -> String {
        let (mut out, mut in_str, mut esc) = (String::new(), false, false);
        for c in json.chars() {
            if in_str {
                out.push(c);
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
            } else if !c.is_whitespace() {
                in_str = c == '"';
                out.push(c);
            }
        }
        out
    }

    fn notice() -> UpgradeNotice {
        UpgradeNotice::new(&Limits::default())
    }

    fn decoded(msg: &str) -> UpgradeNotice {
        let mut n = notice();
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade),
            "{msg}"
        );
        n
    }

    fn reject(msg: &str) -> NoticeError {
        let mut n = notice();
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap_err()
    }

    /// A compact upgrade message with `data` members `extra` after the required ones.
    fn with_data(sign: &str, extra: &str) -> String {
        format!(
            r#"{{"code":"200","data":{{"size":1024,"version":"2.0.0","url":"https://h/f.bin","sign":"{sign}"{extra}}},"id":7,"message":"success"}}"#
        )
    }

    fn hex(n: &UpgradeNotice) -> String {
        let mut buf = [0u8; 64];
        crate::digest::to_hex(n.digest(), &mut buf).to_string()
    }

    fn encoded(report: Report<'_>, id: u64) -> (Channel, String) {
        let mut buf = [0u8; 1024];
        let (ch, n) = encode(&report, id, &mut buf).unwrap().unwrap();
        (ch, String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    #[test]
    fn decodes_the_seed_upgrade_message_field_by_field() {
        let n = decoded(&upgrade_message());
        assert_eq!(n.size, 432945);
        assert_eq!(n.version.as_str(), "2.0.0");
        assert_eq!(
            n.url.as_str(),
            "https://***/nop***.tar.gz?Expires=1502955804&OSSAccessKeyId=***&Signature=XfgJu7P6DW***qAKU%3D&security-token=***Tz2IHtIf3***"
        );
        assert_eq!(n.digest_kind, DigestKind::Md5);
        assert_eq!(n.digest().len(), 16);
        assert_eq!(hex(&n), MD5_HEX);
        assert_eq!(n.module.as_str(), "MCU");
        assert_eq!(n.module_name(), "MCU");
        let ext = r#"{
                   "key1":"value1",
                   "key2":"value2",
                   "_package_udi":"{\"ota_notice\":\"升级底层摄像头驱动，解决视频图像模糊的问题。\"}"
               }"#;
        assert_eq!(n.ext_data.as_str(), ext, "extData kept verbatim");
        assert!(n.batch.is_empty(), "no strategy in the seed's extData");
        assert_eq!(n.message_id, 1626969597470);
        assert!(n.task_id.is_empty());
        assert!(n.current_version.is_empty());

        // The application gets extData untouched: its `_package_udi` is JSON inside a string.
        let ext = Object::parse(n.ext_data.as_bytes()).unwrap();
        let udi = ext.get("_package_udi").unwrap().as_str().unwrap();
        let mut buf = [0u8; 256];
        let len = udi.unescape_into(&mut buf).unwrap();
        let udi = Object::parse(&buf[..len]).unwrap();
        assert!(udi
            .get("ota_notice")
            .unwrap()
            .as_str()
            .unwrap()
            .eq_str("升级底层摄像头驱动，解决视频图像模糊的问题。"));
    }

    #[test]
    fn the_seed_upgrade_message_compacted_decodes_the_same() {
        let n = decoded(&compact(&upgrade_message()));
        let full = decoded(&upgrade_message());
        assert!(n.same_image(&full));
        assert_eq!(n.url, full.url);
        assert_eq!(n.ext_data.as_str(), compact(full.ext_data.as_str()));
    }

    #[test]
    fn the_seed_redacted_sign_is_rejected() {
        assert_eq!(reject(SEED_UPGRADE), NoticeError::BadDigest("sign"));
    }

    #[test]
    fn encodes_the_seed_version_report() {
        let (ch, text) = encoded(
            Report::Version {
                version: "1.0.1",
                module: Some("MCU"),
            },
            123,
        );
        assert_eq!(ch, Channel::Inform);
        assert_eq!(text, compact(SEED_INFORM));
        assert_eq!(
            text,
            r#"{"id":"123","params":{"version":"1.0.1","module":"MCU"}}"#
        );
    }

    #[test]
    fn encodes_the_seed_progress_report() {
        let mut n = notice();
        n.module.set("MCU").unwrap();
        let (ch, text) = encoded(
            Report::Failure {
                cause: FailureCause::UpgradeFailed,
                desc: "OTA升级失败，请求不到升级包信息。",
                notice: &n,
            },
            123,
        );
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_PROGRESS));
        assert_eq!(
            text,
            r#"{"id":"123","params":{"step":"-1","desc":"OTA升级失败，请求不到升级包信息。","module":"MCU"}}"#
        );
    }

    #[test]
    fn sign_method_in_any_letter_case() {
        for method in ["MD5", "md5", "Md5", "mD5"] {
            let n = decoded(&with_data(MD5_HEX, &format!(r#","signMethod":"{method}""#)));
            assert_eq!(n.digest_kind, DigestKind::Md5, "{method}");
            assert_eq!(hex(&n), MD5_HEX);
        }
        for method in ["SHA256", "sha256", "Sha256", "sHA256"] {
            let n = decoded(&with_data(
                SHA256_HEX,
                &format!(r#","signMethod":"{method}""#),
            ));
            assert_eq!(n.digest_kind, DigestKind::Sha256, "{method}");
        }
    }

    #[test]
    fn sha256_digest() {
        let upper = SHA256_HEX.to_ascii_uppercase();
        let n = decoded(&with_data(&upper, r#","signMethod":"SHA256""#));
        assert_eq!(n.digest_kind, DigestKind::Sha256);
        assert_eq!(n.digest().len(), 32);
        assert_eq!(hex(&n), SHA256_HEX);
        // The digest length must match the method.
        assert_eq!(
            reject(&with_data(SHA256_HEX, r#","signMethod":"MD5""#)),
            NoticeError::BadDigest("sign")
        );
        assert_eq!(
            reject(&with_data(MD5_HEX, r#","signMethod":"SHA256""#)),
            NoticeError::BadDigest("sign")
        );
        assert_eq!(
            reject(&with_data(
                &SHA256_HEX.replace('e', "g"),
                r#","signMethod":"sha256""#
            )),
            NoticeError::BadDigest("sign")
        );
    }

    #[test]
    fn unknown_or_missing_sign_method() {
        for method in ["SHA1", "SHA-256", "", "MD5 "] {
            assert_eq!(
                reject(&with_data(MD5_HEX, &format!(r#","signMethod":"{method}""#))),
                NoticeError::Unsupported("signMethod must be MD5 or SHA256"),
                "{method:?}"
            );
        }
        assert!(matches!(
            reject(&with_data(MD5_HEX, r#","signMethod":5"#)),
            NoticeError::WrongType {
                field: "signMethod",
                ..
            }
        ));
        // Absent: the digest's length tells.
        assert_eq!(
            decoded(&with_data(MD5_HEX, "")).digest_kind,
            DigestKind::Md5
        );
        assert_eq!(
            decoded(&with_data(SHA256_HEX, "")).digest_kind,
            DigestKind::Sha256
        );
        assert_eq!(
            reject(&with_data("93230c3b", "")),
            NoticeError::BadDigest("sign")
        );
    }

    #[test]
    fn ext_data_verbatim_and_strategy() {
        let ext = r#"{"key1":"value1","strategy":"batch-42","_package_udi":"{\"ota_notice\":\"x\\\"y\"}","n":[1,{"a":null}]}"#;
        let n = decoded(&with_data(
            MD5_HEX,
            &format!(r#","signMethod":"MD5","module":"MCU","extData":{ext}"#),
        ));
        assert_eq!(n.ext_data.as_str(), ext);
        assert_eq!(n.batch.as_str(), "batch-42");

        // The batch id is echoed in every progress report of the upgrade, not in the version.
        let (_, text) = encoded(
            Report::Progress {
                percent: 50,
                desc: "",
                notice: &n,
            },
            1,
        );
        assert_eq!(
            text,
            r#"{"id":"1","params":{"step":"50","desc":"","module":"MCU","strategy":"batch-42"}}"#
        );
        let (_, text) = encoded(Report::Burning { notice: &n }, 2);
        assert_eq!(
            text,
            r#"{"id":"2","params":{"step":"100","desc":"burning","module":"MCU","strategy":"batch-42"}}"#
        );
        let (_, text) = encoded(
            Report::Failure {
                cause: FailureCause::BurnFailed,
                desc: "flash",
                notice: &n,
            },
            3,
        );
        assert_eq!(
            text,
            r#"{"id":"3","params":{"step":"-4","desc":"flash","module":"MCU","strategy":"batch-42"}}"#
        );
        let (_, text) = encoded(
            Report::Success {
                version: "2.0.0",
                notice: &n,
            },
            4,
        );
        assert_eq!(
            text,
            r#"{"id":"4","params":{"version":"2.0.0","module":"MCU"}}"#
        );
    }

    #[test]
    fn strategy_is_unescaped_and_only_taken_from_a_string() {
        let n = decoded(&with_data(
            MD5_HEX,
            r#","extData":{"strategy":"b\u0031\"q"}"#,
        ));
        assert_eq!(n.batch.as_str(), "b1\"q");
        let (_, text) = encoded(Report::Burning { notice: &n }, 5);
        assert_eq!(
            text,
            r#"{"id":"5","params":{"step":"100","desc":"burning","strategy":"b1\"q"}}"#
        );
        for ext in [r#"{"strategy":12}"#, r#"{"strategy":null}"#, "{}"] {
            let n = decoded(&with_data(MD5_HEX, &format!(r#","extData":{ext}"#)));
            assert!(n.batch.is_empty(), "{ext}");
            assert_eq!(n.ext_data.as_str(), ext);
        }
        let long = "b".repeat(Limits::default().task_id + 1);
        assert!(matches!(
            reject(&with_data(
                MD5_HEX,
                &format!(r#","extData":{{"strategy":"{long}"}}"#)
            )),
            NoticeError::TooLong {
                field: "strategy",
                ..
            }
        ));
    }

    #[test]
    fn ext_data_absent_null_string_or_wrong() {
        for extra in ["", r#","extData":null"#, r#","extData":"""#] {
            let n = decoded(&with_data(MD5_HEX, extra));
            assert!(n.ext_data.is_empty(), "{extra}");
            assert!(n.batch.is_empty());
        }
        // The seed calls extData a "JSON string": a string holding an object is taken unescaped.
        let n = decoded(&with_data(
            MD5_HEX,
            r#","extData":"{\"key1\":\"value1\",\"strategy\":\"s1\"}""#,
        ));
        assert_eq!(n.ext_data.as_str(), r#"{"key1":"value1","strategy":"s1"}"#);
        assert_eq!(n.batch.as_str(), "s1");
        for extra in [
            r#","extData":"key1""#,
            r#","extData":[1]"#,
            r#","extData":3"#,
        ] {
            assert!(
                matches!(
                    reject(&with_data(MD5_HEX, extra)),
                    NoticeError::WrongType {
                        field: "extData",
                        expected: "object",
                        ..
                    }
                ),
                "{extra}"
            );
        }
        let big = format!(r#"{{"k":"{}"}}"#, "v".repeat(Limits::default().ext_data));
        assert!(matches!(
            reject(&with_data(MD5_HEX, &format!(r#","extData":{big}"#))),
            NoticeError::TooLong {
                field: "extData",
                ..
            }
        ));
    }

    #[test]
    fn a_download_over_mqtt_is_marked_and_the_rest_decoded_for_a_refusal_report() {
        // No streamId: refused, yet marked as over MQTT (a session with that off refuses it by
        // that), with what a refusal report needs decoded.
        let mut n = notice();
        let msg = with_data(
            MD5_HEX,
            r#","signMethod":"MD5","module":"MCU","extData":{"strategy":"s9"},"dProtocol":"MQTT""#,
        );
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Err(NoticeError::Missing("streamId"))
        );
        assert!(matches!(n.transfer, Transfer::Mqtt { .. }));
        assert_eq!(n.module_name(), "MCU");
        assert_eq!(n.batch.as_str(), "s9");
        assert_eq!(n.version.as_str(), "2.0.0");
        assert_eq!(n.size, 1024);
        assert_eq!(hex(&n), MD5_HEX);
        assert_eq!(n.message_id, 7);
        // The refusal report names the module and echoes the batch.
        let (ch, text) = encoded(
            Report::Failure {
                cause: FailureCause::UpgradeFailed,
                desc: "dProtocol: packages over MQTT are not supported",
                notice: &n,
            },
            8,
        );
        assert_eq!(ch, Channel::Progress);
        assert_eq!(
            text,
            r#"{"id":"8","params":{"step":"-1","desc":"dProtocol: packages over MQTT are not supported","module":"MCU","strategy":"s9"}}"#
        );

        // Packages over MQTT come without a URL: decoded whole with their stream.
        let msg = r#"{"code":"200","data":{"size":10,"version":"3","sign":"93230c3bde425a9d7984a594ac55ea1e","signMethod":"Md5","module":"WIFI","dProtocol":"mqtt","streamId":4,"streamFileId":1},"id":1}"#;
        let mut n = notice();
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(
            n.transfer,
            Transfer::Mqtt {
                stream_id: 4,
                file_id: 1
            }
        );
        assert_eq!(n.module_name(), "WIFI");
        assert!(n.url.is_empty());

        // An empty or null dProtocol is no MQTT delivery; another type is, and a wrong one.
        for extra in [r#","dProtocol":"""#, r#","dProtocol":null"#] {
            let n = decoded(&with_data(MD5_HEX, extra));
            assert_eq!(n.transfer, Transfer::Http);
        }
        let mut n = notice();
        let number = with_data(MD5_HEX, r#","dProtocol":1"#);
        assert!(matches!(
            decode(number.as_bytes(), &Limits::default(), &mut n),
            Err(NoticeError::WrongType {
                field: "dProtocol",
                ..
            })
        ));
        assert!(matches!(n.transfer, Transfer::Mqtt { .. }));
    }

    #[test]
    fn failure_codes_are_rejected() {
        let ok = upgrade_message();
        for code in ["1000", "201", "", "500"] {
            let msg = ok.replace(r#""code": "200""#, &format!(r#""code": "{code}""#));
            assert_eq!(reject(&msg), NoticeError::NotSuccess, "{code}");
        }
        let msg = ok.replace(r#""code": "200""#, r#""code": 200"#);
        assert!(matches!(
            reject(&msg),
            NoticeError::WrongType { field: "code", .. }
        ));
        assert_eq!(reject(r#"{"data":{}}"#), NoticeError::Missing("code"));
        assert_eq!(reject(r#"{"code":"200"}"#), NoticeError::Missing("data"));
    }

    #[test]
    fn required_fields_and_their_checks() {
        let full = with_data(MD5_HEX, r#","signMethod":"MD5""#);
        for field in ["size", "version", "url", "sign"] {
            let data_start = full.find(r#""data":{"#).unwrap() + 8;
            let data_end = full.find('}').unwrap();
            let kept: Vec<&str> = full[data_start..data_end]
                .split(',')
                .filter(|kv| !kv.starts_with(&format!("\"{field}\"")))
                .collect();
            let msg = format!(r#"{{"code":"200","data":{{{}}}}}"#, kept.join(","));
            assert_eq!(reject(&msg), NoticeError::Missing(field), "{msg}");
        }
        let with = |size: &str, url: &str, version: &str| {
            format!(
                r#"{{"code":"200","data":{{"size":{size},"version":"{version}","url":"{url}","sign":"{MD5_HEX}","signMethod":"MD5"}}}}"#
            )
        };
        assert_eq!(reject(&with("0", "https://h/f", "2")), NoticeError::BadSize);
        assert_eq!(
            reject(&with("4294967296", "https://h/f", "2")),
            NoticeError::BadSize
        );
        assert_eq!(reject(&with("10", "ftp://h/f", "2")), NoticeError::BadUrl);
        assert_eq!(
            reject(&with("10", "https://h/f", "")),
            NoticeError::Empty("version")
        );
        assert!(matches!(
            reject(&with("10", "https://h/f", &"9".repeat(64))),
            NoticeError::TooLong {
                field: "version",
                ..
            }
        ));
        assert!(matches!(reject("not json"), NoticeError::Json(_)));
        let limits = Limits {
            downstream: 16,
            ..Limits::default()
        };
        let mut n = notice();
        assert!(matches!(
            decode(upgrade_message().as_bytes(), &limits, &mut n),
            Err(NoticeError::Oversize { .. })
        ));
    }

    #[test]
    fn module_absent_means_default_and_unknown_fields_are_accepted() {
        let n = decoded(&with_data(
            MD5_HEX,
            r#","signMethod":"MD5","extra":[1,{"x":true}],"module2":"A""#,
        ));
        assert!(n.module.is_empty());
        assert_eq!(n.module_name(), "default");
        let msg = r#"{"code":"200","hint":{"a":1},"data":{"size":1,"version":"1","url":"http://h/f","sign":"93230c3bde425a9d7984a594ac55ea1e","signMethod":"MD5"},"id":"42","message":"success","extra":null}"#;
        let n = decoded(msg);
        assert_eq!(n.message_id, 42, "a string id is read too");
        assert_eq!(decoded(&with_data(MD5_HEX, "")).message_id, 7);
        let msg = r#"{"code":"200","data":{"size":1,"version":"1","url":"http://h/f","sign":"93230c3bde425a9d7984a594ac55ea1e"}}"#;
        assert_eq!(decoded(msg).message_id, 0, "no id");
    }

    #[test]
    fn a_new_notice_replaces_the_previous_one() {
        let mut n = notice();
        let first = with_data(MD5_HEX, r#","module":"MCU","extData":{"strategy":"s"}"#);
        decode(first.as_bytes(), &Limits::default(), &mut n).unwrap();
        let second = with_data(SHA256_HEX, r#","signMethod":"SHA256""#);
        decode(second.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert!(n.module.is_empty());
        assert!(n.ext_data.is_empty());
        assert!(n.batch.is_empty());
        assert_eq!(n.digest_kind, DigestKind::Sha256);
    }

    #[test]
    fn desc_is_cut_to_128_characters() {
        let n = notice();
        let desc: String = "é升a😀".chars().cycle().take(200).collect();
        assert_eq!(desc.chars().count(), 200);
        let (_, text) = encoded(
            Report::Failure {
                cause: FailureCause::DownloadFailed,
                desc: &desc,
                notice: &n,
            },
            1,
        );
        let cut: String = desc.chars().take(128).collect();
        assert_eq!(
            text,
            format!(r#"{{"id":"1","params":{{"step":"-2","desc":"{cut}"}}}}"#)
        );
        let msg = Object::parse(text.as_bytes()).unwrap();
        let params = msg.get("params").unwrap().as_object().unwrap();
        let sent = params.get("desc").unwrap().as_str().unwrap();
        assert_eq!(sent.chars().count(), 128);
        // Escapes do not count against the limit: 128 characters, each a quote.
        let quotes = "\"".repeat(200);
        let (_, text) = encoded(
            Report::Progress {
                percent: 3,
                desc: &quotes,
                notice: &n,
            },
            2,
        );
        let msg = Object::parse(text.as_bytes()).unwrap();
        let params = msg.get("params").unwrap().as_object().unwrap();
        assert_eq!(
            params
                .get("desc")
                .unwrap()
                .as_str()
                .unwrap()
                .chars()
                .count(),
            128
        );
        // Short descs are sent whole.
        let (_, text) = encoded(
            Report::Progress {
                percent: 3,
                desc: "下载中",
                notice: &n,
            },
            3,
        );
        assert_eq!(text, r#"{"id":"3","params":{"step":"3","desc":"下载中"}}"#);
    }

    #[test]
    fn every_report() {
        let mut n = notice();
        n.module.set("MCU").unwrap();
        let mut buf = [0u8; 256];
        assert_eq!(
            encode(&Report::Accepted { notice: &n }, 1, &mut buf),
            Ok(None)
        );
        assert_eq!(
            encode(&Report::Upgrading { notice: &n }, 1, &mut buf),
            Ok(None)
        );

        let (ch, text) = encoded(Report::Burning { notice: &n }, 10);
        assert_eq!(ch, Channel::Progress);
        assert_eq!(
            text,
            r#"{"id":"10","params":{"step":"100","desc":"burning","module":"MCU"}}"#
        );

        let (ch, text) = encoded(
            Report::Success {
                version: "2.0.0",
                notice: &n,
            },
            11,
        );
        assert_eq!(ch, Channel::Inform);
        assert_eq!(
            text,
            r#"{"id":"11","params":{"version":"2.0.0","module":"MCU"}}"#
        );

        let (ch, text) = encoded(
            Report::Progress {
                percent: 100,
                desc: "",
                notice: &n,
            },
            12,
        );
        assert_eq!(ch, Channel::Progress);
        assert_eq!(
            text,
            r#"{"id":"12","params":{"step":"100","desc":"","module":"MCU"}}"#
        );

        let causes = [
            (FailureCause::UpgradeFailed, "-1"),
            (FailureCause::DownloadTimeout, "-2"),
            (FailureCause::NotFound, "-2"),
            (FailureCause::UrlExpired, "-2"),
            (FailureCause::DownloadFailed, "-2"),
            (FailureCause::DigestMismatch, "-3"),
            (FailureCause::BurnFailed, "-4"),
        ];
        for (cause, step) in causes {
            let (ch, text) = encoded(
                Report::Failure {
                    cause,
                    desc: "x",
                    notice: &n,
                },
                13,
            );
            assert_eq!(ch, Channel::Progress);
            assert_eq!(
                text,
                format!(r#"{{"id":"13","params":{{"step":"{step}","desc":"x","module":"MCU"}}}}"#),
                "{cause:?}"
            );
        }

        // The default module is not named.
        let d = notice();
        let (_, text) = encoded(
            Report::Success {
                version: "2.0.0",
                notice: &d,
            },
            14,
        );
        assert_eq!(text, r#"{"id":"14","params":{"version":"2.0.0"}}"#);
        for module in [None, Some("default")] {
            let (ch, text) = encoded(
                Report::Version {
                    version: "1.0.0",
                    module,
                },
                15,
            );
            assert_eq!(ch, Channel::Inform);
            assert_eq!(text, r#"{"id":"15","params":{"version":"1.0.0"}}"#);
        }
        let (ch, text) = encoded(
            Report::Request {
                version: "1.0.0",
                module: Some("MCU"),
            },
            u64::MAX,
        );
        assert_eq!(ch, Channel::Request);
        assert_eq!(
            text,
            r#"{"id":"18446744073709551615","params":{"version":"1.0.0","module":"MCU"}}"#
        );
    }

    #[test]
    fn encoding_into_a_short_buffer_overflows_cleanly() {
        let mut buf = [0u8; 20];
        let r = encode(
            &Report::Version {
                version: "1.0.1",
                module: Some("MCU"),
            },
            123,
            &mut buf,
        );
        assert_eq!(r, Err(JsonError::Overflow));
    }
}
