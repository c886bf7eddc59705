//! Firmware download over HTTP(S) with `Range`, behind the [`FirmwareSource`] trait so the engine
//! can also run on in-memory transports.
//!
//! [`HttpSource`] creates no thread: the download is driven on the caller's thread, inside
//! [`FirmwareSource::read`], over a non-blocking socket of the [`Net`] seam (`poll(2)` on
//! POSIX), each wait bounded by the time left of that call's timeout. When the time is up the
//! call returns [`Chunk::Pending`] and keeps the connection and the HTTP state, so the next call
//! goes on where this one stopped: mid-connect, mid-TLS-handshake, mid-head or mid-body.
//! `close` and a new `open` close the socket at once.
//!
//! HTTP/1.1 is ureq's sans-IO core, `ureq-proto`: it writes the request head into a buffer
//! and parses the response head and chunked bodies from bytes given to it. (ureq's own
//! `call()` blocks until the response head and ends the request when its transport times out,
//! so a download could not pause across calls.) TLS: rustls runs the handshake on the same
//! socket, then the crate's `tls_link` opens the records itself, in place in one record buffer.
//! Bytes reach the caller's buffer with one copy: identity bodies (`Content-Length`, or up to
//! the close) are received straight into it over plain HTTP and copied into it from the
//! decrypted record over HTTPS; chunked bodies are decoded into it from the receive buffer.
//! The buffers are made in [`HttpSource::new`] (the record buffer with each HTTPS connection);
//! a read in the middle of a body allocates nothing, over HTTP or HTTPS.
//!
//! Name resolution is the one wait not bounded by the read's timeout (see [`crate::net`]):
//! an IP address in the URL is never looked up, a name is looked up by the resolver once per
//! connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ureq_proto::client::state::{RecvBody, RecvResponse};
use ureq_proto::client::{Call, RecvResponseResult, SendRequestResult};
use ureq_proto::http;
use ureq_proto::BodyMode;

use crate::net::{Interest, Net, PosixNet};
pub use crate::tls::{check_ca_pem, CaPemError};
use crate::tls::{is_tls_io_error, parse_ca_pem};

/// Why a download failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The server answered with this status instead of 200/206 or a redirect to follow
    /// (416 from [`MemorySource`] for an offset past the end); 408, 429, 500 and 502-504 are
    /// transient.
    #[error("HTTP status {0}")]
    Status(u16),
    /// None of the host's addresses (at most 4, tried in turn) accepted a TCP connection.
    #[error("could not connect to the firmware server")]
    Connect,
    /// The host name did not resolve to an address.
    #[error("host name lookup failed")]
    Resolve,
    /// A phase outlasted its [`HttpConfig`] timeout (connect with handshake, response head,
    /// body), or the engine saw nothing arrive for the retry policy's stall timeout.
    #[error("timed out")]
    Timeout,
    /// The TLS handshake failed (certificate not trusted, wrong host name, alert), the URL's
    /// host is not a valid server name, or the build has no TLS for an `https://` URL.
    #[error("TLS failure")]
    Tls,
    /// A TLS connection that was up broke (a fatal alert, a record that does not decrypt):
    /// unlike a failed handshake, a new connection may well work.
    #[error("TLS connection broken after the handshake")]
    TlsBroken,
    /// Any other socket error, by kind (`UnexpectedEof`: closed during the response head).
    #[error("network error: {0}")]
    Io(std::io::ErrorKind),
    /// The response is not usable HTTP, or does not fit the request (head too large, bad
    /// chunking, `Content-Range` or size not the ones asked for, digest mismatch); the text
    /// says which.
    #[error("malformed HTTP response: {0}")]
    BadResponse(&'static str),
    /// A download over MQTT got replies it cannot use, and asking again did not help or
    /// cannot (bad frames or CRC-16 four times in a row, replies at another offset only, a
    /// code other than 200, a file length other than the announced size); the text says which.
    #[error("MQTT download reply refused: {0}")]
    BadBlock(&'static str),
    /// The URL (or a redirect's target) is not `http(s)://host…`, has a port outside
    /// 1..=65535, or is longer than [`HttpConfig::max_url`].
    #[error("invalid firmware URL")]
    Url,
    /// More redirects than [`HttpConfig::max_redirects`].
    #[error("too many redirects")]
    Redirects,
    /// An `http://` URL or redirect while [`HttpConfig::allow_plain_http`] is false.
    #[error("plain http:// download refused (HTTPS required by the configuration)")]
    PlainHttp,
    /// A redirect from https to http, to another scheme (`ftp:`, `file:`) or scheme-relative
    /// (`//host`).
    #[error("redirect to a weaker or unknown scheme refused")]
    RedirectScheme,
    /// The server has more bytes than the upgrade announced; the image is rejected.
    #[error("server sent more bytes than the announced size")]
    Oversize,
    /// The body ended (close, or the end of its `Content-Length` or chunks) before the
    /// announced size; transient, the next connection resumes from the offset reached.
    #[error("connection closed before the announced size was received")]
    Truncated,
    /// A resumed download came back from byte 0. No source of this crate returns it: the
    /// engine skips the bytes it has when a server ignores `Range`.
    #[error("the download was restarted from byte 0 by the server")]
    Restarted,
    /// An upgrade message for another image arrived during the download, which ends here.
    #[error("a different upgrade replaced this download")]
    Superseded,
    /// The firmware reported the upgrade failed (or released the session, or detached the MQTT
    /// download it was reading) mid-download.
    #[error("the download was ended by the firmware (a failure report, a released session, or a detached MQTT download)")]
    Abandoned,
    /// The image another session of the gateway keeps could not be streamed (withdrawn,
    /// unreadable, or not matching the digest): the download goes on from the network.
    #[error("local image unusable: {0}")]
    LocalImage(&'static str),
}

impl DownloadError {
    /// Whether reconnecting (from the current offset) may help.
    pub fn is_transient(self) -> bool {
        match self {
            DownloadError::Status(code) => matches!(code, 408 | 429 | 500 | 502 | 503 | 504),
            DownloadError::Connect
            | DownloadError::Resolve
            | DownloadError::Timeout
            | DownloadError::Io(_)
            | DownloadError::TlsBroken
            | DownloadError::Truncated => true,
            DownloadError::Tls
            | DownloadError::BadResponse(_)
            | DownloadError::BadBlock(_)
            | DownloadError::Url
            | DownloadError::Redirects
            | DownloadError::PlainHttp
            | DownloadError::RedirectScheme
            | DownloadError::Oversize
            | DownloadError::Restarted
            | DownloadError::Superseded
            | DownloadError::Abandoned => false,
            // Never a retry of the same source: the engine switches to the network.
            DownloadError::LocalImage(_) => false,
        }
    }
}

/// What the server answered to a download request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenInfo {
    /// HTTP status (200 or 206; other statuses come back as [`DownloadError::Status`]).
    pub status: u16,
    /// `Content-Length`, when the server sent one.
    pub content_length: Option<u64>,
    /// First byte from `Content-Range` (206 answers).
    pub range_start: Option<u64>,
    /// Size of the whole file from `Content-Range` (206 answers).
    pub range_total: Option<u64>,
}

/// One step of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// The response headers arrived (reported once per `open`, before any data).
    Opened(OpenInfo),
    /// `n` bytes were written to the start of the caller's buffer.
    Data(usize),
    /// Nothing arrived within the timeout.
    Pending,
    /// The body ended.
    End,
}

