//! Aliyun IoT OTA: `/ota/device/{inform,upgrade,progress,request}`. The rules and the readings
//! taken are in `docs/protocols.md` ("Aliyun"); the tests quote the platform's document ("the
//! seed") verbatim.
//!
//! Upgrade: `{"code":"1000","data":{"size":N,"version":"…","url":"…","md5":"<32 hex>"},"id":N,"message":"success"}`.
//! Version / request: `{"id":N,"params":{"version":"…"[,"module":"…"]}}`.
//! Progress: `{"id":N,"params":{"step":"<-4..100>","desc":"…"[,"module":"…"]}}`.

use super::fields::{
    check_url, parse_object, take_digest, take_nonempty_str, take_object, take_opt_str,
    take_raw_str, take_size, take_str,
};
use super::json::{JsonError, Object, Value, Writer};
use super::package;
use super::{
    Channel, DeltaRequirement, DigestKind, Downstream, Facts, Limits, NoticeError, Report, Topics,
    UpgradeNotice,
};

/// Aliyun: the device may request the upgrade (and a fresh URL); the new version's report is the
/// success; message ids are 0..=2^32-1 as documented; `step` runs 1..100, so no "0" is sent.
pub(crate) const FACTS: Facts = Facts {
    name: "aliyun",
    id: 0,
    can_request_upgrade: true,
    success_is_version_report: true,
    max_message_id: u32::MAX as u64,
    sends_zero_percent: false,
    carries_ext_data: false,
    carries_packages: true,
    topics,
};

/// Aliyun's topics: `/ota/device/{upgrade,inform,progress,request}/{pk}/{dn}` (SagooIOT uses
/// them too).
pub(crate) fn topics(pk: &str, dn: &str) -> Topics {
    Topics {
        downstream: format!("/ota/device/upgrade/{pk}/{dn}"),
        inform: format!("/ota/device/inform/{pk}/{dn}"),
        progress: format!("/ota/device/progress/{pk}/{dn}"),
        request: format!("/ota/device/request/{pk}/{dn}"),
    }
}

/// The `code` of a successful upgrade notification.
pub const SUCCESS_CODE: &str = "1000";

/// Decodes an upgrade notification into `out` (which is scratch: partly written on error):
/// iotkit v2.3's single file, or Link SDK 4.x's package (several `files`) or download over MQTT
/// (`dProtocol`). Whether a session takes those is the engine's to say; `out.transfer` tells a
/// download over MQTT even when another field is wrong (it is marked before any other field
/// is decoded).
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
    out.message_id = msg.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(data)
}

/// The fields of `data`: iotkit v2.3's single file (`url`, `md5`), or Link SDK 4.x's package
/// (`files`) or download over MQTT (`dProtocol`, `streamId`, `streamFileId`), whose digests are
/// `sign`/`fileSign` by `signMethod`.
fn decode_data(data: &Object<'_>, out: &mut UpgradeNotice) -> Result<(), NoticeError> {
    if package::mark_transfer(data, out) || package::has_files(data) {
        return decode_link_sdk_package(data, out);
    }
    take_delta_requirement(data, out)?;
    out.size = take_size(data, "size")?;
    take_nonempty_str(data, "version", &mut out.version)?;
    take_str(data, "url", &mut out.url)?;
    check_url(&out.url)?;
    out.digest_kind = DigestKind::Md5;
    take_digest(data, "md5", DigestKind::Md5, &mut out.digest)?;
    take_opt_str(data, "module", &mut out.module)
}

/// A Link SDK 4.x package: the module and version first (for a refusal report), then the
/// files or the single file over MQTT (its digest `md5` where given, else `sign`).
fn decode_link_sdk_package(data: &Object<'_>, out: &mut UpgradeNotice) -> Result<(), NoticeError> {
    take_opt_str(data, "module", &mut out.module)?;
    take_nonempty_str(data, "version", &mut out.version)?;
    take_delta_requirement(data, out)?;
    let transfer = package::take_transfer(data);
    let method = package::named_sign_method(data)?;
    if package::has_files(data) {
        out.transfer = transfer?;
        return package::take_files(data, method, out);
    }
    out.size = take_size(data, "size")?;
    if data.get("md5").is_some() {
        out.digest_kind = DigestKind::Md5;
        take_digest(data, "md5", DigestKind::Md5, &mut out.digest)?;
    } else {
        out.digest_kind = method.unwrap_or_else(|| package::kind_by_length(data.get("sign")));
        take_digest(data, "sign", out.digest_kind, &mut out.digest)?;
    }
    out.transfer = package::single_file_transfer(data, transfer?)?;
    Ok(())
}

