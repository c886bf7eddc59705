//! The engine's side of the breakpoint record: resume after a restart, success after reboot.

use super::delta::{DeltaSide, Mode};
use super::{BootState, Engine, OtaState};
use crate::error::{Error, Result};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{FailureCause, Report};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::delta::PatchApplier;
use crate::digest::DigestKind;
use crate::image::ImageVerifier;
use crate::resume::{
    encode_tail, read_tail, Breakpoint, BreakpointStore, RebootOutcome, RecordState, SavePolicy,
    RECORD_LEN,
};

impl Engine {
    /// With a breakpoint store: continue a download interrupted by a restart when the record
    /// names this image (for a package: this package, at the recorded file), else start a
    /// fresh record.
    pub(super) fn resume_from_record(&mut self) {
        if !self.keeper.enabled {
            return;
        }
        let tailed = self.keeper.has_tail();
        match self.keeper.load() {
            Some(bp)
                if tailed
                    && bp.state() == RecordState::Downloading
                    && bp.protocol() == self.protocol
                    && bp.matches(&self.notice) =>
            {
                if self.resume_patch(bp) {
                    return;
                }
                ota_log!(
                    Level::Info,
                    "breakpoint record of a delta patch this session cannot resume (no delta \
                     source, another applier budget, or no digest state): the download starts over"
                );
                self.keeper.erase();
            }
            Some(bp)
                if !tailed
                    && bp.state() == RecordState::Downloading
                    && bp.protocol() == self.protocol
                    && bp.matches(&self.notice)
                    && (bp.offset() == 0
                        || bp.restore_image().is_some()
                        || !self.policy.checks_signatures()) =>
            {
                if bp.is_package() {
                    self.resume_package_at(bp.file_index());
                }
                self.download.fetched = bp.offset();
                match bp.restore_digest() {
                    Some(d) => {
                        self.download.digest = d;
                        self.download.digest_bytes = bp.offset();
                    }
                    // The firmware re-feeds its stored bytes (IOT_OTA_UpdateClientMd5).
                    None => self.download.digest_bytes = 0,
                }
                // The image's own checks go on from the record; without their state (a record
                // of an earlier build) they start over with the bytes the firmware re-feeds, or
                // refuse the image at the end.
                match bp.restore_image() {
                    Some(v) => self.download.image = v.with_announced_size(self.target().size),
                    // A record of an earlier build, and a policy that asks for nothing: the
                    // platform's digest alone decides, as it did then.
                    None if bp.offset() > 0 => self.download.image_unchecked = true,
                    None => {}
                }
                ota_log!(
                    Level::Info,
                    "resuming the download of {} at byte {} from the breakpoint record",
                    self.notice.version,
                    self.download.fetched
                );
                self.keeper.last_saved = bp.offset();
                self.keeper.record = Some(bp);
                return;
            }
            Some(bp) if bp.matches(&self.notice) && bp.state() == RecordState::Downloading => {
                ota_log!(
                    Level::Info,
                    "breakpoint record holds no image-check state and signatures are checked: \
                     the download starts over"
                );
                self.keeper.erase();
            }
            Some(_) => {
                ota_log!(
                    Level::Info,
                    "breakpoint record is for another upgrade: discarded"
                );
                self.keeper.erase();
            }
            None => {}
        }
        match Breakpoint::for_upgrade(self.protocol, &self.notice) {
            Ok(bp) => self.keeper.record = Some(bp),
            Err(e) => ota_log!(Level::Warning, "no breakpoint record for this upgrade: {e}"),
        }
        self.keeper.last_saved = 0;
        self.save_progress(None);
    }

