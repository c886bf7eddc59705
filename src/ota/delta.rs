//! Delta upgrades in the engine (issue 17): with a delta source set, a download whose first bytes
//! are a detools sequential patch is applied on the way, and FetchYield returns the bytes of the
//! **new** image; any other download is handed out as it comes, as without one.
//!
//! Two streams: the patch (what the network sends: `Download::fetched`, the platform's size and
//! digest, `Range` after a cut) and the new image (what the caller gets: `DeltaCycle::delivered`,
//! `IOT_OTAG_FETCHED_SIZE`, `IOT_OTAG_FILE_SIZE`, the image's own checks). With a delta source
//! the network's bytes go into the patch buffer here (never straight into the caller's buffer);
//! a step of `fetch_yield` then hands them out, applied or as they are, with no lock held while
//! the old image is read (the firmware's callback).
//!
//! Recognising a patch (docs/delta.md, "Recognising a patch"): the download starts with a
//! sequential header of a compression the applier decodes, naming a new image of 1 byte up to the
//! largest the firmware declared, and (uncompressed) its data-format size is 0. A plain image
//! that happens to start like a header fails those checks unless it is built to pass them.
//!
//! Resume: within a session a cut resumes with `Range` as for any download; after a restart a
//! patch resumes from its breakpoint record, whose delta tail holds the applier's state
//! (`src/resume/delta_tail.rs`, `Engine::resume_patch` in breakpoint.rs).

use std::time::Instant;

use super::{Engine, OtaState};
use crate::delta::{
    Compression, DeltaBudget, DeltaError, OldImage, OldImageMismatch, PatchApplier, PatchHeader,
    Stop,
};
use crate::error::{Error, Result};
use crate::image::ImageVerifier;
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{DeltaRequirement, FailureCause};
use crate::source::{Chunk, DownloadError};

/// Bytes of patch held between the network and the applier.
pub const PATCH_BUFFER: usize = 4096;

/// What the firmware sets with its delta source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaOptions {
    /// The applier's memory (heatshrink window, old-image reads), allocated when the source is
    /// set.
    pub budget: DeltaBudget,
    /// The largest new image a patch may make (the firmware's slot); a header naming more is
    /// not taken for a patch.
    pub max_new_size: u64,
    /// The running image's SHA-256, when the firmware knows it (from its build or boot loader).
    /// `None`: [`set_delta_source`](super::OtaSession::set_delta_source) computes it, reading
    /// the whole old image once. Compared with the upgrade message's `_delta_old_sha256`.
    pub old_sha256: Option<[u8; 32]>,
}

impl DeltaOptions {
    /// The default budget and a slot of `max_new_size` bytes.
    pub fn for_slot(max_new_size: u64) -> DeltaOptions {
        DeltaOptions {
            budget: DeltaBudget::DEFAULT,
            max_new_size,
            old_sha256: None,
        }
    }
}

/// What the current download turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// No delta source: bytes go straight to the caller.
    Off,
    /// A delta source, and too few bytes yet to tell.
    Undecided,
    /// A patch: the caller gets the applier's output.
    Patch,
    /// Not a patch: the caller gets the bytes as they came.
    Plain,
}

/// The engine's side of the current download's delta handling (reset with each download).
#[derive(Debug, Clone, Copy)]
pub(super) struct DeltaCycle {
    pub(super) mode: Mode,
    /// The new image's size (from the patch header).
    pub(super) new_size: u64,
    /// New-image bytes handed to the caller.
    pub(super) delivered: u64,
    /// Patch bytes received and not handed out (the fetch side's buffer): the breakpoint
    /// record is written only when it is 0, so its offset is what the caller stored.
    pub(super) held: usize,
    /// Resumed from a breakpoint record: the applier takes the record's state at the next
    /// `fetch_yield`.
    pub(super) restore_pending: bool,
    /// No step of this download has run yet: the fetch side may still hold the previous
    /// download's patch bytes and applier (one refused or superseded mid-way).
    pub(super) fresh: bool,
    /// The new image's last bytes, in the caller's buffer while this call reads the rest of
    /// the patch (which the platform's digest covers): the call returns them, with the end of
    /// the download when the patch is whole, so the last bytes and IsFetchFinish come together.
    pub(super) owed: usize,
}

