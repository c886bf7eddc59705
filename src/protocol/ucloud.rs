//! UCloud IoT OTA (`docs/protocols.md`, "UCloud"; the tests quote the platform's document, "the
//! seed", verbatim): one topic each way,
//! `/$system/{productSN}/{deviceSN}/ota/downstream` and `…/ota/upstream`.
//!
//! Task: `{"Method":"notify","Payload":{"Version":"…","CurrentVersion":"…","Module":"…","URL":"…","MD5":"<32 hex>","Size":N,"TaskID":"…"}}`.
//! Version: `{"Method":"report","Payload":{"Version":"…"[,"Module":"…"]}}` (the seed's prose says
//! `report_version`, its example `report`: the example wins).
//! Task reports: `{"Method":"notify"|"upgrading"|"success","Payload":{"TaskID":"…"}}` and
//! `{"Method":"fail","Payload":{"TaskID":"…","ErrMsg":"…"}}`.
//!
//! UCloud has no message id, no percentage and no firmware request; the `CurrentVersion` check
//! against the running version is the engine's job.

use super::fields::{
    check_url, parse_object, take_digest, take_nonempty_str, take_object, take_opt_str,
    take_raw_str, take_size, take_str,
};
use super::json::{JsonError, Writer};
use super::{
    Channel, DigestKind, Downstream, Facts, FailureCause, Limits, NoticeError, Report, Topics,
    UpgradeNotice,
};

/// UCloud: one upstream topic, success is its own report, percent 0..100.
pub(crate) const FACTS: Facts = Facts {
    name: "ucloud",
    id: 3,
    can_request_upgrade: false,
    success_is_version_report: false,
    max_message_id: u64::MAX,
    sends_zero_percent: true,
    carries_ext_data: false,
    carries_packages: false,
    topics,
};

/// UCloud's topics: `/$system/{pk}/{dn}/ota/downstream` and `.../upstream`.
pub(crate) fn topics(pk: &str, dn: &str) -> Topics {
    Topics::one_upstream(
        format!("/$system/{pk}/{dn}/ota/downstream"),
        format!("/$system/{pk}/{dn}/ota/upstream"),
    )
}

/// The `Method` of an upgrade task (downstream) and of its acknowledgement (upstream).
pub const NOTIFY: &str = "notify";

/// Decodes a downstream message into `out` (which is scratch: partly written on error). Only
/// `notify` is an upgrade; any other `Method` is [`Downstream::Ignored`] and leaves `out` alone.
pub fn decode(
    payload: &[u8],
    limits: &Limits,
    out: &mut UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    let msg = parse_object(payload, limits)?;
    let method = take_raw_str(&msg, "Method")?;
    if !method.eq_str(NOTIFY) {
        return Ok(Downstream::Ignored);
    }
    let task = take_object(&msg, "Payload")?;
    out.clear();
    take_nonempty_str(&task, "Version", &mut out.version)?;
    take_opt_str(&task, "CurrentVersion", &mut out.current_version)?;
    take_opt_str(&task, "Module", &mut out.module)?;
    take_str(&task, "URL", &mut out.url)?;
    check_url(&out.url)?;
    out.digest_kind = DigestKind::Md5;
    take_digest(&task, "MD5", DigestKind::Md5, &mut out.digest)?;
    out.size = take_size(&task, "Size")?;
    take_nonempty_str(&task, "TaskID", &mut out.task_id)?;
    Ok(Downstream::Upgrade)
}

/// The `ErrMsg` sent for `cause` when the caller gave no description.
pub fn err_msg(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::DownloadTimeout => "download timed out",
        FailureCause::NotFound => "firmware not exist",
        FailureCause::UrlExpired => "URL expired",
        FailureCause::DownloadFailed => "download failed",
        FailureCause::DigestMismatch => "MD5 mismatch",
        FailureCause::BurnFailed => "burn failed",
        FailureCause::UpgradeFailed => "upgrade failed",
    }
}

/// The module to name in a version report: absent for the default module.
fn named_module(module: &str) -> Option<&str> {
    (!module.is_empty() && module != "default").then_some(module)
}