    /// Resumes a delta patch from its record (`bp`, with the stored delta tail): the patch at
    /// the record's offset with its digest, the new image at the tail's offset with its checks,
    /// and the applier's state, restored on the fetch side at the next `fetch_yield`
    /// ([`restore_applier`](Self::restore_applier)). False, with nothing changed, unless the
    /// session has a delta source whose budget takes the saved state and the record holds the
    /// patch's digest state (and the image checks' state where signatures are checked).
    fn resume_patch(&mut self, bp: Breakpoint) -> bool {
        let (Some(budget), Some(tail)) = (self.delta_budget, read_tail(&self.keeper.stored_tail))
        else {
            return false;
        };
        let fits = PatchApplier::inspect_state(budget, tail.applier_state).is_some_and(|s| {
            s.consumed == bp.offset() && s.produced == tail.delivered && s.new_size == tail.new_size
        });
        let image = tail.restore_image();
        let new_digest = tail.restore_new_digest();
        let (delivered, new_size) = (tail.delivered, tail.new_size);
        // The new image's digest the message names goes on from the record, or the patch
        // starts over: it cannot be checked from the middle.
        let needs_digest = self.notice.delta_old.new_sha256.is_some() && delivered > 0;
        if needs_digest && new_digest.is_none() {
            return false;
        }
        let (Some(digest), true) = (bp.restore_digest(), fits) else {
            return false;
        };
        if image.is_none() && delivered > 0 && self.policy.checks_signatures() {
            return false;
        }
        if bp.is_package() {
            self.resume_package_at(bp.file_index());
        }
        let d = &mut self.download;
        d.fetched = bp.offset();
        d.digest = digest;
        d.digest_bytes = bp.offset();
        d.image_unchecked = image.is_none() && delivered > 0;
        d.image = image
            .unwrap_or_else(|| ImageVerifier::new(&self.policy))
            .with_announced_size(new_size);
        d.delta.mode = Mode::Patch;
        d.delta.new_size = new_size;
        d.delta.delivered = delivered;
        d.delta.held = 0;
        d.delta.restore_pending = true;
        d.new_image_digest =
            new_digest.unwrap_or_else(|| crate::digest::StreamDigest::new(DigestKind::Sha256));
        ota_log!(
            Level::Info,
            "resuming the delta patch to {} at patch byte {} (new image byte {} of {}) from the \
             breakpoint record",
            self.notice.version,
            bp.offset(),
            delivered,
            new_size
        );
        self.keeper.last_saved = bp.offset();
        self.keeper.record = Some(bp);
        true
    }

