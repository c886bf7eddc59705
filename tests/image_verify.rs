//! The MCUboot image verifier (`ota::image`) against images made by the real `imgtool`: the
//! committed known-answer fixtures (tests/fixtures/mcuboot/, remade by make.sh there) run
//! everywhere; the tests that sign fresh images need `imgtool` on PATH and skip with a printed
//! line without it, unless OTA_REQUIRE_IMGTOOL=required (CI), where they fail.

mod common;

use common::imgtool::{fresh_key, imgtool, run, scratch, sign};
use common::mcuboot::{fixture, flipped, key, without_tlv, Layout};
use ota::image::{
    tlv, ImageError, ImageKey, ImagePolicy, ImageVerifier, ImageVersion, VerifiedImage, STATE_MAX,
};

fn ecdsa_key() -> ImageKey {
    key("test-only-ecdsa-p256.pub.pem")
}

fn ed25519_key() -> ImageKey {
    key("test-only-ed25519.pub.pem")
}

fn other_ecdsa_key() -> ImageKey {
    key("test-only-ecdsa-p256-other.pub.pem")
}

fn requiring(keys: Vec<ImageKey>) -> ImagePolicy {
    ImagePolicy {
        keys,
        require_signature: true,
        ..ImagePolicy::default()
    }
}

/// Feeds `image` in chunks of `chunk` bytes; stops at the first refusal, as a download would.
fn verify_chunked(
    image: &[u8],
    policy: &ImagePolicy,
    chunk: usize,
) -> Result<VerifiedImage, ImageError> {
    let mut verifier = ImageVerifier::new(policy);
    for piece in image.chunks(chunk.max(1)) {
        verifier.update(piece)?;
    }
    verifier.finish(policy)
}

/// The verdict, after checking that every chunking gives the same one.
fn verify(image: &[u8], policy: &ImagePolicy) -> Result<VerifiedImage, ImageError> {
    let whole = verify_chunked(image, policy, image.len());
    for chunk in [1, 2, 3, 4, 5, 7, 13, 31, 32, 33, 64, 509, 4096, 65536] {
        assert_eq!(
            verify_chunked(image, policy, chunk),
            whole,
            "chunks of {chunk}"
        );
    }
    // Uneven chunks: 1, 2, 3, ... bytes.
    let mut verifier = ImageVerifier::new(policy);
    let (mut at, mut size, mut uneven) = (0, 1, Ok(()));
    while at < image.len() && uneven.is_ok() {
        let end = (at + size).min(image.len());
        uneven = verifier.update(&image[at..end]);
        (at, size) = (end, size + 1);
    }
    assert_eq!(
        uneven.and_then(|()| verifier.finish(policy)),
        whole,
        "uneven chunks"
    );
    whole
}

#[test]
fn the_fixtures_verify_in_every_chunking() {
    let payload = fixture("payload.bin");
    for (name, policy, key_index, offset) in [
        ("ecdsa-p256.bin", requiring(vec![ecdsa_key()]), 0, 0x200),
        ("ed25519.bin", requiring(vec![ed25519_key()]), 0, 0x20),
        // Rotation: the key hash picks the key wherever it is in the list.
        (
            "ecdsa-p256.bin",
            requiring(vec![other_ecdsa_key(), ed25519_key(), ecdsa_key()]),
            2,
            0x200,
        ),
        (
            "ed25519.bin",
            requiring(vec![other_ecdsa_key(), ed25519_key(), ecdsa_key()]),
            1,
            0x20,
        ),
    ] {
        let image = fixture(name);
        let verified = verify(&image, &policy).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            verified,
            VerifiedImage {
                mcuboot: true,
                signed: true,
                key_index: Some(key_index),
                version: Some(ImageVersion::new(1, 2, 3, 4)),
                security_counter: Some(7),
                payload_offset: offset,
                payload_size: 3000,
            },
            "{name}"
        );
        let at = verified.payload_offset as usize;
        assert_eq!(
            &image[at..at + 3000],
            &payload[..],
            "{name}: the payload is where it says"
        );
    }
}

