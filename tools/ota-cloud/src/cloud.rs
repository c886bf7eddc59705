//! The cloud side of an OTA upgrade over a real MQTT broker.
//!
//! [`Cloud`] owns an MQTT connection (rumqttc's sync client; its event loop runs in a thread
//! that forwards what arrives over a channel) and plays one upgrade with [`Cloud::run`]. The
//! flow is protocol-neutral; everything platform-specific (topics, message shapes, what counts
//! as success) sits behind [`Protocol`], so Tencent, UCloud and SagooIOT become new variants
//! plus a module like [`crate::aliyun`].

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};

use crate::aliyun;

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
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "aliyun" => Ok(Protocol::Aliyun),
            "tencent" | "ucloud" | "sagoo" | "sagooiot" => Err(format!(
                "protocol {s:?} is not implemented yet (only aliyun)"
            )),
            _ => Err(format!("unknown protocol {s:?} (expected aliyun)")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Aliyun => "aliyun",
        })
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
}

impl Firmware {
    /// Describes `image`, served at `url`, as version `version`.
    pub fn new(version: impl Into<String>, url: impl Into<String>, image: &[u8]) -> Firmware {
        Firmware {
            version: version.into(),
            url: url.into(),
            size: image.len() as u64,
            md5: md5_hex(image),
        }
    }
}

/// MD5 of `data` as 32 lowercase hex digits.
pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A checked device → cloud message, independent of the platform's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMsg {
    /// The device reports its running version (at start-up, and again after the reboot).
    Version {
        version: String,
        module: Option<String>,
    },
    /// Download percent 0..=100, or a failure step -1..=-4.
    Progress { step: i32, desc: Option<String> },
    /// The device asks for the firmware again.
    Request {
        version: String,
        module: Option<String>,
    },
}

/// How a run succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Success {
    /// The device reported the target version after at least one upgrade notification.
    Upgraded,
    /// The device's first report already was the target version; nothing was sent.
    AlreadyCurrent,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The device reported a failure step (< 0).
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
                write!(f, "device reported failure step {step}")?;
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
    /// Every progress step the device reported, in arrival order.
    pub progress: Vec<i32>,
    /// Every version the device reported, in arrival order.
    pub versions: Vec<String>,
    /// Upgrade notifications published.
    pub upgrade_messages_sent: u32,
    /// Firmware-request messages received.
    pub requests_received: u32,
    /// From the first upgrade notification to progress 100, if both happened.
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

/// The cloud side of one device, connected to a broker.
pub struct Cloud {
    protocol: Protocol,
    topics: aliyun::Topics,
    client: Client,
    events: Receiver<Net>,
    quiet: bool,
    max_upgrade_messages: u32,
}

/// The only protocol implemented so far; `AliyunCloud::connect_aliyun(...)` reads naturally.
pub type AliyunCloud = Cloud;

impl Cloud {
    /// Connects to the broker at `host:port` and subscribes (QoS 1) to the device → cloud
    /// topics of `product_key`/`device_name`. Returns once the subscription is acknowledged,
    /// so a device started afterwards cannot report its version unseen.
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

