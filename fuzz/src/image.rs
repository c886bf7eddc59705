//! The MCUboot image verifier (`ota::image::ImageVerifier`): its header/TLV parser on arbitrary
//! images, cut into arbitrary chunks, saved and restored at an arbitrary point.
//!
//! Input: a flags byte, a chunking byte, a 16-bit cut point, then the image. Flags: bit 0
//! require a signature; bit 1 configure the test keys of tests/fixtures/mcuboot; bit 2 announce
//! the image's length; bit 3 write the MCUboot magic over the first bytes; bit 4 write the right
//! SHA-256 into the image's hash TLV (so the fuzzer gets past the hash to the signature and
//! downgrade checks); bit 5 a running version 1.2.3 and security counter 7; bit 6 allow
//! downgrades; bit 7 also take the first STATE_MAX image bytes as a saved state to restore.
//!
//! What must hold: no panic; the verdict does not depend on the chunking nor on a save/restore
//! at the cut point; states save deterministically and restore only when canonical; an
//! accepted image's payload lies inside it; errors describe themselves into any buffer.

use ota::digest::{DigestKind, StreamDigest};
use ota::image::{
    tlv, ImageError, ImageKey, ImagePolicy, ImageVerifier, ImageVersion, VerifiedImage,
    IMAGE_MAGIC, STATE_MAX,
};

const KEYS: [&[u8]; 3] = [
    include_bytes!("../../tests/fixtures/mcuboot/test-only-ecdsa-p256.pub.pem"),
    include_bytes!("../../tests/fixtures/mcuboot/test-only-ed25519.pub.pem"),
    include_bytes!("../../tests/fixtures/mcuboot/test-only-ecdsa-p256-other.pub.pem"),
];

pub fn run(data: &[u8]) {
    let [flags, chunking, cut0, cut1, ..] = *data else {
        return;
    };
    let mut image = data[4..].to_vec();
    let policy = ImagePolicy {
        keys: match flags & 2 {
            0 => Vec::new(),
            _ => KEYS
                .iter()
                .map(|pem| ImageKey::parse(pem).expect("test key"))
                .collect(),
        },
        require_signature: flags & 1 != 0,
        running_version: (flags & 32 != 0).then(|| ImageVersion::new(1, 2, 3, 0)),
        running_security_counter: (flags & 32 != 0).then_some(7),
        allow_downgrade: flags & 64 != 0,
    };
    if flags & 8 != 0 && image.len() >= 4 {
        image[..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
    }
    if flags & 16 != 0 {
        fix_hash_tlv(&mut image);
    }
    let announced = (flags & 4 != 0).then_some(image.len() as u64);
    let fresh = || {
        let v = ImageVerifier::new(&policy);
        match announced {
            Some(size) => v.with_announced_size(size),
            None => v,
        }
    };

    let whole = verdict(fresh(), &[&image], &policy);
    check_verdict(&whole, &image, &policy);

    // Chunk sizes from 1 to 64 KiB, chosen by the chunking byte.
    let sizes = [1usize, 2, 3, 5, 7, 16, 31, 64, 509, 4096, 65536];
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0, usize::from(chunking));
    while at < image.len() {
        let end = (at + sizes[i % sizes.len()]).min(image.len());
        pieces.push(&image[at..end]);
        (at, i) = (end, i / 3 + usize::from(image[at]) + 1);
    }
    assert_eq!(verdict(fresh(), &pieces, &policy), whole, "chunked");

    // Save at the cut, restore, go on: the same verdict; the state does not depend on how the
    // bytes before the cut came.
    let cut = usize::from(u16::from_le_bytes([cut0, cut1])) % (image.len() + 1);
    let mut first = fresh();
    let early = first.update(&image[..cut]);
    let mut state = [0u8; STATE_MAX];
    let saved = first.save_state(&mut state);
    let mut bytewise = fresh();
    let bytewise_early = image[..cut].chunks(1).try_for_each(|b| bytewise.update(b));
    assert_eq!(early, bytewise_early);
    let mut again = [0u8; STATE_MAX];
    assert_eq!(bytewise.save_state(&mut again), saved);
    match early {
        Err(e) => {
            assert_eq!(saved, 0, "a refused stream saves nothing");
            assert_eq!(whole, Err(e), "refused early as a whole");
        }
        Ok(()) => {
            assert_eq!(saved, STATE_MAX);
            assert_eq!(state, again, "state at {cut} depends on the chunking");
            let resumed = ImageVerifier::restore(&state).expect("a saved state restores");
            assert_eq!(resumed.received(), cut as u64);
            assert_eq!(
                verdict(resumed, &[&image[cut..]], &policy),
                whole,
                "resumed at {cut}"
            );
        }
    }

    if flags & 128 != 0 {
        check_restore_of_arbitrary_bytes(&data[4..], &policy);
    }
}

