//! Streaming firmware digests (MD5 or SHA-256) and their hex forms.

use md5::digest::common::hazmat::{SerializableState, SerializedState};
use md5::digest::typenum::Unsigned;
use md5::Digest as _;

/// Which digest an upgrade announces (and the platform spells in `signMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// MD5, 16 bytes: Aliyun, Tencent, UCloud, and SagooIOT's `MD5`.
    Md5,
    /// SHA-256, 32 bytes: SagooIOT's `SHA256`.
    Sha256,
}

impl DigestKind {
    /// Digest length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            DigestKind::Md5 => 16,
            DigestKind::Sha256 => 32,
        }
    }

    /// The platform spelling (`signMethod`).
    pub fn name(self) -> &'static str {
        match self {
            DigestKind::Md5 => "MD5",
            DigestKind::Sha256 => "SHA256",
        }
    }
}

/// A running digest over the bytes fetched so far.
#[derive(Clone)]
pub enum StreamDigest {
    /// MD5 (16 bytes): Aliyun, Tencent, UCloud, and SagooIOT's `signMethod` `MD5`.
    Md5(md5::Md5),
    /// SHA-256 (32 bytes): SagooIOT's `signMethod` `SHA256`.
    Sha256(sha2::Sha256),
}

impl StreamDigest {
    /// An empty digest of `kind`, before any byte.
    pub fn new(kind: DigestKind) -> Self {
        match kind {
            DigestKind::Md5 => StreamDigest::Md5(md5::Md5::new()),
            DigestKind::Sha256 => StreamDigest::Sha256(sha2::Sha256::new()),
        }
    }

    /// Which algorithm this is.
    pub fn kind(&self) -> DigestKind {
        match self {
            StreamDigest::Md5(_) => DigestKind::Md5,
            StreamDigest::Sha256(_) => DigestKind::Sha256,
        }
    }

    /// Feeds the next bytes of the firmware, in download order.
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

    /// Bytes of a saved state of `kind` (88 for MD5, 104 for SHA-256); see
    /// [`save_state`](Self::save_state).
    pub fn state_len(kind: DigestKind) -> usize {
        match kind {
            DigestKind::Md5 => <md5::Md5 as SerializableState>::SerializedStateSize::USIZE,
            DigestKind::Sha256 => <sha2::Sha256 as SerializableState>::SerializedStateSize::USIZE,
        }
    }

