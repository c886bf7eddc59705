//! The cloud side of an OTA upgrade over a real MQTT broker.
//!
//! [`Cloud`] owns an MQTT connection (rumqttc's sync client; its event loop runs in a thread
//! that forwards what arrives over a channel) and plays one upgrade with [`Cloud::run`]. The
//! wire formats live in one pure module per platform ([`crate::aliyun`], [`crate::sagoo`],
//! [`crate::tencent`], [`crate::ucloud`]): topics, a strict `parse` of what the device sends
//! and the downstream message builders. This module holds the flow and the checks that need
//! state (message order, echoed task ids and batch ids, what counts as success).
//!
//! The cloud subscribes to the OTA topic families of all four platforms for its device, so a
//! device that publishes on another platform's topic (or on an unknown topic of the right
//! family) is caught as a [`Failure::Violation`] instead of going unseen.
//!
//! Besides the message shapes, a run checks the rules of an upgrade's life: at most one
//! failure report per upgrade, nothing but silence about an upgrade after its failure report
//! (no progress, no success, no version report naming it). A [`Trigger`] makes the cloud
//! announce on its own during a run: the same upgrade again, or a different one that
//! supersedes it ([`Announcement`]); the run's [`Summary`] then says what the device decided
//! about the run's target ([`TargetOutcome`]).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};

use crate::package::{Package, PackageMeter};
use crate::{aliyun, sagoo, tencent, ucloud};

// Re-exported where they were defined before they moved, for `ota_cloud::cloud::Firmware` paths.
pub use crate::options::{CloudOptions, Protocol};
pub use crate::platform::{md5_hex, sha256_hex, DeviceMsg, Firmware, TencentState};

/// Upgrade notifications sent at most this many times per run, so a device that keeps
/// re-reporting its old version (or asking again) cannot make the cloud loop forever.
pub const DEFAULT_MAX_UPGRADE_MESSAGES: u32 = 5;

/// After [`Cloud::run_until`]'s abort flag is set (the device exited), messages still in
/// flight through the broker get this long to arrive.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// After the device reported the target upgrade failed, the run goes on this long by default
/// to catch what must not follow ([`Cloud::set_grace`]).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How long [`Trigger::fire`] waits for its announcement to be published and routed.
const TRIGGER_WAIT: Duration = Duration::from_secs(5);

/// How a run succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Success {
    /// The device completed the upgrade after at least one upgrade notification: it reported
    /// the target version (Aliyun, SagooIOT), state `done` (Tencent) or `success` (UCloud).
    Upgraded,
    /// The device's first report already was the target version; nothing was sent.
    AlreadyCurrent,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The device reported the target upgrade failed (the run ends after a grace period, see
    /// [`Cloud::set_grace`]): `step` is the Aliyun/SagooIOT step (-1..=-4), the Tencent
    /// `result_code` (-1..=-5), or -1 for a UCloud `fail`; `desc` is the device's text
    /// (`desc`, `result_msg`, `ErrMsg`). The first report, if there were more.
    DeviceFailed { step: i32, desc: Option<String> },
    /// The device sent something the protocol does not allow.
    Violation {
        topic: String,
        reason: String,
        payload: String,
    },
    /// Nothing decisive happened in time; `waiting_for` says what was missing.
    Timeout { waiting_for: String },
    /// The device needed more upgrade notifications than the limit allows.
    TooManyUpgradeMessages(u32),
    /// The MQTT connection failed in a way that stops the run (e.g. publish impossible).
    Mqtt(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::DeviceFailed { step, desc } => {
                write!(f, "device reported failure {step}")?;
                if let Some(d) = desc {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            Failure::Violation {
                topic,
                reason,
                payload,
            } => {
                write!(
                    f,
                    "protocol violation on {topic}: {reason}; payload: {payload}"
                )
            }
            Failure::Timeout { waiting_for } => write!(f, "timed out waiting for {waiting_for}"),
            Failure::TooManyUpgradeMessages(n) => {
                write!(f, "device still not upgraded after {n} upgrade messages")
            }
            Failure::Mqtt(e) => write!(f, "mqtt: {e}"),
        }
    }
}

impl std::error::Error for Failure {}

/// Where a device stands in its run, for a display that follows many runs at once (`fleet`):
/// what [`Cloud::set_observer`]'s observer hears whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// No version report yet.
    WaitingForVersion,
    /// The upgrade was sent (again); nothing about its download yet.
    Announced,
    /// The device reports its download: percent (aliyun, sagoo, tencent) or none (ucloud
    /// `upgrading`).
    Downloading(Option<u8>),
    /// The device reports the image downloaded and checked, flashing begins (aliyun/sagoo step
    /// 100, tencent `burning`).
    Verified,
    /// The run succeeded: [`Success::Upgraded`].
    Upgraded,
    /// The run succeeded: [`Success::AlreadyCurrent`].
    AlreadyCurrent,
    /// The device reported the upgrade failed, or broke a rule: why.
    Failed(String),
    /// The run timed out: what it still waited for.
    TimedOut(String),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::WaitingForVersion => f.write_str("waiting for version"),
            Stage::Announced => f.write_str("announced"),
            Stage::Downloading(Some(p)) => write!(f, "downloading {p}%"),
            Stage::Downloading(None) => f.write_str("downloading"),
            Stage::Verified => f.write_str("verified"),
            Stage::Upgraded => f.write_str("upgraded"),
            Stage::AlreadyCurrent => f.write_str("already current"),
            Stage::Failed(why) => write!(f, "failed: {why}"),
            Stage::TimedOut(what) => write!(f, "still waiting: {what}"),
        }
    }
}

/// Hears a run's [`Stage`]s ([`Cloud::set_observer`]).
pub type Observer = Box<dyn Fn(Stage) + Send>;

/// What happened during one [`Cloud::run`].
#[derive(Debug, Clone)]
pub struct Summary {
    pub protocol: Protocol,
    /// Every checked device message, in arrival order.
    pub messages: Vec<DeviceMsg>,
    /// Every progress value the device reported, in arrival order: Aliyun/SagooIOT steps,
    /// Tencent download percents and failure `result_code`s (UCloud has none).
    pub progress: Vec<i32>,
    /// Every version the device reported, in arrival order.
    pub versions: Vec<String>,
    /// Upgrade notifications published (`upgrade`, `update_firmware`, `notify`), those the
    /// cloud sent on its own ([`Trigger`]) included.
    pub upgrade_messages_sent: u32,
    /// Tencent `report_version_rsp` replies published.
    pub version_replies_sent: u32,
    /// Firmware-request messages received (Aliyun).
    pub requests_received: u32,
    /// Requests and re-reported versions left unanswered ([`Cloud::set_ignore_requests`]).
    pub requests_ignored: u32,
    /// Upgrade notifications that carried a fresh URL ([`Cloud::set_url_renewer`]).
    pub urls_renewed: u32,
    /// The UCloud task id of the target upgrade, once a task was sent.
    pub task_id: Option<String>,
    /// Every upgrade of the run in the order it became the target: the one [`Cloud::run`] was
    /// given, then any that superseded it ([`Announcement::Supersede`]). The last one is the
    /// run's target.
    pub upgrades: Vec<UpgradeRecord>,
    /// From the first upgrade notification to the end of the download (progress 100, or
    /// Tencent `burning`), if both happened.
    pub download_time: Option<Duration>,
    /// From the start of the run to its end.
    pub elapsed: Duration,
    /// What the device decided about the target upgrade, whatever else went wrong.
    pub target_outcome: TargetOutcome,
    /// `Err` for anything but a success: a [`Failure::Violation`] wins over the device's own
    /// failure report.
    pub outcome: Result<Success, Failure>,
}

impl Summary {
    /// Before anything happened.
    fn empty(protocol: Protocol) -> Summary {
        Summary {
            protocol,
            messages: Vec::new(),
            progress: Vec::new(),
            versions: Vec::new(),
            upgrade_messages_sent: 0,
            version_replies_sent: 0,
            requests_received: 0,
            requests_ignored: 0,
            urls_renewed: 0,
            task_id: None,
            upgrades: Vec::new(),
            download_time: None,
            elapsed: Duration::ZERO,
            target_outcome: TargetOutcome::Timeout,
            outcome: Err(Failure::Timeout {
                waiting_for: String::new(),
            }),
        }
    }