/// Encodes a device report; returns its channel and length, or `None` when UCloud has no
/// message for it (progress percentages, the start of flashing). Every message goes to the one
/// upstream topic: version reports as [`Channel::Inform`], task reports as [`Channel::Progress`].
/// UCloud messages carry no id, so `_id` is unused.
pub fn encode(
    report: &Report<'_>,
    _id: u64,
    out: &mut [u8],
) -> Result<Option<(Channel, usize)>, JsonError> {
    let mut w = Writer::new(out);
    let channel = match *report {
        // UCloud has no firmware request: reporting the version makes the platform re-send a
        // pending task.
        Report::Version { version, module } | Report::Request { version, module } => {
            w.raw("{\"Method\":\"report\",\"Payload\":{\"Version\":")
                .string(version);
            if let Some(m) = module.and_then(named_module) {
                w.raw(",\"Module\":").string(m);
            }
            w.raw("}}");
            Channel::Inform
        }
        Report::Accepted { notice } => task(&mut w, NOTIFY, notice, None),
        Report::Upgrading { notice } => task(&mut w, "upgrading", notice, None),
        Report::Progress { .. } | Report::Burning { .. } => return Ok(None),
        Report::Success { notice, .. } => task(&mut w, "success", notice, None),
        Report::Failure {
            cause,
            desc,
            notice,
        } => {
            let msg = if desc.is_empty() {
                err_msg(cause)
            } else {
                desc
            };
            task(&mut w, "fail", notice, Some(msg))
        }
    };
    Ok(Some((channel, w.finish()?)))
}

/// `{"Method":method,"Payload":{"TaskID":…[,"ErrMsg":…]}}`.
fn task(w: &mut Writer<'_>, method: &str, notice: &UpgradeNotice, err: Option<&str>) -> Channel {
    w.raw("{\"Method\":")
        .string(method)
        .raw(",\"Payload\":{\"TaskID\":")
        .string(notice.task_id.as_str());
    if let Some(e) = err {
        w.raw(",\"ErrMsg\":").string(e);
    }
    w.raw("}}");
    Channel::Progress
}

#[cfg(test)]
mod tests {
    use super::*;

    // The seed's examples, verbatim (indentation included).

