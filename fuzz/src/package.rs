//! The package decoders (`ota::protocol::decode_package`, SagooIOT and Aliyun) on arbitrary
//! bytes: a `files` array and `dProtocol` decoded without the engine's refusal. An accepted
//! package keeps within the limits fixed at init (file count, name and URL lengths), has unique
//! non-empty names when it holds several files, each file a size, a digest of its kind and a
//! URL or stream file id as its transfer needs; the notice's own fields summarise it; decoding
//! into a used notice gives the same result; and `decode` refuses exactly what the engine does
//! not fetch yet.

use super::decode::{
    assert_same, check_error, check_notice, encode_reports, packages, prefilled, SMALL,
};
use ota::protocol::package::{MQTT_REFUSAL, PACKAGE_REFUSAL};
use ota::protocol::{self, Downstream, Limits, NoticeError, Protocol, Transfer, UpgradeNotice};

pub fn run(data: &[u8]) {
    for protocol in [Protocol::Sagoo, Protocol::Aliyun] {
        for limits in [packages(), SMALL] {
            one(protocol, &limits, data);
        }
    }
}

fn one(protocol: Protocol, limits: &Limits, payload: &[u8]) {
    let mut fresh = UpgradeNotice::new(limits);
    let got = protocol::decode_package(protocol, payload, limits, &mut fresh);
    let mut used = prefilled(limits);
    let again = protocol::decode_package(protocol, payload, limits, &mut used);
    assert_eq!(got, again, "the result depends on the notice's old content");
    let mut gated = UpgradeNotice::new(limits);
    let refused = protocol::decode(protocol, payload, limits, &mut gated);
    match got {
        Ok(Downstream::Upgrade) => {
            check_package(limits, &fresh);
            assert_same(&fresh, &used, "a decode into a used notice differs");
            encode_reports(protocol, &fresh);
            let expected = match fresh.transfer {
                Transfer::Mqtt { .. } => Err(NoticeError::Unsupported(MQTT_REFUSAL)),
                Transfer::Http if fresh.is_package() => {
                    Err(NoticeError::Unsupported(PACKAGE_REFUSAL))
                }
                Transfer::Http => Ok(Downstream::Upgrade),
            };
            assert_eq!(refused, expected, "decode and decode_package disagree");
            match refused {
                Ok(_) => {
                    check_notice(protocol, limits, &gated);
                    assert_same(
                        &fresh,
                        &gated,
                        "decode and decode_package decode differently",
                    );
                }
                Err(_) => assert_eq!(gated.version.as_str(), fresh.version.as_str()),
            }
        }
        Ok(other) => panic!("{protocol:?} decoded {other:?}"),
        Err(e) => {
            check_error(payload, limits, e);
            // decode refuses a download over MQTT whatever else is wrong; otherwise the same error.
            if refused != Err(NoticeError::Unsupported(MQTT_REFUSAL)) {
                assert_eq!(refused, Err(e), "decode and decode_package disagree");
            }
        }
    }
}

fn check_package(limits: &Limits, n: &UpgradeNotice) {
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
