//! Delta upgrades: applying [detools](https://pypi.org/project/detools/) "sequential" patches as
//! a stream, in memory fixed when the applier is made.
//!
//! A sequential patch turns an old image (the one running) into a new one. Its layout (the
//! field table, with sources, is in `docs/delta.md`, "Format"):
//!
//! * an uncompressed header: one byte (patch type 0 in bits 6..4, compression in bits 3..0) and
//!   the new image's size as a [size field](#size-fields);
//! * for heatshrink, one byte of parameters (window and lookahead sizes);
//! * then, compressed as one stream: the data-format section's size (0: none), and until the new
//!   image is complete, repeated: a diff size and that many bytes, each added (mod 256) to the
//!   old image's next byte; an extra size and that many bytes, copied; an adjustment, a signed
//!   seek in the old image.
//!
//! # Size fields
//!
//! First byte: bit 7 "another byte follows", bit 6 "negative", bits 5..0 the lowest six bits;
//! each following byte: bit 7 "another follows", bits 6..0 the next seven bits.
//!
//! [`PatchApplier`] is fed the patch in pieces of any size and writes the new image's bytes into
//! the caller's buffer, stopping when that buffer is full or the patch piece is used up; it
//! reads the old image through [`OldImage`]. It allocates only when made ([`DeltaBudget`] sets
//! how much), never while applying. Its state can be saved between two calls and restored after
//! a restart ([`PatchApplier::save_state`], [`PatchApplier::restore`]).
//!
//! ```
//! use ota::delta::{DeltaBudget, PatchApplier, Stop};
//!
//! // A patch that makes "new" from an empty old image: header (sequential, no compression,
//! // 3 bytes), no data-format section, diff 0, extra 3 "new", adjustment 0.
//! let patch = [0x00, 0x03, 0x00, 0x00, 0x03, b'n', b'e', b'w', 0x00];
//! let mut old: &[u8] = &[];
//! let mut applier = PatchApplier::new(DeltaBudget::default());
//! let mut out = [0u8; 16];
//! let step = applier.feed(&patch, &mut old, &mut out).unwrap();
//! assert_eq!(step.stop, Stop::Done);
//! assert_eq!(&out[..step.produced], b"new");
//! assert_eq!(applier.finish(), Ok(3));
//! ```

// cbindgen reads every integer `pub const` of the crate into include/ota.h; these modules are
// Rust-only, so they are private, marked for cbindgen to skip, and re-exported below.
/// cbindgen:ignore
mod apply;
/// cbindgen:ignore
mod budget;
/// cbindgen:ignore
mod compression;
/// cbindgen:ignore
mod error;
/// cbindgen:ignore
mod header;
/// cbindgen:ignore
mod heatshrink;
/// cbindgen:ignore
mod old;
/// cbindgen:ignore
mod state;

pub use apply::{PatchApplier, Progress, Stop};
pub use budget::DeltaBudget;
pub use compression::Compression;
pub use error::{DeltaError, SizeField};
pub use header::PatchHeader;
pub use heatshrink::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};
pub use old::{read_exact, OldImage, OldImageMismatch, OldReadError};
pub use state::{SavedState, STATE_FIXED_LEN, STATE_MAX};
