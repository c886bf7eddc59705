//! The upgrade state machine: idle → fetching → fetched (verified or failed).
//!
//! | state    | event                         | next     | effect                                   |
//! |----------|-------------------------------|----------|------------------------------------------|
//! | any      | valid upgrade, other image    | fetching | new image, download from 0               |
//! | fetching | valid upgrade, same image     | fetching | keeps offset; takes a fresh URL          |
//! | any      | invalid upgrade message       | same     | error logged, `last_error` set           |
//! | fetching | bytes arrive                  | fetching | digest updated                           |
//! | fetching | last byte arrives             | fetched  | digest compared; step −3 report if bad   |
//! | fetching | download fails                | fetched  | step −2 report; `check_firmware` false   |
//!
//! All buffers are allocated in [`OtaSession::new`]; afterwards the session only writes into
//! them and into the caller's buffers.

mod outbox;
mod persist;
mod support;

use outbox::{Deferred, Outbox};
use persist::Persistence;
use support::{RunningVersions, TextWriter};

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::digest::{to_hex, StreamDigest};
use crate::error::{Error, Result};
use crate::fetch::{Chunk, FetchError, FirmwareSource, HttpConfig, HttpSource, OpenInfo};
use crate::log::Level;
use crate::mqtt::{MqttClient, QoS};
use crate::ota_log;
use crate::protocol::{
    self, Downstream, FailureCause, Limits, NoticeError, Protocol, Report, Topics, UpgradeNotice,
};
use crate::resume::{BreakpointStore, SavePolicy, RECORD_LEN};
use crate::retry::{Backoff, RetryPolicy};

/// Where the session's upstream messages go (an MQTT client, or memory in tests).
pub trait Uplink: Send {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()>;
}

/// Session settings fixed at init.
#[derive(Debug, Clone)]
pub struct OtaConfig {
    pub protocol: Protocol,
    pub limits: Limits,
    pub http: HttpConfig,
    /// How broken downloads are retried (with `Range`, from where they stopped).
    pub retry: RetryPolicy,
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            protocol: Protocol::Aliyun,
            limits: Limits::default(),
            http: HttpConfig::default(),
            retry: RetryPolicy::default(),
        }
    }
}

impl OtaConfig {
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
    /// An upgrade was accepted; `fetch_yield` downloads it.
    Fetching,
    /// The download ended: completely (then verified) or by a failure.
    Fetched,
}

struct Engine {
    protocol: Protocol,
    limits: Limits,
    out: Outbox,
    source: Box<dyn FirmwareSource>,
    state: OtaState,
    /// The accepted upgrade.
    notice: UpgradeNotice,
    /// Decoding target; swapped with `notice` when valid, so a bad message changes nothing.
    scratch: UpgradeNotice,
    /// The versions the device last reported as running, per module.
    running: RunningVersions,
    /// Scratch for failure descriptions built at run time.
    desc: Box<[u8]>,
    /// Bytes the running digest covers (fetched, plus any fed by the firmware).
    digest_bytes: u64,
    backoff: Backoff,
    /// When the next reconnection may be attempted.
    retry_at: Option<Instant>,
    /// When the download last delivered a byte (or connected).
    last_progress: Instant,
    /// Times the server answered a Range request with the whole file in this upgrade.
    restarts: u32,
    /// The last FetchYield waited its whole timeout for nothing: the next one reconnects.
    stalled: bool,
    /// Where the breakpoint record lives across restarts (opt-in).
    persist: Persistence,
    digest: StreamDigest,
    fetched: u64,
    source_open: bool,
    /// The server's copy is larger than the announced size.
    oversize: bool,
    /// The SDK already told the platform this upgrade failed; later reports would contradict it.
    failure_reported: bool,
    /// The protocol's "download started" report went out for this upgrade.
    upgrading_reported: bool,
    /// What made the last download fail, for failure reports that name a cause.
    fetch_cause: Option<FailureCause>,
    /// All bytes arrived and the digest matched.
    verified: bool,
    last_error: Option<Error>,
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
        match protocol::decode(self.protocol, payload, &self.limits, &mut self.scratch) {
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
        if self.state == OtaState::Fetching && self.scratch.same_image(&self.notice) {
            ota_log!(
                Level::Info,
                "upgrade to {} announced again; download continues at byte {}",
                self.notice.version,
                self.fetched
            );
            std::mem::swap(&mut self.notice.url, &mut self.scratch.url);
            return Ok(());
        }
        if self.resumable_with_scratch() {
            self.resume_with_fresh_url();
            return Ok(());
        }
        if self.state == OtaState::Fetched && self.verified && self.scratch.same_image(&self.notice)
        {
            ota_log!(
                Level::Info,
                "upgrade to {} announced again; the image is already verified",
                self.notice.version
            );
            return Ok(());
        }
        if self.state == OtaState::Fetching {
            self.supersede();
        }
        std::mem::swap(&mut self.notice, &mut self.scratch);
        self.accept_notice();
        Ok(())
    }

