//! A tiny HTTP/1.1 firmware server on 127.0.0.1 with fault injection, over plain TCP or TLS.
//!
//! Plain `std::net` and one thread per connection: the device under test downloads one image
//! from one place, so simplicity beats throughput tricks. Everything the device asked for is
//! logged ([`FirmwareServer::requests`]) so tests can check *how* it downloaded (ranges,
//! re-requests after a cut), not only what ended up on disk. The TLS mode
//! ([`FirmwareServer::start_tls`]) is rustls with the ring provider, like the device side.
//!
//! [`Faults`] covers what a real download meets: connections cut mid-body (at fixed or
//! pseudo-random offsets), stalls, short bodies, a corrupted byte, refused connections,
//! transient error statuses and signed URLs that expire ([`ExpireRule`],
//! [`FirmwareServer::renew_url`]). It also plays a hostile server, to check the client's
//! limits: redirects (loops, other schemes), an endless body, a false `Content-Length`, a
//! response head sent byte by byte (slow-loris) or padded to any size. Over TLS it also tests
//! the client's record layer: key updates mid-body and a clean `close_notify` before the
//! announced end. Every fault is bounded
//! on the server side too: a write error (the client went away) ends the connection, a client
//! that stops reading is dropped after a write timeout, and nothing is buffered per response
//! beyond one chunk.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The file name the image is served under; any path ending in it is accepted.
pub const FILE_NAME: &str = "firmware.bin";

/// How long a connection waits for an [`FirmwareServer::on_image_sent`] hook at most before it
/// sends on (a hook that never returns must not hang the download for ever).
const HOOK_WAIT: Duration = Duration::from_secs(10);

/// Largest request head we accept; a firmware HTTP client never sends more.
const MAX_HEAD: usize = 16 * 1024;
/// An idle keep-alive connection is closed after this long, so handler threads never pile up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a blocked read wakes up to look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
const CHUNK: usize = 64 * 1024;

/// Faults to inject; all off by default (`Faults::default()` serves correctly).
///
/// Offsets are absolute byte offsets in the image, whatever `Range` a request asks for.
/// Faults that fire "once" fire once per server, on the first response they apply to.
/// When several apply to one request: `redirect_first`, then `redirect`, then `status`, then
/// `fail_first`, then `expire_after` decide the status; for a file body, `endless_body`,
/// `short_body`, the cuts and `tls_close_notify_at` decide where it ends, `flip_byte_at`
/// corrupts what is sent, `stall_ms` and `stall_once` only delay it, `tls_key_update_every`
/// only changes its records. `content_length`, `huge_head` and `slow_head_ms` change only how
/// the head is written. The `tls_` faults apply to TLS connections only.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer every request with this status (e.g. 403, 404, 500) and a short text body.
    pub status: Option<u16>,
    /// After the body, send this many extra bytes beyond what `Content-Length` announced,
    /// then close the connection (its framing is broken from then on).
    pub extra_bytes: usize,
    /// Close the connection once the file's bytes up to (not including) this absolute offset
    /// have been sent. Fires once per server, on the first response whose range contains it.
    /// The same as a one-element [`cuts`](Self::cuts); both may be given.
    pub cut_at: Option<u64>,
    /// Ignore `Range` headers: always answer 200 with the whole file.
    pub ignore_range: bool,
    /// Sleep this long between the response head and the body (every response).
    pub stall_ms: u64,
    /// Close the connection once the file's bytes up to (not including) each of these
    /// absolute offsets have been sent. Each offset fires once per server, on the first
    /// response whose range contains it (a response ends at its first pending offset): a
    /// resumed request that starts past an offset skips it, which stays pending for a later
    /// response that covers it (e.g. a restart from 0). Offsets at or past the end of the
    /// image never fire. Over TLS the connection is cut without `close_notify`, as a network
    /// failure would end it (a clean TLS close mid-body is
    /// [`tls_close_notify_at`](Self::tls_close_notify_at)).
    pub cuts: Vec<u64>,
    /// `(n, seed)`: `n` more cuts like [`cuts`](Self::cuts) at distinct pseudo-random offsets
    /// in `1..len` (fewer if the image is too small), derived from `seed` (splitmix64, so the
    /// same seed and image size give the same offsets). [`FirmwareServer::cut_offsets`] lists
    /// them.
    pub random_cuts: Option<(u32, u64)>,
    /// `(offset, ms)`: once, on the first response that sends the byte at `offset`, stop for
    /// `ms` milliseconds just before that byte (mid-body: the bytes before it are flushed),
    /// then go on.
    pub stall_once: Option<(u64, u64)>,
    /// Announce the full `Content-Length` but send only this many body bytes, then close the
    /// connection; every file response (a body this short or shorter is sent normally).
    pub short_body: Option<u64>,
    /// XOR 0xFF into the byte at this absolute offset in every response that sends it: the
    /// transfer looks fine but the image is corrupt.
    pub flip_byte_at: Option<u64>,
    /// The first `n` connections are accepted and closed without any response (what the
    /// client already sent is read first, so it sees a clean close).
    pub close_before_headers: u32,
    /// Answer the first requests (counted over all connections) with these statuses in order,
    /// e.g. `[503, 503]`, with a short text body; later requests are served normally.
    pub fail_first: Vec<u16>,
    /// Make the URL expire like a signed download URL: requests then get 403. While this is
    /// set, URLs carry a `?token=N` query; [`FirmwareServer::renew_url`] issues the next token,
    /// after which only the new one is accepted.
    pub expire_after: Option<ExpireRule>,
    /// Answer every request (any path, HEAD too) with `302 Found` and this `Location`, e.g. to
    /// another server, another scheme, or back to itself for a loop. The literal `{self}` is
    /// replaced by the server's own [`url`](FirmwareServer::url) (so `"{self}"` is a redirect
    /// loop); anything else, a relative value included, is sent as it is.
    pub redirect: Option<String>,
    /// Answer the first requests (counted over all connections, like
    /// [`fail_first`](Self::fail_first), by the same count) with `302 Found` to these
    /// `Location`s in order (`{self}` replaced as in [`redirect`](Self::redirect)); later
    /// requests are served normally. For redirect chains that end in a download, e.g.
    /// `["/a/firmware.bin", "b/firmware.bin"]`: two hops, then the file (any path ending in
    /// the file name serves it).
    pub redirect_first: Vec<String>,
    /// Answer file requests with `200`, no `Content-Length` and `Connection: close` (Range is
    /// ignored), then send the image followed by pseudo-random garbage (splitmix64) without
    /// end: the body stops only when the client closes the connection (a write fails), stops
    /// reading for the write timeout (30 s), or the server stops. `flip_byte_at` and
    /// `stall_once` apply to the image part; `short_body`, the cuts and `content_length` do
    /// not apply. The log entry ([`RequestLog::complete`] false)
    /// is made when the body ends, so it tells when the server noticed the client leave.
    pub endless_body: bool,
    /// Announce this `Content-Length` in file responses (HEAD too) instead of the real one,
    /// and send the real bytes; when the two differ, close the connection after the body (its
    /// framing is broken). E.g. `1 << 50` with the real image: a client that trusts the
    /// header would wait for, or make room for, a petabyte.
    pub content_length: Option<u64>,
    /// Slow-loris: write the status line and the headers of every response one byte at a
    /// time, with this pause (ms) after each byte. The response ends when a write fails (the
    /// client went away: noticed at the second byte after it closed) or the server stops.
    /// After the blank line the body follows at normal speed.
    pub slow_head_ms: Option<u64>,
    /// Add about this many bytes of header lines (`X-Pad-N: aaa...`, at most 2 KiB each;
    /// rounded up to whole lines of at least 12 bytes) to every response head, before the
    /// blank line. Written line by line: a huge value costs time, not memory.
    pub huge_head: usize,
    /// On a TLS 1.3 connection, update the server's sending keys (rustls
    /// `refresh_traffic_keys`: a KeyUpdate message, the records after it under the next keys)
    /// after every this many body bytes of each file response, counted from the response's
    /// first body byte: the body is written in pieces that end at those offsets, each flushed
    /// with its KeyUpdate (none after the last byte; for `endless_body`, in the image part
    /// only). [`FirmwareServer::tls_key_updates`] counts them. No effect with `Some(0)`, on
    /// TLS 1.2 (which has no key update) and on plain HTTP.
    pub tls_key_update_every: Option<u64>,
    /// Once per server, on the first file response that would send the byte at this absolute
    /// offset (like [`stall_once`](Self::stall_once); a download from 0: after this many body
    /// bytes), stop right before it, send `close_notify`, flush and close the connection: a
    /// clean TLS close before the announced `Content-Length`. A cut before the offset in the
    /// same response comes first (this one stays pending); a cut at the same offset waits for
    /// a later response. Not for `endless_body`; no effect on plain HTTP.
    pub tls_close_notify_at: Option<u64>,
}