/// A place firmware bytes come from.
pub trait FirmwareSource: Send {
    /// Starts a download of `url` from byte `offset` (`Range: bytes=offset-` when non-zero),
    /// abandoning any download in progress. Must not block on the network.
    fn open(&mut self, url: &str, offset: u64) -> Result<(), DownloadError>;
    /// Waits at most `timeout` for the next step.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, DownloadError>;
    /// Abandons the download in progress, if any.
    fn close(&mut self);
}

/// The Link SDK's default block (`MQTT_DOWNLOAD_DEFAULT_REQUEST_SIZE`, 5 KiB; its header's
/// comment says 2 KiB): small enough for a broker's and a device's packet limits, large enough
/// that the per-block round trip does not dominate.
const DEFAULT_BLOCK_SIZE: u32 = 5 * 1024;

/// Tunables of the MQTT block source ([`crate::mqtt_source::MqttBlockSource`]), the download
/// over MQTT that [`crate::ota::OtaConfig::mqtt_download`] turns on.
#[derive(Debug, Clone)]
pub struct MqttDownloadConfig {
    /// Bytes asked per request (the last asks only for what remains); at least 1, and its reply
    /// frame (with 512 bytes for its header, and the reply topic) must fit the client's
    /// [`max_packet_size`](crate::MqttOptions::max_packet_size). Default
    /// 5 KiB, the Link SDK's.
    pub block_size: u32,
    /// How long a request waits for its reply before it is sent again (the Link SDK's 10 s).
    pub block_timeout: Duration,
    /// Requests sent again for one block, in a row, before the download fails (the Link
    /// SDK's 3).
    pub block_retries: u32,
}

impl Default for MqttDownloadConfig {
    fn default() -> Self {
        MqttDownloadConfig {
            block_size: DEFAULT_BLOCK_SIZE,
            block_timeout: Duration::from_secs(10),
            block_retries: 3,
        }
    }
}

