//! A synchronous MQTT client on rumqttc, shaped like iotkit's: the caller's thread drives the
//! connection in [`MqttClient::yield_for`], which also delivers incoming messages to the
//! subscription handlers and connection events to the event handler.
//!
//! Every method takes `&self`, so a handler may publish or subscribe on the client that is
//! calling it (as iotkit firmware does from its callbacks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, ConnectionError, Event, Incoming, Outgoing, Transport};

use crate::error::{Error, MqttError, Result};
use crate::log::Level;
use crate::ota::Uplink;
use crate::ota_log;
use crate::retry::{Backoff, RetryPolicy};

pub use rumqttc::QoS;

/// Reconnection backoff: 1 s doubling to 60 s, with jitter, forever.
const RECONNECT_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(60),
    stall_timeout: Duration::from_secs(60),
};

/// Most events one zero-timeout yield handles.
const MAX_READY_EVENTS: u32 = 64;

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificate(s) in PEM: `Some` means TLS verified against them; `None` plain TCP.
    pub ca_pem: Option<Vec<u8>>,
    pub clean_session: bool,
    pub keepalive: Duration,
    /// Connect and request timeout.
    pub request_timeout: Duration,
    /// Largest packet accepted or sent.
    pub max_packet_size: usize,
}

impl MqttOptions {
    pub fn new(host: &str, port: u16, client_id: &str) -> MqttOptions {
        MqttOptions {
            host: host.to_string(),
            port,
            client_id: client_id.to_string(),
            username: None,
            password: None,
            ca_pem: None,
            clean_session: true,
            keepalive: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            max_packet_size: 64 * 1024,
        }
    }
}

/// What [`MqttClient::yield_for`] reports to the event handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttEvent {
    Disconnected,
    Reconnected,
    SubscribeAck {
        packet_id: u16,
    },
    SubscribeNack {
        packet_id: u16,
    },
    UnsubscribeAck {
        packet_id: u16,
    },
    PublishAck {
        packet_id: u16,
    },
    /// A message arrived that no subscription handler matched.
    PublishReceived,
}

/// An incoming message as a handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
}

