//! The delta tail of a breakpoint record: what a power loss in the middle of a delta patch
//! (issue 17) needs besides the image record, so the patch resumes where the firmware's stored
//! bytes end instead of starting over.
//!
//! A patch's record is the ordinary record ([`super::RECORD_LEN`] bytes, format 3) for the
//! **patch** (its size, digest, and `offset` = patch bytes consumed, with the digest state over
//! them; no image verifier state there), followed in the same store write by this tail
//! (integers little-endian):
//!
//! | offset | bytes | field |
//! |-------:|------:|-------|
//! |      0 |     6 | magic `OTADT1` |
//! |      6 |     8 | new-image bytes the firmware stored (what `FetchYield` handed out) |
//! |     14 |     8 | the new image's size (from the patch header) |
//! |     22 |     2 | image verifier state length `n` (0: none) |
//! |     24 |     n | image verifier state over the new image's stored bytes ([`crate::image`]) |
//! |   24+n |     1 | new-image SHA-256 state length `d` (0: none, else 104) |
//! |   25+n |     d | SHA-256 state over the new image's stored bytes (when the message names the new image's digest) |
//! | 25+n+d |     2 | applier state length `m` (≥ [`STATE_FIXED_LEN`]) |
//! | 27+n+d |     m | the patch applier's saved state ([`PatchApplier::save_state`]) |
//! | 27+n+d+m | 4 | CRC-32 (IEEE) of the base record's 824 bytes and the tail before it |
//!
//! The CRC covers the base record too, so a tail is never read with another record's base. An
//! earlier build, which knows no tail, reads such a record as corrupt and starts over.

use super::{RecordError, DIGEST_STATE_MAX};
use crate::delta::{DeltaBudget, PatchApplier, STATE_FIXED_LEN};
use crate::digest::{DigestKind, StreamDigest};
use crate::image::{ImageVerifier, STATE_MAX as IMAGE_STATE_MAX};

/// The tail's first bytes.
pub const TAIL_MAGIC: &[u8; 6] = b"OTADT1";
/// Bytes of a tail besides the three states.
const TAIL_FIXED: usize = 6 + 8 + 8 + 2 + 1 + 2 + 4;
/// Room for the new image's SHA-256 state.
const NEW_DIGEST_MAX: usize = DIGEST_STATE_MAX;

/// The longest tail a session whose applier has `budget` writes.
pub fn tail_max(budget: DeltaBudget) -> usize {
    TAIL_FIXED + IMAGE_STATE_MAX + NEW_DIGEST_MAX + budget.state_max()
}

/// The longest record with a tail under the default budget ([`DeltaBudget::DEFAULT`], the C
/// API's): the size a store needs for delta upgrades (5440 bytes).
pub const DELTA_RECORD_LEN: usize = super::RECORD_LEN
    + TAIL_FIXED
    + IMAGE_STATE_MAX
    + NEW_DIGEST_MAX
    + STATE_FIXED_LEN
    + (1 << DeltaBudget::DEFAULT.max_window_bits);

/// The longest tail any budget writes (a 32 KiB heatshrink window).
pub const TAIL_MAX_ANY: usize =
    TAIL_FIXED + IMAGE_STATE_MAX + NEW_DIGEST_MAX + crate::delta::STATE_MAX;

/// A tail's fields, borrowed from the bytes they were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaTail<'a> {
    /// New-image bytes the firmware stored.
    pub delivered: u64,
    /// The new image's size.
    pub new_size: u64,
    /// The image verifier's state over `delivered` bytes (empty: none).
    pub image_state: &'a [u8],
    /// The new image's SHA-256 state over `delivered` bytes (empty: none).
    pub new_digest_state: &'a [u8],
    /// The applier's saved state.
    pub applier_state: &'a [u8],
}

impl DeltaTail<'_> {
    /// The image verifier over the stored new-image bytes, when the tail holds its state.
    pub fn restore_image(&self) -> Option<ImageVerifier> {
        match self.image_state {
            [] => None,
            s => ImageVerifier::restore(s),
        }
    }

    /// The new image's SHA-256 over the stored bytes, when the tail holds its state.
    pub fn restore_new_digest(&self) -> Option<StreamDigest> {
        match self.new_digest_state {
            [] => None,
            s => StreamDigest::restore(DigestKind::Sha256, s),
        }
    }
}

