//! Resume across restarts: the breakpoint record (what is being downloaded, how far it got, and
//! the digest state) and where it is kept.
//!
//! A [`Breakpoint`] has fixed-size fields only, so building, updating, encoding and decoding it
//! never allocates. It is written through a [`BreakpointStore`] — a file ([`FileStore`], atomic
//! replace) on Linux, C callbacks over flash on an RTOS (`ffi::resume`), or memory
//! ([`MemoryStore`]) — as one [`RECORD_LEN`]-byte record protected by a CRC-32, so a torn or
//! corrupt record is detected and never trusted.
//!
//! Record layout, format version 3 (all integers little-endian). Earlier builds wrote version 1
//! (the first 520 bytes with version byte 1, then its CRC at 520) and version 2 (the first 808
//! bytes with version byte 2, then its CRC at 808); both are still read, as a single image's
//! record (the package fields 0).
//!
//! | offset | bytes | field |
//! |-------:|------:|-------|
//! |      0 |     6 | magic `OTABP1` |
//! |      6 |     1 | format version (3) |
//! |      7 |     1 | protocol (0 Aliyun, 1 SagooIOT, 2 Tencent, 3 UCloud) |
//! |      8 |     1 | state (0 downloading, 1 pending reboot, 2 pending confirm) |
//! |      9 |     1 | digest kind (0 MD5, 1 SHA-256) |
//! |     10 |    32 | expected digest (MD5: 16 bytes, then zeros) |
//! |     42 |     8 | image size |
//! |     50 |     8 | offset (bytes stored by the firmware) |
//! |     58 |     8 | URL identity (FNV-1a 64 of the URL without query and fragment) |
//! |     66 |    65 | version: length byte + 64 bytes (unused bytes zero) |
//! |    131 |    65 | module, same form (empty = `default`) |
//! |    196 |    65 | task id, same form |
//! |    261 |    65 | batch (SagooIOT `extData.strategy`), same form |
//! |    326 |    65 | pending version, same form (empty unless pending reboot) |
//! |    391 |   129 | digest state: length byte (0, 88 MD5, 104 SHA-256) + 128 bytes |
//! |    520 |   286 | image verifier state (signed images, [`crate::image`]): length `u16` (0: none) + 284 bytes |
//! |    806 |     2 | boots into the pending version without a confirmation (`u16`; 0 unless pending confirm) |
//! |    808 |     2 | file index within the package (`u16`; 0 for a single image) |
//! |    810 |     2 | files in the package (`u16`; 0: a single image, else 2 ..= [`MAX_PACKAGE_FILES`]) |
//! |    812 |     8 | package identity ([`package_identity`]; 0 for a single image) |
//! |    820 |     4 | CRC-32 (IEEE) of bytes 0..820 |
//!
//! For a package of several files the digest kind, digest, size, offset and URL identity are
//! the current file's (the one at the file index): the files before it were stored and judged
//! good before the record moved on to it. The package identity names the package without its
//! URLs, which the platform renews.
//!
//! Decoding is strict (unused bytes must be zero, a digest or image state covers exactly
//! `offset` bytes, the file index is below the file count), so a record decodes only to what
//! encodes back to exactly the same bytes (a version-1 or version-2 record decodes to one that
//! encodes as version 3).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::StreamDigest;
use crate::error::Error;
use crate::image::{ImageVerifier, STATE_MAX as IMAGE_STATE_MAX};
use crate::protocol::{DigestKind, PackageFile, Protocol, UpgradeNotice};

mod delta_tail;
pub use delta_tail::{
    decode_tail, encode_tail, read_tail, tail_max, DeltaTail, DELTA_RECORD_LEN, TAIL_MAX_ANY,
};

/// Longest version, module, task id or batch a record holds, bytes.
/// cbindgen:ignore
pub const TEXT_MAX: usize = 64;
/// Room for a serialized digest state, bytes (SHA-256 needs 104).
/// cbindgen:ignore
pub const DIGEST_STATE_MAX: usize = 128;
/// The record format this build writes (it reads this one, and versions 1 and 2).
/// cbindgen:ignore
pub const FORMAT_VERSION: u8 = 3;
/// Most files of a package a record can name.
/// cbindgen:ignore
pub const MAX_PACKAGE_FILES: usize = 16;
const MAGIC: &[u8; 6] = b"OTABP1";
const TEXT_FIELD: usize = 1 + TEXT_MAX;
/// Where version 1's CRC is, and the image state starts.
const V1_CRC_AT: usize = 7 + 3 + 32 + 3 * 8 + 5 * TEXT_FIELD + 1 + DIGEST_STATE_MAX;
const V1_LEN: usize = V1_CRC_AT + 4;
/// Where version 2's CRC is, and the package fields start.
const V2_CRC_AT: usize = V1_CRC_AT + 2 + IMAGE_STATE_MAX + 2;
const V2_LEN: usize = V2_CRC_AT + 4;
const CRC_AT: usize = V2_CRC_AT + 2 + 2 + 8;
/// Length of an encoded record, bytes (every version-3 record has exactly this length; a
/// store must hold this many).
/// cbindgen:ignore
pub const RECORD_LEN: usize = 824;
const _: () = assert!(RECORD_LEN == CRC_AT + 4);

/// What the device was doing when the record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// The image is being downloaded; `offset` bytes are stored.
    Downloading,
    /// The image is flashed and the device reboots into `pending_version`; the next
    /// version report decides success or failure.
    PendingReboot,
    /// The device runs `pending_version` and the firmware has not confirmed it yet (the
    /// confirm-after-boot flow); [`Breakpoint::boots`] counts the boots into it.
    PendingConfirm,
}

/// What the version running after a reboot says about a pending upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootOutcome {
    /// The device runs the pending version: the upgrade succeeded.
    Succeeded,
    /// The device runs another version (e.g. the bootloader rolled back): it failed.
    Failed,
}

/// Why a stored record was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The store holds nothing (0 bytes).
    #[error("no breakpoint record is stored")]
    Missing,
    /// A prefix of a record (magic and version intact, too short): a save was cut off.
    #[error("the breakpoint record is truncated (torn write)")]
    Torn,
    /// Not a valid record: wrong magic, too long, bad CRC, or a field out of range.
    #[error("the breakpoint record is corrupt (magic, length, CRC or a field is wrong)")]
    Corrupt,
    /// A record of another format version (written by another SDK build); not read.
    #[error("the breakpoint record has format version {0}, this SDK reads versions 1 to 3")]
    UnknownVersion(u8),
}

/// Why the storage under a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A file operation of [`FileStore`] failed, by kind.
    #[error("breakpoint storage I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// A firmware storage callback (`IOT_OTA_SetBreakpointStore`) returned this negative code.
    #[error("breakpoint storage callback returned {0}")]
    Callback(i32),
    /// The firmware's load callback claimed to have written this many bytes, more than the
    /// buffer it was given.
    #[error("breakpoint load callback reported {0} bytes, more than the buffer holds")]
    Overrun(i32),
    /// A record longer than the storage or load buffer can hold.
    #[error("a record of {len} bytes does not fit the {max}-byte storage")]
    TooLarge {
        /// Bytes of the record.
        len: usize,
        /// Bytes the storage (or the load buffer) holds.
        max: usize,
    },
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.kind())
    }
}

/// Why [`Breakpoint::load`] produced no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was read, but holds no usable record.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Byte-level storage for one record: a file, a flash sector, memory. Implementations must not
/// allocate in `load`/`save`/`erase` (the engine calls them after init).
pub trait BreakpointStore: Send {
    /// Reads the stored record into `buf` (at most `buf.len()` bytes); returns its length,
    /// 0 when nothing is stored.
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError>;
    /// Replaces the stored record with `bytes`. Should be atomic where the medium allows; a torn
    /// write is tolerated (the CRC rejects it) but loses the record.
    fn save(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
    /// Removes the stored record; nothing stored is not an error.
    fn erase(&mut self) -> Result<(), StoreError>;
}

/// A short text field of a record (no heap).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Text {
    bytes: [u8; TEXT_MAX],
    len: u8,
}

impl Text {
    const EMPTY: Text = Text {
        bytes: [0; TEXT_MAX],
        len: 0,
    };

    fn new(what: &'static str, s: &str) -> Result<Text, Error> {
        if s.len() > TEXT_MAX {
            return Err(Error::TooLong {
                what,
                len: s.len(),
                max: TEXT_MAX,
            });
        }
        let mut t = Text::EMPTY;
        t.bytes[..s.len()].copy_from_slice(s.as_bytes());
        t.len = s.len() as u8;
        Ok(t)
    }