/// When a firmware URL (one `?token=N`) stops working: from then on it gets 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireRule {
    /// After this many successful (2xx) requests with the URL, HEAD included.
    Requests(u32),
    /// Once the URL is older than this (the first URL is issued when the server starts, a
    /// renewed one by [`FirmwareServer::renew_url`]).
    Duration(Duration),
}

/// One request as the server saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// The request's number in arrival order, from 0, over all connections (the count
    /// [`Faults::fail_first`] and [`Faults::redirect_first`] go by). The log itself is in
    /// completion order, which can differ for requests on different connections.
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// The raw `Range` header value, if any.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes actually written (including injected extra bytes or garbage).
    pub bytes_sent: u64,
    /// The whole response the server meant to send was written (a deliberate cut counts as
    /// complete). False when a write failed (the client closed the connection or stopped
    /// reading) or the server stopped; always false for [`Faults::endless_body`] GETs.
    pub complete: bool,
}

struct Shared {
    image: Arc<[u8]>,
    faults: Faults,
    /// `Some`: every connection is TLS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `http://127.0.0.1:PORT/firmware.bin` or its TLS form, without a token.
    base_url: String,
    /// `http://127.0.0.1:PORT` or its TLS form: where [`FirmwareServer::add_image`]'s files live.
    origin: String,
    /// More images, each served under its own file name ([`FirmwareServer::add_image`]).
    extra_images: Mutex<Vec<(String, Arc<[u8]>)>>,
    /// Bytes of the image sent so far and the hooks waiting for a count.
    milestones: Mutex<Milestones>,
    /// Every cut offset (`cut_at`, `cuts`, `random_cuts`), sorted, without duplicates.
    cuts: Vec<u64>,
    /// Which of `cuts` have fired.
    cuts_fired: Mutex<Vec<bool>>,
    stall_once_done: AtomicBool,
    /// `tls_close_notify_at` has fired.
    close_notify_done: AtomicBool,
    /// KeyUpdates sent (`tls_key_update_every`), over all connections.
    tls_key_updates: AtomicU64,
    /// TLS connections whose handshake resumed an earlier session.
    tls_resumed: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
    /// Requests parsed so far (for `fail_first`).
    requests_seen: AtomicU64,
    /// Bytes of every image (added ones too) about to be written, counted before the write so
    /// that a client can never have more ([`SentMeter::all_bytes_sent`]).
    all_sent: AtomicU64,
    token: Mutex<Token>,
    stop: AtomicBool,
    log: Mutex<Vec<RequestLog>>,
}

/// A hook of [`FirmwareServer::on_image_sent`].
type SentHook = Box<dyn FnOnce(u64) + Send>;

/// Bytes of the (first) image written so far, over all responses, and the hooks still waiting.
#[derive(Default)]
struct Milestones {
    sent: u64,
    /// `(bytes, hook)`, sorted by `bytes` (stable: equal counts fire in registration order).
    pending: Vec<(u64, SentHook)>,
}

/// The one URL token currently accepted (with `expire_after`).
struct Token {
    current: u64,
    issued: Instant,
    /// Successful requests with the current token.
    successes: u32,
}

impl Shared {
    fn url(&self) -> String {
        match self.faults.expire_after {
            Some(_) => format!(
                "{}?token={}",
                self.base_url,
                self.token.lock().unwrap().current
            ),
            None => self.base_url.clone(),
        }
    }

    fn renew_url(&self) -> String {
        self.renew_url_of(&self.base_url)
    }

    /// `url` without its query, with a fresh token (which from now on is the only one
    /// accepted) when URLs expire; `url` unchanged otherwise.
    fn renew_url_of(&self, url: &str) -> String {
        if self.faults.expire_after.is_none() {
            return url.to_string();
        }
        let mut t = self.token.lock().unwrap();
        *t = Token {
            current: t.current + 1,
            issued: Instant::now(),
            successes: 0,
        };
        let bare = url.split(['?', '#']).next().unwrap_or(url);
        format!("{bare}?token={}", t.current)
    }

