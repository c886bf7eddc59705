//! The old image a delta patch was made from, as the upgrade message declares it: a detools
//! patch names no old image, so the platform's message carries the requirement, in `extData`
//! (docs/delta.md, "The old image's requirement"). Two keys of our convention, among the
//! application's own custom keys:
//!
//! - `_delta_old_size`: the old image's size in bytes, a JSON number or a string of decimal
//!   digits, at least 1;
//! - `_delta_old_sha256`: the old image's SHA-256, 64 hex digits (either case).
//!
//! and one for the image the patch makes, which a detools header does not name:
//!
//! - `_delta_new_sha256`: the new image's SHA-256, 64 hex digits: the second check of a delta
//!   upgrade (beside the platform's digest of the patch), compared when the image is complete.
//!
//! Either may come alone; `null` counts as absent. A present key with another value makes the
//! whole message malformed (refused, nothing reported), never a requirement silently dropped.

use super::json::{Object, Value};
use super::NoticeError;

/// The `extData` key of the old image's size.
pub const OLD_SIZE_KEY: &str = "_delta_old_size";
/// The `extData` key of the old image's SHA-256 (64 hex digits).
pub const OLD_SHA256_KEY: &str = "_delta_old_sha256";
/// The `extData` key of the new image's SHA-256 (64 hex digits).
pub const NEW_SHA256_KEY: &str = "_delta_new_sha256";

/// What the upgrade message requires of the image a delta patch applies to; checked against the
/// running image when the download turns out to be a patch (empty: nothing is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaRequirement {
    /// The old image's size in bytes (`_delta_old_size`).
    pub old_size: Option<u64>,
    /// The old image's SHA-256 (`_delta_old_sha256`).
    pub old_sha256: Option<[u8; 32]>,
    /// The new image's SHA-256 (`_delta_new_sha256`): what the patch must make.
    pub new_sha256: Option<[u8; 32]>,
}

impl DeltaRequirement {
    /// No requirement of the old image: neither old-image key was given.
    pub fn is_empty(&self) -> bool {
        self.old_size.is_none() && self.old_sha256.is_none()
    }

    /// Reads both keys of an `extData` object (absent keys leave the field `None`).
    pub fn from_ext_data(ext: &Object<'_>) -> Result<DeltaRequirement, NoticeError> {
        Ok(DeltaRequirement {
            old_size: ext.get(OLD_SIZE_KEY).map(old_size).transpose()?.flatten(),
            old_sha256: ext
                .get(OLD_SHA256_KEY)
                .map(|v| sha256(v, OLD_SHA256_KEY))
                .transpose()?
                .flatten(),
            new_sha256: ext
                .get(NEW_SHA256_KEY)
                .map(|v| sha256(v, NEW_SHA256_KEY))
                .transpose()?
                .flatten(),
        })
    }
}

/// `_delta_old_size`: a positive integer, as a JSON number or a string of decimal digits.
fn old_size(value: Value<'_>) -> Result<Option<u64>, NoticeError> {
    let n = match value {
        Value::Null => return Ok(None),
        Value::Num(_) => value.as_u64(),
        Value::Str(s) => s
            .as_plain()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok()),
        _ => None,
    };
    match n {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(NoticeError::WrongType {
            field: OLD_SIZE_KEY,
            expected: "positive integer",
            found: value.kind(),
        }),
    }
}