    /// At the first `fetch_yield` after a patch resumed from its record: the applier takes the
    /// saved state (checked when the record was read). Passes the fetch side's delta state on.
    pub(super) fn restore_applier<'a>(
        &mut self,
        delta: Option<&'a mut DeltaSide>,
    ) -> crate::error::Result<Option<&'a DeltaSide>> {
        if !std::mem::take(&mut self.download.delta.restore_pending) {
            return Ok(delta.map(|d| &*d));
        }
        // The restore empties the fetch side itself: nothing of an earlier download is left.
        self.download.delta.fresh = false;
        if let Some(d) = delta {
            // The message's old-image requirement holds after a restart as before it.
            self.old_image_required(d)?;
            if read_tail(&self.keeper.stored_tail).is_some_and(|t| d.restore(t.applier_state)) {
                return Ok(Some(&*d));
            }
        }
        Err(self.abort_fetch(
            Error::InvalidState("the delta patch's saved state could not be restored"),
            FailureCause::DownloadFailed,
            "delta patch: the resume state was refused",
        ))
    }

    /// A patch's progress: the record for the patch (its offset and digest state), with the
    /// tail for the new image (its offset, its checks' state) and the applier's state. Written
    /// only when all of them are there; an earlier record stays otherwise.
    fn save_patch_progress(&mut self, delta: Option<&DeltaSide>) {
        let d = &self.download;
        let (Some(side), Some(bp), true) = (
            delta,
            self.keeper.record.as_ref(),
            d.digest_bytes == d.fetched,
        ) else {
            return;
        };
        let mut next = bp.clone();
        if let Err(e) = next.set_progress(d.fetched, Some(&d.digest), None) {
            ota_log!(Level::Warning, "breakpoint not recorded: {e}");
            return;
        }
        let (delivered, new_size) = (d.delta.delivered, d.delta.new_size);
        let image = (!d.image_unchecked && d.image.received() == delivered).then_some(&d.image);
        let new_digest = self
            .notice
            .delta_old
            .new_sha256
            .map(|_| &d.new_image_digest);
        let saved = self.keeper.save_with_tail(next, |base, out| {
            encode_tail(
                base,
                delivered,
                new_size,
                image,
                new_digest,
                side.applier(),
                out,
            )
        });
        if saved {
            self.keeper.last_saved = self.download.fetched;
        }
    }

    /// The package's file `index` is next (the firmware judged the one before good) or starts:
    /// the record says so at once, so a restart from now on resumes there rather than in a
    /// file the firmware already has. Written once per file.
    pub(super) fn record_file_start(&mut self, index: usize) {
        let Some(bp) = self.keeper.record.as_mut() else {
            return;
        };
        if bp.is_package() && bp.file_index() == index && bp.offset() == 0 {
            return;
        }
        if let Err(e) = bp.start_file(&self.notice, index) {
            ota_log!(Level::Warning, "breakpoint not moved to the next file: {e}");
            return;
        }
        self.keeper.last_saved = 0;
        self.keeper.save();
    }

    /// Writes the offset and digest state of the download to the breakpoint record; for a
    /// patch, with its delta tail (`delta`: the fetch side's applier).
    pub(super) fn save_progress(&mut self, delta: Option<&DeltaSide>) {
        if self.download.delta.mode == Mode::Patch {
            self.save_patch_progress(delta);
            return;
        }
        let digest =
            (self.download.digest_bytes == self.download.fetched).then_some(&self.download.digest);
        let image = (self.download.image.received() == self.download.fetched)
            .then_some(&self.download.image);
        let Some(bp) = self.keeper.record.as_mut() else {
            return;
        };
        if let Err(e) = bp.set_progress(self.download.fetched, digest, image) {
            ota_log!(Level::Warning, "breakpoint not recorded: {e}");
            return;
        }
        self.keeper.last_saved = self.download.fetched;
        self.keeper.save();
    }

    /// The image verified and the caller has it: the device will reboot into it; remember which
    /// version it expects (once per upgrade).
    pub(super) fn record_pending_reboot(&mut self) {
        if self.download.reboot_recorded {
            return;
        }
        let Some(bp) = self.keeper.record.as_mut() else {
            return;
        };
        match bp.set_pending_reboot(self.notice.version.as_str()) {
            Ok(()) => {
                self.download.reboot_recorded = true;
                self.keeper.save()
            }
            Err(e) => ota_log!(Level::Warning, "pending version not recorded: {e}"),
        }
    }

    /// After a reboot: the first version report completes a pending upgrade in the protocol's
    /// terms (success when it is the pending version, failure otherwise). With the
    /// confirm-after-boot flow on (`confirm_boots` > 0) the pending version's report waits for
    /// [`confirm_image`](Self::confirm_image) instead, and each boot into it is counted; past
    /// the limit the upgrade fails and the caller is told to roll back
    /// ([`Error::RollBack`]). True when the plain version report is replaced (sent as the
    /// success, or held).
    pub(super) fn complete_pending_reboot(
        &mut self,
        version: &str,
        module: Option<&str>,
    ) -> Result<bool> {
        if !self.keeper.enabled || self.state != OtaState::Idle {
            return Ok(false);
        }
        let Some(mut bp) = self.keeper.load() else {
            return Ok(false);
        };
        if bp.state() == RecordState::Downloading
            || bp.protocol() != self.protocol
            || bp.module_name() != module.unwrap_or("default")
        {
            return Ok(false);
        }
        if bp.fill_notice(&mut self.notice).is_err() {
            self.keeper.erase();
            return Ok(false);
        }
        let booted_new = bp.reboot_outcome(version) == Some(RebootOutcome::Succeeded);
        if !booted_new {
            self.keeper.erase();
            ota_log!(
                Level::Error,
                "rebooted into {version}, not the pending {}: upgrade failed",
                self.notice.version
            );
            self.boot_state = BootState::RolledBack;
            self.report_after_boot(
                FailureCause::UpgradeFailed,
                "the device did not boot the new firmware",
            );
            return Ok(false);
        }
        if self.confirm_boots == 0 {
            self.keeper.erase();
            return Ok(self.report_confirmed(version));
        }
        let counted = match bp.state() {
            RecordState::PendingConfirm => bp.count_boot(),
            _ => bp.set_pending_confirm(),
        };
        if let Err(e) = counted {
            ota_log!(Level::Warning, "boot not counted: {e}");
        }
        if bp.boots() > self.confirm_boots {
            self.keeper.erase();
            ota_log!(
                Level::Error,
                "{version} booted {} times without a confirmation: upgrade failed, roll back",
                bp.boots() - 1
            );
            self.boot_state = BootState::RollBack;
            self.report_after_boot(
                FailureCause::BurnFailed,
                "the new firmware was not confirmed after booting it",
            );
            return Err(self.fail(Error::RollBack("the new image was never confirmed")));
        }
        ota_log!(
            Level::Info,
            "running {version} (boot {} of {}): its report waits for the firmware's confirmation",
            bp.boots(),
            self.confirm_boots
        );
        self.boot_state = BootState::PendingConfirm { boots: bp.boots() };
        self.keeper.record = Some(bp);
        self.keeper.save();
        Ok(true)
    }

    /// The firmware confirms the image it runs (after its own self-test): the upgrade's success
    /// goes to the platform now. `InvalidState` unless an image waits for confirmation.
    pub(super) fn confirm_image(&mut self) -> Result<()> {
        let BootState::PendingConfirm { .. } = self.boot_state else {
            return Err(self.fail(Error::InvalidState("no image waits for confirmation")));
        };
        if self.state != OtaState::Idle {
            return Err(self.fail(Error::InvalidState(
                "another upgrade began before the confirmation",
            )));
        }
        let Some(bp) = self.keeper.load() else {
            return Err(self.fail(Error::InvalidState("the pending record is gone")));
        };
        if bp.fill_notice(&mut self.notice).is_err() {
            return Err(self.fail(Error::InvalidState("the pending record does not fit")));
        }
        self.keeper.erase();
        self.boot_state = BootState::Confirmed;
        let version = bp.pending_version().unwrap_or_default();
        let module = match bp.module() {
            "" => None,
            m => Some(m),
        };
        if !self.report_confirmed(version) {
            // Where the success is a report of its own, the held version report follows it.
            let r = self.out.send(Report::Version { version, module });
            if let Err(e) = r {
                ota_log!(Level::Warning, "version report not sent: {e}");
            }
        }
        self.running.record(module.unwrap_or("default"), version);
        Ok(())
    }

    /// The firmware rejects the image it runs (its self-test failed): the upgrade fails in the
    /// platform's terms and the firmware must roll back. `InvalidState` unless an image waits
    /// for confirmation.
    pub(super) fn reject_image(&mut self) -> Result<()> {
        let BootState::PendingConfirm { .. } = self.boot_state else {
            return Err(self.fail(Error::InvalidState("no image waits for confirmation")));
        };
        self.keeper.erase();
        self.boot_state = BootState::RollBack;
        ota_log!(
            Level::Error,
            "the firmware rejected the new image: roll back"
        );
        self.report_after_boot(
            FailureCause::BurnFailed,
            "the firmware rejected the new image",
        );
        Ok(())
    }

    /// Reports the upgrade's success after the boot; true when that report is the version
    /// report itself (Aliyun, SagooIOT).
    fn report_confirmed(&mut self, version: &str) -> bool {
        ota_log!(
            Level::Info,
            "upgrade to {version} completed after the reboot"
        );
        let r = self.out.send(Report::Success {
            version,
            notice: &self.notice,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "completion not reported: {e}");
        }
        self.protocol.success_is_version_report()
    }

    /// Reports a failure found after the boot.
    fn report_after_boot(&mut self, cause: FailureCause, desc: &str) {
        let r = self.out.send(Report::Failure {
            cause,
            desc,
            notice: &self.notice,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "failure report not sent: {e}");
        }
    }
}

