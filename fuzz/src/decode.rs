//! Each protocol's downstream decoder (`ota::protocol::decode`) on arbitrary bytes, and what an
//! accepted notice must satisfy: fields within the limits fixed at init and valid UTF-8, a
//! usable URL, a result that does not depend on what the notice held before, every report
//! re-encoded into buffers of any size without overrun, and a breakpoint record that
//! round-trips. A package of several files or over MQTT (SagooIOT, Aliyun) is checked as the
//! `files` target checks it.

use ota::protocol::json::{JsonError, Object, Value};
use ota::protocol::{
    self, DigestKind, Downstream, FailureCause, FixedStr, Limits, NoticeError, Protocol, Report,
    Transfer, UpgradeNotice,
};
use ota::resume::{Breakpoint, RECORD_LEN, TEXT_MAX};

use super::package::check_package;

pub fn aliyun(data: &[u8]) {
    run(Protocol::Aliyun, data)
}

pub fn tencent(data: &[u8]) {
    run(Protocol::Tencent, data)
}

pub fn ucloud(data: &[u8]) {
    run(Protocol::Ucloud, data)
}

pub fn sagoo(data: &[u8]) {
    run(Protocol::Sagoo, data)
}

/// Tight limits, so the too-long and oversize paths run on small inputs too.
/// The default limits, with room for packages of several files (the default is the one-file
/// form until the engine walks packages).
pub(crate) fn packages() -> Limits {
    Limits {
        max_files: 8,
        ..Limits::default()
    }
}

pub(crate) const SMALL: Limits = Limits {
    url: 24,
    version: 5,
    module: 5,
    task_id: 5,
    ext_data: 40,
    message: 96,
    downstream: 300,
    max_files: 2,
    max_file_name: 4,
};

/// A package of two files over MQTT, within [`SMALL`], to leave files and a transfer behind in
/// a used notice.
const PREFILL: &[u8] = br#"{"code":"200","data":{"version":"1","signMethod":"MD5","dProtocol":"mqtt","streamId":3,"files":[{"fileName":"p","fileSize":1,"fileSign":"00000000000000000000000000000000","streamFileId":1},{"fileName":"q","fileSize":2,"fileSign":"11111111111111111111111111111111","streamFileId":2}]}}"#;

/// Room for any report of a notice within the default limits (escaping grows text 6×).
const BIG: usize = 64 * 1024;

const ALL_CAUSES: [FailureCause; 7] = [
    FailureCause::DownloadTimeout,
    FailureCause::NotFound,
    FailureCause::UrlExpired,
    FailureCause::DownloadFailed,
    FailureCause::DigestMismatch,
    FailureCause::BurnFailed,
    FailureCause::UpgradeFailed,
];

/// Decodes `payload` as `protocol`'s downstream message and checks the result.
pub fn run(protocol: Protocol, payload: &[u8]) {
    for limits in [packages(), SMALL] {
        let mut fresh = UpgradeNotice::new(&limits);
        let got = protocol::decode(protocol, payload, &limits, &mut fresh);
        let mut used = prefilled(&limits);
        let before = used.clone();
        let again = protocol::decode(protocol, payload, &limits, &mut used);
        assert_eq!(got, again, "the result depends on the notice's old content");
        match got {
            Ok(Downstream::Upgrade) => {
                if fresh.is_package() || matches!(fresh.transfer, Transfer::Mqtt { .. }) {
                    assert!(matches!(protocol, Protocol::Aliyun | Protocol::Sagoo));
                    check_package(&limits, &fresh);
                } else {
                    check_notice(protocol, &limits, &fresh);
                    check_breakpoint(protocol, &limits, &fresh);
                }
                assert_same(&fresh, &used, "a decode into a used notice differs");
                encode_reports(protocol, &fresh);
            }
            Ok(other) => {
                let expected = match other {
                    Downstream::VersionAck { .. } => protocol == Protocol::Tencent,
                    _ => matches!(protocol, Protocol::Tencent | Protocol::Ucloud),
                };
                assert!(expected, "{protocol:?} decoded {other:?}");
                assert_same(
                    &before,
                    &used,
                    "a message that is not an upgrade wrote the notice",
                );
            }
            Err(e) => check_error(payload, &limits, e),
        }
    }
}

/// A notice whose every field holds something, as after an earlier upgrade (a package of two
/// files over MQTT included).
pub(crate) fn prefilled(limits: &Limits) -> UpgradeNotice {
    let mut n = UpgradeNotice::new(limits);
    let package = protocol::decode(Protocol::Sagoo, PREFILL, limits, &mut n);
    assert_eq!(
        package,
        Ok(Downstream::Upgrade),
        "the prefill package decodes"
    );
    assert!(n.is_package() && matches!(n.transfer, Transfer::Mqtt { .. }));
    for s in [
        &mut n.version,
        &mut n.url,
        &mut n.module,
        &mut n.task_id,
        &mut n.ext_data,
        &mut n.current_version,
        &mut n.batch,
    ] {
        s.set("z").expect("every limit holds one byte");
    }
    n.size = 77;
    n.digest_kind = DigestKind::Sha256;
    n.digest = [0xEE; 32];
    n.message_id = 5;
    n
}