#[test]
fn without_a_key_hash_each_key_of_the_signature_algorithm_is_tried() {
    let image = fixture("ed25519-full-key.bin");
    let found = verify(
        &image,
        &requiring(vec![ecdsa_key(), other_ecdsa_key(), ed25519_key()]),
    );
    assert_eq!(
        found.map(|v| (v.key_index, v.version)),
        Ok((Some(2), Some(ImageVersion::new(2, 0, 0, 0))))
    );
    // No configured key of its algorithm; one that is, but not the signer.
    assert_eq!(
        verify(&image, &requiring(vec![ecdsa_key()])),
        Err(ImageError::UnknownKey)
    );
    let stranger = ImageKey::from_raw(&[0x5a; 32]).unwrap();
    assert_eq!(
        verify(&image, &requiring(vec![stranger])),
        Err(ImageError::BadSignature)
    );
}

#[test]
fn keys_load_from_pem_der_and_raw_alike() {
    for (name, raw_len) in [
        ("test-only-ecdsa-p256.pub.pem", 65),
        ("test-only-ed25519.pub.pem", 32),
    ] {
        let from_pem = key(name);
        assert_eq!(from_pem.public_key().len(), raw_len);
        assert_eq!(
            ImageKey::parse(from_pem.public_key()),
            Ok(from_pem),
            "{name} raw"
        );
        let pem = String::from_utf8(fixture(name)).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = decode_base64(&body);
        assert_eq!(ImageKey::parse(&der), Ok(from_pem), "{name} DER");
    }
    // The private keys imgtool keygen writes are refused: a device holds the public half.
    for name in ["test-only-ecdsa-p256.pem", "test-only-ed25519.pem"] {
        assert_eq!(
            ImageKey::parse(&fixture(name)),
            Err(ota::image::ImageKeyError::PrivateKey),
            "{name}"
        );
    }
    // The key hash is the KEYHASH TLV imgtool wrote.
    let image = fixture("ecdsa-p256.bin");
    let (at, len) = Layout::of(&image).value(tlv::KEYHASH);
    assert_eq!(&image[at..at + len], ecdsa_key().key_hash());
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let sextets: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let mut acc = 0u32;
        for (i, &s) in chunk.iter().enumerate() {
            acc |= u32::from(s) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn one_flipped_byte_anywhere_is_refused_with_its_cause() {
    for (name, keys) in [
        ("ecdsa-p256.bin", vec![ecdsa_key()]),
        ("ed25519.bin", vec![ed25519_key()]),
    ] {
        let image = fixture(name);
        let layout = Layout::of(&image);
        let policy = requiring(keys);
        let (sec_cnt, _) = layout.value(tlv::SEC_CNT);
        let (hash, _) = layout.value(tlv::SHA256);
        let (key_hash, _) = layout.value(tlv::KEYHASH);
        let signature_tlv = if name.starts_with("ecdsa") {
            tlv::ECDSA_SIG
        } else {
            tlv::ED25519
        };
        let (signature, signature_len) = layout.value(signature_tlv);
        for (what, at, expected) in [
            ("payload start", layout.hdr_size, ImageError::HashMismatch),
            (
                "payload end",
                layout.protected_at - 1,
                ImageError::HashMismatch,
            ),
            ("header version", 20, ImageError::HashMismatch),
            ("header load address", 5, ImageError::HashMismatch),
            (
                "header padding",
                layout.hdr_size - 1,
                ImageError::HashMismatch,
            ),
            ("protected SEC_CNT value", sec_cnt, ImageError::HashMismatch),
            ("SHA256 TLV value", hash + 31, ImageError::HashMismatch),
            ("KEYHASH value", key_hash + 3, ImageError::UnknownKey),
            ("signature start", signature + 5, ImageError::BadSignature),
            (
                "signature end",
                signature + signature_len - 1,
                ImageError::BadSignature,
            ),
            (
                "protected info magic",
                layout.protected_at,
                ImageError::BadTlvInfo {
                    offset: layout.protected_at as u64,
                    magic: 0x6909,
                    size: 12,
                },
            ),
            (
                "unprotected info magic",
                layout.unprotected_at,
                ImageError::BadTlvInfo {
                    offset: layout.unprotected_at as u64,
                    magic: 0x6906,
                    size: (layout.end - layout.unprotected_at) as u16,
                },
            ),
            ("magic", 0, ImageError::NotAnImage { magic: 0x96f3b83c }),
        ] {
            assert_eq!(
                verify(&flipped(&image, at), &policy),
                Err(expected),
                "{name}: {what}"
            );
        }
        assert_eq!(layout.img_size, 3000);
    }
}

#[test]
fn a_wrong_key_and_a_missing_signature_are_refused() {
    let ecdsa = fixture("ecdsa-p256.bin");
    assert_eq!(
        verify(&ecdsa, &requiring(vec![other_ecdsa_key()])),
        Err(ImageError::UnknownKey)
    );
    assert_eq!(
        verify(&ecdsa, &requiring(vec![ed25519_key()])),
        Err(ImageError::UnknownKey)
    );
    assert_eq!(verify(&ecdsa, &requiring(vec![])), Err(ImageError::NoKeys));
    // Without its signature TLV (the key hash left in place), or without both.
    let unsigned = without_tlv(&ecdsa, tlv::ECDSA_SIG);
    assert_eq!(
        verify(&unsigned, &requiring(vec![ecdsa_key()])),
        Err(ImageError::MissingSignature)
    );
    let bare = without_tlv(&unsigned, tlv::KEYHASH);
    assert_eq!(
        verify(&bare, &requiring(vec![ecdsa_key()])),
        Err(ImageError::MissingSignature)
    );
    // Without its hash TLV.
    let hashless = without_tlv(&ecdsa, tlv::SHA256);
    assert_eq!(
        verify(&hashless, &requiring(vec![ecdsa_key()])),
        Err(ImageError::MissingHash)
    );
}

#[test]
fn downgrades_by_version_or_security_counter_are_refused_unless_allowed() {
    let image = fixture("ed25519.bin");
    let running = |version: &str, counter: Option<u32>| ImagePolicy {
        running_version: ImageVersion::parse(version),
        running_security_counter: counter,
        ..requiring(vec![ed25519_key()])
    };
    let image_version = ImageVersion::new(1, 2, 3, 4);
    assert_eq!(
        verify(&image, &running("1.2.4", None)),
        Err(ImageError::Downgrade {
            running: ImageVersion::new(1, 2, 4, 0),
            image: image_version
        })
    );
    assert_eq!(
        verify(&image, &running("2.0.0", None))
            .unwrap_err()
            .to_string(),
        "downgrade from 2.0.0 to 1.2.3+4"
    );
    // Same major.minor.revision, higher build number: not a downgrade (MCUboot's default).
    assert!(verify(&image, &running("1.2.3+99", Some(7))).is_ok());
    assert!(verify(&image, &running("1.0.0", Some(0))).is_ok());
    assert_eq!(
        verify(&image, &running("1.0.0", Some(8))),
        Err(ImageError::CounterDowngrade {
            running: 8,
            image: 7
        })
    );
    let allowed = ImagePolicy {
        allow_downgrade: true,
        ..running("9.9.9", Some(1000))
    };
    assert!(verify(&image, &allowed).is_ok());
    // An image without a security counter counts as 0.
    let unsigned = fixture("unsigned.bin");
    let policy = ImagePolicy {
        running_security_counter: Some(1),
        ..ImagePolicy::default()
    };
    assert_eq!(
        verify(&unsigned, &policy),
        Err(ImageError::CounterDowngrade {
            running: 1,
            image: 0
        })
    );
}

#[test]
fn truncated_images_are_refused_where_they_end() {
    let image = fixture("ecdsa-p256.bin");
    let layout = Layout::of(&image);
    let policy = requiring(vec![ecdsa_key()]);
    let cut = |len: usize| verify(&image[..len], &policy);
    assert_eq!(cut(0), Err(ImageError::NotAnImage { magic: 0 }));
    assert_eq!(
        cut(20),
        Err(ImageError::Truncated {
            received: 20,
            expected: 32
        })
    );
    assert_eq!(
        cut(layout.protected_at - 1),
        Err(ImageError::Truncated {
            received: layout.protected_at as u64 - 1,
            expected: layout.protected_at as u64
        })
    );
    let least = layout.unprotected_at as u64 + 4;
    for len in [
        layout.protected_at,
        layout.unprotected_at,
        layout.unprotected_at + 3,
    ] {
        assert_eq!(
            cut(len),
            Err(ImageError::TlvTruncated {
                received: len as u64,
                expected: least
            }),
            "cut at {len}"
        );
    }
    for len in [layout.unprotected_at + 4, layout.end - 40, layout.end - 1] {
        assert_eq!(
            cut(len),
            Err(ImageError::TlvTruncated {
                received: len as u64,
                expected: layout.end as u64
            }),
            "cut at {len}"
        );
    }
}

#[test]
fn tlv_lengths_past_their_area_and_bytes_past_the_image_are_refused_early() {
    let image = fixture("ed25519.bin");
    let layout = Layout::of(&image);
    let policy = requiring(vec![ed25519_key()]);
    // The last TLV (the signature) one byte longer than its area.
    let &(last, _, len) = layout.tlvs.last().unwrap();
    let mut long = image.clone();
    long[last + 2..last + 4].copy_from_slice(&(len as u16 + 1).to_le_bytes());
    let past_end = ImageError::TlvPastEnd {
        offset: last as u64,
        end: layout.end as u64,
    };
    assert_eq!(verify(&long, &policy), Err(past_end));
    // Refused by `update` when the header is read, not at the end.
    let mut verifier = ImageVerifier::new(&policy);
    assert_eq!(verifier.update(&long[..last + 4]), Err(past_end));
    assert_eq!(
        verifier.update(&long[last + 4..]),
        Err(past_end),
        "the refusal sticks"
    );
    // The protected SEC_CNT TLV running past the protected area.
    let (sec_cnt, _) = layout.value(tlv::SEC_CNT);
    let mut long = image.clone();
    long[sec_cnt - 2..sec_cnt].copy_from_slice(&5u16.to_le_bytes());
    assert_eq!(
        verify(&long, &policy),
        Err(ImageError::TlvPastEnd {
            offset: sec_cnt as u64 - 4,
            end: layout.unprotected_at as u64
        })
    );
    // An unprotected area two bytes longer: its last TLV header cannot fit.
    let mut long = image.clone();
    long[layout.unprotected_at + 2..layout.unprotected_at + 4]
        .copy_from_slice(&((layout.end - layout.unprotected_at + 2) as u16).to_le_bytes());
    long.extend_from_slice(&[0, 0]);
    assert_eq!(
        verify(&long, &policy),
        Err(ImageError::TlvPastEnd {
            offset: layout.end as u64,
            end: layout.end as u64 + 2
        })
    );
    // One byte after the image, refused as it arrives.
    let mut trailing = image.clone();
    trailing.push(0xff);
    let trailing_error = ImageError::TrailingBytes {
        expected: layout.end as u64,
    };
    assert_eq!(verify(&trailing, &policy), Err(trailing_error));
    let mut verifier = ImageVerifier::new(&policy);
    assert_eq!(verifier.update(&image), Ok(()));
    assert_eq!(verifier.update(&[0]), Err(trailing_error));
    // A size announced by the platform that the headers contradict: refused at the info.
    let announced = |size: usize| {
        let mut v = ImageVerifier::new(&policy).with_announced_size(size as u64);
        let r = v.update(&image[..layout.unprotected_at + 4]);
        r.and_then(|()| v.update(&image[layout.unprotected_at + 4..]))
            .and_then(|()| v.finish(&policy))
    };
    assert!(announced(image.len()).is_ok());
    assert_eq!(
        announced(image.len() + 1),
        Err(ImageError::SizeMismatch {
            announced: image.len() as u64 + 1,
            image: image.len() as u64
        })
    );
    assert_eq!(
        announced(100),
        Err(ImageError::SizeMismatch {
            announced: 100,
            image: layout.unprotected_at as u64 + 4
        })
    );
}

#[test]
fn hostile_tlv_contents_get_their_own_errors() {
    let image = fixture("ed25519.bin");
    let layout = Layout::of(&image);
    let policy = requiring(vec![ed25519_key()]);
    let retyped = |from: u16, to: u16| {
        let (value, _) = layout.value(from);
        let mut copy = image.clone();
        copy[value - 4..value - 2].copy_from_slice(&to.to_le_bytes());
        copy
    };
    // The key hash's TLV turned into a second hash TLV.
    assert_eq!(
        verify(&retyped(tlv::KEYHASH, tlv::SHA256), &policy),
        Err(ImageError::DuplicateTlv {
            tlv_type: tlv::SHA256
        })
    );
    // The Ed25519 signature relabelled ECDSA: the key hash names an Ed25519 key, so it is a
    // bad signature (not an unknown key).
    assert_eq!(
        verify(&retyped(tlv::ED25519, tlv::ECDSA_SIG), &policy),
        Err(ImageError::BadSignature)
    );
    // The protected SEC_CNT relabelled SHA-256: a hash TLV of the wrong length.
    assert_eq!(
        verify(&retyped(tlv::SEC_CNT, tlv::SHA256), &policy),
        Err(ImageError::TlvLength {
            tlv_type: tlv::SHA256,
            len: 4
        })
    );
    // Only a SHA-512 hash (as with imgtool --sha 512): unsupported, not "missing".
    assert_eq!(
        verify(&retyped(tlv::SHA256, tlv::SHA512), &policy),
        Err(ImageError::Unsupported {
            tlv_type: tlv::SHA512
        })
    );
    // Only an RSA signature.
    assert_eq!(
        verify(&retyped(tlv::ED25519, tlv::RSA2048_PSS), &policy),
        Err(ImageError::Unsupported {
            tlv_type: tlv::RSA2048_PSS
        })
    );
    // The key hash of the wrong length.
    let (key_hash, _) = layout.value(tlv::KEYHASH);
    let mut short = image.clone();
    short[key_hash - 2..key_hash].copy_from_slice(&31u16.to_le_bytes());
    assert_eq!(
        verify(&short, &policy),
        Err(ImageError::TlvLength {
            tlv_type: tlv::KEYHASH,
            len: 31
        })
    );
    // A header size below the header.
    let mut small = image.clone();
    small[8..10].copy_from_slice(&16u16.to_le_bytes());
    assert_eq!(
        verify(&small, &policy),
        Err(ImageError::HeaderTooSmall { hdr_size: 16 })
    );
    // Encrypted (IMAGE_F_ENCRYPTED_AES128).
    let mut encrypted = image.clone();
    encrypted[16] = 0x04;
    assert_eq!(
        verify(&encrypted, &policy),
        Err(ImageError::Encrypted { flags: 4 })
    );
}

#[test]
fn unsigned_and_plain_images_pass_only_when_no_signature_is_required() {
    let unsigned = fixture("unsigned.bin");
    let layout = Layout::of(&unsigned);
    let lenient = ImagePolicy::default();
    let expected = VerifiedImage {
        mcuboot: true,
        signed: false,
        key_index: None,
        version: Some(ImageVersion::new(1, 2, 3, 0)),
        security_counter: None,
        payload_offset: 0x200,
        payload_size: 3000,
    };
    assert_eq!(verify(&unsigned, &lenient), Ok(expected));
    // Keys configured but not required: an image without a signature is still unsigned...
    let with_keys = ImagePolicy {
        keys: vec![ecdsa_key()],
        ..ImagePolicy::default()
    };
    assert_eq!(verify(&unsigned, &with_keys), Ok(expected));
    // ...while its hash is always checked,
    let tampered = flipped(&unsigned, layout.hdr_size + 10);
    assert_eq!(verify(&tampered, &lenient), Err(ImageError::HashMismatch));
    // and a signature it has is checked against the keys there are.
    let signed = fixture("ecdsa-p256.bin");
    assert_eq!(verify(&signed, &with_keys).map(|v| v.signed), Ok(true));
    let wrong = ImagePolicy {
        keys: vec![other_ecdsa_key()],
        ..ImagePolicy::default()
    };
    assert_eq!(verify(&signed, &wrong), Err(ImageError::UnknownKey));
    assert_eq!(
        verify(&signed, &lenient).map(|v| v.signed),
        Ok(false),
        "no keys: not checked"
    );
    assert_eq!(
        verify(&unsigned, &requiring(vec![ecdsa_key()])),
        Err(ImageError::MissingSignature)
    );

    // A plain file.
    let plain = fixture("payload.bin");
    assert_eq!(
        verify(&plain, &lenient),
        Ok(VerifiedImage {
            mcuboot: false,
            signed: false,
            key_index: None,
            version: None,
            security_counter: None,
            payload_offset: 0,
            payload_size: 3000,
        })
    );
    let strict = requiring(vec![ecdsa_key()]);
    let not_an_image = ImageError::NotAnImage {
        magic: u32::from_le_bytes(plain[..4].try_into().unwrap()),
    };
    assert_eq!(verify(&plain, &strict), Err(not_an_image));
    // Refused at its fourth byte.
    let mut verifier = ImageVerifier::new(&strict);
    assert_eq!(verifier.update(&plain[..3]), Ok(()));
    assert_eq!(verifier.update(&plain[3..4]), Err(not_an_image));
    assert_eq!(verify(&[], &lenient).map(|v| v.payload_size), Ok(0));
}

/// Saves at every offset, restores into a fresh value, feeds the rest: the same verdict as
/// one uninterrupted pass, for a good image and a tampered one. The saved bytes do not depend
/// on how the bytes before were chunked. (The ECDSA image, whose verification is slow in a
/// debug build, is cut at every offset outside its payload and every 97th inside.)
#[test]
fn save_and_restore_at_every_offset_gives_the_same_verdict() {
    let ed25519 = fixture("ed25519.bin");
    // (image, policy, cut inside the payload only every 97th byte)
    let cases = [
        (ed25519.clone(), requiring(vec![ed25519_key()]), false),
        (
            flipped(&ed25519, 1000),
            requiring(vec![ed25519_key()]),
            false,
        ),
        (
            fixture("ecdsa-p256.bin"),
            requiring(vec![ecdsa_key()]),
            true,
        ),
        (fixture("payload.bin"), ImagePolicy::default(), false),
    ];
    for (image, policy, sparse_payload) in cases {
        let payload = match sparse_payload {
            true => Layout::of(&image).hdr_size..Layout::of(&image).protected_at,
            false => 0..0,
        };
        let cut_here = |cut: usize| !payload.contains(&cut) || cut % 97 == 0;
        let expected = verify_chunked(&image, &policy, 4096);
        let mut state = [0u8; STATE_MAX];
        let mut again = [0u8; STATE_MAX];
        // Fed one byte per cut: the same prefix, byte by byte.
        let mut bytewise = ImageVerifier::new(&policy);
        for cut in 0..=image.len() {
            if cut > 0 {
                bytewise.update(&image[cut - 1..cut]).unwrap();
            }
            if !cut_here(cut) {
                continue;
            }
            let mut first = ImageVerifier::new(&policy);
            first.update(&image[..cut]).unwrap();
            assert_eq!(first.save_state(&mut state), STATE_MAX);
            bytewise.save_state(&mut again);
            assert_eq!(state, again, "state at {cut} depends on the chunking");
            let mut resumed =
                ImageVerifier::restore(&state).unwrap_or_else(|| panic!("restore at {cut}"));
            assert_eq!(resumed.received(), cut as u64);
            let verdict = resumed
                .update(&image[cut..])
                .and_then(|()| resumed.finish(&policy));
            assert_eq!(verdict, expected, "cut at {cut}");
        }
    }
}

#[test]
fn restore_refuses_states_it_did_not_write() {
    let image = fixture("ed25519.bin");
    let policy = requiring(vec![ed25519_key()]);
    let mut verifier = ImageVerifier::new(&policy);
    verifier.update(&image[..2000]).unwrap();
    let mut state = [0u8; STATE_MAX + 1];
    assert_eq!(
        verifier.save_state(&mut state[..STATE_MAX - 1]),
        0,
        "too short: nothing"
    );
    assert_eq!(state, [0u8; STATE_MAX + 1]);
    assert_eq!(verifier.save_state(&mut state), STATE_MAX);
    assert!(ImageVerifier::restore(&state[..STATE_MAX]).is_some());
    assert!(ImageVerifier::restore(&state).is_none(), "longer");
    assert!(
        ImageVerifier::restore(&state[..STATE_MAX - 1]).is_none(),
        "shorter"
    );
    let state = &state[..STATE_MAX];
    let corrupt = |at: usize, value: u8| {
        let mut copy = state.to_vec();
        copy[at] = value;
        ImageVerifier::restore(&copy).is_none()
    };
    assert!(corrupt(0, 2), "format");
    assert!(corrupt(1, 3), "kind");
    assert!(corrupt(2, state[2] | 0x80), "unknown flag");
    assert!(
        corrupt(3, state[3] ^ 1),
        "received differs from what the hash absorbed"
    );
    assert!(corrupt(9, 1), "received beyond any image");
    assert!(corrupt(11, 1), "an announced size without its flag");
    assert!(corrupt(19, 0x3c), "magic");
    assert!(corrupt(27, 0), "header size 0");
    // A refused download saves nothing: it is not resumed.
    let mut refused = ImageVerifier::new(&policy);
    assert!(refused.update(&flipped(&image, 0)[..4]).is_err());
    let mut out = [0u8; STATE_MAX];
    assert_eq!(refused.save_state(&mut out), 0);
}

#[test]
fn errors_describe_themselves_without_allocating() {
    let mut line = [0u8; 96];
    let e = ImageError::TlvPastEnd {
        offset: 3100,
        end: 3188,
    };
    assert_eq!(
        e.describe(&mut line),
        "TLV at byte 3100 runs past the end of its area at byte 3188"
    );
    assert_eq!(e.describe(&mut line[..7]), "TLV at ");
    assert_eq!(
        ImageError::CounterDowngrade {
            running: 8,
            image: 7
        }
        .describe(&mut line),
        "security counter downgrade from 8 to 7"
    );
}

#[test]
fn the_verifier_is_small() {
    let size = std::mem::size_of::<ImageVerifier>();
    assert!(size <= 384, "ImageVerifier is {size} bytes");
    println!("size_of::<ImageVerifier>() = {size}, STATE_MAX = {STATE_MAX}");
}

// ---- Fresh images from the real imgtool -------------------------------------------------------

#[test]
fn fresh_imgtool_images_of_both_algorithms_and_many_layouts_verify() {
    let Some(tool) = imgtool("fresh_imgtool_images_of_both_algorithms_and_many_layouts_verify")
    else {
        return;
    };
    let dir = scratch("image_verify-fresh");
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 97) as u8).collect();
    for kind in ["ecdsa-p256", "ed25519"] {
        let signer = fresh_key(tool, &dir, kind);
        let bystander = fresh_key(
            tool,
            &dir,
            if kind == "ed25519" {
                "ecdsa-p256"
            } else {
                "ed25519"
            },
        );
        let private = format!("{kind}.pem");
        let policy = requiring(vec![bystander, signer]);
        for (header, align, extra) in [
            ("0x20", "1", &[][..]),
            ("0x80", "4", &["--security-counter", "3"][..]),
            ("0x200", "8", &["--public-key-format", "full"][..]),
            (
                "0x400",
                "32",
                &["--max-align", "32", "--security-counter", "auto"][..],
            ),
            ("0x1000", "16", &["--max-align", "16"][..]),
        ] {
            let mut args = vec![
                "--key",
                &private,
                "--header-size",
                header,
                "--align",
                align,
                "--version",
                "3.4.5+6",
            ];
            args.extend_from_slice(extra);
            if kind == "ecdsa-p256" && header == "0x80" {
                args.push("--pad-sig");
            }
            let image = sign(tool, &dir, &payload, &args);
            let what = format!("{kind} header {header} align {align} {extra:?}");
            let verified = verify(&image, &policy).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(verified.key_index, Some(1), "{what}");
            assert_eq!(
                verified.version,
                Some(ImageVersion::new(3, 4, 5, 6)),
                "{what}"
            );
            let offset = usize::from_str_radix(&header[2..], 16).unwrap();
            assert_eq!(verified.payload_offset, offset as u64, "{what}");
            assert_eq!(
                &image[offset..offset + payload.len()],
                &payload[..],
                "{what}"
            );
            if extra.contains(&"3") {
                assert_eq!(verified.security_counter, Some(3), "{what}");
            }
            // And tampered, once per layout: the last payload byte.
            let tampered = flipped(&image, offset + payload.len() - 1);
            assert_eq!(
                verify(&tampered, &policy),
                Err(ImageError::HashMismatch),
                "{what}"
            );
        }
    }
}