    pub fn is_success(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The violation that ended the run, if one did.
    pub fn violation(&self) -> Option<&Failure> {
        self.outcome
            .as_ref()
            .err()
            .filter(|f| matches!(f, Failure::Violation { .. }))
    }

    /// `outcome: success VERSION`, `outcome: failed VERSION reports=N desc=...` or
    /// `outcome: timeout`: the one line a run ends with.
    pub fn outcome_line(&self) -> String {
        format!("outcome: {}", self.target_outcome)
    }

    /// The run's target upgrade (the last of [`upgrades`](Self::upgrades)).
    pub fn target(&self) -> &UpgradeRecord {
        self.upgrades.last().expect("a run has a target")
    }
}

/// What the device decided about the run's target upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOutcome {
    /// The device completed the target upgrade, or already ran its version.
    Success { version: String },
    /// The device reported the target upgrade failed, `reports` times (more than once is a
    /// violation); `desc` is the first report's text (`desc`, `result_msg`, `ErrMsg`).
    Failed {
        version: String,
        reports: u32,
        desc: String,
    },
    /// Nothing decisive happened (the run timed out, gave up, or a violation ended it first).
    Timeout,
}

impl TargetOutcome {
    /// What the device decided about `target`, given how the run ended.
    fn of(outcome: &Result<Success, Failure>, target: &UpgradeRecord) -> TargetOutcome {
        match (outcome, &target.first_failure) {
            (Ok(_), _) => TargetOutcome::Success {
                version: target.firmware.version.clone(),
            },
            (Err(_), Some((_, desc))) => TargetOutcome::Failed {
                version: target.firmware.version.clone(),
                reports: target.failure_reports,
                desc: desc.clone().unwrap_or_default(),
            },
            (Err(_), None) => TargetOutcome::Timeout,
        }
    }
}

impl fmt::Display for TargetOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetOutcome::Success { version } => write!(f, "success {version}"),
            TargetOutcome::Failed {
                version,
                reports,
                desc,
            } => {
                // One line whatever the device wrote.
                let desc = desc.replace(['\r', '\n'], " ");
                write!(f, "failed {version} reports={reports} desc={desc}")
            }
            TargetOutcome::Timeout => f.write_str("timeout"),
        }
    }
}

/// One upgrade of a run, as the cloud announced it and as the device answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRecord {
    /// As last announced (a renewed URL replaces the first one).
    pub firmware: Firmware,
    /// UCloud: the task id.
    pub task_id: Option<String>,
    /// Upgrade notifications published for it.
    pub messages_sent: u32,
    /// Failure reports the device sent for it (more than one is a violation).
    pub failure_reports: u32,
    /// The first failure report: step (Aliyun/SagooIOT), `result_code` (Tencent) or -1
    /// (UCloud), and the device's text.
    pub first_failure: Option<(i32, Option<String>)>,
    /// A later upgrade took its place ([`Announcement::Supersede`]).
    pub superseded: bool,
}

/// What the cloud announces on its own when a [`Trigger`] fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The target upgrade again, exactly as last announced (same URL, version, digest, size,
    /// UCloud task).
    Again,
    /// A different upgrade, which becomes the run's target: the device must give up the one
    /// in progress (reporting it failed) and install this one.
    Supersede(Firmware),
}

/// Makes a [`Cloud`] publish an [`Announcement`] during [`Cloud::run`], from any thread
/// (typically a [`crate::FirmwareServer::on_image_sent`] hook, so that it happens at a known
/// point of the download). Cheap to clone.
#[derive(Clone)]
pub struct Trigger {
    tx: Sender<Net>,
    what: Announcement,
}

impl Trigger {
    /// Asks the running cloud to publish its announcement and waits (at most 5 s) until the
    /// broker has routed it (the cloud's own copy came back), so the device has it by then.
    /// Returns whether it was published: not when no run is going on, nothing was announced
    /// yet (the run's first announcement is an answer to the device), or the target upgrade
    /// already failed.
    pub fn fire(&self) -> bool {
        let (done, published) = mpsc::sync_channel(1);
        let ask = Net::Announce {
            what: self.what.clone(),
            asked: Instant::now(),
            done,
        };
        if self.tx.send(ask).is_err() {
            return false;
        }
        published.recv_timeout(TRIGGER_WAIT).unwrap_or(false)
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Trigger").field(&self.what).finish()
    }
}

/// What the MQTT thread (and the [`Trigger`]s) forward to the run loop.
enum Net {
    Connected,
    Subscribed(bool),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Error(String),
    /// The MQTT thread is gone.
    Ended,
    /// A [`Trigger`] fired; `done` gets whether the announcement was published.
    Announce {
        what: Announcement,
        asked: Instant,
        done: SyncSender<bool>,
    },
}

/// One protocol's topics for one device.
#[derive(Debug, Clone)]
enum Wire {
    Aliyun(aliyun::Topics),
    Sagoo(sagoo::Topics),
    Tencent(tencent::Topics),
    Ucloud(ucloud::Topics),
}

impl Wire {
    fn new(protocol: Protocol, pk: &str, dn: &str) -> Wire {
        match protocol {
            Protocol::Aliyun => Wire::Aliyun(aliyun::Topics::new(pk, dn)),
            Protocol::Sagoo => Wire::Sagoo(sagoo::Topics::new(pk, dn)),
            Protocol::Tencent => Wire::Tencent(tencent::Topics::new(pk, dn)),
            Protocol::Ucloud => Wire::Ucloud(ucloud::Topics::new(pk, dn)),
        }
    }

    fn parse(&self, topic: &str, payload: &[u8]) -> Result<Option<DeviceMsg>, String> {
        match self {
            Wire::Aliyun(t) => aliyun::parse(t, topic, payload),
            Wire::Sagoo(t) => sagoo::parse(t, topic, payload),
            Wire::Tencent(t) => tencent::parse(t, topic, payload),
            Wire::Ucloud(t) => ucloud::parse(t, topic, payload),
        }
    }

    /// Where the device reports its version.
    fn version_topic(&self) -> &str {
        match self {
            Wire::Aliyun(t) => &t.inform,
            Wire::Sagoo(t) => &t.inform,
            Wire::Tencent(t) => &t.report,
            Wire::Ucloud(t) => &t.upstream,
        }
    }

    /// Cloud → device.
    fn downstream(&self) -> &str {
        match self {
            Wire::Aliyun(t) => &t.upgrade,
            Wire::Sagoo(t) => &t.upgrade,
            Wire::Tencent(t) => &t.update,
            Wire::Ucloud(t) => &t.downstream,
        }
    }

    /// Device → cloud, for messages.
    fn upstream(&self) -> Vec<&str> {
        match self {
            Wire::Aliyun(t) => t.from_device().to_vec(),
            Wire::Sagoo(t) => t.from_device().to_vec(),
            Wire::Tencent(t) => vec![&t.report],
            Wire::Ucloud(t) => vec![&t.upstream],
        }
    }
}

/// The OTA topic families of all four platforms for one device; the cloud listens to all of
/// them to catch a device that publishes on the wrong one.
fn watched_filters(pk: &str, dn: &str) -> Vec<String> {
    vec![
        format!("/ota/device/+/{pk}/{dn}"),
        format!("$ota/+/{pk}/{dn}"),
        format!("/$system/{pk}/{dn}/ota/+"),
    ]
}

/// The cloud side of one device, connected to a broker.
pub struct Cloud {
    protocol: Protocol,
    wire: Wire,
    filters: Vec<String>,
    options: CloudOptions,
    client: Client,
    events: Receiver<Net>,
    /// For [`Trigger`]s: they talk to the run loop through the same channel as the broker.
    tx: Sender<Net>,
    quiet: bool,
    max_upgrade_messages: u32,
    ignore_requests: bool,
    grace: Duration,
    /// Gives a fresh URL, for the URL it replaces, for every upgrade notification after the
    /// first.
    renew_url: Option<RenewUrl>,
    observer: Option<Observer>,
    /// False for a cloud on a [`SharedConnection`], which outlives it.
    owns_connection: bool,
    /// The upgrade is this package ([`Cloud::set_package`]).
    package: Option<PackagePlay>,
}

/// A package and what carries it.
struct PackagePlay {
    package: Package,
    meter: Arc<dyn PackageMeter>,
}

/// Given the URL an upgrade was last announced with, a fresh one ([`Cloud::set_url_renewer_for`]).
type RenewUrl = Box<dyn FnMut(&str) -> String + Send>;

/// Kept from when Aliyun was the only protocol; `AliyunCloud::connect_aliyun(...)` reads
/// naturally.
pub type AliyunCloud = Cloud;

