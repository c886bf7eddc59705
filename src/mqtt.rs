//! A synchronous MQTT 3.1.1 client, shaped like iotkit's: the caller's thread drives the
//! connection in [`MqttClient::yield_for`], which sends what is queued, reads what arrived with
//! blocking socket reads bounded by the caller's timeout, delivers messages to the subscription
//! handlers and connection events to the event handler, keeps the connection alive and
//! reconnects after a loss.
//!
//! rumqttc supplies the packet codec (`mqttbytes::v4`); the delivery state (packet ids, QoS 1/2
//! acknowledgements, what to send again after a reconnection) is `mqtt::flow`'s; the sockets are
//! plain `std::net` (and rustls on top with the `tls` feature). There is no async runtime and
//! no thread: nothing runs between two yields.
//!
//! Every method takes `&self`, so a handler may publish or subscribe on the client that is
//! calling it (as iotkit firmware does from its callbacks): requests wait in a bounded queue
//! until the yield sends them.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::{
    ConnectReturnCode, Incoming, Packet, Request, Subscribe, SubscribeReasonCode, Unsubscribe,
};

use crate::error::{Error, MqttError, Result};
use crate::log::Level;
use crate::ota_log;
use crate::retry::{Backoff, RetryPolicy};

mod flow;
use flow::{Arrival, Flow};

pub use rumqttc::QoS;

/// Reconnection backoff: 1 s doubling to 60 s, with jitter, forever.
const RECONNECT_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(60),
    stall_timeout: Duration::from_secs(60),
};

/// Most packets one zero-timeout yield handles.
const MAX_READY_EVENTS: u32 = 64;

/// Requests (publish, subscribe, unsubscribe) that may wait for the next yield, before OTA
/// sessions attach (each adds [`QUEUE_PER_SESSION`]).
const QUEUE_CAPACITY: usize = 64;

/// Room each attached OTA session adds to the request queue: its subscription and one report,
/// so a gateway that creates hundreds of sessions and reports their versions before its next
/// yield is not refused.
pub(crate) const QUEUE_PER_SESSION: usize = 2;

/// QoS 1/2 publishes sent but not yet acknowledged; more wait in the queue. iotkit keeps 20
/// for re-publishing; each is a slot of the delivery state made at init (72 bytes).
const MAX_INFLIGHT: usize = 20;

/// Bytes asked of the socket per read. The receive buffer holds two (a partial packet and
/// the next read) before it grows; an upgrade message with a long signed URL is 1-2 KB.
const READ_CHUNK: usize = 2048;

/// Bytes of the send buffer before it grows: a progress or version report is 100-300.
const WRITE_BUFFER: usize = 2048;

/// How long a zero-timeout yield that found the socket quiet skips looking again.
const QUIET_POLL: Duration = Duration::from_millis(1);

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    /// The broker's host name or IP address; with TLS, the name its certificate must carry.
    pub host: String,
    /// The broker's TCP port (not 0).
    pub port: u16,
    /// The MQTT client id sent in CONNECT.
    pub client_id: String,
    /// User name sent in CONNECT; `None` sends no credentials.
    pub username: Option<String>,
    /// Password sent with `username` (`None`: empty); ignored without a user name.
    pub password: Option<String>,
    /// CA certificate(s) in PEM: `Some` means TLS verified against them; `None` plain TCP.
    pub ca_pem: Option<Vec<u8>>,
    /// MQTT's clean-session flag: false asks the broker to keep subscriptions and queued
    /// QoS 1/2 messages across connections (default true).
    pub clean_session: bool,
    /// A PINGREQ goes out this often while the caller yields (whole seconds, at least 1); one
    /// still unanswered when the next is due ends the connection.
    pub keepalive: Duration,
    /// Connect and request timeout.
    pub request_timeout: Duration,
    /// Largest packet accepted or sent.
    pub max_packet_size: usize,
}

impl MqttOptions {
    /// Options for `host:port` as `client_id`: plain TCP, no credentials, clean session,
    /// keep-alive 60 s, request timeout 5 s, packets up to 64 KiB.
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
    /// The connection was lost (not after [`MqttClient::disconnect`]); later yields reconnect.
    Disconnected,
    /// The connection is back; the subscriptions are queued for renewal.
    Reconnected,
    /// The broker granted a subscription (SUBACK without a failure code).
    SubscribeAck {
        /// The SUBSCRIBE's packet id.
        packet_id: u16,
    },
    /// The broker refused a subscription (SUBACK with the failure code 0x80).
    SubscribeNack {
        /// The SUBSCRIBE's packet id.
        packet_id: u16,
    },
    /// The broker confirmed an unsubscription (UNSUBACK).
    UnsubscribeAck {
        /// The UNSUBSCRIBE's packet id.
        packet_id: u16,
    },
    /// The broker acknowledged a QoS 1 publish (PUBACK).
    PublishAck {
        /// The PUBLISH's packet id.
        packet_id: u16,
    },
}

/// An incoming message as a handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// The application message, as sent.
    pub payload: &'a [u8],
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// Whether the broker delivered it from its retained messages.
    pub retain: bool,
    /// Whether this may be a redelivery of a QoS 1/2 message.
    pub dup: bool,
    /// The PUBLISH's packet id (0 for QoS 0).
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

/// Requests waiting for the next yield; shared with the [`MqttUplink`]s.
#[derive(Clone)]
struct Queue {
    requests: Arc<Mutex<VecDeque<Request>>>,
    /// Most requests waiting: [`QUEUE_CAPACITY`], plus what attached sessions reserved.
    limit: Arc<AtomicUsize>,
    /// Largest packet sent or received ([`MqttOptions::max_packet_size`]).
    max_packet: usize,
}

