//! Firmware download over HTTP(S) with `Range`, behind the [`FirmwareSource`] trait so the engine
//! can also run on in-memory transports.
//!
//! [`HttpSource`] runs ureq on a worker thread started at init and hands bytes over in blocks
//! allocated at init. That is what lets `FetchYield` honour its timeout (ureq has no per-read
//! timeout), keeps the caller's thread free of blocking socket reads, and overlaps the network
//! with the caller's digest. The worker reads straight into a free block and the caller copies
//! out of a full one, so each byte is copied once on each side; the lock is taken once per block,
//! not per read, and a side is woken only when it is waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::FixedStr;
pub use crate::tls::{check_ca_pem, CaPemError};
use crate::tls::{is_tls_io_error, parse_ca_pem, CaRoots};

/// Why a download failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("could not connect to the firmware server")]
    Connect,
    #[error("host name lookup failed")]
    Resolve,
    #[error("timed out")]
    Timeout,
    #[error("TLS failure")]
    Tls,
    #[error("network error: {0}")]
    Io(std::io::ErrorKind),
    #[error("malformed HTTP response: {0}")]
    BadResponse(&'static str),
    #[error("invalid firmware URL")]
    Url,
    #[error("too many redirects")]
    Redirects,
    #[error("plain http:// download refused (HTTPS required by the configuration)")]
    PlainHttp,
    #[error("redirect to a weaker or unknown scheme refused")]
    RedirectScheme,
    #[error("server sent more bytes than the announced size")]
    Oversize,
    #[error("connection closed before the announced size was received")]
    Truncated,
    #[error("the download was restarted from byte 0 by the server")]
    Restarted,
    #[error("a different upgrade replaced this download")]
    Superseded,
    #[error("the download was ended by a failure report")]
    Abandoned,
}

impl FetchError {
    /// Whether reconnecting (from the current offset) may help.
    pub fn is_transient(self) -> bool {
        match self {
            FetchError::Status(code) => matches!(code, 408 | 429 | 500 | 502 | 503 | 504),
            FetchError::Connect
            | FetchError::Resolve
            | FetchError::Timeout
            | FetchError::Io(_)
            | FetchError::Truncated => true,
            FetchError::Tls
            | FetchError::BadResponse(_)
            | FetchError::Url
            | FetchError::Redirects
            | FetchError::PlainHttp
            | FetchError::RedirectScheme
            | FetchError::Oversize
            | FetchError::Restarted
            | FetchError::Superseded
            | FetchError::Abandoned => false,
        }
    }
}

/// What the server answered to a download request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenInfo {
    /// HTTP status (200 or 206; other statuses come back as [`FetchError::Status`]).
    pub status: u16,
    /// `Content-Length`, when the server sent one.
    pub content_length: Option<u64>,
    /// First byte and total size from `Content-Range` (206 answers).
    pub range_start: Option<u64>,
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
    fn open(&mut self, url: &str, offset: u64) -> Result<(), FetchError>;
    /// Waits at most `timeout` for the next step.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, FetchError>;
    /// Abandons the download in progress, if any.
    fn close(&mut self);
}

/// Tunables of [`HttpSource`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bytes buffered between the network and the caller (in blocks of at most 32 KiB; at
    /// least two).
    pub ring_size: usize,
    pub connect_timeout: Duration,
    /// Time allowed for the response headers.
    pub response_timeout: Duration,
    /// Longest a whole body may take (a hard stop for a stalled server).
    pub body_timeout: Duration,
    /// Redirects followed per request; one more fails with [`FetchError::Redirects`]. A
    /// redirect keeps the scheme or goes from http to https, never from https to http or to
    /// another scheme ([`FetchError::RedirectScheme`]).
    pub max_redirects: u32,
    /// Largest URL accepted (also for redirect targets).
    pub max_url: usize,
    /// Largest response head (status line and headers); a larger one fails the request.
    pub max_header_bytes: usize,
    /// Whether plain `http://` URLs may be downloaded (logged as a warning). The platforms'
    /// documents use them, so this is allowed by default; false refuses them with
    /// [`FetchError::PlainHttp`] (and refuses redirects to them).
    pub allow_plain_http: bool,
    /// CA certificate(s) in PEM that HTTPS servers must chain to, replacing the bundled web
    /// roots; `None` trusts the web roots. Chain and host name are verified either way.
    pub ca_pem: Option<Arc<[u8]>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ring_size: 128 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(3600),
            max_redirects: 5,
            max_url: 2048,
            max_header_bytes: 16 * 1024,
            allow_plain_http: true,
            ca_pem: None,
        }
    }
}