fn strings(n: &UpgradeNotice) -> [(&'static str, &FixedStr); 7] {
    [
        ("version", &n.version),
        ("url", &n.url),
        ("module", &n.module),
        ("task_id", &n.task_id),
        ("ext_data", &n.ext_data),
        ("current_version", &n.current_version),
        ("batch", &n.batch),
    ]
}

pub(crate) fn assert_same(a: &UpgradeNotice, b: &UpgradeNotice, what: &str) {
    for ((name, x), (_, y)) in strings(a).into_iter().zip(strings(b)) {
        assert_eq!(x.as_bytes(), y.as_bytes(), "{what}: {name}");
    }
    assert_eq!(a.transfer, b.transfer, "{what}: transfer");
    assert_eq!(a.files.len(), b.files.len(), "{what}: files");
    for (x, y) in a.files.as_slice().iter().zip(b.files.as_slice()) {
        assert_eq!(
            (
                x.name.as_str(),
                x.url.as_str(),
                x.size,
                x.digest_kind,
                x.digest,
                x.stream_file_id
            ),
            (
                y.name.as_str(),
                y.url.as_str(),
                y.size,
                y.digest_kind,
                y.digest,
                y.stream_file_id
            ),
            "{what}: a file"
        );
    }
    assert_eq!(
        (a.size, a.digest_kind, a.digest, a.message_id),
        (b.size, b.digest_kind, b.digest, b.message_id),
        "{what}"
    );
}

/// One file over HTTP(S); a package of one file repeats it.
pub(crate) fn check_notice(protocol: Protocol, limits: &Limits, n: &UpgradeNotice) {
    if let Some(f) = n.files.get(0) {
        assert!(matches!(protocol, Protocol::Aliyun | Protocol::Sagoo));
        assert_eq!(
            (f.url.as_str(), f.size, f.digest_kind, f.digest),
            (n.url.as_str(), n.size, n.digest_kind, n.digest),
            "a package of one file differs from the notice"
        );
    }
    let caps = [
        limits.version,
        limits.url,
        limits.module,
        limits.task_id,
        limits.ext_data,
        limits.version,
        limits.task_id,
    ];
    for ((name, s), cap) in strings(n).into_iter().zip(caps) {
        assert!(
            s.len() <= cap,
            "{name}: {} bytes over its limit {cap}",
            s.len()
        );
        assert_eq!(s.as_str().len(), s.len(), "{name} is not UTF-8");
        assert!(
            !s.as_bytes().contains(&0),
            "{name} holds a NUL (cut short in C)"
        );
    }
    assert!(!n.version.is_empty(), "accepted an empty version");
    assert!(
        (1..=u64::from(u32::MAX)).contains(&n.size),
        "size {}",
        n.size
    );
    let url = n.url.as_str();
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    assert!(
        host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')),
        "accepted URL {url:?}"
    );
    assert_eq!(n.digest().len(), n.digest_kind.len());
    assert!(
        n.digest[n.digest_kind.len()..].iter().all(|&b| b == 0),
        "digest bytes past its length"
    );
    let empty = |fields: &[&FixedStr]| fields.iter().all(|f| f.is_empty());
    match protocol {
        Protocol::Aliyun => {
            // iotkit v2.3's md5; a Link SDK 4.x package names its method.
            assert!(n.digest_kind == DigestKind::Md5 || !n.files.is_empty());
            assert!(empty(&[
                &n.task_id,
                &n.ext_data,
                &n.current_version,
                &n.batch
            ]));
        }
        Protocol::Tencent => {
            assert_eq!(n.digest_kind, DigestKind::Md5);
            assert!(empty(&[&n.module, &n.task_id, &n.ext_data, &n.batch]));
            assert!(n.current_version.is_empty() && n.message_id == 0);
        }
        Protocol::Ucloud => {
            assert_eq!(n.digest_kind, DigestKind::Md5);
            assert!(!n.task_id.is_empty(), "UCloud task without TaskID");
            assert!(empty(&[&n.ext_data, &n.batch]) && n.message_id == 0);
        }
        Protocol::Sagoo => {
            assert!(empty(&[&n.task_id, &n.current_version]));
            if !n.ext_data.is_empty() {
                let ext = Object::parse(n.ext_data.as_bytes()).expect("extData is an object");
                if !n.batch.is_empty() {
                    let strategy = ext.get("strategy").and_then(|v| v.as_str());
                    assert!(strategy.is_some_and(|s| s.eq_str(n.batch.as_str())));
                }
            } else {
                assert!(n.batch.is_empty(), "a batch without extData");
            }
        }
    }
    assert!(n.same_image(n));
    assert!(!n.module_name().is_empty());
}

pub(crate) fn check_error(payload: &[u8], limits: &Limits, e: NoticeError) {
    assert!(!e.to_string().is_empty());
    let oversize = payload.len() > limits.downstream;
    match e {
        NoticeError::Oversize { len, max } => {
            assert!(oversize && len == payload.len() && max == limits.downstream)
        }
        NoticeError::Json(j) => {
            assert!(!oversize);
            assert_eq!(
                Object::parse(payload).err(),
                Some(j),
                "Json error from valid JSON"
            );
        }
        NoticeError::TooLong { len, max, .. } => assert!(!oversize && len > max),
        _ => {
            assert!(!oversize, "{e} for a message over the size limit");
            assert!(Object::parse(payload).is_ok(), "{e} for invalid JSON");
        }
    }
}

fn reports(n: &UpgradeNotice) -> Vec<Report<'_>> {
    let text = n.url.as_str();
    let mut all = vec![
        Report::Version {
            version: n.version.as_str(),
            module: None,
        },
        Report::Version {
            version: n.version.as_str(),
            module: Some(n.module.as_str()),
        },
        Report::Request {
            version: n.current_version.as_str(),
            module: Some(n.module_name()),
        },
        Report::Accepted { notice: n },
        Report::Upgrading { notice: n },
        Report::Progress {
            percent: (n.size % 101) as u8,
            desc: n.ext_data.as_str(),
            notice: n,
        },
        Report::Progress {
            percent: (n.message_id % 256) as u8,
            desc: text,
            notice: n,
        },
        Report::Burning { notice: n },
        Report::Success {
            version: n.version.as_str(),
            notice: n,
        },
    ];
    for cause in ALL_CAUSES {
        for desc in ["", text] {
            all.push(Report::Failure {
                cause,
                desc,
                notice: n,
            });
        }
    }
    all
}

