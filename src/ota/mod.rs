//! The upgrade state machine: idle → fetching → fetched (verified or failed).
//!
//! **The stream invariant.** Between `is_fetching` turning true and `is_fetch_finished` turning
//! true, the bytes `fetch_yield` returns, concatenated, are bytes `start..n` of one image, where
//! `start` is `fetched_size()` read when the cycle began (0, or the breakpoint record's offset
//! after a restart): no gap, no repeat, no restart. `check_firmware` is true only when those
//! bytes reach the announced size and their digest matches. Every recovery keeps this true or
//! ends the cycle: a server that ignores `Range` has the skipped bytes discarded here, a
//! different upgrade ends the cycle (it starts as the next one), a breakpoint record never
//! covers bytes not yet handed to the caller. Firmware that appends what it gets and never
//! rewinds (the iotkit sample) is therefore always right.
//!
//! | state    | event                                         | next     | effect                                     |
//! |----------|-----------------------------------------------|----------|--------------------------------------------|
//! | idle     | valid upgrade                                 | fetching | new download, first cycle (from the record's offset or 0); UCloud acknowledges the task |
//! | idle     | valid upgrade, and the MQTT client's other sessions hold every download slot (or download the same image) | waiting | acknowledged as above; nothing else reported; queued in arrival order (see [`Gateway`]) |
//! | waiting  | `is_fetching` when its turn has come          | fetching | its download starts: from the network (a slot), or streaming another session's kept copy |
//! | waiting  | same upgrade again                            | waiting  | takes the fresh URL                        |
//! | waiting  | different upgrade                             | waiting  | the waiting one is reported superseded; the new one takes its place in the queue |
//! | waiting  | `release` (`IOT_OTA_Deinit`)                  | fetched  | leaves the queue, nothing reported         |
//! | any      | upgrade refused (SagooIOT `dProtocol` or unknown `signMethod`, UCloud `CurrentVersion` not running) | same | failure report naming why; `last_error` set |
//! | any      | invalid message, or one on another topic      | same     | error logged, `last_error` set             |
//! | any      | message not acted on (unknown Tencent `type` or UCloud `Method`, `report_version_rsp` 0) | same | nothing (a non-zero `report_version_rsp` sets `last_error`) |
//! | fetching | same upgrade again                            | fetching | keeps the offset; takes the fresh URL      |
//! | fetching | different upgrade                             | fetched  | reported superseded; the new one waits     |
//! | fetched  | the verified image announced again            | fetched  | ignored                                    |
//! | fetched  | any other upgrade                             | fetched  | waits until the caller saw the end (the latest one waits) |
//! | fetched  | `is_fetching` after the end was seen          | fetching | the waiting upgrade starts a new download  |
//! | fetching | bytes arrive                                  | fetching | digest updated                             |
//! | fetching | last announced byte arrives                   | fetched  | digest and size checked; if bad, verify-failed report (Aliyun step −3) |
//! | fetching | transient download error                      | fetching | retried from the offset with `Range` after a backoff |
//! | fetching | another session's kept copy unusable (mismatch before any byte, read error, withdrawn) | fetching | said once; the network from the same offset, after a slot |
//! | fetching | server ignored `Range`                        | fetching | the first `offset` bytes are discarded     |
//! | fetching | HTTP 403 (Aliyun, running version known)      | fetching | fresh URL requested; −2 only if none       |
//! | fetching | download fails for good / caller reports < 0  | fetched  | one failure report; `check_firmware` false |
//! | fetching | caller reports −2 after a `fetch_yield` of 0  | fetching | held: the SDK's own report follows if the download fails |
//! | fetched  | caller reports < 0                            | fetched  | one failure report per cycle (later ones dropped) |
//! | fetching, or fetched unverified | `start_download(offset)` | fetching | new cycle of the same download (digest kept); next request from `offset`; checked at once when `offset` is the size |
//! | fetching | `release` (`IOT_OTA_Deinit`)                  | fetched  | download ends, nothing reported            |
//!
//! A session that is not attached to an MQTT client ([`OtaSession::new`]) never waits.
//!
//! "The end was seen": `is_fetch_finished` returned true, or `check_firmware` was called. The
//! messages each platform sends for these events: `docs/protocols.md`.
//!
//! "New download": the engine's per-upgrade state (offset, digest, retries, once-per-upgrade
//! reports) is one `Download` value, replaced whole; a "new cycle" replaces only its `Cycle`
//! (see `download.rs` for which fields are which).
//!
//! All buffers are allocated in [`OtaSession::new`]; afterwards the session only writes into
//! them and into the caller's buffers.

mod breakpoint;
mod delta;
mod download;
mod fetch_call;
mod gateway;
mod outbox;
mod package;
mod sharing;
mod support;

use breakpoint::{RecordKeeper, StoreWriter};
use delta::DeltaSide;
pub use delta::{DeltaOptions, PATCH_BUFFER};
use download::{Cycle, Download};
use fetch_call::{FetchCall, SourceSide, Step};
pub use gateway::{Gateway, LocalImage, Waiting, MAX_SESSIONS_PER_CLIENT};
use gateway::{ImageId, Membership};
use outbox::{Deferred, Outbox};
pub use support::Once;
use support::{DescText, RunningVersions};

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::digest::{to_hex, DigestKind, StreamDigest};
use crate::error::{Error, Result};
use crate::image::{ImageError, ImagePolicy, ImageVerifier, VerifiedImage};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::mqtt_download::URL_MAX;
use crate::protocol::{
    self, Channel, Downstream, FailureCause, Limits, NoticeError, Protocol, Report, Topics,
    Transfer, UpgradeNotice,
};
use crate::resume::{BreakpointStore, SavePolicy};
use crate::retry::{Backoff, RetryPolicy};
use crate::source::{
    Chunk, DownloadError, FirmwareSource, HttpConfig, MqttDownloadConfig, OpenInfo,
};

/// Where the session's upstream messages go (an MQTT client, or memory in tests).
pub trait Uplink: Send {
    /// Sends `payload` on `topic` (QoS 1), or says why not. An error keeps the message: the
    /// session holds the latest one per channel and sends it again after a reconnection.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()>;

    /// Whether the connection runs over TLS with the broker verified, so the upgrade message
    /// (and the digest in it) came authenticated. Decides what a plain `http://` download's log
    /// line says protects the image. Default: false.
    fn authenticated(&self) -> bool {
        false
    }
}

/// Session settings fixed at init.
#[derive(Debug, Clone)]
pub struct OtaConfig {
    /// The platform whose topics and messages the session speaks.
    pub protocol: Protocol,
    /// Longest field values accepted in upgrade messages, and the report buffer sizes.
    pub limits: Limits,
    /// How the firmware is downloaded (timeouts, redirects, CA, buffer sizes).
    pub http: HttpConfig,
    /// How broken downloads are retried (with `Range`, from where they stopped).
    pub retry: RetryPolicy,
    /// How long an expired URL (HTTP 403) waits for the platform's fresh one before the
    /// download fails (Aliyun, which the SDK can ask for one; other platforms fail at once).
    pub fresh_url_wait: Duration,
    /// Which images are accepted beyond the platform's digest: vendor keys, whether an MCUboot
    /// signature is required, anti-downgrade (see [`crate::image`]). Default: nothing required,
    /// so unchanged firmware behaves as before; an MCUboot image still has its own hash checked.
    pub image: ImagePolicy,
    /// Confirm after boot: with N > 0 (and a breakpoint store), the upgrade's success waits
    /// after the reboot until the firmware calls [`OtaSession::confirm_image`]; N boots into
    /// the new image without it, or [`OtaSession::reject_image`], fail the upgrade and tell the
    /// firmware to roll back. 0 (the default): success at the first report of the new version,
    /// as iotkit.
    pub confirm_boots: u16,
    /// Download over MQTT (`dProtocol` `mqtt`, Aliyun and SagooIOT): `Some` makes the block
    /// source when the session is attached to an MQTT client (its block buffer and the reply
    /// topic's subscription; see [`OtaSession::enable_mqtt_download`]). `None`, the default,
    /// refuses such upgrades with a failure report: the block buffer costs a block's bytes per
    /// session, and platforms send MQTT downloads only to products set up for them.
    pub mqtt_download: Option<MqttDownloadConfig>,
}

/// Where the image running since the last boot stands in the confirm-after-boot flow (see
/// [`OtaConfig::confirm_boots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootState {
    /// No upgrade was pending at this boot (or the flow is off and it completed at once).
    None,
    /// The new image runs and waits for [`OtaSession::confirm_image`]; `boots` counts the boots
    /// into it so far (this one included).
    PendingConfirm {
        /// Boots into the new image without a confirmation, this one included.
        boots: u16,
    },
    /// The firmware confirmed the new image; the success was reported.
    Confirmed,
    /// The firmware must roll back: it rejected the image, or booted it too often without a
    /// confirmation. The failure was reported.
    RollBack,
    /// The device booted another version than the pending one (the bootloader rolled back);
    /// the failure was reported.
    RolledBack,
}

/// Most files [`OtaSession::set_max_files`] accepts (each costs a URL's room in three notices).
/// cbindgen:ignore
pub const MAX_FILES: usize = 16;
// A package's breakpoint record holds any package the session accepts.
const _: () = assert!(MAX_FILES <= crate::resume::MAX_PACKAGE_FILES);