/// Tunables of [`HttpSource`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bytes of the receive buffer, made in [`HttpSource::new`]. It holds the request head
    /// while it is sent (so at least `2 * max_url + 512`), then the response head (so at least
    /// `max_header_bytes`) and the raw data of chunked bodies; identity bodies
    /// (`Content-Length`, or up to the close) bypass it into the caller's buffer.
    pub receive_buffer: usize,
    /// Time allowed for the TCP connection and the TLS handshake together (name resolution
    /// is bounded by the resolver, see [`crate::net`]).
    pub connect_timeout: Duration,
    /// Time allowed for the response headers, from the start of the request.
    pub response_timeout: Duration,
    /// Longest a whole body may take (a hard stop for a stalled server).
    pub body_timeout: Duration,
    /// Redirects followed per request; one more fails with [`DownloadError::Redirects`]. A
    /// redirect keeps the scheme or goes from http to https, never from https to http or to
    /// another scheme ([`DownloadError::RedirectScheme`]).
    pub max_redirects: u32,
    /// Largest URL accepted (also for redirect targets).
    pub max_url: usize,
    /// Largest response head (status line and headers); a larger one fails the request.
    pub max_header_bytes: usize,
    /// Whether plain `http://` URLs may be downloaded (logged as a warning). The platforms'
    /// documents use them, so this is allowed by default; false refuses them with
    /// [`DownloadError::PlainHttp`] (and refuses redirects to them).
    pub allow_plain_http: bool,
    /// CA certificate(s) in PEM that HTTPS servers must chain to, replacing the bundled web
    /// roots; `None` trusts the web roots. Chain and host name are verified either way.
    pub ca_pem: Option<Arc<[u8]>>,
    /// The kernel's receive buffer of a download socket ([`PosixNet::with_receive_buffer`]),
    /// `None` for the kernel's autotuning. A fixed buffer bounds the kernel memory a download
    /// may hold while the firmware is slower than the network (autotuning grows it to
    /// `tcp_rmem`'s maximum, megabytes), and on 127.0.0.1 it lifts the 5000-byte FetchYield
    /// loop by 5-8 % (ota-bench), as the sender is woken less often. 1 MiB (2 MiB with the
    /// kernel's share) still fills a 50 Mbit/s path of 300 ms round trip.
    pub socket_receive_buffer: Option<usize>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            receive_buffer: 8 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(3600),
            max_redirects: 5,
            max_url: 2048,
            // nginx's default for a request head; a CDN's response head is 1-2 KB.
            max_header_bytes: 8 * 1024,
            allow_plain_http: true,
            ca_pem: None,
            socket_receive_buffer: Some(1024 * 1024),
        }
    }
}

/// Addresses of a host tried in turn.
const MAX_ADDRS: usize = 4;

/// Smallest receive buffer (a chunk-size line and its data must make progress).
const MIN_RECV: usize = 1024;

/// Where a download stands between two reads.
enum Step {
    /// No download (never opened, closed, failed or refused).
    Idle,
    /// Opened: the next read builds the request, resolves the host and connects.
    Start,
    /// The TCP connection is being established (to `addrs[addr_next - 1]`).
    Connecting(Call<RecvResponse>),
    /// The TLS handshake is under way.
    #[cfg(feature = "tls")]
    Handshake(Call<RecvResponse>),
    /// The request head is being sent.
    Send(Call<RecvResponse>),
    /// The response head is being received.
    Head(Call<RecvResponse>),
    /// The body is being received.
    Body(Body),
    /// The body ended (the connection is closed).
    Ended,
}

/// How the body ends.
enum Body {
    /// After this many more bytes (`Content-Length`).
    Length(u64),
    /// At the server's close.
    Close,
    /// At the last chunk (decoded by ureq-proto; boxed per download, it is large).
    Chunked(Box<Call<RecvBody>>),
}

/// What a step of the download came to.
enum Flow {
    /// It moved on; go again.
    Again,
    /// It needs the socket to be ready for this.
    Wait(Interest),
    /// Something to hand to the caller.
    Done(Chunk),
}

/// HTTP(S) download driven on the caller's thread (see the module doc); `N` is the socket and
/// clock seam, [`PosixNet`] unless an RTOS port brings its own.
pub struct HttpSource<N: Net = PosixNet> {
    net: N,
    config: HttpConfig,
    #[cfg(feature = "tls")]
    tls_config: Arc<rustls::ClientConfig>,
    /// The URL requested now: the one given to `open`, then each redirect's target.
    url: String,
    offset: u64,
    redirects: u32,
    step: Step,
    /// When the current phase (connect and handshake, head, body) must be over.
    phase_deadline: Duration,
    socket: Option<N::Socket>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls_link::TlsLink>,
    addrs: [SocketAddr; MAX_ADDRS],
    addr_count: usize,
    addr_next: usize,
    /// The request head is `recv[..request_len]` until it is sent (nothing is received
    /// before that); `request_sent` bytes of it are.
    request_len: usize,
    request_sent: usize,
    /// Received bytes not yet used are `recv[recv_start..recv_end]`.
    recv: Box<[u8]>,
    recv_start: usize,
    recv_end: usize,
}

impl HttpSource<PosixNet> {
    /// Makes the buffers (and the TLS settings); no thread, no connection.
    ///
    /// Fails with [`std::io::ErrorKind::InvalidInput`] when `config.ca_pem` holds no usable
    /// certificate.
    pub fn new(config: HttpConfig) -> io::Result<HttpSource> {
        let net = match config.socket_receive_buffer {
            Some(bytes) => PosixNet::with_receive_buffer(bytes),
            None => PosixNet::default(),
        };
        HttpSource::with_net(config, net)
    }
}

