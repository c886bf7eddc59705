//! Saving a [`PatchApplier`] between two calls and restoring it after a restart.
//!
//! The layout (this crate's, versioned by its first byte; little-endian): format, stage,
//! compression, window bits, lookahead bits, heatshrink symbol, held bit count, size-field
//! bytes read, size-field sign (one byte each); new size, bytes produced, patch bytes consumed,
//! old-image position, bytes left in the run, size-field magnitude (`u64` each); held bits,
//! back-reference distance, back-reference bytes left (`u32` each); bytes decoded (`u64`);
//! then the heatshrink window, `1 << window bits` bytes (none for `none`). The window is the
//! big part: 256 bytes for detools' default (window 8), at most 32 KiB.

use super::apply::{PatchApplier, Stage};
use super::compression::Compression;
use super::header::{SizeReader, SIZE_MAX_BYTES};
use super::heatshrink::{Decoder, HeatshrinkParams, Symbol, MAX_WINDOW_BITS};
use super::DeltaBudget;

/// The saved state's length without the heatshrink window.
pub const STATE_FIXED_LEN: usize = 77;
/// The longest state any budget saves: the fixed part and a 32 KiB window.
pub const STATE_MAX: usize = STATE_FIXED_LEN + (1 << MAX_WINDOW_BITS);

const STATE_FORMAT: u8 = 1;

/// The fields of a state, before they are checked and installed.
struct Fields {
    stage: Stage,
    compression: Compression,
    new_size: u64,
    produced: u64,
    consumed: u64,
    old_pos: u64,
    remaining: u64,
    size: SizeReader,
    decoder: Option<Decoder>,
}

impl Fields {
    fn of(a: &PatchApplier) -> Fields {
        Fields {
            stage: a.stage,
            compression: a.compression,
            new_size: a.new_size,
            produced: a.produced,
            consumed: a.consumed,
            old_pos: a.old_pos,
            remaining: a.remaining,
            size: a.size,
            decoder: a.decoder,
        }
    }

    fn encode(&self, out: &mut [u8; STATE_FIXED_LEN]) {
        let d = self.decoder;
        let (window_bits, lookahead_bits) =
            d.map_or((0, 0), |d| (d.params.window_bits, d.params.lookahead_bits));
        let mut w = Writer { buf: out, at: 0 };
        w.put(&[
            STATE_FORMAT,
            self.stage.code(),
            self.compression.code(),
            window_bits,
            lookahead_bits,
            d.map_or(0, |d| d.symbol.code()),
            d.map_or(0, |d| d.bit_count),
            self.size.bytes,
            u8::from(self.size.negative),
        ]);
        for v in [
            self.new_size,
            self.produced,
            self.consumed,
            self.old_pos,
            self.remaining,
            self.size.value,
        ] {
            w.put(&v.to_le_bytes());
        }
        for v in [
            d.map_or(0, |d| d.bits),
            d.map_or(0, |d| d.distance),
            d.map_or(0, |d| d.remaining),
        ] {
            w.put(&v.to_le_bytes());
        }
        w.put(&d.map_or(0, |d| d.head).to_le_bytes());
        debug_assert_eq!(w.at, STATE_FIXED_LEN);
    }

    fn decode(state: &[u8; STATE_FIXED_LEN]) -> Option<Fields> {
        let mut r = Reader { buf: state, at: 0 };
        let [format, stage, compression, window_bits, lookahead_bits, symbol, bit_count, size_bytes, negative] =
            r.array()?;
        if format != STATE_FORMAT {
            return None;
        }
        let stage = Stage::from_code(stage)?;
        let compression = Compression::from_code(compression)?;
        let new_size = r.u64()?;
        let produced = r.u64()?;
        let consumed = r.u64()?;
        let old_pos = r.u64()?;
        let remaining = r.u64()?;
        let size = SizeReader {
            value: r.u64()?,
            bytes: size_bytes,
            negative: negative != 0,
        };
        let bits = r.u32()?;
        let distance = r.u32()?;
        let copy_left = r.u32()?;
        let head = r.u64()?;
        let decoder = match window_bits {
            0 => None,
            _ => Some(Decoder {
                params: HeatshrinkParams::new(window_bits, lookahead_bits).ok()?,
                symbol: Symbol::from_code(symbol)?,
                bits,
                bit_count,
                distance,
                remaining: copy_left,
                head,
            }),
        };
        Some(Fields {
            stage,
            compression,
            new_size,
            produced,
            consumed,
            old_pos,
            remaining,
            size,
            decoder,
        })
    }

