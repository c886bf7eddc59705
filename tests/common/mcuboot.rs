//! MCUboot images for tests: the committed known-answer fixtures (tests/fixtures/mcuboot/, made
//! by the real imgtool; make.sh there), and the tests' own reading of the format, to find
//! where things are and to tamper with them.

use std::path::Path;

use ota::image::{ImageKey, ImageVersion};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcuboot");

/// A file of tests/fixtures/mcuboot.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A public key of tests/fixtures/mcuboot.
pub fn key(name: &str) -> ImageKey {
    ImageKey::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Where things are in a well-formed image: the test's own reading of the format.
pub struct Layout {
    pub hdr_size: usize,
    pub img_size: usize,
    /// Offset of the protected area's info (== unprotected info when there is none).
    pub protected_at: usize,
    pub unprotected_at: usize,
    pub end: usize,
    /// (offset of the TLV header, type, length)
    pub tlvs: Vec<(usize, u16, usize)>,
    /// The header's version.
    pub version: ImageVersion,
}

impl Layout {
    pub fn of(image: &[u8]) -> Layout {
        let u16_at = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]) as usize;
        let hdr_size = u16_at(8);
        let protect = u16_at(10);
        let img_size = u32::from_le_bytes(image[12..16].try_into().unwrap()) as usize;
        let protected_at = hdr_size + img_size;
        let unprotected_at = protected_at + protect;
        let end = unprotected_at + u16_at(unprotected_at + 2);
        let mut tlvs = Vec::new();
        for (start, stop) in [(protected_at, unprotected_at), (unprotected_at, end)] {
            let mut at = start + 4;
            while at < stop {
                let len = u16_at(at + 2);
                tlvs.push((at, u16_at(at) as u16, len));
                at += 4 + len;
            }
        }
        let version = ImageVersion::new(
            image[20],
            image[21],
            u16_at(22) as u16,
            u32::from_le_bytes(image[24..28].try_into().unwrap()),
        );
        Layout {
            hdr_size,
            img_size,
            protected_at,
            unprotected_at,
            end,
            tlvs,
            version,
        }
    }

    /// The value's offset and length of the first TLV of `tlv_type`.
    pub fn value(&self, tlv_type: u16) -> (usize, usize) {
        self.find(tlv_type)
            .unwrap_or_else(|| panic!("no TLV {tlv_type:#x}"))
    }

    /// [`value`](Self::value), `None` when the image has no such TLV.
    pub fn find(&self, tlv_type: u16) -> Option<(usize, usize)> {
        let &(at, _, len) = self.tlvs.iter().find(|t| t.1 == tlv_type)?;
        Some((at + 4, len))
    }
}

/// `image` with the lowest bit of the byte at `at` flipped.
pub fn flipped(image: &[u8], at: usize) -> Vec<u8> {
    let mut copy = image.to_vec();
    copy[at] ^= 0x01;
    copy
}

/// `image` without the TLV of `tlv_type` in the unprotected area (its size shrunk to match).
pub fn without_tlv(image: &[u8], tlv_type: u16) -> Vec<u8> {
    let layout = Layout::of(image);
    let (value, len) = layout.value(tlv_type);
    let mut copy = image[..value - 4].to_vec();
    copy.extend_from_slice(&image[value + len..]);
    let size_at = layout.unprotected_at + 2;
    let size = u16::from_le_bytes([copy[size_at], copy[size_at + 1]]) - 4 - len as u16;
    copy[size_at..size_at + 2].copy_from_slice(&size.to_le_bytes());
    copy
}
