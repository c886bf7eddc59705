//! The engine's side of the breakpoint record: resume after a restart, success after reboot.

use super::{BootState, Engine, OtaState};
use crate::error::{Error, Result};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{FailureCause, Report};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::resume::{
    Breakpoint, BreakpointStore, RebootOutcome, RecordState, SavePolicy, RECORD_LEN,
};

impl Engine {
    /// With a breakpoint store: continue a download interrupted by a restart when the record
    /// names this image (for a package: this package, at the recorded file), else start a
    /// fresh record.
    pub(super) fn resume_from_record(&mut self) {
        if !self.keeper.enabled {
            return;
        }
        match self.keeper.load() {
            Some(bp)
                if bp.state() == RecordState::Downloading
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
        self.save_progress();
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

    /// Writes the offset and digest state of the download to the breakpoint record.
    pub(super) fn save_progress(&mut self) {
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
    /// The encoded record of a pending save; allocated when a store is set (a device without
    /// one does not pay for it).
    pub(super) buf: Option<Box<[u8; RECORD_LEN]>>,
    pub(super) pending: Pending,
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
        let len = bp.encode(buf);
        self.pending = Pending::Save(len);
        self.stored = Some(bp.clone());
    }

    pub(super) fn erase(&mut self) {
        self.record = None;
        if self.enabled {
            self.pending = Pending::Erase;
            self.stored = None;
        }
    }
}

/// The breakpoint store, behind its own lock, and a copy of the record being written.
pub(super) struct StoreWriter {
    pub(super) store: Option<Box<dyn BreakpointStore>>,
    buf: Option<Box<[u8; RECORD_LEN]>>,
}

impl StoreWriter {
    pub(super) fn new() -> StoreWriter {
        StoreWriter {
            store: None,
            buf: None,
        }
    }

    /// Takes `store`, with the buffer its writes go through (allocated once, at configuration).
    pub(super) fn set(&mut self, store: Box<dyn BreakpointStore>) {
        self.buf.get_or_insert_with(|| Box::new([0u8; RECORD_LEN]));
        self.store = Some(store);
    }
}

impl RecordKeeper {
    /// A store is set: records are kept from now on (the save buffer is allocated once, at
    /// configuration).
    pub(super) fn enable(&mut self, stored: Option<Breakpoint>) {
        self.buf.get_or_insert_with(|| Box::new([0u8; RECORD_LEN]));
        self.enabled = true;
        self.stored = stored;
        self.pending = Pending::None;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the record a new store holds (None: missing, torn or corrupt, never trusted).
pub(super) fn read_record(store: &mut dyn BreakpointStore) -> Option<Breakpoint> {
    match Breakpoint::load(store) {
        Ok(bp) => Some(bp),
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
