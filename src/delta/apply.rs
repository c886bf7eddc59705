//! The streaming applier: patch bytes in, new-image bytes out, the old image read by offset.

use super::compression::Compression;
use super::error::{DeltaError, SizeField};
use super::header::{patch_type, SizeReader};
use super::heatshrink::{Decoder, HeatshrinkParams};
#[cfg(test)]
use super::state::STATE_FIXED_LEN;
use super::{DeltaBudget, OldImage};

/// Where the applier is in the patch, in patch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Before the first byte.
    PatchType,
    /// In the header's new-image size.
    NewSize,
    /// Before the heatshrink parameter byte.
    HeatshrinkParams,
    /// In the data-format section's size (the first field of the compressed stream).
    DataFormatSize,
    DiffSize,
    /// Adding `remaining` more diff bytes to the old image's.
    Diff,
    ExtraSize,
    /// Copying `remaining` more extra bytes.
    Extra,
    Adjustment,
    /// The new image is complete; only padding may follow.
    Done,
}

impl Stage {
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Stage> {
        Some(match code {
            0 => Stage::PatchType,
            1 => Stage::NewSize,
            2 => Stage::HeatshrinkParams,
            3 => Stage::DataFormatSize,
            4 => Stage::DiffSize,
            5 => Stage::Diff,
            6 => Stage::ExtraSize,
            7 => Stage::Extra,
            8 => Stage::Adjustment,
            9 => Stage::Done,
            _ => return None,
        })
    }
}

/// Why a [`PatchApplier::feed`] call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every patch byte given was used (`consumed` is the whole piece) and more are needed.
    NeedPatch,
    /// `out` is full (`produced` is its length); call again with the unconsumed patch bytes
    /// (possibly none: bytes already taken may still make output) and room.
    OutFull,
    /// The new image is complete. Patch bytes left unconsumed are past the patch's end and,
    /// fed again, are refused with [`DeltaError::TrailingData`] (padding bits are consumed).
    Done,
}

/// What one [`PatchApplier::feed`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Patch bytes used from the start of the piece; the rest must be given to the next call.
    pub consumed: usize,
    /// New-image bytes written at the start of `out`.
    pub produced: usize,
    /// Why it returned.
    pub stop: Stop,
}

/// Applies one detools sequential patch (`none` or `heatshrink`), fed in pieces, into the
/// caller's buffers.
///
/// Everything it needs is allocated by [`new`](Self::new) (see [`DeltaBudget`]); `feed`,
/// `finish`, `save_state`, [`reset`](Self::reset) and
/// [`restore_in_place`](Self::restore_in_place) never allocate. A hostile patch cannot make it
/// read outside the old image, write more than the new size its header gives, write past
/// `out`, or loop: each call returns after using up its piece or filling `out`.
#[derive(Debug)]
pub struct PatchApplier {
    pub(crate) budget: DeltaBudget,
    /// The heatshrink window: `1 << budget.max_window_bits` bytes, the first
    /// `1 << window_bits` in use.
    pub(crate) window: Box<[u8]>,
    /// Old-image bytes on their way to being added to diff bytes.
    old_chunk: Box<[u8]>,
    pub(crate) stage: Stage,
    pub(crate) compression: Compression,
    pub(crate) new_size: u64,
    pub(crate) produced: u64,
    pub(crate) consumed: u64,
    pub(crate) old_pos: u64,
    /// Diff or extra bytes left in the current run.
    pub(crate) remaining: u64,
    pub(crate) size: SizeReader,
    pub(crate) decoder: Option<Decoder>,
    pub(crate) failed: Option<DeltaError>,
}

impl PatchApplier {
    /// An applier with its memory for `budget` (clamped; see [`DeltaBudget::clamped`]),
    /// ready for a patch's first byte.
    pub fn new(budget: DeltaBudget) -> PatchApplier {
        let budget = budget.clamped();
        PatchApplier {
            budget,
            window: vec![0; 1 << budget.max_window_bits].into_boxed_slice(),
            old_chunk: vec![0; budget.old_chunk].into_boxed_slice(),
            stage: Stage::PatchType,
            compression: Compression::None,
            new_size: 0,
            produced: 0,
            consumed: 0,
            old_pos: 0,
            remaining: 0,
            size: SizeReader::default(),
            decoder: None,
            failed: None,
        }
    }