impl<N: Net> HttpSource<N> {
    /// [`HttpSource::new`] over another [`Net`].
    pub fn with_net(config: HttpConfig, net: N) -> io::Result<HttpSource<N>> {
        let bad_ca = |e: CaPemError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let roots = match &config.ca_pem {
            Some(pem) => Some(parse_ca_pem(pem).map_err(bad_ca)?),
            None => None,
        };
        #[cfg(feature = "tls")]
        let tls_config = crate::tls::http_config(roots.as_ref()).map_err(bad_ca)?;
        #[cfg(not(feature = "tls"))]
        let _ = roots;
        // The request is written into it too: its line and its Host header each hold at
        // most the URL.
        let request_size = config.max_url.saturating_mul(2).saturating_add(512);
        let recv_size = config
            .receive_buffer
            .max(config.max_header_bytes)
            .max(request_size)
            .max(MIN_RECV);
        Ok(HttpSource {
            net,
            #[cfg(feature = "tls")]
            tls_config,
            url: String::with_capacity(config.max_url),
            offset: 0,
            redirects: 0,
            step: Step::Idle,
            phase_deadline: Duration::ZERO,
            socket: None,
            #[cfg(feature = "tls")]
            tls: None,
            addrs: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ADDRS],
            addr_count: 0,
            addr_next: 0,
            request_len: 0,
            request_sent: 0,
            recv: vec![0u8; recv_size].into_boxed_slice(),
            recv_start: 0,
            recv_end: 0,
            config,
        })
    }

    /// The time `span` from now (saturating: a caller may wait "for ever").
    fn after(&self, span: Duration) -> Duration {
        self.net.now().saturating_add(span)
    }

    /// Closes the connection at once (no TLS close_notify: the server learns from the close).
    fn disconnect(&mut self) {
        self.socket = None;
        #[cfg(feature = "tls")]
        {
            self.tls = None;
        }
        self.recv_start = 0;
        self.recv_end = 0;
    }

    /// Runs the download until `deadline` (on the clock of `net`) or something to report.
    fn drive(&mut self, buf: &mut [u8], deadline: Duration) -> Result<Chunk, DownloadError> {
        loop {
            let flow = match std::mem::replace(&mut self.step, Step::Idle) {
                Step::Idle => return Ok(Chunk::Pending),
                Step::Ended => {
                    self.step = Step::Ended;
                    return Ok(Chunk::End);
                }
                Step::Start => self.start()?,
                Step::Connecting(call) => self.connecting(call)?,
                #[cfg(feature = "tls")]
                Step::Handshake(call) => self.handshake(call)?,
                Step::Send(call) => self.send_request(call)?,
                Step::Head(call) => self.head(call)?,
                Step::Body(body) => self.body(body, buf)?,
            };
            match flow {
                Flow::Again => {}
                Flow::Done(chunk) => return Ok(chunk),
                Flow::Wait(interest) => {
                    let now = self.net.now();
                    if now >= self.phase_deadline {
                        return Err(DownloadError::Timeout);
                    }
                    if now >= deadline {
                        return Ok(Chunk::Pending);
                    }
                    let until = deadline.min(self.phase_deadline);
                    let socket = self
                        .socket
                        .as_mut()
                        .ok_or(DownloadError::BadResponse("no connection"))?;
                    self.net
                        .wait(socket, interest, until)
                        .map_err(|e| DownloadError::Io(e.kind()))?;
                }
            }
        }
    }

    /// Builds the request for `url`, resolves its host and starts connecting.
    fn start(&mut self) -> Result<Flow, DownloadError> {
        let uri: http::Uri = self.url.parse().map_err(|_| DownloadError::Url)?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(DownloadError::Url),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or(DownloadError::Url)?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let call = self.write_request(uri.clone())?;
        #[cfg(feature = "tls")]
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
                .map_err(|_| DownloadError::Url)?
                .to_owned();
            let tls = crate::tls_link::TlsLink::new(self.tls_config.clone(), name)
                .map_err(|_| DownloadError::Tls)?;
            self.tls = Some(tls);
        }
        #[cfg(not(feature = "tls"))]
        if https {
            return Err(DownloadError::Tls);
        }
        // Bounded by the resolver, not by the deadlines (see `crate::net`).
        let host = host.trim_matches(['[', ']']);
        self.addr_count = self
            .net
            .resolve(host, port, &mut self.addrs)
            .map_err(|_| DownloadError::Resolve)?;
        self.addr_next = 0;
        self.phase_deadline = self.after(self.config.connect_timeout);
        self.connect_next()?;
        self.step = Step::Connecting(call);
        Ok(Flow::Again)
    }

    /// Writes the GET for `uri` (with `Range` from a non-zero offset) into `recv`.
    fn write_request(&mut self, uri: http::Uri) -> Result<Call<RecvResponse>, DownloadError> {
        let mut request = http::Request::get(uri)
            .header("user-agent", concat!("ota-sdk/", env!("CARGO_PKG_VERSION")));
        if self.offset > 0 {
            request = request.header("range", format!("bytes={}-", self.offset));
        }
        let request = request.body(()).map_err(|_| DownloadError::Url)?;
        let mut call = Call::new(request)
            .map_err(|_| DownloadError::Url)?
            .proceed();
        self.request_len = call.write(&mut self.recv).map_err(|_| DownloadError::Url)?;
        self.request_sent = 0;
        match call.proceed() {
            Ok(Some(SendRequestResult::RecvResponse(call))) => Ok(call),
            _ => Err(DownloadError::Url),
        }
    }

    /// Starts a connection to the next address; [`DownloadError::Connect`] when none is left.
    fn connect_next(&mut self) -> Result<(), DownloadError> {
        self.socket = None;
        while self.addr_next < self.addr_count {
            let addr = self.addrs[self.addr_next];
            self.addr_next += 1;
            if let Ok(socket) = self.net.connect(&addr) {
                self.socket = Some(socket);
                return Ok(());
            }
        }
        Err(DownloadError::Connect)
    }

    fn connecting(&mut self, call: Call<RecvResponse>) -> Result<Flow, DownloadError> {
        let now = self.net.now();
        let socket = self.socket.as_mut().ok_or(DownloadError::Connect)?;
        if !self
            .net
            .wait(socket, Interest::Write, now)
            .map_err(|e| DownloadError::Io(e.kind()))?
        {
            self.step = Step::Connecting(call);
            return Ok(Flow::Wait(Interest::Write));
        }
        if self.net.finish_connect(socket).is_err() {
            self.connect_next()?;
            self.step = Step::Connecting(call);
            return Ok(Flow::Wait(Interest::Write));
        }
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            self.step = Step::Handshake(call);
            return Ok(Flow::Again);
        }
        self.begin_send(call)
    }

    #[cfg(feature = "tls")]
    fn handshake(&mut self, call: Call<RecvResponse>) -> Result<Flow, DownloadError> {
        use crate::tls_link::{Handshake, HandshakeError};
        let (Some(socket), Some(tls)) = (self.socket.as_mut(), self.tls.as_mut()) else {
            return Err(DownloadError::Tls);
        };
        match tls.handshake(&mut self.net, socket, &self.recv[..self.request_len]) {
            Ok(Handshake::Done) => self.begin_send(call),
            Ok(Handshake::Wait(interest)) => {
                self.step = Step::Handshake(call);
                Ok(Flow::Wait(interest))
            }
            Err(HandshakeError::Io(e)) => Err(DownloadError::Io(e.kind())),
            Err(HandshakeError::Tls(why)) => {
                crate::ota_log!(crate::log::Level::Error, "firmware download: TLS: {why}");
                Err(DownloadError::Tls)
            }
        }
    }

    /// The connection is up: the request goes out, and the head is due within
    /// `response_timeout`.
    fn begin_send(&mut self, call: Call<RecvResponse>) -> Result<Flow, DownloadError> {
        self.phase_deadline = self.after(self.config.response_timeout);
        // With TLS the handshake has encrypted the request already (`send_request` sends it).
        self.step = Step::Send(call);
        Ok(Flow::Again)
    }

    fn send_request(&mut self, call: Call<RecvResponse>) -> Result<Flow, DownloadError> {
        let socket = self
            .socket
            .as_mut()
            .ok_or(DownloadError::BadResponse("no connection"))?;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            self.request_sent = self.request_len;
            if !tls
                .send_request(&mut self.net, socket)
                .map_err(|e| DownloadError::Io(e.kind()))?
            {
                self.step = Step::Send(call);
                return Ok(Flow::Wait(Interest::Write));
            }
        }
        while self.request_sent < self.request_len {
            match self
                .net
                .send(socket, &self.recv[self.request_sent..self.request_len])
            {
                Ok(n) => self.request_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.step = Step::Send(call);
                    return Ok(Flow::Wait(Interest::Write));
                }
                Err(e) => return Err(DownloadError::Io(e.kind())),
            }
        }
        self.recv_start = 0;
        self.recv_end = 0;
        self.step = Step::Head(call);
        Ok(Flow::Again)
    }

    /// Receives plaintext into `buf`: from the socket, or through TLS. `WouldBlock` when
    /// nothing has arrived.
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            return tls.receive(&mut self.net, socket, buf);
        }
        self.net.recv(socket, buf)
    }

    fn head(&mut self, mut call: Call<RecvResponse>) -> Result<Flow, DownloadError> {
        loop {
            if self.recv_end > 0 {
                let input = &self.recv[..self.recv_end];
                match call.try_response(input, false) {
                    Ok((used, Some(response))) => return self.on_head(call, used, response),
                    Ok((0, None)) => {}
                    Ok((used, None)) => {
                        // An informational (1xx) response: dropped, the real one follows.
                        self.recv.copy_within(used..self.recv_end, 0);
                        self.recv_end -= used;
                        continue;
                    }
                    Err(_) => return Err(DownloadError::BadResponse("malformed response head")),
                }
            }
            if self.recv_end >= self.config.max_header_bytes {
                return Err(DownloadError::BadResponse("response head too large"));
            }
            let mut window = std::mem::take(&mut self.recv);
            let r = self.receive(&mut window[self.recv_end..]);
            self.recv = window;
            match r {
                Ok(0) => return Err(DownloadError::Io(io::ErrorKind::UnexpectedEof)),
                Ok(n) => self.recv_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.step = Step::Head(call);
                    return Ok(Flow::Wait(Interest::Read));
                }
                Err(e) => return Err(receive_failure(e)),
            }
        }
    }

    /// A complete response head: a redirect to follow, a failure, or the body's start.
    fn on_head(
        &mut self,
        call: Call<RecvResponse>,
        used: usize,
        response: http::Response<()>,
    ) -> Result<Flow, DownloadError> {
        if used > self.config.max_header_bytes {
            return Err(DownloadError::BadResponse("response head too large"));
        }
        let status = response.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            let next = match location {
                _ if self.redirects >= self.config.max_redirects => Err(DownloadError::Redirects),
                None => Err(DownloadError::BadResponse("redirect without a Location")),
                Some(loc) => self.follow(loc),
            };
            if let Err(e) = next {
                crate::ota_log!(crate::log::Level::Error, "redirect refused: {e}");
                return Err(e);
            }
            self.redirects += 1;
            self.disconnect();
            self.step = Step::Start;
            return Ok(Flow::Again);
        }
        if status != 200 && status != 206 {
            return Err(DownloadError::Status(status));
        }
        let info = open_info(status, response.headers());
        let body = match call.proceed() {
            Some(RecvResponseResult::RecvBody(call)) => match call.body_mode() {
                BodyMode::LengthDelimited(n) => Body::Length(n),
                BodyMode::CloseDelimited => Body::Close,
                BodyMode::Chunked => Body::Chunked(Box::new(call)),
                BodyMode::NoBody => Body::Length(0),
            },
            Some(_) => Body::Length(0),
            None => return Err(DownloadError::BadResponse("malformed response head")),
        };
        self.recv_start = used;
        self.phase_deadline = self.after(self.config.body_timeout);
        self.step = Step::Body(body);
        Ok(Flow::Done(Chunk::Opened(info)))
    }

    /// Makes the redirect target the URL to request next (see [`resolve_redirect`]). The
    /// current URL is copied into the receive buffer to be resolved against: nothing else is
    /// in use there once the head is parsed, as the connection closes now. On failure `url`
    /// holds nothing useful (the download ends; the next `open` sets it).
    fn follow(&mut self, location: &str) -> Result<(), DownloadError> {
        let len = self.url.len();
        self.recv[..len].copy_from_slice(self.url.as_bytes());
        let current = std::str::from_utf8(&self.recv[..len]).map_err(|_| DownloadError::Url)?;
        resolve_redirect(
            current,
            location,
            self.config.allow_plain_http,
            self.config.max_url,
            &mut self.url,
        )
    }

    /// Moves what was received with the head into `buf`, at most `limit` bytes.
    fn take_buffered(&mut self, buf: &mut [u8], limit: u64) -> usize {
        let n = (self.recv_end - self.recv_start)
            .min(buf.len())
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.recv[self.recv_start..self.recv_start + n]);
        self.recv_start += n;
        n
    }

    fn body(&mut self, body: Body, buf: &mut [u8]) -> Result<Flow, DownloadError> {
        if buf.is_empty() {
            self.step = Step::Body(body);
            return Ok(Flow::Done(Chunk::Data(0)));
        }
        match body {
            Body::Length(0) => self.end(),
            Body::Length(left) => {
                let mut n = self.take_buffered(buf, left);
                if n == 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    match self.receive(&mut buf[..want]) {
                        Ok(0) => return Err(DownloadError::Truncated),
                        Ok(got) => n = got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.step = Step::Body(Body::Length(left));
                            return Ok(Flow::Wait(Interest::Read));
                        }
                        Err(e) => return Err(receive_failure(e)),
                    }
                }
                self.step = Step::Body(Body::Length(left - n as u64));
                Ok(Flow::Done(Chunk::Data(n)))
            }
            Body::Close => {
                let mut n = self.take_buffered(buf, u64::MAX);
                if n == 0 {
                    match self.receive(buf) {
                        // A TLS server that closes without close_notify ends the body too
                        // (the engine checks the size and the digest).
                        Ok(0) => return self.end(),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return self.end(),
                        Ok(got) => n = got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.step = Step::Body(Body::Close);
                            return Ok(Flow::Wait(Interest::Read));
                        }
                        Err(e) => return Err(receive_failure(e)),
                    }
                }
                self.step = Step::Body(Body::Close);
                Ok(Flow::Done(Chunk::Data(n)))
            }
            Body::Chunked(call) => self.chunked(call, buf),
        }
    }

    /// Decodes chunked data from the receive buffer into `buf`, receiving more as needed.
    fn chunked(
        &mut self,
        mut call: Box<Call<RecvBody>>,
        buf: &mut [u8],
    ) -> Result<Flow, DownloadError> {
        loop {
            if call.can_proceed() {
                return self.end();
            }
            if self.recv_start < self.recv_end {
                let (used, n) = call
                    .read(&self.recv[self.recv_start..self.recv_end], buf)
                    .map_err(|_| DownloadError::BadResponse("malformed chunked body"))?;
                self.recv_start += used;
                if n > 0 {
                    self.step = Step::Body(Body::Chunked(call));
                    return Ok(Flow::Done(Chunk::Data(n)));
                }
                if used > 0 {
                    continue;
                }
            }
            // Room for more: what is left (a partial chunk-size line) moves to the front.
            self.recv.copy_within(self.recv_start..self.recv_end, 0);
            self.recv_end -= self.recv_start;
            self.recv_start = 0;
            if self.recv_end == self.recv.len() {
                return Err(DownloadError::BadResponse("malformed chunked body"));
            }
            let mut window = std::mem::take(&mut self.recv);
            let r = self.receive(&mut window[self.recv_end..]);
            self.recv = window;
            match r {
                Ok(0) => return Err(DownloadError::Truncated),
                Ok(n) => self.recv_end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.step = Step::Body(Body::Chunked(call));
                    return Ok(Flow::Wait(Interest::Read));
                }
                Err(e) => return Err(receive_failure(e)),
            }
        }
    }

    /// The body is complete: the connection closes now (it is never reused).
    fn end(&mut self) -> Result<Flow, DownloadError> {
        self.disconnect();
        self.step = Step::Ended;
        Ok(Flow::Done(Chunk::End))
    }
}