/// The version a version report carries, where each protocol puts it.
fn reported_version<'a>(protocol: Protocol, msg: &Object<'a>) -> Option<Value<'a>> {
    let (outer, inner) = match protocol {
        Protocol::Aliyun | Protocol::Sagoo => ("params", "version"),
        Protocol::Tencent => ("report", "version"),
        Protocol::Ucloud => ("Payload", "Version"),
    };
    msg.get(outer)?.as_object()?.get(inner)
}

pub(crate) fn encode_reports(protocol: Protocol, n: &UpgradeNotice) {
    let mut big = vec![0u8; BIG];
    for report in reports(n) {
        let id = n.message_id ^ n.size;
        let whole = protocol::encode(protocol, &report, id, &mut big);
        let need = match whole {
            Ok(Some((_, len))) => {
                let msg = Object::parse(&big[..len]).unwrap_or_else(|e| {
                    panic!(
                        "{report:?} encoded as invalid JSON ({e}): {}",
                        String::from_utf8_lossy(&big[..len])
                    )
                });
                if let Report::Version { version, .. } = report {
                    let v = reported_version(protocol, &msg).and_then(|v| v.as_str());
                    assert!(v.is_some_and(|v| v.eq_str(version)), "version not echoed");
                }
                Some(len)
            }
            Ok(None) => None,
            Err(e) => panic!("{report:?} does not fit {BIG} bytes: {e}"),
        };
        let len = need.unwrap_or(0);
        let caps = [0, 1, len / 2, len.saturating_sub(1), len, len + 1];
        for cap in caps {
            let mut buf = vec![0xA5u8; cap + 16];
            let r = protocol::encode(protocol, &report, id, &mut buf[..cap]);
            match need {
                None => assert_eq!(r, Ok(None)),
                Some(len) if cap >= len => {
                    assert_eq!(r, whole, "{cap}-byte buffer");
                    assert_eq!(buf[..len], big[..len]);
                }
                Some(_) => assert_eq!(r, Err(JsonError::Overflow), "{cap}-byte buffer"),
            }
            assert!(
                buf[cap..].iter().all(|&b| b == 0xA5),
                "wrote past the buffer"
            );
        }
    }
}

fn check_breakpoint(protocol: Protocol, limits: &Limits, n: &UpgradeNotice) {
    let texts = [&n.version, &n.module, &n.task_id, &n.batch];
    let too_long = texts.iter().any(|s| s.len() > TEXT_MAX);
    let bp = match Breakpoint::for_upgrade(protocol, n) {
        Ok(bp) => bp,
        Err(e) => {
            assert!(too_long, "no breakpoint record: {e}");
            return;
        }
    };
    assert!(!too_long, "a record of a field over {TEXT_MAX} bytes");
    let mut buf = [0u8; RECORD_LEN];
    assert_eq!(bp.encode(&mut buf), RECORD_LEN);
    assert_eq!(Breakpoint::decode(&buf), Ok(bp.clone()));
    assert!(bp.matches(n) && bp.protocol() == protocol);
    let mut back = UpgradeNotice::new(limits);
    bp.fill_notice(&mut back)
        .expect("the notice's own limits hold its fields");
    assert!(back.same_image(n));
    assert_eq!(back.task_id.as_str(), n.task_id.as_str());
    assert_eq!(back.batch.as_str(), n.batch.as_str());
}