/// Writes the tail after `base` (the encoded base record) into `out`: the fields, the
/// verifier's state and the new image's SHA-256 state when given (each must cover exactly
/// `delivered` bytes), and the applier's state as `save_state` writes it. Returns the tail's length, or 0 (nothing to save) when
/// `out` is too short, the verifier covers another count, or the applier saved nothing (a
/// refused patch). No allocation.
pub fn encode_tail(
    base: &[u8],
    delivered: u64,
    new_size: u64,
    image: Option<&ImageVerifier>,
    new_digest: Option<&StreamDigest>,
    applier: &PatchApplier,
    out: &mut [u8],
) -> usize {
    let digest_bytes = |d: &StreamDigest| {
        let mut state = [0u8; NEW_DIGEST_MAX];
        let n = d.save_state(&mut state);
        StreamDigest::state_bytes(d.kind(), &state[..n])
    };
    if out.len() < TAIL_FIXED + IMAGE_STATE_MAX + NEW_DIGEST_MAX
        || image.is_some_and(|v| v.received() != delivered)
        || new_digest
            .is_some_and(|d| d.kind() != DigestKind::Sha256 || digest_bytes(d) != Some(delivered))
    {
        return 0;
    }
    out[..6].copy_from_slice(TAIL_MAGIC);
    out[6..14].copy_from_slice(&delivered.to_le_bytes());
    out[14..22].copy_from_slice(&new_size.to_le_bytes());
    let n = match image {
        Some(v) => v.save_state(&mut out[24..24 + IMAGE_STATE_MAX]),
        None => 0,
    };
    out[22..24].copy_from_slice(&(n as u16).to_le_bytes());
    let d = match new_digest {
        Some(digest) => digest.save_state(&mut out[25 + n..25 + n + NEW_DIGEST_MAX]),
        None => 0,
    };
    out[24 + n] = d as u8;
    let at = 25 + n + d;
    let Some(room) = out.len().checked_sub(at + 2 + 4) else {
        return 0;
    };
    let m = applier.save_state(&mut out[at + 2..at + 2 + room]);
    if m == 0 {
        return 0;
    }
    out[at..at + 2].copy_from_slice(&(m as u16).to_le_bytes());
    let end = at + 2 + m;
    let crc = crc32_pair(base, &out[..end]);
    out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    end + 4
}

/// Reads a tail written by [`encode_tail`] after `base`: checks its frame and CRC (over `base`
/// and the tail), that the verifier state covers `delivered` bytes and that the applier state
/// is one an applier of `budget` takes, at the patch offset `patch_offset` (the base record's)
/// and new-image offset `delivered`, for a new image of `new_size`.
pub fn decode_tail<'a>(
    base: &[u8],
    tail: &'a [u8],
    patch_offset: u64,
    budget: DeltaBudget,
) -> Result<DeltaTail<'a>, RecordError> {
    let t = read_tail(tail).ok_or(RecordError::Corrupt)?;
    let (body, crc) = tail.split_at(tail.len() - 4);
    if crc32_pair(base, body).to_le_bytes() != crc {
        return Err(RecordError::Corrupt);
    }
    let image_ok = t.image_state.is_empty()
        || t.restore_image()
            .is_some_and(|v| v.received() == t.delivered);
    let digest_ok = t.new_digest_state.is_empty()
        || StreamDigest::state_bytes(DigestKind::Sha256, t.new_digest_state) == Some(t.delivered);
    let applier_ok = PatchApplier::inspect_state(budget, t.applier_state).is_some_and(|s| {
        s.consumed == patch_offset && s.produced == t.delivered && s.new_size == t.new_size
    });
    if image_ok && digest_ok && applier_ok && t.delivered <= t.new_size {
        Ok(t)
    } else {
        Err(RecordError::Corrupt)
    }
}