impl Queue {
    /// Queues `request` unless the queue's limit of requests are already waiting.
    fn push(&self, request: Request) -> Result<()> {
        let mut q = lock(&self.requests);
        if q.len() >= self.limit.load(Ordering::SeqCst) {
            return Err(Error::Mqtt(MqttError::QueueFull));
        }
        q.push_back(request);
        Ok(())
    }

    /// Queues a publish of `payload` to `topic` (a valid topic name) if it fits in a packet.
    fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) -> Result<()> {
        // The topic with its length, the packet id (QoS 1 and 2), the payload.
        let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let body = (2 + topic.len() + id).saturating_add(payload.len());
        if !packet_fits(topic.len(), body, self.max_packet) {
            return Err(Error::Mqtt(MqttError::TooLarge));
        }
        let mut p = rumqttc::Publish::new(topic, qos, payload);
        p.retain = retain;
        self.push(Request::Publish(p))
    }
}

/// The socket: plain TCP, or TLS over it.
enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Whether a read would return at once: bytes (or the end) on the socket, or, with TLS,
    /// records already decrypted.
    fn ready(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = self {
            if s.conn
                .process_new_packets()
                .map_err(io::Error::other)?
                .plaintext_bytes_to_read()
                > 0
            {
                return Ok(true);
            }
        }
        let mut fd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(self.tcp()),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, no wait.
            match unsafe { libc::poll(&mut fd, 1, 0) } {
                -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                -1 => return Err(io::Error::last_os_error()),
                n => return Ok(n > 0),
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }?;
        quick_ack(self.tcp());
        Ok(n)
    }
}

/// Acknowledges what arrived at once rather than after the kernel's delayed-ACK timer (40 ms on
/// Linux; it re-arms after each read). A broker with Nagle's algorithm on (Mosquitto's default)
/// holds a message behind its unacknowledged PUBACK to us until that ACK: a QoS 1 report
/// followed by an MQTT download's block reply waited 40 ms per block (ota-bench section 7).
fn quick_ack(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of its size; a failure changes nothing.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(tcp),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn io_error(e: &io::Error) -> MqttError {
    if crate::tls::is_tls_io_error(e) {
        return MqttError::Tls;
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => MqttError::Timeout,
        kind => MqttError::Io(kind),
    }
}

/// Where one step of [`MqttClient::yield_for`]'s loop leaves it.
enum Step {
    /// The yield is over.
    Return,
    /// Round the loop again from the top.
    Again,
    /// On to the next step of this round.
    Proceed,
}

/// What a read from the socket brought.
enum Fill {
    Data,
    /// Nothing within the wait.
    Idle,
}

/// One connection's bytes and protocol state; only the yielding thread touches it.
struct Link {
    stream: Option<Stream>,
    flow: Flow,
    rx: BytesMut,
    tx: BytesMut,
    /// When the next PINGREQ is due.
    ping_at: Instant,
    /// Until when a zero-wait read takes the socket's last answer (nothing) as still true.
    quiet_until: Instant,
    keepalive: Duration,
    max_packet: usize,
}

impl Link {
    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.tcp().shutdown(Shutdown::Both);
        }
        self.rx.clear();
        self.tx.clear();
    }

    /// Encodes `packet` after what is waiting to be written.
    fn encode(&mut self, packet: &Packet) -> std::result::Result<(), MqttError> {
        packet
            .write(&mut self.tx, self.max_packet)
            .map(drop)
            .map_err(|_| MqttError::TooLarge)
    }

    /// Writes everything encoded (blocking, bounded by the socket's write timeout).
    fn flush(&mut self) -> std::result::Result<(), MqttError> {
        if self.tx.is_empty() {
            return Ok(());
        }
        let stream = self.stream.as_mut().ok_or(MqttError::NotConnected)?;
        let r = stream.write_all(&self.tx).and_then(|()| stream.flush());
        self.tx.clear();
        r.map_err(|e| io_error(&e))
    }

    /// Reads what the socket has: waiting up to `wait`, or not at all for `None`.
    fn fill(&mut self, wait: Option<Duration>) -> std::result::Result<Fill, MqttError> {
        let stream = self.stream.as_mut().ok_or(MqttError::NotConnected)?;
        if wait.is_none() {
            // The common case is `IOT_MQTT_Yield(pclient, 0)` after every FetchYield of the
            // iotkit sample: tens of thousands of calls a second with nothing to read. The
            // socket is looked at (one poll(2)) at most once a millisecond while it is quiet.
            let now = Instant::now();
            if now < self.quiet_until {
                return Ok(Fill::Idle);
            }
            if !stream.ready().map_err(|e| io_error(&e))? {
                self.quiet_until = now + QUIET_POLL;
                return Ok(Fill::Idle);
            }
        }
        let at = self.rx.len();
        self.rx.resize(at + READ_CHUNK, 0);
        let tcp = stream.tcp();
        let r = match wait {
            // Something is there, but a TLS record may be incomplete: don't wait for the rest.
            None => tcp.set_nonblocking(true).and_then(|()| {
                let r = stream.read(&mut self.rx[at..]);
                let _ = stream.tcp().set_nonblocking(false);
                r
            }),
            Some(w) => tcp
                .set_read_timeout(Some(w.max(Duration::from_millis(1))))
                .and_then(|()| stream.read(&mut self.rx[at..])),
        };
        match r {
            Ok(0) => {
                self.rx.truncate(at);
                Err(MqttError::Io(io::ErrorKind::UnexpectedEof))
            }
            Ok(n) => {
                self.rx.truncate(at + n);
                Ok(Fill::Data)
            }
            Err(e) => {
                self.rx.truncate(at);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(Fill::Idle),
                    io::ErrorKind::Interrupted => Ok(Fill::Data),
                    _ => Err(io_error(&e)),
                }
            }
        }
    }

    /// The next whole packet among the bytes read, if there is one.
    fn next_packet(&mut self) -> std::result::Result<Option<Packet>, MqttError> {
        match Packet::read(&mut self.rx, self.max_packet) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::Error::InsufficientBytes(_)) => Ok(None),
            Err(_) => Err(MqttError::Protocol),
        }
    }
}