    fn as_str(&self) -> &str {
        // Only ever built from &str, or decoded and checked as UTF-8.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// How far an upgrade got, enough to resume it after a restart (or, once flashed, to judge the
/// reboot). Fixed size, no heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakpoint {
    protocol: Protocol,
    state: RecordState,
    digest_kind: DigestKind,
    digest: [u8; 32],
    size: u64,
    offset: u64,
    url_identity: u64,
    version: Text,
    module: Text,
    task_id: Text,
    batch: Text,
    pending_version: Text,
    digest_state: [u8; DIGEST_STATE_MAX],
    digest_state_len: u8,
    image_state: [u8; IMAGE_STATE_MAX],
    image_state_len: u16,
    boots: u16,
    /// The current file of a package (0 for a single image).
    file_index: u16,
    /// Files of the package; 0 for a single image.
    file_count: u16,
    /// [`package_identity`] of the package's files; 0 for a single image.
    package_identity: u64,
}

impl Breakpoint {
    /// A record for the start (offset 0, no digest state) of the upgrade `notice` announces;
    /// for a package of several files, the start of its first file.
    ///
    /// Errors: [`Error::TooLong`] when the version, module, task id or batch exceeds
    /// [`TEXT_MAX`] bytes (nothing is truncated); [`Error::InvalidParam`] for a size of 0 or an
    /// empty version, or a package of more than [`MAX_PACKAGE_FILES`] files.
    pub fn for_upgrade(protocol: Protocol, notice: &UpgradeNotice) -> Result<Breakpoint, Error> {
        if notice.size == 0 || notice.version.is_empty() {
            return Err(Error::InvalidParam(
                "breakpoint: image size 0 or empty version",
            ));
        }
        let mut digest = [0u8; 32];
        digest[..notice.digest_kind.len()].copy_from_slice(notice.digest());
        let mut bp = Breakpoint {
            protocol,
            state: RecordState::Downloading,
            digest_kind: notice.digest_kind,
            digest,
            size: notice.size,
            offset: 0,
            url_identity: url_identity(notice.url.as_str()),
            version: Text::new("breakpoint version", notice.version.as_str())?,
            module: Text::new("breakpoint module", notice.module.as_str())?,
            task_id: Text::new("breakpoint task id", notice.task_id.as_str())?,
            batch: Text::new("breakpoint batch", notice.batch.as_str())?,
            pending_version: Text::EMPTY,
            digest_state: [0; DIGEST_STATE_MAX],
            digest_state_len: 0,
            image_state: [0; IMAGE_STATE_MAX],
            image_state_len: 0,
            boots: 0,
            file_index: 0,
            file_count: 0,
            package_identity: 0,
        };
        if notice.is_package() {
            let files = notice.files.as_slice();
            if files.len() > MAX_PACKAGE_FILES {
                return Err(Error::InvalidParam(
                    "breakpoint: more files than a record names",
                ));
            }
            bp.file_count = files.len() as u16;
            bp.package_identity = package_identity(files);
            bp.point_at_file(0, &files[0])?;
        }
        Ok(bp)
    }

    /// Moves a package's record to the start of file `index` of `notice` (the files before it
    /// are stored and judged good): that file's size, digest and URL, offset 0, no digest or
    /// image state.
    ///
    /// Errors: [`Error::InvalidState`] once pending reboot, or for a single image's record;
    /// [`Error::InvalidParam`] when `notice` is another package (version, module or
    /// [`package_identity`]) or `index` is past its last file. On error the record is
    /// unchanged.
    pub fn start_file(&mut self, notice: &UpgradeNotice, index: usize) -> Result<(), Error> {
        if self.state != RecordState::Downloading {
            return Err(Error::InvalidState(
                "breakpoint: upgrade already pending reboot",
            ));
        }
        if self.file_count == 0 {
            return Err(Error::InvalidState(
                "breakpoint: the record is a single image's",
            ));
        }
        if !self.same_package(notice) {
            return Err(Error::InvalidParam("breakpoint: another package"));
        }
        let file = notice.files.get(index).ok_or(Error::InvalidParam(
            "breakpoint: no such file in the package",
        ))?;
        self.point_at_file(index, file)
    }

    /// The current file becomes `file`, at `index`, from its first byte.
    fn point_at_file(&mut self, index: usize, file: &PackageFile) -> Result<(), Error> {
        if file.size == 0 {
            return Err(Error::InvalidParam("breakpoint: file size 0"));
        }
        let mut digest = [0u8; 32];
        digest[..file.digest_kind.len()].copy_from_slice(file.digest());
        self.file_index = index as u16;
        self.digest_kind = file.digest_kind;
        self.digest = digest;
        self.size = file.size;
        self.offset = 0;
        self.url_identity = url_identity(file.url.as_str());
        self.digest_state = [0; DIGEST_STATE_MAX];
        self.digest_state_len = 0;
        self.image_state = [0; IMAGE_STATE_MAX];
        self.image_state_len = 0;
        Ok(())
    }

    /// Records that `offset` bytes are stored, with the digest over them when given (`None`:
    /// the firmware will re-feed its bytes with `IOT_OTA_UpdateClientMd5` instead), and the
    /// image verifier's state over them when given (a signed image's checks then resume too).
    ///
    /// Errors: [`Error::InvalidParam`] when `offset` exceeds the size, or the digest is of
    /// another kind, or the digest or the verifier has not absorbed exactly `offset` bytes;
    /// [`Error::InvalidState`] once the record is pending reboot. On error the record is
    /// unchanged.
    pub fn set_progress(
        &mut self,
        offset: u64,
        digest: Option<&StreamDigest>,
        image: Option<&ImageVerifier>,
    ) -> Result<(), Error> {
        if self.state != RecordState::Downloading {
            return Err(Error::InvalidState(
                "breakpoint: upgrade already pending reboot",
            ));
        }
        if offset > self.size {
            return Err(Error::InvalidParam(
                "breakpoint: offset beyond the image size",
            ));
        }
        let mut state = [0u8; DIGEST_STATE_MAX];
        let len = match digest {
            Some(d) if d.kind() != self.digest_kind => {
                return Err(Error::InvalidParam("breakpoint: digest of another kind"))
            }
            Some(d) => d.save_state(&mut state),
            None => 0,
        };
        if len != 0 && StreamDigest::state_bytes(self.digest_kind, &state[..len]) != Some(offset) {
            return Err(Error::InvalidParam(
                "breakpoint: the digest does not cover exactly offset bytes",
            ));
        }
        let mut image_state = [0u8; IMAGE_STATE_MAX];
        let image_len = match image {
            Some(v) if v.received() != offset => {
                return Err(Error::InvalidParam(
                    "breakpoint: the image verifier does not cover exactly offset bytes",
                ))
            }
            Some(v) => v.save_state(&mut image_state),
            None => 0,
        };
        self.offset = offset;
        self.digest_state = state;
        self.digest_state_len = len as u8;
        self.image_state = image_state;
        self.image_state_len = image_len as u16;
        Ok(())
    }

    /// The image verifier over the first [`offset`](Self::offset) bytes, when the record
    /// holds its state.
    pub fn restore_image(&self) -> Option<ImageVerifier> {
        if self.image_state_len == 0 {
            return None;
        }
        ImageVerifier::restore(self.image_state())
    }

    /// The serialized image verifier state (empty when none was recorded).
    pub fn image_state(&self) -> &[u8] {
        &self.image_state[..self.image_state_len as usize]
    }

    /// Marks the image as flashed: the device reboots into `version`. The digest state is
    /// dropped (nothing is resumed any more).
    ///
    /// Errors: [`Error::TooLong`] beyond [`TEXT_MAX`] bytes, [`Error::InvalidParam`] for an empty
    /// version; the record is then unchanged.
    pub fn set_pending_reboot(&mut self, version: &str) -> Result<(), Error> {
        if version.is_empty() {
            return Err(Error::InvalidParam("breakpoint: pending version is empty"));
        }
        self.pending_version = Text::new("breakpoint pending version", version)?;
        self.state = RecordState::PendingReboot;
        self.digest_state = [0; DIGEST_STATE_MAX];
        self.digest_state_len = 0;
        self.image_state = [0; IMAGE_STATE_MAX];
        self.image_state_len = 0;
        Ok(())
    }

    /// The device booted the pending version, which now waits for the firmware's confirmation:
    /// counts this boot (the first). [`Error::InvalidState`] unless pending reboot.
    pub fn set_pending_confirm(&mut self) -> Result<(), Error> {
        if self.state != RecordState::PendingReboot {
            return Err(Error::InvalidState("breakpoint: not pending reboot"));
        }
        self.state = RecordState::PendingConfirm;
        self.boots = 1;
        Ok(())
    }

    /// Counts one more boot into the unconfirmed version (saturating). [`Error::InvalidState`]
    /// unless pending confirm.
    pub fn count_boot(&mut self) -> Result<(), Error> {
        if self.state != RecordState::PendingConfirm {
            return Err(Error::InvalidState("breakpoint: not pending confirm"));
        }
        self.boots = self.boots.saturating_add(1);
        Ok(())
    }