/// The fields of a tail whose lengths add up, nothing else checked: for a tail
/// [`decode_tail`] already accepted (the session reads the stored one again to restore it).
pub fn read_tail(tail: &[u8]) -> Option<DeltaTail<'_>> {
    let u64_at = |at: usize| {
        tail.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let u16_at = |at: usize| {
        tail.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    if tail.get(..6)? != TAIL_MAGIC {
        return None;
    }
    let delivered = u64_at(6)?;
    let new_size = u64_at(14)?;
    let n = u16_at(22)?;
    let image_state = tail.get(24..24 + n)?;
    let d = usize::from(*tail.get(24 + n)?);
    let new_digest_state = tail.get(25 + n..25 + n + d)?;
    let at = 25 + n + d;
    let m = u16_at(at)?;
    let applier_state = tail.get(at + 2..at + 2 + m)?;
    let lengths_ok = n <= IMAGE_STATE_MAX
        && d <= NEW_DIGEST_MAX
        && m >= STATE_FIXED_LEN
        && tail.len() == at + 2 + m + 4;
    lengths_ok.then_some(DeltaTail {
        delivered,
        new_size,
        image_state,
        new_digest_state,
        applier_state,
    })
}

/// CRC-32 of `a` followed by `b`, without joining them.
fn crc32_pair(a: &[u8], b: &[u8]) -> u32 {
    super::crc32_continue(super::crc32_continue(!0, a), b) ^ !0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Stop;
    use crate::image::ImagePolicy;

    /// An applier part-way through an uncompressed patch: header (sequential, none, new size
    /// 3), data-format size 0, then a diff of 3 bytes over a 3-byte old image, fed one call of
    /// two bytes of output.
    fn applier_mid_patch(budget: DeltaBudget) -> (PatchApplier, u64) {
        let patch = [0x00, 0x03, 0x00, 0x03, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00];
        let mut old: &[u8] = &[1, 2, 3];
        let mut a = PatchApplier::new(budget);
        let mut out = [0u8; 2];
        let p = a.feed(&patch, &mut old, &mut out).unwrap();
        assert_eq!((p.produced, p.stop), (2, Stop::OutFull));
        (a, p.consumed as u64)
    }

    fn base() -> [u8; super::super::RECORD_LEN] {
        let mut b = [0u8; super::super::RECORD_LEN];
        b[..6].copy_from_slice(b"OTABP1");
        b
    }

    #[test]
    fn a_tail_reads_back_as_written_and_only_after_its_own_base() {
        let budget = DeltaBudget::DEFAULT;
        let (a, consumed) = applier_mid_patch(budget);
        let mut v = ImageVerifier::new(&ImagePolicy::default());
        v.update(&[2, 3]).unwrap();
        let mut out = vec![0u8; tail_max(budget)];
        let n = encode_tail(&base(), 2, 3, Some(&v), None, &a, &mut out);
        assert!(n > TAIL_FIXED);
        let t = decode_tail(&base(), &out[..n], consumed, budget).unwrap();
        assert_eq!((t.delivered, t.new_size), (2, 3));
        assert_eq!(t.restore_image().unwrap().received(), 2);
        assert_eq!(read_tail(&out[..n]), Some(t));
        // Another base, another patch offset, a flipped byte, a cut: refused.
        let mut other = base();
        other[100] = 1;
        assert!(decode_tail(&other, &out[..n], consumed, budget).is_err());
        assert!(decode_tail(&base(), &out[..n], consumed + 1, budget).is_err());
        for i in [0, 7, 23, n - 1] {
            let mut bad = out[..n].to_vec();
            bad[i] ^= 0x10;
            assert!(
                decode_tail(&base(), &bad, consumed, budget).is_err(),
                "byte {i}"
            );
        }
        assert!(decode_tail(&base(), &out[..n - 1], consumed, budget).is_err());
    }

    #[test]
    fn nothing_is_written_that_would_not_read_back() {
        let (a, _) = applier_mid_patch(DeltaBudget::DEFAULT);
        let mut v = ImageVerifier::new(&ImagePolicy::default());
        v.update(&[2]).unwrap();
        let mut out = vec![0u8; tail_max(DeltaBudget::DEFAULT)];
        // The verifier covers 1 byte, not the 2 delivered; the buffer is too short.
        assert_eq!(encode_tail(&base(), 2, 3, Some(&v), None, &a, &mut out), 0);
        assert_eq!(
            encode_tail(&base(), 2, 3, None, None, &a, &mut out[..40]),
            0
        );
        assert!(encode_tail(&base(), 2, 3, None, None, &a, &mut out) > 0);
    }
}