/// Everything needed to (re)open the connection.
struct Dialer {
    host: String,
    port: u16,
    connect: rumqttc::Connect,
    #[cfg(feature = "tls")]
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// TCP connect and socket write timeout.
    timeout: Duration,
    /// Longest a whole (re)connection may take: DNS, TCP, TLS and CONNACK.
    window: Duration,
}

impl Dialer {
    /// Whether connections run over TLS (the broker's certificate verified).
    fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    fn new(options: &MqttOptions) -> Result<Dialer> {
        let mut connect = rumqttc::Connect::new(options.client_id.as_str());
        // MQTT counts keep-alive in whole seconds; 0 would turn it off.
        let keepalive = options.keepalive.max(Duration::from_secs(1));
        connect.keep_alive = keepalive.as_secs().min(u16::MAX as u64) as u16;
        connect.clean_session = options.clean_session;
        if let Some(user) = &options.username {
            connect.set_login(user.as_str(), options.password.as_deref().unwrap_or(""));
        }
        let secs = options.request_timeout.as_secs().max(1);
        #[cfg(feature = "tls")]
        let tls = match &options.ca_pem {
            Some(ca) => Some(tls_config(ca, &options.host)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if options.ca_pem.is_some() {
            return Err(Error::InvalidParam(
                "MQTT over TLS needs the `tls` cargo feature",
            ));
        }
        Ok(Dialer {
            host: options.host.clone(),
            port: options.port,
            connect,
            #[cfg(feature = "tls")]
            tls,
            timeout: Duration::from_secs(secs),
            // The connection timeout plus a margin for the CONNACK.
            window: Duration::from_secs(secs + 2),
        })
    }

    /// Opens the socket, sends CONNECT and waits for the CONNACK, all within the window.
    fn dial(&self, link: &mut Link) -> std::result::Result<(), MqttError> {
        link.close();
        let deadline = Instant::now() + self.window;
        let stream = self.open(deadline)?;
        link.stream = Some(stream);
        link.encode(&Packet::Connect(self.connect.clone()))?;
        link.flush()?;
        loop {
            if let Some(packet) = link.next_packet()? {
                return match packet {
                    Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
                        link.ping_at = Instant::now() + link.keepalive;
                        Ok(())
                    }
                    Packet::ConnAck(ack) => Err(MqttError::Refused(ack.code as u8)),
                    _ => Err(MqttError::Protocol),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MqttError::Timeout);
            }
            link.fill(Some(left))?;
        }
    }

    fn open(&self, deadline: Instant) -> std::result::Result<Stream, MqttError> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| io_error(&e))?;
        let mut last = MqttError::Io(io::ErrorKind::NotFound);
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MqttError::Timeout);
            }
            match TcpStream::connect_timeout(&addr, left.min(self.timeout)) {
                Ok(tcp) => return self.secure(tcp, deadline),
                Err(e) => last = io_error(&e),
            }
        }
        Err(last)
    }

    /// Sets the socket up and, with TLS, completes the handshake before the deadline.
    fn secure(&self, tcp: TcpStream, deadline: Instant) -> std::result::Result<Stream, MqttError> {
        let setup = tcp
            .set_nodelay(true)
            .and_then(|()| tcp.set_write_timeout(Some(self.timeout)));
        setup.map_err(|e| io_error(&e))?;
        #[cfg(feature = "tls")]
        if let Some((config, name)) = &self.tls {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|_| MqttError::Tls)?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(MqttError::Timeout);
                }
                tls.sock
                    .set_read_timeout(Some(left))
                    .map_err(|e| io_error(&e))?;
                tls.conn
                    .complete_io(&mut tls.sock)
                    .map_err(|e| io_error(&e))?;
            }
            return Ok(Stream::Tls(Box::new(tls)));
        }
        let _ = deadline;
        Ok(Stream::Tcp(tcp))
    }
}

/// The TLS settings for `host`, trusting exactly the certificates in `ca_pem`.
#[cfg(feature = "tls")]
fn tls_config(
    ca_pem: &[u8],
    host: &str,
) -> Result<(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
)> {
    use crate::tls::CaPemError as E;
    let config = crate::tls::mqtt_config(ca_pem).map_err(|e| match e {
        E::NoCertificate => Error::InvalidParam("pub_key holds no PEM certificate"),
        E::Malformed => Error::InvalidParam("pub_key is not a PEM certificate"),
        E::NotAnAnchor => Error::InvalidParam("pub_key certificate rejected"),
        E::NoTls => Error::Mqtt(MqttError::Tls),
    })?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| Error::InvalidParam("host is neither a DNS name nor an IP address"))?;
    Ok((config, name))
}