    /// The URL of an image served under `name`, with the current token when URLs expire.
    fn url_of(&self, name: &str) -> String {
        let bare = format!("{}/{name}", self.origin);
        match self.faults.expire_after {
            Some(_) => format!("{bare}?token={}", self.token.lock().unwrap().current),
            None => bare,
        }
    }

    /// The image a request path names: an added image by its file name, else the first image
    /// by [`FILE_NAME`]; the flag says whether it is the first one (whose bytes are counted).
    fn image_for(&self, path: &str) -> Option<(Arc<[u8]>, bool)> {
        let extra = self.extra_images.lock().unwrap();
        if let Some((_, image)) = extra
            .iter()
            .find(|(name, _)| path.ends_with(&format!("/{name}")))
        {
            return Some((Arc::clone(image), false));
        }
        path.ends_with(&format!("/{FILE_NAME}"))
            .then(|| (Arc::clone(&self.image), true))
    }

    /// How many bytes may be sent before the next hook is due, if one is pending.
    fn bytes_to_next_milestone(&self) -> Option<u64> {
        let m = self.milestones.lock().unwrap();
        m.pending.first().map(|(at, _)| at.saturating_sub(m.sent))
    }

    fn count_sent(&self, n: u64) {
        self.milestones.lock().unwrap().sent += n;
    }

    /// Runs the hooks whose count has been reached (outside the lock: a hook may take a while,
    /// and other connections keep counting meanwhile).
    fn fire_due_milestones(&self) {
        loop {
            let (sent, hook) = {
                let mut m = self.milestones.lock().unwrap();
                match m.pending.first() {
                    Some((at, _)) if *at <= m.sent => (m.sent, m.pending.remove(0).1),
                    _ => return,
                }
            };
            // In a thread of its own, so a hook that never returns delays this body only.
            let (done_tx, done) = std::sync::mpsc::channel();
            let spawned = thread::Builder::new()
                .name("fw-http-milestone".into())
                .spawn(move || {
                    hook(sent);
                    let _ = done_tx.send(());
                });
            if spawned.is_ok() {
                let _ = done.recv_timeout(HOOK_WAIT);
            }
        }
    }

    /// With `expire_after`: whether `target` (path and query) is refused because its token is
    /// missing, old or expired. A request that is accepted and `succeeds` counts against the
    /// token's budget.
    fn url_expired(&self, target: &str, succeeds: bool) -> bool {
        let Some(rule) = self.faults.expire_after else {
            return false;
        };
        let token = target
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .and_then(|t| t.parse::<u64>().ok());
        let mut t = self.token.lock().unwrap();
        if token != Some(t.current) {
            return true;
        }
        let expired = match rule {
            ExpireRule::Requests(n) => t.successes >= n,
            ExpireRule::Duration(d) => t.issued.elapsed() >= d,
        };
        if !expired && succeeds {
            t.successes += 1;
        }
        expired
    }

    /// Claims the first pending cut in `[start, end)`, if any.
    fn claim_cut(&self, start: u64, end: u64) -> Option<u64> {
        let mut fired = self.cuts_fired.lock().unwrap();
        let i = self
            .cuts
            .iter()
            .enumerate()
            .position(|(i, &c)| c >= start && c < end && !fired[i])?;
        fired[i] = true;
        Some(self.cuts[i])
    }

    /// Sleeps `d`, waking early when the server stops.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            thread::sleep(left.min(POLL));
        }
    }
}

/// `n` distinct offsets in `1..len` from `seed` (splitmix64), sorted.
fn random_offsets(n: u32, seed: u64, len: u64) -> Vec<u64> {
    if len < 2 {
        return Vec::new();
    }
    let span = len - 1;
    let want = u64::from(n).min(span);
    if want == span {
        return (1..len).collect();
    }
    let mut state = seed;
    let mut out = BTreeSet::new();
    while (out.len() as u64) < want {
        out.insert(1 + splitmix64(&mut state) % span);
    }
    out.into_iter().collect()
}

/// The next value of a splitmix64 sequence.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Serves one firmware image at `http://127.0.0.1:PORT/firmware.bin` (or, in TLS mode,
/// `https://localhost:PORT/firmware.bin`) until dropped.
pub struct FirmwareServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FirmwareServer {
    /// Starts a server without faults.
    pub fn start(image: impl Into<Arc<[u8]>>) -> io::Result<FirmwareServer> {
        Self::start_with(image, Faults::default())
    }

    /// Starts a server that injects `faults`.
    pub fn start_with(image: impl Into<Arc<[u8]>>, faults: Faults) -> io::Result<FirmwareServer> {
        Self::spawn(image.into(), faults, None)
    }

