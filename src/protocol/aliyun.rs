//! Aliyun IoT OTA (seed `003_afcbb86bc3ca17a8.txt`): `/ota/device/{inform,upgrade,progress,request}`.
//!
//! Upgrade: `{"code":"1000","data":{"size":N,"version":"…","url":"…","md5":"<32 hex>"},"id":N,"message":"success"}`.
//! Version / request: `{"id":N,"params":{"version":"…"[,"module":"…"]}}`.
//! Progress: `{"id":N,"params":{"step":"<-4..100>","desc":"…"[,"module":"…"]}}`.

use super::json::{JsonError, Writer};
use super::{
    check_url, parse_object, take_digest, take_object, take_opt_str, take_size, take_str, Channel,
    DigestKind, Downstream, Limits, NoticeError, Report, UpgradeNotice,
};

/// The `code` of a successful upgrade notification.
pub const SUCCESS_CODE: &str = "1000";

/// Decodes an upgrade notification into `out` (which is scratch: partly written on error).
pub fn decode(
    payload: &[u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    let msg = parse_object(payload, limits)?;
    let code = msg.get("code").ok_or(NoticeError::Missing("code"))?;
    let code = code.as_str().ok_or(NoticeError::WrongType {
        field: "code",
        expected: "string",
        found: code.kind(),
    })?;
    if !code.eq_str(SUCCESS_CODE) {
        return Err(NoticeError::NotSuccess);
    }
    let data = take_object(&msg, "data")?;
    out.clear();
    out.message_id = msg.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
    out.size = take_size(&data, "size")?;
    take_str(&data, "version", &mut out.version)?;
    if out.version.is_empty() {
        return Err(NoticeError::Empty("version"));
    }
    take_str(&data, "url", &mut out.url)?;
    check_url(&out.url)?;
    out.digest_kind = DigestKind::Md5;
    take_digest(&data, "md5", DigestKind::Md5, &mut out.digest)?;
    take_opt_str(&data, "module", &mut out.module)?;
    Ok(Downstream::Upgrade)
}

/// Encodes a device report; returns its channel and length.
pub fn encode(report: &Report<'_>, id: u64, out: &mut [u8]) -> Result<(Channel, usize), JsonError> {
    let mut w = Writer::new(out);
    w.raw("{\"id\":").u64(id).raw(",\"params\":{");
    let (channel, module) = match *report {
        Report::Version { version, module } => {
            w.raw("\"version\":").string(version);
            (Channel::Inform, module)
        }
        Report::Request { version, module } => {
            w.raw("\"version\":").string(version);
            (Channel::Request, module)
        }
        Report::Progress { step, desc, module } => {
            w.raw("\"step\":\"")
                .i64(step as i64)
                .raw("\",\"desc\":")
                .string(desc);
            (Channel::Progress, module)
        }
    };
    if let Some(m) = module {
        w.raw(",\"module\":").string(m);
    }
    w.raw("}}");
    Ok((channel, w.finish()?))
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
        let (ch, n) = encode(&report, id, &mut buf).unwrap();
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
        let (ch, text) = encoded(
            Report::Progress {
                step: 1,
                desc: " xxxxxxxx ",
                module: None,
            },
            1,
        );
        assert_eq!(ch, Channel::Progress);
        assert_eq!(
            text,
            r#"{"id":1,"params":{"step":"1","desc":" xxxxxxxx "}}"#
        );
        let (_, text) = encoded(
            Report::Progress {
                step: -3,
                desc: "md5 \"mismatch\"",
                module: None,
            },
            9,
        );
        assert_eq!(
            text,
            r#"{"id":9,"params":{"step":"-3","desc":"md5 \"mismatch\""}}"#
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