/// What the run loop does after a message.
enum Next {
    Wait,
    /// Send the target upgrade (an answer to the device: bounded).
    Offer,
    Done(Success),
    /// The device reported the target upgrade failed: the run ends after the grace period.
    TargetFailed,
}

/// One upgrade of the run and the state its checks need.
struct Upgrade {
    record: UpgradeRecord,
    /// UCloud: the task id.
    task_id: String,
    /// UCloud: the `CurrentVersion` announced in the latest notification.
    announced_from: Option<String>,
    /// UCloud: `notify` (the ack) seen.
    acked: bool,
    /// UCloud: `upgrading` seen.
    upgrading: bool,
    /// Tencent: `burning` seen.
    burning: bool,
    /// Tencent: the last state reported.
    last_state: Option<TencentState>,
}

impl Upgrade {
    fn new(firmware: Firmware, task_id: String) -> Upgrade {
        Upgrade {
            record: UpgradeRecord {
                firmware,
                task_id: None,
                messages_sent: 0,
                failure_reports: 0,
                first_failure: None,
                superseded: false,
            },
            task_id,
            announced_from: None,
            acked: false,
            upgrading: false,
            burning: false,
            last_state: None,
        }
    }

    fn version(&self) -> &str {
        &self.record.firmware.version
    }

    fn announced(&self) -> bool {
        self.record.messages_sent > 0
    }

    fn failed(&self) -> bool {
        self.record.failure_reports > 0
    }

    /// A non-failure report for an upgrade the device already reported failed.
    fn check_not_failed(&self, what: &str) -> Result<(), String> {
        match &self.record.first_failure {
            Some((code, desc)) => Err(format!(
                "{what} for the upgrade to {} after reporting it failed ({code}: {:?}); a failed \
                 upgrade stays failed",
                self.version(),
                desc.as_deref().unwrap_or("")
            )),
            None => Ok(()),
        }
    }

    /// UCloud: the announced `CurrentVersion` differs from what the device runs, so the
    /// device must refuse the task.
    fn must_refuse<'a>(&'a self, device_version: &'a Option<String>) -> Option<(&'a str, &'a str)> {
        match (&self.announced_from, device_version) {
            (Some(a), Some(d)) if a != d => Some((a, d)),
            _ => None,
        }
    }
}

/// Per-run state.
struct Run {
    started: Instant,
    /// When the run ends: its timeout, shortened by an abort or a failure report's grace.
    deadline: Instant,
    /// The abort flag was seen set.
    aborted: bool,
    /// The grace period after the target's failure report is running.
    grace_started: bool,
    first_upgrade_at: Option<Instant>,
    /// The version the device last reported running (UCloud's `CurrentVersion`).
    device_version: Option<String>,
    /// Never empty; the last one is the target.
    upgrades: Vec<Upgrade>,
    /// Upgrade notifications sent in answer to the device (bounded by the limit).
    answers: u32,
    /// UCloud task ids are this plus the upgrade's index.
    task_base: u64,
    /// Published announcements whose own copy has not come back from the broker yet, and
    /// who waits for it.
    echoes: Vec<(String, SyncSender<bool>)>,
    /// The highest download step reported (packages: progress must not go back).
    last_step: i32,
}

impl Run {
    fn new(firmware: &Firmware, timeout: Duration) -> Run {
        let started = Instant::now();
        let task_base = now_ms();
        Run {
            started,
            deadline: started + timeout,
            aborted: false,
            grace_started: false,
            first_upgrade_at: None,
            device_version: None,
            upgrades: vec![Upgrade::new(firmware.clone(), task_base.to_string())],
            answers: 0,
            task_base,
            echoes: Vec::new(),
            last_step: 0,
        }
    }

    fn target(&self) -> &Upgrade {
        self.upgrades.last().expect("a run has a target")
    }

    fn target_mut(&mut self) -> &mut Upgrade {
        self.upgrades.last_mut().expect("a run has a target")
    }

    fn target_index(&self) -> usize {
        self.upgrades.len() - 1
    }

    fn offered(&self) -> bool {
        self.upgrades.iter().any(Upgrade::announced)
    }

    /// Aliyun/SagooIOT progress says nothing about which upgrade it is for. After a
    /// supersede, reports belong to the superseded upgrade until its failure report (which
    /// the device sends before it turns to the new one); after that, to the target.
    fn progress_owner(&self) -> usize {
        self.upgrades
            .iter()
            .position(|u| u.record.superseded && u.announced() && !u.failed())
            .unwrap_or(self.target_index())
    }
}

