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

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use sha2::Sha256;

use crate::sagoo::SignMethod;
use crate::{aliyun, sagoo, tencent, ucloud};

/// Upgrade notifications sent at most this many times per run, so a device that keeps
/// re-reporting its old version (or asking again) cannot make the cloud loop forever.
pub const DEFAULT_MAX_UPGRADE_MESSAGES: u32 = 5;

/// After [`Cloud::run_until`]'s abort flag is set (the device exited), messages still in
/// flight through the broker get this long to arrive.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The OTA platform whose cloud side is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Aliyun,
    Sagoo,
    Tencent,
    Ucloud,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ];

    /// The lower-case name used on the command line and in `OTA_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Aliyun => "aliyun",
            Protocol::Sagoo => "sagoo",
            Protocol::Tencent => "tencent",
            Protocol::Ucloud => "ucloud",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "aliyun" => Ok(Protocol::Aliyun),
            "sagoo" | "sagooiot" => Ok(Protocol::Sagoo),
            "tencent" => Ok(Protocol::Tencent),
            "ucloud" => Ok(Protocol::Ucloud),
            _ => Err(format!(
                "unknown protocol {s:?} (expected aliyun, sagoo, tencent or ucloud)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the upgrade looks like beyond the firmware itself. Each field matters to some
/// protocols only; [`CloudOptions::check`] says whether a set of options fits a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOptions {
    /// The module to upgrade (SagooIOT, UCloud); `None` is the default module, whose name the
    /// platform leaves out of the upgrade message.
    pub module: Option<String>,
    /// The digest announced by SagooIOT (`signMethod`); default MD5.
    pub sign_method: SignMethod,
    /// SagooIOT batch id sent as `extData.strategy`, which every progress report must echo;
    /// default `Some("batch-7")`, `None` leaves it out.
    pub strategy: Option<String>,
    /// UCloud: announce this `CurrentVersion` instead of the version the device reported, to
    /// test that the device refuses a task that does not upgrade from its running version.
    pub current_version: Option<String>,
}

impl Default for CloudOptions {
    fn default() -> CloudOptions {
        CloudOptions {
            module: None,
            sign_method: SignMethod::Md5,
            strategy: Some(sagoo::DEFAULT_STRATEGY.into()),
            current_version: None,
        }
    }
}

impl CloudOptions {
    /// `Err` names an option that `protocol` has no use for.
    pub fn check(&self, protocol: Protocol) -> Result<(), String> {
        let only = |what: &str, ok: &[Protocol]| {
            if ok.contains(&protocol) {
                Ok(())
            } else {
                let names: Vec<&str> = ok.iter().map(|p| p.name()).collect();
                Err(format!(
                    "{what} applies to {} only, not {protocol}",
                    names.join(" and ")
                ))
            }
        };
        if self.module.is_some() {
            only("a module", &[Protocol::Sagoo, Protocol::Ucloud])?;
        }
        if self.module.as_deref() == Some("") {
            return Err("the module name is empty".into());
        }
        if self.sign_method != SignMethod::Md5 {
            only("a sign method other than md5", &[Protocol::Sagoo])?;
        }
        if self.current_version.is_some() {
            only("a current version", &[Protocol::Ucloud])?;
        }
        Ok(())
    }
}

/// What the cloud offers the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub version: String,
    pub url: String,
    pub size: u64,
    /// 32 lowercase hex digits.
    pub md5: String,
    /// 64 lowercase hex digits (SagooIOT with `signMethod` SHA256).
    pub sha256: String,
}