/// A delta patch's old-image requirement from `extData` (Link SDK 4.x messages carry it, as
/// an object; docs/delta.md). Aliyun keeps no room for `extData`'s text, so only an object is
/// read; a string or any other value is left alone, as before.
fn take_delta_requirement(data: &Object<'_>, out: &mut UpgradeNotice) -> Result<(), NoticeError> {
    if let Some(Value::Object(ext)) = data.get("extData") {
        out.delta_old = DeltaRequirement::from_ext_data(&ext)?;
    }
    Ok(())
}

/// How an Aliyun-family platform spells its upstream messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// `"id":"7"` (SagooIOT) instead of `"id":7`.
    pub id_as_string: bool,
    /// Longest `desc`, in characters (cut on a character boundary).
    pub desc_max_chars: usize,
    /// Echo the upgrade's batch id as `params.strategy` in progress reports.
    pub echo_batch: bool,
}

/// Aliyun's own spelling.
pub const STYLE: Style = Style {
    id_as_string: false,
    desc_max_chars: usize::MAX,
    echo_batch: false,
};

/// Encodes a device report; returns its channel and length, or `None` when Aliyun has no
/// message for it (acknowledgements of a task).
pub fn encode(
    report: &Report<'_>,
    id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    encode_with(STYLE, report, id, out)
}

/// The module to name in a message: absent for the default module.
fn named_module(module: &str) -> Option<&str> {
    (!module.is_empty() && module != "default").then_some(module)
}

/// Encodes `report` in the Aliyun family's format with `style`.
pub fn encode_with(
    style: Style,
    report: &Report<'_>,
    id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    let mut w = Writer::new(out);
    if style.id_as_string {
        w.raw("{\"id\":\"").u64(id).raw("\",\"params\":{");
    } else {
        w.raw("{\"id\":").u64(id).raw(",\"params\":{");
    }
    let (channel, module, notice) = match *report {
        Report::Version { version, module } => {
            w.raw("\"version\":").string(version);
            (Channel::Inform, module.and_then(named_module), None)
        }
        Report::Request { version, module } => {
            w.raw("\"version\":").string(version);
            (Channel::Request, module.and_then(named_module), None)
        }
        Report::Success { version, notice } => {
            w.raw("\"version\":").string(version);
            (Channel::Inform, named_module(notice.module.as_str()), None)
        }
        Report::Accepted { .. } | Report::Upgrading { .. } => return Ok(None),
        Report::Progress {
            percent,
            desc,
            notice,
        } => {
            progress(&mut w, style, percent as i64, desc);
            (
                Channel::Progress,
                named_module(notice.module.as_str()),
                Some(notice),
            )
        }
        Report::Burning { notice } => {
            progress(&mut w, style, 100, "burning");
            (
                Channel::Progress,
                named_module(notice.module.as_str()),
                Some(notice),
            )
        }
        Report::Failure {
            cause,
            desc,
            notice,
        } => {
            progress(&mut w, style, cause.step() as i64, desc);
            (
                Channel::Progress,
                named_module(notice.module.as_str()),
                Some(notice),
            )
        }
    };
    if let Some(m) = module {
        w.raw(",\"module\":").string(m);
    }
    if let Some(n) = notice.filter(|n| style.echo_batch && !n.batch.is_empty()) {
        w.raw(",\"strategy\":").string(n.batch.as_str());
    }
    w.raw("}}");
    Ok(Some((channel, w.finish()?)))
}