/// The engine's view of the breakpoint record. The store itself ([`StoreWriter`]) is outside
/// the engine's lock: the engine only encodes what must be written, and [`flush`] writes it
/// (an fsync, a flash erase) with the engine unlocked.
pub(super) struct RecordKeeper {
    /// A store is set.
    pub(super) enabled: bool,
    pub(super) policy: SavePolicy,
    /// The record of the current upgrade.
    pub(super) record: Option<Breakpoint>,
    /// What the store holds: read once when the store is set, then kept by every write.
    pub(super) stored: Option<Breakpoint>,
    /// Offset at the last save.
    pub(super) last_saved: u64,
    /// The encoded record of a pending save ([`RECORD_LEN`] bytes and room for a delta tail
    /// of `tail_room`); allocated when a store is set (a device without one does not pay for
    /// it).
    pub(super) buf: Option<Box<[u8]>>,
    pub(super) pending: Pending,
    /// Room for a delta tail (0 without a delta source): set with the delta source.
    tail_room: usize,
    /// The delta tail of what the store holds (empty: none), after `stored`; its capacity is
    /// `tail_room` (or the loaded tail's length), so keeping it never allocates.
    pub(super) stored_tail: Vec<u8>,
}

/// A write the store has not seen yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    None,
    /// `buf[..len]` replaces the stored record.
    Save(usize),
    Erase,
}