    const SEED_REPORT: &str = r#"   {
    "Method": "report",
    "Payload": {
        "Version": "1.0",
        "Module": "module_a"
    }
}"#;

    /// Carries the seed's `// byte` annotation, which is not JSON.
    const SEED_NOTIFY: &str = concat!(
        "\t",
        r#"{
    "Method": "notify",
    "Payload": {
        "Version": "1.0",
        "CurrentVersion": "0.1",
        "Module": "module_a",
        "URL": "http://xxx/xxx.zip",
        "MD5": "aa30e838c7cdbbcbf8be7668aaeebee3",
        "Size": 1024,   // byte
        "TaskID": "1"
    }
}"#
    );

    const SEED_ACK: &str = r#"{
    "Method": "notify",
    "Payload": {
        "TaskID": "1"
    }
}"#;

    const SEED_UPGRADING: &str = r#"{
    "Method": "upgrading",
    "Payload": {
        "TaskID": "1"
    }
}"#;

    /// `Method` is `success` or `fail`; `ErrMsg` is optional.
    const SEED_RESULT: &str = r#"{
    "Method": "success/fail", 
    "Payload": {
        "TaskID": "1",
        "ErrMsg": "firmware not exist"  
    }
}"#;

    const MD5: &str = "aa30e838c7cdbbcbf8be7668aaeebee3";

    /// The seed's notify as a platform sends it: the `// byte` annotation dropped.
    fn seed_notify() -> String {
        SEED_NOTIFY.replace("   // byte", "")
    }

    /// `text` without the whitespace outside strings.
    fn compact(text: &str) -> String {
        let (mut out, mut in_str, mut esc) = (String::new(), false, false);
        for c in text.chars() {
            if in_str {
                out.push(c);
                match c {
                    _ if esc => esc = false,
                    '\\' => esc = true,
                    '"' => in_str = false,
                    _ => {}
                }
            } else if !c.is_whitespace() {
                out.push(c);
                in_str = c == '"';
            }
        }
        out
    }

    fn notice() -> UpgradeNotice {
        UpgradeNotice::new(&Limits::default())
    }

    /// A notice decoded from the seed's task (TaskID "1").
    fn seed_notice() -> UpgradeNotice {
        let mut n = notice();
        decode(seed_notify().as_bytes(), &Limits::default(), &mut n).unwrap();
        n
    }

    fn encoded(report: Report<'_>) -> (Channel, String) {
        let mut buf = [0u8; 512];
        let (ch, n) = encode(&report, 1, &mut buf).unwrap().unwrap();
        (ch, String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    fn reject(msg: &str) -> NoticeError {
        let mut n = notice();
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap_err()
    }

    /// A compact task with `fields` as its Payload members.
    fn task_msg(fields: &str) -> String {
        format!(r#"{{"Method":"notify","Payload":{{{fields}}}}}"#)
    }

    fn seed_fields() -> String {
        format!(
            r#""Version":"1.0","CurrentVersion":"0.1","Module":"module_a","URL":"http://xxx/xxx.zip","MD5":"{MD5}","Size":1024,"TaskID":"1""#
        )
    }

    /// The seed's fields with `field`'s value replaced by `value` (`None`: removed).
    fn seed_with(field: &str, value: Option<&str>) -> String {
        let fields = seed_fields();
        let kept: Vec<String> = fields
            .split(',')
            .filter_map(|kv| {
                if !kv.starts_with(&format!("\"{field}\":")) {
                    Some(kv.to_string())
                } else {
                    value.map(|v| format!("\"{field}\":{v}"))
                }
            })
            .collect();
        task_msg(&kept.join(","))
    }

    #[test]
    fn decodes_the_seed_notify_field_by_field() {
        let mut n = notice();
        assert_eq!(
            decode(seed_notify().as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(n.version.as_str(), "1.0");
        assert_eq!(n.current_version.as_str(), "0.1");
        assert_eq!(n.module.as_str(), "module_a");
        assert_eq!(n.module_name(), "module_a");
        assert_eq!(n.url.as_str(), "http://xxx/xxx.zip");
        assert_eq!(n.digest_kind, DigestKind::Md5);
        let mut hex = [0u8; 64];
        assert_eq!(crate::digest::to_hex(n.digest(), &mut hex), MD5);
        assert_eq!(n.size, 1024);
        assert_eq!(n.task_id.as_str(), "1");
        assert_eq!(n.message_id, 0);
        assert!(n.ext_data.is_empty() && n.batch.is_empty());
    }

    #[test]
    fn the_seed_notify_with_its_comment_is_not_json() {
        assert_eq!(reject(SEED_NOTIFY), NoticeError::Json(JsonError::Syntax));
    }

    #[test]
    fn decodes_the_compact_form_escapes_and_optional_fields() {
        let mut n = notice();
        let msg = task_msg(&format!(
            r#""Version":"2.0","URL":"https:\/\/h\/f.bin","MD5":"{}","Size":1,"TaskID":"t\u00e9""#,
            MD5.to_uppercase()
        ));
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert_eq!(n.url.as_str(), "https://h/f.bin");
        assert_eq!(n.task_id.as_str(), "té");
        assert!(n.current_version.is_empty());
        assert!(n.module.is_empty());
        assert_eq!(n.module_name(), "default");
        let mut hex = [0u8; 64];
        assert_eq!(crate::digest::to_hex(n.digest(), &mut hex), MD5);
    }

    #[test]
    fn a_new_task_overwrites_every_field_of_the_last() {
        let mut n = seed_notice();
        n.ext_data.set("{}").unwrap();
        let msg = seed_with("Module", None).replace(r#""CurrentVersion":"0.1","#, "");
        decode(msg.as_bytes(), &Limits::default(), &mut n).unwrap();
        assert!(n.module.is_empty());
        assert!(n.current_version.is_empty());
        assert!(n.ext_data.is_empty());
    }

    #[test]
    fn other_methods_are_ignored_without_touching_the_notice() {
        let mut n = seed_notice();
        for method in [
            "report",
            "upgrading",
            "cancel_update",
            "update_firmware",
            "Notify",
            "",
        ] {
            let msg = format!(r#"{{"Method":"{method}","Payload":{{"TaskID":7}}}}"#);
            assert_eq!(
                decode(msg.as_bytes(), &Limits::default(), &mut n),
                Ok(Downstream::Ignored),
                "{method}"
            );
        }
        let msg = br#"{"Method":"cancel"}"#;
        assert_eq!(
            decode(msg, &Limits::default(), &mut n),
            Ok(Downstream::Ignored)
        );
        assert_eq!(n.task_id.as_str(), "1");
        assert_eq!(n.version.as_str(), "1.0");
    }

    #[test]
    fn rejects_a_missing_or_wrong_typed_method_or_payload() {
        assert_eq!(reject(r#"{"Payload":{}}"#), NoticeError::Missing("Method"));
        assert!(matches!(
            reject(&seed_notify().replace(r#""notify""#, "1")),
            NoticeError::WrongType {
                field: "Method",
                expected: "string",
                found: "number"
            }
        ));
        assert_eq!(
            reject(r#"{"Method":"notify"}"#),
            NoticeError::Missing("Payload")
        );
        assert!(matches!(
            reject(r#"{"Method":"notify","Payload":"x"}"#),
            NoticeError::WrongType {
                field: "Payload",
                expected: "object",
                found: "string"
            }
        ));
        assert!(matches!(reject("not json"), NoticeError::Json(_)));
        assert!(matches!(reject(r#"{"Method":"#), NoticeError::Json(_)));
        assert_eq!(
            reject(r#"["notify"]"#),
            NoticeError::Json(JsonError::NotAnObject)
        );
    }

    #[test]
    fn rejects_missing_required_fields() {
        for field in ["Version", "URL", "MD5", "Size", "TaskID"] {
            let msg = seed_with(field, None);
            assert_eq!(reject(&msg), NoticeError::Missing(field), "{msg}");
        }
    }

    #[test]
    fn rejects_wrong_typed_fields() {
        for (field, value, expected, found) in [
            ("Version", "1.0", "string", "number"),
            ("CurrentVersion", "null", "string", "null"),
            ("Module", "[]", "string", "array"),
            ("URL", "{}", "string", "object"),
            ("MD5", "true", "string", "boolean"),
            ("Size", "\"1024\"", "number", "string"),
            ("TaskID", "1", "string", "number"),
        ] {
            let msg = seed_with(field, Some(value));
            let err = reject(&msg);
            assert_eq!(
                err,
                NoticeError::WrongType {
                    field,
                    expected,
                    found
                },
                "{msg}"
            );
        }
    }

    #[test]
    fn rejects_empty_bad_and_oversize_values() {
        assert_eq!(
            reject(&seed_with("Version", Some("\"\""))),
            NoticeError::Empty("Version")
        );
        assert_eq!(
            reject(&seed_with("TaskID", Some("\"\""))),
            NoticeError::Empty("TaskID")
        );
        for url in ["\"ftp://h/f\"", "\"http://\"", "\"xxx/xxx.zip\""] {
            assert_eq!(
                reject(&seed_with("URL", Some(url))),
                NoticeError::BadUrl,
                "{url}"
            );
        }
        for md5 in [
            "\"aa30e838\"".to_string(),
            format!("\"{}\"", MD5.replace('a', "z")),
            format!("\"{MD5}00\""),
        ] {
            assert_eq!(
                reject(&seed_with("MD5", Some(&md5))),
                NoticeError::BadDigest("MD5"),
                "{md5}"
            );
        }
        for size in ["0", "-1", "1.5", "4294967296"] {
            assert_eq!(
                reject(&seed_with("Size", Some(size))),
                NoticeError::BadSize,
                "{size}"
            );
        }
        let long = format!("\"{}\"", "1".repeat(64));
        for field in ["Version", "CurrentVersion", "Module", "TaskID"] {
            assert_eq!(
                reject(&seed_with(field, Some(&long))),
                NoticeError::TooLong {
                    field,
                    len: 64,
                    max: 63
                },
                "{field}"
            );
        }
        let long_url = format!("\"http://h/{}\"", "a".repeat(3000));
        assert!(matches!(
            reject(&seed_with("URL", Some(&long_url))),
            NoticeError::TooLong { field: "URL", .. }
        ));
        let limits = Limits {
            downstream: 32,
            ..Limits::default()
        };
        let msg = seed_notify();
        assert_eq!(
            decode(msg.as_bytes(), &limits, &mut notice()),
            Err(NoticeError::Oversize {
                len: msg.len(),
                max: 32
            })
        );
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let msg = task_msg(&format!(
            r#"{},"Extra":[1,{{"a":null}}],"Sign":"x""#,
            seed_fields()
        ));
        let msg = msg.replacen('{', r#"{"RequestID":"r1","#, 1);
        let mut n = notice();
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default(), &mut n),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(n.task_id.as_str(), "1");
    }

    #[test]
    fn encodes_the_seed_version_report() {
        let (ch, text) = encoded(Report::Version {
            version: "1.0",
            module: Some("module_a"),
        });
        assert_eq!(ch, Channel::Inform);
        assert_eq!(text, compact(SEED_REPORT));
        assert_eq!(
            text,
            r#"{"Method":"report","Payload":{"Version":"1.0","Module":"module_a"}}"#
        );
    }

    #[test]
    fn the_default_module_is_omitted_and_request_reports_the_version() {
        let want = r#"{"Method":"report","Payload":{"Version":"1.0"}}"#;
        for module in [None, Some("default"), Some("")] {
            let (ch, text) = encoded(Report::Version {
                version: "1.0",
                module,
            });
            assert_eq!((ch, text.as_str()), (Channel::Inform, want), "{module:?}");
            let (ch, text) = encoded(Report::Request {
                version: "1.0",
                module,
            });
            assert_eq!((ch, text.as_str()), (Channel::Inform, want), "{module:?}");
        }
        let (_, text) = encoded(Report::Request {
            version: "1.0",
            module: Some("module_a"),
        });
        assert_eq!(text, compact(SEED_REPORT));
    }

    #[test]
    fn encodes_the_seed_ack_and_upgrading() {
        let n = seed_notice();
        let (ch, text) = encoded(Report::Accepted { notice: &n });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_ACK));
        assert_eq!(text, r#"{"Method":"notify","Payload":{"TaskID":"1"}}"#);
        let (ch, text) = encoded(Report::Upgrading { notice: &n });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(SEED_UPGRADING));
        assert_eq!(text, r#"{"Method":"upgrading","Payload":{"TaskID":"1"}}"#);
    }

    #[test]
    fn encodes_the_seed_success_and_fail() {
        let n = seed_notice();
        let (ch, text) = encoded(Report::Success {
            version: "1.0",
            notice: &n,
        });
        assert_eq!(ch, Channel::Progress);
        let success = SEED_RESULT
            .replace("success/fail", "success")
            .replace(",\n        \"ErrMsg\": \"firmware not exist\"", "");
        assert_eq!(text, compact(&success));
        assert_eq!(text, r#"{"Method":"success","Payload":{"TaskID":"1"}}"#);
        let (ch, text) = encoded(Report::Failure {
            cause: FailureCause::NotFound,
            desc: "",
            notice: &n,
        });
        assert_eq!(ch, Channel::Progress);
        assert_eq!(text, compact(&SEED_RESULT.replace("success/fail", "fail")));
        assert_eq!(
            text,
            r#"{"Method":"fail","Payload":{"TaskID":"1","ErrMsg":"firmware not exist"}}"#
        );
    }

    #[test]
    fn fail_names_every_cause_unless_given_a_description() {
        let n = seed_notice();
        for (cause, msg) in [
            (FailureCause::DownloadTimeout, "download timed out"),
            (FailureCause::NotFound, "firmware not exist"),
            (FailureCause::UrlExpired, "URL expired"),
            (FailureCause::DownloadFailed, "download failed"),
            (FailureCause::DigestMismatch, "MD5 mismatch"),
            (FailureCause::BurnFailed, "burn failed"),
            (FailureCause::UpgradeFailed, "upgrade failed"),
        ] {
            assert_eq!(err_msg(cause), msg);
            let (_, text) = encoded(Report::Failure {
                cause,
                desc: "",
                notice: &n,
            });
            assert_eq!(
                text,
                format!(r#"{{"Method":"fail","Payload":{{"TaskID":"1","ErrMsg":"{msg}"}}}}"#)
            );
        }
        let (_, text) = encoded(Report::Failure {
            cause: FailureCause::UpgradeFailed,
            desc: "running version 0.2, task \"from\" 0.1",
            notice: &n,
        });
        assert_eq!(
            text,
            r#"{"Method":"fail","Payload":{"TaskID":"1","ErrMsg":"running version 0.2, task \"from\" 0.1"}}"#
        );
    }

    #[test]
    fn task_ids_and_versions_are_escaped() {
        let mut n = notice();
        n.task_id.set("a\"b\\c").unwrap();
        let (_, text) = encoded(Report::Upgrading { notice: &n });
        assert_eq!(
            text,
            r#"{"Method":"upgrading","Payload":{"TaskID":"a\"b\\c"}}"#
        );
        let (_, text) = encoded(Report::Version {
            version: "1\n0",
            module: Some("m\""),
        });
        assert_eq!(
            text,
            r#"{"Method":"report","Payload":{"Version":"1\n0","Module":"m\""}}"#
        );
    }

    #[test]
    fn progress_and_burning_have_no_message() {
        let n = seed_notice();
        let mut buf = [0u8; 64];
        for report in [
            Report::Progress {
                percent: 50,
                desc: "downloading",
                notice: &n,
            },
            Report::Burning { notice: &n },
        ] {
            assert_eq!(encode(&report, 1, &mut buf), Ok(None));
        }
    }

    #[test]
    fn encoding_into_a_short_buffer_overflows_cleanly() {
        let n = seed_notice();
        let reports = [
            Report::Version {
                version: "1.0",
                module: Some("module_a"),
            },
            Report::Accepted { notice: &n },
            Report::Failure {
                cause: FailureCause::NotFound,
                desc: "",
                notice: &n,
            },
        ];
        for report in reports {
            let mut buf = [0u8; 40];
            assert_eq!(encode(&report, 1, &mut buf), Err(JsonError::Overflow));
        }
    }
}
