//! The MCUboot image format as `imgtool` writes it (MCUboot's docs/design.md, "Image format").
//!
//! An image is, in this order and with no gap: a header of `hdr_size` bytes (the 32 bytes below,
//! then padding), the payload of `img_size` bytes, the protected TLV area of `protect_tlv_size`
//! bytes (absent when 0), and the unprotected TLV area. Each TLV area opens with a 4-byte info
//! (magic, total size including the info) followed by TLVs (type `u16`, length `u16`, value),
//! packed without alignment. Every field is little-endian. The image hash is SHA-256 over
//! everything before the unprotected area; signatures sign that hash.

use core::fmt;

/// The header's first four bytes: an MCUboot image.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// The fixed part of the header; `hdr_size` may be larger (padding, vector tables' alignment).
pub const HEADER_LEN: usize = 32;
/// The info that opens the protected TLV area (hashed and so covered by the signature).
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// The info that opens the unprotected TLV area (hash, key hash, signature).
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Length of a TLV area info and of a TLV header alike.
pub const TLV_HEADER_LEN: usize = 4;

/// Header flags with AES-encrypted payloads: the hash covers the plaintext, which a verifier of
/// the downloaded bytes never sees.
pub const FLAG_ENCRYPTED: u32 = 0x0000_0004 | 0x0000_0008;

/// TLV types this verifier reads; the others are skipped.
pub mod tlv {
    /// SHA-256 of the image's public key as `SubjectPublicKeyInfo` DER: picks the key.
    pub const KEYHASH: u16 = 0x01;
    /// The whole public key instead of its hash (`--public-key-format full`): skipped, so every
    /// configured key is tried.
    pub const PUBKEY: u16 = 0x02;
    /// SHA-256 over header, payload and protected TLV area.
    pub const SHA256: u16 = 0x10;
    /// SHA-384 image hash (ECDSA P-384 images): not supported.
    pub const SHA384: u16 = 0x11;
    /// SHA-512 image hash (`--sha 512`): not supported.
    pub const SHA512: u16 = 0x12;
    /// RSA-2048 PSS signature: not supported.
    pub const RSA2048_PSS: u16 = 0x20;
    /// ECDSA P-224 signature, retired by MCUboot: not supported.
    pub const ECDSA224: u16 = 0x21;
    /// ECDSA signature (P-256 here) of the image hash, ASN.1 DER, possibly zero-padded to 72.
    pub const ECDSA_SIG: u16 = 0x22;
    /// RSA-3072 PSS signature: not supported.
    pub const RSA3072_PSS: u16 = 0x23;
    /// Ed25519 signature of the 32-byte image hash (the hash is the signed message).
    pub const ED25519: u16 = 0x24;
    /// Marks a "pure" signature over the image itself (`--pure`): needs the whole image at
    /// once, so not supported by a streaming verifier.
    pub const SIG_PURE: u16 = 0x25;
    /// Security counter, `u32`; honoured only in the protected area (elsewhere it is unsigned).
    pub const SEC_CNT: u16 = 0x50;
}

/// An image version as the header carries it; shown as `major.minor.revision` and `+build`
/// when the build number is not 0, as imgtool's `--version` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ImageVersion {
    /// Major number.
    pub major: u8,
    /// Minor number.
    pub minor: u8,
    /// Revision number.
    pub revision: u16,
    /// Build number: ignored by [`is_lower_than`](Self::is_lower_than), as MCUboot ignores it
    /// unless built with `MCUBOOT_VERSION_CMP_USE_BUILD_NUMBER`.
    pub build: u32,
}

impl ImageVersion {
    /// A version from its four numbers.
    pub const fn new(major: u8, minor: u8, revision: u16, build: u32) -> Self {
        ImageVersion {
            major,
            minor,
            revision,
            build,
        }
    }

