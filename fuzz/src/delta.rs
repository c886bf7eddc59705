//! The detools sequential-patch applier (`ota::delta::PatchApplier`) on arbitrary patches
//! against a small fixed old image, or on arbitrary saved states.
//!
//! Input: a flags byte (bit 0: damage a saved state; bit 1: the old image is empty), the
//! budget's window bits and old-image chunk, a piece size, an output buffer size and how often
//! to save and restore (0: never); with bit 0, a count and that many (position, xor) pairs;
//! then the patch. With bit 0 the patch is applied for the first calls, the state saved,
//! damaged by the pairs, and restored.
//!
//! What must hold: no panic; no read outside the old image; no call writes more than its
//! buffer, nor the whole run more than the header's new size; each call consumes, produces or
//! says why not ([`Stop`]), so a run ends; fed whole or in pieces, saved and restored on the
//! way, the patch gives the same bytes and the same verdict; the header parser agrees with the
//! applier; a restored state saves back to the same bytes.

use super::input::Input;
use ota::delta::{
    DeltaBudget, DeltaError, OldImage, OldReadError, PatchApplier, PatchHeader, Stop, STATE_MAX,
};

/// The old image every patch is applied to (or none of it).
fn old_image() -> Vec<u8> {
    (0..200u32).map(|i| (i * 37 + i / 7) as u8).collect()
}

/// Runs stop after this much output: a back-reference can make much from little.
const OUTPUT_CAP: usize = 256 * 1024;

/// Reads the old image and fails the run if the applier asks outside it.
struct Checked<'a> {
    image: &'a [u8],
}

impl OldImage for Checked<'_> {
    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        let at = usize::try_from(offset).expect("offset fits");
        let end = at.checked_add(buf.len()).expect("no overflow");
        assert!(
            end <= self.image.len(),
            "read {at}..{end} outside the old image"
        );
        assert!(!buf.is_empty(), "an empty read");
        buf.copy_from_slice(&self.image[at..end]);
        Ok(buf.len())
    }
}

/// What a run gave: the bytes reported and how it ended (`None`: stopped at the cap).
struct Outcome {
    new: Vec<u8>,
    verdict: Option<Result<u64, DeltaError>>,
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let budget = DeltaBudget {
        max_window_bits: 4 + input.u8() % 12,
        old_chunk: 1 + usize::from(input.u8() % 64),
    };
    let piece = 1 + usize::from(input.u8());
    let out_len = 1 + usize::from(input.u8());
    let save_every = usize::from(input.u8());
    let damage: Vec<(u16, u8)> = match flags & 1 {
        1 => (0..input.u8() % 8)
            .map(|_| (input.u16(), input.u8()))
            .collect(),
        _ => Vec::new(),
    };
    let rest = input.rest();
    let image = old_image();
    let old = if flags & 2 == 0 { &image[..] } else { &[][..] };
    if flags & 1 == 1 {
        let calls = save_every.max(1);
        if let Some(mut state) = state_after(budget, rest, old, piece, out_len, calls) {
            for (at, xor) in damage {
                let i = usize::from(at) % state.len();
                state[i] ^= xor;
            }
            restored_state(budget, &state, old, piece, out_len);
        }
        return;
    }
    let whole = apply(budget, rest, old, rest.len().max(1), 64 * 1024, 0);
    let pieces = apply(budget, rest, old, piece, out_len, save_every);
    let short = whole.new.len().min(pieces.new.len());
    assert!(
        whole.new[..short] == pieces.new[..short],
        "the bytes depend on the pieces"
    );
    if let (Some(a), Some(b)) = (whole.verdict, pieces.verdict) {
        assert_eq!(a, b, "the verdict depends on the pieces");
        if a.is_ok() {
            assert_eq!(whole.new, pieces.new);
        }
    }
    check_header(budget, rest, &whole);
}