/// The client's state: owned by its [`MqttClient`], reached by its [`MqttDriver`]s while the
/// client lives.
struct Core {
    dialer: Dialer,
    link: Mutex<Link>,
    queue: Queue,
    subscriptions: Mutex<Vec<Subscription>>,
    /// Kept for the layers above (see [`MqttClient::shared`]).
    shared: Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>,
    events: Mutex<Option<EventHandler>>,
    /// Gets the messages no subscription matches; taken out while it runs, like a handler.
    unmatched: Mutex<Option<MessageHandler>>,
    connected: Arc<AtomicBool>,
    retry_at: Mutex<Option<Instant>>,
    /// Reconnection delays: exponential with jitter, never giving up.
    backoff: Mutex<Backoff>,
    /// Run after every reconnection (after re-subscribing), e.g. to re-report versions.
    reconnect_hooks: Mutex<Vec<ReconnectHook>>,
    /// Set by `disconnect`: the connection's end is expected, not a loss.
    closing: AtomicBool,
    /// Set by a handler (through [`YieldBreak`]) to end the yield that dispatched its message.
    break_yield: Arc<AtomicBool>,
    /// Set when a handler or hook panicked: the panic poisoned the link lock, but left the link
    /// whole (a packet is fully processed before its handlers run), so the next yield goes on.
    handler_panicked: AtomicBool,
    /// When a caller last called [`MqttClient::yield_for`] (nanoseconds after `created`, plus
    /// one; 0: never), and on which thread ([`caller_mark`]): an [`MqttDriver`] leaves the
    /// connection to a thread that yields it.
    yield_called_at: AtomicU64,
    yield_caller: AtomicUsize,
    /// [`MqttDriver::drive`] calls under way (a gateway's sessions may read MQTT downloads on
    /// several threads).
    sdk_drivers: AtomicUsize,
    created: Instant,
}

thread_local! {
    /// Whether this thread is inside [`Core::drive`] (holding a link): a yield called then comes
    /// from a handler.
    static IN_DRIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the thread as inside [`Core::drive`] until dropped (also when a handler panics).
struct InDrive;

impl InDrive {
    fn enter() -> InDrive {
        IN_DRIVE.with(|d| d.set(true));
        InDrive
    }

    fn here() -> bool {
        IN_DRIVE.with(|d| d.get())
    }
}

impl Drop for InDrive {
    fn drop(&mut self) {
        IN_DRIVE.with(|d| d.set(false));
    }
}

/// A number that tells the calling thread from the others (the address of a thread-local).
fn caller_mark() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|m| m as *const u8 as usize)
}

/// Whether an MQTT 3.1.1 packet with `body` bytes after its fixed header (a string of
/// `string_len` bytes among them) can be sent: strings are at most 65535 bytes, packets at most
/// `max_packet`. A packet that cannot be encoded would break the connection (and come back
/// after every reconnection), so such a request is refused before it is queued.
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

impl Core {
    /// See [`MqttClient::connect`].
    fn connect(options: &MqttOptions) -> Result<Core> {
        if options.host.is_empty() || options.port == 0 {
            return Err(Error::InvalidParam("host and port are required"));
        }
        let dialer = Dialer::new(options)?;
        let mut link = Link {
            stream: None,
            flow: Flow::new(MAX_INFLIGHT),
            rx: BytesMut::with_capacity(READ_CHUNK * 2),
            tx: BytesMut::with_capacity(WRITE_BUFFER),
            ping_at: Instant::now(),
            quiet_until: Instant::now(),
            keepalive: Duration::from_secs(dialer.connect.keep_alive.into()),
            max_packet: options.max_packet_size,
        };
        if let Err(e) = dialer.dial(&mut link) {
            link.close();
            ota_log!(
                Level::Error,
                "MQTT connect to {}:{} failed: {e}",
                options.host,
                options.port
            );
            return Err(Error::Mqtt(e));
        }
        ota_log!(
            Level::Info,
            "MQTT connected to {}:{}",
            options.host,
            options.port
        );
        Ok(Core {
            dialer,
            link: Mutex::new(link),
            queue: Queue {
                requests: Arc::new(Mutex::new(VecDeque::with_capacity(QUEUE_CAPACITY))),
                limit: Arc::new(AtomicUsize::new(QUEUE_CAPACITY)),
                max_packet: options.max_packet_size,
            },
            subscriptions: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            events: Mutex::new(None),
            unmatched: Mutex::new(None),
            connected: Arc::new(AtomicBool::new(true)),
            retry_at: Mutex::new(None),
            backoff: Mutex::new(Backoff::new(RECONNECT_POLICY)),
            reconnect_hooks: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            break_yield: Arc::new(AtomicBool::new(false)),
            handler_panicked: AtomicBool::new(false),
            yield_called_at: AtomicU64::new(0),
            yield_caller: AtomicUsize::new(0),
            sdk_drivers: AtomicUsize::new(0),
            created: Instant::now(),
        })
    }

    /// See [`MqttClient::on_event`].
    fn on_event(&self, handler: impl FnMut(&MqttEvent) + Send + 'static) {
        *lock(&self.events) = Some(Box::new(handler));
    }