impl Firmware {
    /// Describes `image`, served at `url`, as version `version`.
    pub fn new(version: impl Into<String>, url: impl Into<String>, image: &[u8]) -> Firmware {
        Firmware {
            version: version.into(),
            url: url.into(),
            size: image.len() as u64,
            md5: md5_hex(image),
            sha256: sha256_hex(image),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of `data` as 32 lowercase hex digits.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// SHA-256 of `data` as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// A Tencent `report_progress` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TencentState {
    /// Download percent 0..=100.
    Downloading { percent: u8 },
    /// The download is complete; flashing starts.
    Burning,
    /// The upgrade is complete.
    Done,
    /// `result_code` -1..=-5 and its (non-empty) `result_msg`.
    Fail { code: i32, msg: String },
}

/// A checked device → cloud message, independent of the platform's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMsg {
    /// The device reports its running version (at start-up, and again after the reboot):
    /// Aliyun/SagooIOT `inform`, Tencent `report_version`, UCloud `report`.
    Version {
        version: String,
        module: Option<String>,
    },
    /// Aliyun/SagooIOT progress: download percent 0..=100, or a failure step -1..=-4.
    /// `module` and `strategy` are SagooIOT's (always `None` for Aliyun).
    Progress {
        step: i32,
        desc: Option<String>,
        module: Option<String>,
        strategy: Option<String>,
    },
    /// The device asks for the firmware again (Aliyun).
    Request {
        version: String,
        module: Option<String>,
    },
    /// Tencent `report_progress` for `version`.
    TencentProgress {
        version: String,
        state: TencentState,
    },
    /// UCloud `notify`: the device accepted task `task_id`.
    TaskAck { task_id: String },
    /// UCloud `upgrading`.
    TaskUpgrading { task_id: String },
    /// UCloud `success`.
    TaskSuccess { task_id: String },
    /// UCloud `fail` with its `ErrMsg`.
    TaskFail { task_id: String, err_msg: String },
}

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
    /// The device reported a failure: `step` is the Aliyun/SagooIOT step (-1..=-4), the
    /// Tencent `result_code` (-1..=-5), or -1 for a UCloud `fail`; `desc` is the device's text
    /// (`desc`, `result_msg`, `ErrMsg`).
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
    /// Upgrade notifications published (`upgrade`, `update_firmware`, `notify`).
    pub upgrade_messages_sent: u32,
    /// Tencent `report_version_rsp` replies published.
    pub version_replies_sent: u32,
    /// Firmware-request messages received (Aliyun).
    pub requests_received: u32,
    /// Upgrade notifications that carried a fresh URL ([`Cloud::set_url_renewer`]).
    pub urls_renewed: u32,
    /// The UCloud task id, once a task was sent.
    pub task_id: Option<String>,
    /// From the first upgrade notification to the end of the download (progress 100, or
    /// Tencent `burning`), if both happened.
    pub download_time: Option<Duration>,
    /// From the start of the run to its end.
    pub elapsed: Duration,
    pub outcome: Result<Success, Failure>,
}