    /// Boots into the pending version without a confirmation (0 unless pending confirm).
    pub fn boots(&self) -> u16 {
        self.boots
    }

    /// Whether `notice` announces the image this record is about: same version and module
    /// (empty ≡ `default`), and for a single image the same size, digest kind and digest; for a
    /// package the same files ([`package_identity`]), of which the current one has the
    /// recorded size and digest. The URLs may differ (renewed pre-signed URLs); the protocol is
    /// the caller's to compare ([`protocol`](Self::protocol)).
    pub fn matches(&self, notice: &UpgradeNotice) -> bool {
        if self.file_count != 0 {
            return self.same_package(notice)
                && notice.files.get(self.file_index()).is_some_and(|f| {
                    f.size == self.size
                        && f.digest_kind == self.digest_kind
                        && f.digest() == self.digest()
                });
        }
        self.same_upgrade(notice)
            && !notice.is_package()
            && self.size == notice.size
            && self.digest_kind == notice.digest_kind
            && self.digest() == notice.digest()
    }

    /// Same version and module.
    fn same_upgrade(&self, notice: &UpgradeNotice) -> bool {
        self.version.as_str() == notice.version.as_str()
            && self.module_name() == notice.module_name()
    }

    /// `notice` is the package this record is about: same version, module, file count and
    /// package identity.
    fn same_package(&self, notice: &UpgradeNotice) -> bool {
        self.same_upgrade(notice)
            && notice.is_package()
            && notice.files.len() == usize::from(self.file_count)
            && package_identity(notice.files.as_slice()) == self.package_identity
    }

    /// After a reboot: what running `version` means for a pending upgrade; `None` when the
    /// record is not pending reboot.
    pub fn reboot_outcome(&self, running_version: &str) -> Option<RebootOutcome> {
        match self.state {
            RecordState::Downloading => None,
            RecordState::PendingReboot | RecordState::PendingConfirm
                if running_version == self.pending_version.as_str() =>
            {
                Some(RebootOutcome::Succeeded)
            }
            RecordState::PendingReboot | RecordState::PendingConfirm => Some(RebootOutcome::Failed),
        }
    }

    /// Rebuilds the upgrade into a notice allocated at init, for the reports that follow a
    /// reboot (UCloud needs the task id, SagooIOT the batch). The URL is not recorded, so `url`
    /// is left empty; `ext_data`, `current_version` and `message_id` are cleared. Of a package
    /// only the current file's size and digest are recorded: the notice holds those, and no
    /// files.
    ///
    /// Errors: [`Error::TooLong`] when a field exceeds the notice's capacity (the notice may
    /// then be partly written).
    pub fn fill_notice(&self, notice: &mut UpgradeNotice) -> Result<(), Error> {
        notice.clear();
        for (what, dst, src) in [
            ("version", &mut notice.version, &self.version),
            ("module", &mut notice.module, &self.module),
            ("task id", &mut notice.task_id, &self.task_id),
            ("batch", &mut notice.batch, &self.batch),
        ] {
            dst.set(src.as_str()).map_err(|t| Error::TooLong {
                what,
                len: t.len,
                max: t.max,
            })?;
        }
        notice.size = self.size;
        notice.digest_kind = self.digest_kind;
        notice.digest = self.digest;
        Ok(())
    }

    /// The digest over the first [`offset`](Self::offset) bytes, when the record holds its
    /// state.
    pub fn restore_digest(&self) -> Option<StreamDigest> {
        if self.digest_state_len == 0 {
            return None;
        }
        StreamDigest::restore(self.digest_kind, self.digest_state())
    }

    /// The platform whose upgrade this is.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Downloading, or flashed and pending reboot.
    pub fn state(&self) -> RecordState {
        self.state
    }

    /// The algorithm of [`digest`](Self::digest) and of the saved digest state.
    pub fn digest_kind(&self) -> DigestKind {
        self.digest_kind
    }

    /// The expected digest (16 or 32 bytes).
    pub fn digest(&self) -> &[u8] {
        &self.digest[..self.digest_kind.len()]
    }

    /// The image size in bytes, as announced (never 0); the current file's for a package.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the firmware had stored when the record was written (of the current file, for a
    /// package).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the record is a package's (then size, digest and offset are its current
    /// file's).
    pub fn is_package(&self) -> bool {
        self.file_count != 0
    }

    /// The package's current file, from 0 (0 for a single image).
    pub fn file_index(&self) -> usize {
        usize::from(self.file_index)
    }

    /// Files of the package; 0 for a single image.
    pub fn file_count(&self) -> usize {
        usize::from(self.file_count)
    }

    /// [`package_identity`] of the package's files; 0 for a single image.
    pub fn package_identity(&self) -> u64 {
        self.package_identity
    }

    /// FNV-1a 64 of the URL without its query and fragment (see [`url_identity`]); informative.
    pub fn url_identity(&self) -> u64 {
        self.url_identity
    }

    /// The version the upgrade installs (never empty).
    pub fn version(&self) -> &str {
        self.version.as_str()
    }

    /// The module as announced; empty means `default`.
    pub fn module(&self) -> &str {
        self.module.as_str()
    }

    /// The module name, `default` when none was announced.
    pub fn module_name(&self) -> &str {
        match self.module.as_str() {
            "" => "default",
            m => m,
        }
    }

    /// The platform's task id (UCloud); empty where the protocol has none.
    pub fn task_id(&self) -> &str {
        self.task_id.as_str()
    }

    /// The batch id echoed in progress reports (SagooIOT `extData.strategy`); may be empty.
    pub fn batch(&self) -> &str {
        self.batch.as_str()
    }

    /// The version the device reboots into, when pending reboot.
    pub fn pending_version(&self) -> Option<&str> {
        (self.state != RecordState::Downloading).then(|| self.pending_version.as_str())
    }

    /// The serialized digest state (empty when none was recorded).
    pub fn digest_state(&self) -> &[u8] {
        &self.digest_state[..self.digest_state_len as usize]
    }

    /// Writes the record into `out`; returns [`RECORD_LEN`].
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) -> usize {
        let mut w = Writer { out, pos: 0 };
        w.put(MAGIC);
        w.put(&[
            FORMAT_VERSION,
            self.protocol.id(),
            state_id(self.state),
            kind_id(self.digest_kind),
        ]);
        w.put(&self.digest);
        for v in [self.size, self.offset, self.url_identity] {
            w.put(&v.to_le_bytes());
        }
        for t in self.texts() {
            w.put(&[t.len]);
            w.put(&t.bytes);
        }
        w.put(&[self.digest_state_len]);
        w.put(&self.digest_state);
        w.put(&self.image_state_len.to_le_bytes());
        w.put(&self.image_state);
        w.put(&self.boots.to_le_bytes());
        w.put(&self.file_index.to_le_bytes());
        w.put(&self.file_count.to_le_bytes());
        w.put(&self.package_identity.to_le_bytes());
        let crc = crc32(&w.out[..CRC_AT]);
        w.put(&crc.to_le_bytes());
        debug_assert_eq!(w.pos, RECORD_LEN);
        RECORD_LEN
    }