    /// See [`MqttClient::on_unmatched`].
    fn on_unmatched(&self, handler: impl FnMut(&Message<'_>) + Send + 'static) {
        *lock(&self.unmatched) = Some(Box::new(handler));
    }

    /// See [`MqttClient::is_connected`].
    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// See [`MqttClient::on_reconnect`].
    fn on_reconnect(&self, hook: impl FnMut() -> bool + Send + 'static) {
        lock(&self.reconnect_hooks).push(Box::new(hook));
    }

    /// See [`MqttClient::subscribe`].
    fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        handler: impl FnMut(&Message<'_>) + Send + 'static,
    ) -> Result<()> {
        self.add_subscription(filter, qos, Box::new(handler), true)
    }

    /// See [`MqttClient::subscribe_new`].
    fn subscribe_new(
        &self,
        filter: &str,
        qos: QoS,
        handler: impl FnMut(&Message<'_>) + Send + 'static,
    ) -> Result<()> {
        self.add_subscription(filter, qos, Box::new(handler), false)
    }

    fn add_subscription(
        &self,
        filter: &str,
        qos: QoS,
        handler: Box<dyn FnMut(&Message<'_>) + Send>,
        replace: bool,
    ) -> Result<()> {
        if !valid_filter(filter) {
            return Err(Error::Mqtt(MqttError::Topic));
        }
        // Packet id, the filter with its length, the QoS byte.
        if !packet_fits(
            filter.len(),
            2 + 2 + filter.len() + 1,
            self.queue.max_packet,
        ) {
            return Err(Error::Mqtt(MqttError::TooLarge));
        }
        let mut subs = lock(&self.subscriptions);
        if !replace && subs.iter().any(|s| s.filter == filter) {
            return Err(Error::InvalidState(
                "the topic filter is subscribed already",
            ));
        }
        self.queue
            .push(Request::Subscribe(Subscribe::new(filter, qos)))?;
        subs.retain(|s| s.filter != filter);
        subs.push(Subscription {
            filter: filter.to_string(),
            qos,
            handler: Some(handler),
        });
        Ok(())
    }

    /// See [`MqttClient::unsubscribe`].
    fn unsubscribe(&self, filter: &str) -> Result<()> {
        let mut subs = lock(&self.subscriptions);
        let before = subs.len();
        subs.retain(|s| s.filter != filter);
        if subs.len() == before {
            return Err(Error::InvalidParam("topic filter is not subscribed"));
        }
        drop(subs);
        self.queue
            .push(Request::Unsubscribe(Unsubscribe::new(filter)))
    }

    /// See [`MqttClient::publish`].
    fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) -> Result<()> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(Error::Mqtt(MqttError::Topic));
        }
        self.queue.publish(topic, qos, retain, payload)
    }

    /// See [`MqttClient::reserve_requests`].
    fn reserve_requests(&self, n: usize) {
        let mut q = lock(&self.queue.requests);
        let limit = self.queue.limit.fetch_add(n, Ordering::SeqCst) + n;
        let len = q.len();
        // Exact: the amortised growth would double the queue (its slots are large).
        q.reserve_exact(limit.saturating_sub(len));
    }

    /// See [`MqttClient::shared`].
    fn shared<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<Arc<T>> {
        let mut slot = lock(&self.shared);
        let any = slot
            .get_or_insert_with(|| Arc::new(make()) as Arc<dyn std::any::Any + Send + Sync>)
            .clone();
        any.downcast::<T>().ok()
    }

    /// See [`MqttClient::uplink`].
    fn uplink(&self) -> MqttUplink {
        MqttUplink {
            queue: self.queue.clone(),
            connected: self.connected.clone(),
            tls: self.dialer.is_tls(),
        }
    }

    /// See [`MqttClient::yield_break`].
    fn yield_break(&self) -> YieldBreak {
        YieldBreak(self.break_yield.clone())
    }

    /// Notes that the caller's thread yields the connection (see [`MqttDriver::drive`]).
    fn note_yield_call(&self) {
        let at = self.created.elapsed().as_nanos().min(u64::MAX as u128 - 1) as u64 + 1;
        self.yield_called_at.store(at, Ordering::Relaxed);
        self.yield_caller.store(caller_mark(), Ordering::Relaxed);
    }

    /// Whether a thread other than the caller called [`MqttClient::yield_for`] within `within`.
    fn yielded_elsewhere(&self, within: Duration) -> bool {
        let at = self.yield_called_at.load(Ordering::Relaxed);
        if at == 0 || self.yield_caller.load(Ordering::Relaxed) == caller_mark() {
            return false;
        }
        let since = Duration::from_nanos(at - 1);
        self.created.elapsed().saturating_sub(since) < within
    }

    /// [`MqttClient::yield_for`]; false when the link is busy: another thread yields, or a handler called it.
    fn drive(&self, timeout: Duration) -> bool {
        let mut link = match self.link.try_lock() {
            Ok(link) => link,
            Err(TryLockError::WouldBlock) => return false,
            Err(TryLockError::Poisoned(p)) => self.recover(p.into_inner()),
        };
        let _in_drive = InDrive::enter();
        let link = &mut *link;
        let deadline = Instant::now() + timeout;
        let mut handled = 0;
        loop {
            let step = if self.connected.load(Ordering::SeqCst) {
                Step::Proceed
            } else {
                self.redial(link, deadline)
            };
            let step = match step {
                Step::Proceed => self.exchange(link, timeout, &mut handled),
                other => other,
            };
            let step = match step {
                Step::Proceed => self.wait_for_input(link, timeout, deadline),
                other => other,
            };
            if let Step::Return = step {
                return true;
            }
        }
    }

    /// The connection is down: waits out the backoff (within the yield's time), then dials.
    /// A reconnection attempt gets the whole connect window, whatever the caller's timeout
    /// (this only happens after a drop, once per backoff period).
    fn redial(&self, link: &mut Link, deadline: Instant) -> Step {
        if self.closing.load(Ordering::SeqCst) {
            return Step::Return;
        }
        // Copied out first: a guard in the `if let` scrutinee would live through it.
        let retry_at = *lock(&self.retry_at);
        if let Some(at) = retry_at {
            let now = Instant::now();
            if now < at {
                std::thread::sleep(at.min(deadline).saturating_duration_since(now));
                if Instant::now() < at {
                    return Step::Return;
                }
            }
            *lock(&self.retry_at) = None;
        }
        match self.dialer.dial(link) {
            Ok(()) => {
                self.reconnected();
                Step::Proceed
            }
            Err(e) => {
                link.close();
                self.schedule_retry();
                ota_log!(Level::Debug, "MQTT reconnection failed: {e}");
                if Instant::now() >= deadline {
                    Step::Return
                } else {
                    Step::Again
                }
            }
        }
    }