impl Cloud {
    /// Connects to the broker at `host:port` and subscribes (QoS 1) to the device's OTA
    /// topics (those of all four platforms, to catch wrong topics). Returns once the
    /// subscription is acknowledged, so a device started afterwards cannot report its version
    /// unseen.
    pub fn connect(
        protocol: Protocol,
        host: &str,
        port: u16,
        product_key: &str,
        device_name: &str,
    ) -> io::Result<Cloud> {
        let (client, tx, events) = start_mqtt(host, port)?;
        let cloud = Cloud::on_client(protocol, product_key, device_name, client, tx, events, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        cloud.wait_for(deadline, |net| match net {
            Net::Connected => Some(Ok(())),
            Net::Error(e) => Some(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("cannot connect to MQTT broker {host}:{port}: {e}"),
            ))),
            _ => None,
        })?;
        cloud.subscribe()?;
        cloud.wait_for(deadline, |net| match net {
            Net::Subscribed(true) => Some(Ok(())),
            Net::Subscribed(false) => {
                Some(Err(io::Error::other("broker refused the subscription")))
            }
            Net::Error(e) => Some(Err(io::Error::other(format!("mqtt: {e}")))),
            _ => None,
        })?;
        Ok(cloud)
    }

    /// A cloud for one device that publishes through `client` and hears what `tx` forwards on
    /// `events`.
    fn on_client(
        protocol: Protocol,
        product_key: &str,
        device_name: &str,
        client: Client,
        tx: Sender<Net>,
        events: Receiver<Net>,
        owns_connection: bool,
    ) -> Cloud {
        Cloud {
            protocol,
            wire: Wire::new(protocol, product_key, device_name),
            filters: watched_filters(product_key, device_name),
            options: CloudOptions::default(),
            client,
            events,
            tx,
            quiet: false,
            max_upgrade_messages: DEFAULT_MAX_UPGRADE_MESSAGES,
            ignore_requests: false,
            grace: DEFAULT_GRACE,
            renew_url: None,
            observer: None,
            owns_connection,
            package: None,
        }
    }

    /// [`Cloud::connect`] with [`Protocol::Aliyun`].
    pub fn connect_aliyun(
        host: &str,
        port: u16,
        product_key: &str,
        device_name: &str,
    ) -> io::Result<Cloud> {
        Self::connect(Protocol::Aliyun, host, port, product_key, device_name)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Sets what the upgrade looks like (module, sign method, strategy, current version).
    /// Fails, changing nothing, when an option does not apply to this protocol
    /// ([`CloudOptions::check`]).
    pub fn set_options(&mut self, options: CloudOptions) -> Result<&mut Self, String> {
        options.check(self.protocol)?;
        self.options = options;
        Ok(self)
    }

    pub fn options(&self) -> &CloudOptions {
        &self.options
    }

    /// Suppresses the `cloud: ...` narration ([`crate::console`]; failures are still returned).
    pub fn set_quiet(&mut self, quiet: bool) -> &mut Self {
        self.quiet = quiet;
        self
    }

    /// Tells `observer` every [`Stage`] the run reaches, as it reaches it (from the thread that
    /// runs the cloud).
    pub fn set_observer(&mut self, observer: impl Fn(Stage) + Send + 'static) -> &mut Self {
        self.observer = Some(Box::new(observer));
        self
    }

    fn note(&self, stage: Stage) {
        if let Some(observer) = &self.observer {
            observer(stage);
        }
    }

    /// Changes the limit on upgrade notifications sent in answer to the device (version
    /// reports, requests) per run (default 5). Announcements a [`Trigger`] makes are not
    /// counted.
    pub fn set_max_upgrade_messages(&mut self, n: u32) -> &mut Self {
        self.max_upgrade_messages = n;
        self
    }

    /// Never answers the device's requests for the upgrade: an Aliyun `request`, a version
    /// report after the first announcement (the resume path of a device that restarted), a
    /// Tencent/UCloud failure naming an expired URL. An expired URL is then never refreshed.
    pub fn set_ignore_requests(&mut self, ignore: bool) -> &mut Self {
        self.ignore_requests = ignore;
        self
    }

    /// How long the run goes on after the device reported the target upgrade failed, to catch
    /// what it must not send after that (default 2 s).
    pub fn set_grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// Makes every upgrade notification after the first of a run (a superseding one included;
    /// not [`Announcement::Again`], an exact repeat) carry a fresh URL from `renew` instead of
    /// the firmware's, as a platform signs a new download URL each time it (re)sends an
    /// upgrade: a device whose URL expired (HTTP 403) asks again (Aliyun
    /// `request`) or re-reports its version, and gets a URL that works. Typically
    /// `let r = server.url_renewer(); cloud.set_url_renewer(move || r.renew());` with a
    /// server whose [`crate::Faults::expire_after`] is set. For runs with more than one image
    /// (a supersede), use [`set_url_renewer_for`](Self::set_url_renewer_for).
    pub fn set_url_renewer(
        &mut self,
        mut renew: impl FnMut() -> String + Send + 'static,
    ) -> &mut Self {
        self.renew_url = Some(Box::new(move |_: &str| renew()));
        self
    }

    /// Like [`set_url_renewer`](Self::set_url_renewer), with `renew` given the URL it replaces
    /// (so it can renew the URL of whichever image is announced), e.g.
    /// `cloud.set_url_renewer_for(move |url| r.renew_url_of(url))`.
    pub fn set_url_renewer_for(
        &mut self,
        renew: impl FnMut(&str) -> String + Send + 'static,
    ) -> &mut Self {
        self.renew_url = Some(Box::new(renew));
        self
    }

    /// Makes the upgrade `package` ([`Package`]: several files, or a download over MQTT)
    /// instead of one file: the upgrade message is [`Package::upgrade_message`], `meter` tells
    /// what the server carrying it has sent. Beyond the usual checks, a run then checks that
    /// the device's download progress never goes back and is weighted by bytes over the whole
    /// package (a step above `100 * sent / size` + 1, with `sent` what `meter` has handed out,
    /// is a violation, as is step 100 before every byte was sent), that the new version is
    /// reported only once every file went out whole ([`PackageMeter::missing`]), and ends the
    /// run on a bad block request ([`PackageMeter::violation`]). Run it with
    /// [`run_package`](Self::run_package). Fails for a platform without packages (Tencent,
    /// UCloud).
    pub fn set_package(
        &mut self,
        package: Package,
        meter: Arc<dyn PackageMeter>,
    ) -> Result<&mut Self, String> {
        package.check(self.protocol, &self.options)?;
        self.package = Some(PackagePlay { package, meter });
        Ok(self)
    }

    /// [`run`](Self::run) for the package of [`set_package`](Self::set_package) (its
    /// [`Package::firmware`] is the run's target). Panics without a package.
    pub fn run_package(&mut self, timeout: Duration) -> Summary {
        let firmware = self
            .package
            .as_ref()
            .expect("set_package before run_package")
            .package
            .firmware();
        self.run(&firmware, timeout)
    }

    /// A handle that makes this cloud publish `what` during a run, e.g. from a
    /// [`crate::FirmwareServer::on_image_sent`] hook.
    pub fn trigger(&self, what: Announcement) -> Trigger {
        Trigger {
            tx: self.tx.clone(),
            what,
        }
    }

    /// Whether a failure the device reports is the expired URL this run provokes on purpose
    /// (a URL renewer is set), which a fresh URL answers, rather than the end of the upgrade.
    /// Tencent and UCloud only: an Aliyun/SagooIOT device asks for a fresh URL before it
    /// reports anything, so its failure report is final.
    fn url_expiry_expected(&self, desc: &str) -> bool {
        self.renew_url.is_some()
            && !self.ignore_requests
            && desc.to_ascii_lowercase().contains("expired")
    }

    /// Plays one upgrade: waits for the device's version report, offers `firmware` if the
    /// version differs, follows the progress and checks every message, and succeeds when the
    /// protocol's success condition is met (see [`Success::Upgraded`]). A failure report for
    /// the target upgrade ends the run after the grace period ([`Cloud::set_grace`]). Gives up
    /// after `timeout`.
    pub fn run(&mut self, firmware: &Firmware, timeout: Duration) -> Summary {
        self.run_until(firmware, timeout, &AtomicBool::new(false))
    }

    /// Like [`Cloud::run`], but once `abort` becomes true (e.g. the device process exited)
    /// it waits only a short grace period for messages still in flight.
    pub fn run_until(
        &mut self,
        firmware: &Firmware,
        timeout: Duration,
        abort: &AtomicBool,
    ) -> Summary {
        let mut run = Run::new(firmware, timeout);
        let mut summary = Summary::empty(self.protocol);
        self.say(format!(
            "playing {}; waiting for the device's version report on {}",
            self.protocol,
            self.wire.version_topic()
        ));
        self.note(Stage::WaitingForVersion);
        let outcome = loop {
            let wait = match self.time_left(abort, &summary, &mut run) {
                Ok(wait) => wait,
                Err(end) => break Err(end),
            };
            if let Some((topic, reason, payload)) =
                self.package.as_ref().and_then(|p| p.meter.violation())
            {
                break Err(Failure::Violation {
                    topic,
                    reason,
                    payload,
                });
            }
            match self.next_event(wait, &mut summary, &mut run) {
                Ok(Some((topic, payload))) => {
                    if let Some(end) = self.on_message(&topic, &payload, &mut summary, &mut run) {
                        break end;
                    }
                }
                Ok(None) => {}
                Err(end) => break Err(end),
            }
        };
        self.conclude(outcome, summary, run)
    }

    /// The run's clock: `abort` shortens it; past the deadline the run ends (with the
    /// device's failure report of the target, if there was one). Else how long to wait for
    /// the next event.
    fn time_left(
        &self,
        abort: &AtomicBool,
        summary: &Summary,
        run: &mut Run,
    ) -> Result<Duration, Failure> {
        if !run.aborted && abort.load(Ordering::SeqCst) {
            run.aborted = true;
            run.deadline = run.deadline.min(Instant::now() + ABORT_GRACE);
        }
        let now = Instant::now();
        if now < run.deadline {
            return Ok((run.deadline - now).min(Duration::from_millis(100)));
        }
        Err(match &run.target().record.first_failure {
            Some((step, desc)) => Failure::DeviceFailed {
                step: *step,
                desc: desc.clone(),
            },
            None => Failure::Timeout {
                waiting_for: self.waiting_for(summary, run),
            },
        })
    }

    /// Waits up to `wait` for what the MQTT thread or a [`Trigger`] forwards and deals with
    /// all of it but the messages on watched topics, which it returns. `Err` ends the run.
    fn next_event(
        &mut self,
        wait: Duration,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<Option<(String, Vec<u8>)>, Failure> {
        match self.events.recv_timeout(wait) {
            Ok(Net::Message { topic, payload }) => return Ok(Some((topic, payload))),
            Ok(Net::Connected) => {
                // Sessions are clean: after a reconnect the subscriptions must be renewed.
                self.say("reconnected to the broker; subscribing again".into());
                self.subscribe().map_err(|e| Failure::Mqtt(e.to_string()))?;
            }
            Ok(Net::Subscribed(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Net::Error(e)) => self.say(format!("mqtt connection error: {e} (reconnecting)")),
            Ok(Net::Announce { asked, .. }) if asked < run.started => {} // no run then
            Ok(Net::Announce { what, done, .. }) => self.on_trigger(what, done, summary, run)?,
            Ok(Net::Ended) | Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::Mqtt("connection thread ended".into()));
            }
        }
        Ok(None)
    }

    /// A [`Trigger`] fired: publishes its announcement; `done` hears whether it was, once the
    /// broker has routed it (see [`check_message`](Self::check_message)). `Err` ends the run.
    fn on_trigger(
        &mut self,
        what: Announcement,
        done: SyncSender<bool>,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<(), Failure> {
        match self.announce(what, summary, run) {
            Ok(Some(payload)) => run.echoes.push((payload, done)),
            Ok(None) => {
                let _ = done.send(false);
            }
            Err(e) => {
                let _ = done.send(true);
                return Err(Failure::Mqtt(e.to_string()));
            }
        }
        Ok(())
    }

    /// A message on a watched topic: checked, then played. `Some` ends the run.
    fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        summary: &mut Summary,
        run: &mut Run,
    ) -> Option<Result<Success, Failure>> {
        let violation = |reason: String| Failure::Violation {
            topic: topic.to_string(),
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        };
        let msg = match self.check_message(topic, payload, run) {
            Ok(Some(msg)) => msg,
            Ok(None) => return None,
            Err(reason) => return Some(Err(violation(reason))),
        };
        summary.messages.push(msg.clone());
        match self.handle(msg, summary, run) {
            Ok(Next::Wait) => None,
            Ok(Next::Done(success)) => Some(Ok(success)),
            Ok(Next::TargetFailed) => {
                if let Some((_, desc)) = &run.target().record.first_failure {
                    self.note(Stage::Failed(desc.clone().unwrap_or_default()));
                }
                self.start_grace(run);
                None
            }
            Ok(Next::Offer) => self.answer_device(summary, run).err().map(Err),
            Err(reason) => Some(Err(violation(reason))),
        }
    }

    /// Parses a message on a watched topic. `Ok(None)`: the cloud's own upgrade message came
    /// back through the family subscription, so the broker has routed it, which is what a
    /// [`Trigger`] waits for. `Err` is a violation's reason.
    fn check_message(
        &self,
        topic: &str,
        payload: &[u8],
        run: &mut Run,
    ) -> Result<Option<DeviceMsg>, String> {
        match self.wire.parse(topic, payload)? {
            Some(msg) => Ok(Some(msg)),
            None if topic == self.wire.downstream() => {
                if let Some(i) = run.echoes.iter().position(|(p, _)| p.as_bytes() == payload) {
                    let _ = run.echoes.remove(i).1.send(true);
                }
                Ok(None)
            }
            None => Err(format!(
                "not a {} device → cloud topic (expected {})",
                self.protocol,
                self.wire.upstream().join(" or ")
            )),
        }
    }

    /// The device reported the target upgrade failed: the run ends after the grace period
    /// (counted from the first such report).
    fn start_grace(&self, run: &mut Run) {
        if run.grace_started {
            return;
        }
        run.grace_started = true;
        run.deadline = run.deadline.min(Instant::now() + self.grace);
        self.say(format!(
            "the upgrade to {} failed; watching {} ms more for what must not follow",
            run.target().version(),
            self.grace.as_millis()
        ));
    }

    /// Sends the target upgrade in answer to the device, within the limit of answers. `Err`
    /// ends the run.
    fn answer_device(&mut self, summary: &mut Summary, run: &mut Run) -> Result<(), Failure> {
        if run.target().failed() {
            self.say("no answer: the upgrade already failed".into());
            return Ok(());
        }
        if run.answers >= self.max_upgrade_messages {
            return Err(Failure::TooManyUpgradeMessages(run.answers));
        }
        self.publish_target(summary, run, true)
            .map_err(|e| Failure::Mqtt(e.to_string()))?;
        run.answers += 1;
        Ok(())
    }

    /// Ends the run with `outcome`: releases the triggers still waiting for their echo, says
    /// how the upgrade ended and completes the summary.
    fn conclude(
        &self,
        outcome: Result<Success, Failure>,
        mut summary: Summary,
        mut run: Run,
    ) -> Summary {
        // Nobody waits for these any more; they were published.
        for (_, done) in run.echoes.drain(..) {
            let _ = done.send(true);
        }
        let target = &run.target().record;
        summary.target_outcome = TargetOutcome::of(&outcome, target);
        let target_version = target.firmware.version.clone();
        match &outcome {
            Ok(Success::Upgraded) => self.say(format!(
                "device now runs {target_version}: upgrade succeeded"
            )),
            Ok(Success::AlreadyCurrent) => {
                self.say(format!("device already runs {target_version}"))
            }
            Err(e) => self.say(format!("upgrade failed: {e}")),
        }
        self.note(match &outcome {
            Ok(Success::Upgraded) => Stage::Upgraded,
            Ok(Success::AlreadyCurrent) => Stage::AlreadyCurrent,
            Err(Failure::Timeout { waiting_for }) => Stage::TimedOut(waiting_for.clone()),
            Err(Failure::DeviceFailed { step, desc }) => Stage::Failed(
                format!("{step} {}", desc.as_deref().unwrap_or(""))
                    .trim_end()
                    .into(),
            ),
            Err(e) => Stage::Failed(e.to_string()),
        });
        if self.protocol == Protocol::Ucloud && run.target().announced() {
            summary.task_id = Some(run.target().task_id.clone());
        }
        summary.elapsed = run.started.elapsed();
        summary.upgrades = run.upgrades.into_iter().map(|u| u.record).collect();
        summary.outcome = outcome;
        summary
    }

    /// Publishes the target upgrade: as last announced, or with a fresh URL when a renewer is
    /// set and this is not the run's first notification (`renew`). Returns the payload.
    fn publish_target(
        &mut self,
        summary: &mut Summary,
        run: &mut Run,
        renew: bool,
    ) -> io::Result<String> {
        if renew && summary.upgrade_messages_sent > 0 {
            if let (Some(renew_url), Some(play)) = (&mut self.renew_url, &mut self.package) {
                for file in &mut play.package.files {
                    file.url = renew_url(&file.url);
                }
                self.say("fresh URLs for every file of the package".into());
                summary.urls_renewed += 1;
            } else if let Some(renew_url) = &mut self.renew_url {
                let target = run.target_mut();
                let fresh = renew_url(&target.record.firmware.url);
                self.say(format!("fresh firmware URL: {fresh}"));
                target.record.firmware.url = fresh;
                summary.urls_renewed += 1;
            }
        }
        let index = run.target_index();
        let payload = self.publish_upgrade(run, index)?;
        summary.upgrade_messages_sent += 1;
        run.first_upgrade_at.get_or_insert_with(Instant::now);
        Ok(payload)
    }

    /// A [`Trigger`] fired: publishes what it asks for, if the run is in a state to.
    /// `Ok(None)`: nothing was published.
    fn announce(
        &mut self,
        what: Announcement,
        summary: &mut Summary,
        run: &mut Run,
    ) -> io::Result<Option<String>> {
        if run.target().failed() {
            self.say(format!(
                "not announcing {}: the upgrade to {} already failed",
                describe_announcement(&what),
                run.target().version()
            ));
            return Ok(None);
        }
        match what {
            Announcement::Again => {
                if !run.target().announced() {
                    self.say("nothing announced yet; nothing to announce again".into());
                    return Ok(None);
                }
                self.say(format!(
                    "announcing the upgrade to {} again, unchanged",
                    run.target().version()
                ));
                self.publish_target(summary, run, false).map(Some)
            }
            Announcement::Supersede(next) => {
                let offered = run.offered();
                let old = run.target_mut();
                old.record.superseded = true;
                self.say(format!(
                    "the upgrade to {} is superseded by an upgrade to {} ({} bytes, md5 {})",
                    old.version(),
                    next.version,
                    next.size,
                    next.md5
                ));
                let task_id = (run.task_base + run.upgrades.len() as u64).to_string();
                run.upgrades.push(Upgrade::new(next, task_id));
                if !offered {
                    self.say(
                        "nothing announced yet: the new upgrade is offered when the device asks"
                            .into(),
                    );
                    return Ok(None);
                }
                self.publish_target(summary, run, true).map(Some)
            }
        }
    }

    /// The protocol's flow and stateful checks for one checked message. `Err` is a violation.
    fn handle(&self, msg: DeviceMsg, summary: &mut Summary, run: &mut Run) -> Result<Next, String> {
        match msg {
            DeviceMsg::Version { version, module } => {
                self.version_report(version, module, summary, run)
            }
            DeviceMsg::Request { version, .. } => {
                summary.requests_received += 1;
                self.say(format!("device (version {version}) asks for the firmware"));
                Ok(self.answer_request(summary))
            }
            DeviceMsg::Progress { step, ref desc, .. } => {
                self.progress_report(&msg, step, desc.as_deref(), summary, run)
            }
            DeviceMsg::TencentProgress { version, state } => {
                self.tencent_progress(version, state, summary, run)
            }
            DeviceMsg::TaskAck { ref task_id }
            | DeviceMsg::TaskUpgrading { ref task_id }
            | DeviceMsg::TaskSuccess { ref task_id }
            | DeviceMsg::TaskFail { ref task_id, .. } => {
                let owner = ucloud_task_owner(run, task_id)?;
                self.ucloud_task(msg, owner, run)
            }
        }
    }

    /// The device reports the version it runs (at start-up, after the reboot, or again).
    fn version_report(
        &self,
        version: String,
        module: Option<String>,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<Next, String> {
        let m_text = module
            .as_deref()
            .map(|m| format!(" (module {m})"))
            .unwrap_or_default();
        self.say(format!("device reports version {version}{m_text}"));
        summary.versions.push(version.clone());
        if self.protocol == Protocol::Tencent {
            self.reply_to_tencent_version(&version, summary);
        }
        let ours = self.options.module.as_deref();
        let checks_module = matches!(self.protocol, Protocol::Sagoo | Protocol::Ucloud);
        if checks_module && !sagoo::same_module(module.as_deref(), ours) {
            self.say(format!(
                "not the upgrade's module ({}); nothing to do",
                ours.unwrap_or("default")
            ));
            return Ok(Next::Wait);
        }
        // Running a version the device reported failed to install.
        if let Some(u) = run.upgrades.iter().find(|u| u.version() == version) {
            u.check_not_failed(&format!("version report {version:?}"))?;
        }
        let offered = run.offered();
        if version == run.target().version() && run.offered() {
            if let Some(gap) = self.package.as_ref().and_then(|p| p.meter.missing()) {
                return Err(format!(
                    "the device reports version {version} but the package was not downloaded \
                     whole: {gap}"
                ));
            }
        }
        if version == run.target().version() {
            return Ok(match self.protocol {
                Protocol::Aliyun | Protocol::Sagoo if offered => Next::Done(Success::Upgraded),
                // Success is `done` / `success`, not the version report.
                Protocol::Tencent | Protocol::Ucloud if offered => Next::Wait,
                _ => Next::Done(Success::AlreadyCurrent),
            });
        }
        run.device_version = Some(version);
        if !offered {
            return Ok(Next::Offer);
        }
        // A device that rebooted into its old version or came back online: the
        // platform (re)sends the pending upgrade after a report. A restarted device resumes
        // from its last saved record, which can lie behind the progress it reported.
        run.last_step = 0;
        Ok(self.answer_request(summary))
    }

    /// Tencent answers every version report with `report_version_rsp`; a failure to send it
    /// is narrated, not fatal.
    fn reply_to_tencent_version(&self, version: &str, summary: &mut Summary) {
        let reply = tencent::version_reply(version);
        if let Err(e) = self.publish(self.wire.downstream(), reply) {
            self.say(format!("cannot send report_version_rsp: {e}"));
        } else {
            summary.version_replies_sent += 1;
            self.say(format!("sent report_version_rsp for {version}"));
        }
    }

    /// Aliyun/SagooIOT progress `msg`: a download percent, or a failure step.
    fn progress_report(
        &self,
        msg: &DeviceMsg,
        step: i32,
        desc: Option<&str>,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<Next, String> {
        if self.protocol == Protocol::Sagoo {
            let strategy = if run.offered() {
                self.options.strategy.as_deref()
            } else {
                None
            };
            sagoo::check_progress(msg, self.options.module.as_deref(), strategy)?;
        }
        summary.progress.push(step);
        let desc_text = desc.unwrap_or("");
        let owner = run.progress_owner();
        if step < 0 {
            self.say(format!("device reports failure step {step}: {desc_text}"));
            return self.failure_report(run, owner, step, desc.map(str::to_string), false);
        }
        run.upgrades[owner].check_not_failed(&format!("step {step}"))?;
        if let Some(play) = &self.package {
            check_package_step(step, run.last_step, play)?;
        }
        run.last_step = run.last_step.max(step);
        self.say(
            format!("progress {step}% {desc_text}")
                .trim_end()
                .to_string(),
        );
        if owner == run.target_index() {
            if step == 100 {
                note_download_end(summary, run);
                self.note(Stage::Verified);
            } else {
                self.note(Stage::Downloading(Some(step as u8)));
            }
        }
        Ok(Next::Wait)
    }

    /// Tencent `report_progress`: finds the upgrade it names, then its state.
    fn tencent_progress(
        &self,
        version: String,
        state: TencentState,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<Next, String> {
        if !run.offered() {
            return Err("report_progress before any update_firmware".into());
        }
        let Some(owner) = run
            .upgrades
            .iter()
            .rposition(|u| u.announced() && u.version() == version)
        else {
            return Err(format!(
                "report.version {version:?} is not the version being installed ({:?})",
                run.target().version()
            ));
        };
        if let TencentState::Fail { code, msg } = state {
            summary.progress.push(code);
            self.say(format!("device reports fail {code} for {version}: {msg}"));
            run.upgrades[owner].last_state = Some(TencentState::Fail {
                code,
                msg: msg.clone(),
            });
            return self.failure_report(run, owner, code, Some(msg), true);
        }
        self.tencent_state(&version, state, owner, summary, run)
    }

    /// Tencent: a non-failure state of upgrade `owner` (downloading, burning, done, in that
    /// order).
    fn tencent_state(
        &self,
        version: &str,
        state: TencentState,
        owner: usize,
        summary: &mut Summary,
        run: &mut Run,
    ) -> Result<Next, String> {
        let is_target = owner == run.target_index();
        let upgrade = &mut run.upgrades[owner];
        upgrade.check_not_failed(&format!("state {}", state_name(&state)))?;
        upgrade.last_state = Some(state.clone());
        match state {
            TencentState::Downloading { percent } => {
                summary.progress.push(percent.into());
                self.say(format!("downloading {percent}% of {version}"));
                if is_target {
                    self.note(Stage::Downloading(Some(percent)));
                }
                if percent == 100 && is_target {
                    note_download_end(summary, run);
                }
                Ok(Next::Wait)
            }
            TencentState::Burning => {
                self.say(format!("burning {version}"));
                upgrade.burning = true;
                if is_target {
                    note_download_end(summary, run);
                    self.note(Stage::Verified);
                }
                Ok(Next::Wait)
            }
            TencentState::Done => {
                if !upgrade.burning {
                    return Err("state done before state burning".into());
                }
                self.say(format!("done: {version}"));
                if is_target {
                    Ok(Next::Done(Success::Upgraded))
                } else {
                    self.say("(a superseded upgrade; still waiting for the new one)".into());
                    Ok(Next::Wait)
                }
            }
            TencentState::Fail { .. } => unreachable!("tencent_progress handles failures"),
        }
    }

    /// UCloud: a message about task `owner`.
    fn ucloud_task(&self, msg: DeviceMsg, owner: usize, run: &mut Run) -> Result<Next, String> {
        let is_target = owner == run.target_index();
        let device_version = run.device_version.clone();
        let upgrade = &mut run.upgrades[owner];
        let task = upgrade.task_id.clone();
        match msg {
            DeviceMsg::TaskFail { err_msg, .. } => {
                self.say(format!("device reports fail for task {task}: {err_msg}"));
                let refusal = upgrade.must_refuse(&device_version).map(|(a, r)| {
                    format!("(expected: the task upgrades from {a} but the device runs {r})")
                });
                if let Some(note) = &refusal {
                    self.say(note.clone());
                }
                let resend = refusal.is_none();
                self.failure_report(run, owner, -1, Some(err_msg), resend)
            }
            DeviceMsg::TaskAck { .. } => {
                upgrade.check_not_failed("notify")?;
                self.say(format!("device acknowledged task {task}"));
                upgrade.acked = true;
                Ok(Next::Wait)
            }
            _ => {
                let success = matches!(msg, DeviceMsg::TaskSuccess { .. });
                upgrade.check_not_failed(if success { "success" } else { "upgrading" })?;
                if let Some((announced, runs)) = upgrade.must_refuse(&device_version) {
                    return Err(format!(
                        "the device went on with a task that upgrades from {announced} while it \
                         runs {runs}; it must refuse it (fail with an ErrMsg)"
                    ));
                }
                if !success && !upgrade.acked {
                    return Err("upgrading before the task was acknowledged (notify)".into());
                }
                if success && !upgrade.upgrading {
                    return Err("success before upgrading".into());
                }
                if !success {
                    self.say(format!("device is upgrading (task {task})"));
                    upgrade.upgrading = true;
                    if is_target {
                        self.note(Stage::Downloading(None));
                    }
                    return Ok(Next::Wait);
                }
                self.say(format!("device reports success for task {task}"));
                if is_target {
                    Ok(Next::Done(Success::Upgraded))
                } else {
                    self.say("(a superseded task; still waiting for the new one)".into());
                    Ok(Next::Wait)
                }
            }
        }
    }

    /// A failure report for upgrade `owner`: at most one per upgrade. `resend_on_expiry`:
    /// Tencent/UCloud, where the platform answers an expired URL with a fresh notification
    /// (the upgrade is then issued anew).
    fn failure_report(
        &self,
        run: &mut Run,
        owner: usize,
        code: i32,
        desc: Option<String>,
        resend_on_expiry: bool,
    ) -> Result<Next, String> {
        let is_target = owner == run.target_index();
        let upgrade = &mut run.upgrades[owner];
        if let Some((first, first_desc)) = &upgrade.record.first_failure {
            upgrade.record.failure_reports += 1;
            return Err(format!(
                "a second failure report for the upgrade to {} (the first: {first}: {:?}); at \
                 most one per upgrade",
                upgrade.version(),
                first_desc.as_deref().unwrap_or("")
            ));
        }
        upgrade.record.failure_reports = 1;
        let text = desc.clone().unwrap_or_default();
        upgrade.record.first_failure = Some((code, desc));
        if !is_target {
            self.say(format!(
                "the superseded upgrade to {} is reported failed{}",
                upgrade.version(),
                if text.to_ascii_lowercase().contains("supersed") {
                    ""
                } else {
                    " (the report does not say superseded)"
                }
            ));
            return Ok(Next::Wait);
        }
        if resend_on_expiry && self.url_expiry_expected(&text) {
            // No request on these platforms: the platform re-issues the upgrade with a
            // fresh URL, a new start for the one-failure rule.
            upgrade.record.failure_reports = 0;
            upgrade.record.first_failure = None;
            return Ok(Next::Offer);
        }
        Ok(Next::TargetFailed)
    }

    /// What to do with a request for the upgrade (Aliyun `request`, a re-reported version).
    fn answer_request(&self, summary: &mut Summary) -> Next {
        if self.ignore_requests {
            summary.requests_ignored += 1;
            self.say("not answered (--ignore-requests)".into());
            Next::Wait
        } else {
            Next::Offer
        }
    }

    /// Publishes the notification of upgrade `index` as it stands in `run`; returns the
    /// payload.
    fn publish_upgrade(&self, run: &mut Run, index: usize) -> io::Result<String> {
        let id = now_ms();
        let o = &self.options;
        let module = o.module.as_deref();
        let device_version = run.device_version.clone();
        let upgrade = &mut run.upgrades[index];
        let firmware = upgrade.record.firmware.clone();
        let package = self
            .package
            .as_ref()
            .filter(|p| p.package.version == firmware.version);
        let (payload, what) = match self.protocol {
            _ if package.is_some() => {
                let p = &package.expect("checked").package;
                let payload = p
                    .upgrade_message(self.protocol, id, o)
                    .map_err(io::Error::other)?;
                let what = format!(
                    "upgrade package of {} file{} ({})",
                    p.files.len(),
                    if p.files.len() == 1 { "" } else { "s" },
                    match p.delivery {
                        crate::package::Delivery::Http => "HTTP".to_string(),
                        crate::package::Delivery::Mqtt { stream_id } =>
                            format!("MQTT stream {stream_id}"),
                    }
                );
                (payload, what)
            }
            Protocol::Aliyun => (
                aliyun::upgrade_message_with(&firmware, id, o.delta_old.as_ref()),
                "upgrade".into(),
            ),
            Protocol::Sagoo => (
                sagoo::upgrade_message_with(
                    &firmware,
                    id,
                    o.sign_method,
                    module,
                    (o.strategy.as_deref(), o.delta_old.as_ref()),
                ),
                format!(
                    "upgrade (module {}, {}, strategy {})",
                    module.unwrap_or("default"),
                    o.sign_method,
                    o.strategy.as_deref().unwrap_or("none")
                ),
            ),
            Protocol::Tencent => (tencent::update_message(&firmware), "update_firmware".into()),
            Protocol::Ucloud => {
                let from = o
                    .current_version
                    .clone()
                    .or(device_version)
                    .unwrap_or_default();
                let payload = ucloud::notify_message(&firmware, &from, module, &upgrade.task_id);
                let what = format!("task {} from {from}", upgrade.task_id);
                upgrade.announced_from = Some(from);
                upgrade.record.task_id = Some(upgrade.task_id.clone());
                (payload, what)
            }
        };
        self.publish(self.wire.downstream(), payload.clone())?;
        upgrade.record.messages_sent += 1;
        if index == run.upgrades.len() - 1 {
            self.note(Stage::Announced);
        }
        self.say(format!(
            "sent {what} to {} ({} bytes, md5 {})",
            firmware.version, firmware.size, firmware.md5
        ));
        Ok(payload)
    }

    fn publish(&self, topic: &str, payload: String) -> io::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(io::Error::other)
    }

    fn subscribe(&self) -> io::Result<()> {
        let filters = self
            .filters
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .map_err(io::Error::other)
    }

    /// Consumes events until `pick` decides, or `deadline` passes.
    fn wait_for(
        &self,
        deadline: Instant,
        pick: impl Fn(Net) -> Option<io::Result<()>>,
    ) -> io::Result<()> {
        wait_on(&self.events, deadline, pick)
    }

    fn say(&self, line: String) {
        if !self.quiet {
            crate::console::say(&format!("cloud: {line}"));
        }
    }

    /// What the run still waited for when it timed out.
    fn waiting_for(&self, summary: &Summary, run: &Run) -> String {
        let target = run.target();
        let what = if summary.versions.is_empty() {
            "the device's version report".to_string()
        } else if !run.offered() {
            format!(
                "a version report for module {}",
                self.options.module.as_deref().unwrap_or("default")
            )
        } else {
            match self.protocol {
                Protocol::Aliyun | Protocol::Sagoo => match summary.progress.last() {
                    Some(100) => format!(
                        "the device to report version {} after its reboot",
                        target.version()
                    ),
                    Some(p) => format!("download progress (last {p}%)"),
                    None => "download progress".to_string(),
                },
                Protocol::Tencent => match &target.last_state {
                    Some(TencentState::Burning) => format!("state done for {}", target.version()),
                    Some(TencentState::Downloading { percent }) => {
                        format!("download progress (last {percent}%)")
                    }
                    _ => "download progress".to_string(),
                },
                Protocol::Ucloud if !target.acked => {
                    format!("the device to acknowledge task {} (notify)", target.task_id)
                }
                Protocol::Ucloud if !target.upgrading => {
                    format!("upgrading for task {}", target.task_id)
                }
                Protocol::Ucloud => format!("success or fail for task {}", target.task_id),
            }
        };
        if run.aborted {
            format!("{what} (the device has exited)")
        } else {
            what
        }
    }
}

/// A package's download step (1..=100) against the one before and the bytes sent: never
/// back, never ahead of the bytes (weighted over the whole package, one percent of rounding
/// allowed), 100 only once every byte went out.
fn check_package_step(step: i32, last: i32, play: &PackagePlay) -> Result<(), String> {
    if step < last {
        return Err(format!(
            "progress {step}% after {last}%: a package's progress never goes back"
        ));
    }
    let size = play.package.size();
    let sent = play.meter.bytes_sent();
    let bound = if size == 0 {
        100
    } else {
        (u128::from(sent) * 100 / u128::from(size)).min(100) as i32
    };
    if step == 100 && sent < size {
        return Err(format!(
            "progress 100% but only {sent} of the package's {size} bytes were sent"
        ));
    }
    if step > bound + 1 {
        return Err(format!(
            "progress {step}% but only {sent} of the package's {size} bytes were sent (at most \
             {bound}%): progress is weighted by bytes over all {} files",
            play.package.files.len()
        ));
    }
    Ok(())
}

/// A Tencent state as the device spells it.
fn state_name(state: &TencentState) -> String {
    match state {
        TencentState::Downloading { percent } => format!("downloading ({percent}%)"),
        TencentState::Burning => "burning".into(),
        TencentState::Done => "done".into(),
        TencentState::Fail { code, .. } => format!("fail ({code})"),
    }
}

/// UCloud: the announced upgrade whose task `task_id` names; `Err` is the violation.
fn ucloud_task_owner(run: &Run, task_id: &str) -> Result<usize, String> {
    run.upgrades
        .iter()
        .position(|u| u.announced() && u.task_id == task_id)
        .ok_or_else(|| {
            if run.offered() {
                format!(
                    "Payload.TaskID {task_id:?} is not the task's TaskID {:?}",
                    run.target().task_id
                )
            } else {
                format!("TaskID {task_id:?} before any task was sent")
            }
        })
}

/// The target's download is over (progress 100, Tencent `burning`): its time counts from the
/// first upgrade notification, once.
fn note_download_end(summary: &mut Summary, run: &Run) {
    if summary.download_time.is_none() {
        summary.download_time = run.first_upgrade_at.map(|t| t.elapsed());
    }
}

fn describe_announcement(what: &Announcement) -> String {
    match what {
        Announcement::Again => "the upgrade again".into(),
        Announcement::Supersede(fw) => format!("a new upgrade to {}", fw.version),
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // The MQTT thread ends on its own once the request channel closes or the event
        // channel's receiver (ours) is gone. A shared connection carries other clouds still.
        if self.owns_connection {
            let _ = self.client.try_disconnect();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Consumes what arrives on `events` until `pick` decides, or `deadline` passes.
fn wait_on(
    events: &Receiver<Net>,
    deadline: Instant,
    pick: impl Fn(Net) -> Option<io::Result<()>>,
) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(net) => {
                if let Some(r) = pick(net) {
                    return r;
                }
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "MQTT broker did not answer in time",
                ));
            }
        }
    }
}

