//! Fixed-capacity text buffers: sized once at init, never grown afterwards.

use super::json::{JsonError, Str};

/// A UTF-8 string with a capacity fixed at construction. Setting a longer value fails and leaves
/// the old value in place, so an oversized field is rejected, never silently truncated.
#[derive(Debug, Clone)]
pub struct FixedStr {
    buf: Box<[u8]>,
    len: usize,
}

/// The value does not fit the capacity fixed at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// Bytes the value needs (unescaped, for a JSON string).
    pub len: usize,
    /// The buffer's capacity in bytes.
    pub max: usize,
}

impl FixedStr {
    /// An empty string that can hold up to `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        FixedStr {
            buf: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Replaces the content.
    pub fn set(&mut self, s: &str) -> Result<(), TooLong> {
        let max = self.buf.len();
        if s.len() > max {
            return Err(TooLong { len: s.len(), max });
        }
        self.buf[..s.len()].copy_from_slice(s.as_bytes());
        self.len = s.len();
        Ok(())
    }

    /// Replaces the content with a JSON string, unescaped. On failure the old content is kept.
    pub fn set_json(&mut self, s: Str<'_>) -> Result<(), SetJsonError> {
        let max = self.buf.len();
        let need = s.decoded_len();
        if need > max {
            return Err(SetJsonError::TooLong(TooLong { len: need, max }));
        }
        let n = s
            .unescape_into(&mut self.buf[..])
            .map_err(SetJsonError::Json)?;
        self.len = n;
        Ok(())
    }

    /// Empties the string (capacity kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether the string holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the content in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The content's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The content.
    pub fn as_str(&self) -> &str {
        // Content only ever comes from &str or validated, unescaped JSON text.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Swaps contents with another buffer of any capacity, without copying or allocating.
    pub fn swap(&mut self, other: &mut FixedStr) {
        std::mem::swap(self, other);
    }
}

impl PartialEq for FixedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Display for FixedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a JSON string could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetJsonError {
    /// The unescaped string is longer than the capacity.
    TooLong(TooLong),
    /// Unescaping failed; not expected, as [`Object::parse`](super::json::Object::parse)
    /// validated the escapes and the length was checked first.
    Json(JsonError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_within_and_beyond_capacity() {
        let mut s = FixedStr::with_capacity(5);
        s.set("1.0.0").unwrap();
        assert_eq!(s.as_str(), "1.0.0");
        assert_eq!(s.set("1.0.10"), Err(TooLong { len: 6, max: 5 }));
        assert_eq!(s.as_str(), "1.0.0", "a rejected value leaves the old one");
        s.clear();
        assert!(s.is_empty());
    }
}