impl DeltaCycle {
    pub(super) fn new(enabled: bool) -> DeltaCycle {
        DeltaCycle {
            mode: if enabled { Mode::Undecided } else { Mode::Off },
            new_size: 0,
            delivered: 0,
            held: 0,
            restore_pending: false,
            fresh: true,
            owed: 0,
        }
    }
}

/// The fetch side's delta state: the firmware's old image, the applier, and patch bytes not
/// handed out yet. Locked with the fetch side only (never by MQTT).
pub(super) struct DeltaSide {
    pub(super) options: DeltaOptions,
    old: Box<dyn OldImage + Send>,
    /// The running image's SHA-256 (declared by the firmware or computed when it was set).
    old_sha256: [u8; 32],
    applier: PatchApplier,
    patch: Box<[u8]>,
    /// Patch bytes `start..end` of `patch` are received and not consumed yet.
    start: usize,
    end: usize,
    /// The applier stopped with `out` full: it may produce more without another patch byte.
    more_output: bool,
}

/// What one hand-out step did.
pub(super) struct Handed {
    pub(super) produced: usize,
    pub(super) stop: Option<Stop>,
}

impl DeltaSide {
    /// `old_sha256`: the running image's, from [`running_sha256`].
    pub(super) fn new(
        old: Box<dyn OldImage + Send>,
        options: DeltaOptions,
        old_sha256: [u8; 32],
    ) -> DeltaSide {
        DeltaSide {
            options,
            old,
            old_sha256,
            applier: PatchApplier::new(options.budget),
            patch: vec![0; PATCH_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            more_output: false,
        }
    }

    /// Ready for a new download (the buffer emptied, the applier reset; nothing allocated).
    pub(super) fn reset(&mut self) {
        self.applier.reset();
        self.start = 0;
        self.end = 0;
        self.more_output = false;
    }

    /// The applier (its state goes into a patch's breakpoint record).
    pub(super) fn applier(&self) -> &PatchApplier {
        &self.applier
    }

    /// Continues a patch from a breakpoint record: the applier takes `state` (see
    /// [`PatchApplier::restore_in_place`]), the buffer is empty, and a hand-out step runs first
    /// (the state may hold output not yet written). False, the applier reset, when refused.
    pub(super) fn restore(&mut self, state: &[u8]) -> bool {
        self.reset();
        let ok = self.applier.restore_in_place(state);
        self.more_output = ok;
        ok
    }

    /// Patch bytes received and not handed out.
    pub(super) fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Whether a hand-out step has something to do.
    pub(super) fn has_work(&self) -> bool {
        self.pending() > 0 || self.more_output
    }

    /// Where the next network read goes: the free end of the buffer (moved to the front first).
    pub(super) fn free(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.patch.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.patch[self.end..]
    }

    /// The last read's `n` bytes are received (after the engine took them).
    pub(super) fn received(&mut self, n: usize) {
        self.end += n;
    }

    /// The bytes `free` gave, `n` of them just read.
    pub(super) fn just_read(&self, n: usize) -> &[u8] {
        &self.patch[self.end..self.end + n]
    }

    /// The first bytes of the download, for recognising a patch.
    pub(super) fn head(&self) -> &[u8] {
        &self.patch[self.start..self.end]
    }

    /// Hands out into `out`: applied (a patch) or as they came (plain).
    pub(super) fn hand_out(&mut self, mode: Mode, out: &mut [u8]) -> Result<Handed, DeltaError> {
        if mode != Mode::Patch {
            let n = self.pending().min(out.len());
            out[..n].copy_from_slice(&self.patch[self.start..self.start + n]);
            self.start += n;
            return Ok(Handed {
                produced: n,
                stop: None,
            });
        }
        let piece = &self.patch[self.start..self.end];
        let before = self.applier.produced();
        let p = match self.applier.feed(piece, self.old.as_mut(), out) {
            Ok(p) => p,
            Err(e) => {
                // The image bytes made before the refusal go out now (`out` holds nothing
                // else); the next call meets the refusal with nothing written.
                let produced = (self.applier.produced() - before) as usize;
                if produced == 0 {
                    return Err(e);
                }
                return Ok(Handed {
                    produced,
                    stop: None,
                });
            }
        };
        self.start += p.consumed;
        self.more_output = p.stop == Stop::OutFull;
        Ok(Handed {
            produced: p.produced,
            stop: Some(p.stop),
        })
    }

    /// Whether `header` names a patch the applier takes for this firmware.
    /// A heatshrink window over the budget does not make it plain: such a patch is a patch
    /// the applier refuses at its parameter byte (`WindowOverBudget`, IOT_OTAE_DELTA_REFUSED),
    /// not bytes to hand out as an image.
    fn takes(&self, header: &PatchHeader) -> bool {
        header.compression.is_supported()
            && header.new_size > 0
            && header.new_size <= self.options.max_new_size
    }
}

/// The running image's SHA-256: the firmware's, else computed by reading `old` whole, in
/// pieces of a fixed stack buffer (called before any SDK lock is taken).
pub(super) fn running_sha256(
    old: &mut dyn OldImage,
    options: &DeltaOptions,
) -> Result<[u8; 32], DeltaError> {
    use sha2::Digest;
    if let Some(d) = options.old_sha256 {
        return Ok(d);
    }
    let mut buf = [0u8; 512];
    let mut hash = sha2::Sha256::new();
    let size = old.size();
    let mut offset = 0u64;
    while offset < size {
        let wanted = (size - offset).min(buf.len() as u64) as usize;
        crate::delta::read_exact(old, offset, &mut buf[..wanted])?;
        hash.update(&buf[..wanted]);
        offset += wanted as u64;
    }
    Ok(hash.finalize().into())
}

/// Whether the running image is the old image `req` names (empty: nothing to compare).
fn check_old_image(side: &DeltaSide, req: &DeltaRequirement) -> Result<(), OldImageMismatch> {
    let running = side.old.size();
    match (req.old_size, req.old_sha256) {
        (Some(required), _) if required != running => {
            Err(OldImageMismatch::Size { required, running })
        }
        (_, Some(d)) if d != side.old_sha256 => Err(OldImageMismatch::Sha256),
        _ => Ok(()),
    }
}

/// How recognising went.
pub(super) enum Verdict {
    /// Too few bytes yet.
    NeedMore,
    Patch(PatchHeader),
    Plain,
}

/// Looks at the download's first bytes (`complete`: they are all of it).
pub(super) fn recognise(side: &DeltaSide, complete: bool) -> Verdict {
    let head = side.head();
    match PatchHeader::parse(head) {
        // The byte after an uncompressed header is needed too.
        Ok(Some(h)) if h.compression == Compression::None && head.len() <= h.len && !complete => {
            Verdict::NeedMore
        }
        Ok(Some(h)) if side.takes(&h) && plausible_start(head, &h) => Verdict::Patch(h),
        Ok(None) if !complete && head.len() < 16 => Verdict::NeedMore,
        _ => Verdict::Plain,
    }
}

/// An uncompressed patch's stream starts with its data-format size, 0 for detools' sequential
/// patches: one more check against a plain image that starts like a header.
fn plausible_start(head: &[u8], h: &PatchHeader) -> bool {
    h.compression != Compression::None || head.get(h.len) == Some(&0)
}

impl Engine {
    /// Whether a delta source with `options` may be set now: a slot of at least a byte, before
    /// the first upgrade.
    pub(super) fn check_delta_settable(&mut self, options: &DeltaOptions) -> Result<()> {
        if options.max_new_size == 0 {
            return Err(self.fail(Error::InvalidParam("delta: the slot size is 0")));
        }
        if self.state != OtaState::Idle {
            return Err(self.fail(Error::InvalidState(
                "the delta source is set before the first upgrade",
            )));
        }
        Ok(())
    }