/// A client of the broker at `host:port` whose event loop runs in its own thread and forwards
/// what matters on the returned channel (whose sender is returned too, for [`Trigger`]s).
fn start_mqtt(host: &str, port: u16) -> io::Result<(Client, Sender<Net>, Receiver<Net>)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let client_id = format!(
        "ota-cloud-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut connection) = Client::new(options, 64);
    // The PUBACK and the reply would go as two small writes: with Nagle's algorithm the second
    // waits for the broker's delayed ACK of the first (~40 ms per block on Mosquitto).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    connection.eventloop.set_network_options(network);
    let (tx, events) = mpsc::channel();
    let mqtt_tx = tx.clone();
    thread::Builder::new()
        .name("ota-cloud-mqtt".into())
        .spawn(move || mqtt_loop(&mut connection, mqtt_tx))?;
    Ok((client, tx, events))
}

/// Devices whose filters one SUBSCRIBE carries (three filters each): small packets, so any
/// broker takes them.
const DEVICES_PER_SUBSCRIBE: usize = 32;

/// One MQTT connection that carries the clouds of many devices (`ota-cloud fleet`, a gateway's
/// sub-devices): each [`Cloud`] made by [`attach`](Self::attach) runs as usual in its own thread
/// and publishes through the shared client; a router thread hands each message to the cloud
/// whose device's topics it is on, and the connection's events to every cloud.
pub struct SharedConnection {
    client: Client,
    routes: Arc<Mutex<Vec<Route>>>,
    /// The connection's events, for [`connect`](Self::connect) and
    /// [`subscribe`](Self::subscribe).
    control: Receiver<Net>,
}