    /// Reads a record written by [`encode`](Self::encode). Empty input is
    /// [`RecordError::Missing`]; a prefix of a record is [`RecordError::Torn`]; a newer format is
    /// [`RecordError::UnknownVersion`]; anything else that is not exactly a valid record
    /// (magic, length, CRC, a value out of range, offset beyond size, non-zero padding, a
    /// digest state over another number of bytes than `offset`) is
    /// [`RecordError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Breakpoint, RecordError> {
        let version = check_frame(bytes)?;
        let mut r = Reader { bytes, pos: 7 };
        let protocol = Protocol::from_id(r.byte()).ok_or(RecordError::Corrupt)?;
        let state = state_from_id(r.byte())?;
        let digest_kind = kind_from_id(r.byte())?;
        let digest = r.array::<32>();
        let (size, offset, url_identity) = (r.u64(), r.u64(), r.u64());
        let bp = Breakpoint {
            protocol,
            state,
            digest_kind,
            digest,
            size,
            offset,
            url_identity,
            version: r.text()?,
            module: r.text()?,
            task_id: r.text()?,
            batch: r.text()?,
            pending_version: r.text()?,
            digest_state_len: r.byte(),
            digest_state: r.array::<DIGEST_STATE_MAX>(),
            image_state_len: if version == 1 {
                0
            } else {
                u16::from_le_bytes(r.array())
            },
            image_state: if version == 1 {
                [0; IMAGE_STATE_MAX]
            } else {
                r.array::<IMAGE_STATE_MAX>()
            },
            boots: if version == 1 {
                0
            } else {
                u16::from_le_bytes(r.array())
            },
            // Earlier formats recorded single images only.
            file_index: if version < 3 {
                0
            } else {
                u16::from_le_bytes(r.array())
            },
            file_count: if version < 3 {
                0
            } else {
                u16::from_le_bytes(r.array())
            },
            package_identity: if version < 3 { 0 } else { r.u64() },
        };
        bp.check().map(|()| bp)
    }

    /// Encodes the record and saves it through `store` (no allocation).
    pub fn save(&self, store: &mut dyn BreakpointStore) -> Result<(), StoreError> {
        let mut buf = [0u8; RECORD_LEN];
        let n = self.encode(&mut buf);
        store.save(&buf[..n])
    }

    /// Loads and decodes the record in `store` (no allocation).
    pub fn load(store: &mut dyn BreakpointStore) -> Result<Breakpoint, LoadError> {
        // One byte more than a record, so an overlong record is seen as such.
        let mut buf = [0u8; RECORD_LEN + 1];
        let n = stored_len(store, &mut buf)?;
        Ok(Breakpoint::decode(&buf[..n])?)
    }

    /// Loads a record that may carry a delta tail ([`DeltaTail`]) into `buf` (at least
    /// [`RECORD_LEN`] + [`TAIL_MAX_ANY`] + 1 bytes to hold any): the record, and the tail's
    /// bytes `buf[RECORD_LEN..end]` (empty without one). A tail is accepted only when its
    /// frame and CRC hold and its states could be restored by some budget; the session checks
    /// it against its own budget before resuming from it.
    pub fn load_with_tail(
        store: &mut dyn BreakpointStore,
        buf: &mut [u8],
    ) -> Result<(Breakpoint, usize), LoadError> {
        let n = stored_len(store, buf)?;
        let bytes = &buf[..n];
        let tailed = n > RECORD_LEN && bytes.get(MAGIC.len()) == Some(&FORMAT_VERSION);
        if !tailed {
            return Ok((Breakpoint::decode(bytes)?, n));
        }
        let (base, tail) = bytes.split_at(RECORD_LEN);
        let bp = Breakpoint::decode(base)?;
        let any = crate::delta::DeltaBudget {
            max_window_bits: crate::delta::MAX_WINDOW_BITS,
            old_chunk: 1,
        };
        let ok = bp.state == RecordState::Downloading
            && bp.image_state_len == 0
            && decode_tail(base, tail, bp.offset, any).is_ok();
        if !ok {
            return Err(RecordError::Corrupt.into());
        }
        Ok((bp, n))
    }

    fn texts(&self) -> [&Text; 5] {
        [
            &self.version,
            &self.module,
            &self.task_id,
            &self.batch,
            &self.pending_version,
        ]
    }

    /// The invariants `decode` enforces beyond the frame.
    fn check(&self) -> Result<(), RecordError> {
        let kind_len = self.digest_kind.len();
        let state_len = self.digest_state_len as usize;
        let image_len = self.image_state_len as usize;
        let image_ok = image_len <= IMAGE_STATE_MAX
            && zeros(&self.image_state[image_len.min(IMAGE_STATE_MAX)..])
            && (image_len == 0
                || (self.state == RecordState::Downloading
                    && ImageVerifier::restore(self.image_state())
                        .is_some_and(|v| v.received() == self.offset)));
        let pending_ok = match self.state {
            RecordState::Downloading => self.pending_version.len == 0,
            RecordState::PendingReboot => {
                self.pending_version.len != 0 && state_len == 0 && self.boots == 0
            }
            RecordState::PendingConfirm => {
                self.pending_version.len != 0 && state_len == 0 && self.boots != 0
            }
        };
        let boots_ok = self.state == RecordState::PendingConfirm || self.boots == 0;
        let package_ok = match usize::from(self.file_count) {
            0 => self.file_index == 0 && self.package_identity == 0,
            // A package has at least two files (one file is announced as a single image).
            n => (2..=MAX_PACKAGE_FILES).contains(&n) && self.file_index < self.file_count,
        };
        let ok = pending_ok
            && boots_ok
            && package_ok
            && image_ok
            && self.size != 0
            && self.offset <= self.size
            && !self.version.as_str().is_empty()
            && zeros(&self.digest[kind_len..])
            && (state_len == 0 || state_len == StreamDigest::state_len(self.digest_kind))
            && (state_len == 0
                || StreamDigest::state_bytes(self.digest_kind, self.digest_state())
                    == Some(self.offset))
            && zeros(&self.digest_state[state_len.min(DIGEST_STATE_MAX)..]);
        if ok {
            Ok(())
        } else {
            Err(RecordError::Corrupt)
        }
    }
}

/// Reads the store into `buf`; the length read, refused when the store has more than `buf`
/// holds.
fn stored_len(store: &mut dyn BreakpointStore, buf: &mut [u8]) -> Result<usize, LoadError> {
    let n = store.load(buf)?;
    if n > buf.len() {
        return Err(StoreError::TooLarge {
            len: n,
            max: buf.len(),
        }
        .into());
    }
    Ok(n)
}

/// Magic, format version, length and CRC; the format version.
fn check_frame(bytes: &[u8]) -> Result<u8, RecordError> {
    if bytes.is_empty() {
        return Err(RecordError::Missing);
    }
    let head = bytes.len().min(MAGIC.len());
    if bytes[..head] != MAGIC[..head] {
        return Err(RecordError::Corrupt);
    }
    let (version, len) = match bytes.get(MAGIC.len()) {
        None => return Err(RecordError::Torn),
        Some(&1) => (1, V1_LEN),
        Some(&2) => (2, V2_LEN),
        Some(&FORMAT_VERSION) => (FORMAT_VERSION, RECORD_LEN),
        Some(&v) => return Err(RecordError::UnknownVersion(v)),
    };
    if bytes.len() < len {
        return Err(RecordError::Torn);
    }
    if bytes.len() > len {
        return Err(RecordError::Corrupt);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[len - 4..]);
    if crc32(&bytes[..len - 4]) != u32::from_le_bytes(crc) {
        return Err(RecordError::Corrupt);
    }
    Ok(version)
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

struct Writer<'a> {
    out: &'a mut [u8; RECORD_LEN],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

/// Reads fields of a frame already checked to be [`RECORD_LEN`] bytes long.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        a
    }

    fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    fn text(&mut self) -> Result<Text, RecordError> {
        let len = self.byte();
        let bytes = self.array::<TEXT_MAX>();
        let n = len as usize;
        let valid = n <= TEXT_MAX && std::str::from_utf8(&bytes[..n]).is_ok() && zeros(&bytes[n..]);
        if valid {
            Ok(Text { bytes, len })
        } else {
            Err(RecordError::Corrupt)
        }
    }
}

fn state_id(s: RecordState) -> u8 {
    match s {
        RecordState::Downloading => 0,
        RecordState::PendingReboot => 1,
        RecordState::PendingConfirm => 2,
    }
}

fn state_from_id(id: u8) -> Result<RecordState, RecordError> {
    match id {
        0 => Ok(RecordState::Downloading),
        1 => Ok(RecordState::PendingReboot),
        2 => Ok(RecordState::PendingConfirm),
        _ => Err(RecordError::Corrupt),
    }
}

fn kind_id(k: DigestKind) -> u8 {
    match k {
        DigestKind::Md5 => 0,
        DigestKind::Sha256 => 1,
    }
}

fn kind_from_id(id: u8) -> Result<DigestKind, RecordError> {
    match id {
        0 => Ok(DigestKind::Md5),
        1 => Ok(DigestKind::Sha256),
        _ => Err(RecordError::Corrupt),
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib/PNG): bitwise, no table.
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc32_continue(!0, bytes)
}

/// The CRC-32 register after `bytes`, from `crc` (start with `!0`, invert at the end).
fn crc32_continue(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = crc;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    crc
}

/// The identity of a download URL: FNV-1a 64 of the URL up to its query (`?`) or fragment
/// (`#`), which a renewed pre-signed URL changes. FNV rather than std's hasher because the value
/// is persisted and must not change between builds.
pub fn url_identity(url: &str) -> u64 {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    fnv1a(FNV_OFFSET_BASIS, &url.as_bytes()[..end])
}

/// The identity of a package: FNV-1a 64 over each file in order — its name's length (`u64`)
/// and bytes, its size (`u64`), its digest kind (the record's id) and its digest — so a file
/// renamed, resized, re-signed, added, dropped or moved makes another package. The URLs are
/// left out: the platform renews them when it sends the same package again.
pub fn package_identity(files: &[PackageFile]) -> u64 {
    files.iter().fold(FNV_OFFSET_BASIS, |h, f| {
        let h = fnv1a(h, &(f.name.len() as u64).to_le_bytes());
        let h = fnv1a(h, f.name.as_bytes());
        let h = fnv1a(h, &f.size.to_le_bytes());
        let h = fnv1a(h, &[kind_id(f.digest_kind)]);
        fnv1a(h, f.digest())
    })
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `bytes`, continuing from `h`.
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// When to write the record while downloading: after `every_bytes` bytes or `every_percent`
/// percent of the image since the last save, whichever comes first (0 disables that
/// threshold; both 0 disables saving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavePolicy {
    /// Bytes downloaded since the last save that trigger the next one (0: no byte threshold).
    pub every_bytes: u64,
    /// 0..=100 (larger values act as 100).
    pub every_percent: u8,
}