    /// With a delta source: decides, from the first bytes, whether this download is a patch.
    /// A patch's new size becomes the image the caller gets and the image checks see; its
    /// breakpoint record carries the applier's state from now on. A patch whose message
    /// requires another old image than the running one ends the download here, before any byte
    /// is handed out ([`Error::DeltaOldImage`]).
    pub(super) fn recognise_patch(&mut self, side: &DeltaSide) -> Result<()> {
        let complete = self.download.fetched == self.target().size;
        match recognise(side, complete) {
            Verdict::NeedMore => {}
            Verdict::Plain => self.download.delta.mode = Mode::Plain,
            Verdict::Patch(h) => {
                self.old_image_required(side)?;
                self.download.delta.mode = Mode::Patch;
                self.download.delta.new_size = h.new_size;
                self.download.image =
                    ImageVerifier::new(&self.policy).with_announced_size(h.new_size);
                ota_log!(
                    Level::Info,
                    "delta patch ({} bytes, {}): new image of {} bytes",
                    self.target().size,
                    h.compression,
                    h.new_size
                );
            }
        }
        Ok(())
    }

    /// The upgrade message's old-image requirement against the running image: a mismatch
    /// ends the download (one log line, one failure report); no requirement is logged once.
    pub(super) fn old_image_required(&mut self, side: &DeltaSide) -> Result<()> {
        let req = self.notice.delta_old;
        if req.is_empty() {
            ota_log!(
                Level::Info,
                "delta patch: the upgrade message names no old image (extData _delta_old_size, \
                 _delta_old_sha256): nothing ties the patch to the running image"
            );
            return Ok(());
        }
        let Err(m) = check_old_image(side, &req) else {
            return Ok(());
        };
        let desc = match m {
            OldImageMismatch::Size { .. } => "delta patch: for an old image of another size",
            OldImageMismatch::Sha256 => "delta patch: for an old image of another SHA-256",
        };
        self.download.verified = false;
        Err(self.abort_fetch(Error::DeltaOldImage(m), FailureCause::UpgradeFailed, desc))
    }