/// Largest block handed from the worker to the caller.
const BLOCK_SIZE: usize = 32 * 1024;

/// Downloaded bytes on their way from the worker to the caller. Blocks are made at init and
/// only ever moved between the worker, the queue and the caller, so no download allocates.
struct Block {
    data: Box<[u8]>,
    len: usize,
}

impl Block {
    /// `count` blocks of `size` bytes holding `total` bytes between them (at least two).
    fn pool(total: usize) -> Vec<Block> {
        let size = (total / 2).clamp(1, BLOCK_SIZE);
        let count = total.div_ceil(size).max(2);
        (0..count)
            .map(|_| Block {
                data: vec![0u8; size].into_boxed_slice(),
                len: 0,
            })
            .collect()
    }
}

#[derive(Debug)]
enum Command {
    Idle,
    Open { offset: u64 },
}

struct Shared {
    /// Bumped by every open/close; the worker drops work whose generation is stale.
    generation: u64,
    command: Command,
    url: FixedStr,
    /// Blocks of the current generation holding bytes, oldest first (never grows past the
    /// number of blocks, so pushing never allocates).
    full: VecDeque<Block>,
    /// Empty blocks for the worker.
    free: Vec<Block>,
    /// The caller waits in `read` for something to arrive (only then is it woken).
    consumer_waiting: bool,
    /// The worker waits for a free block (only then is it woken).
    worker_waiting: bool,
    opened: Option<OpenInfo>,
    error: Option<FetchError>,
    ended: bool,
    quit: bool,
    /// The current worker's epoch; a worker of an older epoch exits when it wakes.
    epoch: u64,
    /// The current worker waits for a command (it is not inside a download).
    worker_idle: bool,
    /// The generation of the last command a worker took: once it is the current one, the
    /// worker is on the current download (free for it, whatever `worker_idle` says).
    taken: u64,
    /// The offset of the current download's request (re-issued to a replacement worker).
    open_offset: u64,
}

struct Channel {
    shared: Mutex<Shared>,
    /// Signalled when data, headers, an error or the end arrive.
    to_consumer: Condvar,
    /// Signalled when a command arrives or a block is freed.
    to_worker: Condvar,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    /// Empties every queued block back into the free list.
    fn recycle_full(&mut self) {
        while let Some(mut b) = self.full.pop_front() {
            b.len = 0;
            self.free.push(b);
        }
    }

    fn give_back(&mut self, mut b: Block) {
        b.len = 0;
        self.free.push(b);
    }
}

/// HTTP(S) download through ureq on a worker thread.
pub struct HttpSource {
    channel: Arc<Channel>,
    /// The generation of the current download.
    generation: u64,
    /// The block being copied out to the caller, and how far.
    current: Option<Block>,
    pos: usize,
    /// What a replacement worker is built from.
    config: HttpConfig,
    roots: Option<CaRoots>,
}

impl HttpSource {
    /// Allocates the blocks and starts the worker thread.
    ///
    /// Fails with [`std::io::ErrorKind::InvalidInput`] when `config.ca_pem` holds no usable
    /// certificate, otherwise only when the thread cannot be started.
    pub fn new(config: HttpConfig) -> std::io::Result<HttpSource> {
        let roots = match &config.ca_pem {
            Some(pem) => Some(parse_ca_pem(pem).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?),
            None => None,
        };
        let blocks = Block::pool(config.ring_size);
        let channel = Arc::new(Channel {
            shared: Mutex::new(Shared {
                generation: 0,
                command: Command::Idle,
                url: FixedStr::with_capacity(config.max_url),
                full: VecDeque::with_capacity(blocks.len()),
                free: blocks,
                consumer_waiting: false,
                worker_waiting: false,
                opened: None,
                error: None,
                ended: false,
                quit: false,
                epoch: 0,
                // Not inside a download: a command given before the worker starts waits for it.
                worker_idle: true,
                taken: 0,
                open_offset: 0,
            }),
            to_consumer: Condvar::new(),
            to_worker: Condvar::new(),
        });
        let source = HttpSource {
            channel,
            generation: 0,
            current: None,
            pos: 0,
            config,
            roots,
        };
        source.spawn_worker(0)?;
        Ok(source)
    }

