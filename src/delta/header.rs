//! The patch header (type and compression byte, new-image size, heatshrink parameters) and the
//! size fields the whole patch is built of.

use super::compression::Compression;
use super::error::{DeltaError, SizeField};
use super::heatshrink::HeatshrinkParams;

/// detools' number for the sequential patch type (bits 6..4 of the first byte).
pub const PATCH_TYPE_SEQUENTIAL: u8 = 0;

/// The compression of a patch whose first byte is `byte`, or why it is not a sequential patch
/// this applier decodes.
pub fn patch_type(byte: u8) -> Result<Compression, DeltaError> {
    if byte & 0x80 != 0 || (byte >> 4) & 0x7 != PATCH_TYPE_SEQUENTIAL {
        return Err(DeltaError::NotSequential { byte });
    }
    let code = byte & 0x0f;
    let compression =
        Compression::from_code(code).ok_or(DeltaError::UnknownCompression { code })?;
    if !compression.is_supported() {
        return Err(DeltaError::UnsupportedCompression { compression });
    }
    Ok(compression)
}

/// The longest size field accepted: what detools' packer writes for 64-bit values.
pub(crate) const SIZE_MAX_BYTES: u8 = 10;

/// A size field read one byte at a time (the bytes may arrive in separate calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeReader {
    /// The magnitude so far.
    pub value: u64,
    /// Bytes read so far (0: none, the reader is idle).
    pub bytes: u8,
    /// The sign bit of the first byte.
    pub negative: bool,
}

impl SizeReader {
    /// Takes the field's next byte: `Some(value)` when it was the last one.
    pub fn push(&mut self, byte: u8, field: SizeField) -> Result<Option<i64>, DeltaError> {
        let bad = DeltaError::BadSize { field };
        if self.bytes == 0 {
            self.negative = byte & 0x40 != 0;
            self.value = u64::from(byte & 0x3f);
        } else {
            if self.bytes >= SIZE_MAX_BYTES {
                return Err(bad);
            }
            let shift = 6 + 7 * u32::from(self.bytes - 1);
            let part = u64::from(byte & 0x7f);
            // Bits shifted past 63 would be lost: a value that large is malformed.
            if part != 0 && (shift >= 63 || part >> (63 - shift) != 0) {
                return Err(bad);
            }
            if shift < 63 {
                self.value |= part << shift;
            }
        }
        self.bytes += 1;
        if byte & 0x80 != 0 {
            return Ok(None);
        }
        let magnitude = i64::try_from(self.value).map_err(|_| bad)?;
        let value = if self.negative { -magnitude } else { magnitude };
        *self = SizeReader::default();
        Ok(Some(value))
    }

    /// Takes the field's next byte where the field is a length: `Some(length)` when complete.
    pub fn push_length(&mut self, byte: u8, field: SizeField) -> Result<Option<u64>, DeltaError> {
        match self.push(byte, field)? {
            None => Ok(None),
            Some(v) => u64::try_from(v)
                .map(Some)
                .map_err(|_| DeltaError::BadSize { field }),
        }
    }
}

/// What a patch's uncompressed start says, for recognising a patch before applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchHeader {
    /// The compression of the rest of the patch (`none` or `heatshrink`).
    pub compression: Compression,
    /// The new image's size.
    pub new_size: u64,
    /// The heatshrink window size as a power of two (0 for `none`, and for an empty new image,
    /// whose patch stops after its size).
    pub window_bits: u8,
    /// The heatshrink lookahead size as a power of two (0 likewise).
    pub lookahead_bits: u8,
    /// The header's length in bytes (with the heatshrink parameter byte).
    pub len: usize,
}

impl PatchHeader {
    /// Reads the header at the start of `patch`: `Ok(None)` when `patch` ends inside it, an
    /// error when it is not a sequential patch this applier decodes (the budget is not checked
    /// here).
    pub fn parse(patch: &[u8]) -> Result<Option<PatchHeader>, DeltaError> {
        let Some((&first, mut rest)) = patch.split_first() else {
            return Ok(None);
        };
        let compression = patch_type(first)?;
        let mut size = SizeReader::default();
        let new_size = loop {
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(None);
            };
            rest = tail;
            if let Some(v) = size.push_length(b, SizeField::NewSize)? {
                break v;
            }
        };
        let mut header = PatchHeader {
            compression,
            new_size,
            window_bits: 0,
            lookahead_bits: 0,
            len: patch.len() - rest.len(),
        };
        if compression == Compression::Heatshrink && new_size > 0 {
            let Some(&b) = rest.first() else {
                return Ok(None);
            };
            let params = HeatshrinkParams::from_byte(b)?;
            header.window_bits = params.window_bits;
            header.lookahead_bits = params.lookahead_bits;
            header.len += 1;
        }
        Ok(Some(header))
    }
}

