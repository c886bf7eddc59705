//! The old image, as the applier reads it.

use super::DeltaError;

/// The image a patch applies to (the running one), read by offset.
pub trait OldImage {
    /// The old image's size in bytes: the applier never reads at or past it.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset..offset + buf.len()` (always inside the image) and
    /// returns how many it wrote; anything but `buf.len()` ends the patch with
    /// [`DeltaError::OldShort`], an error with [`DeltaError::OldRead`].
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError>;
}

/// Fills `buf` from `old` at `offset`, all of it: a count other than `buf.len()` is
/// [`DeltaError::OldShort`], the reader's error [`DeltaError::OldRead`]. The one place a read
/// of the old image is judged (the applier's reads, the running image's digest).
pub fn read_exact(old: &mut dyn OldImage, offset: u64, buf: &mut [u8]) -> Result<(), DeltaError> {
    match old.read(offset, buf) {
        Ok(got) if got == buf.len() => Ok(()),
        Ok(got) => Err(DeltaError::OldShort {
            offset,
            wanted: buf.len(),
            got,
        }),
        Err(e) => Err(DeltaError::OldRead {
            offset,
            code: e.code,
        }),
    }
}

/// An old-image read that failed, with the reader's own code (e.g. a C callback's return).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldReadError {
    /// The reader's code.
    pub code: i32,
}

/// How the running image differs from the old image a patch's upgrade message requires
/// (`extData`'s `_delta_old_size`, `_delta_old_sha256`; docs/delta.md): the patch is refused
/// before any new-image byte is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OldImageMismatch {
    /// The message names another size than the running image's.
    #[error("the patch is for an old image of {required} bytes, the running image has {running}")]
    Size {
        /// `_delta_old_size`.
        required: u64,
        /// [`OldImage::size`] of the delta source.
        running: u64,
    },
    /// The message names another SHA-256 than the running image's.
    #[error("the patch is for an old image whose SHA-256 is not the running image's")]
    Sha256,
}

/// An old image held in memory.
impl OldImage for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or(OldReadError { code: -1 })?;
        buf.copy_from_slice(src);
        Ok(buf.len())
    }
}