/// Why a `files` array is refused while packages are off (`max_files` 0).
const PACKAGES_OFF: &str =
    "files: packages of several files are off (IOT_OTAC_MAX_FILES / OtaSession::set_max_files)";

/// Why a download over MQTT is refused while no block source is installed.
const MQTT_DOWNLOAD_OFF: &str =
    "dProtocol: download over MQTT is off (IOT_OTAC_MQTT_BLOCK_SIZE / OtaConfig::mqtt_download)";

/// How often a download under way that needs a slot looks for a free one.
const SLOT_POLL: Duration = Duration::from_millis(20);

/// Longest [`OtaConfig::fresh_url_wait`] accepted: an hour.
pub const MAX_FRESH_URL_WAIT: Duration = Duration::from_secs(3600);

/// Whether a fresh-URL wait is within [`MAX_FRESH_URL_WAIT`].
fn check_fresh_url_wait(wait: Duration) -> Result<()> {
    if wait > MAX_FRESH_URL_WAIT {
        return Err(Error::InvalidParam("fresh URL wait above 3600 seconds"));
    }
    Ok(())
}

/// Default of [`OtaConfig::fresh_url_wait`]: the platform answers a request in well under a
/// second; a minute covers a congested cellular link without leaving the firmware hanging.
pub const FRESH_URL_WAIT: Duration = Duration::from_secs(60);

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            protocol: Protocol::Aliyun,
            limits: Limits::default(),
            http: HttpConfig::default(),
            retry: RetryPolicy::default(),
            image: ImagePolicy::default(),
            confirm_boots: 0,
            fresh_url_wait: FRESH_URL_WAIT,
            mqtt_download: None,
        }
    }
}

impl OtaConfig {
    /// The defaults, speaking `protocol`.
    pub fn for_protocol(protocol: Protocol) -> Self {
        OtaConfig {
            protocol,
            ..Self::default()
        }
    }
}

/// Where a session is in an upgrade (the C `IOT_OTA_State_t` is derived from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaState {
    /// No upgrade accepted yet.
    Idle,
    /// An upgrade was accepted and waits to start (see [`Waiting`]): other sessions on the
    /// MQTT client take the download slots, or download or read the same image.
    Waiting,
    /// An upgrade was accepted; `fetch_yield` downloads it.
    Downloading,
    /// The download ended: completely (then verified) or by a failure.
    Fetched,
}

struct Engine {
    protocol: Protocol,
    limits: Limits,
    out: Outbox,
    state: OtaState,
    /// The accepted upgrade.
    notice: UpgradeNotice,
    /// Decoding target; swapped with `notice` when valid, so a bad message changes nothing.
    scratch: UpgradeNotice,
    /// An upgrade that arrived after the current cycle ended (or ended it): it starts when the
    /// caller, having seen that end, asks `is_fetching` again.
    next: UpgradeNotice,
    next_pending: bool,
    /// The download of the accepted upgrade, replaced whole when the next one is accepted.
    download: Download,
    /// The versions the device last reported as running, per module.
    running: RunningVersions,
    /// How each download is retried.
    retry: RetryPolicy,
    fresh_url_wait: Duration,
    /// Which images are accepted beyond the platform's digest (keys allocated at init).
    policy: ImagePolicy,
    /// Boots into a new image allowed before its confirmation (0: no confirmation; success at
    /// the first report of the new version).
    confirm_boots: u16,
    /// Where the image running since the last boot stands in the confirm-after-boot flow.
    boot_state: BootState,
    /// Where the breakpoint record lives across restarts (opt-in).
    keeper: RecordKeeper,
    /// Bumped whenever the current request must be abandoned; the caller of `fetch_yield`
    /// closes a source opened for an older request (the source is not behind this lock). Counts across
    /// downloads: a read in flight for the last download's request is recognised as stale.
    request: u64,
    last_error: Option<Error>,
    /// The session's place among the sessions on its MQTT client (None: not attached).
    member: Option<Membership>,
    /// Why the accepted upgrade has not started (state `Waiting`).
    waiting: Waiting,
    /// The file of a package the current cycle fetches (0 for a single image), and the bytes
    /// of the files before it (see `package.rs`).
    file: usize,
    files_done: u64,
    /// The firmware judged the current file good: the next one starts at `is_fetching`.
    next_file: bool,
    /// Whether an MQTT block source is installed: downloads over MQTT are accepted.
    mqtt_download: bool,
    /// The delta applier's budget, when a delta source is set.
    delta_budget: Option<crate::delta::DeltaBudget>,
}

impl Engine {
    fn fail(&mut self, e: Error) -> Error {
        ota_log!(Level::Error, "{e}");
        self.last_error = Some(e);
        e
    }

    fn handle_message(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        if topic != self.out.topics.downstream {
            ota_log!(
                Level::Error,
                "message on unexpected topic {topic:?} ignored"
            );
            self.last_error = Some(Error::InvalidParam("topic"));
            return Err(Error::InvalidParam("topic"));
        }
        match self.decode(payload) {
            Err(e @ NoticeError::Unsupported(_)) => return Err(self.refuse(e)),
            Err(e) => return Err(self.fail(Error::Notice(e))),
            Ok(Downstream::Ignored) => return Ok(()),
            Ok(Downstream::VersionAck { result_code: 0 }) => return Ok(()),
            Ok(Downstream::VersionAck { result_code }) => {
                return Err(self.fail(Error::VersionRefused(result_code)))
            }
            Ok(Downstream::Upgrade) => {}
        }
        if !self.runs_current_version() {
            return Err(self.refuse(NoticeError::NotForRunningVersion));
        }
        match self.state {
            OtaState::Downloading if self.scratch.same_image(&self.notice) => self.renewed(),
            OtaState::Downloading => {
                self.supersede();
                self.hold_next();
            }
            OtaState::Fetched
                if self.download.verified && self.scratch.same_image(&self.notice) =>
            {
                ota_log!(
                    Level::Info,
                    "upgrade to {} announced again; the image is already verified",
                    self.notice.version
                );
            }
            OtaState::Fetched => self.hold_next(),
            OtaState::Waiting if self.scratch.same_image(&self.notice) => {
                self.take_fresh_urls();
                self.try_start();
            }
            OtaState::Waiting => self.replace_waiting(),
            OtaState::Idle => {
                std::mem::swap(&mut self.notice, &mut self.scratch);
                self.accept_notice();
            }
        }
        Ok(())
    }

    /// The upgrade being fetched was announced again: the download goes on, with the fresh
    /// URL (which ends a wait for one after an expiry).
    fn renewed(&mut self) {
        self.take_fresh_urls();
        if self.download.cycle.url_wait_until.take().is_some() {
            ota_log!(
                Level::Info,
                "fresh URL for {} received: resuming at byte {}",
                self.notice.version,
                self.download.fetched
            );
            self.abandon_request();
            self.download.retry_at = None;
            return;
        }
        ota_log!(
            Level::Info,
            "upgrade to {} announced again; download continues at byte {}",
            self.notice.version,
            self.download.fetched
        );
    }

    /// The same upgrade again: its URLs (a package's every file's) replace the current ones.
    fn take_fresh_urls(&mut self) {
        std::mem::swap(&mut self.notice.url, &mut self.scratch.url);
        // Same image: the same files in the same order, so the lists differ only in URLs.
        std::mem::swap(&mut self.notice.files, &mut self.scratch.files);
    }

    /// Decodes into `scratch`, refusing a download over MQTT while that is off (with no block
    /// source installed), whatever else is wrong with the message: it may lack a field only
    /// such a download needs; and a package of several files while packages are off
    /// (`max_files` 0).
    fn decode(&mut self, payload: &[u8]) -> std::result::Result<Downstream, NoticeError> {
        // The decoders mark a download over MQTT first; a message that never reaches that
        // point (not JSON, not an upgrade) leaves HTTP.
        self.scratch.transfer = Transfer::Http;
        let r = protocol::decode(self.protocol, payload, &self.limits, &mut self.scratch);
        if !self.mqtt_download && matches!(self.scratch.transfer, Transfer::Mqtt { .. }) {
            return Err(NoticeError::Unsupported(MQTT_DOWNLOAD_OFF));
        }
        match r {
            Err(NoticeError::TooManyFiles { max: 0, .. }) => {
                Err(NoticeError::Unsupported(PACKAGES_OFF))
            }
            other => other,
        }
    }

    fn check_mqtt_download_settable(&mut self) -> Result<()> {
        if !self.protocol.carries_packages() {
            return Err(self.fail(Error::InvalidParam(
                "the platform has no download over MQTT",
            )));
        }
        if self.state != OtaState::Idle {
            return Err(self.fail(Error::InvalidState(
                "download over MQTT is turned on or off before the first upgrade",
            )));
        }
        Ok(())
    }

    /// Keeps the decoded upgrade until the caller has seen the current cycle end.
    fn hold_next(&mut self) {
        if self.next_pending && self.scratch.same_image(&self.next) {
            std::mem::swap(&mut self.next.url, &mut self.scratch.url);
            return;
        }
        std::mem::swap(&mut self.next, &mut self.scratch);
        self.next_pending = true;
        ota_log!(
            Level::Info,
            "upgrade to {} waits for the end of the current cycle",
            self.next.version
        );
    }