    /// Sends what is queued and handles one whole packet that has arrived, if any.
    fn exchange(&self, link: &mut Link, timeout: Duration, handled: &mut u32) -> Step {
        if let Err(e) = self.send_queued(link) {
            self.lost(link, e);
            return Step::Again;
        }
        if link.stream.is_none() {
            // DISCONNECT went out.
            return Step::Return;
        }
        match link.next_packet() {
            Ok(Some(packet)) => {
                *handled += 1;
                if let Err(e) = self.incoming(link, packet) {
                    self.lost(link, e);
                    return Step::Again;
                }
                if self.break_yield.swap(false, Ordering::SeqCst) {
                    // Acknowledgements and what the handler queued go out first.
                    if let Err(e) = self.send_queued(link) {
                        self.lost(link, e);
                    }
                    return Step::Return;
                }
                if timeout.is_zero() && *handled >= MAX_READY_EVENTS {
                    return Step::Return;
                }
                Step::Again
            }
            Ok(None) => Step::Proceed,
            Err(e) => {
                self.lost(link, e);
                Step::Again
            }
        }
    }

    /// Nothing whole to handle: reads what arrives until the yield's deadline or the next
    /// ping, which it sends when due.
    fn wait_for_input(&self, link: &mut Link, timeout: Duration, deadline: Instant) -> Step {
        let now = Instant::now();
        let filled = if now >= link.ping_at {
            // What already arrived first (looking at the socket even if it was quiet a
            // moment ago): the answer to the last PINGREQ may be in it.
            link.quiet_until = now;
            match link.fill(None) {
                Ok(Fill::Idle) => match self.ping(link) {
                    Ok(()) => return Step::Again,
                    Err(e) => Err(e),
                },
                r => r,
            }
        } else if now >= deadline {
            if !timeout.is_zero() {
                return Step::Return;
            }
            match link.fill(None) {
                Ok(Fill::Idle) => return Step::Return,
                r => r,
            }
        } else {
            link.fill(Some(deadline.min(link.ping_at) - now))
        };
        if let Err(e) = filled {
            self.lost(link, e);
        }
        Step::Again
    }

    /// Takes the link back after a panic unwound through an earlier yield (and was caught by its
    /// caller, e.g. the C boundary). A handler's panic left it whole; any other may have left the
    /// protocol state half-updated, so that connection is dropped and a new one made.
    fn recover<'a>(&self, mut link: MutexGuard<'a, Link>) -> MutexGuard<'a, Link> {
        self.link.clear_poison();
        // The yield the handler meant to end is over.
        self.break_yield.store(false, Ordering::SeqCst);
        if !self.handler_panicked.swap(false, Ordering::SeqCst) {
            ota_log!(
                Level::Error,
                "MQTT: a panic interrupted the protocol; reconnecting"
            );
            self.lost(&mut link, MqttError::Protocol);
        }
        link
    }

    /// Goes on with the panic of a handler that was caught so the handler could be put back
    /// first, noting for the next yield that the link it poisons is whole.
    fn rethrow<T>(&self, r: std::thread::Result<T>) -> T {
        r.unwrap_or_else(|panic| {
            self.handler_panicked.store(true, Ordering::SeqCst);
            resume_unwind(panic)
        })
    }

    /// Sends a PINGREQ; the last one unanswered means the broker is gone.
    fn ping(&self, link: &mut Link) -> std::result::Result<(), MqttError> {
        link.ping_at = Instant::now() + link.keepalive;
        link.flow.ping(&mut link.tx, link.max_packet)?;
        link.flush()
    }

    /// Moves queued requests through the protocol state onto the socket, as far as the
    /// in-flight window allows.
    fn send_queued(&self, link: &mut Link) -> std::result::Result<(), MqttError> {
        loop {
            if !link.flow.has_room() {
                break;
            }
            let Some(request) = lock(&self.queue.requests).pop_front() else {
                break;
            };
            let disconnect = matches!(request, Request::Disconnect(_));
            link.flow.send(request, &mut link.tx, link.max_packet)?;
            if disconnect {
                let r = link.flush();
                link.close();
                self.connected.store(false, Ordering::SeqCst);
                return r;
            }
        }
        link.flush()
    }

    /// Runs an arrived packet through the protocol state (which may answer it) and delivers it.
    fn incoming(&self, link: &mut Link, packet: Packet) -> std::result::Result<(), MqttError> {
        if link.flow.receive(&packet, &mut link.tx, link.max_packet)? == Arrival::Deliver {
            self.dispatch(packet);
        }
        Ok(())
    }

    /// The connection is gone: keeps what must be resent, plans the reconnection, tells the
    /// event handler (unless the end was asked for).
    fn lost(&self, link: &mut Link, err: MqttError) {
        link.close();
        {
            let mut q = lock(&self.queue.requests);
            link.flow.lost(self.dialer.connect.clean_session, |again| {
                q.push_front(again)
            });
        }
        let was = self.connected.swap(false, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        self.schedule_retry();
        if was {
            ota_log!(Level::Warning, "MQTT connection lost: {err}");
            self.emit(MqttEvent::Disconnected);
        }
    }

    fn schedule_retry(&self) {
        let delay = lock(&self.backoff)
            .next_delay()
            .unwrap_or(RECONNECT_POLICY.max_delay);
        *lock(&self.retry_at) = Some(Instant::now() + delay);
    }

    /// Renews the subscriptions, tells the event handler and runs the reconnection hooks.
    fn reconnected(&self) {
        self.connected.store(true, Ordering::SeqCst);
        lock(&self.backoff).progressed();
        ota_log!(Level::Info, "MQTT reconnected");
        {
            let subs = lock(&self.subscriptions);
            let mut q = lock(&self.queue.requests);
            for s in subs.iter() {
                q.push_back(Request::Subscribe(Subscribe::new(s.filter.as_str(), s.qos)));
            }
        }
        self.emit(MqttEvent::Reconnected);
        let mut hooks = std::mem::take(&mut *lock(&self.reconnect_hooks));
        // A panicking hook is kept, as are those after it (retain_mut is panic-safe).
        let ran = catch_unwind(AssertUnwindSafe(|| hooks.retain_mut(|hook| hook())));
        // Hooks added while these ran go after them.
        let mut table = lock(&self.reconnect_hooks);
        hooks.append(&mut table);
        *table = hooks;
        drop(table);
        self.rethrow(ran);
    }

    fn emit(&self, event: MqttEvent) {
        if let Some(h) = lock(&self.events).as_mut() {
            let r = catch_unwind(AssertUnwindSafe(|| h(&event)));
            self.rethrow(r);
        }
    }

    fn dispatch(&self, packet: Incoming) {
        match packet {
            Incoming::Publish(p) => {
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
            Incoming::SubAck(ack) => {
                let failed = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
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
            Incoming::UnsubAck(ack) => self.emit(MqttEvent::UnsubscribeAck {
                packet_id: ack.pkid,
            }),
            Incoming::PubAck(ack) => self.emit(MqttEvent::PublishAck {
                packet_id: ack.pkid,
            }),
            _ => {}
        }
    }

    /// Runs every handler whose filter matches, or the unmatched-message handler when none
    /// does; each is taken out of its place while it runs, so it may call back into the client,
    /// and put back after it, also when it panicked.
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
                let r = catch_unwind(AssertUnwindSafe(|| h(msg)));
                delivered = true;
                let mut subs = lock(&self.subscriptions);
                if let Some(s) = subs.get_mut(i).filter(|s| s.handler.is_none()) {
                    s.handler = Some(h);
                }
                drop(subs);
                self.rethrow(r);
            } else if filter_matches {
                delivered = true;
            }
            i += 1;
        }
        if !delivered {
            let handler = lock(&self.unmatched).take();
            if let Some(mut h) = handler {
                let r = catch_unwind(AssertUnwindSafe(|| h(msg)));
                let mut slot = lock(&self.unmatched);
                if slot.is_none() {
                    *slot = Some(h);
                }
                drop(slot);
                self.rethrow(r);
            } else {
                // E.g. an upgrade for a device whose OTA session is gone, which a persistent
                // session still delivers.
                ota_log!(
                    Level::Warning,
                    "message on {} matches no subscription: ignored",
                    msg.topic
                );
            }
        }
    }

    /// See [`MqttClient::disconnect`].
    fn disconnect(&self, timeout: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        if !self.is_connected() {
            return;
        }
        lock(&self.queue.requests).push_back(Request::Disconnect(rumqttc::Disconnect));
        self.drive(timeout);
    }
}