impl RecordKeeper {
    pub(super) fn new() -> RecordKeeper {
        RecordKeeper {
            enabled: false,
            policy: SavePolicy::default(),
            record: None,
            stored: None,
            last_saved: 0,
            buf: None,
            pending: Pending::None,
            tail_room: 0,
            stored_tail: Vec::new(),
        }
    }

    pub(super) fn due(&self, offset: u64, size: u64) -> bool {
        self.enabled && self.record.is_some() && self.policy.due(self.last_saved, offset, size)
    }

    /// The stored record, or None (a missing, torn or corrupt record is never trusted).
    pub(super) fn load(&self) -> Option<Breakpoint> {
        self.stored.clone()
    }

    pub(super) fn save(&mut self) {
        let (true, Some(bp), Some(buf)) = (self.enabled, self.record.as_ref(), self.buf.as_mut())
        else {
            return;
        };
        let Some(base) = buf.first_chunk_mut::<RECORD_LEN>() else {
            return;
        };
        let len = bp.encode(base);
        self.pending = Pending::Save(len);
        self.stored = Some(bp.clone());
        self.stored_tail.clear();
    }

    /// Saves `bp` followed by the delta tail `tail` writes after the encoded record (its
    /// length; 0: nothing to save). Replaces the current record only when saved; false when
    /// not.
    pub(super) fn save_with_tail(
        &mut self,
        bp: Breakpoint,
        tail: impl FnOnce(&[u8], &mut [u8]) -> usize,
    ) -> bool {
        let (true, Some(buf)) = (self.enabled, self.buf.as_mut()) else {
            return false;
        };
        let (base, rest) = buf.split_at_mut(RECORD_LEN);
        let Some(base) = base.first_chunk_mut::<RECORD_LEN>() else {
            return false;
        };
        bp.encode(base);
        let n = tail(base, rest);
        if n == 0 || n > self.stored_tail.capacity() {
            return false;
        }
        self.pending = Pending::Save(RECORD_LEN + n);
        self.stored_tail.clear();
        self.stored_tail.extend_from_slice(&rest[..n]);
        self.stored = Some(bp.clone());
        self.record = Some(bp);
        true
    }

    /// Whether the stored record carries a delta tail.
    pub(super) fn has_tail(&self) -> bool {
        !self.stored_tail.is_empty()
    }

    pub(super) fn erase(&mut self) {
        self.record = None;
        if self.enabled {
            self.pending = Pending::Erase;
            self.stored = None;
            self.stored_tail.clear();
        }
    }
}

/// The breakpoint store, behind its own lock, and a copy of the record being written.
pub(super) struct StoreWriter {
    pub(super) store: Option<Box<dyn BreakpointStore>>,
    buf: Option<Box<[u8]>>,
    /// Room for a delta tail after the record (see [`RecordKeeper`]).
    tail_room: usize,
}

impl StoreWriter {
    pub(super) fn new() -> StoreWriter {
        StoreWriter {
            store: None,
            buf: None,
            tail_room: 0,
        }
    }