    /// Starts the waiting upgrade once the caller saw the last cycle end, or one that waits
    /// for its turn among the sessions on the MQTT client.
    fn start_next_if_due(&mut self) {
        if self.state == OtaState::Waiting {
            self.try_start();
        } else if self.state == OtaState::Fetched && self.next_file && self.download.cycle.end_seen
        {
            self.start_next_file();
        } else if self.state == OtaState::Fetched
            && self.next_pending
            && self.download.cycle.end_seen
        {
            self.next_pending = false;
            std::mem::swap(&mut self.notice, &mut self.next);
            self.accept_notice();
        }
    }

    /// Makes the (already swapped-in) notice the current upgrade, acknowledges it, and starts
    /// its download unless it must wait for its turn.
    fn accept_notice(&mut self) {
        self.abandon_request();
        self.file = 0;
        self.files_done = 0;
        self.next_file = false;
        self.download = self.new_download();
        self.state = OtaState::Waiting;
        self.waiting = Waiting::No;
        ota_log!(
            Level::Info,
            "upgrade accepted: version {} module {} size {}",
            self.notice.version,
            self.notice.module_name(),
            self.notice.size
        );
        // Receipt only (UCloud's notify): true whether it starts now or waits.
        let r = self.out.send(Report::Accepted {
            notice: &self.notice,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "acknowledgement not sent: {e}");
        }
        self.try_start();
    }

    fn check_version(&self, version: &str) -> Result<()> {
        if version.is_empty() {
            return Err(Error::InvalidParam("version is empty"));
        }
        if version.len() > self.limits.version {
            return Err(Error::TooLong {
                what: "version",
                len: version.len(),
                max: self.limits.version,
            });
        }
        Ok(())
    }

    fn module_arg(module: Option<&str>) -> Option<&str> {
        module.filter(|m| !m.is_empty() && *m != "default")
    }

    fn report_version(&mut self, version: &str, module: Option<&str>) -> Result<()> {
        self.check_version(version).map_err(|e| self.fail(e))?;
        if let Some(m) = module {
            if m.len() > self.limits.module {
                let e = Error::TooLong {
                    what: "module",
                    len: m.len(),
                    max: self.limits.module,
                };
                return Err(self.fail(e));
            }
        }
        let module = Self::module_arg(module);
        if self.complete_pending_reboot(version, module)? {
            self.running.record(module.unwrap_or("default"), version);
            return Ok(());
        }
        let r = self.out.send(Report::Version { version, module });
        if r.is_ok() {
            self.running.record(module.unwrap_or("default"), version);
        }
        r.map_err(|e| self.fail(e))
    }

    fn request_image(&mut self, version: &str) -> Result<()> {
        self.check_version(version).map_err(|e| self.fail(e))?;
        self.out
            .send(Report::Request {
                version,
                module: None,
            })
            .map_err(|e| self.fail(e))
    }

    /// Checks that an upgrade report may go out now.
    fn check_upgrade_report(&mut self, failing: bool) -> Result<bool> {
        if self.state == OtaState::Idle {
            return Err(self.fail(Error::InvalidState("no upgrade in progress")));
        }
        if self.download.cycle.failure_reported {
            if failing {
                if self.download.quiet.first(Once::DroppedReport) {
                    ota_log!(
                        Level::Info,
                        "failure of the upgrade to {} already reported: later failure reports are dropped",
                        self.notice.version
                    );
                }
                return Ok(false);
            }
            return Err(self.fail(Error::InvalidState("this upgrade already failed")));
        }
        Ok(true)
    }

    fn report_progress(&mut self, step: i32, desc: Option<&str>) -> Result<()> {
        if !(-4..=100).contains(&step) {
            return Err(self.fail(Error::InvalidParam("progress must be -4 ..= 100")));
        }
        if step < 0 {
            return self.caller_failure(step, desc.unwrap_or(""));
        }
        if !self.check_upgrade_report(false)? {
            return Ok(());
        }
        if step == 0 && !self.protocol.sends_zero_percent() {
            if self.download.quiet.first(Once::ZeroPercent) {
                ota_log!(
                    Level::Debug,
                    "0 % progress not sent: the platform's steps run 1..100"
                );
            }
            return Ok(());
        }
        let r = self.out.send(Report::Progress {
            percent: self.package_percent(step as u8),
            desc: desc.unwrap_or(""),
            notice: &self.notice,
        });
        r.map_err(|e| self.fail(e))
    }

    /// A negative step from the caller. "Fetch failed" right after a `fetch_yield` that
    /// returned 0 (nothing yet, the SDK still at work) is held: the download goes on, and if it
    /// fails after all the SDK's own report, naming the cause, is the one the platform gets.
    /// After a `fetch_yield` that returned 0 and ended the download whole (a delta patch's
    /// last bytes, read after the image's), it is dropped: nothing failed. Any other failure
    /// ends the cycle and is reported (once per cycle).
    fn caller_failure(&mut self, step: i32, desc: &str) -> Result<()> {
        let completed = self.state == OtaState::Fetched && self.download.cycle.end_error.is_none();
        if completed && step == -2 && self.download.last_yield_empty {
            ota_log!(
                Level::Info,
                "\"fetch failed\" after the FetchYield that completed the download is dropped"
            );
            return Ok(());
        }
        if self.state == OtaState::Downloading && step == -2 && self.download.last_yield_empty {
            if self.download.quiet.first(Once::HeldReport) {
                ota_log!(
                    Level::Info,
                    "\"fetch failed\" after a FetchYield that returned 0 is held: the download is still being recovered"
                );
            }
            return Ok(());
        }
        let cause = match (step, self.download.cycle.failure_cause) {
            (-2, Some(cause)) => cause,
            _ => FailureCause::from_step(step),
        };
        if self.state == OtaState::Downloading {
            self.end_cycle(Error::Download(DownloadError::Abandoned), cause);
        }
        self.report_failure(cause, desc)
    }

    /// Tells the platform this upgrade failed, once.
    fn report_failure(&mut self, cause: FailureCause, desc: &str) -> Result<()> {
        if cause == FailureCause::BurnFailed {
            // The device stays on its old firmware: nothing is pending any more.
            self.keeper.erase();
        }
        if !self.check_upgrade_report(true)? {
            return Ok(());
        }
        self.download.cycle.failure_reported = true;
        let r = self.out.send(Report::Failure {
            cause,
            desc,
            notice: &self.notice,
        });
        r.map_err(|e| self.fail(e))
    }

    /// Sends a failure the SDK detected itself; a send error is logged, not returned.
    fn auto_report_failure(&mut self, cause: FailureCause, desc: &str) {
        if let Err(e) = self.report_failure(cause, desc) {
            ota_log!(Level::Warning, "failure report not sent: {e}");
        }
    }

    /// Sends the protocol's "download started" report once per upgrade.
    fn ensure_upgrading_reported(&mut self) -> Result<()> {
        if self.download.upgrading_reported {
            return Ok(());
        }
        self.download.upgrading_reported = true;
        let r = self.out.send(Report::Upgrading {
            notice: &self.notice,
        });
        r.map_err(|e| self.fail(e))
    }

    /// The image is downloaded; flashing begins.
    fn report_upgrade_begin(&mut self) -> Result<()> {
        if !self.check_upgrade_report(false)? {
            return Ok(());
        }
        self.ensure_upgrading_reported()?;
        if self.state == OtaState::Fetched && self.download.verified {
            self.record_pending_reboot();
        }
        let r = self.out.send(Report::Burning {
            notice: &self.notice,
        });
        r.map_err(|e| self.fail(e))
    }

    /// The upgrade to `version` succeeded.
    fn report_upgrade_success(&mut self, version: &str) -> Result<()> {
        self.check_version(version).map_err(|e| self.fail(e))?;
        if !self.check_upgrade_report(false)? {
            return Ok(());
        }
        self.keeper.erase();
        let r = self.out.send(Report::Success {
            version,
            notice: &self.notice,
        });
        if r.is_ok() {
            self.running.record(self.notice.module_name(), version);
        }
        r.map_err(|e| self.fail(e))
    }

    /// Ends the cycle without a verified image; `fetch_yield` returns `e` from now on.
    fn end_cycle(&mut self, e: Error, cause: FailureCause) {
        self.abandon_request();
        self.state = OtaState::Fetched;
        self.transfer_ended(false);
        // Only why it ended is recorded: `verified` is false throughout a cycle, and its URL
        // wait and skip are never read once it ended (the next cycle starts from new values).
        self.download.cycle.failure_cause = Some(cause);
        self.download.cycle.end_error = Some(e);
        self.last_error = Some(e);
    }

    /// A failure the platform should hear about: logs, records, reports it, ends the fetch.
    fn abort_fetch(&mut self, e: Error, cause: FailureCause, desc: &str) -> Error {
        self.fail(e);
        self.end_cycle(e, cause);
        self.auto_report_failure(cause, desc);
        self.last_error = Some(e);
        e
    }

    /// Notes how a `fetch_yield` call ended (for the caller's "fetch failed" that may follow).
    fn fetch_returned(&mut self, r: &Result<usize>) {
        self.download.last_yield_empty = matches!(r, Ok(0));
    }

    /// `fetch_yield` outside a cycle: the error that ended it (said once), else a state error.
    fn fetch_after_end(&mut self) -> Error {
        match self.download.cycle.end_error {
            Some(e) if self.state == OtaState::Fetched => {
                if self.download.quiet.first(Once::EndedFetch) {
                    ota_log!(Level::Error, "FetchYield after the download ended: {e}");
                }
                self.last_error = Some(e);
                e
            }
            _ => self.fail(Error::InvalidState("no download in progress")),
        }
    }