    /// Starts an HTTPS server that injects `faults` and presents `cert_chain_pem` (leaf first,
    /// then any intermediates) with the private key `key_pem` (PKCS#8, PKCS#1 or SEC1).
    ///
    /// It listens on 127.0.0.1 only and [`url`](Self::url) names it `localhost`, so the
    /// certificate needs a `localhost` DNS name for host-name verification to pass.
    /// Fails with `InvalidInput` when the PEMs hold no certificate, no key, or a key that does
    /// not match.
    pub fn start_tls(
        image: impl Into<Arc<[u8]>>,
        faults: Faults,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> io::Result<FirmwareServer> {
        let config = server_tls_config(cert_chain_pem, key_pem, rustls::DEFAULT_VERSIONS, None)?;
        Self::spawn(image.into(), faults, Some(Arc::new(config)))
    }

    /// [`start_tls`](Self::start_tls) speaking only the TLS `versions` given, e.g.
    /// `&[&rustls::version::TLS12]` for a server that never learnt TLS 1.3.
    pub fn start_tls_versions(
        image: impl Into<Arc<[u8]>>,
        faults: Faults,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<FirmwareServer> {
        let config = server_tls_config(cert_chain_pem, key_pem, versions, None)?;
        Self::spawn(image.into(), faults, Some(Arc::new(config)))
    }

    /// [`start_tls_versions`](Self::start_tls_versions) offering only the cipher `suites`
    /// given (ring's, `rustls::crypto::ring::cipher_suite::*`), e.g. only ChaCha20-Poly1305:
    /// the handshake fails unless the client offers one of them. Fails with `InvalidInput`
    /// also when no suite fits the `versions`.
    pub fn start_tls_suites(
        image: impl Into<Arc<[u8]>>,
        faults: Faults,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[rustls::SupportedCipherSuite],
    ) -> io::Result<FirmwareServer> {
        let config = server_tls_config(cert_chain_pem, key_pem, versions, Some(suites))?;
        Self::spawn(image.into(), faults, Some(Arc::new(config)))
    }

    fn spawn(
        image: Arc<[u8]>,
        faults: Faults,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<FirmwareServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let port = addr.port();
        let origin = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let base_url = format!("{origin}/{FILE_NAME}");
        let mut cuts: BTreeSet<u64> = faults.cuts.iter().copied().collect();
        cuts.extend(faults.cut_at);
        if let Some((n, seed)) = faults.random_cuts {
            cuts.extend(random_offsets(n, seed, image.len() as u64));
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        let shared = Arc::new(Shared {
            image,
            faults,
            tls,
            base_url,
            origin,
            extra_images: Mutex::new(Vec::new()),
            milestones: Mutex::new(Milestones::default()),
            cuts_fired: Mutex::new(vec![false; cuts.len()]),
            cuts,
            stall_once_done: AtomicBool::new(false),
            close_notify_done: AtomicBool::new(false),
            tls_key_updates: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests_seen: AtomicU64::new(0),
            all_sent: AtomicU64::new(0),
            token: Mutex::new(Token {
                current: 0,
                issued: Instant::now(),
                successes: 0,
            }),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("fw-http-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(FirmwareServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The firmware's URL: `http://127.0.0.1:PORT/firmware.bin`, or
    /// `https://localhost:PORT/firmware.bin` in TLS mode (`localhost`, so that the client
    /// verifies a host name; clients that try `::1` first fall back to 127.0.0.1).
    ///
    /// With [`Faults::expire_after`] it carries the current token: `...?token=0` until the
    /// first [`renew_url`](Self::renew_url).
    pub fn url(&self) -> String {
        self.shared.url()
    }

    /// Issues a fresh URL, as a platform does when a device asks again after its signed URL
    /// expired: with [`Faults::expire_after`] the next `?token=N`, whose budget (requests or
    /// time) starts now; the previous tokens get 403 from then on. Without `expire_after`
    /// nothing expires and this is [`url`](Self::url).
    pub fn renew_url(&self) -> String {
        self.shared.renew_url()
    }

    /// Serves `image` too, at `.../NAME` next to [`FILE_NAME`] (e.g. a second firmware that
    /// supersedes the first); returns its URL ([`url_of`](Self::url_of)). The faults apply to
    /// it as to the first image (offsets within it; cuts fire once per server, whichever image
    /// they hit), and so does the one URL token of [`Faults::expire_after`]. Its bytes do not
    /// count for [`on_image_sent`](Self::on_image_sent). Fails with `InvalidInput` for a name
    /// that is empty, has a `/`, `?` or `#`, is [`FILE_NAME`] or was added before.
    pub fn add_image(&self, name: &str, image: impl Into<Arc<[u8]>>) -> io::Result<String> {
        let mut extra = self.shared.extra_images.lock().unwrap();
        if name.is_empty()
            || name.contains(['/', '?', '#'])
            || name == FILE_NAME
            || extra.iter().any(|(n, _)| n == name)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} cannot name another image"),
            ));
        }
        extra.push((name.to_string(), image.into()));
        drop(extra);
        Ok(self.url_of(name))
    }

    /// The URL of the file `name` on this server (with the current token when URLs expire);
    /// `url_of(FILE_NAME)` is [`url`](Self::url).
    pub fn url_of(&self, name: &str) -> String {
        self.shared.url_of(name)
    }

    /// Calls `hook` once the server has written `bytes` bytes of the first image to clients,
    /// counted over all responses (a byte sent twice counts twice; HEAD, error bodies and
    /// [`add_image`](Self::add_image)'s images do not count). The response that reaches the
    /// count stops right there, flushes, and waits for `hook` to return (at most 10 s) before
    /// it sends on, so what the hook does happens at a known point of the download, whatever
    /// the timing. `hook` gets the count it fired at (`bytes`, or more for a count registered
    /// after it was passed; `bytes` 0 fires at the start of the first body).
    pub fn on_image_sent(&self, bytes: u64, hook: impl FnOnce(u64) + Send + 'static) {
        let mut m = self.shared.milestones.lock().unwrap();
        let at = m.pending.partition_point(|(b, _)| *b <= bytes);
        m.pending.insert(at, (bytes, Box::new(hook)));
    }

    /// Bytes of the first image written so far, over all responses (see
    /// [`on_image_sent`](Self::on_image_sent)).
    pub fn image_bytes_sent(&self) -> u64 {
        self.shared.milestones.lock().unwrap().sent
    }

    /// A handle that reads [`image_bytes_sent`](Self::image_bytes_sent) from elsewhere (e.g. a
    /// progress display in another thread).
    pub fn sent_meter(&self) -> SentMeter {
        SentMeter(Arc::clone(&self.shared))
    }

    /// A handle that renews this server's URL from elsewhere (e.g. a [`crate::Cloud`] in
    /// another thread, see [`crate::Cloud::set_url_renewer`]).
    pub fn url_renewer(&self) -> UrlRenewer {
        UrlRenewer(Arc::clone(&self.shared))
    }

    /// Every offset the server cuts the connection at once ([`Faults::cut_at`],
    /// [`Faults::cuts`] and the offsets drawn for [`Faults::random_cuts`]), sorted, without
    /// duplicates.
    pub fn cut_offsets(&self) -> Vec<u64> {
        self.shared.cuts.clone()
    }

    /// The faults in force, one line each (random cuts resolved to their offsets); empty when
    /// the server serves correctly.
    pub fn fault_descriptions(&self) -> Vec<String> {
        describe(&self.shared)
    }

    /// Connections accepted so far, including those closed by
    /// [`Faults::close_before_headers`].
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// KeyUpdate messages sent so far ([`Faults::tls_key_update_every`]), over all
    /// connections.
    pub fn tls_key_updates(&self) -> u64 {
        self.shared.tls_key_updates.load(Ordering::SeqCst)
    }

    /// TLS connections so far whose handshake resumed a session of an earlier one (a TLS 1.3
    /// ticket, a TLS 1.2 session ID), counted when their first request arrives.
    pub fn tls_resumed_connections(&self) -> u64 {
        self.shared.tls_resumed.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The image being served.
    pub fn image(&self) -> &Arc<[u8]> {
        &self.shared.image
    }

    /// Every request answered so far, in completion order. An entry is recorded once its
    /// response has been written (or a write failed: [`RequestLog::complete`]), so a client
    /// may see its bytes slightly before the entry.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.log.lock().unwrap().clone()
    }

    /// [`requests`](Self::requests) once it holds at least `n` entries, or as it is after
    /// `limit`: for checks made right after the client saw its last response.
    pub fn requests_when(&self, n: usize, limit: std::time::Duration) -> Vec<RequestLog> {
        let end = std::time::Instant::now() + limit;
        loop {
            let log = self.requests();
            if log.len() >= n || std::time::Instant::now() >= end {
                return log;
            }
            thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Reads how much of a [`FirmwareServer`]'s first image it has sent, without borrowing the
/// server; cheap to clone.
#[derive(Clone)]
pub struct SentMeter(Arc<Shared>);

impl SentMeter {
    /// [`FirmwareServer::image_bytes_sent`].
    pub fn image_bytes_sent(&self) -> u64 {
        self.0.milestones.lock().unwrap().sent
    }

    /// The size of the first image.
    pub fn image_len(&self) -> u64 {
        self.0.image.len() as u64
    }

    /// Bytes of every image served (the first and [`FirmwareServer::add_image`]'s) handed to
    /// sockets so far, over all responses (a byte sent twice counts twice), counted just
    /// before each write: never less than what any client has received.
    pub fn all_bytes_sent(&self) -> u64 {
        self.0.all_sent.load(Ordering::SeqCst)
    }

    /// [`FirmwareServer::requests`].
    pub fn requests(&self) -> Vec<RequestLog> {
        self.0.log.lock().unwrap().clone()
    }
}

impl std::fmt::Debug for SentMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SentMeter")
            .field(&self.image_bytes_sent())
            .finish()
    }
}

/// Renews a [`FirmwareServer`]'s URL ([`FirmwareServer::renew_url`]) without borrowing the
/// server; cheap to clone.
#[derive(Clone)]
pub struct UrlRenewer(Arc<Shared>);

impl UrlRenewer {
    /// [`FirmwareServer::renew_url`].
    pub fn renew(&self) -> String {
        self.0.renew_url()
    }

    /// Like [`renew`](Self::renew), for the file `url` names (e.g. an image of
    /// [`FirmwareServer::add_image`]): `url` with the fresh token, or unchanged when URLs do
    /// not expire.
    pub fn renew_url_of(&self, url: &str) -> String {
        self.0.renew_url_of(url)
    }
}

impl std::fmt::Debug for UrlRenewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UrlRenewer").field(&self.0.base_url).finish()
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(shared: &Shared) -> Vec<String> {
    let f = &shared.faults;
    let mut out = Vec::new();
    if let Some(s) = f.status {
        out.push(format!("every request answered with status {s}"));
    }
    if !f.fail_first.is_empty() {
        out.push(format!(
            "the first {} request(s) answered with {}",
            f.fail_first.len(),
            join(&f.fail_first)
        ));
    }
    if f.close_before_headers > 0 {
        out.push(format!(
            "the first {} connection(s) closed without a response",
            f.close_before_headers
        ));
    }
    match f.expire_after {
        Some(ExpireRule::Requests(n)) => out.push(format!(
            "the URL expires (403) after {n} successful request(s); a fresh one is issued on request"
        )),
        Some(ExpireRule::Duration(d)) => out.push(format!(
            "the URL expires (403) {:.1} s after it was issued; a fresh one is issued on request",
            d.as_secs_f64()
        )),
        None => {}
    }
    if f.ignore_range {
        out.push("Range ignored: always 200 with the whole file".into());
    }
    if f.stall_ms > 0 {
        out.push(format!(
            "every response stalls {} ms between head and body",
            f.stall_ms
        ));
    }
    if let Some((at, ms)) = f.stall_once {
        out.push(format!("one stall of {ms} ms before byte {at}"));
    }
    if !shared.cuts.is_empty() {
        let how = match f.random_cuts {
            Some((n, seed)) => format!(" ({n} random, seed {seed})"),
            None => String::new(),
        };
        out.push(format!(
            "connection cut once at each of the offsets {}{how}",
            join(&shared.cuts)
        ));
    } else if let Some((n, seed)) = f.random_cuts {
        out.push(format!(
            "{n} random cut(s), seed {seed}: none fit an image of {} bytes",
            shared.image.len()
        ));
    }
    if let Some(n) = f.short_body {
        out.push(format!(
            "every body cut short after {n} bytes (full Content-Length announced), then close"
        ));
    }
    if let Some(at) = f.flip_byte_at {
        out.push(format!("the byte at offset {at} is corrupted (XOR 0xFF)"));
    }
    if f.extra_bytes > 0 {
        out.push(format!(
            "{} extra byte(s) after every body, then close",
            f.extra_bytes
        ));
    }
    if !f.redirect_first.is_empty() {
        out.push(format!(
            "the first {} request(s) redirected (302) to {}",
            f.redirect_first.len(),
            join(&f.redirect_first)
        ));
    }
    if let Some(location) = &f.redirect {
        out.push(format!("every request redirected (302) to {location}"));
    }
    if f.endless_body {
        out.push(
            "endless body: no Content-Length, the image then garbage until the client closes"
                .into(),
        );
    }
    if let Some(n) = f.content_length {
        out.push(format!(
            "Content-Length: {n} announced for every file, the real bytes sent"
        ));
    }
    if let Some(ms) = f.slow_head_ms {
        out.push(format!(
            "slow-loris: every response head sent one byte every {ms} ms"
        ));
    }
    if f.huge_head > 0 {
        out.push(format!(
            "{} bytes of padding header lines in every response head",
            f.huge_head
        ));
    }
    if let Some(n) = f.tls_key_update_every.filter(|&n| n > 0) {
        out.push(format!(
            "TLS 1.3: the server's keys updated (KeyUpdate) every {n} body bytes"
        ));
    }
    if let Some(at) = f.tls_close_notify_at {
        out.push(format!(
            "TLS: one clean close (close_notify) mid-body before byte {at}"
        ));
    }
    out
}

impl Drop for FirmwareServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // `accept` blocks; a throwaway connection wakes it so it can see the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Connection threads notice the flag within `POLL` and exit on their own.
    }
}

/// A rustls server configuration on ring for the certificate chain and key in PEM, speaking
/// `versions`, offering `suites` when given (else all of ring's). What [`FirmwareServer`]'s TLS
/// runs on; tests that write their own TLS peer start from it too.
/// Fails with `InvalidInput` when the PEMs hold no certificate, no key, or a key that does not
/// match.
pub fn server_tls_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Option<&[rustls::SupportedCipherSuite]>,
) -> io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("certificate chain: no PEM certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(format!("private key: {e}")))?;
    // An explicit provider: rustls panics when it has to pick one and finds two.
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites.to_vec();
    }
    let provider = Arc::new(provider);
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("certificate and key: {e}")))
}