type MessageHandler = Box<dyn FnMut(&Message<'_>) + Send>;
type EventHandler = Box<dyn FnMut(&MqttEvent) + Send>;
type ReconnectHook = Box<dyn FnMut() -> bool + Send>;

struct Subscription {
    filter: String,
    qos: QoS,
    /// Taken out while it runs, so it can call back into the client.
    handler: Option<MessageHandler>,
}

/// A connected MQTT client.
pub struct MqttClient {
    client: Client,
    connection: Mutex<Connection>,
    subscriptions: Mutex<Vec<Subscription>>,
    events: Mutex<Option<EventHandler>>,
    connected: Arc<AtomicBool>,
    retry_at: Mutex<Option<Instant>>,
    /// Reconnection delays: exponential with jitter, never giving up.
    backoff: Mutex<Backoff>,
    /// Run after every reconnection (after re-subscribing), e.g. to re-report versions.
    reconnect_hooks: Mutex<Vec<ReconnectHook>>,
    /// How long a (re)connection attempt may take: rumqttc's connection timeout plus a margin.
    connect_window: Duration,
    /// Set by `disconnect`: the connection's end is expected, not a loss.
    closing: Mutex<bool>,
    /// Set by a handler (through [`YieldBreak`]) to end the yield that dispatched its message.
    break_yield: Arc<AtomicBool>,
    /// Largest packet sent or received ([`MqttOptions::max_packet_size`]).
    max_packet: usize,
}

/// Whether an MQTT 3.1.1 packet with `body` bytes after its fixed header (a string of
/// `string_len` bytes among them) can be sent: strings are at most 65535 bytes, packets at most
/// `max_packet`. A packet rumqttc cannot send breaks the connection (and comes back after every
/// reconnection), so such a request is refused before it is queued.
fn packet_fits(string_len: usize, body: usize, max_packet: usize) -> bool {
    let header = 1 + match body {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    // The remaining-length field tops out at 268435455.
    string_len <= u16::MAX as usize
        && body <= 268_435_455
        && body.saturating_add(header) <= max_packet
}

/// Lets a message handler end the [`MqttClient::yield_for`] that is dispatching its message,
/// so the caller acts on it at once instead of waiting out its timeout (the OTA session uses
/// it when an upgrade message starts a download).
#[derive(Clone)]
pub struct YieldBreak(Arc<AtomicBool>);

impl YieldBreak {
    /// The yield returns once the message being dispatched has been handled.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn map_connection_error(e: &ConnectionError) -> MqttError {
    match e {
        ConnectionError::ConnectionRefused(code) => MqttError::Refused(*code as u8),
        ConnectionError::Io(io) => MqttError::Io(io.kind()),
        #[cfg(feature = "tls")]
        ConnectionError::Tls(_) => MqttError::Tls,
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => MqttError::Timeout,
        _ => MqttError::Protocol,
    }
}

#[cfg(feature = "tls")]
fn tls_transport(ca_pem: &[u8]) -> Result<Transport> {
    use crate::tls::CaPemError as E;
    let config = crate::tls::mqtt_config(ca_pem).map_err(|e| match e {
        E::NoCertificate => Error::InvalidParam("pub_key holds no PEM certificate"),
        E::Malformed => Error::InvalidParam("pub_key is not a PEM certificate"),
        E::NotAnAnchor => Error::InvalidParam("pub_key certificate rejected"),
        E::NoTls => Error::Mqtt(MqttError::Tls),
    })?;
    Ok(Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ))
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_ca_pem: &[u8]) -> Result<Transport> {
    Err(Error::InvalidParam(
        "MQTT over TLS needs the `tls` cargo feature",
    ))
}

impl MqttClient {
    /// Connects to the broker; returns once the broker accepted the connection.
    pub fn connect(options: &MqttOptions) -> Result<MqttClient> {
        if options.host.is_empty() || options.port == 0 {
            return Err(Error::InvalidParam("host and port are required"));
        }
        let mut mo = rumqttc::MqttOptions::new(&options.client_id, &options.host, options.port);
        mo.set_keep_alive(options.keepalive.max(Duration::from_secs(5)));
        mo.set_clean_session(options.clean_session);
        mo.set_max_packet_size(options.max_packet_size, options.max_packet_size);
        if let Some(user) = &options.username {
            mo.set_credentials(user, options.password.as_deref().unwrap_or(""));
        }
        if let Some(ca) = &options.ca_pem {
            mo.set_transport(tls_transport(ca)?);
        }
        let (client, mut connection) = Client::new(mo, 64);
        let secs = options.request_timeout.as_secs().max(1);
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(secs);
        connection.eventloop.set_network_options(net);
        // rumqttc drops a half-made connection when recv_timeout expires: allow it the whole
        // connection timeout plus a margin for the CONNACK.
        let connect_window = Duration::from_secs(secs + 2);
        let deadline = Instant::now() + connect_window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Mqtt(MqttError::Timeout));
            }
            match connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let e = map_connection_error(&e);
                    ota_log!(
                        Level::Error,
                        "MQTT connect to {}:{} failed: {e}",
                        options.host,
                        options.port
                    );
                    return Err(Error::Mqtt(e));
                }
                Err(_) => return Err(Error::Mqtt(MqttError::Timeout)),
            }
        }
        ota_log!(
            Level::Info,
            "MQTT connected to {}:{}",
            options.host,
            options.port
        );
        Ok(MqttClient {
            client,
            connection: Mutex::new(connection),
            subscriptions: Mutex::new(Vec::new()),
            events: Mutex::new(None),
            connected: Arc::new(AtomicBool::new(true)),
            retry_at: Mutex::new(None),
            backoff: Mutex::new(Backoff::new(RECONNECT_POLICY)),
            reconnect_hooks: Mutex::new(Vec::new()),
            closing: Mutex::new(false),
            break_yield: Arc::new(AtomicBool::new(false)),
            max_packet: options.max_packet_size,
            connect_window,
        })
    }

    /// Sets the handler for connection events (replacing any previous one).
    pub fn on_event(&self, handler: impl FnMut(&MqttEvent) + Send + 'static) {
        *lock(&self.events) = Some(Box::new(handler));
    }

    /// Whether the connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Runs `hook` inside [`yield_for`](Self::yield_for) after every reconnection, once the
    /// subscriptions are renewed; a hook that returns false is dropped.
    pub fn on_reconnect(&self, hook: impl FnMut() -> bool + Send + 'static) {
        lock(&self.reconnect_hooks).push(Box::new(hook));
    }

    /// Subscribes `filter`; `handler` runs inside [`yield_for`](Self::yield_for) for every
    /// matching message. A second subscription of the same filter replaces the handler.
    pub fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        handler: impl FnMut(&Message<'_>) + Send + 'static,
    ) -> Result<()> {
        if !valid_filter(filter) {
            return Err(Error::Mqtt(MqttError::Topic));
        }
        // Packet id, the filter with its length, the QoS byte.
        if !packet_fits(filter.len(), 2 + 2 + filter.len() + 1, self.max_packet) {
            return Err(Error::Mqtt(MqttError::TooLarge));
        }
        self.client
            .try_subscribe(filter, qos)
            .map_err(|_| Error::Mqtt(MqttError::QueueFull))?;
        let mut subs = lock(&self.subscriptions);
        subs.retain(|s| s.filter != filter);
        subs.push(Subscription {
            filter: filter.to_string(),
            qos,
            handler: Some(Box::new(handler)),
        });
        Ok(())
    }

    /// Removes the subscription of `filter`.
    pub fn unsubscribe(&self, filter: &str) -> Result<()> {
        let mut subs = lock(&self.subscriptions);
        let before = subs.len();
        subs.retain(|s| s.filter != filter);
        if subs.len() == before {
            return Err(Error::InvalidParam("topic filter is not subscribed"));
        }
        drop(subs);
        self.client
            .try_unsubscribe(filter)
            .map_err(|_| Error::Mqtt(MqttError::QueueFull))
    }

    /// Queues a publish; it goes out during the next [`yield_for`](Self::yield_for).
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) -> Result<()> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(Error::Mqtt(MqttError::Topic));
        }
        // The topic with its length, the packet id (QoS 1 and 2), the payload.
        let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let body = (2 + topic.len() + id).saturating_add(payload.len());
        if !packet_fits(topic.len(), body, self.max_packet) {
            return Err(Error::Mqtt(MqttError::TooLarge));
        }
        self.client
            .try_publish(topic, qos, retain, payload)
            .map_err(|_| Error::Mqtt(MqttError::QueueFull))
    }

    /// A publishing handle for an [`crate::OtaSession`].
    pub fn uplink(&self) -> MqttUplink {
        MqttUplink {
            client: self.client.clone(),
            connected: self.connected.clone(),
        }
    }

    /// What a handler uses to end the yield dispatching its message early.
    pub fn yield_break(&self) -> YieldBreak {
        YieldBreak(self.break_yield.clone())
    }

    /// Drives the connection for up to `timeout` (zero: one pass over what is ready), sending
    /// queued publishes and dispatching what arrives. Reconnects after a drop, with backoff.
    /// Returns early after a message whose handler asked for it ([`YieldBreak`]).
    pub fn yield_for(&self, timeout: Duration) -> Result<()> {
        let Ok(mut connection) = self.connection.try_lock() else {
            return Err(Error::InvalidState("yield called from inside a handler"));
        };
        let deadline = Instant::now() + timeout;
        let mut passes = 0;
        loop {
            // Copied out first: a guard in the `if let` scrutinee would live through the block.
            let retry_at = *lock(&self.retry_at);
            if let Some(at) = retry_at {
                let now = Instant::now();
                if now < at {
                    std::thread::sleep(at.min(deadline).saturating_duration_since(now));
                    if Instant::now() < at {
                        return Ok(());
                    }
                }
                *lock(&self.retry_at) = None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let event = if !self.connected.load(Ordering::SeqCst) {
                // rumqttc drops a half-made connection when the wait ends early, so a
                // reconnection attempt gets the whole connect window, whatever the caller's
                // timeout (this only happens after a drop, once per backoff period).
                match connection.recv_timeout(left.max(self.connect_window)) {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            } else if left.is_zero() {
                // One pass: take what is ready (bounded, so a flood cannot hold the caller).
                passes += 1;
                if passes > MAX_READY_EVENTS {
                    return Ok(());
                }
                match connection.try_recv() {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            } else {
                match connection.recv_timeout(left) {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            };
            match event {
                Ok(event) => {
                    self.dispatch(event);
                    if self.break_yield.swap(false, Ordering::SeqCst) {
                        return Ok(());
                    }
                }
                Err(_) if *lock(&self.closing) => return Ok(()),
                Err(e) => {
                    let err = map_connection_error(&e);
                    let was = self.connected.swap(false, Ordering::SeqCst);
                    let delay = lock(&self.backoff)
                        .next_delay()
                        .unwrap_or(RECONNECT_POLICY.max_delay);
                    *lock(&self.retry_at) = Some(Instant::now() + delay);
                    if was {
                        ota_log!(Level::Warning, "MQTT connection lost: {err} ({e})");
                        self.emit(MqttEvent::Disconnected);
                    }
                    if Instant::now() >= deadline {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn emit(&self, event: MqttEvent) {
        if let Some(h) = lock(&self.events).as_mut() {
            h(&event);
        }
    }

    fn dispatch(&self, event: Event) {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                let was = self.connected.swap(true, Ordering::SeqCst);
                lock(&self.backoff).progressed();
                if !was {
                    ota_log!(Level::Info, "MQTT reconnected");
                    for s in lock(&self.subscriptions).iter() {
                        let _ = self.client.try_subscribe(s.filter.as_str(), s.qos);
                    }
                    self.emit(MqttEvent::Reconnected);
                    let mut hooks = std::mem::take(&mut *lock(&self.reconnect_hooks));
                    hooks.retain_mut(|hook| hook());
                    // Hooks added while these ran go after them.
                    let mut table = lock(&self.reconnect_hooks);
                    hooks.append(&mut table);
                    *table = hooks;
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let msg = Message {
                    topic: &p.topic,
                    payload: &p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: p.dup,
                    packet_id: p.pkid,
                };
                self.deliver(&msg);
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                let failed = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                self.emit(if failed {
                    MqttEvent::SubscribeNack {
                        packet_id: ack.pkid,
                    }
                } else {
                    MqttEvent::SubscribeAck {
                        packet_id: ack.pkid,
                    }
                });
            }
            Event::Incoming(Incoming::UnsubAck(ack)) => self.emit(MqttEvent::UnsubscribeAck {
                packet_id: ack.pkid,
            }),
            Event::Incoming(Incoming::PubAck(ack)) => self.emit(MqttEvent::PublishAck {
                packet_id: ack.pkid,
            }),
            Event::Outgoing(Outgoing::Publish(_)) | Event::Outgoing(_) | Event::Incoming(_) => {}
        }
    }

    /// Runs every handler whose filter matches; each is taken out of the table while it runs.
    fn deliver(&self, msg: &Message<'_>) {
        let mut delivered = false;
        let mut i = 0;
        loop {
            let (filter_matches, handler) = {
                let mut subs = lock(&self.subscriptions);
                let Some(s) = subs.get_mut(i) else { break };
                let m = topic_matches(&s.filter, msg.topic);
                (m, if m { s.handler.take() } else { None })
            };
            if let Some(mut h) = handler {
                h(msg);
                delivered = true;
                let mut subs = lock(&self.subscriptions);
                if let Some(s) = subs.get_mut(i).filter(|s| s.handler.is_none()) {
                    s.handler = Some(h);
                }
            } else if filter_matches {
                delivered = true;
            }
            i += 1;
        }
        if !delivered {
            self.emit(MqttEvent::PublishReceived);
        }
    }

    /// Sends DISCONNECT and flushes it (best effort, bounded by `timeout`).
    pub fn disconnect(&self, timeout: Duration) {
        *lock(&self.closing) = true;
        if self.client.try_disconnect().is_ok() {
            let _ = self.yield_for(timeout);
        }
    }
}

/// MQTT topic-filter matching with `+` and `#`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Publishes an OTA session's messages (QoS 1) through an [`MqttClient`].
#[derive(Clone)]
pub struct MqttUplink {
    client: Client,
    connected: Arc<AtomicBool>,
}

impl Uplink for MqttUplink {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        if !self.connected.load(Ordering::SeqCst) {
            // The session keeps the message and sends it after the reconnection.
            return Err(Error::Mqtt(MqttError::NotConnected));
        }
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|_| Error::Mqtt(MqttError::QueueFull))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches(
            "/ota/device/upgrade/a/b",
            "/ota/device/upgrade/a/b"
        ));
        assert!(topic_matches("/ota/+/upgrade/#", "/ota/device/upgrade/a/b"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches(
            "/ota/device/upgrade/a",
            "/ota/device/upgrade/a/b"
        ));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
    }

    #[test]
    fn packets_over_the_limit_are_refused() {
        // 127 body bytes take a 1-byte length, 128 a 2-byte one.
        assert!(packet_fits(10, 127, 129));
        assert!(!packet_fits(10, 128, 130));
        assert!(packet_fits(10, 128, 131));
        assert!(packet_fits(0, 65_530, 64 * 1024));
        assert!(!packet_fits(0, 65_534, 64 * 1024));
        assert!(
            !packet_fits(65_536, 65_540, usize::MAX),
            "strings are at most 65535 bytes"
        );
        assert!(!packet_fits(0, usize::MAX, usize::MAX), "no overflow");
        assert!(
            !packet_fits(0, 268_435_456, usize::MAX),
            "past the remaining-length field"
        );
    }
}