    /// Abandons the request in flight, if any: the caller of `fetch_yield` closes the source.
    fn abandon_request(&mut self) {
        self.download.source_open = false;
        self.request += 1;
    }

    /// The bookkeeping that opens a `fetch_yield` call.
    fn begin_fetch_call(&mut self, buf_len: usize, delta: Option<&mut DeltaSide>) -> Result<()> {
        if self.state != OtaState::Downloading {
            return Err(self.fetch_after_end());
        }
        if buf_len == 0 {
            return Err(self.fail(Error::InvalidParam("buffer is empty")));
        }
        // A patch resumed from the record: its applier continues from the saved state.
        let delta = self.restore_applier(delta)?;
        // Only here, before new bytes: the record covers what earlier calls returned.
        // (With a delta source, only when no received byte waits to be handed out.)
        if self.download.delta.held == 0
            && self.keeper.due(self.download.fetched, self.target().size)
        {
            self.save_progress(delta);
        }
        if std::mem::take(&mut self.download.stalled) && self.download.source_open {
            self.interrupted(DownloadError::Timeout)?;
        }
        if let Err(e) = self.ensure_upgrading_reported() {
            ota_log!(Level::Warning, "upgrading report not sent: {e}");
        }
        // A progress report held for a full request queue goes out once the queue has room
        // (reports held while the broker was away wait for `on_reconnect`, which re-reports
        // the versions unless a held version report went then).
        self.out.flush(Channel::Progress);
        Ok(())
    }

    /// What the caller of `fetch_yield` does next, outside this lock. Closes a source left open
    /// for an abandoned request first.
    fn next_step(&mut self, side: &mut SourceSide, call: &FetchCall) -> Step {
        if side.open_request.is_some_and(|s| s != self.request) {
            side.close();
        }
        if self.state != OtaState::Downloading {
            return Step::Done(Err(self.fetch_after_end()));
        }
        if let Some(d) = side.delta.as_mut() {
            match self.delta_step(d) {
                Some(Ok(mode)) => {
                    return Step::Hand {
                        request: self.request,
                        want: call.buf_len,
                        mode,
                    }
                }
                Some(Err(e)) => return Step::Done(Err(e)),
                None => {}
            }
        }
        let now = Instant::now();
        if let Some(until) = self.download.cycle.url_wait_until {
            if now >= until {
                return Step::Done(Err(self.fresh_url_missing()));
            }
            if now >= call.deadline {
                return Step::Done(Ok(0));
            }
            return Step::Sleep(call.deadline.min(until));
        }
        if let Some(at) = self.download.retry_at {
            if at >= call.deadline {
                if now >= call.deadline {
                    return Step::Done(Ok(0));
                }
                return Step::Sleep(call.deadline);
            }
            if now < at {
                return Step::Sleep(at);
            }
            self.download.retry_at = None;
        }
        if self.download.needs_slot {
            let image = ImageId::of(&self.notice);
            if !self.member.as_ref().is_none_or(|m| m.take_slot(image)) {
                if now >= call.deadline {
                    return Step::Done(Ok(0));
                }
                return Step::Sleep(call.deadline.min(now + SLOT_POLL));
            }
            self.download.needs_slot = false;
        }
        if side.open_request.is_none() {
            let target = self.target();
            match &self.download.local {
                Some((shelf, _)) => side.use_local(shelf, ImageId::of(&self.notice)),
                None => side.use_network(target.mqtt.is_some()),
            }
            // A download from its first byte starts with an empty patch buffer.
            if let (Some(d), 0) = (side.delta.as_mut(), self.download.fetched) {
                d.reset();
            }
            // An open never waits on the network (the FirmwareSource contract), so it runs
            // here, with the URL where it is (an MQTT file's is written on the stack).
            let mut mqtt_url = [0; URL_MAX];
            let url = match target.mqtt {
                Some(file) => file.write_url(&mut mqtt_url),
                None => target.url,
            };
            let r = side.active().open(url, self.download.fetched);
            side.open_request = Some(self.request);
            if let Err(e) = self.opened(r) {
                return Step::Done(Err(e));
            }
            // A failed open scheduled a retry (or a wait for a fresh URL): go round again.
            return Step::Sleep(now);
        }
        // While skipping, read no further than the skip: what follows is the caller's.
        let remaining = match self.download.skip {
            0 => self.target().size - self.download.fetched,
            skip => skip,
        };
        // Bytes that are not a patch go to the caller in the call that reads them: no more
        // than its buffer takes beside what is pending. A patch is read a caller's buffer at a
        // time too (at most the patch buffer): the breakpoint record is written when the
        // buffer is empty, so smaller reads give a power loss a nearer point to resume from.
        let buf_len = match (&side.delta, self.download.delta.mode) {
            (Some(d), delta::Mode::Plain | delta::Mode::Undecided) => {
                call.buf_len.saturating_sub(d.pending()).max(1)
            }
            _ => call.buf_len,
        };
        let stall_at = self.download.last_progress + self.retry.stall_timeout;
        Step::Read {
            request: self.request,
            want: buf_len.min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            wait: call.deadline.min(stall_at).saturating_duration_since(now),
            stall_at,
        }
    }

    /// The source's answer to an open of the current request.
    fn opened(&mut self, r: Result<(), DownloadError>) -> Result<()> {
        match r {
            Ok(()) => {
                // A kept image streamed locally never touches the network.
                if self.download.local.is_none() && self.download.quiet.first(Once::PlainHttp) {
                    self.say_what_protects_plain_http();
                }
                // Every request starts here, before any of its bytes is read.
                self.download.source_open = true;
                self.download.skip = 0;
                self.download.last_progress = Instant::now();
                Ok(())
            }
            Err(e) => self.interrupted(e),
        }
    }

    /// The one line per upgrade a plain `http://` download gets: what protects the image.
    fn say_what_protects_plain_http(&self) {
        if !crate::source::is_plain_http(self.target().url) {
            return;
        }
        if self.policy.require_signature {
            ota_log!(
                Level::Info,
                "firmware download over plain http:// (not encrypted): the image must carry a \
                 valid signature of a configured key"
            );
        } else if self.out.uplink.authenticated() {
            ota_log!(
                Level::Info,
                "firmware download over plain http:// (not encrypted): the image is checked \
                 against the {} digest that came over MQTT on TLS",
                self.target().kind.name()
            );
        } else {
            ota_log!(
                Level::Warning,
                "firmware download over plain http:// with MQTT on plain TCP: nothing protects \
                 this image from substitution on the path (use TLS, HTTPS or signed images)"
            );
        }
    }

    /// The source's answer to a read of `request` into `buf`: the call's result, or None to go
    /// on.
    fn took(
        &mut self,
        request: u64,
        r: Result<Chunk, DownloadError>,
        buf: &[u8],
        stall_at: Instant,
        call: &FetchCall,
    ) -> Option<Result<usize>> {
        if request != self.request || self.state != OtaState::Downloading {
            return None; // abandoned meanwhile (a supersede, a failure report): not ours
        }
        let r = match r {
            // A kept image being checked before its bytes are handed out: progress.
            Ok(Chunk::Pending) if self.download.local.is_some() => {
                self.download.last_progress = Instant::now();
                if Instant::now() >= call.deadline {
                    return Some(Ok(0));
                }
                Ok(())
            }
            Err(DownloadError::LocalImage(why)) => {
                self.local_failed(why);
                Ok(())
            }
            Ok(Chunk::Opened(info)) => self.check_response(info),
            Ok(Chunk::Data(n)) if self.download.skip > 0 => {
                self.discard(n);
                Ok(())
            }
            Ok(Chunk::Data(n)) => {
                self.download.backoff.progressed();
                self.download.url_requests = 0;
                self.download.last_progress = Instant::now();
                return Some(self.accept(&buf[..n]));
            }
            Ok(Chunk::Pending) if Instant::now() >= stall_at => {
                self.interrupted(DownloadError::Timeout)
            }
            Ok(Chunk::Pending) if Instant::now() >= call.deadline => {
                // A whole (non-zero) wait without a byte: the connection stalled.
                self.download.stalled = !call.timeout.is_zero()
                    && self.download.last_progress + call.timeout <= call.deadline;
                return Some(Ok(0));
            }
            Ok(Chunk::Pending) => Ok(()),
            Ok(Chunk::End) => self.interrupted(DownloadError::Truncated),
            Err(e) => self.interrupted(e),
        };
        r.err().map(Err)
    }

    /// Drops `n` bytes (never more than `skip`) of a whole-file answer the caller already has.
    fn discard(&mut self, n: usize) {
        self.download.skip -= n as u64;
        self.download.last_progress = Instant::now();
        if self.download.skip == 0 {
            self.download.backoff.progressed();
        }
    }

    /// A broken download: scheduled for a retry from the current offset when the failure is
    /// transient and the retry limit allows, else the end of the download (reported).
    fn interrupted(&mut self, e: DownloadError) -> Result<()> {
        self.abandon_request();
        if e == DownloadError::Status(403) && self.ask_fresh_url() {
            return Ok(());
        }
        if e.is_transient() {
            if let Some(delay) = self.download.backoff.next_delay() {
                ota_log!(
                    Level::Warning,
                    "download interrupted at byte {} ({e}); retry {}/{} in a row in {} ms",
                    self.download.fetched,
                    self.download.backoff.attempts(),
                    self.retry.max_attempts,
                    delay.as_millis()
                );
                self.download.retry_at = Some(Instant::now() + delay);
                return Ok(());
            }
        }
        Err(self.download_failed(e))
    }