    /// Bytes the caller has of what it is given: the new image's for a patch.
    pub(super) fn caller_offset(&self) -> u64 {
        let d = &self.download.delta;
        match d.mode {
            Mode::Patch => d.delivered,
            // Received bytes still in the patch buffer are not the caller's yet.
            _ => self.download.fetched - d.held as u64,
        }
    }

    /// For a patch whose message names the new image's SHA-256 (`_delta_new_sha256`): whether
    /// the image handed out has it. A mismatch refuses the image (its log line, the protocol's
    /// verify-failed report); anything else holds.
    pub(super) fn new_image_digest_holds(&mut self) -> bool {
        let Some(want) = self.notice.delta_old.new_sha256 else {
            return true;
        };
        if self.download.delta.mode != Mode::Patch {
            return true;
        }
        let mut got = [0u8; 32];
        self.download.new_image_digest.current(&mut got);
        if got == want {
            return true;
        }
        let desc =
            "verify failed: the new image made from the patch is not the one the message names";
        ota_log!(Level::Error, "image rejected: {desc}");
        self.refuse_at_end(
            Error::Download(DownloadError::BadResponse("new image digest mismatch")),
            desc,
        );
        false
    }

    /// A call's result with the new image's last bytes it owes ([`DeltaCycle::owed`]): they
    /// are in the caller's buffer (nothing was written after them) and are returned, unless
    /// the rest of the patch ended the download with an error (a refused tail: the image will
    /// not be valid, and the firmware hears why now, before IsFetchFinish).
    pub(super) fn with_owed(&mut self, r: Result<usize>) -> Result<usize> {
        match std::mem::take(&mut self.download.delta.owed) {
            0 => r,
            _ if r.is_err() && self.state != OtaState::Downloading => r,
            owed => Ok(owed),
        }
    }

    /// The size of what the caller is given: the new image's for a patch.
    pub(super) fn caller_size(&self) -> u64 {
        match self.download.delta.mode {
            Mode::Patch => self.download.delta.new_size,
            _ => self.target().size,
        }
    }

    /// With a delta source (`d`, the fetch side's): the next step when it is not the
    /// network's: `Ok(mode)`, hand out what the patch buffer holds (applied for a patch), or
    /// the call's end (a patch refused as soon as it is recognised). None: go on as for any
    /// download.
    pub(super) fn delta_step(&mut self, d: &mut DeltaSide) -> Option<Result<Mode>> {
        if std::mem::take(&mut self.download.delta.fresh) {
            // A new download: nothing of the last one is handed out or applied.
            d.reset();
        }
        let mode = self.download.delta.mode;
        if mode == Mode::Undecided {
            if d.pending() == 0 && self.download.fetched > 0 {
                // Resumed from a plain image's record (a patch's sets Patch when it is read).
                self.download.delta.mode = Mode::Plain;
            } else if d.pending() > 0 {
                if let Err(e) = self.recognise_patch(d) {
                    return Some(Err(e));
                }
            }
        }
        let mode = self.download.delta.mode;
        if matches!(mode, Mode::Patch | Mode::Plain) && d.has_work() {
            return Some(Ok(mode));
        }
        None
    }