/// A connected MQTT client.
pub struct MqttClient {
    /// Shared (weakly) with the [`MqttDriver`]s, so a download source can yield the connection;
    /// dropping the client still closes it.
    core: Arc<Core>,
}

impl MqttClient {
    /// Connects to the broker; returns once the broker accepted the connection.
    pub fn connect(options: &MqttOptions) -> Result<MqttClient> {
        Ok(MqttClient {
            core: Arc::new(Core::connect(options)?),
        })
    }

    /// Sets the handler for connection events (replacing any previous one).
    pub fn on_event(&self, handler: impl FnMut(&MqttEvent) + Send + 'static) {
        self.core.on_event(handler)
    }

    /// Sets the handler for messages that no subscription matches (replacing any previous
    /// one), e.g. those a persistent session still holds for a filter unsubscribed since;
    /// without one they are dropped with one log line each. It runs inside [`yield_for`](Self::yield_for).
    pub fn on_unmatched(&self, handler: impl FnMut(&Message<'_>) + Send + 'static) {
        self.core.on_unmatched(handler)
    }

    /// Whether the connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.core.is_connected()
    }

    /// Runs `hook` inside [`yield_for`](Self::yield_for) after every reconnection, once the
    /// subscriptions are renewed; a hook that returns false is dropped.
    pub fn on_reconnect(&self, hook: impl FnMut() -> bool + Send + 'static) {
        self.core.on_reconnect(hook)
    }

    /// Subscribes `filter`; `handler` runs inside [`yield_for`](Self::yield_for) for every
    /// matching message. A second subscription of the same filter replaces the handler.
    pub fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        handler: impl FnMut(&Message<'_>) + Send + 'static,
    ) -> Result<()> {
        self.core.subscribe(filter, qos, handler)
    }

    /// [`subscribe`](Self::subscribe) for a filter that must be new: when `filter` is
    /// subscribed already, [`Error::InvalidState`] and nothing changes (the check and the
    /// subscription are one step, so two callers cannot both succeed).
    pub fn subscribe_new(
        &self,
        filter: &str,
        qos: QoS,
        handler: impl FnMut(&Message<'_>) + Send + 'static,
    ) -> Result<()> {
        self.core.subscribe_new(filter, qos, handler)
    }

    /// Removes the subscription of `filter`.
    pub fn unsubscribe(&self, filter: &str) -> Result<()> {
        self.core.unsubscribe(filter)
    }

    /// Queues a publish; it goes out during the next [`yield_for`](Self::yield_for).
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) -> Result<()> {
        self.core.publish(topic, qos, retain, payload)
    }

    /// Makes room for `n` more waiting requests (allocated now, at a session's init).
    pub(crate) fn reserve_requests(&self, n: usize) {
        self.core.reserve_requests(n)
    }

    /// Largest packet sent or received ([`MqttOptions::max_packet_size`]).
    pub(crate) fn max_packet_size(&self) -> usize {
        self.core.queue.max_packet
    }

    /// What the layers above keep per client, made by `make` on first use: the OTA sessions'
    /// [`crate::ota::Gateway`] (see [`crate::link`]). None if another type was kept first.
    pub(crate) fn shared<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Option<Arc<T>> {
        self.core.shared(make)
    }