    /// Ready for another patch's first byte, keeping the memory.
    pub fn reset(&mut self) {
        self.stage = Stage::PatchType;
        self.compression = Compression::None;
        self.new_size = 0;
        self.produced = 0;
        self.consumed = 0;
        self.old_pos = 0;
        self.remaining = 0;
        self.size = SizeReader::default();
        self.decoder = None;
        self.failed = None;
    }

    /// The budget in use (clamped).
    pub fn budget(&self) -> DeltaBudget {
        self.budget
    }

    /// The new image's size, once the header has been read.
    pub fn new_size(&self) -> Option<u64> {
        (self.stage > Stage::NewSize).then_some(self.new_size)
    }

    /// The patch's compression, once its first byte has been read.
    pub fn compression(&self) -> Option<Compression> {
        (self.stage > Stage::PatchType).then_some(self.compression)
    }

    /// New-image bytes written so far (the output offset).
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Patch bytes consumed so far: where the patch resumes after [`restore`](Self::restore).
    pub fn patch_offset(&self) -> u64 {
        self.consumed
    }

    /// Where the next diff byte is read in the old image.
    pub fn old_offset(&self) -> u64 {
        self.old_pos
    }

    /// Whether the new image is complete.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done && self.failed.is_none()
    }

    /// The error that stopped the patch, if one did.
    pub fn error(&self) -> Option<DeltaError> {
        self.failed
    }

    /// Applies as much of `patch` as fits: writes new-image bytes at the start of `out` and
    /// returns how many patch bytes it used and new bytes it wrote. It returns when the piece
    /// is used up ([`Stop::NeedPatch`]), `out` is full ([`Stop::OutFull`]) or the image is
    /// complete ([`Stop::Done`]); bytes it did not consume must start the next call's piece.
    /// With room in `out` and a non-empty piece, a call that is not done consumes or produces
    /// something. After an error every call returns it again; before it, the call wrote to
    /// `out` only new-image bytes, as many as [`produced`](Self::produced) grew (an old-image
    /// read that fails writes nothing).
    pub fn feed(
        &mut self,
        patch: &[u8],
        old: &mut dyn OldImage,
        out: &mut [u8],
    ) -> Result<Progress, DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut input = patch;
        let mut written = 0;
        let outcome = self.run(&mut input, patch.len(), old, out, &mut written);
        let consumed = patch.len() - input.len();
        self.consumed += consumed as u64;
        match outcome {
            Ok(stop) => Ok(Progress {
                consumed,
                produced: written,
                stop,
            }),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// The verdict once the whole patch has been fed: the new image's size when it is
    /// complete, [`DeltaError::Truncated`] when the patch stopped short, or the error that
    /// stopped it.
    pub fn finish(&self) -> Result<u64, DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.stage != Stage::Done {
            return Err(DeltaError::Truncated {
                produced: self.produced,
                new_size: self.new_size,
            });
        }
        Ok(self.new_size)
    }

    /// [`feed`](Self::feed)'s work; `piece_len` is the length of the piece `input` started as.
    fn run(
        &mut self,
        input: &mut &[u8],
        piece_len: usize,
        old: &mut dyn OldImage,
        out: &mut [u8],
        written: &mut usize,
    ) -> Result<Stop, DeltaError> {
        loop {
            match self.stage {
                Stage::PatchType => {
                    let Some(byte) = take_byte(input) else {
                        return Ok(Stop::NeedPatch);
                    };
                    self.compression = patch_type(byte)?;
                    self.stage = Stage::NewSize;
                }
                Stage::NewSize => {
                    let Some(byte) = take_byte(input) else {
                        return Ok(Stop::NeedPatch);
                    };
                    if let Some(size) = self.size.push_length(byte, SizeField::NewSize)? {
                        self.new_size = size;
                        // An empty new image's patch ends with its size (no compressed stream).
                        self.stage = match (size, self.compression) {
                            (0, _) => Stage::Done,
                            (_, Compression::Heatshrink) => Stage::HeatshrinkParams,
                            _ => Stage::DataFormatSize,
                        };
                    }
                }
                Stage::HeatshrinkParams => {
                    let Some(byte) = take_byte(input) else {
                        return Ok(Stop::NeedPatch);
                    };
                    self.start_heatshrink(byte)?;
                    self.stage = Stage::DataFormatSize;
                }
                Stage::DataFormatSize => {
                    let Some(size) = self.read_length(input, SizeField::DataFormat)? else {
                        return Ok(Stop::NeedPatch);
                    };
                    if size != 0 {
                        return Err(DeltaError::DataFormat { size });
                    }
                    self.stage = Stage::DiffSize;
                }
                Stage::DiffSize => {
                    let Some(len) = self.read_length(input, SizeField::Diff)? else {
                        return Ok(Stop::NeedPatch);
                    };
                    self.check_new_range(len)?;
                    check_old_range(self.old_pos, len, old.size())?;
                    self.remaining = len;
                    self.stage = Stage::Diff;
                }
                Stage::Diff | Stage::Extra if self.remaining == 0 => {
                    self.stage = match self.stage {
                        Stage::Diff => Stage::ExtraSize,
                        _ => Stage::Adjustment,
                    };
                }
                Stage::Diff | Stage::Extra => {
                    if *written == out.len() {
                        return Ok(Stop::OutFull);
                    }
                    let n = self.copy_run(input, old, &mut out[*written..])?;
                    if n == 0 {
                        return Ok(Stop::NeedPatch);
                    }
                    *written += n;
                }
                Stage::ExtraSize => {
                    let Some(len) = self.read_length(input, SizeField::Extra)? else {
                        return Ok(Stop::NeedPatch);
                    };
                    self.check_new_range(len)?;
                    self.remaining = len;
                    self.stage = Stage::Extra;
                }
                Stage::Adjustment => {
                    let Some(seek) = self.read_size(input, SizeField::Adjustment)? else {
                        return Ok(Stop::NeedPatch);
                    };
                    self.old_pos = seek_old(self.old_pos, seek, old.size())?;
                    self.stage = if self.produced == self.new_size {
                        Stage::Done
                    } else {
                        Stage::DiffSize
                    };
                }
                Stage::Done => {
                    let at = self.consumed + (piece_len - input.len()) as u64;
                    self.refuse_trailing(input, at)?;
                    return Ok(Stop::Done);
                }
            }
        }
    }

    /// The heatshrink parameter byte: a decoder over a zeroed window, if the budget has room.
    fn start_heatshrink(&mut self, byte: u8) -> Result<(), DeltaError> {
        let params = HeatshrinkParams::from_byte(byte)?;
        if params.window_bits > self.budget.max_window_bits {
            return Err(DeltaError::WindowOverBudget {
                window_bits: params.window_bits,
                max_window_bits: self.budget.max_window_bits,
            });
        }
        self.window[..1 << params.window_bits].fill(0);
        self.decoder = Some(Decoder::new(params));
        Ok(())
    }

    /// Writes the current diff or extra run's next bytes into `out` (as many as the run, the
    /// room and the patch piece allow); returns how many.
    fn copy_run(
        &mut self,
        input: &mut &[u8],
        old: &mut dyn OldImage,
        out: &mut [u8],
    ) -> Result<usize, DeltaError> {
        let mut room = out.len().min(clamp_usize(self.remaining));
        if self.stage == Stage::Diff {
            // The old bytes first, a read buffer at a time: a read that fails leaves `out` as
            // it was, so a caller's buffer holds only image bytes when the applier refuses.
            room = room.min(self.old_chunk.len());
            self.read_old(old, room)?;
        }
        let dst = &mut out[..room];
        let n = self.decompress(input, dst);
        if self.stage == Stage::Diff {
            for (new, old) in dst[..n].iter_mut().zip(&self.old_chunk[..n]) {
                *new = new.wrapping_add(*old);
            }
            self.old_pos += n as u64;
        }
        self.produced += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Decompressed bytes into `dst` (up to its length), taking patch bytes as needed.
    fn decompress(&mut self, input: &mut &[u8], dst: &mut [u8]) -> usize {
        match &mut self.decoder {
            Some(decoder) => decoder.decode(&mut self.window, input, dst),
            None => {
                let n = dst.len().min(input.len());
                dst[..n].copy_from_slice(&input[..n]);
                *input = &input[n..];
                n
            }
        }
    }

    /// A size field of the compressed stream; `None` when the patch piece ends inside it.
    fn read_size(
        &mut self,
        input: &mut &[u8],
        field: SizeField,
    ) -> Result<Option<i64>, DeltaError> {
        let mut byte = [0u8];
        loop {
            if self.decompress(input, &mut byte) == 0 {
                return Ok(None);
            }
            if let Some(v) = self.size.push(byte[0], field)? {
                return Ok(Some(v));
            }
        }
    }

    fn read_length(
        &mut self,
        input: &mut &[u8],
        field: SizeField,
    ) -> Result<Option<u64>, DeltaError> {
        match self.read_size(input, field)? {
            None => Ok(None),
            Some(v) => u64::try_from(v)
                .map(Some)
                .map_err(|_| DeltaError::BadSize { field }),
        }
    }

    fn check_new_range(&self, len: u64) -> Result<(), DeltaError> {
        if len > self.new_size - self.produced {
            return Err(DeltaError::Oversize {
                at: self.produced,
                len,
                new_size: self.new_size,
            });
        }
        Ok(())
    }

    /// Adds the old image's next `dst.len()` bytes to `dst`, reading them a chunk at a time.
    /// Reads `len` (at most the read buffer's) old-image bytes at the current old position
    /// into the read buffer; the position moves only as they are used.
    fn read_old(&mut self, old: &mut dyn OldImage, len: usize) -> Result<(), DeltaError> {
        // Checked again per read: the image may have shrunk since the diff size was read.
        check_old_range(self.old_pos, len as u64, old.size())?;
        super::old::read_exact(old, self.old_pos, &mut self.old_chunk[..len])
    }

    /// At the end: the rest of the patch may only be padding (a heatshrink stream's last
    /// bits), which is consumed; `at` is the patch offset of `input`'s first byte.
    fn refuse_trailing(&mut self, input: &mut &[u8], at: u64) -> Result<(), DeltaError> {
        let before = input.len();
        let extra = match &mut self.decoder {
            Some(decoder) => decoder.decode(&mut self.window, input, &mut [0u8]),
            None => usize::from(!input.is_empty()),
        };
        if extra > 0 {
            // With heatshrink, the byte that completed the symbol; else the first extra byte.
            let used = (before - input.len()).saturating_sub(1);
            return Err(DeltaError::TrailingData {
                at: at + used as u64,
            });
        }
        Ok(())
    }
}