/// A connection the server answers on: plain TCP, or TLS over TCP.
trait Conn: Read + Write {
    /// Ends the connection after the last response (over TLS with `close_notify`).
    fn close(&mut self);
    /// Ends the connection as a network failure would: over TLS without `close_notify`.
    fn cut(&mut self);
    /// Whether the TLS faults apply.
    fn is_tls(&self) -> bool;
    /// Whether the connection can update its keys (TLS 1.3).
    fn can_update_keys(&self) -> bool;
    /// Sends a KeyUpdate (the next records go under new keys) and flushes.
    fn update_keys(&mut self) -> io::Result<()>;
    /// Whether the TLS handshake resumed an earlier session.
    fn resumed(&self) -> bool;
}

impl Conn for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }

    fn cut(&mut self) {
        self.close();
    }

    fn is_tls(&self) -> bool {
        false
    }

    fn can_update_keys(&self) -> bool {
        false
    }

    fn update_keys(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn resumed(&self) -> bool {
        false
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

impl Conn for TlsStream {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn cut(&mut self) {
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn is_tls(&self) -> bool {
        true
    }

    fn can_update_keys(&self) -> bool {
        self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }

    fn update_keys(&mut self) -> io::Result<()> {
        self.conn
            .refresh_traffic_keys()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.flush()
    }

    fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name("fw-http-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &shared);
            });
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    keep_alive: bool,
    body_len: usize,
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let n = shared.connections.fetch_add(1, Ordering::SeqCst);
    if n < u64::from(shared.faults.close_before_headers) {
        // Read what the client sent (its request, or a TLS ClientHello), so that closing does
        // not turn into a reset, then close without a word.
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    }
    match &shared.tls {
        // The handshake runs inside the first read; a client that rejects the certificate
        // ends it there with an alert, which comes back here as an error.
        Some(config) => {
            let conn = rustls::ServerConnection::new(Arc::clone(config))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            serve(&mut TlsStream::new(conn, stream), shared)
        }
        None => serve(&mut stream, shared),
    }
}

fn serve(stream: &mut impl Conn, shared: &Shared) -> io::Result<()> {
    // Bytes read but not consumed yet (pipelined requests).
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let Some(head_len) = read_head(stream, &mut buf, shared)? else {
            return Ok(()); // peer closed, idle, or server stopping
        };
        // The handshake is over by now (it ran inside the first read).
        if std::mem::take(&mut first) && stream.resumed() {
            shared.tls_resumed.fetch_add(1, Ordering::SeqCst);
        }
        let req = parse_head(&buf[..head_len]);
        buf.drain(..head_len);
        let Some(req) = req else {
            let _ = respond_simple(stream, shared, 400, "bad request\n", false);
            return Ok(());
        };
        // GET/HEAD have no body; skip one if a client sends it anyway, to keep framing.
        skip_body(stream, &mut buf, req.body_len, shared)?;
        match respond(stream, shared, &req)? {
            Then::Keep => {}
            Then::Close => {
                stream.close();
                return Ok(());
            }
            Then::Cut => {
                stream.cut();
                return Ok(());
            }
        }
    }
}

/// What becomes of the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// It stays open for the next request.
    Keep,
    /// It is closed (over TLS with `close_notify`).
    Close,
    /// It is cut (over TLS without `close_notify`).
    Cut,
}