/// Feeds `pieces`, stopping at the first refusal, then asks for the verdict.
fn verdict(
    mut verifier: ImageVerifier,
    pieces: &[&[u8]],
    policy: &ImagePolicy,
) -> Result<VerifiedImage, ImageError> {
    for piece in pieces {
        verifier.update(piece)?;
    }
    let first = verifier.finish(policy);
    assert_eq!(verifier.finish(policy), first, "finish may be asked again");
    first
}

fn check_verdict(verdict: &Result<VerifiedImage, ImageError>, image: &[u8], policy: &ImagePolicy) {
    match verdict {
        Ok(v) => {
            assert!(v.signed || !policy.require_signature);
            assert_eq!(v.signed, v.key_index.is_some());
            assert!(v.key_index.is_none_or(|i| i < policy.keys.len()));
            let end = v.payload_offset + v.payload_size;
            assert!(end <= image.len() as u64);
            if v.mcuboot {
                assert!(v.payload_offset >= 32);
                assert!(v.version.is_some());
            } else {
                assert_eq!((v.payload_offset, v.payload_size), (0, image.len() as u64));
            }
        }
        Err(e) => {
            let full = e.to_string();
            let mut buf = [0u8; 128];
            for len in [0, 1, 9, 40, 128] {
                let line = e.describe(&mut buf[..len]);
                assert!(full.starts_with(line) && line.len() <= len);
            }
        }
    }
}

/// A state from the input: restores only if canonical, and then runs on without panicking.
fn check_restore_of_arbitrary_bytes(bytes: &[u8], policy: &ImagePolicy) {
    let Some(state) = bytes.get(..STATE_MAX) else {
        assert!(ImageVerifier::restore(bytes).is_none());
        return;
    };
    if let Some(mut restored) = ImageVerifier::restore(state) {
        let mut again = [0u8; STATE_MAX];
        assert_eq!(restored.save_state(&mut again), STATE_MAX);
        assert_eq!(&again[..], state, "restore accepts only what it saves");
        let _ = restored.update(&bytes[STATE_MAX..]);
        let _ = restored.finish(policy);
    }
}

/// Writes the SHA-256 of header, payload and protected TLVs into the image's hash TLV, when
/// the image is laid out well enough to find them.
fn fix_hash_tlv(image: &mut [u8]) -> Option<()> {
    let u16_at = |image: &[u8], at: usize| -> Option<usize> {
        Some(usize::from(u16::from_le_bytes(
            image.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let hdr_size = u16_at(image, 8)?;
    let protect = u16_at(image, 10)?;
    let img_size = u32::from_le_bytes(image.get(12..16)?.try_into().ok()?) as usize;
    let hashed = hdr_size.checked_add(img_size)?.checked_add(protect)?;
    let tlv_end = hashed
        .checked_add(u16_at(image, hashed + 2)?)?
        .min(image.len());
    let mut at = hashed + 4;
    while at + 4 <= tlv_end {
        let (kind, len) = (u16_at(image, at)?, u16_at(image, at + 2)?);
        if kind == usize::from(tlv::SHA256) && len == 32 {
            let mut sha = StreamDigest::new(DigestKind::Sha256);
            sha.update(image.get(..hashed)?);
            let mut digest = [0u8; 32];
            sha.current(&mut digest);
            image.get_mut(at + 4..at + 36)?.copy_from_slice(&digest);
            return Some(());
        }
        at += 4 + len;
    }
    None
}