/// Where the router sends what arrives on one device's topics.
struct Route {
    filters: Vec<String>,
    tx: Sender<Net>,
}

impl SharedConnection {
    /// Connects to the broker at `host:port`; returns once the broker has accepted the
    /// connection.
    pub fn connect(host: &str, port: u16) -> io::Result<SharedConnection> {
        let (client, _, events) = start_mqtt(host, port)?;
        let routes: Arc<Mutex<Vec<Route>>> = Arc::default();
        let (control_tx, control) = mpsc::channel();
        let table = Arc::clone(&routes);
        thread::Builder::new()
            .name("ota-cloud-router".into())
            .spawn(move || route(&events, &table, &control_tx))?;
        let shared = SharedConnection {
            client,
            routes,
            control,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        wait_on(&shared.control, deadline, |net| match net {
            Net::Connected => Some(Ok(())),
            Net::Error(e) => Some(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("cannot connect to MQTT broker {host}:{port}: {e}"),
            ))),
            _ => None,
        })?;
        Ok(shared)
    }

    /// A cloud for device `product_key`/`device_name` on this connection. Its topics are
    /// subscribed by [`subscribe`](Self::subscribe), once every device is attached.
    pub fn attach(&self, protocol: Protocol, product_key: &str, device_name: &str) -> Cloud {
        let (tx, events) = mpsc::channel();
        let cloud = Cloud::on_client(
            protocol,
            product_key,
            device_name,
            self.client.clone(),
            tx.clone(),
            events,
            false,
        );
        self.routes.lock().unwrap().push(Route {
            filters: cloud.filters.clone(),
            tx,
        });
        cloud
    }

    /// Subscribes (QoS 1) to the OTA topics of every attached device; returns once the broker
    /// acknowledged them all, so no device started afterwards reports its version unseen.
    pub fn subscribe(&self) -> io::Result<()> {
        let filters: Vec<Vec<String>> = self
            .routes
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.filters.clone())
            .collect();
        for batch in filters.chunks(DEVICES_PER_SUBSCRIBE) {
            let batch = batch
                .iter()
                .flatten()
                .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
            self.client
                .subscribe_many(batch)
                .map_err(io::Error::other)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            wait_on(&self.control, deadline, |net| match net {
                Net::Subscribed(true) => Some(Ok(())),
                Net::Subscribed(false) => {
                    Some(Err(io::Error::other("broker refused the subscription")))
                }
                Net::Error(e) => Some(Err(io::Error::other(format!("mqtt: {e}")))),
                _ => None,
            })?;
        }
        Ok(())
    }
}