#[test]
fn imgtool_variants_this_verifier_refuses_name_their_cause() {
    let Some(tool) = imgtool("imgtool_variants_this_verifier_refuses_name_their_cause") else {
        return;
    };
    let dir = scratch("image_verify-variants");
    let payload = vec![0x42u8; 2048];
    let key = fresh_key(tool, &dir, "ed25519");
    let policy = requiring(vec![key]);
    let base = [
        "--key",
        "ed25519.pem",
        "--header-size",
        "0x200",
        "--version",
        "1.0.0",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        sign(tool, &dir, &payload, &args)
    };
    // Padded to the slot with the swap trailer: bytes after the image.
    let padded = with(&["--pad"]);
    let end = Layout::of(&padded).end as u64;
    assert_eq!(
        verify(&padded, &policy),
        Err(ImageError::TrailingBytes { expected: end })
    );
    // Signed over the whole image (--pure): no image hash to stream.
    assert_eq!(
        verify(&with(&["--pure"]), &policy),
        Err(ImageError::Unsupported {
            tlv_type: tlv::SIG_PURE
        })
    );
    // A SHA-512 image hash.
    assert_eq!(
        verify(&with(&["--sha", "512"]), &policy),
        Err(ImageError::Unsupported {
            tlv_type: tlv::SHA512
        })
    );
    // A lower version than the running one.
    let running = ImagePolicy {
        running_version: ImageVersion::parse("1.0.1"),
        ..policy.clone()
    };
    assert!(matches!(
        verify(&with(&[]), &running),
        Err(ImageError::Downgrade { .. })
    ));
    // ECDSA P-384: SHA-384 hash, 48-byte key hash, signatures up to 104 bytes. Refused for
    // its algorithm, required or not (its hash cannot be checked either).
    run(
        tool,
        &dir,
        &["keygen", "-k", "p384.pem", "-t", "ecdsa-p384"],
    );
    let mut args = base.to_vec();
    args[1] = "p384.pem";
    let p384 = sign(tool, &dir, &payload, &args);
    let unsupported = Err(ImageError::Unsupported {
        tlv_type: tlv::SHA384,
    });
    assert_eq!(verify(&p384, &policy), unsupported);
    assert_eq!(verify(&p384, &ImagePolicy::default()), unsupported);
}
