//! A tiny HTTP/1.1 firmware server on 127.0.0.1 with fault injection, over plain TCP or TLS.
//!
//! Plain `std::net` and one thread per connection: the device under test downloads one image
//! from one place, so simplicity beats throughput tricks. Everything the device asked for is
//! logged ([`FirmwareServer::requests`]) so tests can check *how* it downloaded (ranges,
//! re-requests after a cut), not only what ended up on disk. The TLS mode
//! ([`FirmwareServer::start_tls`]) is rustls with the ring provider, like the device side.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The file name the image is served under; any path ending in it is accepted.
pub const FILE_NAME: &str = "firmware.bin";

/// Largest request head we accept; a firmware HTTP client never sends more.
const MAX_HEAD: usize = 16 * 1024;
/// An idle keep-alive connection is closed after this long, so handler threads never pile up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a blocked read wakes up to look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
const CHUNK: usize = 64 * 1024;

/// Faults to inject; all off by default (`Faults::default()` serves correctly).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer every request with this status (e.g. 403, 404, 500) and a short text body.
    pub status: Option<u16>,
    /// After the body, send this many extra bytes beyond what `Content-Length` announced,
    /// then close the connection (its framing is broken from then on).
    pub extra_bytes: usize,
    /// Close the connection once the file's bytes up to (not including) this absolute offset
    /// have been sent. Fires once per server, on the first response whose range contains it.
    pub cut_at: Option<u64>,
    /// Ignore `Range` headers: always answer 200 with the whole file.
    pub ignore_range: bool,
    /// Sleep this long between the response head and the body.
    pub stall_ms: u64,
}

/// One request as the server saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    /// The raw `Range` header value, if any.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes actually written (including injected extra bytes).
    pub bytes_sent: u64,
}

struct Shared {
    image: Arc<[u8]>,
    faults: Faults,
    /// `Some`: every connection is TLS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    cut_done: AtomicBool,
    stop: AtomicBool,
    log: Mutex<Vec<RequestLog>>,
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
        let config = server_tls_config(cert_chain_pem, key_pem)?;
        Self::spawn(image.into(), faults, Some(Arc::new(config)))
    }

    fn spawn(
        image: Arc<[u8]>,
        faults: Faults,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<FirmwareServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            image,
            faults,
            tls,
            cut_done: AtomicBool::new(false),
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
    pub fn url(&self) -> String {
        let port = self.addr.port();
        match self.shared.tls {
            Some(_) => format!("https://localhost:{port}/{FILE_NAME}"),
            None => format!("http://127.0.0.1:{port}/{FILE_NAME}"),
        }
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The image being served.
    pub fn image(&self) -> &Arc<[u8]> {
        &self.shared.image
    }

    /// Every request answered so far, in completion order. An entry is recorded once its
    /// response has been written, so a client may see its bytes slightly before the entry.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.log.lock().unwrap().clone()
    }
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

fn server_tls_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<rustls::ServerConfig> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("certificate and key: {e}")))
}

/// A connection the server answers on: plain TCP, or TLS over TCP.
trait Conn: Read + Write {
    /// Ends the connection after the last response.
    fn close(&mut self);
}

impl Conn for TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

impl Conn for TlsStream {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
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
    loop {
        let Some(head_len) = read_head(stream, &mut buf, shared)? else {
            return Ok(()); // peer closed, idle, or server stopping
        };
        let req = parse_head(&buf[..head_len]);
        buf.drain(..head_len);
        let Some(req) = req else {
            let _ = respond_simple(stream, 400, "bad request\n", false, false);
            return Ok(());
        };
        // GET/HEAD have no body; skip one if a client sends it anyway, to keep framing.
        skip_body(stream, &mut buf, req.body_len, shared)?;
        let keep = respond(stream, shared, &req)?;
        if !keep {
            stream.close();
            return Ok(());
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
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_head(
    stream: &mut impl Conn,
    status: u16,
    content_length: u64,
    extra_headers: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {content_length}\r\n{extra_headers}Connection: {}\r\n\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" },
    );
    stream.write_all(head.as_bytes())
}

fn respond_simple(
    stream: &mut impl Conn,
    status: u16,
    body: &str,
    head_only: bool,
    keep: bool,
) -> io::Result<u64> {
    write_head(
        stream,
        status,
        body.len() as u64,
        "Content-Type: text/plain\r\n",
        keep,
    )?;
    if head_only {
        return Ok(0);
    }
    stream.write_all(body.as_bytes())?;
    Ok(body.len() as u64)
}

/// Answers one request; returns whether the connection stays open.
fn respond(stream: &mut impl Conn, shared: &Shared, req: &Request) -> io::Result<bool> {
    let faults = &shared.faults;
    let image = &shared.image;
    let total = image.len() as u64;
    let is_head = req.method == "HEAD";
    let mut keep = req.keep_alive;
    let mut log = RequestLog {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.range.clone(),
        status: 0,
        bytes_sent: 0,
    };
    let path = req.path.split(['?', '#']).next().unwrap_or("");

    // Decide the status and, for the file, the inclusive byte range to send.
    let mut file_range = None;
    let mut text_body = "";
    let mut extra_headers = String::new();
    if let Some(status) = faults.status {
        log.status = status;
        text_body = "injected fault\n";
    } else if req.method != "GET" && !is_head {
        log.status = 405;
        text_body = "method not allowed\n";
        extra_headers.push_str("Allow: GET, HEAD\r\n");
    } else if !path.ends_with(&format!("/{FILE_NAME}")) {
        log.status = 404;
        text_body = "not found\n";
    } else {
        let range = match &req.range {
            Some(r) if !faults.ignore_range => parse_range(r, total),
            _ => RangeReq::Ignore,
        };
        extra_headers.push_str("Accept-Ranges: bytes\r\n");
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
    if faults.extra_bytes > 0 && !is_head {
        keep = false; // framing is broken on purpose: nothing sensible can follow
    }

    let body_len = match file_range {
        Some((s, e)) => e - s,
        None => text_body.len() as u64,
    };
    if !text_body.is_empty() && file_range.is_none() {
        extra_headers.push_str("Content-Type: text/plain\r\n");
    }

    let result = (|| -> io::Result<bool> {
        write_head(stream, log.status, body_len, &extra_headers, keep)?;
        if is_head {
            return Ok(keep);
        }
        if faults.stall_ms > 0 {
            thread::sleep(Duration::from_millis(faults.stall_ms));
        }
        match file_range {
            Some((s, e)) => {
                // The cut fires once, on the first response that covers the offset.
                let cut = faults
                    .cut_at
                    .filter(|&c| c >= s && c < e)
                    .filter(|_| !shared.cut_done.swap(true, Ordering::SeqCst));
                let end = cut.unwrap_or(e);
                let mut pos = s;
                while pos < end {
                    let n = (end - pos).min(CHUNK as u64);
                    stream.write_all(&image[pos as usize..(pos + n) as usize])?;
                    pos += n;
                    log.bytes_sent += n;
                }
                if cut.is_some() {
                    return Ok(false);
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
        Ok(keep)
    })();
    shared.log.lock().unwrap().push(log);
    result
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
