//! The field readers the four platforms' decoders share: each takes one field of a parsed JSON
//! object into the notice's fixed-size storage, with the limits and error of [`NoticeError`].
//! The platform files hold what differs; this file what is read the same way everywhere.

use super::json::{self, Object, Value};
use super::{DigestKind, FixedStr, Limits, NoticeError, SetJsonError};

/// Reads a required string field into `dst`, unescaped.
pub(crate) fn take_str(
    obj: &Object<'_>,
    field: &'static str,
    dst: &mut FixedStr,
) -> Result<(), NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    take_value_str(value, field, dst)
}

/// Reads a required, non-empty string field into `dst`, unescaped.
pub(crate) fn take_nonempty_str(
    obj: &Object<'_>,
    field: &'static str,
    dst: &mut FixedStr,
) -> Result<(), NoticeError> {
    take_str(obj, field, dst)?;
    if dst.is_empty() {
        return Err(NoticeError::Empty(field));
    }
    Ok(())
}

/// Reads a required string field without copying it (message types and result codes).
pub(crate) fn take_raw_str<'a>(
    obj: &Object<'a>,
    field: &'static str,
) -> Result<json::Str<'a>, NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    value.as_str().ok_or(NoticeError::WrongType {
        field,
        expected: "string",
        found: value.kind(),
    })
}

/// Reads an optional string field into `dst` (cleared when absent).
pub(crate) fn take_opt_str(
    obj: &Object<'_>,
    field: &'static str,
    dst: &mut FixedStr,
) -> Result<(), NoticeError> {
    match obj.get(field) {
        None => {
            dst.clear();
            Ok(())
        }
        Some(value) => take_value_str(value, field, dst),
    }
}

fn take_value_str(
    value: Value<'_>,
    field: &'static str,
    dst: &mut FixedStr,
) -> Result<(), NoticeError> {
    let s = value.as_str().ok_or(NoticeError::WrongType {
        field,
        expected: "string",
        found: value.kind(),
    })?;
    // Every field reaches C as a NUL-terminated string: a "\u0000" would cut it silently.
    if s.chars().any(|c| c == '\0') {
        return Err(NoticeError::Nul(field));
    }
    dst.set_json(s).map_err(|e| match e {
        SetJsonError::TooLong(t) => NoticeError::TooLong {
            field,
            len: t.len,
            max: t.max,
        },
        SetJsonError::Json(j) => NoticeError::Json(j),
    })
}

/// Reads a required JSON-number size, 1 ..= u32::MAX.
pub(crate) fn take_size(obj: &Object<'_>, field: &'static str) -> Result<u64, NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    match value {
        Value::Num(_) => match value.as_u64() {
            Some(n) if (1..=u32::MAX as u64).contains(&n) => Ok(n),
            _ => Err(NoticeError::BadSize),
        },
        other => Err(NoticeError::WrongType {
            field,
            expected: "number",
            found: other.kind(),
        }),
    }
}

/// Reads a required hex digest of `kind` into `out`.
pub(crate) fn take_digest(
    obj: &Object<'_>,
    field: &'static str,
    kind: DigestKind,
    out: &mut [u8; 32],
) -> Result<(), NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    let s = value.as_str().ok_or(NoticeError::WrongType {
        field,
        expected: "string",
        found: value.kind(),
    })?;
    if crate::digest::from_hex(s.raw(), &mut out[..kind.len()]) {
        Ok(())
    } else {
        Err(NoticeError::BadDigest(field))
    }
}

/// Reads a required object field.
pub(crate) fn take_object<'a>(
    obj: &Object<'a>,
    field: &'static str,
) -> Result<Object<'a>, NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    value.as_object().ok_or(NoticeError::WrongType {
        field,
        expected: "object",
        found: value.kind(),
    })
}

/// Checks that a stored URL has a scheme the fetcher speaks.
pub(crate) fn check_url(url: &FixedStr) -> Result<(), NoticeError> {
    let u = url.as_str();
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(NoticeError::BadUrl),
    }
}

/// Parses a downstream payload as one JSON object, within the size limit.
pub(crate) fn parse_object<'a>(
    payload: &'a [u8],
    limits: &Limits,
) -> Result<Object<'a>, NoticeError> {
    if payload.len() > limits.downstream {
        return Err(NoticeError::Oversize {
            len: payload.len(),
            max: limits.downstream,
        });
    }
    Object::parse(payload).map_err(NoticeError::Json)
}