    /// Takes `store`, with the buffer its writes go through (allocated once, at configuration).
    pub(super) fn set(&mut self, store: Box<dyn BreakpointStore>) {
        fit(&mut self.buf, RECORD_LEN + self.tail_room);
        self.store = Some(store);
    }

    /// Records may carry a delta tail of up to `room` bytes from now on (configuration only).
    pub(super) fn make_tail_room(&mut self, room: usize) {
        self.tail_room = room;
        if self.buf.is_some() {
            fit(&mut self.buf, RECORD_LEN + room);
        }
    }
}

/// `buf`, allocated with `len` bytes unless it has them already (configuration only).
fn fit(buf: &mut Option<Box<[u8]>>, len: usize) {
    if buf.as_ref().is_none_or(|b| b.len() != len) {
        *buf = Some(vec![0u8; len].into_boxed_slice());
    }
}

impl RecordKeeper {
    /// A store is set: records are kept from now on (the save buffer is allocated once, at
    /// configuration). `stored` is what it holds, with its delta tail's bytes.
    pub(super) fn enable(&mut self, stored: Option<(Breakpoint, Vec<u8>)>) {
        fit(&mut self.buf, RECORD_LEN + self.tail_room);
        self.enabled = true;
        let (stored, mut tail) = stored.unzip();
        self.stored = stored;
        let mut tail = tail.take().unwrap_or_default();
        tail.reserve(self.tail_room.saturating_sub(tail.len()));
        self.stored_tail = tail;
        self.pending = Pending::None;
    }

    /// Records may carry a delta tail of up to `room` bytes from now on (configuration only).
    pub(super) fn make_tail_room(&mut self, room: usize) {
        self.tail_room = room;
        if self.enabled {
            fit(&mut self.buf, RECORD_LEN + room);
        }
        self.stored_tail
            .reserve(room.saturating_sub(self.stored_tail.len()));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the record a new store holds, with its delta tail's bytes (None: missing, torn or
/// corrupt, never trusted). Configuration only: the read buffer is allocated for any tail.
pub(super) fn read_record(store: &mut dyn BreakpointStore) -> Option<(Breakpoint, Vec<u8>)> {
    let mut buf = vec![0u8; RECORD_LEN + crate::resume::TAIL_MAX_ANY + 1];
    match Breakpoint::load_with_tail(store, &mut buf) {
        Ok((bp, end)) => Some((bp, buf[RECORD_LEN.min(end)..end].to_vec())),
        Err(e) => {
            if !matches!(
                e,
                crate::resume::LoadError::Record(crate::resume::RecordError::Missing)
            ) {
                ota_log!(Level::Warning, "breakpoint record ignored: {e}");
            }
            None
        }
    }
}

/// Writes what the engine left pending, with the engine unlocked (lock order: store, engine).
/// A thread that finds another writing leaves its write to it: the writer looks again before
/// it lets go, so no thread ever waits on another's fsync.
pub(super) fn flush(engine: &Mutex<Engine>, records: &Mutex<StoreWriter>) {
    let mut guard = match records.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    let rs = &mut *guard;
    loop {
        let pending = {
            let mut e = lock(engine);
            let p = std::mem::replace(&mut e.keeper.pending, Pending::None);
            match (p, rs.buf.as_mut(), e.keeper.buf.as_ref()) {
                (Pending::Save(len), Some(dst), Some(src)) => {
                    dst[..len].copy_from_slice(&src[..len]);
                    p
                }
                // No buffers: no store was ever set, so nothing can be pending.
                (Pending::Save(_), _, _) => Pending::None,
                _ => p,
            }
        };
        let Some(store) = rs.store.as_mut() else {
            return;
        };
        match pending {
            Pending::None => return,
            Pending::Save(len) => {
                let bytes = rs.buf.as_ref().map_or(&[][..], |b| &b[..len]);
                if let Err(e) = store.save(bytes) {
                    ota_log!(Level::Warning, "breakpoint record not saved: {e}");
                }
            }
            Pending::Erase => {
                if let Err(e) = store.erase() {
                    ota_log!(Level::Warning, "breakpoint record not erased: {e}");
                }
            }
        }
    }
}
