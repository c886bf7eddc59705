//! A heatshrink (LZSS) decoder over a caller-owned window, bit-compatible with heatshrink's
//! own `heatshrink_decoder.c`, that consumes input only as a symbol needs it and stops when
//! the output is full, so it can be paused between any two bytes and its state saved.
//!
//! The stream is read most significant bit first: a tag bit; 1 is a literal (8 bits), 0 a
//! back-reference of `window_bits` bits (distance − 1) then `lookahead_bits` bits (count − 1).
//! A back-reference copies `count` bytes from `distance` bytes back in the output, possibly
//! overlapping what it writes. The window starts zeroed: the encoder may refer before the
//! first byte and those bytes are zeros. The last byte is padded with zero bits, fewer than a
//! whole symbol.

use super::error::DeltaError;

/// heatshrink's smallest window, as a power of two (`HEATSHRINK_MIN_WINDOW_BITS`).
pub const MIN_WINDOW_BITS: u8 = 4;
/// heatshrink's largest window, as a power of two (`HEATSHRINK_MAX_WINDOW_BITS`).
pub const MAX_WINDOW_BITS: u8 = 15;
/// heatshrink's smallest lookahead, as a power of two (`HEATSHRINK_MIN_LOOKAHEAD_BITS`).
pub const MIN_LOOKAHEAD_BITS: u8 = 3;

/// Window and lookahead sizes, as powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeatshrinkParams {
    /// The window (back-reference distances up to `1 << window_bits`).
    pub window_bits: u8,
    /// The lookahead (back-reference lengths up to `1 << lookahead_bits`).
    pub lookahead_bits: u8,
}

impl HeatshrinkParams {
    /// The parameters detools stores in the byte after the header: window − 4 in the high
    /// nibble, lookahead − 3 in the low one; refused outside heatshrink's limits.
    pub fn from_byte(byte: u8) -> Result<HeatshrinkParams, DeltaError> {
        HeatshrinkParams::new((byte >> 4) + 4, (byte & 0x0f) + 3)
    }

    /// Checked parameters: window 4..=15, lookahead at least 3 and below the window.
    pub fn new(window_bits: u8, lookahead_bits: u8) -> Result<HeatshrinkParams, DeltaError> {
        if !(MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&window_bits)
            || lookahead_bits < MIN_LOOKAHEAD_BITS
            || lookahead_bits >= window_bits
        {
            return Err(DeltaError::HeatshrinkParams {
                window_bits,
                lookahead_bits,
            });
        }
        Ok(HeatshrinkParams {
            window_bits,
            lookahead_bits,
        })
    }
}

/// Where the decoder is within a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symbol {
    /// Before a tag bit.
    Tag,
    /// After a 1 tag bit: 8 bits of literal due.
    Literal,
    /// After a 0 tag bit: the distance bits due.
    Distance,
    /// After the distance: the count bits due.
    Count,
    /// Copying a back-reference (`remaining` > 0 bytes left).
    Copy,
}

impl Symbol {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Symbol> {
        Some(match code {
            0 => Symbol::Tag,
            1 => Symbol::Literal,
            2 => Symbol::Distance,
            3 => Symbol::Count,
            4 => Symbol::Copy,
            _ => return None,
        })
    }
}

/// The decoder's state apart from its window (which the applier owns and saves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    pub params: HeatshrinkParams,
    pub symbol: Symbol,
    /// Input bits taken but not used yet: the low `bit_count` bits, oldest highest.
    pub bits: u32,
    pub bit_count: u8,
    /// The back-reference being read or copied: distance 1..=window, bytes left.
    pub distance: u32,
    pub remaining: u32,
    /// Bytes decoded so far (the window's write position, modulo its size).
    pub head: u64,
}

/// The most bits ever held: a 15-bit field needs at most 14 held bits plus one byte.
pub const MAX_HELD_BITS: u8 = 22;

impl Decoder {
    pub fn new(params: HeatshrinkParams) -> Decoder {
        Decoder {
            params,
            symbol: Symbol::Tag,
            bits: 0,
            bit_count: 0,
            distance: 0,
            remaining: 0,
            head: 0,
        }
    }

    /// Whether a restored state is one the decoder can be in.
    pub fn is_consistent(&self) -> bool {
        let held_ok = self.bit_count <= MAX_HELD_BITS && self.bits >> self.bit_count == 0;
        let window = 1u32 << self.params.window_bits;
        let lookahead = 1u32 << self.params.lookahead_bits;
        let reference_ok = match self.symbol {
            Symbol::Tag | Symbol::Literal | Symbol::Distance => {
                self.distance == 0 && self.remaining == 0
            }
            Symbol::Count => (1..=window).contains(&self.distance) && self.remaining == 0,
            Symbol::Copy => {
                (1..=window).contains(&self.distance) && (1..=lookahead).contains(&self.remaining)
            }
        };
        held_ok && reference_ok
    }

    /// The next `n` (≤ 15) bits, taking input bytes as needed; `None` (keeping what it took)
    /// when the input ends first.
    fn take_bits(&mut self, n: u8, input: &mut &[u8]) -> Option<u32> {
        while self.bit_count < n {
            let (&byte, rest) = input.split_first()?;
            *input = rest;
            self.bits = (self.bits << 8) | u32::from(byte);
            self.bit_count += 8;
        }
        self.bit_count -= n;
        let value = self.bits >> self.bit_count;
        self.bits &= (1u32 << self.bit_count) - 1;
        Some(value)
    }