    /// Makes the (already swapped-in) notice the current upgrade and acknowledges it.
    fn accept_notice(&mut self) {
        self.source.close();
        self.source_open = false;
        self.digest = StreamDigest::new(self.notice.digest_kind);
        self.fetched = 0;
        self.oversize = false;
        self.failure_reported = false;
        self.upgrading_reported = false;
        self.digest_bytes = 0;
        self.backoff.reset();
        self.retry_at = None;
        self.restarts = 0;
        self.stalled = false;
        self.fetch_cause = None;
        self.verified = false;
        self.state = OtaState::Fetching;
        ota_log!(
            Level::Info,
            "upgrade accepted: version {} module {} size {}",
            self.notice.version,
            self.notice.module_name(),
            self.notice.size
        );
        self.resume_from_record();
        let r = self.out.send(Report::Accepted {
            notice: &self.notice,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "acknowledgement not sent: {e}");
        }
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
        if self.complete_pending_reboot(version, module) {
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
        if self.failure_reported {
            if failing {
                ota_log!(Level::Info, "this upgrade's failure was already reported");
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
            let cause = match (step, self.fetch_cause) {
                (-2, Some(cause)) => cause,
                _ => FailureCause::from_step(step),
            };
            return self.report_failure(cause, desc.unwrap_or(""));
        }
        if !self.check_upgrade_report(false)? {
            return Ok(());
        }
        let r = self.out.send(Report::Progress {
            percent: step as u8,
            desc: desc.unwrap_or(""),
            notice: &self.notice,
        });
        r.map_err(|e| self.fail(e))
    }

    /// Tells the platform this upgrade failed, once.
    fn report_failure(&mut self, cause: FailureCause, desc: &str) -> Result<()> {
        if cause == FailureCause::BurnFailed {
            // The device stays on its old firmware: nothing is pending any more.
            self.persist.erase();
        }
        if !self.check_upgrade_report(true)? {
            return Ok(());
        }
        self.failure_reported = true;
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
        if self.upgrading_reported {
            return Ok(());
        }
        self.upgrading_reported = true;
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
        self.persist.erase();
        let r = self.out.send(Report::Success {
            version,
            notice: &self.notice,
        });
        if r.is_ok() {
            self.running.record(self.notice.module_name(), version);
        }
        r.map_err(|e| self.fail(e))
    }

    /// A failure the platform should hear about: logs, records, reports it, ends the fetch.
    fn abort_fetch(&mut self, e: Error, cause: FailureCause, desc: &str) -> Error {
        self.fail(e);
        self.source.close();
        self.source_open = false;
        self.state = OtaState::Fetched;
        self.verified = false;
        self.fetch_cause = Some(cause);
        self.auto_report_failure(cause, desc);
        self.last_error = Some(e);
        e
    }

    fn fetch_yield(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        if self.state != OtaState::Fetching {
            return Err(self.fail(Error::InvalidState("no download in progress")));
        }
        if buf.is_empty() {
            return Err(self.fail(Error::InvalidParam("buffer is empty")));
        }
        let deadline = Instant::now() + timeout;
        if std::mem::take(&mut self.stalled) && self.source_open {
            self.interrupted(FetchError::Timeout)?;
        }
        if let Err(e) = self.ensure_upgrading_reported() {
            ota_log!(Level::Warning, "upgrading report not sent: {e}");
        }
        loop {
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                if at >= deadline {
                    std::thread::sleep(deadline.saturating_duration_since(now));
                    return Ok(0);
                }
                std::thread::sleep(at.saturating_duration_since(now));
                self.retry_at = None;
            }
            if !self.source_open {
                if let Err(e) = self.source.open(self.notice.url.as_str(), self.fetched) {
                    self.interrupted(e)?;
                    continue;
                }
                self.source_open = true;
                self.last_progress = Instant::now();
            }
            let remaining = self.notice.size - self.fetched;
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let stall_at = self.last_progress + self.backoff.policy().stall_timeout;
            let wait = deadline
                .min(stall_at)
                .saturating_duration_since(Instant::now());
            match self.source.read(&mut buf[..want], wait) {
                Ok(Chunk::Opened(info)) => self.check_response(info)?,
                Ok(Chunk::Data(n)) => {
                    self.backoff.progressed();
                    self.last_progress = Instant::now();
                    return Ok(self.accept(&buf[..n]));
                }
                Ok(Chunk::Pending) if Instant::now() >= stall_at => {
                    self.interrupted(FetchError::Timeout)?
                }
                Ok(Chunk::Pending) if Instant::now() >= deadline => {
                    // A whole (non-zero) wait without a byte: the connection stalled.
                    self.stalled = !timeout.is_zero() && self.last_progress + timeout <= deadline;
                    return Ok(0);
                }
                Ok(Chunk::Pending) => {}
                Ok(Chunk::End) => self.interrupted(FetchError::Truncated)?,
                Err(e) => self.interrupted(e)?,
            }
        }
    }

    /// A broken download: scheduled for a retry from the current offset when the failure is
    /// transient and the retry limit allows, else the end of the download (reported).
    fn interrupted(&mut self, e: FetchError) -> Result<()> {
        self.source.close();
        self.source_open = false;
        if e.is_transient() {
            if let Some(delay) = self.backoff.next_delay() {
                ota_log!(
                    Level::Warning,
                    "download interrupted at byte {} ({e}); retry {}/{} in a row in {} ms",
                    self.fetched,
                    self.backoff.attempts(),
                    self.backoff.policy().max_attempts,
                    delay.as_millis()
                );
                self.retry_at = Some(Instant::now() + delay);
                return Ok(());
            }
        }
        Err(self.download_failed(e))
    }

    fn download_failed(&mut self, e: FetchError) -> Error {
        use FailureCause as C;
        let (cause, desc) = match e {
            FetchError::Status(403) => (C::UrlExpired, "download failed: URL expired (HTTP 403)"),
            FetchError::Status(404) => (
                C::NotFound,
                "download failed: firmware not found (HTTP 404)",
            ),
            FetchError::Status(_) => (C::DownloadFailed, "download failed: HTTP error status"),
            FetchError::Connect | FetchError::Resolve => (
                C::DownloadFailed,
                "download failed: cannot connect to the server",
            ),
            FetchError::Timeout => (C::DownloadTimeout, "download failed: timed out"),
            FetchError::Tls => (
                C::DownloadFailed,
                "download failed: TLS verification failed",
            ),
            FetchError::Truncated => (C::DownloadFailed, "download failed: connection ended early"),
            FetchError::Oversize => (
                C::DownloadFailed,
                "download failed: file larger than announced",
            ),
            FetchError::Redirects => (C::DownloadFailed, "download failed: too many redirects"),
            FetchError::RedirectScheme => (
                C::DownloadFailed,
                "download failed: redirect to a weaker scheme refused",
            ),
            FetchError::PlainHttp => (
                C::DownloadFailed,
                "download failed: plain http:// not allowed",
            ),
            FetchError::BadResponse(_) => (
                C::DownloadFailed,
                "download failed: malformed HTTP response",
            ),
            _ => (C::DownloadFailed, "download failed"),
        };
        let err = self.abort_fetch(Error::Fetch(e), cause, desc);
        if cause == C::UrlExpired {
            self.request_fresh_url();
        }
        err
    }

    /// Asks the platform for the upgrade again (Aliyun's request topic); a re-sent upgrade of
    /// the same image resumes at the current offset.
    fn request_fresh_url(&mut self) {
        if !self.protocol.can_request_upgrade() {
            return;
        }
        let Some(version) = self.running.get(self.notice.module_name()) else {
            ota_log!(
                Level::Warning,
                "URL expired; no running version known to request a new one"
            );
            return;
        };
        let module = Self::module_arg(Some(self.notice.module.as_str()));
        let r = self.out.send(Report::Request { version, module });
        match r {
            Ok(()) => ota_log!(
                Level::Info,
                "URL expired: asked the platform for a fresh one"
            ),
            Err(e) => ota_log!(Level::Warning, "fresh URL not requested: {e}"),
        }
    }

    fn check_response(&mut self, info: OpenInfo) -> Result<()> {
        let expected_rest = self.notice.size - self.fetched;
        if self.fetched > 0 && info.status == 200 {
            return Err(self.restarted());
        }
        if info.status == 206
            && (info.range_start != Some(self.fetched)
                || info.range_total != Some(self.notice.size))
        {
            return Err(self.download_failed(FetchError::BadResponse(
                "Content-Range does not match the request",
            )));
        }
        match info.content_length {
            Some(len) if len > expected_rest => {
                ota_log!(
                    Level::Error,
                    "server announces {len} bytes, upgrade announced {expected_rest}: reading {expected_rest} and rejecting the image"
                );
                self.oversize = true;
            }
            Some(len) if len < expected_rest => {
                return Err(self.download_failed(FetchError::BadResponse(
                    "server file is smaller than the announced size",
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The server answered a Range request with the whole file: the stream now starts at byte
    /// 0, so the digest restarts and the caller must rewind (told by this error and by
    /// `restarts`). The download itself goes on from the open stream.
    fn restarted(&mut self) -> Error {
        ota_log!(
            Level::Warning,
            "server ignored Range at byte {}: the download restarts from byte 0",
            self.fetched
        );
        self.fetched = 0;
        self.digest = StreamDigest::new(self.notice.digest_kind);
        self.digest_bytes = 0;
        self.restarts += 1;
        let e = Error::Fetch(FetchError::Restarted);
        self.last_error = Some(e);
        e
    }

    /// Takes `bytes` into the digest; finishes when the announced size is reached.
    fn accept(&mut self, bytes: &[u8]) -> usize {
        self.digest.update(bytes);
        self.digest_bytes += bytes.len() as u64;
        self.fetched += bytes.len() as u64;
        if self.fetched == self.notice.size {
            self.finish();
        } else if self.persist.due(self.fetched, self.notice.size) {
            self.save_progress();
        }
        bytes.len()
    }

    /// A failed download of the same image can continue where it stopped (a fresh URL after
    /// an expired one, or the platform re-sending the upgrade).
    fn resumable_with_scratch(&self) -> bool {
        self.state == OtaState::Fetched
            && !self.verified
            && !self.oversize
            && self.fetched > 0
            && self.digest_bytes == self.fetched
            && self.scratch.same_image(&self.notice)
    }

    fn resume_with_fresh_url(&mut self) {
        std::mem::swap(&mut self.notice.url, &mut self.scratch.url);
        std::mem::swap(&mut self.notice.task_id, &mut self.scratch.task_id);
        self.state = OtaState::Fetching;
        self.failure_reported = false;
        self.upgrading_reported = false;
        self.fetch_cause = None;
        self.retry_at = None;
        self.backoff.progressed();
        ota_log!(
            Level::Info,
            "upgrade to {} announced again: resuming at byte {}",
            self.notice.version,
            self.fetched
        );
    }

    /// Abandons the current download for the upgrade in `scratch`, telling the platform.
    fn supersede(&mut self) {
        ota_log!(
            Level::Warning,
            "upgrade to {} replaces the download of {} at byte {}",
            self.scratch.version,
            self.notice.version,
            self.fetched
        );
        let mut w = TextWriter::new(&mut self.desc);
        let _ = write!(w, "superseded by the upgrade to {}", self.scratch.version);
        let len = w.len();
        let desc = std::str::from_utf8(&self.desc[..len]).unwrap_or("superseded");
        let r = self.out.send(Report::Failure {
            cause: FailureCause::UpgradeFailed,
            desc,
            notice: &self.notice,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "abandon report not sent: {e}");
        }
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
        let mut w = TextWriter::new(&mut self.desc);
        let _ = match e {
            NoticeError::NotForRunningVersion => write!(
                w,
                "refused: task upgrades from {} but {} runs",
                self.scratch.current_version,
                self.running.get(self.scratch.module_name()).unwrap_or("?")
            ),
            other => write!(w, "refused: {other}"),
        };
        let len = w.len();
        let desc = std::str::from_utf8(&self.desc[..len]).unwrap_or("refused");
        let r = self.out.send(Report::Failure {
            cause: FailureCause::UpgradeFailed,
            desc,
            notice: &self.scratch,
        });
        if let Err(send_err) = r {
            ota_log!(Level::Warning, "refusal not sent: {send_err}");
        }
        err
    }

    /// Tencent's resume call: the next download request starts at `offset`.
    fn start_download(&mut self, offset: u64, size: u64) -> Result<()> {
        if self.state == OtaState::Idle || self.verified {
            return Err(self.fail(Error::InvalidState("no upgrade to download")));
        }
        if size != 0 && size != self.notice.size {
            return Err(self.fail(Error::InvalidParam("size differs from the announced size")));
        }
        if offset > self.notice.size {
            return Err(self.fail(Error::InvalidParam("offset beyond the announced size")));
        }
        self.source.close();
        self.source_open = false;
        self.fetched = offset;
        self.oversize = false;
        self.failure_reported = false;
        self.fetch_cause = None;
        self.state = OtaState::Fetching;
        if offset == self.notice.size {
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
        self.digest.update(bytes);
        self.digest_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Restarts the digest from nothing.
    fn reset_client_digest(&mut self) -> Result<()> {
        if self.state == OtaState::Idle {
            return Err(self.fail(Error::InvalidState("no upgrade accepted")));
        }
        self.digest = StreamDigest::new(self.notice.digest_kind);
        self.digest_bytes = 0;
        Ok(())
    }

    fn finish(&mut self) {
        self.source.close();
        self.source_open = false;
        self.state = OtaState::Fetched;
        let mut actual = [0u8; 32];
        let n = self.digest.current(&mut actual);
        let covered = self.digest_bytes == self.notice.size;
        let digest_ok = actual[..n] == *self.notice.digest();
        self.verified = covered && digest_ok && !self.oversize;
        if self.verified {
            ota_log!(Level::Info, "image of {} bytes verified", self.fetched);
            self.record_pending_reboot();
            return;
        }
        let (e, desc) = if !covered {
            (
                FetchError::BadResponse("digest does not cover the whole image"),
                "verify failed: the digest does not cover the whole image",
            )
        } else if self.oversize {
            (
                FetchError::Oversize,
                "verify failed: server file larger than announced",
            )
        } else {
            (
                FetchError::BadResponse("digest mismatch"),
                "verify failed: digest mismatch",
            )
        };
        let mut hex = [0u8; 64];
        ota_log!(
            Level::Error,
            "image rejected: {desc} (got {})",
            to_hex(&actual[..n], &mut hex)
        );
        self.auto_report_failure(FailureCause::DigestMismatch, desc);
        // After the report: a report that could not be sent must not hide why the image failed.
        self.last_error = Some(Error::Fetch(e));
    }
}

/// One device's OTA session for one protocol.
///
/// Cheap to share: the MQTT subscription holds a weak reference, so messages that arrive during
/// [`MqttClient::yield_for`] reach the session on the caller's thread.
pub struct OtaSession {
    engine: Arc<Mutex<Engine>>,
    downstream: String,
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
        let limits = config.limits;
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
            },
            source,
            state: OtaState::Idle,
            notice: UpgradeNotice::new(&limits),
            scratch: UpgradeNotice::new(&limits),
            running: RunningVersions::new(&limits),
            desc: vec![0u8; 256].into_boxed_slice(),
            digest_bytes: 0,
            backoff: Backoff::new(config.retry),
            retry_at: None,
            last_progress: Instant::now(),
            restarts: 0,
            stalled: false,
            persist: Persistence {
                store: None,
                policy: SavePolicy::default(),
                record: None,
                last_saved: 0,
                buf: Box::new([0u8; RECORD_LEN]),
            },
            digest: StreamDigest::new(crate::protocol::DigestKind::Md5),
            fetched: 0,
            source_open: false,
            oversize: false,
            failure_reported: false,
            upgrading_reported: false,
            fetch_cause: None,
            verified: false,
            last_error: None,
        };
        Ok(OtaSession {
            engine: Arc::new(Mutex::new(engine)),
            downstream,
        })
    }

    /// Creates a session that publishes through `mqtt`, downloads over HTTP(S), and subscribes
    /// to the protocol's upgrade topic on `mqtt`.
    pub fn attach(
        mqtt: &MqttClient,
        product_key: &str,
        device_name: &str,
        config: OtaConfig,
    ) -> Result<OtaSession> {
        let source = HttpSource::new(config.http.clone()).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => {
                Error::InvalidParam("HTTPS CA is not a PEM certificate")
            }
            _ => Error::NoMemory,
        })?;
        let session = OtaSession::new(
            product_key,
            device_name,
            config,
            Box::new(mqtt.uplink()),
            Box::new(source),
        )?;
        let weak: Weak<Mutex<Engine>> = Arc::downgrade(&session.engine);
        let weak_hook = weak.clone();
        let yield_break = mqtt.yield_break();
        mqtt.subscribe(&session.downstream, QoS::AtLeastOnce, move |msg| {
            if let Some(engine) = weak.upgrade() {
                let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
                let was_fetching = e.state == OtaState::Fetching;
                let _ = e.handle_message(msg.topic, msg.payload);
                if !was_fetching && e.state == OtaState::Fetching {
                    // A download starts: let the firmware's yield loop get to FetchYield now.
                    yield_break.request();
                }
            }
        })?;
        mqtt.on_reconnect(move || match weak_hook.upgrade() {
            Some(engine) => {
                engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_reconnect();
                true
            }
            None => false,
        });
        Ok(session)
    }

    /// Unsubscribes the session's upgrade topic from `mqtt` (the session stays usable).
    pub fn detach(&self, mqtt: &MqttClient) -> Result<()> {
        mqtt.unsubscribe(&self.downstream)
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topic upgrade notifications arrive on.
    pub fn downstream_topic(&self) -> &str {
        &self.downstream
    }

    /// Feeds a message that arrived on the downstream topic (the MQTT subscription does this).
    pub fn handle_message(&self, topic: &str, payload: &[u8]) -> Result<()> {
        self.engine().handle_message(topic, payload)
    }

    /// Reports the running firmware version.
    pub fn report_version(&self, version: &str) -> Result<()> {
        self.engine().report_version(version, None)
    }

    /// Reports the running version of `module`.
    pub fn report_module_version(&self, module: &str, version: &str) -> Result<()> {
        self.engine().report_version(version, Some(module))
    }

    /// Asks the platform to send the upgrade for the running `version`.
    pub fn request_image(&self, version: &str) -> Result<()> {
        self.engine().request_image(version)
    }

    /// Reports download progress 0..=100, or a failure step -1..=-4 with a description.
    pub fn report_progress(&self, step: i32, desc: Option<&str>) -> Result<()> {
        self.engine().report_progress(step, desc)
    }

    /// Makes the next [`fetch_yield`](Self::fetch_yield) request the image from byte `offset`
    /// (`size`: the announced size, or 0). To resume a download whose first `offset` bytes the
    /// firmware kept, feed those bytes to [`update_client_digest`](Self::update_client_digest)
    /// so the digest still covers the whole image; otherwise the image will not verify.
    pub fn start_download(&self, offset: u64, size: u64) -> Result<()> {
        self.engine().start_download(offset, size)
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
        self.engine().report_upgrade_begin()
    }

    /// Reports that the upgrade succeeded and `version` now runs (Aliyun/SagooIOT version
    /// report, Tencent `done`, UCloud `success`).
    pub fn report_upgrade_success(&self, version: &str) -> Result<()> {
        self.engine().report_upgrade_success(version)
    }

    /// Reports that flashing the upgrade failed (Aliyun/SagooIOT step −4, Tencent −5,
    /// UCloud `fail`).
    pub fn report_upgrade_fail(&self, desc: &str) -> Result<()> {
        self.engine().report_failure(FailureCause::BurnFailed, desc)
    }

    pub fn state(&self) -> OtaState {
        self.engine().state
    }

    /// An upgrade is accepted and not yet fully fetched.
    pub fn is_fetching(&self) -> bool {
        self.engine().state == OtaState::Fetching
    }

    /// The download ended (completely or by failure).
    pub fn is_fetch_finished(&self) -> bool {
        self.engine().state == OtaState::Fetched
    }

    /// Downloads the next bytes into `buf`, waiting at most `timeout`; `Ok(0)` means nothing
    /// arrived in time. Never writes more than the announced size in total.
    pub fn fetch_yield(&self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        self.engine().fetch_yield(buf, timeout)
    }

    /// Keeps the breakpoint record in `store` (resume after power loss, success after reboot).
    /// Set it before reporting the version, so a record from before a restart is found. A
    /// firmware that resumes must write the bytes it gets at [`fetched_size`](Self::fetched_size)
    /// (the resume offset), not at 0.
    pub fn set_breakpoint_store(&self, store: Box<dyn BreakpointStore>) -> Result<()> {
        let mut e = self.engine();
        if e.state == OtaState::Fetching {
            return Err(e.fail(Error::InvalidState(
                "cannot change the store while fetching",
            )));
        }
        e.persist.store = Some(store);
        Ok(())
    }

    /// How often the breakpoint record is written while downloading.
    pub fn set_save_policy(&self, policy: SavePolicy) {
        self.engine().persist.policy = policy;
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.engine().backoff.policy()
    }

    /// Replaces the retry policy (takes effect at the next failure).
    pub fn set_retry_policy(&self, policy: RetryPolicy) {
        self.engine().backoff = Backoff::new(policy);
    }

    /// Times the server restarted the stream from byte 0 in this upgrade (see
    /// [`FetchError::Restarted`]).
    pub fn restarts(&self) -> u32 {
        self.engine().restarts
    }

    /// Reconnections made in this upgrade.
    pub fn retries(&self) -> u32 {
        self.engine().backoff.total()
    }

    /// Bytes fetched so far.
    pub fn fetched_size(&self) -> u64 {
        self.engine().fetched
    }

    /// The announced image size (0 before an upgrade).
    pub fn file_size(&self) -> u64 {
        self.engine().notice.size
    }

    /// True only when every announced byte arrived, nothing more, and the digest matches.
    /// `InvalidState` before the download ended.
    pub fn check_firmware(&self) -> Result<bool> {
        let mut e = self.engine();
        if e.state != OtaState::Fetched {
            return Err(e.fail(Error::InvalidState("download not finished")));
        }
        Ok(e.verified && e.fetched == e.notice.size)
    }

    /// Runs `f` on the accepted upgrade notice (version, URL, digest, module …), without copying.
    /// The session is locked meanwhile: `f` must not call back into it.
    pub fn with_notice<R>(&self, f: impl FnOnce(&UpgradeNotice) -> R) -> R {
        f(&self.engine().notice)
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