    fn download_failed(&mut self, e: DownloadError) -> Error {
        let (cause, desc) = failure_of(e);
        self.abort_fetch(Error::Download(e), cause, desc)
    }

    /// No fresh URL came within the wait after an expiry: the download fails, saying so.
    fn fresh_url_missing(&mut self) -> Error {
        let mut text = DescText::new();
        let _ = write!(
            text,
            "download failed: URL expired (HTTP 403) and no fresh URL within {} s",
            self.fresh_url_wait.as_secs()
        );
        let e = Error::Download(DownloadError::Status(403));
        self.abort_fetch(e, FailureCause::UrlExpired, text.as_str())
    }

    /// The URL expired (HTTP 403): where the platform can be asked (Aliyun's request topic),
    /// ask for a fresh one and wait for it instead of failing. False when that is not possible.
    fn ask_fresh_url(&mut self) -> bool {
        const MAX_REQUESTS: u32 = 3;
        if !self.protocol.can_request_upgrade() || self.download.url_requests >= MAX_REQUESTS {
            return false;
        }
        let Some(version) = self.running.get(self.notice.module_name()) else {
            ota_log!(
                Level::Warning,
                "URL expired; no running version known to request a new one"
            );
            return false;
        };
        let module = Self::module_arg(Some(self.notice.module.as_str()));
        if let Err(e) = self.out.send(Report::Request { version, module }) {
            ota_log!(Level::Warning, "fresh URL not requested: {e}");
            return false;
        }
        self.download.url_requests += 1;
        self.download.cycle.url_wait_until = Some(Instant::now() + self.fresh_url_wait);
        ota_log!(
            Level::Info,
            "URL expired at byte {}: asked the platform for a fresh one (waiting up to {} s)",
            self.download.fetched,
            self.fresh_url_wait.as_secs()
        );
        true
    }