impl Then {
    fn keep_if(keep: bool) -> Then {
        if keep {
            Then::Keep
        } else {
            Then::Close
        }
    }
}

/// Reads until `buf` holds a complete head; returns its length including the blank line.
fn read_head(
    stream: &mut impl Conn,
    buf: &mut Vec<u8>,
    shared: &Shared,
) -> io::Result<Option<usize>> {
    let mut idle_since = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(pos + 4));
        }
        if buf.len() > MAX_HEAD || shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                idle_since = Instant::now();
            }
            Err(e) if is_timeout(&e) => {
                if idle_since.elapsed() > IDLE_TIMEOUT {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn skip_body(
    stream: &mut impl Conn,
    buf: &mut Vec<u8>,
    mut len: usize,
    shared: &Shared,
) -> io::Result<()> {
    let take = len.min(buf.len());
    buf.drain(..take);
    len -= take;
    let mut chunk = [0u8; 4096];
    while len > 0 && !shared.stop.load(Ordering::SeqCst) {
        match stream.read(&mut chunk[..len.min(4096)]) {
            Ok(0) => break,
            Ok(n) => len -= n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut range = None;
    let mut connection = None;
    let mut body_len = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => range = Some(value.to_string()),
            "connection" => connection = Some(value.to_ascii_lowercase()),
            "content-length" => body_len = value.parse().ok()?,
            _ => {}
        }
    }
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes unless asked.
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    Some(Request {
        method: method.to_string(),
        path: target.to_string(),
        range,
        keep_alive,
        body_len,
    })
}

/// What a `Range` header asks of a file of `total` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// Inclusive byte range, already clamped to the file.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Syntactically invalid or multi-range: RFC 9110 lets us ignore it and send the whole file.
    Ignore,
}

fn parse_range(value: &str, total: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Ignore;
    };
    if spec.contains(',') {
        return RangeReq::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeReq::Ignore;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.trim(), last.trim()) {
        // Suffix range: the last N bytes.
        ("", n) => match num(n) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(_) if total == 0 => RangeReq::Unsatisfiable,
            Some(n) => RangeReq::Satisfiable(total.saturating_sub(n), total - 1),
            None => RangeReq::Ignore,
        },
        (s, "") => match num(s) {
            Some(s) if s >= total => RangeReq::Unsatisfiable,
            Some(s) => RangeReq::Satisfiable(s, total - 1),
            None => RangeReq::Ignore,
        },
        (s, e) => match (num(s), num(e)) {
            (Some(s), Some(e)) if e < s => RangeReq::Ignore,
            (Some(s), Some(_)) if s >= total => RangeReq::Unsatisfiable,
            (Some(s), Some(e)) => RangeReq::Satisfiable(s, e.min(total - 1)),
            _ => RangeReq::Ignore,
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Longest `X-Pad-N` line of [`Faults::huge_head`], CRLF included.
const PAD_LINE: usize = 2048;

/// Writes head bytes: at once, or one byte at a time with [`Faults::slow_head_ms`].
fn send_head_bytes(stream: &mut impl Conn, shared: &Shared, bytes: &[u8]) -> io::Result<()> {
    let Some(ms) = shared.faults.slow_head_ms else {
        return stream.write_all(bytes);
    };
    for byte in bytes {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(stopping());
        }
        stream.write_all(std::slice::from_ref(byte))?;
        stream.flush()?;
        shared.sleep(Duration::from_millis(ms));
    }
    Ok(())
}

fn stopping() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server stopping")
}