#[cfg(test)]
/// detools' packer (bsdiff.c `pack_size`), written from its description for the tests.
pub(crate) fn pack_size(value: i64) -> Vec<u8> {
    if value == 0 {
        return vec![0];
    }
    let mut out = Vec::new();
    let mut m = value.unsigned_abs();
    let sign = if value < 0 { 0x40 } else { 0 };
    out.push(0x80 | sign | (m & 0x3f) as u8);
    m >>= 6;
    while m > 0 {
        out.push(0x80 | (m & 0x7f) as u8);
        m >>= 7;
    }
    *out.last_mut().unwrap() &= 0x7f;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(bytes: &[u8]) -> Result<Option<i64>, DeltaError> {
        let mut r = SizeReader::default();
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(v) = r.push(b, SizeField::Diff)? {
                assert_eq!(i, bytes.len() - 1, "ended early");
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    #[test]
    fn sizes_round_trip() {
        for v in [
            0,
            1,
            63,
            64,
            -1,
            -64,
            8191,
            8192,
            1 << 40,
            -(1 << 40),
            i64::MAX,
            -i64::MAX,
        ] {
            assert_eq!(unpack(&pack_size(v)), Ok(Some(v)), "{v}");
        }
    }

    #[test]
    fn known_encodings() {
        // detools writes 1000 as 0xa8 0x0f: 40 | 15 << 6.
        assert_eq!(pack_size(1000), [0xa8, 0x0f]);
        assert_eq!(unpack(&[0xa8, 0x0f]), Ok(Some(1000)));
        assert_eq!(unpack(&[0x45]), Ok(Some(-5)));
        // "negative zero" is zero.
        assert_eq!(unpack(&[0x40]), Ok(Some(0)));
        // Zero continuation bytes are allowed up to the length limit.
        assert_eq!(unpack(&[0x81, 0x80, 0x00]), Ok(Some(1)));
    }

    #[test]
    fn malformed_sizes() {
        let bad = Err(DeltaError::BadSize {
            field: SizeField::Diff,
        });
        // Eleven bytes.
        let mut long = vec![0x80; 10];
        long.push(0);
        assert_eq!(unpack(&long), bad);
        // 2^63: one bit too many (the tenth byte holds bits 62..68).
        let mut big = vec![0x80; 9];
        big.push(0x02);
        assert_eq!(unpack(&big), bad);
        // A bit at 2^70.
        let mut far = vec![0x80; 9];
        far.push(0x10);
        assert_eq!(unpack(&far), bad);
        assert_eq!(unpack(&[0x80, 0x80]), Ok(None));
        let mut r = SizeReader::default();
        assert_eq!(
            r.push_length(0x41, SizeField::Extra),
            Err(DeltaError::BadSize {
                field: SizeField::Extra
            })
        );
    }

    #[test]
    fn patch_types() {
        assert_eq!(patch_type(0x00), Ok(Compression::None));
        assert_eq!(patch_type(0x04), Ok(Compression::Heatshrink));
        assert_eq!(
            patch_type(0x01),
            Err(DeltaError::UnsupportedCompression {
                compression: Compression::Lzma
            })
        );
        assert_eq!(
            patch_type(0x07),
            Err(DeltaError::UnknownCompression { code: 7 })
        );
        // In-place (1) and hdiffpatch (2) patches, and a set top bit.
        for byte in [0x10, 0x24, 0x80] {
            assert_eq!(patch_type(byte), Err(DeltaError::NotSequential { byte }));
        }
    }

    #[test]
    fn headers() {
        assert_eq!(PatchHeader::parse(&[]), Ok(None));
        assert_eq!(PatchHeader::parse(&[0x04, 0xa8]), Ok(None));
        assert_eq!(PatchHeader::parse(&[0x04, 0xa8, 0x0f]), Ok(None));
        assert_eq!(
            PatchHeader::parse(&[0x04, 0xa8, 0x0f, 0x44, 0xff]),
            Ok(Some(PatchHeader {
                compression: Compression::Heatshrink,
                new_size: 1000,
                window_bits: 8,
                lookahead_bits: 7,
                len: 4,
            }))
        );
        assert_eq!(
            PatchHeader::parse(&[0x04, 0x00]).unwrap().unwrap().len,
            2,
            "an empty new image has no parameter byte"
        );
        assert_eq!(
            PatchHeader::parse(&[0x00, 0x05, 0x00])
                .unwrap()
                .unwrap()
                .new_size,
            5
        );
    }
}