    fn check_response(&mut self, info: OpenInfo) -> Result<()> {
        if self.download.fetched > 0 && info.status == 200 {
            return self.range_ignored(info);
        }
        if info.status == 206
            && (info.range_start != Some(self.download.fetched)
                || info.range_total != Some(self.target().size))
        {
            return Err(self.download_failed(DownloadError::BadResponse(
                "Content-Range does not match the request",
            )));
        }
        let expected_rest = self.target().size - self.download.fetched;
        match info.content_length {
            Some(len) if len > expected_rest => {
                ota_log!(
                    Level::Error,
                    "server announces {len} bytes, upgrade announced {expected_rest}: reading {expected_rest} and rejecting the image"
                );
                self.download.cycle.oversize = true;
            }
            Some(len) if len < expected_rest => {
                return Err(self.download_failed(DownloadError::BadResponse(
                    "server file is smaller than the announced size",
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The server answered a Range request with the whole file: the bytes the caller already
    /// has are read and discarded here, so the stream goes on seamlessly. A whole file of
    /// another size is not this image.
    fn range_ignored(&mut self, info: OpenInfo) -> Result<()> {
        if info
            .content_length
            .is_some_and(|len| len != self.target().size)
        {
            return Err(self.download_failed(DownloadError::BadResponse(
                "server ignored Range and sent a file of another size",
            )));
        }
        self.download.skip = self.download.fetched;
        self.download.restarts += 1;
        ota_log!(
            Level::Warning,
            "server ignored Range at byte {}: re-downloading and discarding {} bytes",
            self.download.fetched,
            self.download.skip
        );
        Ok(())
    }

    /// Takes `bytes` into the digest and the image verifier; finishes when the announced size is
    /// reached. An image the verifier refuses on its way (a header, a TLV layout, a length that
    /// cannot be right) ends the download here: these bytes are not handed out.
    fn accept(&mut self, bytes: &[u8]) -> Result<usize> {
        if !self.download.image_unchecked {
            if let Err(e) = self.download.image.update(bytes) {
                return Err(self.image_refused(e));
            }
        }
        self.download.digest.update(bytes);
        self.download.digest_bytes += bytes.len() as u64;
        self.download.fetched += bytes.len() as u64;
        if self.download.fetched == self.target().size {
            self.finish();
        }
        Ok(bytes.len())
    }

    /// Ends the download for an image the verifier refused: its own log line, the protocol's
    /// verify-failed report naming the cause (Aliyun/SagooIOT step -3, Tencent -4, UCloud
    /// fail), and `Error::Image` from `fetch_yield` and `check_firmware` from now on.
    fn image_refused(&mut self, e: ImageError) -> Error {
        let mut text = [0u8; 128];
        let desc = e.describe(&mut text);
        self.download.verified = false;
        // abort_fetch logs it.
        self.abort_fetch(Error::Image(e), FailureCause::DigestMismatch, desc)
    }

    /// Ends the current download for the upgrade in `scratch`, telling the platform once.
    fn supersede(&mut self) {
        ota_log!(
            Level::Warning,
            "upgrade to {} replaces the download of {} at byte {}: this cycle ends",
            self.scratch.version,
            self.notice.version,
            self.download.fetched
        );
        let e = Error::Download(DownloadError::Superseded);
        self.end_cycle(e, FailureCause::UpgradeFailed);
        self.keeper.erase();
        let mut text = DescText::new();
        let _ = write!(
            text,
            "superseded by the upgrade to {}",
            self.scratch.version
        );
        self.auto_report_failure(FailureCause::UpgradeFailed, text.as_str());
    }

    /// After the broker connection came back: send what was held back, and report the
    /// running versions again so the platform re-sends a pending upgrade.
    fn on_reconnect(&mut self) {
        let sent_inform = self.out.flush_deferred();
        if sent_inform {
            return;
        }
        for i in 0..self.running.used {
            let (module, version) = &self.running.entries[i];
            let module = Self::module_arg(Some(module.as_str()));
            let r = self.out.send(Report::Version {
                version: version.as_str(),
                module,
            });
            if let Err(e) = r {
                ota_log!(Level::Warning, "version not re-reported: {e}");
            }
        }
    }

    /// UCloud names the version a task upgrades from; a device running another refuses it.
    fn runs_current_version(&self) -> bool {
        let wanted = self.scratch.current_version.as_str();
        match self.running.get(self.scratch.module_name()) {
            Some(running) if !wanted.is_empty() => running == wanted,
            _ => true,
        }
    }

    /// Rejects the upgrade in `scratch`, telling the platform why; the current state stays.
    fn refuse(&mut self, e: NoticeError) -> Error {
        let err = self.fail(Error::Notice(e));
        let mut w = DescText::new();
        let _ = match e {
            NoticeError::NotForRunningVersion => write!(
                w,
                "refused: task upgrades from {} but {} runs",
                self.scratch.current_version,
                self.running.get(self.scratch.module_name()).unwrap_or("?")
            ),
            other => write!(w, "refused: {other}"),
        };
        let r = self.out.send(Report::Failure {
            cause: FailureCause::UpgradeFailed,
            desc: w.as_str(),
            notice: &self.scratch,
        });
        if let Err(send_err) = r {
            ota_log!(Level::Warning, "refusal not sent: {send_err}");
        }
        err
    }

    /// Tencent's resume call: the next download request starts at `offset`.
    fn start_download(&mut self, offset: u64, size: u64) -> Result<()> {
        if self.state == OtaState::Idle || self.download.verified {
            return Err(self.fail(Error::InvalidState("no upgrade to download")));
        }
        if self.state == OtaState::Waiting {
            return Err(self.fail(Error::InvalidState(
                "the upgrade waits for its turn to download (see IOT_OTAG_WAITING)",
            )));
        }
        if size != 0 && size != self.target().size {
            return Err(self.fail(Error::InvalidParam("size differs from the announced size")));
        }
        if offset > self.target().size {
            return Err(self.fail(Error::InvalidParam("offset beyond the announced size")));
        }
        self.abandon_request();
        if self.state == OtaState::Fetched {
            // The transfer had ended (its slot or kept-image read released): the new cycle
            // takes a slot again before it touches the network.
            self.download.local = None;
            self.download.needs_slot = self.member.is_some();
        }
        // A new cycle of the same download: the digest the firmware fed stays.
        self.download.cycle = Cycle::new();
        self.download.fetched = offset;
        // Its delta handling starts over too (no patch bytes of the last cycle are handed
        // out): from byte 0 the download is recognised again; from another offset it goes on
        // as a plain image, as a download resumed from a record does (a patch is not resumed
        // at an offset yet).
        self.download.delta = delta::DeltaCycle::new(self.delta_budget.is_some());
        self.state = OtaState::Downloading;
        if offset == self.target().size {
            // Every byte is already kept: nothing to fetch, the image is checked now.
            self.finish();
        }
        Ok(())
    }

    /// Feeds bytes the firmware already holds (from an earlier download) into the digest.
    fn update_client_digest(&mut self, bytes: &[u8]) -> Result<()> {
        if self.state == OtaState::Idle {
            return Err(self.fail(Error::InvalidState("no upgrade accepted")));
        }
        self.download.digest.update(bytes);
        self.download.digest_bytes += bytes.len() as u64;
        // A refusal stays in the verifier and ends the download when the image is complete.
        let _ = self.download.image.update(bytes);
        Ok(())
    }

    /// Restarts the digest (and the image verifier) from nothing.
    fn reset_client_digest(&mut self) -> Result<()> {
        if self.state == OtaState::Idle {
            return Err(self.fail(Error::InvalidState("no upgrade accepted")));
        }
        self.download.digest = StreamDigest::new(self.target().kind);
        self.download.digest_bytes = 0;
        self.download.image =
            ImageVerifier::new(&self.policy).with_announced_size(self.target().size);
        Ok(())
    }

    /// The last announced byte arrived: the image is judged, and the gateway told (a slot or
    /// a kept image read frees).
    fn finish(&mut self) {
        self.judge_image();
        self.transfer_ended(self.download.verified);
    }

    fn judge_image(&mut self) {
        self.abandon_request();
        self.state = OtaState::Fetched;
        let mut actual = [0u8; 32];
        let n = self.download.digest.current(&mut actual);
        let size = self.target().size;
        let covered = self.download.digest_bytes == size;
        let digest_ok = actual[..n] == *self.target().digest;
        self.download.verified = covered && digest_ok && !self.download.cycle.oversize;
        if self.download.verified && !self.new_image_digest_holds() {
            return;
        }
        if self.download.verified {
            let checked = match self.download.image_unchecked {
                false => self.download.image.finish(&self.policy),
                true => Ok(VerifiedImage::plain(size)),
            };
            match checked {
                Ok(image) => self.download.image_info = Some(image),
                Err(e) => {
                    let mut text = [0u8; 128];
                    let desc = e.describe(&mut text);
                    ota_log!(Level::Error, "image rejected: {e}");
                    self.refuse_at_end(Error::Image(e), desc);
                    return;
                }
            }
            // The pending-reboot record waits for check_firmware: the caller has not stored
            // the bytes this call returns yet.
            ota_log!(
                Level::Info,
                "image of {} bytes verified",
                self.download.fetched
            );
            return;
        }
        let (e, desc) = if !covered {
            (
                DownloadError::BadResponse("digest does not cover the whole image"),
                "verify failed: the digest does not cover the whole image",
            )
        } else if self.download.cycle.oversize {
            (
                DownloadError::Oversize,
                "verify failed: server file larger than announced",
            )
        } else {
            (
                DownloadError::BadResponse("digest mismatch"),
                "verify failed: digest mismatch",
            )
        };
        let mut hex = [0u8; 64];
        ota_log!(
            Level::Error,
            "image rejected: {desc} (got {})",
            to_hex(&actual[..n], &mut hex)
        );
        self.refuse_at_end(Error::Download(e), desc);
    }

    /// An image refused once its last byte arrived (those bytes go to the caller; the cycle ends
    /// after them): the verify-failed report, then `e` as the cycle's end and the last error.
    fn refuse_at_end(&mut self, e: Error, desc: &str) {
        self.download.verified = false;
        self.auto_report_failure(FailureCause::DigestMismatch, desc);
        // After the report: a report that could not be sent must not hide why the image failed.
        self.last_error = Some(e);
        self.download.cycle.end_error = Some(e);
    }
}

/// One device's OTA session for one protocol.
///
/// Cheap to share: the MQTT subscription holds a weak reference, so messages that arrive during
/// [`MqttClient::yield_for`](crate::MqttClient::yield_for) reach the session on the caller's
/// thread.
pub struct OtaSession {
    engine: Arc<Mutex<Engine>>,
    /// The firmware source, locked by `fetch_yield` across its waits (never by MQTT).
    fetch: Arc<Mutex<SourceSide>>,
    /// The breakpoint store, written with the engine unlocked.
    records: Arc<Mutex<StoreWriter>>,
    downstream: String,
    product_key: Box<str>,
    device_name: Box<str>,
}

/// A weak hold on a session for the transport that delivers its messages (`crate::link`).
#[derive(Clone)]
pub(crate) struct SessionFeed {
    engine: Weak<Mutex<Engine>>,
    fetch: Weak<Mutex<SourceSide>>,
    records: Weak<Mutex<StoreWriter>>,
}

impl SessionFeed {
    /// Hands a message of the session's upgrade topic to the engine; true when it started a
    /// download (the firmware's yield loop should get to FetchYield now). Then closes a
    /// connection the message abandoned and writes the breakpoint record it changed, both
    /// with the engine unlocked.
    pub(crate) fn deliver(&self, topic: &str, payload: &[u8]) -> bool {
        let Some(engine) = self.engine.upgrade() else {
            return false;
        };
        let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
        let was_fetching = e.state == OtaState::Downloading;
        let _ = e.handle_message(topic, payload);
        let started = !was_fetching && e.state == OtaState::Downloading;
        drop(e);
        if let Some(side) = self.fetch.upgrade() {
            fetch_call::close_abandoned(&engine, &side);
        }
        if let Some(records) = self.records.upgrade() {
            breakpoint::flush(&engine, &records);
        }
        started
    }

    /// The broker connection is back (reports held meanwhile go out, the version is
    /// reported again); false once the session is gone.
    pub(crate) fn reconnected(&self) -> bool {
        match self.engine.upgrade() {
            Some(engine) => {
                engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_reconnect();
                true
            }
            None => false,
        }
    }
}

impl OtaSession {
    /// Creates a session on explicit transports. Allocates every buffer the session will use.
    pub fn new(
        product_key: &str,
        device_name: &str,
        config: OtaConfig,
        uplink: Box<dyn Uplink>,
        source: Box<dyn FirmwareSource>,
    ) -> Result<OtaSession> {
        check_identity("product key", product_key)?;
        check_identity("device name", device_name)?;
        config.retry.check()?;
        check_fresh_url_wait(config.fresh_url_wait)?;
        let mut limits = config.limits;
        if !config.protocol.carries_ext_data() {
            limits.ext_data = 0;
        }
        if !config.protocol.carries_packages() {
            limits.max_files = 0;
        }
        let topics = Topics::new(config.protocol, product_key, device_name);
        let downstream = topics.downstream.clone();
        let engine = Engine {
            protocol: config.protocol,
            limits,
            out: Outbox {
                protocol: config.protocol,
                topics,
                uplink,
                message: vec![0u8; limits.message].into_boxed_slice(),
                ids: outbox::IdCounter::new(config.protocol),
                deferred: [
                    Deferred::new(limits.message),
                    Deferred::new(limits.message),
                    Deferred::new(limits.message),
                ],
                full_logged: false,
            },
            state: OtaState::Idle,
            notice: UpgradeNotice::new(&limits),
            scratch: UpgradeNotice::new(&limits),
            next: UpgradeNotice::new(&limits),
            next_pending: false,
            download: Download::new(DigestKind::Md5, 0, config.retry, &config.image),
            running: RunningVersions::new(&limits),
            retry: config.retry,
            fresh_url_wait: config.fresh_url_wait,
            policy: config.image,
            confirm_boots: config.confirm_boots,
            boot_state: BootState::None,
            keeper: RecordKeeper::new(),
            request: 0,
            last_error: None,
            member: None,
            waiting: Waiting::No,
            file: 0,
            files_done: 0,
            next_file: false,
            mqtt_download: false,
            delta_budget: None,
        };
        Ok(OtaSession {
            engine: Arc::new(Mutex::new(engine)),
            fetch: Arc::new(Mutex::new(SourceSide::new(source))),
            records: Arc::new(Mutex::new(StoreWriter::new())),
            downstream,
            product_key: product_key.into(),
            device_name: device_name.into(),
        })
    }

    /// What a transport that feeds this session holds (see [`crate::link`]): it does nothing
    /// once the session is dropped.
    pub(crate) fn feed(&self) -> SessionFeed {
        SessionFeed {
            engine: Arc::downgrade(&self.engine),
            fetch: Arc::downgrade(&self.fetch),
            records: Arc::downgrade(&self.records),
        }
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topic upgrade notifications arrive on.
    pub fn downstream_topic(&self) -> &str {
        &self.downstream
    }

    /// The product key of the session's device.
    pub fn product_key(&self) -> &str {
        &self.product_key
    }

    /// The name of the session's device.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Installs `source` for downloads over MQTT (replacing one installed before): from now on
    /// upgrades with `dProtocol` `mqtt` are accepted. Before the first upgrade only
    /// ([`Error::InvalidState`] after), on a platform that has MQTT download
    /// ([`Error::InvalidParam`] on Tencent and UCloud). The transport side is
    /// [`enable_mqtt_download`](Self::enable_mqtt_download).
    pub(crate) fn set_mqtt_source(&self, source: Box<dyn FirmwareSource>) -> Result<()> {
        // The fetch side first, as fetch_yield locks them.
        let mut side = self.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = self.engine();
        e.check_mqtt_download_settable()?;
        side.set_mqtt(source);
        e.mqtt_download = true;
        Ok(())
    }

    /// Sets the image a delta patch applies to (the running one) and the applier's memory:
    /// from now on a download that starts with a detools sequential patch (see
    /// [`crate::delta`]) is applied on the way, and [`fetch_yield`](Self::fetch_yield) returns
    /// the new image's bytes; other downloads are handed out as they come. Allocates the
    /// applier ([`crate::delta::DeltaBudget::heap_bytes`]) and a [`PATCH_BUFFER`]-byte patch
    /// buffer; replaces a source set before. Before the first upgrade only
    /// ([`Error::InvalidState`]); [`Error::InvalidParam`] for a slot of 0 bytes.
    ///
    /// The running image's SHA-256 is `options.old_sha256`, or, when `None`, computed here by
    /// reading `old` whole once, before any lock is taken ([`Error::Delta`] when a read fails
    /// or comes back short). A patch whose upgrade message requires another old image (size or
    /// SHA-256, docs/delta.md) ends its download before any byte with
    /// [`Error::DeltaOldImage`].
    pub fn set_delta_source(
        &self,
        mut old: Box<dyn crate::delta::OldImage + Send>,
        options: DeltaOptions,
    ) -> Result<()> {
        // Refused at once when it would be refused after the read below.
        self.engine().check_delta_settable(&options)?;
        // Before any lock: the firmware's reader may take a while over the whole image.
        let running = delta::running_sha256(old.as_mut(), &options);
        let mut side = self.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = self.engine();
        e.check_delta_settable(&options)?;
        let running = running.map_err(|err| e.fail(Error::Delta(err)))?;
        side.delta = Some(delta::DeltaSide::new(old, options, running));
        e.delta_budget = Some(options.budget.clamped());
        // A patch's breakpoint record carries the applier's state in a tail.
        let room = crate::resume::tail_max(options.budget);
        records.make_tail_room(room);
        e.keeper.make_tail_room(room);
        Ok(())
    }

    /// Whether [`set_mqtt_source`](Self::set_mqtt_source) would take a source now (checked
    /// before one is made: making it subscribes a topic).
    pub(crate) fn check_mqtt_download_settable(&self) -> Result<()> {
        self.engine().check_mqtt_download_settable()
    }

    /// Turns download over MQTT off (the block source goes, its reply topic is unsubscribed):
    /// upgrades with `dProtocol` `mqtt` are refused again, with a failure report. Before the
    /// first upgrade only ([`Error::InvalidState`] after, and nothing changes);
    /// [`Error::InvalidParam`] on Tencent and UCloud, which have no download over MQTT.
    pub fn disable_mqtt_download(&self) -> Result<()> {
        // The fetch side first, as fetch_yield locks them; checked and dropped under both.
        let mut side = self.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = self.engine();
        e.check_mqtt_download_settable()?;
        side.take_mqtt();
        e.mqtt_download = false;
        Ok(())
    }

    /// Drops the MQTT block source, if any (its reply topic is unsubscribed).
    pub(crate) fn drop_mqtt_source(&self) {
        let mut side = self.fetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = self.engine();
        side.take_mqtt();
        e.mqtt_download = false;
    }

    /// Feeds a message that arrived on the downstream topic (the MQTT subscription does this).
    pub fn handle_message(&self, topic: &str, payload: &[u8]) -> Result<()> {
        let r = self.engine().handle_message(topic, payload);
        self.settle();
        r
    }

    /// After a call that may have changed the download or the record: closes the connection of
    /// an abandoned download (unless a `fetch_yield` runs, which closes it itself) and writes
    /// the record, with the engine unlocked.
    fn settle(&self) {
        fetch_call::close_abandoned(&self.engine, &self.fetch);
        breakpoint::flush(&self.engine, &self.records);
    }

    /// Reports the running firmware version.
    pub fn report_version(&self, version: &str) -> Result<()> {
        let r = self.engine().report_version(version, None);
        self.settle();
        r
    }

    /// Reports the running version of `module`.
    pub fn report_module_version(&self, module: &str, version: &str) -> Result<()> {
        let r = self.engine().report_version(version, Some(module));
        self.settle();
        r
    }

    /// Asks the platform to send the upgrade for the running `version`.
    pub fn request_image(&self, version: &str) -> Result<()> {
        self.engine().request_image(version)
    }

    /// Reports download progress 0..=100, or a failure step -1..=-4 with a description.
    pub fn report_progress(&self, step: i32, desc: Option<&str>) -> Result<()> {
        let r = self.engine().report_progress(step, desc);
        self.settle();
        r
    }

    /// Makes the next [`fetch_yield`](Self::fetch_yield) request the image from byte `offset`
    /// (`size`: the announced size, or 0). To resume a download whose first `offset` bytes the
    /// firmware kept, feed those bytes to [`update_client_digest`](Self::update_client_digest)
    /// so the digest still covers the whole image; otherwise the image will not verify.
    pub fn start_download(&self, offset: u64, size: u64) -> Result<()> {
        let r = self.engine().start_download(offset, size);
        self.settle();
        r
    }

    /// Feeds bytes the firmware already holds into the image digest (Tencent's
    /// `IOT_OTA_UpdateClientMd5`).
    pub fn update_client_digest(&self, bytes: &[u8]) -> Result<()> {
        self.engine().update_client_digest(bytes)
    }

    /// Restarts the image digest from nothing (Tencent's `IOT_OTA_ResetClientMD5`).
    pub fn reset_client_digest(&self) -> Result<()> {
        self.engine().reset_client_digest()
    }

    /// Reports that the image is downloaded and flashing begins (Aliyun/SagooIOT step 100
    /// "burning", Tencent `burning`, UCloud `upgrading`).
    pub fn report_upgrade_begin(&self) -> Result<()> {
        let r = self.engine().report_upgrade_begin();
        self.settle();
        r
    }

    /// Reports that the upgrade succeeded and `version` now runs (Aliyun/SagooIOT version
    /// report, Tencent `done`, UCloud `success`).
    pub fn report_upgrade_success(&self, version: &str) -> Result<()> {
        let r = self.engine().report_upgrade_success(version);
        self.settle();
        r
    }

    /// Reports that flashing the upgrade failed (Aliyun/SagooIOT step −4, Tencent −5,
    /// UCloud `fail`).
    pub fn report_upgrade_fail(&self, desc: &str) -> Result<()> {
        let r = self.engine().report_failure(FailureCause::BurnFailed, desc);
        self.settle();
        r
    }

    /// Where the session stands (see the state table in this module's doc).
    pub fn state(&self) -> OtaState {
        self.engine().state
    }

    /// An upgrade is accepted and not yet fully fetched. An upgrade that arrived after (or
    /// ended) the last cycle starts here, once [`is_fetch_finished`](Self::is_fetch_finished)
    /// or [`check_firmware`](Self::check_firmware) has shown that cycle's end.
    pub fn is_fetching(&self) -> bool {
        let mut e = self.engine();
        e.start_next_if_due();
        let fetching = e.state == OtaState::Downloading;
        drop(e);
        self.settle();
        fetching
    }

    /// The download ended (completely or by failure); stays true until the next upgrade's
    /// cycle starts.
    pub fn is_fetch_finished(&self) -> bool {
        let mut e = self.engine();
        let ended = e.state == OtaState::Fetched;
        e.download.cycle.end_seen |= ended;
        ended
    }

    /// Downloads the next bytes into `buf`, waiting at most `timeout`; `Ok(0)` means nothing
    /// arrived in time. Never writes more than the announced size in total.
    ///
    /// The session's lock is held only between the waits, so messages (a supersede, a fresh
    /// URL) and every other call go through while this one waits for the network.
    pub fn fetch_yield(&self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        fetch_call::fetch_yield(&self.engine, &self.fetch, &self.records, buf, timeout)
    }

    /// Keeps the breakpoint record in `store` (resume after power loss, success after reboot).
    /// Set it before reporting the version, so a record from before a restart is found. A
    /// firmware that resumes must write the bytes it gets at [`fetched_size`](Self::fetched_size)
    /// (the resume offset), not at 0.
    pub fn set_breakpoint_store(&self, store: Box<dyn BreakpointStore>) -> Result<()> {
        let mut store = store;
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if self.engine().state == OtaState::Downloading {
            let mut e = self.engine();
            return Err(e.fail(Error::InvalidState(
                "cannot change the store while fetching",
            )));
        }
        let stored = breakpoint::read_record(store.as_mut());
        self.engine().keeper.enable(stored);
        records.set(store);
        Ok(())
    }

    /// How often the breakpoint record is written while downloading.
    pub fn set_save_policy(&self, policy: SavePolicy) {
        self.engine().keeper.policy = policy;
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.engine().retry
    }

    /// Replaces the retry policy (takes effect at the next failure);
    /// [`Error::InvalidParam`] for one out of bounds ([`RetryPolicy::check`]), which changes
    /// nothing.
    pub fn set_retry_policy(&self, policy: RetryPolicy) -> Result<()> {
        let mut e = self.engine();
        if let Err(err) = policy.check() {
            return Err(e.fail(err));
        }
        e.retry = policy;
        // The download in progress retries by the new policy from now on, counting from zero.
        e.download.backoff = Backoff::new(policy);
        Ok(())
    }

    /// Times the server ignored `Range` in this upgrade (answered with the whole file, whose
    /// bytes up to the offset were discarded).
    pub fn restarts(&self) -> u32 {
        self.engine().download.restarts
    }

    /// Reconnections made in this upgrade.
    pub fn retries(&self) -> u32 {
        self.engine().download.backoff.total()
    }

    /// Bytes the caller has been given so far (of the new image, for a delta patch).
    pub fn fetched_size(&self) -> u64 {
        self.engine().caller_offset()
    }

    /// The announced image size (0 before an upgrade); for a delta patch, once recognised, the
    /// new image's size from its header.
    pub fn file_size(&self) -> u64 {
        self.engine().caller_size()
    }

    /// Confirms the image running since the reboot (after the firmware's own self-test): the
    /// upgrade's success goes to the platform now (see [`OtaConfig::confirm_boots`]).
    /// `InvalidState` unless an image waits for confirmation.
    pub fn confirm_image(&self) -> Result<()> {
        let r = self.engine().confirm_image();
        self.settle();
        r
    }

    /// Rejects the image running since the reboot (its self-test failed): the upgrade fails in
    /// the platform's terms (Aliyun/SagooIOT step -4, Tencent and UCloud fail), and the firmware
    /// must roll back to its previous image. `InvalidState` unless an image waits for
    /// confirmation.
    pub fn reject_image(&self) -> Result<()> {
        let r = self.engine().reject_image();
        self.settle();
        r
    }

    /// Where the running image stands in the confirm-after-boot flow.
    pub fn boot_state(&self) -> BootState {
        self.engine().boot_state
    }

    /// Sets [`OtaConfig::confirm_boots`] (before the first version report after a boot).
    pub fn set_confirm_boots(&self, boots: u16) {
        self.engine().confirm_boots = boots;
    }

    /// The image policy in force (see [`OtaConfig::image`]).
    pub fn image_policy(&self) -> ImagePolicy {
        self.engine().policy.clone()
    }

    /// Replaces the image policy (keys, signature requirement, running version and security
    /// counter, downgrade). `InvalidState` while a download is in progress: each download is
    /// checked under the policy it started with.
    pub fn set_image_policy(&self, policy: ImagePolicy) -> Result<()> {
        let mut e = self.engine();
        if e.state == OtaState::Downloading {
            return Err(e.fail(Error::InvalidState(
                "the image policy cannot change during a download",
            )));
        }
        e.policy = policy;
        Ok(())
    }

    /// What the image's own checks found (MCUboot or plain, signed and by which key, header
    /// version, security counter, payload offset and size), once the image verified
    /// ([`check_firmware`](Self::check_firmware) true); `None` before.
    pub fn verified_image(&self) -> Option<VerifiedImage> {
        let e = self.engine();
        e.download
            .verified
            .then_some(e.download.image_info)
            .flatten()
    }

    /// True only when every announced byte arrived, nothing more, the digest matches, and the
    /// image passed its own checks under the image policy (MCUboot hash, signature, key,
    /// downgrade). `InvalidState` before the download ended. When false,
    /// [`last_error`](Self::last_error) says why.
    pub fn check_firmware(&self) -> Result<bool> {
        let mut e = self.engine();
        if e.state != OtaState::Fetched {
            return Err(e.fail(Error::InvalidState("download not finished")));
        }
        e.download.cycle.end_seen = true;
        let valid = e.download.verified && e.download.fetched == e.target().size;
        if let Some(member) = &e.member {
            member.judged(valid);
        }
        if valid && e.more_files() {
            e.file_judged_good();
        } else if valid {
            // Every byte is with the caller now: a restart may expect the new version.
            e.record_pending_reboot();
        } else if let Some(why) = e.download.cycle.end_error {
            // The sample's calls since the last bytes (progress 100 after the failure report)
            // failed too; the firmware asking now wants why the image is refused.
            e.last_error = Some(why);
        }
        drop(e);
        self.settle();
        Ok(valid)
    }

    /// Runs `f` on the accepted upgrade notice (version, URL, digest, module …), without copying.
    /// The session is locked meanwhile: `f` must not call back into it.
    pub fn with_notice<R>(&self, f: impl FnOnce(&UpgradeNotice) -> R) -> R {
        f(&self.engine().notice)
    }

    /// Ends a download in progress without a report (the caller is letting the session go:
    /// IOT_OTA_Deinit); a call waiting on another thread returns.
    pub fn release(&self) {
        let mut e = self.engine();
        e.next_pending = false;
        if e.state == OtaState::Waiting {
            e.end_cycle(
                Error::Download(DownloadError::Abandoned),
                FailureCause::DownloadFailed,
            );
        }
        if e.state == OtaState::Downloading {
            ota_log!(
                Level::Info,
                "session released during the download of {} at byte {}",
                e.notice.version,
                e.download.fetched
            );
            e.end_cycle(
                Error::Download(DownloadError::Abandoned),
                FailureCause::DownloadFailed,
            );
        }
        drop(e);
        self.settle();
    }

    /// Accepts packages of up to `max` files (SagooIOT and Aliyun `files`; 0, the default,
    /// refuses them with a failure report), walked one file per cycle (see the `package` module
    /// doc). Allocates the file slots of the session's notices: call it before the first
    /// upgrade. [`Error::InvalidState`] once an upgrade was accepted; [`Error::InvalidParam`]
    /// above [`MAX_FILES`] or on a platform without packages (Tencent, UCloud).
    pub fn set_max_files(&self, max: usize) -> Result<()> {
        let mut e = self.engine();
        if max > MAX_FILES {
            return Err(e.fail(Error::InvalidParam("more files than MAX_FILES")));
        }
        if max > 0 && !e.protocol.carries_packages() {
            return Err(e.fail(Error::InvalidParam("the platform sends no packages")));
        }
        if e.state != OtaState::Idle {
            return Err(e.fail(Error::InvalidState(
                "packages are enabled before the first upgrade",
            )));
        }
        e.limits.max_files = max;
        let limits = e.limits;
        e.notice = UpgradeNotice::new(&limits);
        e.scratch = UpgradeNotice::new(&limits);
        e.next = UpgradeNotice::new(&limits);
        Ok(())
    }

    /// Files of the accepted upgrade: its package's, or 1.
    pub fn file_count(&self) -> usize {
        let e = self.engine();
        match e.notice.is_package() {
            true => e.notice.files.len(),
            false => 1,
        }
    }

    /// Which file of the package the current cycle fetches, from 0 (0 for a single image).
    pub fn file_index(&self) -> usize {
        self.engine().file
    }

    /// Runs `f` on the current file's name (empty for a single image, or a file without one).
    /// The session is locked meanwhile: `f` must not call back into it.
    pub fn with_file_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let e = self.engine();
        let name = match e.notice.is_package() {
            true => e
                .notice
                .files
                .get(e.file)
                .map_or("", |file| file.name.as_str()),
            false => "",
        };
        f(name)
    }

    /// Runs `f` on the current file's (or single image's) digest kind and bytes. The session is
    /// locked meanwhile: `f` must not call back into it.
    pub fn with_file_digest<R>(&self, f: impl FnOnce(DigestKind, &[u8]) -> R) -> R {
        let e = self.engine();
        let t = e.target();
        f(t.kind, t.digest)
    }

    /// Sets how long an expired URL waits for a fresh one (see [`OtaConfig::fresh_url_wait`]);
    /// [`Error::InvalidParam`] above [`MAX_FRESH_URL_WAIT`], which changes nothing.
    pub fn set_fresh_url_wait(&self, wait: Duration) -> Result<()> {
        let mut e = self.engine();
        if let Err(err) = check_fresh_url_wait(wait) {
            return Err(e.fail(err));
        }
        e.fresh_url_wait = wait;
        Ok(())
    }

    /// True the first time `what` happens in the current upgrade (for callers that log a
    /// refusal repeated in a loop once, as the engine does).
    pub fn first_in_upgrade(&self, what: Once) -> bool {
        self.engine().download.quiet.first(what)
    }

    /// The last error recorded by any call or incoming message.
    pub fn last_error(&self) -> Option<Error> {
        self.engine().last_error
    }

    /// Records an error found by a caller layer (e.g. a C argument check).
    pub fn record_error(&self, e: Error) {
        self.engine().last_error = Some(e);
    }
}

/// What a download error is called in the failure report.
fn failure_of(e: DownloadError) -> (FailureCause, &'static str) {
    use FailureCause as C;
    match e {
        DownloadError::Status(403) => (C::UrlExpired, "download failed: URL expired (HTTP 403)"),
        DownloadError::Status(404) => (
            C::NotFound,
            "download failed: firmware not found (HTTP 404)",
        ),
        DownloadError::Status(_) => (C::DownloadFailed, "download failed: HTTP error status"),
        DownloadError::Connect | DownloadError::Resolve => (
            C::DownloadFailed,
            "download failed: cannot connect to the server",
        ),
        DownloadError::Timeout => (C::DownloadTimeout, "download failed: timed out"),
        DownloadError::Tls => (
            C::DownloadFailed,
            "download failed: TLS verification failed",
        ),
        DownloadError::TlsBroken => (C::DownloadFailed, "download failed: TLS connection broken"),
        DownloadError::Truncated => (C::DownloadFailed, "download failed: connection ended early"),
        DownloadError::Oversize => (
            C::DownloadFailed,
            "download failed: file larger than announced",
        ),
        DownloadError::Redirects => (C::DownloadFailed, "download failed: too many redirects"),
        DownloadError::RedirectScheme => (
            C::DownloadFailed,
            "download failed: redirect to a weaker scheme refused",
        ),
        DownloadError::PlainHttp => (
            C::DownloadFailed,
            "download failed: plain http:// not allowed",
        ),
        DownloadError::BadResponse(_) => (
            C::DownloadFailed,
            "download failed: malformed HTTP response",
        ),
        DownloadError::BadBlock(_) => (
            C::DownloadFailed,
            "download failed: MQTT download replies refused",
        ),
        _ => (C::DownloadFailed, "download failed"),
    }
}

fn check_identity(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::InvalidParam(what));
    }
    if s.len() > 64 || s.contains(['/', '+', '#']) {
        return Err(Error::InvalidParam(what));
    }
    Ok(())
}

/// An expected-digest check helper for callers: lowercase hex of the announced digest.
pub fn notice_digest_hex<'a>(notice: &UpgradeNotice, out: &'a mut [u8; 64]) -> &'a str {
    to_hex(notice.digest(), out)
}