    fn spawn_worker(&self, epoch: u64) -> std::io::Result<()> {
        let worker = Worker::new(
            self.channel.clone(),
            &self.config,
            self.roots.clone(),
            epoch,
        );
        std::thread::Builder::new()
            .name("ota-fetch".into())
            .spawn(move || worker.run())?;
        Ok(())
    }

    /// A worker still inside an abandoned download (a stalled read) cannot take the new
    /// command: after a short grace period it is left to exit on its own and a fresh worker
    /// takes over. Only stalls pay for this (a thread start, which allocates).
    fn ensure_worker_free(&self) -> Result<(), FetchError> {
        let grace = Instant::now() + Duration::from_millis(200);
        let mut s = self.channel.lock();
        while !s.worker_idle && s.taken != s.generation {
            let now = Instant::now();
            if now >= grace {
                s.epoch += 1;
                let epoch = s.epoch;
                // The stuck worker may have taken the command already: give it again.
                s.command = Command::Open {
                    offset: s.open_offset,
                };
                s.worker_idle = true;
                drop(s);
                self.channel.to_worker.notify_all();
                crate::ota_log!(
                    crate::log::Level::Warning,
                    "download worker is stuck in a stalled read; starting a new one"
                );
                return self
                    .spawn_worker(epoch)
                    .map_err(|e| FetchError::Io(e.kind()));
            }
            s = self
                .channel
                .to_consumer
                .wait_timeout(s, grace - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        // The worker may sit in a blocking read; it notices `quit` when that returns.
        self.channel.lock().quit = true;
        self.channel.to_worker.notify_all();
    }
}

impl HttpSource {
    /// Hands the caller's block back to the worker (used up, or its download abandoned).
    fn drop_current(current: &mut Option<Block>, pos: &mut usize, s: &mut Shared) {
        if let Some(b) = current.take() {
            s.give_back(b);
        }
        *pos = 0;
    }

    /// Swaps the used-up block for the next queued one of this download (the used one goes
    /// back to the worker, which is woken if it waits for it); false when none is queued.
    fn take_queued(&mut self) -> bool {
        let mut s = self.channel.lock();
        if s.generation != self.generation || s.opened.is_some() {
            return false;
        }
        let Some(next) = s.full.pop_front() else {
            return false;
        };
        Self::drop_current(&mut self.current, &mut self.pos, &mut s);
        self.current = Some(next);
        let wake = std::mem::take(&mut s.worker_waiting);
        drop(s);
        if wake {
            self.channel.to_worker.notify_one();
        }
        true
    }

    /// Copies from the caller's block; 0 when it holds nothing more.
    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let Some(b) = &self.current else {
            return 0;
        };
        let n = buf.len().min(b.len - self.pos);
        buf[..n].copy_from_slice(&b.data[self.pos..self.pos + n]);
        self.pos += n;
        n
    }
}

impl FirmwareSource for HttpSource {
    fn open(&mut self, url: &str, offset: u64) -> Result<(), FetchError> {
        if !valid_port(url) {
            return Err(FetchError::Url);
        }
        match Scheme::of(url) {
            Some(Scheme::Https) if cfg!(feature = "tls") => {}
            Some(Scheme::Https) => return Err(FetchError::Tls),
            Some(Scheme::Http) if self.config.allow_plain_http => crate::ota_log!(
                crate::log::Level::Warning,
                "firmware download over plain http:// (not encrypted, not authenticated)"
            ),
            Some(Scheme::Http) => return Err(FetchError::PlainHttp),
            None => return Err(FetchError::Url),
        }
        let mut s = self.channel.lock();
        s.url.set(url).map_err(|_| FetchError::Url)?;
        s.generation += 1;
        self.generation = s.generation;
        s.command = Command::Open { offset };
        s.open_offset = offset;
        Self::drop_current(&mut self.current, &mut self.pos, &mut s);
        s.recycle_full();
        s.opened = None;
        s.error = None;
        s.ended = false;
        let busy = !s.worker_idle;
        drop(s);
        self.channel.to_worker.notify_all();
        if busy {
            self.ensure_worker_free()?;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, FetchError> {
        // The common case takes no lock: the rest of the block already handed over, then what
        // is queued behind it (one short lock per block; the copies happen outside the lock).
        let mut n = self.copy_out(buf);
        while n > 0 && n < buf.len() && self.take_queued() {
            n += self.copy_out(&mut buf[n..]);
        }
        if n > 0 {
            return Ok(Chunk::Data(n));
        }
        let mut deadline = None;
        let mut s = self.channel.lock();
        loop {
            if s.generation == self.generation {
                if let Some(info) = s.opened.take() {
                    return Ok(Chunk::Opened(info));
                }
                if !s.full.is_empty() {
                    drop(s);
                    let mut n = 0;
                    while n < buf.len() && self.take_queued() {
                        n += self.copy_out(&mut buf[n..]);
                    }
                    return Ok(Chunk::Data(n));
                }
                if let Some(e) = s.error.take() {
                    return Err(e);
                }
                if s.ended {
                    return Ok(Chunk::End);
                }
            }
            let now = Instant::now();
            let until = *deadline.get_or_insert(now + timeout);
            if now >= until {
                return Ok(Chunk::Pending);
            }
            s.consumer_waiting = true;
            s = self
                .channel
                .to_consumer
                .wait_timeout(s, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.consumer_waiting = false;
        }
    }

    fn close(&mut self) {
        let mut s = self.channel.lock();
        s.generation += 1;
        self.generation = s.generation;
        s.command = Command::Idle;
        Self::drop_current(&mut self.current, &mut self.pos, &mut s);
        s.recycle_full();
        s.opened = None;
        s.error = None;
        s.ended = false;
        drop(s);
        self.channel.to_worker.notify_all();
    }
}

struct Worker {
    channel: Arc<Channel>,
    epoch: u64,
    agent: ureq::Agent,
    url: String,
    /// Where a redirect leads (built here, then swapped into `url`).
    next_url: String,
    max_redirects: u32,
    max_url: usize,
    allow_plain_http: bool,
}

impl Worker {
    fn new(
        channel: Arc<Channel>,
        config: &HttpConfig,
        roots: Option<CaRoots>,
        epoch: u64,
    ) -> Worker {
        let builder = ureq::Agent::config_builder();
        #[cfg(feature = "tls")]
        let builder = builder.tls_config(crate::tls::http_config(roots.as_ref()));
        #[cfg(not(feature = "tls"))]
        let _ = roots;
        let agent = builder
            .http_status_as_error(false)
            // Redirects are followed here, where their scheme and number are checked.
            .max_redirects(0)
            .max_response_header_size(config.max_header_bytes)
            // ureq's 128 KiB defaults are sized for servers; a response head (at most
            // `max_header_bytes`) and the body's reads fit in 32 KiB, a request head (the URL
            // and a few headers) in the URL limit plus 4 KiB.
            .input_buffer_size((config.max_header_bytes + 16 * 1024).max(32 * 1024))
            .output_buffer_size(config.max_url + 4096)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(config.response_timeout))
            .timeout_recv_body(Some(config.body_timeout))
            .build()
            .new_agent();
        Worker {
            channel,
            epoch,
            agent,
            url: String::with_capacity(config.max_url),
            next_url: String::with_capacity(config.max_url),
            max_redirects: config.max_redirects,
            max_url: config.max_url,
            allow_plain_http: config.allow_plain_http,
        }
    }

    fn run(mut self) {
        loop {
            let (generation, offset) = {
                let mut s = self.channel.lock();
                loop {
                    if s.quit || s.epoch != self.epoch {
                        return;
                    }
                    if let Command::Open { offset } = s.command {
                        s.command = Command::Idle;
                        s.worker_idle = false;
                        s.taken = s.generation;
                        self.channel.to_consumer.notify_all();
                        self.url.clear();
                        self.url.push_str(s.url.as_str());
                        break (s.generation, offset);
                    }
                    if !s.worker_idle {
                        s.worker_idle = true;
                        self.channel.to_consumer.notify_all();
                    }
                    s = self
                        .channel
                        .to_worker
                        .wait(s)
                        .unwrap_or_else(|p| p.into_inner());
                }
            };
            self.download(generation, offset);
        }
    }

    /// Publishes a result for `generation` unless it went stale; false when stale.
    fn publish(&self, generation: u64, f: impl FnOnce(&mut Shared)) -> bool {
        let mut s = self.channel.lock();
        if s.generation != generation || s.quit || s.epoch != self.epoch {
            return false;
        }
        f(&mut s);
        drop(s);
        self.channel.to_consumer.notify_all();
        true
    }

    fn download(&mut self, generation: u64, offset: u64) {
        let mut redirects = 0;
        let response = loop {
            let mut request = self.agent.get(&self.url);
            if offset > 0 {
                request = request.header("Range", format!("bytes={offset}-"));
            }
            let response = match request.call() {
                Ok(r) => r,
                Err(e) => {
                    self.publish(generation, |s| s.error = Some(map_ureq_error(&e)));
                    return;
                }
            };
            let status = response.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                break response;
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            let next = match location {
                _ if redirects >= self.max_redirects => Err(FetchError::Redirects),
                None => Err(FetchError::BadResponse("redirect without a Location")),
                Some(loc) => self.follow(loc),
            };
            if let Err(e) = next {
                crate::ota_log!(crate::log::Level::Error, "redirect refused: {e}");
                self.publish(generation, |s| s.error = Some(e));
                return;
            }
            redirects += 1;
        };
        let status = response.status().as_u16();
        if status != 200 && status != 206 {
            self.publish(generation, |s| s.error = Some(FetchError::Status(status)));
            return;
        }
        let info = open_info(status, response.headers());
        if !self.publish(generation, |s| s.opened = Some(info)) {
            return;
        }
        let mut reader = response.into_body().into_reader();
        self.pump(generation, &mut reader);
    }

    /// Makes the redirect target the URL to request next (see [`resolve_redirect`]).
    fn follow(&mut self, location: &str) -> Result<(), FetchError> {
        resolve_redirect(
            &self.url,
            location,
            self.allow_plain_http,
            &mut self.next_url,
        )?;
        if self.next_url.len() > self.max_url {
            return Err(FetchError::Url);
        }
        std::mem::swap(&mut self.url, &mut self.next_url);
        Ok(())
    }

    /// Whether this worker's download is still wanted.
    fn current(&self, s: &Shared, generation: u64) -> bool {
        s.generation == generation && !s.quit && s.epoch == self.epoch
    }

    /// Moves the body into blocks until it ends, fails or goes stale. The worker holds one
    /// block while it reads (outside the lock) and hands it over after each read.
    fn pump(&mut self, generation: u64, reader: &mut impl std::io::Read) {
        let mut block: Option<Block> = None;
        loop {
            let mut b = match block.take() {
                Some(b) => b,
                None => {
                    let mut s = self.channel.lock();
                    loop {
                        if !self.current(&s, generation) {
                            return;
                        }
                        if let Some(b) = s.free.pop() {
                            break b;
                        }
                        s.worker_waiting = true;
                        s = self
                            .channel
                            .to_worker
                            .wait(s)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            };
            let result = reader.read(&mut b.data[b.len..]);
            let mut s = self.channel.lock();
            if !self.current(&s, generation) {
                s.give_back(b);
                return;
            }
            match result {
                Ok(0) => {
                    if b.len > 0 {
                        s.full.push_back(b);
                    } else {
                        s.give_back(b);
                    }
                    s.ended = true;
                }
                Ok(n) => {
                    // Handed over at once, full or not: bytes kept back while the next read
                    // blocks (a stalled server) would reach the caller late, and a resume after
                    // the stall would start before them.
                    b.len += n;
                    s.full.push_back(b);
                    if !s.consumer_waiting {
                        continue;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    block = Some(b);
                    continue;
                }
                Err(e) => {
                    // Bytes read before the failure still count (the caller resumes after them).
                    if b.len > 0 {
                        s.full.push_back(b);
                    } else {
                        s.give_back(b);
                    }
                    // ureq reports its own failures (e.g. the body timeout) inside io::Error.
                    let inner = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>());
                    s.error = Some(match e.kind() {
                        _ if inner.is_some() => inner.map_or(FetchError::Timeout, map_ureq_error),
                        _ if is_tls_io_error(&e) => FetchError::Tls,
                        std::io::ErrorKind::TimedOut => FetchError::Timeout,
                        std::io::ErrorKind::UnexpectedEof => FetchError::Truncated,
                        k => FetchError::Io(k),
                    });
                }
            }
            let stop = s.ended || s.error.is_some();
            drop(s);
            self.channel.to_consumer.notify_all();
            if stop {
                return;
            }
        }
    }
}

fn open_info(status: u16, headers: &ureq::http::HeaderMap) -> OpenInfo {
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
/// scheme-relative locations are refused.
fn resolve_redirect(
    current: &str,
    location: &str,
    allow_plain_http: bool,
    out: &mut String,
) -> Result<(), FetchError> {
    let location = location.trim();
    let from = Scheme::of(current).ok_or(FetchError::Url)?;
    out.clear();
    if let Some(to) = Scheme::of(location) {
        if to < from || (to == Scheme::Http && !allow_plain_http) {
            return Err(FetchError::RedirectScheme);
        }
        out.push_str(location);
    } else if location.starts_with("//")
        || location[..location.find(['/', '?', '#']).unwrap_or(location.len())].contains(':')
    {
        // Another scheme (ftp:, file:, data:), or scheme-relative: not followed.
        return Err(FetchError::RedirectScheme);
    } else {
        let after_scheme = current.find("://").map_or(0, |i| i + 3);
        let path_start = current[after_scheme..]
            .find('/')
            .map_or(current.len(), |i| after_scheme + i);
        if location.starts_with('/') {
            // Absolute path: same origin.
            out.push_str(&current[..path_start]);
        } else {
            // Relative to the current path's directory (query and fragment dropped).
            let path_end = current[path_start..]
                .find(['?', '#'])
                .map_or(current.len(), |i| path_start + i);
            let dir_end = current[path_start..path_end]
                .rfind('/')
                .map_or(path_start, |i| path_start + i);
            out.push_str(&current[..dir_end]);
            out.push('/');
        }
        out.push_str(location);
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

fn map_ureq_error(e: &ureq::Error) -> FetchError {
    use ureq::Error as E;
    match e {
        E::StatusCode(code) => FetchError::Status(*code),
        E::BadUri(_) | E::Http(_) => FetchError::Url,
        E::Timeout(_) => FetchError::Timeout,
        E::HostNotFound => FetchError::Resolve,
        E::Io(io) if is_tls_io_error(io) => FetchError::Tls,
        E::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => FetchError::Connect,
            std::io::ErrorKind::TimedOut => FetchError::Timeout,
            k => FetchError::Io(k),
        },
        E::ConnectionFailed => FetchError::Connect,
        E::TooManyRedirects | E::RedirectFailed => FetchError::Redirects,
        #[cfg(feature = "tls")]
        E::Rustls(_) => FetchError::Tls,
        E::Tls(_) => FetchError::Tls,
        E::Protocol(_) => FetchError::BadResponse("HTTP protocol error"),
        E::LargeResponseHeader(..) => FetchError::BadResponse("response head too large"),
        _ => FetchError::BadResponse("unexpected HTTP client error"),
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
    fn open(&mut self, _url: &str, offset: u64) -> Result<(), FetchError> {
        let offset = usize::try_from(offset).map_err(|_| FetchError::Status(416))?;
        if offset > self.image.len() {
            return Err(FetchError::Status(416));
        }
        self.pos = Some(offset);
        self.opened = false;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], _timeout: Duration) -> Result<Chunk, FetchError> {
        let pos = self.pos.ok_or(FetchError::BadResponse("not open"))?;
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
            resolve_redirect(from, to, plain, &mut out).map(|()| out)
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
                Err(FetchError::RedirectScheme),
                "{bad}"
            );
        }
        assert_eq!(
            go("http://h.test/a", "http://h.test/b", false),
            Err(FetchError::RedirectScheme)
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
    fn block_pool_sizes() {
        let pool = Block::pool(128 * 1024);
        assert_eq!(pool.len(), 4);
        assert!(pool
            .iter()
            .all(|b| b.data.len() == BLOCK_SIZE && b.len == 0));
        let pool = Block::pool(10);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool[0].data.len(), 5);
        assert_eq!(Block::pool(0).len(), 2);
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