    /// Parses imgtool's spelling, `MAJOR[.MINOR[.REVISION[+BUILD]]]` (decimal, each within its
    /// field's range), so a device can state its running version as the text it reports.
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<ImageVersion> {
        let (numbers, build) = match text.split_once('+') {
            Some((numbers, build)) => (numbers, Some(build)),
            None => (text, None),
        };
        fn number<T: core::str::FromStr>(part: &str) -> Option<T> {
            // `u8::from_str` takes a leading '+', which is no part of a version.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        }
        let mut parts = numbers.split('.');
        let major = number(parts.next()?)?;
        let minor = parts.next().map_or(Some(0), number)?;
        let revision = parts.next().map_or(Some(0), number)?;
        if parts.next().is_some() {
            return None;
        }
        let build = build.map_or(Some(0), number)?;
        Some(ImageVersion::new(major, minor, revision, build))
    }

    /// Whether `self` is lower than `other` by `major.minor.revision`, the build number aside:
    /// MCUboot's default downgrade rule (an equal version is not a downgrade).
    pub fn is_lower_than(&self, other: &ImageVersion) -> bool {
        (self.major, self.minor, self.revision) < (other.major, other.minor, other.revision)
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

/// The fixed 32-byte MCUboot image header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// [`IMAGE_MAGIC`] for an MCUboot image.
    pub magic: u32,
    /// Where a RAM-loaded image goes; informational here.
    pub load_addr: u32,
    /// Header length including padding: the payload's offset in the file.
    pub hdr_size: u16,
    /// Length of the protected TLV area, its info included; 0 when it is absent.
    pub protect_tlv_size: u16,
    /// Payload length (without header and TLVs).
    pub img_size: u32,
    /// `IMAGE_F_*` flags.
    pub flags: u32,
    /// The image's version.
    pub version: ImageVersion,
}

impl ImageHeader {
    /// Decodes the fixed header; no check beyond the layout (see the verifier for those).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> ImageHeader {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        ImageHeader {
            magic: u32_at(0),
            load_addr: u32_at(4),
            hdr_size: u16_at(8),
            protect_tlv_size: u16_at(10),
            img_size: u32_at(12),
            flags: u32_at(16),
            version: ImageVersion::new(bytes[20], bytes[21], u16_at(22), u32_at(24)),
        }
    }

    /// Offset of the protected TLV area (or of the unprotected one when there is none).
    pub fn tlv_offset(&self) -> u64 {
        u64::from(self.hdr_size) + u64::from(self.img_size)
    }

    /// Bytes the image hash covers: header, payload, protected TLV area.
    pub fn hashed_len(&self) -> u64 {
        self.tlv_offset() + u64::from(self.protect_tlv_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_little_endian_at_their_offsets() {
        let mut raw = [0u8; HEADER_LEN];
        raw[..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        raw[4..8].copy_from_slice(&0x0800_0000u32.to_le_bytes());
        raw[8..10].copy_from_slice(&0x200u16.to_le_bytes());
        raw[10..12].copy_from_slice(&12u16.to_le_bytes());
        raw[12..16].copy_from_slice(&3000u32.to_le_bytes());
        raw[16..20].copy_from_slice(&0x20u32.to_le_bytes());
        raw[20..28].copy_from_slice(&[1, 2, 3, 0, 4, 0, 0, 0]);
        let h = ImageHeader::parse(&raw);
        assert_eq!(h.magic, IMAGE_MAGIC);
        assert_eq!(h.load_addr, 0x0800_0000);
        assert_eq!(
            (h.hdr_size, h.protect_tlv_size, h.img_size),
            (0x200, 12, 3000)
        );
        assert_eq!(h.flags, 0x20);
        assert_eq!(h.version, ImageVersion::new(1, 2, 3, 4));
        assert_eq!(h.tlv_offset(), 0x200 + 3000);
        assert_eq!(h.hashed_len(), 0x200 + 3000 + 12);
    }

    #[test]
    fn versions_parse_print_and_compare_without_the_build_number() {
        let v = ImageVersion::parse("1.2.3+4").unwrap();
        assert_eq!(v, ImageVersion::new(1, 2, 3, 4));
        assert_eq!(v.to_string(), "1.2.3+4");
        assert_eq!(ImageVersion::parse("2").unwrap().to_string(), "2.0.0");
        assert_eq!(
            ImageVersion::parse("255.255.65535+4294967295"),
            Some(ImageVersion::new(255, 255, 65535, u32::MAX))
        );
        for bad in [
            "", "1.", "256", "1.2.3.4", "1.2.3+", "+1", "1.+2", "a.b", "1.-2", "1.2.+3",
        ] {
            assert_eq!(ImageVersion::parse(bad), None, "{bad:?}");
        }
        let low = ImageVersion::new(1, 2, 3, 9);
        assert!(low.is_lower_than(&ImageVersion::new(1, 2, 4, 0)));
        assert!(low.is_lower_than(&ImageVersion::new(1, 3, 0, 0)));
        assert!(low.is_lower_than(&ImageVersion::new(2, 0, 0, 0)));
        assert!(
            !low.is_lower_than(&ImageVersion::new(1, 2, 3, 10)),
            "build ignored"
        );
        assert!(!low.is_lower_than(&low));
        assert!(!ImageVersion::new(1, 2, 4, 0).is_lower_than(&low));
    }
}