/// Applies `patch` in `piece`-byte pieces into `out_len`-byte buffers, saving and restoring
/// every `save_every` calls; checks every call's contract.
fn apply(
    budget: DeltaBudget,
    patch: &[u8],
    image: &[u8],
    piece: usize,
    out_len: usize,
    save_every: usize,
) -> Outcome {
    let mut applier = PatchApplier::new(budget);
    let mut old = Checked { image };
    let mut out = vec![0u8; out_len];
    let mut state = vec![0u8; STATE_MAX];
    let mut new = Vec::new();
    let mut at = 0usize;
    let mut calls = 0usize;
    loop {
        if save_every > 0 && calls % save_every == save_every - 1 {
            applier = save_and_restore(budget, &applier, &mut state);
        }
        let end = at.saturating_add(piece).min(patch.len());
        let piece_len = end - at;
        let step = match applier.feed(&patch[at..end], &mut old, &mut out) {
            Ok(step) => step,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_eq!(applier.finish(), Err(e), "finish forgets the error");
                assert_eq!(applier.feed(&[], &mut old, &mut out), Err(e));
                return Outcome {
                    new,
                    verdict: Some(Err(e)),
                };
            }
        };
        assert!(step.consumed <= piece_len && step.produced <= out_len);
        new.extend_from_slice(&out[..step.produced]);
        at += step.consumed;
        assert_eq!(applier.patch_offset(), at as u64);
        assert_eq!(applier.produced(), new.len() as u64);
        if let Some(size) = applier.new_size() {
            assert!(new.len() as u64 <= size, "past the header's new size");
        }
        match step.stop {
            Stop::Done => {
                assert!(applier.is_done());
                assert_eq!(Some(new.len() as u64), applier.new_size());
            }
            Stop::NeedPatch => assert_eq!(step.consumed, piece_len, "stopped with bytes left"),
            Stop::OutFull => assert_eq!(step.produced, out_len),
        }
        calls += 1;
        assert!(
            calls <= 2 * (patch.len() + new.len()) + 4,
            "no progress: {calls} calls"
        );
        if new.len() >= OUTPUT_CAP {
            return Outcome { new, verdict: None };
        }
        let fed_all = at == patch.len();
        if step.stop == Stop::Done || (step.stop == Stop::NeedPatch && fed_all) {
            break;
        }
    }
    if at < patch.len() {
        // Past the end: refused (or, with heatshrink, padding consumed).
        match applier.feed(&patch[at..], &mut old, &mut out) {
            Ok(step) => assert_eq!((step.consumed, step.produced), (patch.len() - at, 0)),
            Err(e) => assert!(matches!(e, DeltaError::TrailingData { .. }), "{e:?}"),
        }
    }
    Outcome {
        new,
        verdict: Some(applier.finish()),
    }
}

/// The applier's state saved, restored into a fresh applier, and saved again unchanged.
fn save_and_restore(budget: DeltaBudget, applier: &PatchApplier, state: &mut [u8]) -> PatchApplier {
    let len = applier.save_state(state);
    assert_eq!(len, applier.state_len());
    assert!(len <= budget.clamped().state_max());
    let restored = PatchApplier::restore(budget, &state[..len]).expect("its own state restores");
    let mut again = vec![0u8; len];
    assert_eq!(restored.save_state(&mut again), len);
    assert!(
        again == state[..len],
        "a restored state saves back otherwise"
    );
    assert_eq!(restored.patch_offset(), applier.patch_offset());
    assert_eq!(restored.produced(), applier.produced());
    restored
}

/// `PatchHeader::parse` says what the applier finds in the header.
fn check_header(budget: DeltaBudget, patch: &[u8], whole: &Outcome) {
    match PatchHeader::parse(patch) {
        Ok(Some(h)) => {
            assert!(h.len <= patch.len());
            let over = h.window_bits > budget.clamped().max_window_bits;
            match whole.verdict {
                Some(Err(DeltaError::WindowOverBudget { window_bits, .. })) => {
                    assert!(over && window_bits == h.window_bits)
                }
                _ => assert!(!over, "a window over the budget was applied"),
            }
            if let Some(Ok(size)) = whole.verdict {
                assert_eq!(size, h.new_size);
            }
        }
        Ok(None) => assert!(
            matches!(whole.verdict, Some(Err(DeltaError::Truncated { .. }))),
            "a patch ending in its header was not truncated"
        ),
        Err(e) => assert_eq!(whole.verdict, Some(Err(e)), "header and applier disagree"),
    }
}

/// The state after `calls` calls of `piece` bytes into `out_len` (`None` if the patch failed).
fn state_after(
    budget: DeltaBudget,
    patch: &[u8],
    image: &[u8],
    piece: usize,
    out_len: usize,
    calls: usize,
) -> Option<Vec<u8>> {
    let mut applier = PatchApplier::new(budget);
    let mut old = Checked { image };
    let mut out = vec![0u8; out_len];
    let mut at = 0usize;
    for _ in 0..calls {
        let end = at.saturating_add(piece).min(patch.len());
        let step = applier.feed(&patch[at..end], &mut old, &mut out).ok()?;
        at += step.consumed;
        if step.stop == Stop::Done {
            break;
        }
    }
    let mut state = vec![0u8; STATE_MAX];
    let len = applier.save_state(&mut state);
    state.truncate(len);
    Some(state)
}

/// A damaged saved state: refused, or an applier that saves back the same bytes
/// and then keeps every contract on the old image.
fn restored_state(budget: DeltaBudget, state: &[u8], image: &[u8], piece: usize, out_len: usize) {
    let Some(mut applier) = PatchApplier::restore(budget, state) else {
        let mut fresh = PatchApplier::new(budget);
        assert!(!fresh.restore_in_place(state));
        assert_eq!(fresh.produced(), 0);
        return;
    };
    let mut again = vec![0u8; state.len()];
    assert_eq!(applier.save_state(&mut again), state.len());
    assert!(again == state, "a restored state saves back otherwise");
    let mut old = Checked { image };
    let mut out = vec![0u8; out_len];
    let filler: Vec<u8> = (0..piece).map(|i| (i * 151) as u8).collect();
    let start = applier.produced();
    for _ in 0..64 {
        match applier.feed(&filler, &mut old, &mut out) {
            Ok(step) => {
                assert!(step.consumed <= piece && step.produced <= out_len);
                if let Some(size) = applier.new_size() {
                    assert!(applier.produced() <= size);
                }
                if step.stop == Stop::Done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    assert!(applier.produced() >= start);
}