impl Default for SavePolicy {
    /// Every 64 KiB or 10 %, whichever comes first: at most about one flash write per 64 KiB.
    fn default() -> Self {
        SavePolicy {
            every_bytes: 64 * 1024,
            every_percent: 10,
        }
    }
}

impl SavePolicy {
    /// Never save.
    pub const DISABLED: SavePolicy = SavePolicy {
        every_bytes: 0,
        every_percent: 0,
    };

    /// Whether either threshold is set, i.e. records are written at all.
    pub fn is_enabled(&self) -> bool {
        self.every_bytes != 0 || self.every_percent != 0
    }

    /// Whether the record should be written now that `offset` of `size` bytes are stored and
    /// the last save recorded `last_saved_offset`. Also true when the download completes
    /// (`offset == size`) and when the offset went back (the stored record is ahead of the
    /// data and must be corrected); false when nothing changed or saving is disabled.
    pub fn due(&self, last_saved_offset: u64, offset: u64, size: u64) -> bool {
        if !self.is_enabled() || offset == last_saved_offset {
            return false;
        }
        if offset < last_saved_offset || offset == size {
            return true;
        }
        let done = offset - last_saved_offset;
        let by_bytes = self.every_bytes != 0 && done >= self.every_bytes;
        let percent = self.every_percent.min(100) as u128;
        let by_percent = percent != 0 && done as u128 * 100 >= percent * size as u128;
        by_bytes || by_percent
    }
}

/// The default store on Linux: one file, replaced atomically (write `path.tmp`, fsync, rename
/// over `path`, fsync the directory), so a power cut leaves the old record or the new one.
///
/// Allocation: the paths are built in [`new`](Self::new). Each system call in `save`/`load`/
/// `erase` passes a path to the OS; std copies it to a NUL-terminated string on the stack when
/// it is shorter than 384 bytes, and on the heap otherwise — so keep the path short (the
/// save interval bounds how often a long one would allocate).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    tmp_path: PathBuf,
    dir: PathBuf,
}

impl FileStore {
    /// A store whose record lives at `path` (and `path.tmp` during a save); nothing is touched
    /// on disk until the first save, load or erase.
    pub fn new(path: impl AsRef<Path>) -> FileStore {
        let path = path.as_ref().to_path_buf();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        FileStore {
            path,
            tmp_path: PathBuf::from(tmp),
            dir,
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a save writes before the rename.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl BreakpointStore for FileStore {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut tmp = File::create(&self.tmp_path)?;
        tmp.write_all(bytes)?;
        tmp.sync_all()?;
        drop(tmp);
        std::fs::rename(&self.tmp_path, &self.path)?;
        self.sync_dir()
    }

    fn erase(&mut self) -> Result<(), StoreError> {
        for p in [&self.path, &self.tmp_path] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        self.sync_dir()
    }
}

/// A store in a fixed buffer: for tests, and for devices that keep the record in RAM that
/// survives a warm reset.
#[derive(Clone)]
pub struct MemoryStore {
    buf: [u8; DELTA_RECORD_LEN],
    len: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            buf: [0; DELTA_RECORD_LEN],
            len: 0,
        }
    }
}

impl MemoryStore {
    /// What is stored.
    pub fn contents(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Simulates a torn write: keeps only the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Simulates a bit error at `index` (ignored past the end).
    pub fn flip(&mut self, index: usize, mask: u8) {
        if index < self.len {
            self.buf[index] ^= mask;
        }
    }
}

impl BreakpointStore for MemoryStore {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let n = self.len.min(buf.len());
        buf[..n].copy_from_slice(&self.buf[..n]);
        Ok(n)
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let dst = self
            .buf
            .get_mut(..bytes.len())
            .ok_or(StoreError::TooLarge {
                len: bytes.len(),
                max: DELTA_RECORD_LEN,
            })?;
        dst.copy_from_slice(bytes);
        self.len = bytes.len();
        Ok(())
    }

