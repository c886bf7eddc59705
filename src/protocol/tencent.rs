//! Tencent Cloud IoT OTA (`docs/protocols.md`, "Tencent Cloud IoT"; the tests quote the
//! platform's document, "the seed", verbatim): `$ota/update/{productID}/{deviceName}`
//! down, `$ota/report/{productID}/{deviceName}` up; every message names itself with `type`.
//!
//! Upgrade: `{"file_size":N,"md5sum":"<32 hex>","type":"update_firmware","url":"…","version":"…"}`.
//! Version ack: `{"type":"report_version_rsp","result_code":0,"result_msg":"success","version":"…"}`.
//! Version: `{"type":"report_version","report":{"version":"…"}}`.
//! Progress: `{"type":"report_progress","report":{"progress":{"state":"downloading"|"burning"|"done"|"fail"
//! [,"percent":"<0..100>"],"result_code":"<0|-1..-5>","result_msg":"…"},"version":"<target>"}}`.
//!
//! Tencent has no modules, no message ids and no firmware request: re-reporting the running
//! version makes the platform send the pending upgrade again (also how a download resumes).

use super::fields::{
    check_url, parse_object, take_digest, take_nonempty_str, take_raw_str, take_size, take_str,
};
use super::json::{JsonError, Writer};
use super::{
    Channel, DigestKind, Downstream, Facts, FailureCause, Limits, NoticeError, Report, Topics,
    UpgradeNotice,
};

/// Tencent: one upstream topic, success is its own report, percent 0..100.
pub(crate) const FACTS: Facts = Facts {
    name: "tencent",
    id: 2,
    can_request_upgrade: false,
    success_is_version_report: false,
    max_message_id: u64::MAX,
    sends_zero_percent: true,
    carries_ext_data: false,
    carries_packages: false,
    topics,
};

/// Tencent's topics: `$ota/update/{pk}/{dn}` down, every report on `$ota/report/{pk}/{dn}`.
pub(crate) fn topics(pk: &str, dn: &str) -> Topics {
    Topics::one_upstream(
        format!("$ota/update/{pk}/{dn}"),
        format!("$ota/report/{pk}/{dn}"),
    )
}

/// The `type` of an upgrade notification.
pub const UPDATE_FIRMWARE: &str = "update_firmware";
/// The `type` of the platform's answer to a version report.
pub const REPORT_VERSION_RSP: &str = "report_version_rsp";

/// Decodes a downstream message. `update_firmware` is decoded into `out` (which is scratch:
/// partly written on error); `report_version_rsp` becomes [`Downstream::VersionAck`]; any other
/// `type` is [`Downstream::Ignored`]. Only an upgrade touches `out`.
pub fn decode(
    payload: &[u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    let msg = parse_object(payload, limits)?;
    let kind = take_raw_str(&msg, "type")?;
    if kind.eq_str(REPORT_VERSION_RSP) {
        let code = msg
            .get("result_code")
            .ok_or(NoticeError::Missing("result_code"))?;
        let result_code = code.as_i64().ok_or(NoticeError::WrongType {
            field: "result_code",
            expected: "integer",
            found: code.kind(),
        })?;
        return Ok(Downstream::VersionAck { result_code });
    }
    if !kind.eq_str(UPDATE_FIRMWARE) {
        return Ok(Downstream::Ignored);
    }
    out.clear();
    take_nonempty_str(&msg, "version", &mut out.version)?;
    out.size = take_size(&msg, "file_size")?;
    take_str(&msg, "url", &mut out.url)?;
    check_url(&out.url)?;
    out.digest_kind = DigestKind::Md5;
    take_digest(&msg, "md5sum", DigestKind::Md5, &mut out.digest)?;
    Ok(Downstream::Upgrade)
}

/// The `result_code` of a `fail` report: −1 download timeout, −2 file not found, −3 URL
/// (signature) expired, −4 MD5 mismatch, −5 firmware update failed (every other cause).
pub fn result_code(cause: FailureCause) -> i32 {
    match cause {
        FailureCause::DownloadTimeout => -1,
        FailureCause::NotFound => -2,
        FailureCause::UrlExpired => -3,
        FailureCause::DigestMismatch => -4,
        FailureCause::DownloadFailed | FailureCause::BurnFailed | FailureCause::UpgradeFailed => -5,
    }
}

/// The `result_msg` of a `fail` report when the caller gave no description: names the cause,
/// more precisely than the code where several causes share −5.
pub fn result_msg(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::DownloadTimeout => "download timed out",
        FailureCause::NotFound => "firmware not found",
        FailureCause::UrlExpired => "URL expired",
        FailureCause::DigestMismatch => "MD5 mismatch",
        FailureCause::DownloadFailed => "firmware download failed",
        FailureCause::BurnFailed => "firmware burning failed",
        FailureCause::UpgradeFailed => "firmware update failed",
    }
}