    /// Whether an applier could be in this state (so that it cannot panic or loop from it).
    fn is_consistent(&self) -> bool {
        let in_header = self.stage <= Stage::HeatshrinkParams;
        let in_size_field = matches!(
            self.stage,
            Stage::NewSize
                | Stage::DataFormatSize
                | Stage::DiffSize
                | Stage::ExtraSize
                | Stage::Adjustment
        );
        let size_ok = (in_size_field || self.size == SizeReader::default())
            && self.size.bytes <= SIZE_MAX_BYTES
            && (self.size.bytes > 0 || self.size == SizeReader::default());
        // A heatshrink stream has its decoder from the parameter byte on.
        let has_stream = self.stage > Stage::HeatshrinkParams && self.new_size > 0;
        let decoder_ok = match self.decoder {
            Some(d) => {
                has_stream && self.compression == Compression::Heatshrink && d.is_consistent()
            }
            None => !has_stream || self.compression == Compression::None,
        };
        let compression_ok = self.compression.is_supported()
            && (self.stage > Stage::PatchType || self.compression == Compression::None)
            && (self.stage != Stage::HeatshrinkParams
                || self.compression == Compression::Heatshrink);
        let progress_ok = self.produced <= self.new_size
            && self.remaining <= self.new_size - self.produced
            && (self.remaining == 0 || matches!(self.stage, Stage::Diff | Stage::Extra))
            && (self.stage != Stage::Done || self.produced == self.new_size)
            && (!in_header
                || (self.produced == 0
                    && self.old_pos == 0
                    && (self.stage > Stage::NewSize || self.new_size == 0)
                    && (self.stage != Stage::HeatshrinkParams || self.new_size > 0)))
            && (self.stage != Stage::PatchType || self.consumed == 0)
            && (self.stage == Stage::PatchType || self.consumed > 0);
        size_ok && decoder_ok && compression_ok && progress_ok
    }
}

impl PatchApplier {
    /// The length [`save_state`](Self::save_state) writes now: the fixed part and the
    /// heatshrink window in use.
    pub fn state_len(&self) -> usize {
        STATE_FIXED_LEN + self.decoder.map_or(0, |d| 1 << d.params.window_bits)
    }

    /// Writes the applier's state into `out`, so that [`restore`](Self::restore) continues the
    /// patch from here after a restart: feed it the patch from
    /// [`patch_offset`](Self::patch_offset) on, and it writes the new image from
    /// [`produced`](Self::produced) on. Returns the length written
    /// ([`state_len`](Self::state_len), at most [`STATE_MAX`]), or 0 with nothing written when
    /// `out` is shorter or the patch failed (a refused patch is not resumed). No allocation.
    pub fn save_state(&self, out: &mut [u8]) -> usize {
        let len = self.state_len();
        if self.failed.is_some() || out.len() < len {
            return 0;
        }
        let Some((fixed, window)) = out[..len].split_first_chunk_mut::<STATE_FIXED_LEN>() else {
            return 0;
        };
        Fields::of(self).encode(fixed);
        window.copy_from_slice(&self.window[..window.len()]);
        len
    }

    /// An applier with the memory of `budget`, continuing from a state
    /// [`save_state`](Self::save_state) wrote; `None` unless `state` is exactly such a state
    /// (length, format, a consistent position) and its window fits `budget`.
    pub fn restore(budget: DeltaBudget, state: &[u8]) -> Option<PatchApplier> {
        let mut applier = PatchApplier::new(budget);
        applier.restore_in_place(state).then_some(applier)
    }

    /// What a saved state says, when an applier of `budget` would take it (exactly the check
    /// [`restore_in_place`](Self::restore_in_place) makes); no allocation, nothing changed.
    /// The engine checks a breakpoint record with it before it promises the firmware a resume
    /// offset, and restores the applier later, on the thread that fetches.
    pub fn inspect_state(budget: DeltaBudget, state: &[u8]) -> Option<SavedState> {
        let (f, _) = checked(budget.clamped(), state)?;
        Some(SavedState {
            new_size: f.new_size,
            produced: f.produced,
            consumed: f.consumed,
        })
    }

    /// [`restore`](Self::restore) into this applier's memory, without allocating; `false`
    /// (and the applier unchanged) when `state` is refused.
    pub fn restore_in_place(&mut self, state: &[u8]) -> bool {
        let Some((f, window)) = checked(self.budget, state) else {
            return false;
        };
        let window_len = window.len();
        self.window[..window_len].copy_from_slice(window);
        self.stage = f.stage;
        self.compression = f.compression;
        self.new_size = f.new_size;
        self.produced = f.produced;
        self.consumed = f.consumed;
        self.old_pos = f.old_pos;
        self.remaining = f.remaining;
        self.size = f.size;
        self.decoder = f.decoder;
        self.failed = None;
        true
    }
}

/// The positions a saved state holds ([`PatchApplier::inspect_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedState {
    /// The new image's size (0 while the header is being read).
    pub new_size: u64,
    /// New-image bytes written before the state was saved.
    pub produced: u64,
    /// Patch bytes consumed: where the patch resumes.
    pub consumed: u64,
}

/// The fields and the window of `state`, when it is exactly a state `save_state` writes and
/// its window fits `budget` (clamped).
fn checked(budget: DeltaBudget, state: &[u8]) -> Option<(Fields, &[u8])> {
    let (fixed, window) = state.split_first_chunk::<STATE_FIXED_LEN>()?;
    let f = Fields::decode(fixed)?;
    let mut again = [0u8; STATE_FIXED_LEN];
    f.encode(&mut again);
    let window_len = f.decoder.map_or(0, |d| 1usize << d.params.window_bits);
    let fits = f
        .decoder
        .is_none_or(|d| d.params.window_bits <= budget.max_window_bits);
    (&again == fixed && window.len() == window_len && fits && f.is_consistent())
        .then_some((f, window))
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.buf.get(self.at..self.at + N)?;
        self.at += N;
        bytes.try_into().ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
}