    /// Serializes the running state (everything fed so far) into `out`, so the stream can be
    /// continued after a restart with [`restore`](Self::restore). Returns the length
    /// ([`state_len`](Self::state_len), at most 104), or 0 with nothing written when `out` is
    /// shorter. No allocation. The format is that of the digest crates' `SerializableState`,
    /// stable within md-5 0.11.x / sha2 0.11.x.
    pub fn save_state(&self, out: &mut [u8]) -> usize {
        fn put<D: SerializableState>(d: &D, out: &mut [u8]) -> usize {
            let state = d.serialize();
            match out.get_mut(..state.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&state);
                    state.len()
                }
                None => 0,
            }
        }
        match self {
            StreamDigest::Md5(d) => put(d, out),
            StreamDigest::Sha256(d) => put(d, out),
        }
    }

    /// Bytes a state written by [`save_state`](Self::save_state) has absorbed, read from the
    /// digest crates' layout: the core (state words, then the 64-bit block counter) and the
    /// block buffer (its position byte, then its 63 data bytes). `None` when `state` has the
    /// wrong length for `kind` or the count does not fit `u64`.
    pub fn state_bytes(kind: DigestKind, state: &[u8]) -> Option<u64> {
        const BLOCK: usize = 64;
        if state.len() != Self::state_len(kind) {
            return None;
        }
        let core = state.len().checked_sub(BLOCK)?;
        let counter = state.get(core.checked_sub(8)?..core)?;
        let blocks = u64::from_le_bytes(counter.try_into().ok()?);
        let buffered = u64::from(*state.get(core)?);
        blocks.checked_mul(BLOCK as u64)?.checked_add(buffered)
    }

    /// Rebuilds a digest of `kind` from a state written by [`save_state`](Self::save_state).
    /// `None` when `state` has the wrong length for `kind` or is not a valid state, including
    /// one whose message length in bits does not fit the `u64` that finalizing encodes (sha2
    /// accepts such a state and then overflows; no image comes near it).
    pub fn restore(kind: DigestKind, state: &[u8]) -> Option<StreamDigest> {
        Self::state_bytes(kind, state)?.checked_mul(8)?;
        fn get<D: SerializableState>(state: &[u8]) -> Option<D> {
            let state = SerializedState::<D>::try_from(state).ok()?;
            D::deserialize(&state).ok()
        }
        match kind {
            DigestKind::Md5 => get(state).map(StreamDigest::Md5),
            DigestKind::Sha256 => get(state).map(StreamDigest::Sha256),
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

    /// Saves mid-stream (at several cut points, inside and on block boundaries), restores,
    /// continues: the result equals an uninterrupted run.
    #[test]
    fn saved_state_restores_and_continues_to_the_same_digest() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for kind in [DigestKind::Md5, DigestKind::Sha256] {
            let mut whole = StreamDigest::new(kind);
            whole.update(&data);
            let mut expected = [0u8; 32];
            let n = whole.current(&mut expected);
            for cut in [0, 1, 63, 64, 65, 500, 999, 1000] {
                let mut first = StreamDigest::new(kind);
                first.update(&data[..cut]);
                let mut state = [0u8; 128];
                let len = first.save_state(&mut state);
                assert_eq!(len, StreamDigest::state_len(kind));
                drop(first);
                let mut resumed = StreamDigest::restore(kind, &state[..len]).unwrap();
                assert_eq!(resumed.kind(), kind);
                resumed.update(&data[cut..]);
                let mut actual = [0u8; 32];
                assert_eq!(resumed.current(&mut actual), n);
                assert_eq!(actual[..n], expected[..n], "{kind:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn state_bytes_counts_what_was_absorbed_and_bounds_restore() {
        for kind in [DigestKind::Md5, DigestKind::Sha256] {
            for n in [0usize, 1, 63, 64, 65, 1000] {
                let mut d = StreamDigest::new(kind);
                d.update(&vec![7u8; n]);
                let mut state = [0u8; 128];
                let len = d.save_state(&mut state);
                assert_eq!(
                    StreamDigest::state_bytes(kind, &state[..len]),
                    Some(n as u64)
                );
            }
            // A block counter whose length in bits overflows u64 (a fuzz finding): refused.
            let len = StreamDigest::state_len(kind);
            let mut state = [0u8; 128];
            StreamDigest::new(kind).save_state(&mut state);
            state[len - 72..len - 64].copy_from_slice(&(u64::MAX / 512 + 1).to_le_bytes());
            assert!(StreamDigest::restore(kind, &state[..len]).is_none());
            assert_eq!(StreamDigest::state_bytes(kind, &state[..len - 1]), None);
        }
    }

    #[test]
    fn state_sizes_and_bad_states() {
        assert_eq!(StreamDigest::state_len(DigestKind::Md5), 88);
        assert_eq!(StreamDigest::state_len(DigestKind::Sha256), 104);
        let d = StreamDigest::new(DigestKind::Sha256);
        let mut small = [0u8; 103];
        assert_eq!(d.save_state(&mut small), 0, "too short: nothing written");
        assert_eq!(small, [0u8; 103]);
        let mut state = [0u8; 128];
        let len = d.save_state(&mut state);
        assert!(StreamDigest::restore(DigestKind::Md5, &state[..len]).is_none());
        assert!(StreamDigest::restore(DigestKind::Sha256, &state[..len - 1]).is_none());
        // The buffered-block position byte says 200 bytes in a 64-byte block.
        let md5 = StreamDigest::new(DigestKind::Md5);
        let len = md5.save_state(&mut state);
        state[24] = 200;
        assert!(StreamDigest::restore(DigestKind::Md5, &state[..len]).is_none());
    }
}
