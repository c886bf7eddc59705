//! Streaming firmware digests (MD5 or SHA-256) and their hex forms.

use md5::Digest as _;

pub use crate::protocol::DigestKind;

/// A running digest over the bytes fetched so far.
#[derive(Clone)]
pub enum StreamDigest {
    Md5(md5::Md5),
    Sha256(sha2::Sha256),
}

impl StreamDigest {
    pub fn new(kind: DigestKind) -> Self {
        match kind {
            DigestKind::Md5 => StreamDigest::Md5(md5::Md5::new()),
            DigestKind::Sha256 => StreamDigest::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn kind(&self) -> DigestKind {
        match self {
            StreamDigest::Md5(_) => DigestKind::Md5,
            StreamDigest::Sha256(_) => DigestKind::Sha256,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            StreamDigest::Md5(d) => d.update(bytes),
            StreamDigest::Sha256(d) => d.update(bytes),
        }
    }

    /// The digest of everything fed so far, into `out[..kind.len()]`; the stream continues.
    pub fn current(&self, out: &mut [u8; 32]) -> usize {
        match self {
            StreamDigest::Md5(d) => {
                let r = d.clone().finalize();
                out[..16].copy_from_slice(&r);
                16
            }
            StreamDigest::Sha256(d) => {
                let r = d.clone().finalize();
                out.copy_from_slice(&r);
                32
            }
        }
    }
}

/// Lowercase hex of `bytes` into `out` (which must hold `2 * bytes.len()`); returns the text.
pub fn to_hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let out = &mut out[..bytes.len() * 2];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    std::str::from_utf8(out).unwrap_or("")
}

/// Parses exactly `2 * out.len()` hex digits (either case) into `out`.
pub fn from_hex(text: &[u8], out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return false;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_and_sha256_known_values_streamed_in_pieces() {
        let mut out = [0u8; 32];
        let mut hex = [0u8; 64];
        let mut d = StreamDigest::new(DigestKind::Md5);
        d.update(b"hello ");
        d.update(b"world");
        let n = d.current(&mut out);
        assert_eq!(
            to_hex(&out[..n], &mut hex),
            "5eb63bbbe01eeed093cb22bb8f5acdc3"
        );
        let mut d = StreamDigest::new(DigestKind::Sha256);
        d.update(b"abc");
        let n = d.current(&mut out);
        assert_eq!(
            to_hex(&out[..n], &mut hex),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_parsing_rejects_bad_digits_and_lengths() {
        let mut out = [0u8; 2];
        assert!(from_hex(b"aB09", &mut out));
        assert_eq!(out, [0xab, 0x09]);
        assert!(!from_hex(b"aB0g", &mut out));
        assert!(!from_hex(b"aB0", &mut out));
        assert!(!from_hex(b"aB0900", &mut out));
    }
}
