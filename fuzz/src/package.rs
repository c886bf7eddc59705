//! The package decoders (`ota::protocol::decode`, SagooIOT and Aliyun) on arbitrary bytes: a
//! `files` array and `dProtocol`. An accepted package keeps within the limits fixed at init
//! (file count, name and URL lengths), has unique non-empty names when it holds several files,
//! each file a size, a digest of its kind and a URL or stream file id as its transfer needs; the
//! notice's own fields summarise it; decoding into a used notice gives the same result; a
//! message that asks for a download over MQTT says so in `transfer` even when it is refused
//! for another field (a session with that off refuses it by that).

use super::decode::{assert_same, check_error, encode_reports, packages, prefilled, SMALL};
use ota::protocol::json::{Object, Value};
use ota::protocol::{self, Downstream, Limits, Protocol, Transfer, UpgradeNotice};

pub fn run(data: &[u8]) {
    for protocol in [Protocol::Sagoo, Protocol::Aliyun] {
        for limits in [packages(), SMALL] {
            one(protocol, &limits, data);
        }
    }
}

fn one(protocol: Protocol, limits: &Limits, payload: &[u8]) {
    let mut fresh = UpgradeNotice::new(limits);
    let got = protocol::decode(protocol, payload, limits, &mut fresh);
    let mut used = prefilled(limits);
    let again = protocol::decode(protocol, payload, limits, &mut used);
    assert_eq!(got, again, "the result depends on the notice's old content");
    match got {
        Ok(Downstream::Upgrade) => {
            check_package(limits, &fresh);
            assert_same(&fresh, &used, "a decode into a used notice differs");
            encode_reports(protocol, &fresh);
        }
        Ok(other) => panic!("{protocol:?} decoded {other:?}"),
        Err(e) => {
            check_error(payload, limits, e);
            // Marked whenever the message's data asks for it, refused or not.
            if let Some(asks) = asks_for_mqtt(protocol, limits, payload) {
                let marked = matches!(fresh.transfer, Transfer::Mqtt { .. });
                assert_eq!(
                    marked, asks,
                    "transfer not marked as the message asks: {e:?}"
                );
            }
        }
    }
}

/// Whether the message's `data` names a download protocol (`dProtocol` neither absent, null
/// nor empty), when the decoder reaches `data`: the message fits the limits, is a JSON object,
/// and has the platform's success `code` and an object `data` (None otherwise).
fn asks_for_mqtt(protocol: Protocol, limits: &Limits, payload: &[u8]) -> Option<bool> {
    if payload.len() > limits.downstream {
        return None;
    }
    let success = match protocol {
        Protocol::Aliyun => protocol::aliyun::SUCCESS_CODE,
        _ => protocol::sagoo::SUCCESS_CODE,
    };
    let msg = Object::parse(payload).ok()?;
    if !msg.get("code")?.as_str()?.eq_str(success) {
        return None;
    }
    let data = msg.get("data")?.as_object()?;
    Some(match data.get("dProtocol") {
        None | Some(Value::Null) => false,
        Some(Value::Str(s)) => !s.raw().is_empty(),
        Some(_) => true,
    })
}

pub(crate) fn check_package(limits: &Limits, n: &UpgradeNotice) {
    assert!(!n.version.is_empty(), "accepted an empty version");
    let files = n.files.as_slice();
    assert!(files.len() <= limits.max_files, "{} files", files.len());
    assert_eq!(n.files.capacity(), limits.max_files);
    for (i, f) in files.iter().enumerate() {
        assert!(f.name.len() <= limits.max_file_name, "name over its limit");
        assert!(f.url.len() <= limits.url, "URL over its limit");
        assert!(!f.name.as_bytes().contains(&0), "a name holds a NUL");
        assert_eq!(f.name.as_str().len(), f.name.len(), "a name is not UTF-8");
        if files.len() > 1 {
            assert!(
                !f.name.is_empty(),
                "an unnamed file in a package of several"
            );
            assert!(
                files[..i].iter().all(|g| g.name != f.name),
                "duplicate name {:?}",
                f.name.as_str()
            );
        }
        assert!(
            (1..=u64::from(u32::MAX)).contains(&f.size),
            "size {}",
            f.size
        );
        assert_eq!(f.digest().len(), f.digest_kind.len());
        assert!(f.digest[f.digest_kind.len()..].iter().all(|&b| b == 0));
        match n.transfer {
            Transfer::Http => {
                assert_eq!(f.stream_file_id, 0);
                let url = f.url.as_str();
                let host = url
                    .strip_prefix("https://")
                    .or_else(|| url.strip_prefix("http://"));
                assert!(
                    host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')),
                    "accepted URL {url:?}"
                );
            }
            Transfer::Mqtt { .. } => assert!(f.url.is_empty(), "a URL over MQTT"),
        }
    }
    match files {
        [] => {
            assert!(
                (1..=u64::from(u32::MAX)).contains(&n.size),
                "size {}",
                n.size
            );
            if let Transfer::Mqtt { .. } = n.transfer {
                assert!(n.url.is_empty(), "a URL over MQTT");
            }
        }
        [f] => assert_eq!(
            (f.url.as_str(), f.size, f.digest_kind, f.digest),
            (n.url.as_str(), n.size, n.digest_kind, n.digest),
            "a package of one file differs from the notice"
        ),
        several => {
            assert!(n.url.is_empty());
            assert_eq!(n.size, several.iter().map(|f| f.size).sum::<u64>());
            assert_eq!(n.digest, [0; 32]);
        }
    }
    if let (Transfer::Mqtt { file_id, .. }, Some(f)) = (n.transfer, files.first()) {
        assert_eq!(
            file_id, f.stream_file_id,
            "the transfer names the first file"
        );
    }
    assert!(n.same_image(n));
}