/// Encodes a device report; returns its channel and length, or `None` when Tencent has no
/// message for it (acceptance, start of the download). Version reports and requests (Tencent
/// has none: the version is re-reported) go out as [`Channel::Inform`], `report_progress` as
/// [`Channel::Progress`]; both are the one `$ota/report` topic. Tencent messages carry no id,
/// so `_id` is unused, and no module, so a report's module is ignored.
pub fn encode(
    report: &Report<'_>,
    _id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    let mut w = Writer::new(out);
    let channel = match *report {
        Report::Version { version, .. } | Report::Request { version, .. } => {
            w.raw("{\"type\":\"report_version\",\"report\":{\"version\":")
                .string(version)
                .raw("}}");
            Channel::Inform
        }
        Report::Accepted { .. } | Report::Upgrading { .. } => return Ok(None),
        Report::Progress {
            percent, notice, ..
        } => {
            let percent = Some(percent.min(100));
            progress(
                &mut w,
                "downloading",
                percent,
                0,
                "",
                notice.version.as_str(),
            )
        }
        Report::Burning { notice } => {
            progress(&mut w, "burning", None, 0, "", notice.version.as_str())
        }
        Report::Success { version, .. } => progress(&mut w, "done", None, 0, "", version),
        Report::Failure {
            cause,
            desc,
            notice,
        } => {
            let msg = if desc.is_empty() {
                result_msg(cause)
            } else {
                desc
            };
            let code = result_code(cause);
            progress(&mut w, "fail", None, code, msg, notice.version.as_str())
        }
    };
    Ok(Some((channel, w.finish()?)))
}