impl Drop for SharedConnection {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The router of a [`SharedConnection`]: each message to the cloud whose device's filters
/// match its topic (a cloud whose run is over is forgotten), the connection's events to
/// `control` and to every cloud (a reconnect makes each subscribe again).
fn route(events: &Receiver<Net>, routes: &Mutex<Vec<Route>>, control: &Sender<Net>) {
    for net in events.iter() {
        let mut routes = routes.lock().unwrap();
        match net {
            Net::Message { topic, payload } => {
                let Some(i) = routes
                    .iter()
                    .position(|r| r.filters.iter().any(|f| topic_matches(f, &topic)))
                else {
                    continue; // not an attached device's topic
                };
                if routes[i].tx.send(Net::Message { topic, payload }).is_err() {
                    routes.remove(i);
                }
            }
            Net::Announce { .. } => {} // triggers talk to their cloud directly
            other => {
                let ended = matches!(other, Net::Ended);
                let copy = |net: &Net| match net {
                    Net::Connected => Net::Connected,
                    Net::Subscribed(ok) => Net::Subscribed(*ok),
                    Net::Error(e) => Net::Error(e.clone()),
                    _ => Net::Ended,
                };
                routes.retain(|r| r.tx.send(copy(&other)).is_ok());
                let _ = control.send(other);
                if ended {
                    return;
                }
            }
        }
    }
}

/// Whether `topic` matches the MQTT subscription filter `filter` (`+` one level, `#` the rest).
fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for want in filter.split('/') {
        match (want, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (w, Some(got)) if w == got => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Drives rumqttc's event loop; forwards what matters to the run loop.
fn mqtt_loop(connection: &mut rumqttc::Connection, tx: Sender<Net>) {
    for event in connection.iter() {
        let net = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Net::Connected,
            Ok(Event::Incoming(Packet::SubAck(ack))) => Net::Subscribed(
                ack.return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            ),
            Ok(Event::Incoming(Packet::Publish(p))) => Net::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(e) => {
                // `iter` reconnects on the next call; don't spin while the broker is away.
                let stop = tx.send(Net::Error(e.to_string())).is_err();
                if stop {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
                continue;
            }
        };
        if tx.send(net).is_err() {
            return; // the Cloud is gone
        }
    }
    let _ = tx.send(Net::Ended);
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn a_topic_goes_to_the_device_whose_filter_matches_it() {
        let f = "/ota/device/+/pk/sub-01";
        assert!(topic_matches(f, "/ota/device/inform/pk/sub-01"));
        assert!(!topic_matches(f, "/ota/device/inform/pk/sub-011"));
        assert!(!topic_matches(f, "/ota/device/inform/pk/sub-01/x"));
        assert!(!topic_matches(f, "/ota/device/inform/pk"));
        assert!(topic_matches("$ota/+/pk/dn", "$ota/report/pk/dn"));
        assert!(!topic_matches("$ota/+/pk/dn", "$ota/report/pk2/dn"));
        assert!(topic_matches(
            "/$system/pk/dn/ota/+",
            "/$system/pk/dn/ota/upstream"
        ));
        assert!(topic_matches("a/#", "a/b/c"));
    }
}