impl Summary {
    pub fn is_success(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// What the MQTT thread forwards to the run loop.
enum Net {
    Connected,
    Subscribed(bool),
    Message { topic: String, payload: Vec<u8> },
    Error(String),
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
    quiet: bool,
    max_upgrade_messages: u32,
    /// Gives a fresh firmware URL for every upgrade notification after the first.
    renew_url: Option<Box<dyn FnMut() -> String + Send>>,
}

/// Kept from when Aliyun was the only protocol; `AliyunCloud::connect_aliyun(...)` reads
/// naturally.
pub type AliyunCloud = Cloud;

/// What the run loop does after a message.
enum Verdict {
    Wait,
    Offer,
    Finish(Result<Success, Failure>),
}

/// Per-run state the stateful checks need.
struct Run {
    first_upgrade_at: Option<Instant>,
    /// UCloud: the task id of this run.
    task_id: String,
    /// UCloud: the version the device reported before the latest task (its running version).
    device_version: Option<String>,
    /// UCloud: the `CurrentVersion` announced in the latest task.
    announced_from: Option<String>,
    acked: bool,
    upgrading: bool,
    /// Tencent: `burning` seen.
    burning: bool,
    /// Tencent: the last state reported.
    last_state: Option<TencentState>,
}

impl Run {
    /// UCloud: the announced `CurrentVersion` differs from what the device runs, so the
    /// device must refuse the task.
    fn must_refuse(&self) -> Option<(&str, &str)> {
        match (&self.announced_from, &self.device_version) {
            (Some(a), Some(d)) if a != d => Some((a, d)),
            _ => None,
        }
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
        let (tx, events) = mpsc::channel();
        thread::Builder::new()
            .name("ota-cloud-mqtt".into())
            .spawn(move || mqtt_loop(&mut connection, tx))?;

        let cloud = Cloud {
            protocol,
            wire: Wire::new(protocol, product_key, device_name),
            filters: watched_filters(product_key, device_name),
            options: CloudOptions::default(),
            client,
            events,
            quiet: false,
            max_upgrade_messages: DEFAULT_MAX_UPGRADE_MESSAGES,
            renew_url: None,
        };
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

    /// Suppresses the `cloud: ...` narration on stdout (failures are still returned).
    pub fn set_quiet(&mut self, quiet: bool) -> &mut Self {
        self.quiet = quiet;
        self
    }

    /// Changes the limit on upgrade notifications per run (default 5).
    pub fn set_max_upgrade_messages(&mut self, n: u32) -> &mut Self {
        self.max_upgrade_messages = n;
        self
    }

    /// Makes every upgrade notification after the first of a run carry a fresh URL from
    /// `renew` instead of the firmware's, as a platform signs a new download URL each time it
    /// (re)sends an upgrade: a device whose URL expired (HTTP 403) asks again (Aliyun
    /// `request`) or re-reports its version, and gets a URL that works. Typically
    /// `let r = server.url_renewer(); cloud.set_url_renewer(move || r.renew());` with a
    /// server whose [`crate::Faults::expire_after`] is set.
    pub fn set_url_renewer(&mut self, renew: impl FnMut() -> String + Send + 'static) -> &mut Self {
        self.renew_url = Some(Box::new(renew));
        self
    }

    /// Whether a failure the device reports is the expired URL this run provokes on purpose
    /// (a URL renewer is set), which a fresh URL answers, rather than the end of the upgrade.
    fn url_expiry_expected(&self, desc: &str) -> bool {
        self.renew_url.is_some() && desc.to_ascii_lowercase().contains("expired")
    }

    /// Plays one upgrade: waits for the device's version report, offers `firmware` if the
    /// version differs, follows the progress and checks every message, and succeeds when the
    /// protocol's success condition is met (see [`Success::Upgraded`]). Gives up after
    /// `timeout`.
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
        let start = Instant::now();
        let mut deadline = start + timeout;
        let mut aborted = false;
        let mut summary = Summary {
            protocol: self.protocol,
            messages: Vec::new(),
            progress: Vec::new(),
            versions: Vec::new(),
            upgrade_messages_sent: 0,
            version_replies_sent: 0,
            requests_received: 0,
            urls_renewed: 0,
            task_id: None,
            download_time: None,
            elapsed: Duration::ZERO,
            outcome: Err(Failure::Timeout {
                waiting_for: String::new(),
            }),
        };
        let mut run = Run {
            first_upgrade_at: None,
            task_id: now_ms().to_string(),
            device_version: None,
            announced_from: None,
            acked: false,
            upgrading: false,
            burning: false,
            last_state: None,
        };
        self.say(format!(
            "playing {}; waiting for the device's version report on {}",
            self.protocol,
            self.wire.version_topic()
        ));
        let outcome = loop {
            if !aborted && abort.load(Ordering::SeqCst) {
                aborted = true;
                deadline = deadline.min(Instant::now() + ABORT_GRACE);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(Failure::Timeout {
                    waiting_for: self.waiting_for(&summary, &run, firmware, aborted),
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let (topic, payload) = match self.events.recv_timeout(wait) {
                Ok(Net::Message { topic, payload }) => (topic, payload),
                Ok(Net::Connected) => {
                    // Sessions are clean: after a reconnect the subscriptions must be renewed.
                    self.say("reconnected to the broker; subscribing again".into());
                    if let Err(e) = self.subscribe() {
                        break Err(Failure::Mqtt(e.to_string()));
                    }
                    continue;
                }
                Ok(Net::Subscribed(_)) => continue,
                Ok(Net::Error(e)) => {
                    self.say(format!("mqtt connection error: {e} (reconnecting)"));
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(Failure::Mqtt("connection thread ended".into()));
                }
            };
            let violation = |reason: String| Failure::Violation {
                topic: topic.clone(),
                reason,
                payload: String::from_utf8_lossy(&payload).into_owned(),
            };
            let msg = match self.wire.parse(&topic, &payload) {
                Ok(Some(msg)) => msg,
                // Our own upgrade messages come back through the family subscription.
                Ok(None) if topic == self.wire.downstream() => continue,
                Ok(None) => {
                    break Err(violation(format!(
                        "not a {} device → cloud topic (expected {})",
                        self.protocol,
                        self.wire.upstream().join(" or ")
                    )))
                }
                Err(reason) => break Err(violation(reason)),
            };
            summary.messages.push(msg.clone());
            match self.handle(msg, &mut summary, &mut run, firmware) {
                Ok(Verdict::Wait) => continue,
                Ok(Verdict::Finish(outcome)) => break outcome,
                Ok(Verdict::Offer) => {}
                Err(reason) => break Err(violation(reason)),
            }
            if summary.upgrade_messages_sent >= self.max_upgrade_messages {
                break Err(Failure::TooManyUpgradeMessages(
                    summary.upgrade_messages_sent,
                ));
            }
            let renewed = match &mut self.renew_url {
                Some(renew) if summary.upgrade_messages_sent > 0 => Some(Firmware {
                    url: renew(),
                    ..firmware.clone()
                }),
                _ => None,
            };
            if let Some(fresh) = &renewed {
                self.say(format!("fresh firmware URL: {}", fresh.url));
                summary.urls_renewed += 1;
            }
            if let Err(e) = self.publish_upgrade(renewed.as_ref().unwrap_or(firmware), &mut run) {
                break Err(Failure::Mqtt(e.to_string()));
            }
            summary.upgrade_messages_sent += 1;
            if self.protocol == Protocol::Ucloud {
                summary.task_id = Some(run.task_id.clone());
            }
            run.first_upgrade_at.get_or_insert_with(Instant::now);
        };
        if let Err(failure @ Failure::Violation { .. }) = &outcome {
            if !self.quiet {
                eprintln!("cloud: {failure}");
            }
        }
        match &outcome {
            Ok(Success::Upgraded) => self.say(format!(
                "device now runs {}: upgrade succeeded",
                firmware.version
            )),
            Ok(Success::AlreadyCurrent) => {
                self.say(format!("device already runs {}", firmware.version))
            }
            Err(e) => self.say(format!("upgrade failed: {e}")),
        }
        summary.outcome = outcome;
        summary.elapsed = start.elapsed();
        summary
    }

    /// The protocol's flow and stateful checks for one checked message. `Err` is a violation.
    fn handle(
        &self,
        msg: DeviceMsg,
        summary: &mut Summary,
        run: &mut Run,
        firmware: &Firmware,
    ) -> Result<Verdict, String> {
        let offered = summary.upgrade_messages_sent > 0;
        let module = self.options.module.as_deref();
        let upgraded = || {
            Verdict::Finish(Ok(if offered {
                Success::Upgraded
            } else {
                Success::AlreadyCurrent
            }))
        };
        match msg {
            DeviceMsg::Version { version, module: m } => {
                let m_text = m
                    .as_deref()
                    .map(|m| format!(" (module {m})"))
                    .unwrap_or_default();
                self.say(format!("device reports version {version}{m_text}"));
                summary.versions.push(version.clone());
                if self.protocol == Protocol::Tencent {
                    let reply = tencent::version_reply(&version);
                    if let Err(e) = self.publish(self.wire.downstream(), reply) {
                        return Ok(Verdict::Finish(Err(Failure::Mqtt(e.to_string()))));
                    }
                    summary.version_replies_sent += 1;
                    self.say(format!("sent report_version_rsp for {version}"));
                }
                let checks_module = matches!(self.protocol, Protocol::Sagoo | Protocol::Ucloud);
                if checks_module && !sagoo::same_module(m.as_deref(), module) {
                    self.say(format!(
                        "not the upgrade's module ({}); nothing to do",
                        module.unwrap_or("default")
                    ));
                    return Ok(Verdict::Wait);
                }
                if version == firmware.version {
                    return Ok(match self.protocol {
                        Protocol::Aliyun | Protocol::Sagoo => upgraded(),
                        // Success is `done` / `success`, not the version report.
                        Protocol::Tencent | Protocol::Ucloud if offered => Verdict::Wait,
                        Protocol::Tencent | Protocol::Ucloud => upgraded(),
                    });
                }
                // Also covers a device that rebooted into its old version or came back
                // online: the platform (re)sends the pending upgrade after a report.
                run.device_version = Some(version);
                Ok(Verdict::Offer)
            }
            DeviceMsg::Request { version, .. } => {
                summary.requests_received += 1;
                self.say(format!("device (version {version}) asks for the firmware"));
                Ok(Verdict::Offer)
            }
            DeviceMsg::Progress { step, ref desc, .. } => {
                if self.protocol == Protocol::Sagoo {
                    let strategy = if offered {
                        self.options.strategy.as_deref()
                    } else {
                        None
                    };
                    sagoo::check_progress(&msg, module, strategy)?;
                }
                summary.progress.push(step);
                let desc_text = desc.as_deref().unwrap_or("");
                if step < 0 {
                    self.say(format!("device reports failure step {step}: {desc_text}"));
                    if step == -2 && self.url_expiry_expected(desc_text) {
                        // The device asks for a fresh URL next (`request`); keep going.
                        return Ok(Verdict::Wait);
                    }
                    return Ok(Verdict::Finish(Err(Failure::DeviceFailed {
                        step,
                        desc: desc.clone(),
                    })));
                }
                self.say(
                    format!("progress {step}% {desc_text}")
                        .trim_end()
                        .to_string(),
                );
                if step == 100 && summary.download_time.is_none() {
                    summary.download_time = run.first_upgrade_at.map(|t| t.elapsed());
                }
                Ok(Verdict::Wait)
            }
            DeviceMsg::TencentProgress { version, state } => {
                if !offered {
                    return Err("report_progress before any update_firmware".into());
                }
                if version != firmware.version {
                    return Err(format!(
                        "report.version {version:?} is not the version being installed ({:?})",
                        firmware.version
                    ));
                }
                run.last_state = Some(state.clone());
                match state {
                    TencentState::Downloading { percent } => {
                        summary.progress.push(percent.into());
                        self.say(format!("downloading {percent}%"));
                        if percent == 100 && summary.download_time.is_none() {
                            summary.download_time = run.first_upgrade_at.map(|t| t.elapsed());
                        }
                        Ok(Verdict::Wait)
                    }
                    TencentState::Burning => {
                        self.say("burning".into());
                        run.burning = true;
                        if summary.download_time.is_none() {
                            summary.download_time = run.first_upgrade_at.map(|t| t.elapsed());
                        }
                        Ok(Verdict::Wait)
                    }
                    TencentState::Done => {
                        if !run.burning {
                            return Err("state done before state burning".into());
                        }
                        self.say("done".into());
                        Ok(Verdict::Finish(Ok(Success::Upgraded)))
                    }
                    TencentState::Fail { code, msg } => {
                        summary.progress.push(code);
                        self.say(format!("device reports fail {code}: {msg}"));
                        if code == -3 && self.url_expiry_expected(&msg) {
                            // Tencent has no request: the platform re-sends with a fresh URL.
                            return Ok(Verdict::Offer);
                        }
                        Ok(Verdict::Finish(Err(Failure::DeviceFailed {
                            step: code,
                            desc: Some(msg),
                        })))
                    }
                }
            }
            DeviceMsg::TaskAck { task_id }
            | DeviceMsg::TaskUpgrading { task_id }
            | DeviceMsg::TaskSuccess { task_id }
            | DeviceMsg::TaskFail { task_id, .. }
                if !offered || task_id != run.task_id =>
            {
                Err(if offered {
                    format!(
                        "Payload.TaskID {task_id:?} is not the task's TaskID {:?}",
                        run.task_id
                    )
                } else {
                    format!("TaskID {task_id:?} before any task was sent")
                })
            }
            DeviceMsg::TaskAck { .. } => {
                self.say(format!("device acknowledged task {}", run.task_id));
                run.acked = true;
                Ok(Verdict::Wait)
            }
            DeviceMsg::TaskUpgrading { .. } | DeviceMsg::TaskSuccess { .. } => {
                let success = matches!(msg, DeviceMsg::TaskSuccess { .. });
                if let Some((announced, runs)) = run.must_refuse() {
                    return Err(format!(
                        "the device went on with a task that upgrades from {announced} while it \
                         runs {runs}; it must refuse it (fail with an ErrMsg)"
                    ));
                }
                if !success && !run.acked {
                    return Err("upgrading before the task was acknowledged (notify)".into());
                }
                if success && !run.upgrading {
                    return Err("success before upgrading".into());
                }
                if success {
                    self.say(format!("device reports success for task {}", run.task_id));
                    return Ok(Verdict::Finish(Ok(Success::Upgraded)));
                }
                self.say(format!("device is upgrading (task {})", run.task_id));
                run.upgrading = true;
                Ok(Verdict::Wait)
            }
            DeviceMsg::TaskFail { err_msg, .. } => {
                self.say(format!(
                    "device reports fail for task {}: {err_msg}",
                    run.task_id
                ));
                if run.must_refuse().is_none() && self.url_expiry_expected(&err_msg) {
                    // UCloud has no request: the platform re-sends with a fresh URL.
                    return Ok(Verdict::Offer);
                }
                if let Some((announced, runs)) = run.must_refuse() {
                    self.say(format!(
                        "(expected: the task upgrades from {announced} but the device runs {runs})"
                    ));
                }
                Ok(Verdict::Finish(Err(Failure::DeviceFailed {
                    step: -1,
                    desc: Some(err_msg),
                })))
            }
        }
    }

    fn publish_upgrade(&self, firmware: &Firmware, run: &mut Run) -> io::Result<()> {
        let id = now_ms();
        let o = &self.options;
        let module = o.module.as_deref();
        let (payload, what) = match self.protocol {
            Protocol::Aliyun => (aliyun::upgrade_message(firmware, id), "upgrade".into()),
            Protocol::Sagoo => (
                sagoo::upgrade_message(firmware, id, o.sign_method, module, o.strategy.as_deref()),
                format!(
                    "upgrade (module {}, {}, strategy {})",
                    module.unwrap_or("default"),
                    o.sign_method,
                    o.strategy.as_deref().unwrap_or("none")
                ),
            ),
            Protocol::Tencent => (tencent::update_message(firmware), "update_firmware".into()),
            Protocol::Ucloud => {
                let from = o
                    .current_version
                    .clone()
                    .or_else(|| run.device_version.clone())
                    .unwrap_or_default();
                let payload = ucloud::notify_message(firmware, &from, module, &run.task_id);
                let what = format!("task {} from {from}", run.task_id);
                run.announced_from = Some(from);
                (payload, what)
            }
        };
        self.publish(self.wire.downstream(), payload)?;
        self.say(format!(
            "sent {what} to {} ({} bytes, md5 {})",
            firmware.version, firmware.size, firmware.md5
        ));
        Ok(())
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
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
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

    fn say(&self, line: String) {
        if !self.quiet {
            println!("cloud: {line}");
        }
    }

    fn waiting_for(&self, summary: &Summary, run: &Run, fw: &Firmware, aborted: bool) -> String {
        let what = if summary.versions.is_empty() {
            "the device's version report".to_string()
        } else if summary.upgrade_messages_sent == 0 {
            format!(
                "a version report for module {}",
                self.options.module.as_deref().unwrap_or("default")
            )
        } else {
            match self.protocol {
                Protocol::Aliyun | Protocol::Sagoo => match summary.progress.last() {
                    Some(100) => format!(
                        "the device to report version {} after its reboot",
                        fw.version
                    ),
                    Some(p) => format!("download progress (last {p}%)"),
                    None => "download progress".to_string(),
                },
                Protocol::Tencent => match &run.last_state {
                    Some(TencentState::Burning) => format!("state done for {}", fw.version),
                    Some(TencentState::Downloading { percent }) => {
                        format!("download progress (last {percent}%)")
                    }
                    _ => "download progress".to_string(),
                },
                Protocol::Ucloud if !run.acked => {
                    format!("the device to acknowledge task {} (notify)", run.task_id)
                }
                Protocol::Ucloud if !run.upgrading => {
                    format!("upgrading for task {}", run.task_id)
                }
                Protocol::Ucloud => format!("success or fail for task {}", run.task_id),
            }
        };
        if aborted {
            format!("{what} (the device has exited)")
        } else {
            what
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // The MQTT thread ends on its own once the request channel closes or the event
        // channel's receiver (ours) is gone.
        let _ = self.client.try_disconnect();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
}