impl<N: Net> FirmwareSource for HttpSource<N> {
    fn open(&mut self, url: &str, offset: u64) -> Result<(), DownloadError> {
        self.close();
        if !valid_port(url) || url.len() > self.config.max_url {
            return Err(DownloadError::Url);
        }
        match Scheme::of(url) {
            Some(Scheme::Https) if cfg!(feature = "tls") => {}
            Some(Scheme::Https) => return Err(DownloadError::Tls),
            // The engine says once per upgrade what protects such an image.
            Some(Scheme::Http) if self.config.allow_plain_http => {}
            Some(Scheme::Http) => return Err(DownloadError::PlainHttp),
            None => return Err(DownloadError::Url),
        }
        self.url.clear();
        self.url.push_str(url);
        self.offset = offset;
        self.redirects = 0;
        self.step = Step::Start;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, DownloadError> {
        let deadline = self.after(timeout);
        let r = self.drive(buf, deadline);
        if r.is_err() {
            self.disconnect();
            self.step = Step::Idle;
        }
        r
    }

    fn close(&mut self) {
        self.disconnect();
        self.step = Step::Idle;
    }
}

/// A receive failure of the body or the head (the TLS handshake, if any, is done).
fn receive_failure(e: io::Error) -> DownloadError {
    if is_tls_io_error(&e) {
        return DownloadError::TlsBroken;
    }
    match e.kind() {
        io::ErrorKind::TimedOut => DownloadError::Timeout,
        io::ErrorKind::UnexpectedEof => DownloadError::Truncated,
        k => DownloadError::Io(k),
    }
}

fn open_info(status: u16, headers: &http::HeaderMap) -> OpenInfo {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
    let (range_start, range_total) = header("content-range")
        .and_then(parse_content_range)
        .unzip();
    OpenInfo {
        status,
        content_length,
        range_start,
        range_total,
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    (start <= end && end < total).then_some((start, total))
}

/// Writes to `out` the URL a redirect from `current` to `location` (absolute, or relative to
/// `current`) leads to, if its scheme is as strong as the current one (http -> https is fine,
/// https -> http is not) and plain http is allowed where it is used. Other schemes and
/// scheme-relative locations are refused, and so is a result longer than `max_url`
/// ([`DownloadError::Url`]).
fn resolve_redirect(
    current: &str,
    location: &str,
    allow_plain_http: bool,
    max_url: usize,
    out: &mut String,
) -> Result<(), DownloadError> {
    let location = location.trim();
    let from = Scheme::of(current).ok_or(DownloadError::Url)?;
    out.clear();
    // Within `out`'s capacity (max_url): a longer target is refused, never grown into.
    let mut push = |s: &str| {
        if out.len() + s.len() > max_url {
            return Err(DownloadError::Url);
        }
        out.push_str(s);
        Ok(())
    };
    if let Some(to) = Scheme::of(location) {
        if to < from || (to == Scheme::Http && !allow_plain_http) {
            return Err(DownloadError::RedirectScheme);
        }
        push(location)?;
    } else if location.starts_with("//")
        || location[..location.find(['/', '?', '#']).unwrap_or(location.len())].contains(':')
    {
        // Another scheme (ftp:, file:, data:), or scheme-relative: not followed.
        return Err(DownloadError::RedirectScheme);
    } else {
        let after_scheme = current.find("://").map_or(0, |i| i + 3);
        let path_start = current[after_scheme..]
            .find('/')
            .map_or(current.len(), |i| after_scheme + i);
        if location.starts_with('/') {
            // Absolute path: same origin.
            push(&current[..path_start])?;
        } else {
            // Relative to the current path's directory (query and fragment dropped).
            let path_end = current[path_start..]
                .find(['?', '#'])
                .map_or(current.len(), |i| path_start + i);
            let dir_end = current[path_start..path_end]
                .rfind('/')
                .map_or(path_start, |i| path_start + i);
            push(&current[..dir_end])?;
            push("/")?;
        }
        push(location)?;
    }
    Ok(())
}

/// Whether the URL's port, if it names one, is 1..=65535 (a bad port is a bad URL, not a
/// connection failure worth retrying).
fn valid_port(url: &str) -> bool {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return true;
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    // After the user info and an IPv6 literal's brackets.
    let host_port = &authority[authority.rfind('@').map_or(0, |i| i + 1)..];
    let after_host = &host_port[host_port.rfind(']').map_or(0, |i| i + 1)..];
    match after_host.rfind(':') {
        None => true,
        Some(i) => {
            let port = &after_host[i + 1..];
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
        }
    }
}

/// The download schemes, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scheme {
    Http,
    Https,
}

/// Whether `url` is a plain `http://` URL (any case), as the source reads schemes.
pub fn is_plain_http(url: &str) -> bool {
    Scheme::of(url) == Some(Scheme::Http)
}

impl Scheme {
    /// The scheme `url` starts with (any case); `None` for any other or none.
    fn of(url: &str) -> Option<Scheme> {
        let prefix = |p: &str| {
            url.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if prefix("https://") {
            Some(Scheme::Https)
        } else if prefix("http://") {
            Some(Scheme::Http)
        } else {
            None
        }
    }
}

/// Firmware served from memory: for tests and for callers that already hold the image.
pub struct MemorySource {
    image: &'static [u8],
    pos: Option<usize>,
    opened: bool,
    /// Largest chunk handed out per read (to exercise partial reads).
    pub chunk: usize,
}

impl MemorySource {
    /// Serves `image` whole in each read (set [`chunk`](Self::chunk) for smaller reads).
    pub fn new(image: &'static [u8]) -> MemorySource {
        MemorySource {
            image,
            pos: None,
            opened: false,
            chunk: usize::MAX,
        }
    }
}

impl FirmwareSource for MemorySource {
    fn open(&mut self, _url: &str, offset: u64) -> Result<(), DownloadError> {
        let offset = usize::try_from(offset).map_err(|_| DownloadError::Status(416))?;
        if offset > self.image.len() {
            return Err(DownloadError::Status(416));
        }
        self.pos = Some(offset);
        self.opened = false;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], _timeout: Duration) -> Result<Chunk, DownloadError> {
        let pos = self.pos.ok_or(DownloadError::BadResponse("not open"))?;
        let total = self.image.len() as u64;
        if !self.opened {
            self.opened = true;
            let partial = pos > 0;
            return Ok(Chunk::Opened(OpenInfo {
                status: if partial { 206 } else { 200 },
                content_length: Some(total - pos as u64),
                range_start: partial.then_some(pos as u64),
                range_total: partial.then_some(total),
            }));
        }
        let n = buf.len().min(self.chunk).min(self.image.len() - pos);
        if n == 0 {
            return Ok(Chunk::End);
        }
        buf[..n].copy_from_slice(&self.image[pos..pos + n]);
        self.pos = Some(pos + n);
        Ok(Chunk::Data(n))
    }