/// Writes one `report_progress` message.
fn progress(
    w: &mut Writer<'_>,
    state: &str,
    percent: Option<u8>,
    code: i32,
    msg: &str,
    version: &str,
) -> Channel {
    w.raw("{\"type\":\"report_progress\",\"report\":{\"progress\":{\"state\":")
        .string(state);
    if let Some(p) = percent {
        w.raw(",\"percent\":\"").u64(u64::from(p)).raw("\"");
    }
    w.raw(",\"result_code\":\"")
        .i64(i64::from(code))
        .raw("\",\"result_msg\":")
        .string(msg)
        .raw("},\"version\":")
        .string(version)
        .raw("}}");
    Channel::Progress
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's examples, verbatim (indentation included; comments dropped).
    const SEED_REPORT_VERSION: &str = r#"{
	"type": "report_version",
	"report":{
    	"version": "0.1"
	}
}"#;
    const SEED_UPDATE_FIRMWARE: &str = r#"{
    "file_size": 708482,
    "md5sum": "36eb5951179db14a631463a37a9322a2",
    "type": "update_firmware",
    "url": "https://ota-1255858890.cos.ap-guangzhou.myqcloud.com",
    "version": "0.2"
}"#;
    const SEED_DOWNLOADING: &str = r#"{
    "type": "report_progress",
    "report":{
        "progress":{
               "state":"downloading",
          	   "percent":"10",
               "result_code":"0",
               "result_msg":""
        },
        "version": "0.2"
    }
}"#;
    const SEED_BURNING: &str = r#"{
    "type": "report_progress",
    "report":{
        "progress":{
               "state":"burning",
               "result_code":"0",
               "result_msg":""
        },
        "version": "0.2"
    }
}"#;
    const SEED_DONE: &str = r#"{
	"type": "report_progress",
	"report":{
		"progress":{
       		"state":"done",
       		"result_code":"0",
       		"result_msg":""
		},
		"version": "0.2"
	}
}"#;
    const SEED_FAIL: &str = r#"{
	"type": "report_progress",
	"report":{
		"progress":{
       		"state":"fail",
       		"result_code":"-1",
       		"result_msg":"time_out"
		},
		"version": "0.2"
	}
}"#;

    const ALL_CAUSES: [FailureCause; 7] = [
        FailureCause::DownloadTimeout,
        FailureCause::NotFound,
        FailureCause::UrlExpired,
        FailureCause::DownloadFailed,
        FailureCause::DigestMismatch,
        FailureCause::BurnFailed,
        FailureCause::UpgradeFailed,
    ];

    /// The seed's text with its whitespace (all outside strings) removed.
    fn compact(seed: &str) -> String {
        seed.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn notice() -> UpgradeNotice {
        UpgradeNotice::new(&Limits::default())
    }

    /// A notice for the upgrade to "0.2", as the seed's progress reports assume.
    fn notice_02() -> UpgradeNotice {
        let mut n = notice();
        decode(SEED_UPDATE_FIRMWARE.as_bytes(), &Limits::default(), &mut n).unwrap();
        n
    }

    fn encoded(report: Report<'_>) -> (Channel, String) {
        let mut buf = [0u8; 512];
        let (ch, n) = encode(&report, 1, &mut buf).unwrap().unwrap();
        (ch, String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    fn decoded(msg: &str) -> Result<Downstream, NoticeError> {
        let mut n = notice();
        decode(msg.as_bytes(), &Limits::default(), &mut n)
    }

    fn reject(msg: &str) -> NoticeError {
        decoded(msg).unwrap_err()
    }

    #[test]
    fn decodes_the_seed_update_firmware_message() {
        let mut n = notice();
        assert_eq!(
            decode(SEED_UPDATE_FIRMWARE.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(n.size, 708482);
        let mut hex = [0u8; 64];
        assert_eq!(n.digest_kind, DigestKind::Md5);
        assert_eq!(
            crate::digest::to_hex(n.digest(), &mut hex),
            "36eb5951179db14a631463a37a9322a2"
        );
        assert_eq!(
            n.url.as_str(),
            "https://ota-1255858890.cos.ap-guangzhou.myqcloud.com"
        );
        assert_eq!(n.version.as_str(), "0.2");
        assert!(n.module.is_empty());
        assert_eq!(n.module_name(), "default");
        assert!(n.task_id.is_empty());
        assert!(n.ext_data.is_empty());
        assert!(n.current_version.is_empty());
        assert!(n.batch.is_empty());
        assert_eq!(n.message_id, 0);
        // The compact form (as docs/protocols.md writes it) decodes the same.
        let mut m = notice();
        decode(
            compact(SEED_UPDATE_FIRMWARE).as_bytes(),
            &Limits::default(),
            &mut m,
        )
        .unwrap();
        assert!(m.same_image(&n));
        assert_eq!(m.url, n.url);
    }

    #[test]
    fn decoding_overwrites_a_previous_notice() {
        let mut n = notice();
        n.module.set("MCU").unwrap();
        n.task_id.set("7").unwrap();
        n.batch.set("b").unwrap();
        n.message_id = 9;
        decode(SEED_UPDATE_FIRMWARE.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert!(n.module.is_empty() && n.task_id.is_empty() && n.batch.is_empty());
        assert_eq!(n.message_id, 0);
    }

    #[test]
    fn decodes_escaped_urls_and_uppercase_md5() {
        let msg = r#"{"type":"update_firmware","file_size":1,"md5sum":"36EB5951179DB14A631463A37A9322A2","url":"https:\/\/h\/f.bin?a=1&b=%3D","version":"0.2"}"#;
        let mut n = notice();
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert_eq!(n.url.as_str(), "https://h/f.bin?a=1&b=%3D");
        let mut hex = [0u8; 64];
        assert_eq!(
            crate::digest::to_hex(n.digest(), &mut hex),
            "36eb5951179db14a631463a37a9322a2"
        );
    }

    #[test]
    fn encodes_the_seed_version_report() {
        let (ch, text) = encoded(Report::Version {
            version: "0.1",
            module: None,
        });
        assert_eq!(ch, Channel::Inform);
        assert_eq!(text, compact(SEED_REPORT_VERSION));
        assert_eq!(
            text,
            r#"{"type":"report_version","report":{"version":"0.1"}}"#
        );
    }

    #[test]
    fn version_reports_ignore_the_module_and_requests_re_report_the_version() {
        let (_, with_module) = encoded(Report::Version {
            version: "0.1",
            module: Some("MCU"),
        });
        assert_eq!(with_module, compact(SEED_REPORT_VERSION));
        let (ch, request) = encoded(Report::Request {
            version: "0.1",
            module: Some("MCU"),
        });
        assert_eq!(ch, Channel::Inform);
        assert_eq!(request, compact(SEED_REPORT_VERSION));
        let (_, escaped) = encoded(Report::Version {
            version: "1.0 \"beta\"",
            module: None,
        });
        assert_eq!(
            escaped,
            r#"{"type":"report_version","report":{"version":"1.0 \"beta\""}}"#
        );
    }

    #[test]
    fn encodes_the_seed_downloading_report() {
        let n = notice_02();
        let (ch, text) = encoded(Report::Progress {
            percent: 10,
            desc: "",
            notice: &n,
        });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_DOWNLOADING));
        assert_eq!(
            text,
            r#"{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"10","result_code":"0","result_msg":""},"version":"0.2"}}"#
        );
    }

    #[test]
    fn downloading_reports_any_percent_and_ignore_the_description() {
        let n = notice_02();
        for (percent, want) in [(0u8, "0"), (1, "1"), (99, "99"), (100, "100"), (255, "100")] {
            let (_, text) = encoded(Report::Progress {
                percent,
                desc: "ignored",
                notice: &n,
            });
            let expect = compact(SEED_DOWNLOADING).replace("\"10\"", &format!("\"{want}\""));
            assert_eq!(text, expect, "{percent}");
        }
    }

    #[test]
    fn encodes_the_seed_burning_report() {
        let n = notice_02();
        let (ch, text) = encoded(Report::Burning { notice: &n });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_BURNING));
        assert!(!text.contains("percent"));
    }

    #[test]
    fn encodes_the_seed_done_report() {
        let n = notice_02();
        let (ch, text) = encoded(Report::Success {
            version: "0.2",
            notice: &n,
        });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_DONE));
    }

    #[test]
    fn encodes_the_seed_fail_report() {
        let n = notice_02();
        let (ch, text) = encoded(Report::Failure {
            cause: FailureCause::DownloadTimeout,
            desc: "time_out",
            notice: &n,
        });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_FAIL));
    }

    #[test]
    fn every_failure_cause_has_its_code_and_a_message() {
        let n = notice_02();
        let codes = [
            (FailureCause::DownloadTimeout, "-1"),
            (FailureCause::NotFound, "-2"),
            (FailureCause::UrlExpired, "-3"),
            (FailureCause::DigestMismatch, "-4"),
            (FailureCause::DownloadFailed, "-5"),
            (FailureCause::BurnFailed, "-5"),
            (FailureCause::UpgradeFailed, "-5"),
        ];
        assert_eq!(codes.len(), ALL_CAUSES.len());
        for (cause, code) in codes {
            assert_eq!(result_code(cause).to_string(), code);
            assert!(!result_msg(cause).is_empty());
            let (_, text) = encoded(Report::Failure {
                cause,
                desc: "",
                notice: &n,
            });
            let want = format!(
                r#"{{"type":"report_progress","report":{{"progress":{{"state":"fail","result_code":"{code}","result_msg":"{}"}},"version":"0.2"}}}}"#,
                result_msg(cause)
            );
            assert_eq!(text, want);
            assert!(!text.contains(r#""result_msg":"""#), "{text}");
        }
    }

    #[test]
    fn failure_messages_name_the_cause() {
        for (i, a) in ALL_CAUSES.iter().enumerate() {
            for b in &ALL_CAUSES[i + 1..] {
                assert_ne!(result_msg(*a), result_msg(*b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(
            result_msg(FailureCause::DownloadTimeout),
            "download timed out"
        );
        assert_eq!(result_msg(FailureCause::NotFound), "firmware not found");
        assert_eq!(result_msg(FailureCause::UrlExpired), "URL expired");
        assert_eq!(result_msg(FailureCause::DigestMismatch), "MD5 mismatch");
        assert_eq!(
            result_msg(FailureCause::UpgradeFailed),
            "firmware update failed"
        );
    }

    #[test]
    fn failure_description_is_escaped() {
        let n = notice_02();
        let (_, text) = encoded(Report::Failure {
            cause: FailureCause::DigestMismatch,
            desc: "md5 \"mismatch\"\n",
            notice: &n,
        });
        assert_eq!(
            text,
            r#"{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-4","result_msg":"md5 \"mismatch\"\n"},"version":"0.2"}}"#
        );
    }

    #[test]
    fn acceptance_and_upgrading_have_no_message() {
        let n = notice_02();
        let mut buf = [0u8; 64];
        assert_eq!(
            encode(&Report::Accepted { notice: &n }, 1, &mut buf),
            Ok(None)
        );
        assert_eq!(
            encode(&Report::Upgrading { notice: &n }, 1, &mut buf),
            Ok(None)
        );
    }

    #[test]
    fn encoding_into_a_short_buffer_overflows_cleanly() {
        let n = notice_02();
        let want = compact(SEED_FAIL);
        let report = Report::Failure {
            cause: FailureCause::DownloadTimeout,
            desc: "time_out",
            notice: &n,
        };
        let mut buf = vec![0u8; want.len()];
        assert_eq!(
            encode(&report, 1, &mut buf),
            Ok(Some((Channel::Progress, want.len())))
        );
        let mut short = vec![0u8; want.len() - 1];
        assert_eq!(encode(&report, 1, &mut short), Err(JsonError::Overflow));
        let mut tiny = [0u8; 10];
        let version = Report::Version {
            version: "0.1",
            module: None,
        };
        assert_eq!(encode(&version, 1, &mut tiny), Err(JsonError::Overflow));
    }

    #[test]
    fn decodes_version_acks() {
        let ok = r#"{"type":"report_version_rsp","result_code":0,"result_msg":"success","version":"1.0.0"}"#;
        assert_eq!(decoded(ok), Ok(Downstream::VersionAck { result_code: 0 }));
        let refused = r#"{"type":"report_version_rsp","result_code":1,"result_msg":"fail","version":"1.0.0"}"#;
        assert_eq!(
            decoded(refused),
            Ok(Downstream::VersionAck { result_code: 1 })
        );
        let negative = r#"{"type":"report_version_rsp","result_code":-2}"#;
        assert_eq!(
            decoded(negative),
            Ok(Downstream::VersionAck { result_code: -2 })
        );
    }

    #[test]
    fn a_version_ack_leaves_the_notice_alone() {
        let mut n = notice_02();
        let ack = br#"{"type":"report_version_rsp","result_code":0}"#;
        decode(ack, &Limits::default(), &mut n).unwrap();
        assert_eq!(n.version.as_str(), "0.2");
        assert_eq!(n.size, 708482);
    }

    #[test]
    fn rejects_bad_version_acks() {
        assert_eq!(
            reject(r#"{"type":"report_version_rsp","result_msg":"success"}"#),
            NoticeError::Missing("result_code")
        );
        for code in [
            r#""0""#,
            "0.5",
            "1e3",
            "null",
            "true",
            "9223372036854775808",
        ] {
            let msg = format!(r#"{{"type":"report_version_rsp","result_code":{code}}}"#);
            assert!(
                matches!(
                    reject(&msg),
                    NoticeError::WrongType {
                        field: "result_code",
                        expected: "integer",
                        ..
                    }
                ),
                "{msg}"
            );
        }
    }

    #[test]
    fn unknown_types_are_ignored() {
        let mut n = notice_02();
        for msg in [
            r#"{"type":"cancel_update"}"#,
            r#"{"type":"report_progress_rsp","result_code":"x"}"#,
            r#"{"type":"","file_size":"not a size"}"#,
            r#"{"type":"UPDATE_FIRMWARE","file_size":1}"#,
        ] {
            assert_eq!(
                decode(msg.as_bytes(), &Limits::default(), &mut n),
                Ok(Downstream::Ignored),
                "{msg}"
            );
        }
        assert_eq!(
            n.version.as_str(),
            "0.2",
            "an ignored message leaves the notice alone"
        );
    }

    #[test]
    fn rejects_a_missing_or_wrong_typed_type() {
        assert_eq!(reject(r#"{"file_size":1}"#), NoticeError::Missing("type"));
        assert_eq!(reject("{}"), NoticeError::Missing("type"));
        for ty in ["1", "null", "{}", r#"["update_firmware"]"#] {
            let msg = format!(r#"{{"type":{ty}}}"#);
            assert!(
                matches!(
                    reject(&msg),
                    NoticeError::WrongType {
                        field: "type",
                        expected: "string",
                        ..
                    }
                ),
                "{msg}"
            );
        }
        assert!(matches!(reject(r#"{"type":"#), NoticeError::Json(_)));
        assert!(matches!(reject("not json"), NoticeError::Json(_)));
        assert!(matches!(reject("[]"), NoticeError::Json(_)));
    }

    const MD5: &str = "36eb5951179db14a631463a37a9322a2";

    fn upgrade(size: &str, md5: &str, url: &str, version: &str) -> String {
        format!(
            r#"{{"file_size":{size},"md5sum":"{md5}","type":"update_firmware","url":"{url}","version":"{version}"}}"#
        )
    }

    #[test]
    fn rejects_missing_upgrade_fields() {
        let full = upgrade("10", MD5, "http://h/f", "0.2");
        assert_eq!(decoded(&full), Ok(Downstream::Upgrade));
        for field in ["file_size", "md5sum", "url", "version"] {
            let inner = &full[1..full.len() - 1];
            let without: Vec<&str> = inner
                .split(',')
                .filter(|kv| !kv.starts_with(&format!("\"{field}\"")))
                .collect();
            let msg = format!("{{{}}}", without.join(","));
            assert_eq!(reject(&msg), NoticeError::Missing(field), "{msg}");
        }
    }

    #[test]
    fn rejects_wrong_typed_upgrade_fields() {
        let cases = [
            (
                r#""708482""#,
                format!("\"{MD5}\""),
                r#""http://h/f""#,
                r#""0.2""#,
                "file_size",
            ),
            (
                "10",
                "16".to_string(),
                r#""http://h/f""#,
                r#""0.2""#,
                "md5sum",
            ),
            ("10", format!("\"{MD5}\""), "null", r#""0.2""#, "url"),
            (
                "10",
                format!("\"{MD5}\""),
                r#""http://h/f""#,
                "0.2",
                "version",
            ),
        ];
        for (size, md5, url, version, field) in cases {
            let msg = format!(
                r#"{{"file_size":{size},"md5sum":{md5},"type":"update_firmware","url":{url},"version":{version}}}"#
            );
            assert!(
                matches!(reject(&msg), NoticeError::WrongType { field: f, .. } if f == field),
                "{msg}: {:?}",
                reject(&msg)
            );
        }
    }

    #[test]
    fn rejects_bad_sizes_digests_urls_and_oversize_fields() {
        assert_eq!(
            reject(&upgrade("0", MD5, "http://h/f", "0.2")),
            NoticeError::BadSize
        );
        assert_eq!(
            reject(&upgrade("4294967296", MD5, "http://h/f", "0.2")),
            NoticeError::BadSize
        );
        assert_eq!(
            reject(&upgrade("-1", MD5, "http://h/f", "0.2")),
            NoticeError::BadSize
        );
        assert_eq!(
            reject(&upgrade("1.5", MD5, "http://h/f", "0.2")),
            NoticeError::BadSize
        );
        assert_eq!(
            decoded(&upgrade("4294967295", MD5, "http://h/f", "0.2")),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(
            reject(&upgrade("10", MD5, "ftp://h/f", "0.2")),
            NoticeError::BadUrl
        );
        assert_eq!(
            reject(&upgrade("10", MD5, "https://", "0.2")),
            NoticeError::BadUrl
        );
        assert_eq!(
            reject(&upgrade("10", "36eb5951", "http://h/f", "0.2")),
            NoticeError::BadDigest("md5sum")
        );
        assert_eq!(
            reject(&upgrade("10", &MD5.replace('3', "z"), "http://h/f", "0.2")),
            NoticeError::BadDigest("md5sum")
        );
        assert_eq!(
            reject(&upgrade("10", &format!("{MD5}{MD5}"), "http://h/f", "0.2")),
            NoticeError::BadDigest("md5sum")
        );
        assert_eq!(
            reject(&upgrade("10", MD5, "http://h/f", "")),
            NoticeError::Empty("version")
        );
        assert!(matches!(
            reject(&upgrade("10", MD5, "http://h/f", &"9".repeat(64))),
            NoticeError::TooLong {
                field: "version",
                len: 64,
                max: 63
            }
        ));
        let long_url = format!("http://h/{}", "a".repeat(3000));
        assert!(matches!(
            reject(&upgrade("10", MD5, &long_url, "0.2")),
            NoticeError::TooLong { field: "url", .. }
        ));
    }

    #[test]
    fn rejects_oversize_messages_and_duplicate_keys() {
        let limits = Limits {
            downstream: 64,
            ..Limits::default()
        };
        let mut n = notice();
        assert!(matches!(
            decode(SEED_UPDATE_FIRMWARE.as_bytes(), &limits, &mut n),
            Err(NoticeError::Oversize { max: 64, .. })
        ));
        let dup = r#"{"type":"update_firmware","type":"report_version_rsp","result_code":0}"#;
        assert!(matches!(reject(dup), NoticeError::Json(_)));
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let msg = r#"{"file_size":10,"md5sum":"36eb5951179db14a631463a37a9322a2","type":"update_firmware","url":"http://h/f","version":"0.2","extra":[1,{"a":null}],"module":"MCU"}"#;
        let mut n = notice();
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(n.module_name(), "default", "Tencent has no modules");
    }
}