/// Writes a response head; `content_length` `None` leaves the header out (the body then ends
/// when the connection closes). [`Faults::huge_head`] pads it, [`Faults::slow_head_ms`] slows
/// it down.
fn write_head(
    stream: &mut impl Conn,
    shared: &Shared,
    status: u16,
    content_length: Option<u64>,
    extra_headers: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if let Some(n) = content_length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str(extra_headers);
    let end = format!(
        "Connection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    if shared.faults.huge_head == 0 {
        head.push_str(&end);
        return send_head_bytes(stream, shared, head.as_bytes());
    }
    send_head_bytes(stream, shared, head.as_bytes())?;
    // Padding line by line: memory stays at one line whatever the size asked for.
    let mut left = shared.faults.huge_head;
    let mut line = Vec::with_capacity(PAD_LINE);
    let mut i = 0u64;
    while left > 0 {
        line.clear();
        write!(line, "X-Pad-{i}: ")?;
        let len = left.min(PAD_LINE).max(line.len() + 3);
        line.resize(len - 2, b'a');
        line.extend_from_slice(b"\r\n");
        send_head_bytes(stream, shared, &line)?;
        left = left.saturating_sub(len);
        i += 1;
    }
    send_head_bytes(stream, shared, end.as_bytes())
}

fn respond_simple(
    stream: &mut impl Conn,
    shared: &Shared,
    status: u16,
    body: &str,
    keep: bool,
) -> io::Result<u64> {
    write_head(
        stream,
        shared,
        status,
        Some(body.len() as u64),
        "Content-Type: text/plain\r\n",
        keep,
    )?;
    stream.write_all(body.as_bytes())?;
    Ok(body.len() as u64)
}

/// Answers one request; returns what becomes of the connection.
fn respond(stream: &mut impl Conn, shared: &Shared, req: &Request) -> io::Result<Then> {
    let faults = &shared.faults;
    let is_head = req.method == "HEAD";
    let mut keep = req.keep_alive;
    let n = shared.requests_seen.fetch_add(1, Ordering::SeqCst);
    let mut log = RequestLog {
        seq: n,
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.range.clone(),
        status: 0,
        bytes_sent: 0,
        complete: false,
    };
    let path = req.path.split(['?', '#']).next().unwrap_or("");
    let file = shared.image_for(path);
    let seq = usize::try_from(n).ok();
    let injected = seq.and_then(|i| faults.fail_first.get(i).copied());
    let redirect = seq
        .and_then(|i| faults.redirect_first.get(i))
        .or(faults.redirect.as_ref());

    // Decide the status and, for the file, the byte range to send (end exclusive).
    let mut file_range = None;
    let mut text_body = "";
    let mut extra_headers = String::new();
    if let Some(location) = redirect {
        log.status = 302;
        text_body = "redirected\n";
        let location = location.replace("{self}", &shared.url());
        extra_headers.push_str(&format!("Location: {location}\r\n"));
    } else if let Some(status) = faults.status {
        log.status = status;
        text_body = "injected fault\n";
    } else if let Some(status) = injected {
        log.status = status;
        text_body = "injected failure\n";
    } else if req.method != "GET" && !is_head {
        log.status = 405;
        text_body = "method not allowed\n";
        extra_headers.push_str("Allow: GET, HEAD\r\n");
    } else if file.is_none() {
        // A wrong path is refused before the signature is looked at, so it costs no budget.
        log.status = 404;
        text_body = "not found\n";
    } else {
        let total = file.as_ref().map_or(0, |(image, _)| image.len() as u64);
        let range = match &req.range {
            Some(r) if !faults.ignore_range && !faults.endless_body => parse_range(r, total),
            _ => RangeReq::Ignore,
        };
        let succeeds = range != RangeReq::Unsatisfiable;
        if shared.url_expired(&req.path, succeeds) {
            log.status = 403;
            text_body = "URL expired\n";
        } else {
            if !faults.endless_body {
                extra_headers.push_str("Accept-Ranges: bytes\r\n");
            }
            match range {
                RangeReq::Satisfiable(s, e) => {
                    log.status = 206;
                    extra_headers.push_str(&format!("Content-Range: bytes {s}-{e}/{total}\r\n"));
                    file_range = Some((s, e + 1));
                }
                RangeReq::Unsatisfiable => {
                    log.status = 416;
                    extra_headers.push_str(&format!("Content-Range: bytes */{total}\r\n"));
                }
                RangeReq::Ignore => {
                    log.status = 200;
                    file_range = Some((0, total));
                }
            }
            if file_range.is_some() {
                extra_headers.push_str("Content-Type: application/octet-stream\r\n");
            }
        }
    }
    let endless = faults.endless_body && file_range.is_some();
    let body_len = match file_range {
        Some((s, e)) => e - s,
        None => text_body.len() as u64,
    };
    let announced = match file_range {
        _ if endless => None,
        Some(_) => Some(faults.content_length.unwrap_or(body_len)),
        None => Some(body_len),
    };
    // Framing broken on purpose (more bytes than announced, no end, a false length): nothing
    // sensible can follow on this connection.
    if !is_head && (faults.extra_bytes > 0 || endless || announced != Some(body_len)) {
        keep = false;
    }
    if !text_body.is_empty() && file_range.is_none() {
        extra_headers.push_str("Content-Type: text/plain\r\n");
    }

    let body = Body {
        image: file.as_ref().map_or(&[][..], |(image, _)| &image[..]),
        counted: file.as_ref().is_some_and(|(_, first)| *first),
    };
    let result = (|| -> io::Result<Then> {
        write_head(stream, shared, log.status, announced, &extra_headers, keep)?;
        if is_head {
            return Ok(Then::keep_if(keep));
        }
        if faults.stall_ms > 0 {
            stream.flush()?;
            shared.sleep(Duration::from_millis(faults.stall_ms));
        }
        match file_range {
            Some((s, e)) if endless => {
                send_file(stream, shared, &body, s, e, &mut log.bytes_sent)?;
                send_garbage(stream, shared, &mut log.bytes_sent)?;
                return Ok(Then::Close);
            }
            Some((s, e)) => {
                // Where this body ends: a short body, else the first pending cut in range,
                // else a pending close_notify in range.
                let mut end = e;
                if let Some(n) = faults.short_body {
                    end = end.min(s.saturating_add(n));
                }
                let notify = faults.tls_close_notify_at.filter(|&at| {
                    stream.is_tls()
                        && (s..end).contains(&at)
                        && !shared.close_notify_done.load(Ordering::SeqCst)
                });
                let mut then = Then::Close;
                if let Some(c) = shared.claim_cut(s, notify.unwrap_or(end)) {
                    end = c;
                    then = Then::Cut;
                } else if let Some(at) = notify {
                    if !shared.close_notify_done.swap(true, Ordering::SeqCst) {
                        end = at;
                    }
                }
                send_file(stream, shared, &body, s, end, &mut log.bytes_sent)?;
                if end < e {
                    stream.flush()?;
                    return Ok(then);
                }
            }
            None => {
                stream.write_all(text_body.as_bytes())?;
                log.bytes_sent += text_body.len() as u64;
            }
        }
        if faults.extra_bytes > 0 {
            stream.write_all(&vec![0x5a; faults.extra_bytes])?;
            log.bytes_sent += faults.extra_bytes as u64;
        }
        stream.flush()?;
        Ok(Then::keep_if(keep))
    })();
    log.complete = result.is_ok();
    shared.log.lock().unwrap().push(log);
    result
}