fn take_byte(input: &mut &[u8]) -> Option<u8> {
    let (&byte, rest) = input.split_first()?;
    *input = rest;
    Some(byte)
}

fn clamp_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn saturate_i64(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

fn check_old_range(offset: u64, len: u64, old_size: u64) -> Result<(), DeltaError> {
    if offset > old_size || len > old_size - offset {
        return Err(DeltaError::OldRange {
            offset: saturate_i64(i128::from(offset)),
            len,
            old_size,
        });
    }
    Ok(())
}

/// The old-image position after a seek, which must land inside the image or at its end.
fn seek_old(pos: u64, seek: i64, old_size: u64) -> Result<u64, DeltaError> {
    let target = i128::from(pos) + i128::from(seek);
    u64::try_from(target)
        .ok()
        .filter(|&t| t <= old_size)
        .ok_or(DeltaError::OldRange {
            offset: saturate_i64(target),
            len: 0,
            old_size,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::header::pack_size;
    use crate::delta::{OldReadError, STATE_MAX};

    /// One diff / extra / adjustment triple.
    struct Run<'a> {
        diff: &'a [u8],
        extra: &'a [u8],
        seek: i64,
    }

    /// The compressed stream of a patch: no data-format section, then the runs.
    fn stream(runs: &[Run<'_>]) -> Vec<u8> {
        let mut s = pack_size(0);
        for r in runs {
            s.extend(pack_size(r.diff.len() as i64));
            s.extend_from_slice(r.diff);
            s.extend(pack_size(r.extra.len() as i64));
            s.extend_from_slice(r.extra);
            s.extend(pack_size(r.seek));
        }
        s
    }

    fn none_patch(new_size: i64, runs: &[Run<'_>]) -> Vec<u8> {
        let mut p = vec![0x00];
        p.extend(pack_size(new_size));
        p.extend(stream(runs));
        p
    }

    /// A heatshrink stream of literals only (tag 1 and 8 bits per byte), window 8 lookahead 4.
    fn literal_heatshrink_patch(new_size: i64, runs: &[Run<'_>]) -> Vec<u8> {
        let mut p = vec![0x04];
        p.extend(pack_size(new_size));
        p.push(0x41);
        let (mut acc, mut n) = (0u32, 0u32);
        for byte in stream(runs) {
            acc = (acc << 9) | 0x100 | u32::from(byte);
            n += 9;
            while n >= 8 {
                n -= 8;
                p.push((acc >> n) as u8);
            }
            acc &= (1 << n) - 1;
        }
        if n > 0 {
            p.push((acc << (8 - n)) as u8);
        }
        p
    }

    /// Applies `patch` fed `piece` bytes at a time into `out_len`-byte buffers.
    fn apply(
        patch: &[u8],
        old: &[u8],
        piece: usize,
        out_len: usize,
    ) -> Result<Vec<u8>, DeltaError> {
        let mut a = PatchApplier::new(DeltaBudget::default());
        let mut old = old;
        let mut new = Vec::new();
        let mut out = vec![0u8; out_len];
        let mut rest = patch;
        loop {
            let take = rest.len().min(piece);
            let p = a.feed(&rest[..take], &mut old, &mut out)?;
            new.extend_from_slice(&out[..p.produced]);
            rest = &rest[p.consumed..];
            match p.stop {
                Stop::NeedPatch if rest.is_empty() => break,
                Stop::Done => break,
                _ => {}
            }
        }
        if !rest.is_empty() {
            a.feed(rest, &mut old, &mut out)?;
        }
        a.finish()?;
        assert_eq!(a.patch_offset(), patch.len() as u64);
        Ok(new)
    }

    const OLD: &[u8] = b"0123456789abcdef";

    fn sample_runs() -> [Run<'static>; 2] {
        // "0123" + 1 each ("1234"), extra "XY", skip 4; "89ab" unchanged, extra "!".
        [
            Run {
                diff: &[1, 1, 1, 1],
                extra: b"XY",
                seek: 4,
            },
            Run {
                diff: &[0, 0, 0, 0],
                extra: b"!",
                seek: -12,
            },
        ]
    }

    #[test]
    fn applies_in_any_pieces() {
        let expected = b"1234XY89ab!";
        for patch in [
            none_patch(11, &sample_runs()),
            literal_heatshrink_patch(11, &sample_runs()),
        ] {
            for piece in [1, 2, 7, 100] {
                for out_len in [1, 3, 64] {
                    assert_eq!(
                        apply(&patch, OLD, piece, out_len).as_deref(),
                        Ok(&expected[..]),
                        "piece {piece} out {out_len}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_new_image() {
        assert_eq!(apply(&[0x00, 0x00], OLD, 1, 1), Ok(vec![]));
        assert_eq!(apply(&[0x04, 0x00], OLD, 1, 1), Ok(vec![]));
        assert_eq!(
            apply(&[0x04, 0x00, 0x44], OLD, 1, 1),
            Err(DeltaError::TrailingData { at: 2 })
        );
    }

    #[test]
    fn stops_when_out_is_full_and_resumes_with_what_it_holds() {
        // One literal-only heatshrink patch: a piece of 3 bytes holds more than one output byte.
        let patch = literal_heatshrink_patch(11, &sample_runs());
        let mut a = PatchApplier::new(DeltaBudget::default());
        let mut old = OLD;
        let mut out = [0u8; 1];
        let p = a.feed(&patch, &mut old, &mut out).unwrap();
        assert_eq!((p.produced, p.stop), (1, Stop::OutFull));
        assert!(p.consumed < patch.len());
        // A none patch never takes more than it writes.
        let patch = none_patch(11, &sample_runs());
        let mut a = PatchApplier::new(DeltaBudget::default());
        let p = a.feed(&patch, &mut old, &mut out).unwrap();
        assert_eq!((p.produced, p.stop), (1, Stop::OutFull));
        let p2 = a.feed(&[], &mut old, &mut out).unwrap();
        assert_eq!((p2.consumed, p2.produced, p2.stop), (0, 0, Stop::NeedPatch));
    }

    #[test]
    fn hostile_sizes_and_seeks() {
        let run = |diff: &'static [u8], extra: &'static [u8], seek| Run { diff, extra, seek };
        // Diff past the new size.
        assert_eq!(
            apply(&none_patch(2, &[run(&[0; 3], b"", 0)]), OLD, 64, 64),
            Err(DeltaError::Oversize {
                at: 0,
                len: 3,
                new_size: 2
            })
        );
        // Extra past the new size.
        assert_eq!(
            apply(&none_patch(2, &[run(&[0], b"ab", 0)]), OLD, 64, 64),
            Err(DeltaError::Oversize {
                at: 1,
                len: 2,
                new_size: 2
            })
        );
        // Diff past the old image's end: refused before any old byte is read.
        assert_eq!(
            apply(&none_patch(17, &[run(&[0; 17], b"", 0)]), OLD, 64, 64),
            Err(DeltaError::OldRange {
                offset: 0,
                len: 17,
                old_size: 16
            })
        );
        // Seeks before the start and past the end.
        assert_eq!(
            apply(
                &none_patch(2, &[run(&[0], b"", -2), run(&[0], b"", 0)]),
                OLD,
                64,
                64
            ),
            Err(DeltaError::OldRange {
                offset: -1,
                len: 0,
                old_size: 16
            })
        );
        assert_eq!(
            apply(
                &none_patch(2, &[run(&[0], b"", 16), run(&[0], b"", 0)]),
                OLD,
                64,
                64
            ),
            Err(DeltaError::OldRange {
                offset: 17,
                len: 0,
                old_size: 16
            })
        );
        // A seek to the very end is fine (the next diff must then be empty).
        assert_eq!(
            apply(
                &none_patch(2, &[run(&[0], b"", 15), run(&[], b"z", 0)]),
                OLD,
                64,
                64
            ),
            Ok(b"0z".to_vec())
        );
        // A negative length, a data-format section, a huge new size that never comes.
        let mut negative = none_patch(4, &[]);
        negative.extend(pack_size(-1));
        assert_eq!(
            apply(&negative, OLD, 64, 64),
            Err(DeltaError::BadSize {
                field: SizeField::Diff
            })
        );
        let mut data_format = vec![0x00, 0x04];
        data_format.extend(pack_size(5));
        assert_eq!(
            apply(&data_format, OLD, 64, 64),
            Err(DeltaError::DataFormat { size: 5 })
        );
        let mut huge = vec![0x00];
        huge.extend(pack_size(i64::MAX));
        huge.extend(stream(&[run(b"", b"abc", 0)]));
        assert_eq!(
            apply(&huge, OLD, 64, 64),
            Err(DeltaError::Truncated {
                produced: 3,
                new_size: i64::MAX as u64
            })
        );
        assert_eq!(
            apply(&[0x80, 0x00], OLD, 64, 64),
            Err(DeltaError::NotSequential { byte: 0x80 })
        );
    }

    #[test]
    fn truncations_and_trailing_data() {
        for patch in [
            none_patch(11, &sample_runs()),
            literal_heatshrink_patch(11, &sample_runs()),
        ] {
            for cut in 0..patch.len() {
                let r = apply(&patch[..cut], OLD, 3, 5);
                assert!(
                    matches!(r, Err(DeltaError::Truncated { .. })),
                    "cut at {cut}: {r:?}"
                );
            }
        }
        let mut long = none_patch(11, &sample_runs());
        let end = long.len() as u64;
        long.push(0);
        assert_eq!(
            apply(&long, OLD, 64, 64),
            Err(DeltaError::TrailingData { at: end })
        );
        // A literal after the heatshrink stream's end: 9 more bits.
        let mut runs = stream(&sample_runs());
        runs.push(b'?');
        let mut p = vec![0x04, 11, 0x41];
        let (mut acc, mut n) = (0u32, 0u32);
        for byte in runs {
            acc = (acc << 9) | 0x100 | u32::from(byte);
            n += 9;
            while n >= 8 {
                n -= 8;
                p.push((acc >> n) as u8);
            }
            acc &= (1 << n) - 1;
        }
        p.push((acc << (8 - n)) as u8);
        assert!(matches!(
            apply(&p, OLD, 64, 64),
            Err(DeltaError::TrailingData { .. })
        ));
    }

    struct FailingOld {
        short: bool,
    }

    impl OldImage for FailingOld {
        fn size(&self) -> u64 {
            16
        }

        fn read(&mut self, _offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
            if self.short {
                Ok(buf.len() - 1)
            } else {
                Err(OldReadError { code: -7 })
            }
        }
    }

    #[test]
    fn old_image_reads_that_fail_or_come_short() {
        let patch = none_patch(11, &sample_runs());
        let mut out = [0u8; 64];
        let mut a = PatchApplier::new(DeltaBudget::default());
        let e = a.feed(&patch, &mut FailingOld { short: false }, &mut out);
        assert_eq!(
            e,
            Err(DeltaError::OldRead {
                offset: 0,
                code: -7
            })
        );
        // Every later call gives the same error, and nothing can be saved.
        assert_eq!(a.feed(&[], &mut FailingOld { short: false }, &mut out), e);
        assert_eq!(a.finish(), Err(e.unwrap_err()));
        assert_eq!(a.save_state(&mut [0u8; STATE_MAX]), 0);
        let mut a = PatchApplier::new(DeltaBudget::default());
        assert_eq!(
            a.feed(&patch, &mut FailingOld { short: true }, &mut out),
            Err(DeltaError::OldShort {
                offset: 0,
                wanted: 4,
                got: 3
            })
        );
    }

    #[test]
    fn reads_the_old_image_a_chunk_at_a_time() {
        struct Counting<'a>(&'a [u8], usize);
        impl OldImage for Counting<'_> {
            fn size(&self) -> u64 {
                self.0.len() as u64
            }
            fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
                assert!(buf.len() <= 4, "asked {} bytes", buf.len());
                self.1 += 1;
                let mut s = self.0;
                s.read(offset, buf)
            }
        }
        let patch = none_patch(
            16,
            &[Run {
                diff: &[0; 16],
                extra: b"",
                seek: 0,
            }],
        );
        let budget = DeltaBudget {
            old_chunk: 4,
            ..DeltaBudget::default()
        };
        let mut a = PatchApplier::new(budget);
        let mut old = Counting(OLD, 0);
        let mut out = [0u8; 64];
        let p = a.feed(&patch, &mut old, &mut out).unwrap();
        assert_eq!(&out[..p.produced], OLD);
        assert_eq!(old.1, 4);
    }

    #[test]
    fn window_over_budget_is_refused_at_the_parameter_byte() {
        let mut a = PatchApplier::new(DeltaBudget {
            max_window_bits: 8,
            old_chunk: 1,
        });
        let mut old = OLD;
        let mut out = [0u8; 4];
        // Window 9 (0x5_), lookahead 4.
        assert_eq!(
            a.feed(&[0x04, 0x05, 0x51], &mut old, &mut out),
            Err(DeltaError::WindowOverBudget {
                window_bits: 9,
                max_window_bits: 8
            })
        );
        a.reset();
        assert_eq!(
            a.feed(&[0x04, 0x05, 0xf1], &mut old, &mut out),
            Err(DeltaError::HeatshrinkParams {
                window_bits: 19,
                lookahead_bits: 4
            })
        );
    }

    /// Saves after every call (fed one byte into a 2-byte buffer), restores into a fresh
    /// applier, and checks that the rest comes out the same.
    #[test]
    fn save_and_restore_at_every_step() {
        for patch in [
            none_patch(11, &sample_runs()),
            literal_heatshrink_patch(11, &sample_runs()),
        ] {
            let whole = apply(&patch, OLD, 64, 64).unwrap();
            let mut a = PatchApplier::new(DeltaBudget::default());
            let mut old = OLD;
            let mut new = Vec::new();
            let mut out = [0u8; 2];
            let mut state = vec![0u8; STATE_MAX];
            let mut at = 0;
            while !a.is_done() {
                let len = a.save_state(&mut state);
                assert_eq!(len, a.state_len());
                assert_eq!(a.save_state(&mut state[..len - 1]), 0);
                a = PatchApplier::restore(DeltaBudget::default(), &state[..len]).unwrap();
                assert_eq!(a.patch_offset(), at as u64);
                assert_eq!(a.produced(), new.len() as u64);
                let mut again = vec![0u8; len];
                assert_eq!(a.save_state(&mut again), len);
                assert_eq!(again, state[..len], "saves back the same");
                let end = (at + 1).min(patch.len());
                let p = a.feed(&patch[at..end], &mut old, &mut out).unwrap();
                at += p.consumed;
                new.extend_from_slice(&out[..p.produced]);
            }
            assert_eq!(new, whole);
            assert_eq!(at, patch.len());
        }
    }

    #[test]
    fn a_state_saved_after_ten_bytes_of_a_size_field_restores() {
        // A diff size whose tenth byte still says "more": only an eleventh byte makes it
        // malformed, so the state before that byte is one a patch can be saved in.
        let mut patch = vec![0x00, 0x01, 0x00];
        patch.extend_from_slice(&[0x80; 10]);
        let mut a = PatchApplier::new(DeltaBudget::default());
        let mut old = OLD;
        let mut out = [0u8; 1];
        let p = a.feed(&patch, &mut old, &mut out).unwrap();
        assert_eq!(p.stop, Stop::NeedPatch);
        let mut state = vec![0u8; STATE_MAX];
        let len = a.save_state(&mut state);
        let mut a = PatchApplier::restore(DeltaBudget::default(), &state[..len]).unwrap();
        assert_eq!(
            a.feed(&[0x00], &mut old, &mut out),
            Err(DeltaError::BadSize {
                field: SizeField::Diff
            })
        );
    }

    #[test]
    fn restore_refuses_what_save_cannot_write() {
        let patch = literal_heatshrink_patch(11, &sample_runs());
        let mut a = PatchApplier::new(DeltaBudget::default());
        let mut old = OLD;
        let mut out = [0u8; 3];
        a.feed(&patch[..10], &mut old, &mut out).unwrap();
        let mut state = vec![0u8; STATE_MAX];
        let len = a.save_state(&mut state);
        let state = &state[..len];
        assert!(PatchApplier::restore(DeltaBudget::default(), state).is_some());
        assert!(PatchApplier::restore(DeltaBudget::default(), &state[..len - 1]).is_none());
        // A window larger than the budget's.
        let small = DeltaBudget {
            max_window_bits: 4,
            old_chunk: 1,
        };
        assert!(PatchApplier::restore(small, state).is_none());
        // Every flipped bit of the fixed part is refused or restores a state that saves back
        // the same (a position moved to another consistent one).
        for i in 0..STATE_FIXED_LEN * 8 {
            let mut bad = state.to_vec();
            bad[i / 8] ^= 1 << (i % 8);
            if let Some(r) = PatchApplier::restore(DeltaBudget::default(), &bad) {
                let mut again = vec![0u8; len];
                assert_eq!(r.save_state(&mut again), len);
                assert_eq!(again, bad);
            }
        }
        let mut a = PatchApplier::new(DeltaBudget::default());
        assert!(!a.restore_in_place(&[0u8; STATE_FIXED_LEN]));
        assert_eq!(a.produced(), 0);
    }
}