    fn close(&mut self) {
        self.pos = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_or_strengthen_the_scheme() {
        let go = |from: &str, to: &str, plain: bool| {
            let mut out = String::new();
            resolve_redirect(from, to, plain, 2048, &mut out).map(|()| out)
        };
        let base = "https://h.test:8443/fw/v2/image.bin?sig=1";
        assert_eq!(
            go(base, "https://cdn.test/x.bin", true).unwrap(),
            "https://cdn.test/x.bin"
        );
        assert_eq!(
            go(base, "/other/y.bin", true).unwrap(),
            "https://h.test:8443/other/y.bin"
        );
        assert_eq!(
            go(base, "y.bin?s=2", true).unwrap(),
            "https://h.test:8443/fw/v2/y.bin?s=2"
        );
        assert_eq!(
            go("http://h.test", "y.bin", true).unwrap(),
            "http://h.test/y.bin"
        );
        assert_eq!(
            go("http://h.test/a", "HTTPS://h.test/b", false).unwrap(),
            "HTTPS://h.test/b"
        );
        assert_eq!(
            go("http://h.test/a", "http://h.test/b", true).unwrap(),
            "http://h.test/b"
        );
        for bad in [
            "http://h.test/b",
            "ftp://h.test/b",
            "file:///etc/passwd",
            "//h.test/b",
            "data:,x",
        ] {
            assert_eq!(
                go(base, bad, true),
                Err(DownloadError::RedirectScheme),
                "{bad}"
            );
        }
        assert_eq!(
            go("http://h.test/a", "http://h.test/b", false),
            Err(DownloadError::RedirectScheme)
        );
    }

    #[test]
    fn ports_outside_1_to_65535_are_bad_urls() {
        for good in [
            "http://h.test/a",
            "http://h.test:80/a",
            "https://h.test:65535",
            "http://[::1]:8080/x",
            "http://[::1]/x",
            "http://u:p@h.test:1/x?q=a:b",
        ] {
            assert!(valid_port(good), "{good}");
        }
        for bad in [
            "http://h.test:99999/a",
            "http://h.test:0/",
            "http://h.test:/a",
            "http://h.test:8x/a",
            "http://[::1]:70000/x",
        ] {
            assert!(!valid_port(bad), "{bad}");
        }
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, 200)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("bytes 5-4/200"), None);
        assert_eq!(parse_content_range("bytes 0-200/200"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
