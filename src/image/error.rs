//! Why an image was refused: one variant per cause, so each gets its own code, log line and
//! failure report. Only static text and numbers: building, printing or describing one never
//! allocates.

use core::fmt::{self, Write as _};

use super::format::ImageVersion;

/// Every reason [`ImageVerifier`](super::ImageVerifier) refuses an image. Offsets and lengths
/// are byte positions in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The first four bytes are not the MCUboot magic and a signature is required.
    #[error("not an MCUboot image (magic {magic:#010x}) but a signed image is required")]
    NotAnImage {
        /// The first four bytes, little-endian (fewer than four: zero-filled).
        magic: u32,
    },
    /// The header's `hdr_size` is below the 32 bytes of the header itself.
    #[error("image header size {hdr_size} is below 32")]
    HeaderTooSmall {
        /// The header's `hdr_size`.
        hdr_size: u16,
    },
    /// An encrypted image: its hash and signature cover the plaintext, which is not what is
    /// downloaded, so nothing about it can be checked.
    #[error("encrypted image (flags {flags:#x}) cannot be verified")]
    Encrypted {
        /// The header's flags.
        flags: u32,
    },
    /// The image ended inside its header or payload.
    #[error("image truncated: {received} bytes, header and payload need {expected}")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes the header and payload need (32 while the header is incomplete).
        expected: u64,
    },
    /// A TLV area does not open with its info (protected: magic 0x6908 and the header's
    /// `protect_tlv_size`; unprotected: magic 0x6907, size at least 4).
    #[error("bad TLV area info at byte {offset}: magic {magic:#06x}, size {size}")]
    BadTlvInfo {
        /// Where the info is.
        offset: u64,
        /// Its magic.
        magic: u16,
        /// Its area size.
        size: u16,
    },
    /// A TLV's header or value runs past the end of its area.
    #[error("TLV at byte {offset} runs past the end of its area at byte {end}")]
    TlvPastEnd {
        /// Where the TLV starts.
        offset: u64,
        /// Where its area ends.
        end: u64,
    },
    /// A TLV this verifier needs has a length it cannot hold or use (e.g. a 104-byte ECDSA
    /// P-384 signature, a SHA-256 TLV that is not 32 bytes).
    #[error("TLV {tlv_type:#x} has length {len}, which this verifier cannot use")]
    TlvLength {
        /// The TLV type.
        tlv_type: u16,
        /// Its length.
        len: u16,
    },
    /// A TLV that must appear once appears again (image hash, key hash, signature, security
    /// counter): imgtool writes one of each; a second could make the verdict ambiguous.
    #[error("TLV {tlv_type:#x} appears twice")]
    DuplicateTlv {
        /// The TLV type.
        tlv_type: u16,
    },
    /// The image ended inside its TLV areas.
    #[error("TLV area truncated: {received} bytes, the image needs {expected}")]
    TlvTruncated {
        /// Bytes received.
        received: u64,
        /// Bytes the image needs (a lower bound while the unprotected area's size is unknown).
        expected: u64,
    },
    /// Bytes follow the end of the unprotected TLV area (e.g. an image padded with
    /// `imgtool --pad` to a slot size, or appended data).
    #[error("bytes after the end of the image at byte {expected}")]
    TrailingBytes {
        /// Where the image ends by its headers.
        expected: u64,
    },
    /// The image's headers give a length other than the size the platform announced.
    #[error("announced size {announced} but the image's headers say {image}")]
    SizeMismatch {
        /// The announced size.
        announced: u64,
        /// The size from the image's headers (while the unprotected area is unread, the
        /// least it can be).
        image: u64,
    },
    /// Only a hash or signature of a kind this verifier does not check is present (SHA-384/512,
    /// RSA, a `--pure` signature).
    #[error("unsupported image hash or signature (TLV {tlv_type:#x})")]
    Unsupported {
        /// The TLV type.
        tlv_type: u16,
    },
    /// An MCUboot image without a SHA-256 TLV.
    #[error("image hash TLV missing")]
    MissingHash,
    /// The SHA-256 TLV differs from the hash of the bytes received.
    #[error("image hash mismatch")]
    HashMismatch,
    /// A signature is required and the image has no signature TLV.
    #[error("signature TLV missing")]
    MissingSignature,
    /// A signature is required and no key is configured.
    #[error("no public key configured to verify the signature")]
    NoKeys,
    /// The image's key hash names none of the configured keys, or (without a key hash) no
    /// configured key has the signature's algorithm.
    #[error("signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify with the key it names (or with any configured key of its
    /// algorithm when it names none), or is not a well-formed signature.
    #[error("bad signature")]
    BadSignature,
    /// The image's version (major.minor.revision) is lower than the running one.
    #[error("downgrade from {running} to {image}")]
    Downgrade {
        /// The running version.
        running: ImageVersion,
        /// The image's version.
        image: ImageVersion,
    },
    /// The image's security counter (0 when it has none) is lower than the running one.
    #[error("security counter downgrade from {running} to {image}")]
    CounterDowngrade {
        /// The running security counter.
        running: u32,
        /// The image's security counter.
        image: u32,
    },
}

impl ImageError {
    /// Writes the one-line description (the `Display` text) into `out`, cut at a character
    /// boundary when it does not fit, and returns it: the text for a failure report, made
    /// without allocating.
    pub fn describe<'a>(&self, out: &'a mut [u8]) -> &'a str {
        let mut w = SliceWriter { out, len: 0 };
        // A full buffer ends the text early; what fits is kept.
        let _ = write!(w, "{self}");
        let SliceWriter { out, len } = w;
        core::str::from_utf8(&out[..len]).unwrap_or("")
    }
}

/// `fmt::Write` into a byte slice that keeps what fits (whole characters only).
struct SliceWriter<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.out.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.out[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_writes_the_display_text_and_cuts_it_to_the_buffer() {
        let e = ImageError::Downgrade {
            running: ImageVersion::new(1, 2, 3, 0),
            image: ImageVersion::new(1, 2, 0, 7),
        };
        let mut buf = [0u8; 64];
        assert_eq!(e.describe(&mut buf), "downgrade from 1.2.3 to 1.2.0+7");
        let mut small = [0u8; 9];
        assert_eq!(e.describe(&mut small), "downgrade");
        assert_eq!(e.describe(&mut []), "");
        let mut buf = [0u8; 80];
        assert_eq!(
            ImageError::NotAnImage { magic: 0x464c457f }.describe(&mut buf),
            "not an MCUboot image (magic 0x464c457f) but a signed image is required"
        );
    }
}