    /// A publishing handle for an [`crate::OtaSession`].
    pub fn uplink(&self) -> MqttUplink {
        self.core.uplink()
    }

    /// What a handler uses to end the yield dispatching its message early.
    pub fn yield_break(&self) -> YieldBreak {
        self.core.yield_break()
    }

    /// A handle that drives this client's connection from another part of the SDK (the MQTT
    /// download source, inside FetchYield); it does not keep the client alive.
    pub(crate) fn driver(&self) -> MqttDriver {
        MqttDriver {
            core: Arc::downgrade(&self.core),
        }
    }

    /// Drives the connection for up to `timeout` (zero: one pass over what is ready), sending
    /// queued requests and dispatching what arrives. Reconnects after a drop, with backoff.
    /// Returns early after a message whose handler asked for it ([`YieldBreak`]).
    /// [`Error::InvalidState`] at once when called from inside a handler or while another
    /// thread yields. While the SDK itself drives the connection on another thread (an MQTT
    /// download read inside FetchYield, for one slice or a reconnection), the call waits for
    /// it within `timeout` and returns `Ok` at the end of `timeout`, as a yield that found
    /// nothing to do: the connection is being served.
    ///
    /// A panic in a handler goes on to the caller, and the handler stays subscribed: after
    /// catching it, the caller yields again as before.
    pub fn yield_for(&self, timeout: Duration) -> Result<()> {
        self.core.note_yield_call();
        let start = Instant::now();
        loop {
            if self.core.drive(timeout.saturating_sub(start.elapsed())) {
                return Ok(());
            }
            if InDrive::here() || self.core.sdk_drivers.load(Ordering::SeqCst) == 0 {
                return Err(Error::InvalidState(
                    "yield called from inside a handler, or while another thread yields",
                ));
            }
            // The SDK's own driver (an MQTT download inside FetchYield, on another thread) has
            // the link for one slice, or for a reconnection, and leaves it to this thread from
            // now on (the call was noted): wait for it within this yield's time.
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(1)));
        }
    }

    /// Sends DISCONNECT after what is queued and closes the connection (best effort, bounded
    /// by `timeout`).
    pub fn disconnect(&self, timeout: Duration) {
        self.core.disconnect(timeout)
    }
}

/// How long after another thread's call to [`MqttClient::yield_for`] an [`MqttDriver`] leaves
/// the connection to that thread.
pub(crate) const OTHER_YIELDER_GRACE: Duration = Duration::from_secs(1);

/// Longest an [`MqttDriver`] drives the connection at once when it is up (a reconnection takes
/// the connect window); a firmware's yield that finds it driven waits within its own timeout.
pub(crate) const MAX_DRIVE_SLICE: Duration = Duration::from_millis(100);

/// What [`MqttDriver::drive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// This thread yielded the connection (for up to the timeout given).
    Drove,
    /// Another thread is yielding it (or a handler called): what arrives reaches the
    /// subscriptions through that yield.
    Busy,
    /// The client was dropped.
    Gone,
}

/// A weak handle on an [`MqttClient`]'s connection, for a part of the SDK that must yield it
/// itself when the firmware does not (the MQTT download source inside FetchYield).
#[derive(Clone)]
pub(crate) struct MqttDriver {
    core: std::sync::Weak<Core>,
}

impl MqttDriver {
    /// [`MqttClient::yield_for`], unless another thread yields the connection: one is inside
    /// `yield_for` now, or called it within [`OTHER_YIELDER_GRACE`] (a yield thread's next call
    /// would otherwise find the link taken). At most [`MAX_DRIVE_SLICE`]: a yield thread that
    /// calls meanwhile waits, within its timeout, until it ends.
    pub(crate) fn drive(&self, timeout: Duration) -> Drive {
        let Some(core) = self.core.upgrade() else {
            return Drive::Gone;
        };
        if core.yielded_elsewhere(OTHER_YIELDER_GRACE) {
            return Drive::Busy;
        }
        let timeout = timeout.min(MAX_DRIVE_SLICE);
        // Counted before the link is taken, so a yield thread that finds it taken waits.
        core.sdk_drivers.fetch_add(1, Ordering::SeqCst);
        let drove = catch_unwind(AssertUnwindSafe(|| core.drive(timeout)));
        core.sdk_drivers.fetch_sub(1, Ordering::SeqCst);
        match drove.unwrap_or_else(|panic| resume_unwind(panic)) {
            true => Drive::Drove,
            false => Drive::Busy,
        }
    }

    /// [`MqttClient::publish`]; [`MqttError::NotConnected`] once the client is gone.
    pub(crate) fn publish(&self, topic: &str, qos: QoS, payload: &[u8]) -> Result<()> {
        let core = self.core.upgrade();
        let core = core.ok_or(Error::Mqtt(MqttError::NotConnected))?;
        core.publish(topic, qos, false, payload)
    }

    /// [`MqttClient::unsubscribe`], if the client is still there.
    pub(crate) fn unsubscribe(&self, filter: &str) {
        if let Some(core) = self.core.upgrade() {
            let _ = core.unsubscribe(filter);
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
    queue: Queue,
    connected: Arc<AtomicBool>,
    tls: bool,
}

impl MqttUplink {
    /// Whether the client's connection runs over TLS, the broker's certificate verified.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Queues a QoS 1 report for the next yield; [`MqttError::NotConnected`] while the broker
    /// is away (the OTA session keeps the message and sends it after the reconnection).
    pub fn publish_report(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        if !self.connected.load(Ordering::SeqCst) {
            // The session keeps the message and sends it after the reconnection.
            return Err(Error::Mqtt(MqttError::NotConnected));
        }
        self.queue.publish(topic, QoS::AtLeastOnce, false, payload)
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
