//! The applier's memory budget.

use super::heatshrink::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use super::state::STATE_FIXED_LEN;
#[cfg(doc)]
use super::{DeltaError, OldImage, PatchApplier};

/// How much memory a [`PatchApplier`] takes, all of it allocated when it is made.
///
/// The default ([`DeltaBudget::DEFAULT`]) applies patches whose heatshrink window is up to
/// 4 KiB (`--heatshrink-window-sz2` ≤ 12; detools' default is 8) and reads the old image
/// 256 bytes at a time: 4352 bytes of heap ([`heap_bytes`](Self::heap_bytes); measured by
/// `tests/delta.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaBudget {
    /// The largest heatshrink window accepted, as a power of two (4..=15; outside, clamped):
    /// the applier keeps a window of `1 << max_window_bits` bytes. A patch with a larger window
    /// is refused with [`DeltaError::WindowOverBudget`] before any byte of the new image.
    pub max_window_bits: u8,
    /// The old-image read buffer: bytes asked of [`OldImage::read`] at most per call (≥ 1; 0 is
    /// taken as 1).
    pub old_chunk: usize,
}

impl DeltaBudget {
    /// A 4 KiB heatshrink window and 256-byte old-image reads.
    pub const DEFAULT: DeltaBudget = DeltaBudget {
        max_window_bits: 12,
        old_chunk: 256,
    };

    /// The budget as the applier uses it: `max_window_bits` within 4..=15, `old_chunk` ≥ 1.
    pub fn clamped(self) -> DeltaBudget {
        DeltaBudget {
            max_window_bits: self.max_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS),
            old_chunk: self.old_chunk.max(1),
        }
    }

    /// The heap a [`PatchApplier`] made with this budget allocates (its window and read
    /// buffer), and nothing afterwards.
    pub fn heap_bytes(self) -> usize {
        let b = self.clamped();
        (1usize << b.max_window_bits) + b.old_chunk
    }

    /// The longest state [`PatchApplier::save_state`] writes under this budget.
    pub fn state_max(self) -> usize {
        STATE_FIXED_LEN + (1usize << self.clamped().max_window_bits)
    }
}

impl Default for DeltaBudget {
    fn default() -> Self {
        DeltaBudget::DEFAULT
    }
}