/// Sends pseudo-random bytes until a write fails or the server stops (then an error either
/// way: the body never ends by itself), one reused chunk at a time.
fn send_garbage(stream: &mut impl Conn, shared: &Shared, sent: &mut u64) -> io::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    let mut state = 0x6a09_e667_f3bc_c908u64;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(stopping());
        }
        for word in chunk.chunks_exact_mut(8) {
            word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        stream.write_all(&chunk)?;
        *sent += CHUNK as u64;
    }
}

/// The image a response sends, and whether its bytes count for
/// [`FirmwareServer::on_image_sent`] (the first image's do).
struct Body<'a> {
    image: &'a [u8],
    counted: bool,
}

/// Runs the [`FirmwareServer::on_image_sent`] hooks that are due, once the bytes before them
/// have left (flushed).
fn reach_milestones(stream: &mut impl Conn, shared: &Shared, body: &Body) -> io::Result<()> {
    if body.counted && shared.bytes_to_next_milestone() == Some(0) {
        stream.flush()?;
        shared.fire_due_milestones();
    }
    Ok(())
}

/// Writes the image's bytes `start..end`, with the one-time stall and the flipped byte, and
/// stops at each milestone of a counted image.
fn send_file(
    stream: &mut impl Conn,
    shared: &Shared,
    body: &Body,
    start: u64,
    end: u64,
    sent: &mut u64,
) -> io::Result<()> {
    let faults = &shared.faults;
    let image = body.image;
    let key_update_every = faults
        .tls_key_update_every
        .filter(|&every| every > 0 && stream.can_update_keys());
    let mut pos = start;
    while pos < end {
        reach_milestones(stream, shared, body)?;
        let mut n = (end - pos).min(CHUNK as u64);
        if let Some(every) = key_update_every {
            n = n.min(every - (pos - start) % every); // stop at the next key update
        }
        if let Some((at, ms)) = faults.stall_once {
            if at == pos && !shared.stall_once_done.swap(true, Ordering::SeqCst) {
                stream.flush()?;
                shared.sleep(Duration::from_millis(ms));
            } else if at > pos && at < pos + n {
                n = at - pos; // stop right before it; the next round stalls
            }
        }
        if body.counted {
            // Stop exactly at the next milestone; the next round reaches it.
            n = n.min(shared.bytes_to_next_milestone().unwrap_or(u64::MAX));
        }
        let chunk = &image[pos as usize..(pos + n) as usize];
        shared.all_sent.fetch_add(n, Ordering::SeqCst);
        match faults.flip_byte_at {
            Some(at) if at >= pos && at < pos + n => {
                let mut bad = chunk.to_vec();
                bad[(at - pos) as usize] ^= 0xff;
                stream.write_all(&bad)?;
            }
            _ => stream.write_all(chunk)?,
        }
        pos += n;
        *sent += n;
        if body.counted {
            shared.count_sent(n);
        }
        if let Some(every) = key_update_every {
            if (pos - start) % every == 0 && pos < end {
                stream.update_keys()?;
                shared.tls_key_updates.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    reach_milestones(stream, shared, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parsing() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-", 10), Satisfiable(0, 9));
        assert_eq!(parse_range("bytes=3-5", 10), Satisfiable(3, 5));
        assert_eq!(parse_range("bytes=3-50", 10), Satisfiable(3, 9));
        assert_eq!(parse_range("bytes=-4", 10), Satisfiable(6, 9));
        assert_eq!(parse_range("bytes=-40", 10), Satisfiable(0, 9));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-12", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 10), Ignore);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignore);
        assert_eq!(parse_range("items=0-1", 10), Ignore);
        assert_eq!(parse_range("bytes=x-", 10), Ignore);
        assert_eq!(parse_range("bytes=+1-", 10), Ignore);
    }

    #[test]
    fn random_offsets_are_distinct_inside_the_file_and_reproducible() {
        let a = random_offsets(20, 7, 1000);
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|&o| o > 0 && o < 1000));
        assert_eq!(a, random_offsets(20, 7, 1000));
        assert_ne!(a, random_offsets(20, 8, 1000));
        assert_eq!(random_offsets(10, 1, 4), [1, 2, 3]);
        assert!(random_offsets(3, 1, 1).is_empty());
        assert!(random_offsets(0, 1, 100).is_empty());
    }

    #[test]
    fn tls_needs_a_certificate_and_its_key() {
        let garbage = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for (chain, key) in [
            (&b""[..], &b""[..]),
            (&b"no pem"[..], &b"no pem"[..]),
            (garbage, b""),
        ] {
            let e = FirmwareServer::start_tls(vec![1u8], Faults::default(), chain, key)
                .err()
                .expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn head_parsing() {
        let r = parse_head(b"GET /a/firmware.bin HTTP/1.1\r\nHost: x\r\nrange: bytes=1-\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/a/firmware.bin")
        );
        assert_eq!(r.range.as_deref(), Some("bytes=1-"));
        assert!(r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
    }
}
