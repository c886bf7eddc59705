//! Why a patch was refused: one variant per cause, so the engine can give each its own code
//! and failure report. Only numbers and static text: making or printing one never allocates.

use super::compression::Compression;

/// Which size field of the patch was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeField {
    /// The header's new-image size.
    NewSize,
    /// The data-format section's size.
    DataFormat,
    /// A diff size.
    Diff,
    /// An extra size.
    Extra,
    /// An adjustment (seek in the old image).
    Adjustment,
}

impl core::fmt::Display for SizeField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SizeField::NewSize => "new-image size",
            SizeField::DataFormat => "data-format size",
            SizeField::Diff => "diff size",
            SizeField::Extra => "extra size",
            SizeField::Adjustment => "adjustment",
        })
    }
}

/// Every reason [`PatchApplier`](super::PatchApplier) stops applying a patch. After one, the
/// applier returns the same error until it is reset: no byte it wrote in the failing call nor
/// after belongs to a valid image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The first byte does not name a sequential patch (type 0 in bits 6..4, bit 7 clear):
    /// another detools patch type (in-place 1, hdiffpatch 2) or not a detools patch at all.
    #[error("not a detools sequential patch (first byte {byte:#04x})")]
    NotSequential {
        /// The patch's first byte.
        byte: u8,
    },
    /// The header's compression number is none detools defines.
    #[error("unknown patch compression {code}")]
    UnknownCompression {
        /// The number (bits 3..0 of the first byte).
        code: u8,
    },
    /// A compression detools defines but this applier does not decode (only `none` and
    /// `heatshrink` fit a fixed memory budget; see docs/delta.md).
    #[error("patch compression {compression} is not supported (none and heatshrink are)")]
    UnsupportedCompression {
        /// The patch's compression.
        compression: Compression,
    },
    /// The heatshrink parameters are outside heatshrink's own limits: window 2^4..=2^15,
    /// lookahead at least 2^3 and smaller than the window.
    #[error("heatshrink window 2^{window_bits} with lookahead 2^{lookahead_bits} is invalid")]
    HeatshrinkParams {
        /// The window size as a power of two.
        window_bits: u8,
        /// The lookahead size as a power of two.
        lookahead_bits: u8,
    },
    /// The patch's heatshrink window is larger than the [`DeltaBudget`](super::DeltaBudget)
    /// allows.
    #[error("heatshrink window 2^{window_bits} exceeds the budget's 2^{max_window_bits}")]
    WindowOverBudget {
        /// The patch's window size as a power of two.
        window_bits: u8,
        /// The budget's largest.
        max_window_bits: u8,
    },
    /// The patch has a data-format section (`detools create_patch --data-format`, for
    /// machine code), which this applier does not apply.
    #[error("data-format patches are not supported (section of {size} bytes)")]
    DataFormat {
        /// The section's size.
        size: u64,
    },
    /// A size field is longer than ten bytes, beyond 2^63 − 1, or negative where a length is
    /// due.
    #[error("malformed {field} in the patch")]
    BadSize {
        /// Which field.
        field: SizeField,
    },
    /// A diff or extra run would take the new image past the size its header gives.
    #[error("{len} bytes at new-image offset {at} go past the new image's {new_size} bytes")]
    Oversize {
        /// Where the run starts in the new image.
        at: u64,
        /// The run's length.
        len: u64,
        /// The header's new-image size.
        new_size: u64,
    },
    /// A diff run or a seek reaches outside the old image (a patch for another image, or a
    /// hostile one).
    #[error("old-image range at {offset} of {len} bytes is outside its {old_size} bytes")]
    OldRange {
        /// Where the run or seek lands (negative: before the image; saturated).
        offset: i64,
        /// The run's length (0 for a seek).
        len: u64,
        /// The old image's size.
        old_size: u64,
    },
    /// The old image's reader failed.
    #[error("old-image read at {offset} failed (code {code})")]
    OldRead {
        /// Where the read was.
        offset: u64,
        /// The reader's code.
        code: i32,
    },
    /// The old image's reader returned another count than the bytes asked.
    #[error("old-image read at {offset} returned {got} of {wanted} bytes")]
    OldShort {
        /// Where the read was.
        offset: u64,
        /// Bytes asked.
        wanted: usize,
        /// Bytes it said it wrote.
        got: usize,
    },
    /// The patch ended before the new image was complete (or before its last adjustment).
    #[error("patch truncated: {produced} of the new image's {new_size} bytes made")]
    Truncated {
        /// New-image bytes made.
        produced: u64,
        /// The header's new-image size (0 while the header itself is incomplete).
        new_size: u64,
    },
    /// The patch goes on after its end: more compressed data (heatshrink) or any byte (none).
    #[error("data after the end of the patch at patch byte {at}")]
    TrailingData {
        /// The patch offset of the first byte past the end (with heatshrink: of the byte that
        /// completed the extra data).
        at: u64,
    },
}