    fn erase(&mut self) -> Result<(), StoreError> {
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;

    type Edit<T> = fn(&mut T);

    fn notice(kind: DigestKind) -> UpgradeNotice {
        let mut n = UpgradeNotice::new(&Limits::default());
        n.version.set("2.1.0").unwrap();
        n.url
            .set("https://bucket.example.com/fw/app-2.1.0.bin?Expires=1&Signature=abc")
            .unwrap();
        n.module.set("MCU").unwrap();
        n.task_id.set("task-42").unwrap();
        n.batch.set("batch-7").unwrap();
        n.size = 300_000;
        n.digest_kind = kind;
        for (i, b) in n.digest[..kind.len()].iter_mut().enumerate() {
            *b = i as u8 * 7 + 1;
        }
        n
    }

    /// A mid-download record with a digest state.
    fn sample(kind: DigestKind) -> Breakpoint {
        let mut bp = Breakpoint::for_upgrade(Protocol::Ucloud, &notice(kind)).unwrap();
        let mut d = StreamDigest::new(kind);
        d.update(&[0x5a; 1000]);
        bp.set_progress(1000, Some(&d), None).unwrap();
        bp
    }

    fn encoded(bp: &Breakpoint) -> [u8; RECORD_LEN] {
        let mut buf = [0u8; RECORD_LEN];
        assert_eq!(bp.encode(&mut buf), RECORD_LEN);
        buf
    }

    /// The version-1 form of `bp` (no image state), as earlier builds wrote it.
    fn encoded_v1(bp: &Breakpoint) -> Vec<u8> {
        let v2 = encoded(bp);
        let mut v1 = v2[..V1_CRC_AT].to_vec();
        v1[6] = 1;
        let crc = crc32(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        v1
    }

    #[test]
    fn a_version_1_record_of_an_earlier_build_is_still_read() {
        let bp = sample(DigestKind::Md5);
        let v1 = encoded_v1(&bp);
        assert_eq!(v1.len(), V1_LEN);
        assert_eq!(Breakpoint::decode(&v1), Ok(bp.clone()));
        assert_eq!(
            Breakpoint::decode(&v1[..V1_LEN - 1]),
            Err(RecordError::Torn)
        );
        let mut long = v1.clone();
        long.push(0);
        assert_eq!(Breakpoint::decode(&long), Err(RecordError::Corrupt));
        // It is written back as version 3.
        assert_eq!(
            encoded(&Breakpoint::decode(&v1).unwrap())[6],
            FORMAT_VERSION
        );
    }

    /// The version-2 form of a single image's `bp` (no package fields), as earlier builds
    /// wrote it.
    fn encoded_v2(bp: &Breakpoint) -> Vec<u8> {
        let v3 = encoded(bp);
        let mut v2 = v3[..V2_CRC_AT].to_vec();
        v2[6] = 2;
        let crc = crc32(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        v2
    }

    #[test]
    fn a_version_2_record_of_an_earlier_build_is_still_read() {
        let bp = sample(DigestKind::Sha256);
        let v2 = encoded_v2(&bp);
        assert_eq!(v2.len(), V2_LEN);
        assert_eq!(Breakpoint::decode(&v2), Ok(bp.clone()));
        let back = Breakpoint::decode(&v2).unwrap();
        assert!(!back.is_package());
        assert_eq!((back.file_index(), back.file_count()), (0, 0));
        assert!(back.matches(&notice(DigestKind::Sha256)));
        assert_eq!(
            Breakpoint::decode(&v2[..V2_LEN - 1]),
            Err(RecordError::Torn)
        );
        let mut long = v2.clone();
        long.push(0);
        assert_eq!(Breakpoint::decode(&long), Err(RecordError::Corrupt));
        let mut flipped = v2.clone();
        flipped[700] ^= 1;
        assert_eq!(Breakpoint::decode(&flipped), Err(RecordError::Corrupt));
        // It is written back as version 3, with empty package fields.
        let again = encoded(&back);
        assert_eq!(again[6], FORMAT_VERSION);
        assert_eq!(again[7..V2_CRC_AT], v2[7..V2_CRC_AT]);
        assert_eq!(again[V2_CRC_AT..CRC_AT], [0; 12]);
        // A version-3 record cut to version 2's length is a torn version 3, not a version 2.
        assert_eq!(Breakpoint::decode(&again[..V2_LEN]), Err(RecordError::Torn));
    }

    /// A file of a package message: name, URL, size, MD5 hex.
    type FileJson = (String, String, u64, String);

    fn package_limits() -> Limits {
        Limits {
            max_files: 4,
            ..Limits::default()
        }
    }

    /// A package of three files as Aliyun announces it; `edit` changes the file list's JSON.
    fn package_notice_with(edit: impl Fn(&mut Vec<FileJson>)) -> UpgradeNotice {
        let mut files = vec![
            (
                "app.bin".to_string(),
                "https://h/app.bin?Expires=1".to_string(),
                30_000,
                "00112233445566778899aabbccddeeff".to_string(),
            ),
            (
                "mcu.bin".to_string(),
                "https://h/mcu.bin?Expires=1".to_string(),
                200_000,
                "ffeeddccbbaa99887766554433221100".to_string(),
            ),
            (
                "config.json".to_string(),
                "https://h/config.json?Expires=1".to_string(),
                12_345,
                "0123456789abcdef0123456789abcdef".to_string(),
            ),
        ];
        edit(&mut files);
        let list: Vec<String> = files
            .iter()
            .map(|(name, url, size, sign)| {
                format!(
                    r#"{{"fileName":"{name}","fileUrl":"{url}","fileSize":{size},"fileSign":"{sign}"}}"#
                )
            })
            .collect();
        let payload = format!(
            r#"{{"code":"1000","data":{{"version":"2.0.0","module":"MCU","signMethod":"MD5","files":[{}]}},"id":7,"message":"success"}}"#,
            list.join(",")
        );
        let limits = package_limits();
        let mut n = UpgradeNotice::new(&limits);
        crate::protocol::decode(Protocol::Aliyun, payload.as_bytes(), &limits, &mut n).unwrap();
        n
    }

    fn package_notice() -> UpgradeNotice {
        package_notice_with(|_| {})
    }

    /// A package's record in its second file, 1000 bytes in, with the digest over them.
    fn package_sample() -> Breakpoint {
        let n = package_notice();
        let mut bp = Breakpoint::for_upgrade(Protocol::Aliyun, &n).unwrap();
        bp.start_file(&n, 1).unwrap();
        let mut d = StreamDigest::new(DigestKind::Md5);
        d.update(&[0x5a; 1000]);
        bp.set_progress(1000, Some(&d), None).unwrap();
        bp
    }

    #[test]
    fn a_package_record_names_the_current_file_and_round_trips() {
        let n = package_notice();
        assert!(n.is_package());
        let first = Breakpoint::for_upgrade(Protocol::Aliyun, &n).unwrap();
        assert!(first.is_package());
        assert_eq!((first.file_index(), first.file_count()), (0, 3));
        assert_eq!(
            first.package_identity(),
            package_identity(n.files.as_slice())
        );
        assert_eq!(
            (first.size(), first.offset()),
            (30_000, 0),
            "the first file's"
        );
        assert_eq!(first.digest(), n.files.get(0).unwrap().digest());
        assert_eq!(first.url_identity(), url_identity("https://h/app.bin"));
        assert!(first.matches(&n));

        let bp = package_sample();
        assert_eq!(
            (bp.file_index(), bp.size(), bp.offset()),
            (1, 200_000, 1000)
        );
        assert_eq!(bp.digest(), n.files.get(1).unwrap().digest());
        assert_eq!(bp.url_identity(), url_identity("https://h/mcu.bin"));
        let buf = encoded(&bp);
        assert_eq!(buf[808..810], 1u16.to_le_bytes());
        assert_eq!(buf[810..812], 3u16.to_le_bytes());
        assert_eq!(buf[812..820], bp.package_identity().to_le_bytes());
        let back = Breakpoint::decode(&buf).unwrap();
        assert_eq!(back, bp);
        assert_eq!(encoded(&back), buf, "decode is canonical");
        assert!(back.matches(&n));
        let mut resumed = back.restore_digest().unwrap();
        resumed.update(b"tail");
        let mut whole = StreamDigest::new(DigestKind::Md5);
        whole.update(&[0x5a; 1000]);
        whole.update(b"tail");
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        assert_eq!(resumed.current(&mut a), whole.current(&mut b));
        assert_eq!(a, b);

        // The offset is within the current file: past it is refused.
        let mut over = bp.clone();
        assert!(over.set_progress(200_001, None, None).is_err());
        over.set_progress(200_000, None, None).unwrap();

        // The last file, then flashed: the pending version is the package's.
        let mut last = bp.clone();
        last.start_file(&n, 2).unwrap();
        assert_eq!(
            (last.file_index(), last.size(), last.offset()),
            (2, 12_345, 0)
        );
        assert!(
            last.digest_state().is_empty(),
            "a new file has no digest yet"
        );
        last.set_pending_reboot("2.0.0").unwrap();
        let back = Breakpoint::decode(&encoded(&last)).unwrap();
        assert_eq!(back.reboot_outcome("2.0.0"), Some(RebootOutcome::Succeeded));
        assert_eq!(back.file_index(), 2);
    }

    #[test]
    fn a_package_record_matches_the_same_package_with_renewed_urls_only() {
        let bp = package_sample();
        let renewed = package_notice_with(|files| {
            for f in files.iter_mut() {
                f.1 = f.1.replace("Expires=1", "Expires=2");
            }
        });
        assert!(
            bp.matches(&renewed),
            "the URLs are not the package's identity"
        );
        let mut moved = renewed.clone();
        moved.url.set("https://elsewhere/x.bin").unwrap();
        assert!(bp.matches(&moved));

        let mut other_version = package_notice();
        other_version.version.set("2.0.1").unwrap();
        assert!(!bp.matches(&other_version));
        let mut other_module = package_notice();
        other_module.module.set("WIFI").unwrap();
        assert!(!bp.matches(&other_module));
        let changed = package_notice_with(|f| f[2].3 = "ffffffffffffffffffffffffffffffff".into());
        assert!(
            !bp.matches(&changed),
            "a later file re-signed: another package"
        );
        assert!(!bp.matches(&notice(DigestKind::Md5)), "a single image");

        // A single image's record never matches a package, even of the same version and module.
        let mut single = notice(DigestKind::Md5);
        single.version.set("2.0.0").unwrap();
        let single_bp = Breakpoint::for_upgrade(Protocol::Aliyun, &single).unwrap();
        assert!(!single_bp.matches(&package_notice()));
    }

    #[test]
    fn the_package_identity_changes_with_any_file_but_not_its_url() {
        let base = package_identity(package_notice().files.as_slice());
        let edits: [(&str, Edit<Vec<FileJson>>); 7] = [
            ("name", |f| f[1].0 = "mcu2.bin".into()),
            ("size", |f| f[1].2 += 1),
            ("digest", |f| {
                f[0].3 = "10112233445566778899aabbccddeeff".into()
            }),
            ("last digest", |f| {
                f[2].3 = "1123456789abcdef0123456789abcdef".into()
            }),
            ("order", |f| f.swap(0, 1)),
            ("a file dropped", |f| {
                f.pop();
            }),
            ("a file added", |f| {
                let extra = (
                    "extra.bin".to_string(),
                    "https://h/extra.bin".to_string(),
                    7,
                    "00000000000000000000000000000000".to_string(),
                );
                f.push(extra)
            }),
        ];
        for (what, edit) in edits {
            let n = package_notice_with(edit);
            assert_ne!(package_identity(n.files.as_slice()), base, "{what}");
        }
        // A name's bytes cannot slide into the next field (the length comes first).
        let a = package_notice_with(|f| {
            f[0].0 = "ab".into();
            f[1].0 = "c".into();
        });
        let b = package_notice_with(|f| {
            f[0].0 = "a".into();
            f[1].0 = "bc".into();
        });
        assert_ne!(
            package_identity(a.files.as_slice()),
            package_identity(b.files.as_slice())
        );
        let renewed = package_notice_with(|f| f[1].1 = "https://other/mcu.bin?x=1".into());
        assert_eq!(package_identity(renewed.files.as_slice()), base);
        // Stable across builds: it is persisted.
        assert_eq!(package_identity(&[]), FNV_OFFSET_BASIS);
    }

    #[test]
    fn moving_to_a_file_is_checked() {
        let n = package_notice();
        let bp = package_sample();
        let mut r = bp.clone();
        assert!(matches!(r.start_file(&n, 3), Err(Error::InvalidParam(_))));
        let changed = package_notice_with(|f| f[1].2 = 1);
        assert!(matches!(
            r.start_file(&changed, 2),
            Err(Error::InvalidParam(_))
        ));
        assert!(matches!(
            r.start_file(&notice(DigestKind::Md5), 0),
            Err(Error::InvalidParam(_))
        ));
        assert_eq!(r, bp, "unchanged on error");
        let mut single = sample(DigestKind::Md5);
        assert!(matches!(
            single.start_file(&n, 1),
            Err(Error::InvalidState(_))
        ));
        r.set_pending_reboot("2.0.0").unwrap();
        assert!(matches!(r.start_file(&n, 2), Err(Error::InvalidState(_))));
    }

    #[test]
    fn package_fields_out_of_range_are_corrupt_even_with_a_valid_crc() {
        let good = encoded(&package_sample());
        let edits: [(&str, Edit<[u8; RECORD_LEN]>); 5] = [
            ("index = count", |b| b[808] = 3),
            ("index > count", |b| b[809] = 1),
            ("one file", |b| {
                b[808] = 0;
                b[810] = 1;
            }),
            ("17 files", |b| b[810] = 17),
            ("no files, index 1", |b| {
                b[810] = 0;
                b[812..820].copy_from_slice(&[0; 8]);
            }),
        ];
        for (what, edit) in edits {
            let mut bad = good;
            edit(&mut bad);
            resign(&mut bad);
            assert_eq!(
                Breakpoint::decode(&bad),
                Err(RecordError::Corrupt),
                "{what}"
            );
        }
        let mut max = good;
        max[810] = MAX_PACKAGE_FILES as u8;
        resign(&mut max);
        assert_eq!(Breakpoint::decode(&max).unwrap().file_count(), 16);

        let single = encoded(&sample(DigestKind::Md5));
        for (what, at) in [
            ("index of a single image", 808),
            ("identity of a single image", 815),
        ] {
            let mut bad = single;
            bad[at] = 1;
            resign(&mut bad);
            assert_eq!(
                Breakpoint::decode(&bad),
                Err(RecordError::Corrupt),
                "{what}"
            );
        }
    }

    #[test]
    fn the_image_verifier_state_round_trips_and_must_cover_the_offset() {
        let image = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mcuboot/ed25519.bin"
        ))
        .unwrap();
        let policy = crate::image::ImagePolicy::default();
        let mut notice = UpgradeNotice::new(&crate::protocol::Limits::default());
        notice.version.set("1.2.3").unwrap();
        notice.url.set("http://h/f.bin").unwrap();
        notice.size = image.len() as u64;
        let mut bp = Breakpoint::for_upgrade(Protocol::Aliyun, &notice).unwrap();
        let mut v = ImageVerifier::new(&policy).with_announced_size(notice.size);
        v.update(&image[..1000]).unwrap();
        assert!(
            bp.set_progress(999, None, Some(&v)).is_err(),
            "must cover the offset"
        );
        bp.set_progress(1000, None, Some(&v)).unwrap();
        assert_eq!(bp.image_state().len(), IMAGE_STATE_MAX);
        let back = Breakpoint::decode(&encoded(&bp)).unwrap();
        assert_eq!(back, bp);
        let mut resumed = back.restore_image().expect("verifier state");
        assert_eq!(resumed.received(), 1000);
        resumed.update(&image[1000..]).unwrap();
        assert!(resumed.finish(&policy).unwrap().mcuboot);

        // A state over another number of bytes than the offset is corrupt.
        let mut bad = encoded(&bp);
        bad[50..58].copy_from_slice(&1001u64.to_le_bytes());
        resign(&mut bad);
        assert_eq!(Breakpoint::decode(&bad), Err(RecordError::Corrupt));
        // So is a flipped state byte (it no longer restores), and bytes after the state.
        let mut bad = encoded(&bp);
        bad[V1_CRC_AT + 2 + 20] ^= 0xff;
        resign(&mut bad);
        assert_eq!(Breakpoint::decode(&bad), Err(RecordError::Corrupt));
        bp.set_progress(1000, None, None).unwrap();
        let mut bad = encoded(&bp);
        bad[V1_CRC_AT + 2 + 5] = 1;
        resign(&mut bad);
        assert_eq!(Breakpoint::decode(&bad), Err(RecordError::Corrupt));
    }

    #[test]
    fn layout_constants() {
        assert_eq!((V1_CRC_AT, V1_LEN), (520, 524));
        assert_eq!((V2_CRC_AT, V2_LEN), (808, 812));
        assert_eq!(CRC_AT, 820);
        assert_eq!(RECORD_LEN, 824);
        let buf = encoded(&sample(DigestKind::Md5));
        assert_eq!(&buf[..6], b"OTABP1");
        assert_eq!(buf[6..10], [3, 3, 0, 0]);
        assert_eq!(buf[808..820], [0; 12], "a single image: no package fields");
        assert_eq!(buf[42..50], 300_000u64.to_le_bytes());
        assert_eq!(buf[50..58], 1000u64.to_le_bytes());
        assert_eq!(&buf[66..72], b"\x052.1.0");
        assert_eq!(buf[391] as usize, StreamDigest::state_len(DigestKind::Md5));
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_and_resumed_digest() {
        for kind in [DigestKind::Md5, DigestKind::Sha256] {
            let bp = sample(kind);
            let buf = encoded(&bp);
            let back = Breakpoint::decode(&buf).unwrap();
            assert_eq!(back, bp);
            assert_eq!(encoded(&back), buf, "decode is canonical");
            assert_eq!(back.protocol(), Protocol::Ucloud);
            assert_eq!(back.version(), "2.1.0");
            assert_eq!(back.module_name(), "MCU");
            assert_eq!(back.task_id(), "task-42");
            assert_eq!(back.batch(), "batch-7");
            assert_eq!((back.offset(), back.size()), (1000, 300_000));
            assert_eq!(back.pending_version(), None);

            let mut resumed = back.restore_digest().unwrap();
            resumed.update(b"tail");
            let mut whole = StreamDigest::new(kind);
            whole.update(&[0x5a; 1000]);
            whole.update(b"tail");
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            assert_eq!(resumed.current(&mut a), whole.current(&mut b));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        for buf in [
            encoded(&sample(DigestKind::Sha256)),
            encoded(&package_sample()),
        ] {
            for i in 0..RECORD_LEN {
                for mask in [0x01, 0x80, 0xff] {
                    let mut bad = buf;
                    bad[i] ^= mask;
                    let r = Breakpoint::decode(&bad);
                    assert!(
                        matches!(
                            r,
                            Err(RecordError::Corrupt) | Err(RecordError::UnknownVersion(_))
                        ),
                        "byte {i} ^ {mask:#x}: {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_torn_and_overlong_is_corrupt() {
        let buf = encoded(&sample(DigestKind::Md5));
        assert_eq!(Breakpoint::decode(&[]), Err(RecordError::Missing));
        for n in 1..RECORD_LEN {
            assert_eq!(Breakpoint::decode(&buf[..n]), Err(RecordError::Torn), "{n}");
        }
        let mut long = [0u8; RECORD_LEN + 1];
        long[..RECORD_LEN].copy_from_slice(&buf);
        assert_eq!(Breakpoint::decode(&long), Err(RecordError::Corrupt));
    }

    /// Re-signs a modified record, so the field checks (not the CRC) must reject it.
    fn resign(buf: &mut [u8; RECORD_LEN]) {
        let crc = crc32(&buf[..CRC_AT]);
        buf[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn values_out_of_range_are_corrupt_even_with_a_valid_crc() {
        let good = encoded(&sample(DigestKind::Md5));
        let edits: [(&str, Edit<[u8; RECORD_LEN]>); 10] = [
            ("protocol 4", |b| b[7] = 4),
            ("state 2", |b| b[8] = 2),
            ("digest kind 2", |b| b[9] = 2),
            ("md5 digest tail not zero", |b| b[10 + 16] = 1),
            ("offset > size", |b| {
                b[50..58].copy_from_slice(&300_001u64.to_le_bytes())
            }),
            ("size 0", |b| b[42..50].copy_from_slice(&0u64.to_le_bytes())),
            ("text length 65", |b| b[66] = 65),
            ("text padding", |b| b[66 + 1 + 10] = b'x'),
            ("digest state length 50", |b| b[391] = 50),
            ("pending version while downloading", |b| {
                b[326] = 1;
                b[327] = b'3';
            }),
        ];
        for (what, edit) in edits {
            let mut bad = good;
            edit(&mut bad);
            resign(&mut bad);
            assert_eq!(
                Breakpoint::decode(&bad),
                Err(RecordError::Corrupt),
                "{what}"
            );
        }
        let mut bad = good;
        bad[6] = 4;
        resign(&mut bad);
        assert_eq!(
            Breakpoint::decode(&bad),
            Err(RecordError::UnknownVersion(4))
        );
        let mut bad = good;
        bad[67] = 0xff;
        resign(&mut bad);
        assert_eq!(
            Breakpoint::decode(&bad),
            Err(RecordError::Corrupt),
            "not UTF-8"
        );
    }

    #[test]
    fn matches_only_the_same_image() {
        let bp = sample(DigestKind::Md5);
        let mut n = notice(DigestKind::Md5);
        assert!(bp.matches(&n));
        n.url.set("https://other.example.com/x.bin").unwrap();
        assert!(bp.matches(&n), "the URL is informative only");

        let edits: [(&str, Edit<UpgradeNotice>); 6] = [
            ("version", |n| n.version.set("2.1.1").unwrap()),
            ("module", |n| n.module.set("WIFI").unwrap()),
            ("size", |n| n.size += 1),
            ("digest", |n| n.digest[0] ^= 1),
            ("digest kind", |n| n.digest_kind = DigestKind::Sha256),
            ("module default", |n| n.module.clear()),
        ];
        for (what, edit) in edits {
            let mut other = notice(DigestKind::Md5);
            edit(&mut other);
            assert!(!bp.matches(&other), "{what}");
        }

        let mut n = notice(DigestKind::Md5);
        n.module.clear();
        let bp = Breakpoint::for_upgrade(Protocol::Aliyun, &n).unwrap();
        n.module.set("default").unwrap();
        assert!(bp.matches(&n), "empty module is default");
    }

    #[test]
    fn url_identity_ignores_the_query() {
        let a = url_identity("https://h/fw.bin?Expires=1&Signature=a");
        assert_eq!(a, url_identity("https://h/fw.bin?Expires=2&Signature=b"));
        assert_eq!(a, url_identity("https://h/fw.bin"));
        assert_ne!(a, url_identity("https://h/fw2.bin"));
        assert_eq!(
            url_identity(""),
            0xcbf2_9ce4_8422_2325,
            "FNV-1a offset basis"
        );
        let bp = sample(DigestKind::Md5);
        assert_eq!(
            bp.url_identity(),
            url_identity("https://bucket.example.com/fw/app-2.1.0.bin")
        );
    }

    #[test]
    fn long_fields_are_rejected_not_truncated() {
        let limits = Limits {
            version: 100,
            ..Limits::default()
        };
        let mut n = UpgradeNotice::new(&limits);
        n.version.set(&"9".repeat(65)).unwrap();
        n.size = 1;
        assert_eq!(
            Breakpoint::for_upgrade(Protocol::Aliyun, &n),
            Err(Error::TooLong {
                what: "breakpoint version",
                len: 65,
                max: 64
            })
        );
        n.version.set(&"9".repeat(64)).unwrap();
        let mut bp = Breakpoint::for_upgrade(Protocol::Aliyun, &n).unwrap();
        assert!(bp.set_pending_reboot(&"1".repeat(65)).is_err());
        assert_eq!(bp.state(), RecordState::Downloading, "unchanged");
    }

    #[test]
    fn progress_checks() {
        let mut bp = sample(DigestKind::Md5);
        let before = bp.clone();
        assert!(bp.set_progress(300_001, None, None).is_err());
        let sha = StreamDigest::new(DigestKind::Sha256);
        assert!(bp.set_progress(10, Some(&sha), None).is_err());
        assert_eq!(bp, before);
        bp.set_progress(2000, None, None).unwrap();
        assert!(bp.digest_state().is_empty());
        assert!(bp.restore_digest().is_none(), "firmware re-feeds instead");
        let back = Breakpoint::decode(&encoded(&bp)).unwrap();
        assert_eq!(back.offset(), 2000);
    }

    #[test]
    fn pending_reboot_decides_success_by_version() {
        let mut bp = sample(DigestKind::Sha256);
        assert_eq!(bp.reboot_outcome("2.1.0"), None);
        bp.set_progress(300_000, None, None).unwrap();
        bp.set_pending_reboot("2.1.0").unwrap();
        assert!(bp.set_progress(1, None, None).is_err());
        let back = Breakpoint::decode(&encoded(&bp)).unwrap();
        assert_eq!(back.state(), RecordState::PendingReboot);
        assert_eq!(back.pending_version(), Some("2.1.0"));
        assert_eq!(back.reboot_outcome("2.1.0"), Some(RebootOutcome::Succeeded));
        assert_eq!(back.reboot_outcome("2.0.0"), Some(RebootOutcome::Failed));

        let mut n = UpgradeNotice::new(&Limits::default());
        n.url.set("https://stale").unwrap();
        back.fill_notice(&mut n).unwrap();
        assert!(n.same_image(&notice(DigestKind::Sha256)));
        assert_eq!(
            n.task_id.as_str(),
            "task-42",
            "UCloud success names the task"
        );
        assert_eq!(n.batch.as_str(), "batch-7");
        assert!(n.url.is_empty());

        let tiny = Limits {
            task_id: 3,
            ..Limits::default()
        };
        let mut n = UpgradeNotice::new(&tiny);
        assert!(matches!(
            back.fill_notice(&mut n),
            Err(Error::TooLong {
                what: "task id",
                ..
            })
        ));
    }

    #[test]
    fn save_policy() {
        let p = SavePolicy {
            every_bytes: 1000,
            every_percent: 0,
        };
        assert!(!p.due(0, 999, 1_000_000));
        assert!(p.due(0, 1000, 1_000_000));
        assert!(!p.due(5000, 5000, 1_000_000), "nothing new");
        assert!(p.due(5000, 100, 1_000_000), "rewound: the record is ahead");
        assert!(p.due(999_990, 1_000_000, 1_000_000), "completion");
        let p = SavePolicy {
            every_bytes: 0,
            every_percent: 10,
        };
        assert!(!p.due(0, 99, 1000));
        assert!(p.due(0, 100, 1000));
        assert!(p.due(0, u64::MAX, u64::MAX), "no overflow: complete");
        assert!(!p.due(0, u64::MAX / 11, u64::MAX));
        assert!(p.due(0, u64::MAX / 9, u64::MAX));
        let over = SavePolicy {
            every_bytes: 0,
            every_percent: 250,
        };
        assert!(!over.due(0, 999, 1000) && over.due(0, 1000, 1000));
        assert!(!SavePolicy::DISABLED.due(0, 1000, 1000));
        assert!(!SavePolicy::DISABLED.due(1000, 0, 1000));
        let d = SavePolicy::default();
        assert!(d.is_enabled() && d.due(0, 65536, 100 << 20) && !d.due(0, 65535, 100 << 20));
    }

    #[test]
    fn memory_store_round_trip_and_damage() {
        let mut store = MemoryStore::default();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Missing))
        );
        let bp = sample(DigestKind::Md5);
        bp.save(&mut store).unwrap();
        assert_eq!(Breakpoint::load(&mut store).unwrap(), bp);
        let mut torn = store.clone();
        torn.truncate(200);
        assert_eq!(
            Breakpoint::load(&mut torn),
            Err(LoadError::Record(RecordError::Torn))
        );
        store.flip(300, 0x10);
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Corrupt))
        );
        store.erase().unwrap();
        assert!(store.contents().is_empty());
        assert_eq!(
            store.save(&[0u8; DELTA_RECORD_LEN + 1]),
            Err(StoreError::TooLarge {
                len: DELTA_RECORD_LEN + 1,
                max: DELTA_RECORD_LEN
            })
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ota-resume-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_store_missing_save_load_erase() {
        let dir = temp_dir("basic");
        let mut store = FileStore::new(dir.join("bp.bin"));
        assert_eq!(store.tmp_path(), dir.join("bp.bin.tmp"));
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Missing))
        );
        store.erase().unwrap();
        let bp = sample(DigestKind::Sha256);
        bp.save(&mut store).unwrap();
        assert!(!store.tmp_path().exists(), "renamed away");
        assert_eq!(Breakpoint::load(&mut store).unwrap(), bp);
        store.erase().unwrap();
        assert!(!store.path().exists());
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Missing))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_store_interrupted_save_keeps_the_old_record() {
        let dir = temp_dir("atomic");
        let mut store = FileStore::new(dir.join("bp.bin"));
        let old = sample(DigestKind::Md5);
        old.save(&mut store).unwrap();
        // A save that died before its rename: garbage in the temp file only.
        std::fs::write(store.tmp_path(), b"OTABP1\x01 half-written").unwrap();
        assert_eq!(Breakpoint::load(&mut store).unwrap(), old);
        // The next save replaces the stale temp file.
        let mut new = old.clone();
        new.set_progress(5000, None, None).unwrap();
        new.save(&mut store).unwrap();
        assert_eq!(Breakpoint::load(&mut store).unwrap(), new);
        // A torn or corrupt file (e.g. written by hand) is detected, never trusted.
        let bytes = std::fs::read(store.path()).unwrap();
        std::fs::write(store.path(), &bytes[..100]).unwrap();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Torn))
        );
        let mut flipped = bytes.clone();
        flipped[400] ^= 4;
        std::fs::write(store.path(), &flipped).unwrap();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Corrupt))
        );
        let mut long = bytes;
        long.extend_from_slice(&[0; 10]);
        std::fs::write(store.path(), &long).unwrap();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Corrupt))
        );
        store.erase().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_store_errors_are_reported() {
        let dir = temp_dir("errors");
        let mut store = FileStore::new(dir.join("missing-dir").join("bp.bin"));
        let bp = sample(DigestKind::Md5);
        assert_eq!(
            bp.save(&mut store),
            Err(StoreError::Io(std::io::ErrorKind::NotFound))
        );
        let relative = FileStore::new("bp.bin");
        assert_eq!(relative.dir, PathBuf::from("."));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
