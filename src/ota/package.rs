//! Packages of several files (SagooIOT and Aliyun `files`): the engine walks them one file per
//! cycle, with the v2.3 loop the firmware already has. Each file is downloaded and checked like a
//! single image (its own URL, size and digest, the image policy, `check_firmware`); after the
//! firmware's `check_firmware` says a file is good, its next `is_fetching` starts the next file.
//! Progress reports are weighted by bytes over the whole package; success and failure are one
//! report for the package. Packages are off unless [`Limits::max_files`](crate::protocol::Limits)
//! is set (`OtaSession::set_max_files`, C `IOT_OTAC_MAX_FILES`): firmware that does not walk
//! files would take the first file for the whole upgrade.
//!
//! Across a restart (with a breakpoint store) a package resumes where it stopped: its record
//! names the current file (index, size, digest, offset and digest state, as a single image's
//! record does) and the package ([`crate::resume::package_identity`] of all its files, without
//! the URLs). It moves to the next file when that file starts, and is saved during each file by
//! the save policy. When the platform sends the same package again after the restart, the
//! download goes on at the recorded file and offset (the files before it were judged good
//! before the restart); another package, or the same one with any file changed, starts over at
//! file 0. Within a session every file resumes with `Range` as usual.

use super::delta::DeltaCycle;
use super::download::Download;
use super::{Engine, OtaState};
use crate::digest::DigestKind;
use crate::log::Level;
use crate::ota_log;
use crate::protocol::mqtt_download::MqttFile;
use crate::protocol::Transfer;

/// What the current cycle downloads: the single image, or the package's current file.
pub(super) struct Target<'a> {
    /// HTTP(S) URL; empty over MQTT.
    pub(super) url: &'a str,
    /// The file's blocks over MQTT, when the upgrade comes that way.
    pub(super) mqtt: Option<MqttFile>,
    pub(super) size: u64,
    pub(super) kind: DigestKind,
    pub(super) digest: &'a [u8],
}

impl Engine {
    /// The image or file the current cycle downloads.
    pub(super) fn target(&self) -> Target<'_> {
        let file = self
            .notice
            .files
            .get(self.file)
            .filter(|_| self.notice.is_package());
        let mqtt = |file_id, size| match self.notice.transfer {
            Transfer::Http => None,
            Transfer::Mqtt { stream_id, .. } => Some(MqttFile {
                stream_id,
                file_id,
                size,
            }),
        };
        match file {
            Some(f) => Target {
                url: f.url.as_str(),
                mqtt: mqtt(f.stream_file_id, f.size),
                size: f.size,
                kind: f.digest_kind,
                digest: f.digest(),
            },
            None => Target {
                url: self.notice.url.as_str(),
                mqtt: match self.notice.transfer {
                    Transfer::Http => None,
                    Transfer::Mqtt { file_id, .. } => mqtt(file_id, self.notice.size),
                },
                size: self.notice.size,
                kind: self.notice.digest_kind,
                digest: self.notice.digest(),
            },
        }
    }

    /// A new download of the current target, from byte 0.
    pub(super) fn new_download(&self) -> Download {
        let t = self.target();
        let mut d = Download::new(t.kind, t.size, self.retry, &self.policy);
        d.delta = DeltaCycle::new(self.delta_budget.is_some());
        d
    }

    /// Whether a file of the package follows the current one.
    pub(super) fn more_files(&self) -> bool {
        self.notice.is_package() && self.file + 1 < self.notice.files.len()
    }

    /// The firmware judged the current file good and another follows: it starts at the next
    /// `is_fetching`.
    pub(super) fn file_judged_good(&mut self) {
        self.next_file = true;
        // A restart before the next file starts resumes there, not in this one.
        self.record_file_start(self.file + 1);
    }

    /// Starts the package's next file (the firmware saw the last one end and judged it good).
    pub(super) fn start_next_file(&mut self) {
        self.next_file = false;
        self.files_done += self.target().size;
        self.file += 1;
        self.abandon_request();
        self.download = self.new_download();
        self.state = OtaState::Downloading;
        // The transfer of the last file gave its slot back.
        self.download.needs_slot = self.member.is_some();
        self.record_file_start(self.file);
        let name = self
            .notice
            .files
            .get(self.file)
            .map_or("", |f| f.name.as_str());
        ota_log!(
            Level::Info,
            "package {}: file {} of {} ({name}, {} bytes)",
            self.notice.version,
            self.file + 1,
            self.notice.files.len(),
            self.target().size
        );
    }

    /// A package resumed after a restart at file `index` (the record's): that file's download,
    /// from byte 0 until the record's offset and digest state are put in.
    pub(super) fn resume_package_at(&mut self, index: usize) {
        self.file = index;
        self.files_done = self.notice.files.as_slice()[..index]
            .iter()
            .map(|f| f.size)
            .sum();
        // Nothing else of the download has started yet (a package is never streamed from
        // another session's kept copy: it has no digest of its own to share it by).
        self.download = self.new_download();
        let name = self
            .notice
            .files
            .get(self.file)
            .map_or("", |f| f.name.as_str());
        ota_log!(
            Level::Info,
            "package {}: resuming at file {} of {} ({name}, {} bytes)",
            self.notice.version,
            self.file + 1,
            self.notice.files.len(),
            self.target().size
        );
    }

    /// The platform's progress for `percent` of the current file: byte-weighted over the
    /// package (the file's own percent for a single image).
    pub(super) fn package_percent(&self, percent: u8) -> u8 {
        if !self.notice.is_package() || self.notice.size == 0 {
            return percent;
        }
        let done = self.files_done + self.target().size * u64::from(percent) / 100;
        (done * 100 / self.notice.size).min(100) as u8
    }
}