    /// A read into the patch buffer: how many of the bytes the download took, when they are
    /// data of the current request (then the call goes on); None for anything else, which the
    /// caller hands to `took` as any read's result.
    pub(super) fn took_patch(
        &mut self,
        request: u64,
        r: &std::result::Result<Chunk, DownloadError>,
        bytes: &[u8],
    ) -> Option<usize> {
        let ours = request == self.request && self.state == OtaState::Downloading;
        let (true, 0, Ok(Chunk::Data(n))) = (ours, self.download.skip, r) else {
            return None;
        };
        self.download.backoff.progressed();
        self.download.url_requests = 0;
        self.download.last_progress = Instant::now();
        self.received(&bytes[..*n]);
        self.download.delta.held += n;
        Some(*n)
    }

    /// Network bytes taken into the patch buffer: the platform's digest covers them.
    pub(super) fn received(&mut self, bytes: &[u8]) {
        self.download.digest.update(bytes);
        self.download.digest_bytes += bytes.len() as u64;
        self.download.fetched += bytes.len() as u64;
    }

    /// A hand-out step's result for `request`: the caller's count, or None to go on.
    pub(super) fn handed(
        &mut self,
        request: u64,
        r: Result<Handed, DeltaError>,
        out: &[u8],
        pending: usize,
    ) -> Option<Result<usize>> {
        if request != self.request || self.state != OtaState::Downloading {
            return None;
        }
        let handed = match r {
            Ok(h) => h,
            Err(e) => return Some(Err(self.patch_refused(e))),
        };
        self.download.delta.held = pending;
        let bytes = &out[..handed.produced];
        if !bytes.is_empty() && !self.download.image_unchecked {
            if let Err(e) = self.download.image.update(bytes) {
                return Some(Err(self.image_refused(e)));
            }
        }
        if self.download.delta.mode == Mode::Patch && self.notice.delta_old.new_sha256.is_some() {
            self.download.new_image_digest.update(bytes);
        }
        self.download.delta.delivered += bytes.len() as u64;
        let patch_complete = self.download.fetched == self.target().size && pending == 0;
        let done = match (self.download.delta.mode, handed.stop) {
            (Mode::Patch, Some(Stop::Done)) => patch_complete,
            (Mode::Patch, Some(Stop::NeedPatch)) if patch_complete => {
                // The whole patch was fed and the image is not complete.
                let e = DeltaError::Truncated {
                    produced: self.download.delta.delivered,
                    new_size: self.download.delta.new_size,
                };
                return Some(Err(self.patch_refused(e)));
            }
            (Mode::Patch, _) => false,
            _ => patch_complete,
        };
        if done {
            self.finish();
            return Some(Ok(
                std::mem::take(&mut self.download.delta.owed) + handed.produced
            ));
        }
        let whole = self.download.delta.delivered == self.download.delta.new_size;
        if self.download.delta.mode == Mode::Patch && whole {
            // The image is whole and the patch is not read to its end (calls smaller than its
            // tail): this call reads the rest before it returns these bytes.
            self.download.delta.owed += handed.produced;
            return None;
        }
        match handed.produced {
            0 => None,
            n => Some(Ok(n)),
        }
    }

    /// Ends the download for a patch the applier refused (or whose old image could not be
    /// read): its log line, the protocol's failure report, `Error::Delta` from now on.
    fn patch_refused(&mut self, e: DeltaError) -> Error {
        let desc = match e {
            DeltaError::OldRead { .. } | DeltaError::OldShort { .. } => {
                "delta patch: the old image could not be read"
            }
            DeltaError::OldRange { .. } => "delta patch: does not fit the running image",
            DeltaError::Truncated { .. } => "delta patch: ends before the new image is complete",
            _ => "delta patch refused: malformed or over budget",
        };
        self.download.verified = false;
        self.abort_fetch(Error::Delta(e), FailureCause::DownloadFailed, desc)
    }
}
