//! The engine's side of the breakpoint record: resume after a restart, success after reboot.

use super::{Engine, OtaState};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{FailureCause, Report};
use crate::resume::{
    Breakpoint, BreakpointStore, RebootOutcome, RecordState, SavePolicy, RECORD_LEN,
};

impl Engine {
    /// With a breakpoint store: continue a download interrupted by a restart when the record
    /// names this image, else start a fresh record.
    pub(super) fn resume_from_record(&mut self) {
        if self.persist.store.is_none() {
            return;
        }
        match self.persist.load() {
            Some(bp)
                if bp.state() == RecordState::Downloading
                    && bp.protocol() == self.protocol
                    && bp.matches(&self.notice) =>
            {
                self.fetched = bp.offset();
                match bp.restore_digest() {
                    Some(d) => {
                        self.digest = d;
                        self.digest_bytes = bp.offset();
                    }
                    // The firmware re-feeds its stored bytes (IOT_OTA_UpdateClientMd5).
                    None => self.digest_bytes = 0,
                }
                ota_log!(
                    Level::Info,
                    "resuming the download of {} at byte {} from the breakpoint record",
                    self.notice.version,
                    self.fetched
                );
                self.persist.last_saved = bp.offset();
                self.persist.record = Some(bp);
                return;
            }
            Some(_) => {
                ota_log!(
                    Level::Info,
                    "breakpoint record is for another upgrade: discarded"
                );
                self.persist.erase();
            }
            None => {}
        }
        match Breakpoint::for_upgrade(self.protocol, &self.notice) {
            Ok(bp) => self.persist.record = Some(bp),
            Err(e) => ota_log!(Level::Warning, "no breakpoint record for this upgrade: {e}"),
        }
        self.persist.last_saved = 0;
        self.save_progress();
    }

    /// Writes the offset and digest state of the download to the breakpoint record.
    pub(super) fn save_progress(&mut self) {
        let digest = (self.digest_bytes == self.fetched).then_some(&self.digest);
        let Some(bp) = self.persist.record.as_mut() else {
            return;
        };
        if let Err(e) = bp.set_progress(self.fetched, digest) {
            ota_log!(Level::Warning, "breakpoint not recorded: {e}");
            return;
        }
        self.persist.last_saved = self.fetched;
        self.persist.save();
    }

    /// The image verified and the caller has it: the device will reboot into it; remember which
    /// version it expects (once per upgrade).
    pub(super) fn record_pending_reboot(&mut self) {
        if self.persist.reboot_recorded {
            return;
        }
        let Some(bp) = self.persist.record.as_mut() else {
            return;
        };
        match bp.set_pending_reboot(self.notice.version.as_str()) {
            Ok(()) => {
                self.persist.reboot_recorded = true;
                self.persist.save()
            }
            Err(e) => ota_log!(Level::Warning, "pending version not recorded: {e}"),
        }
    }

    /// After a reboot: the first version report completes a pending upgrade in the protocol's
    /// terms (success when it is the pending version, failure otherwise). True when that report
    /// replaced the plain version report.
    pub(super) fn complete_pending_reboot(&mut self, version: &str, module: Option<&str>) -> bool {
        if self.persist.store.is_none() || self.state != OtaState::Idle {
            return false;
        }
        let Some(bp) = self.persist.load() else {
            return false;
        };
        if bp.state() != RecordState::PendingReboot
            || bp.protocol() != self.protocol
            || bp.module_name() != module.unwrap_or("default")
        {
            return false;
        }
        self.persist.erase();
        if bp.fill_notice(&mut self.notice).is_err() {
            return false;
        }
        let r = match bp.reboot_outcome(version) {
            Some(RebootOutcome::Succeeded) => {
                ota_log!(
                    Level::Info,
                    "upgrade to {version} completed after the reboot"
                );
                self.out.send(Report::Success {
                    version,
                    notice: &self.notice,
                })
            }
            _ => {
                ota_log!(
                    Level::Error,
                    "rebooted into {version}, not the pending {}: upgrade failed",
                    self.notice.version
                );
                let r = self.out.send(Report::Failure {
                    cause: FailureCause::UpgradeFailed,
                    desc: "the device did not boot the new firmware",
                    notice: &self.notice,
                });
                if let Err(e) = r {
                    ota_log!(Level::Warning, "failure report not sent: {e}");
                }
                return false;
            }
        };
        if let Err(e) = r {
            ota_log!(Level::Warning, "completion not reported: {e}");
        }
        // Aliyun and SagooIOT count the version report itself as the success.
        self.protocol.success_is_version_report()
    }
}

/// The breakpoint record and where it is kept.
pub(super) struct Persistence {
    pub(super) store: Option<Box<dyn BreakpointStore>>,
    pub(super) policy: SavePolicy,
    /// The record of the current upgrade.
    pub(super) record: Option<Breakpoint>,
    /// Offset at the last save.
    pub(super) last_saved: u64,
    pub(super) buf: Box<[u8; RECORD_LEN]>,
    /// The record already says "pending reboot" for this upgrade.
    pub(super) reboot_recorded: bool,
}

impl Persistence {
    pub(super) fn due(&self, offset: u64, size: u64) -> bool {
        self.store.is_some()
            && self.record.is_some()
            && self.policy.due(self.last_saved, offset, size)
    }

    /// The stored record, or None (a missing, torn or corrupt record is never trusted).
    pub(super) fn load(&mut self) -> Option<Breakpoint> {
        let store = self.store.as_mut()?;
        match Breakpoint::load(store.as_mut()) {
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

    pub(super) fn save(&mut self) {
        let (Some(store), Some(bp)) = (self.store.as_mut(), self.record.as_ref()) else {
            return;
        };
        let len = bp.encode(&mut self.buf);
        if let Err(e) = store.save(&self.buf[..len]) {
            ota_log!(Level::Warning, "breakpoint record not saved: {e}");
        }
    }

    pub(super) fn erase(&mut self) {
        self.record = None;
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.erase() {
                ota_log!(Level::Warning, "breakpoint record not erased: {e}");
            }
        }
    }
}