        let topics = match protocol {
            Protocol::Aliyun => aliyun::Topics::new(product_key, device_name),
        };
        let cloud = Cloud {
            protocol,
            topics,
            client,
            events,
            quiet: false,
            max_upgrade_messages: DEFAULT_MAX_UPGRADE_MESSAGES,
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

    /// Plays one upgrade: waits for the device's version report, offers `firmware` if the
    /// version differs, follows the progress, and succeeds when the device reports
    /// `firmware.version`. Gives up after `timeout`.
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
            progress: Vec::new(),
            versions: Vec::new(),
            upgrade_messages_sent: 0,
            requests_received: 0,
            download_time: None,
            elapsed: Duration::ZERO,
            outcome: Err(Failure::Timeout {
                waiting_for: String::new(),
            }),
        };
        let mut first_upgrade_at = None;
        self.say(format!(
            "waiting for the device's version report on {}",
            self.topics.inform
        ));
        let outcome = loop {
            if !aborted && abort.load(Ordering::SeqCst) {
                aborted = true;
                deadline = deadline.min(Instant::now() + ABORT_GRACE);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(Failure::Timeout {
                    waiting_for: waiting_for(&summary, firmware, aborted),
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
            let parsed = match self.protocol {
                Protocol::Aliyun => aliyun::parse(&self.topics, &topic, &payload),
            };
            let msg = match parsed {
                Ok(Some(msg)) => msg,
                Ok(None) => continue, // not one of our topics
                Err(reason) => {
                    let failure = Failure::Violation {
                        topic,
                        reason,
                        payload: String::from_utf8_lossy(&payload).into_owned(),
                    };
                    if !self.quiet {
                        eprintln!("cloud: {failure}");
                    }
                    break Err(failure);
                }
            };
            match msg {
                DeviceMsg::Version { version, module } => {
                    let module = module.map(|m| format!(" (module {m})")).unwrap_or_default();
                    self.say(format!("device reports version {version}{module}"));
                    summary.versions.push(version.clone());
                    if version == firmware.version {
                        break Ok(if summary.upgrade_messages_sent == 0 {
                            Success::AlreadyCurrent
                        } else {
                            Success::Upgraded
                        });
                    }
                    // Also covers a device that rebooted into its old version or came back
                    // online: the platform (re)sends the pending upgrade after a report.
                }
                DeviceMsg::Request { version, .. } => {
                    summary.requests_received += 1;
                    self.say(format!("device (version {version}) asks for the firmware"));
                }
                DeviceMsg::Progress { step, desc } => {
                    summary.progress.push(step);
                    let desc_text = desc.as_deref().unwrap_or("");
                    if step < 0 {
                        self.say(format!("device reports failure step {step}: {desc_text}"));
                        break Err(Failure::DeviceFailed { step, desc });
                    }
                    self.say(
                        format!("progress {step}% {desc_text}")
                            .trim_end()
                            .to_string(),
                    );
                    if step == 100 && summary.download_time.is_none() {
                        summary.download_time = first_upgrade_at.map(|t: Instant| t.elapsed());
                    }
                    continue;
                }
            }
            // A version report (not the target) or a request: offer the firmware.
            if summary.upgrade_messages_sent >= self.max_upgrade_messages {
                break Err(Failure::TooManyUpgradeMessages(
                    summary.upgrade_messages_sent,
                ));
            }
            if let Err(e) = self.publish_upgrade(firmware) {
                break Err(Failure::Mqtt(e.to_string()));
            }
            summary.upgrade_messages_sent += 1;
            first_upgrade_at.get_or_insert_with(Instant::now);
            self.say(format!(
                "sent upgrade to {} ({} bytes, md5 {}) #{}",
                firmware.version, firmware.size, firmware.md5, summary.upgrade_messages_sent
            ));
        };
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

    fn publish_upgrade(&self, firmware: &Firmware) -> io::Result<()> {
        let id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (topic, payload) = match self.protocol {
            Protocol::Aliyun => (
                self.topics.upgrade.clone(),
                aliyun::upgrade_message(firmware, id),
            ),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(io::Error::other)
    }

    fn subscribe(&self) -> io::Result<()> {
        let filters = self
            .topics
            .from_device()
            .map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce));
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
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // The MQTT thread ends on its own once the request channel closes or the event
        // channel's receiver (ours) is gone.
        let _ = self.client.try_disconnect();
    }
}

fn waiting_for(summary: &Summary, firmware: &Firmware, aborted: bool) -> String {
    let what = if summary.versions.is_empty() {
        "the device's version report".to_string()
    } else if summary.progress.last() == Some(&100) {
        format!(
            "the device to report version {} after its reboot",
            firmware.version
        )
    } else if let Some(p) = summary.progress.last() {
        format!("download progress (last {p}%)")
    } else {
        "download progress".to_string()
    };
    if aborted {
        format!("{what} (the device has exited)")
    } else {
        what
    }
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