/// `_delta_old_sha256` or `_delta_new_sha256` (`key`): exactly 64 hex digits.
fn sha256(value: Value<'_>, key: &'static str) -> Result<Option<[u8; 32]>, NoticeError> {
    let s = match value {
        Value::Null => return Ok(None),
        Value::Str(s) => s,
        other => {
            return Err(NoticeError::WrongType {
                field: key,
                expected: "string",
                found: other.kind(),
            })
        }
    };
    let mut digest = [0; 32];
    if crate::digest::from_hex(s.raw(), &mut digest) {
        Ok(Some(digest))
    } else {
        Err(NoticeError::BadDigest(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{aliyun, sagoo, Limits, UpgradeNotice};

    const OLD_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn sha() -> [u8; 32] {
        let mut d = [0; 32];
        assert!(crate::digest::from_hex(OLD_SHA.as_bytes(), &mut d));
        d
    }

    /// The SagooIOT upgrade message of docs/delta.md, with `ext` as its `extData`.
    fn sagoo_message(ext: &str) -> String {
        format!(
            r#"{{"code":"200","data":{{"size":14021,"version":"2.0.0","url":"https://h/p.bin","sign":"{OLD_SHA}","signMethod":"SHA256","module":"MCU","extData":{ext}}},"id":1626969597470,"message":"success"}}"#
        )
    }

    /// The Aliyun (Link SDK 4.x) upgrade message of docs/delta.md, with `ext` as its `extData`.
    fn aliyun_message(ext: &str) -> String {
        format!(
            r#"{{"code":"1000","data":{{"size":14021,"version":"2.0.0","url":"https://h/p.bin","md5":"93230c3bde425a9d7984a594ac55ea1e","extData":{ext}}},"id":7,"message":"success"}}"#
        )
    }

    fn decode(
        f: fn(
            &[u8],
            &Limits,
            &mut UpgradeNotice,
        ) -> Result<crate::protocol::Downstream, NoticeError>,
        msg: &str,
    ) -> Result<DeltaRequirement, NoticeError> {
        let limits = Limits::default();
        let mut n = UpgradeNotice::new(&limits);
        f(msg.as_bytes(), &limits, &mut n).map(|_| n.delta_old)
    }

    #[test]
    fn sagoo_reads_both_keys_beside_the_batch_id() {
        let ext = format!(
            r#"{{"strategy":"b-7","_delta_old_size":409600,"_delta_old_sha256":"{OLD_SHA}"}}"#
        );
        let want = DeltaRequirement {
            old_size: Some(409_600),
            old_sha256: Some(sha()),
            new_sha256: None,
        };
        assert_eq!(decode(sagoo::decode, &sagoo_message(&ext)), Ok(want));
        // The size as a string of digits, the digest in capitals, extData as a JSON string.
        let ext = format!(
            r#""{{\"_delta_old_size\":\"409600\",\"_delta_old_sha256\":\"{}\"}}""#,
            OLD_SHA.to_uppercase()
        );
        assert_eq!(decode(sagoo::decode, &sagoo_message(&ext)), Ok(want));
    }

    #[test]
    fn either_key_alone_and_null_or_absent_keys() {
        let size_only = DeltaRequirement {
            old_size: Some(5),
            old_sha256: None,
            new_sha256: None,
        };
        let m = sagoo_message(r#"{"_delta_old_size":5,"_delta_old_sha256":null}"#);
        assert_eq!(decode(sagoo::decode, &m), Ok(size_only));
        let m = sagoo_message(&format!(r#"{{"_delta_old_sha256":"{OLD_SHA}"}}"#));
        let r = decode(sagoo::decode, &m).unwrap();
        assert_eq!((r.old_size, r.old_sha256), (None, Some(sha())));
        for ext in [r#"{"key1":"value1"}"#, "null", r#""""#] {
            let r = decode(sagoo::decode, &sagoo_message(ext)).unwrap();
            assert!(r.is_empty(), "{ext}");
        }
    }

    #[test]
    fn the_new_image_digest_is_read_and_checked_like_the_old() {
        let new_sha = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        let ext = format!(r#"{{"_delta_old_size":5,"_delta_new_sha256":"{new_sha}"}}"#);
        let r = decode(sagoo::decode, &sagoo_message(&ext)).unwrap();
        let mut want = [0u8; 32];
        assert!(crate::digest::from_hex(new_sha.as_bytes(), &mut want));
        assert_eq!((r.old_size, r.new_sha256), (Some(5), Some(want)));
        // Alone it names no old image.
        let ext = format!(r#"{{"_delta_new_sha256":"{new_sha}"}}"#);
        assert!(decode(sagoo::decode, &sagoo_message(&ext))
            .unwrap()
            .is_empty());
        let bad = sagoo_message(r#"{"_delta_new_sha256":"abc"}"#);
        assert_eq!(
            decode(sagoo::decode, &bad),
            Err(NoticeError::BadDigest(NEW_SHA256_KEY))
        );
    }

    #[test]
    fn malformed_values_refuse_the_message() {
        let bad_sha = |v: &str| sagoo_message(&format!(r#"{{"_delta_old_sha256":{v}}}"#));
        let bad_size = |v: &str| sagoo_message(&format!(r#"{{"_delta_old_size":{v}}}"#));
        let digest = Err(NoticeError::BadDigest(OLD_SHA256_KEY));
        for v in [
            format!("\"{}\"", &OLD_SHA[..63]),
            format!("\"{OLD_SHA}0\""),
            format!("\"{}g\"", &OLD_SHA[..63]),
            format!("\"{}\"", &OLD_SHA[..32]),
            "\"\"".into(),
        ] {
            assert_eq!(decode(sagoo::decode, &bad_sha(&v)), digest, "{v}");
        }
        assert_eq!(
            decode(sagoo::decode, &bad_sha("7")),
            Err(NoticeError::WrongType {
                field: OLD_SHA256_KEY,
                expected: "string",
                found: "number"
            })
        );
        for (v, found) in [
            ("0", "number"),
            ("-5", "number"),
            ("1.5", "number"),
            ("1e3", "number"),
            ("18446744073709551616", "number"),
            (r#""12a""#, "string"),
            (r#""""#, "string"),
            (r#""-5""#, "string"),
            ("true", "boolean"),
            ("[1]", "array"),
        ] {
            let want = Err(NoticeError::WrongType {
                field: OLD_SIZE_KEY,
                expected: "positive integer",
                found,
            });
            assert_eq!(decode(sagoo::decode, &bad_size(v)), want, "{v}");
        }
    }

    #[test]
    fn aliyun_reads_an_object_ext_data_and_leaves_other_values_alone() {
        let ext = format!(r#"{{"_delta_old_size":"1024","_delta_old_sha256":"{OLD_SHA}"}}"#);
        let want = DeltaRequirement {
            old_size: Some(1024),
            old_sha256: Some(sha()),
            new_sha256: None,
        };
        assert_eq!(decode(aliyun::decode, &aliyun_message(&ext)), Ok(want));
        // A string, a number: not read, as before (Aliyun keeps no extData text).
        for ext in [r#""{\"_delta_old_size\":1}""#, "7", "null"] {
            let r = decode(aliyun::decode, &aliyun_message(ext)).unwrap();
            assert!(r.is_empty(), "{ext}");
        }
        let bad = aliyun_message(r#"{"_delta_old_sha256":"00"}"#);
        assert_eq!(
            decode(aliyun::decode, &bad),
            Err(NoticeError::BadDigest(OLD_SHA256_KEY))
        );
    }

    #[test]
    fn a_new_message_clears_the_last_requirement() {
        let limits = Limits::default();
        let mut n = UpgradeNotice::new(&limits);
        let with = sagoo_message(r#"{"_delta_old_size":5}"#);
        sagoo::decode(with.as_bytes(), &limits, &mut n).unwrap();
        assert_eq!(n.delta_old.old_size, Some(5));
        let without = sagoo_message(r#"{"key1":"value1"}"#);
        sagoo::decode(without.as_bytes(), &limits, &mut n).unwrap();
        assert!(n.delta_old.is_empty());
    }
}