    /// Decodes into `out` until it is full or `input` is used up; returns the bytes written.
    /// `window` holds at least `1 << window_bits` bytes and is this stream's window.
    pub fn decode(&mut self, window: &mut [u8], input: &mut &[u8], out: &mut [u8]) -> usize {
        let mask = (1u64 << self.params.window_bits) - 1;
        let mut written = 0;
        while written < out.len() {
            match self.symbol {
                Symbol::Tag => match self.take_bits(1, input) {
                    None => break,
                    Some(1) => self.symbol = Symbol::Literal,
                    Some(_) => self.symbol = Symbol::Distance,
                },
                Symbol::Literal => {
                    let Some(byte) = self.take_bits(8, input) else {
                        break;
                    };
                    let byte = byte as u8;
                    window[(self.head & mask) as usize] = byte;
                    self.head += 1;
                    out[written] = byte;
                    written += 1;
                    self.symbol = Symbol::Tag;
                }
                Symbol::Distance => {
                    let Some(index) = self.take_bits(self.params.window_bits, input) else {
                        break;
                    };
                    self.distance = index + 1;
                    self.symbol = Symbol::Count;
                }
                Symbol::Count => {
                    let Some(count) = self.take_bits(self.params.lookahead_bits, input) else {
                        break;
                    };
                    self.remaining = count + 1;
                    self.symbol = Symbol::Copy;
                }
                Symbol::Copy => {
                    let n = (out.len() - written).min(self.remaining as usize);
                    let back = u64::from(self.distance);
                    for slot in &mut out[written..written + n] {
                        let byte = window[(self.head.wrapping_sub(back) & mask) as usize];
                        window[(self.head & mask) as usize] = byte;
                        self.head += 1;
                        *slot = byte;
                    }
                    written += n;
                    self.remaining -= n as u32;
                    if self.remaining == 0 {
                        self.distance = 0;
                        self.symbol = Symbol::Tag;
                    }
                }
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits, most significant first, packed into bytes padded with zero bits.
    fn pack_bits(fields: &[(u32, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut n) = (0u64, 0u32);
        for &(v, bits) in fields {
            acc = (acc << bits) | u64::from(v);
            n += u32::from(bits);
            while n >= 8 {
                n -= 8;
                out.push((acc >> n) as u8);
            }
        }
        if n > 0 {
            out.push((acc << (8 - n)) as u8);
        }
        out
    }

    fn decode_all(
        params: HeatshrinkParams,
        stream: &[u8],
        piece: usize,
        out_len: usize,
    ) -> Vec<u8> {
        let mut d = Decoder::new(params);
        let mut window = vec![0u8; 1 << params.window_bits];
        let mut got = Vec::new();
        let mut out = vec![0u8; out_len];
        for mut chunk in stream.chunks(piece) {
            loop {
                let n = d.decode(&mut window, &mut chunk, &mut out);
                got.extend_from_slice(&out[..n]);
                if n < out.len() {
                    break;
                }
            }
            assert!(chunk.is_empty());
        }
        assert!(d.is_consistent());
        got
    }

    #[test]
    fn literals_and_overlapping_reference() {
        let p = HeatshrinkParams::new(8, 4).unwrap();
        // 'a', 'b', then 7 bytes from 2 back (overlapping: ababab...).
        let stream = pack_bits(&[
            (1, 1),
            (b'a'.into(), 8),
            (1, 1),
            (b'b'.into(), 8),
            (0, 1),
            (1, 8),
            (6, 4),
        ]);
        for piece in [1, 2, 100] {
            for out_len in [1, 3, 64] {
                assert_eq!(
                    decode_all(p, &stream, piece, out_len),
                    b"ababababa",
                    "{piece} {out_len}"
                );
            }
        }
    }

    #[test]
    fn references_before_the_start_read_zeros() {
        let p = HeatshrinkParams::new(4, 3).unwrap();
        // 16 back (the whole window), 8 bytes: nothing written yet, so zeros.
        let stream = pack_bits(&[(0, 1), (15, 4), (7, 3), (1, 1), (0xff, 8)]);
        assert_eq!(decode_all(p, &stream, 1, 4), [0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
    }

    #[test]
    fn wide_fields_cross_bytes() {
        // Window 15 (15 distance bits), lookahead 14.
        let p = HeatshrinkParams::new(15, 14).unwrap();
        let stream = pack_bits(&[(1, 1), (0x5a, 8), (0, 1), (0, 15), (299, 14)]);
        let got = decode_all(p, &stream, 1, 7);
        assert_eq!(got.len(), 301);
        assert!(got.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn padding_yields_nothing() {
        let p = HeatshrinkParams::new(8, 7).unwrap();
        // A literal then 7 zero padding bits: a tag 0 and a partial distance.
        let stream = pack_bits(&[(1, 1), (0x42, 8)]);
        assert_eq!(stream.len(), 2);
        assert_eq!(decode_all(p, &stream, 1, 16), [0x42]);
    }

    #[test]
    fn parameter_limits() {
        assert!(HeatshrinkParams::new(4, 3).is_ok());
        assert!(HeatshrinkParams::new(15, 14).is_ok());
        for (w, l) in [(3, 3), (16, 4), (8, 8), (8, 2), (4, 4)] {
            assert_eq!(
                HeatshrinkParams::new(w, l),
                Err(DeltaError::HeatshrinkParams {
                    window_bits: w,
                    lookahead_bits: l
                })
            );
        }
        assert_eq!(
            HeatshrinkParams::from_byte(0x44),
            HeatshrinkParams::new(8, 7)
        );
    }
}