fn progress(w: &mut Writer<'_>, style: Style, step: i64, desc: &str) {
    w.raw("\"step\":\"")
        .i64(step)
        .raw("\",\"desc\":")
        .string_truncated(desc, style.desc_max_chars);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's upgrade example, verbatim (its URL shortened to the part before the spaces).
    const SEED_UPGRADE: &str = r#"{
      "code": "1000",
      "data": {
        "size": 432945,
        "version": "2.0.0",
        "url": "https://iotx-ota-pre.oss-cn-shanghai.aliyuncs.com/nopoll_0.4.4.tar.gz?Expires=1502955804&OSSAccessKeyId=XXXXXXXXXXXXXXXXXXXX&Signature=XfgJu7P6DWWejstKJgXJEH0qAKU%3D",
        "md5": "93230c3bde425a9d7984a594ac55ea1e"
      },
      "id": 1507707025,
      "message": "success"
    }"#;

    fn notice() -> UpgradeNotice {
        UpgradeNotice::new(&Limits::default())
    }

    fn encoded(report: Report<'_>, id: u64) -> (Channel, String) {
        let mut buf = [0u8; 512];
        let (ch, n) = encode(&report, id, &mut buf).unwrap().unwrap();
        (ch, String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    #[test]
    fn decodes_the_seed_upgrade_message() {
        let mut n = notice();
        decode(SEED_UPGRADE.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert_eq!(n.size, 432945);
        assert_eq!(n.version.as_str(), "2.0.0");
        assert!(n
            .url
            .as_str()
            .starts_with("https://iotx-ota-pre.oss-cn-shanghai"));
        assert!(n.url.as_str().ends_with("XfgJu7P6DWWejstKJgXJEH0qAKU%3D"));
        let mut hex = [0u8; 64];
        assert_eq!(
            crate::digest::to_hex(n.digest(), &mut hex),
            "93230c3bde425a9d7984a594ac55ea1e"
        );
        assert_eq!(n.digest_kind, DigestKind::Md5);
        assert_eq!(n.message_id, 1507707025);
        assert_eq!(n.module_name(), "default");
    }

    #[test]
    fn decodes_the_protocol_sheet_compact_form_and_escaped_url() {
        let msg = br#"{"code":"1000","data":{"size":1,"version":"2.0.0","url":"https:\/\/h\/f.bin","md5":"93230C3BDE425A9D7984A594AC55EA1E","module":"MCU"},"id":1,"message":"success"}"#;
        let mut n = notice();
        decode(msg, &Limits::default(), &mut n).unwrap();
        assert_eq!(n.url.as_str(), "https://h/f.bin");
        assert_eq!(n.module_name(), "MCU");
    }

    #[test]
    fn encodes_the_seed_version_report() {
        let (ch, text) = encoded(
            Report::Version {
                version: "1.0.0",
                module: None,
            },
            1,
        );
        assert_eq!(ch, Channel::Inform);
        assert_eq!(text, r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    }

    #[test]
    fn encodes_module_version_and_request() {
        let (_, text) = encoded(
            Report::Version {
                version: "1.0.0",
                module: Some("MCU"),
            },
            7,
        );
        assert_eq!(
            text,
            r#"{"id":7,"params":{"version":"1.0.0","module":"MCU"}}"#
        );
        let (ch, text) = encoded(
            Report::Request {
                version: "1.0.0",
                module: None,
            },
            2,
        );
        assert_eq!(ch, Channel::Request);
        assert_eq!(text, r#"{"id":2,"params":{"version":"1.0.0"}}"#);
    }

    #[test]
    fn encodes_the_seed_progress_report_and_failure_steps() {
        let mut n = notice();
        let (ch, text) = encoded(
            Report::Progress {
                percent: 1,
                desc: " xxxxxxxx ",
                notice: &n,
            },
            1,
        );
        assert_eq!(ch, Channel::Progress);
        assert_eq!(
            text,
            r#"{"id":1,"params":{"step":"1","desc":" xxxxxxxx "}}"#
        );
        let (_, text) = encoded(
            Report::Failure {
                cause: crate::protocol::FailureCause::DigestMismatch,
                desc: "md5 \"mismatch\"",
                notice: &n,
            },
            9,
        );
        assert_eq!(
            text,
            r#"{"id":9,"params":{"step":"-3","desc":"md5 \"mismatch\""}}"#
        );
        n.module.set("MCU").unwrap();
        let (_, text) = encoded(Report::Burning { notice: &n }, 10);
        assert_eq!(
            text,
            r#"{"id":10,"params":{"step":"100","desc":"burning","module":"MCU"}}"#
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
            r#"{"id":11,"params":{"version":"2.0.0","module":"MCU"}}"#
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            encode(&Report::Accepted { notice: &n }, 1, &mut buf),
            Ok(None)
        );
    }

    #[test]
    fn encoding_into_a_short_buffer_overflows_cleanly() {
        let mut buf = [0u8; 10];
        let r = encode(
            &Report::Version {
                version: "1.0.0",
                module: None,
            },
            1,
            &mut buf,
        );
        assert_eq!(r, Err(JsonError::Overflow));
    }

    fn reject(msg: &str) -> NoticeError {
        let mut n = notice();
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap_err()
    }

    #[test]
    fn rejects_failure_codes_and_missing_fields() {
        let ok_data = r#""size":10,"version":"2","url":"http://h/f","md5":"93230c3bde425a9d7984a594ac55ea1e""#;
        assert_eq!(
            reject(&format!(r#"{{"code":"1001","data":{{{ok_data}}}}}"#)),
            NoticeError::NotSuccess
        );
        assert!(matches!(
            reject(&format!(r#"{{"code":1000,"data":{{{ok_data}}}}}"#)),
            NoticeError::WrongType { field: "code", .. }
        ));
        assert_eq!(reject(r#"{"data":{}}"#), NoticeError::Missing("code"));
        assert_eq!(reject(r#"{"code":"1000"}"#), NoticeError::Missing("data"));
        for field in ["size", "version", "url", "md5"] {
            let without: Vec<&str> = ok_data
                .split(',')
                .filter(|kv| !kv.starts_with(&format!("\"{field}\"")))
                .collect();
            let msg = format!(r#"{{"code":"1000","data":{{{}}}}}"#, without.join(","));
            assert_eq!(reject(&msg), NoticeError::Missing(field), "{msg}");
        }
    }

    #[test]
    fn rejects_bad_sizes_digests_urls_and_oversize_fields() {
        let with = |size: &str, url: &str, md5: &str, version: &str| {
            format!(
                r#"{{"code":"1000","data":{{"size":{size},"version":"{version}","url":"{url}","md5":"{md5}"}}}}"#
            )
        };
        let md5 = "93230c3bde425a9d7984a594ac55ea1e";
        assert_eq!(
            reject(&with("0", "http://h/f", md5, "2")),
            NoticeError::BadSize
        );
        assert_eq!(
            reject(&with("4294967296", "http://h/f", md5, "2")),
            NoticeError::BadSize
        );
        assert_eq!(
            reject(&with("-1", "http://h/f", md5, "2")),
            NoticeError::BadSize
        );
        assert!(matches!(
            reject(&with("\"10\"", "http://h/f", md5, "2")),
            NoticeError::WrongType { field: "size", .. }
        ));
        assert_eq!(
            reject(&with("10", "ftp://h/f", md5, "2")),
            NoticeError::BadUrl
        );
        assert_eq!(
            reject(&with("10", "http://h/f", "93230c3b", "2")),
            NoticeError::BadDigest("md5")
        );
        assert_eq!(
            reject(&with("10", "http://h/f", &md5.replace('9', "z"), "2")),
            NoticeError::BadDigest("md5")
        );
        assert!(matches!(
            reject(&with("10", "http://h/f", md5, &"9".repeat(64))),
            NoticeError::TooLong {
                field: "version",
                len: 64,
                max: 63
            }
        ));
        let long_url = format!("http://h/{}", "a".repeat(3000));
        assert!(matches!(
            reject(&with("10", &long_url, md5, "2")),
            NoticeError::TooLong { field: "url", .. }
        ));
        assert_eq!(
            reject(&with("10", "http://h/f", md5, "")),
            NoticeError::Empty("version")
        );
        assert!(matches!(reject("{\"code\":"), NoticeError::Json(_)));
        assert!(matches!(reject("not json"), NoticeError::Json(_)));
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let msg = r#"{"code":"1000","extra":[1,2],"data":{"size":10,"version":"2","url":"http://h/f","md5":"93230c3bde425a9d7984a594ac55ea1e","sign":"x"},"id":3,"message":"success"}"#;
        let mut n = notice();
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
    }
}
