//! The HTTPS record layer (src/tls_link.rs) against real rustls servers: KeyUpdates mid-body,
//! a cut and a clean `close_notify` mid-body resumed with Range on a new (resumed) TLS
//! connection, TLS 1.2's explicit nonces across two connections, a close-delimited body ended
//! by `close_notify`, each AES-GCM suite, and ChaCha20-Poly1305 (feature `tls-chacha20`).
//! Every download must arrive byte-exact, and the server's log must show how it came.

#![cfg(feature = "tls")]

mod common;
use common::certs::pki;
use common::firmware::aliyun_notice;
use common::recorder::{Recorder, Sent};

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ota::retry::RetryPolicy;
use ota::source::{Chunk, DownloadError, FirmwareSource, HttpConfig, HttpSource, OpenInfo};
use ota::{OtaConfig, OtaSession, OtaState};
use ota_cloud::http::{Faults, FirmwareServer, RequestLog};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::version::{TLS12, TLS13};
use rustls::SupportedProtocolVersion;

/// Upper bound of every wait (a read, a download, the server's log).
const WAIT: Duration = Duration::from_secs(10);

fn server(
    image: &[u8],
    faults: Faults,
    versions: &[&'static SupportedProtocolVersion],
) -> FirmwareServer {
    let leaf = &pki().server;
    FirmwareServer::start_tls_versions(
        image.to_vec(),
        faults,
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        versions,
    )
    .expect("HTTPS server")
}

/// A server offering only `suite` (of `version`).
fn server_with_suite(
    image: &[u8],
    faults: Faults,
    version: &'static SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
) -> FirmwareServer {
    let leaf = &pki().server;
    FirmwareServer::start_tls_suites(
        image.to_vec(),
        faults,
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        &[version],
        &[suite],
    )
    .expect("HTTPS server")
}

fn http_config() -> HttpConfig {
    HttpConfig {
        ca_pem: Some(Arc::from(pki().ca_pem.as_bytes())),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

fn source() -> HttpSource {
    HttpSource::new(http_config()).expect("HTTP source")
}

/// Reads after `open` until the body ends or fails: the head, the bytes, how it ended.
fn read_body(src: &mut HttpSource) -> (Option<OpenInfo>, Vec<u8>, Result<(), DownloadError>) {
    let mut info = None;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match src.read(&mut buf, WAIT) {
            Ok(Chunk::Opened(i)) => info = Some(i),
            Ok(Chunk::Data(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Chunk::Pending) => panic!("nothing arrived within {WAIT:?}"),
            Ok(Chunk::End) => return (info, bytes, Ok(())),
            Err(e) => return (info, bytes, Err(e)),
        }
    }
}

/// A session on a recording uplink and a real HTTPS source trusting the test CA, told to
/// upgrade to what `server` serves; retries come quickly.
fn session_for(server: &FirmwareServer) -> (OtaSession, Sent) {
    let config = OtaConfig {
        http: http_config(),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            stall_timeout: Duration::from_secs(5),
        },
        ..OtaConfig::default()
    };
    let source = HttpSource::new(config.http.clone()).expect("HTTP source");
    let sent: Sent = Arc::default();
    let session = OtaSession::new(
        "pkTlsRec",
        "devTlsRec",
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .expect("session");
    let msg = aliyun_notice(server.image(), &server.url(), "2.0.0");
    session
        .handle_message(session.downstream_topic(), msg.as_bytes())
        .expect("upgrade accepted");
    assert_eq!(session.state(), OtaState::Downloading);
    (session, sent)
}

/// Downloads through `server` in a session driven like firmware we did not write (the iotkit
/// sample's loop, see inside): asserts the image arrived byte-exact and
/// verifies, with `retries` reconnections and no failure reported; returns the server's log
/// once it holds `requests` entries.
fn session_download(server: &FirmwareServer, retries: u32, requests: usize) -> Vec<RequestLog> {
    let (session, sent) = session_for(server);
    let deadline = Instant::now() + WAIT;
    let mut image = Vec::new();
    let mut buf = vec![0u8; 4096];
    // The iotkit sample's loop: append what FetchYield returns, never rewind, report
    // FETCH_FAILED (-2) whenever it returns <= 0, leave only on IsFetchFinish.
    while !session.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not finish");
        match session.fetch_yield(&mut buf, Duration::from_millis(100)) {
            Ok(n) if n > 0 => image.extend_from_slice(&buf[..n]),
            _ => {
                let _ = session.report_progress(-2, None);
            }
        }
    }
    assert_eq!(image.len(), server.image().len());
    assert!(
        image == server.image()[..],
        "the bytes differ from the image"
    );
    assert_eq!(session.state(), OtaState::Fetched);
    assert!(session.check_firmware().unwrap());
    assert_eq!(session.retries(), retries);
    assert!(sent.lock().unwrap().is_empty(), "no failure was reported");
    // Logged when the response ends, which may be just after the client took its last byte.
    let log = server.requests_when(requests, WAIT);
    assert_eq!(log.len(), requests, "{log:?}");
    log
}

/// (range asked, status, body bytes sent) of each logged request, in arrival order.
fn summary(log: &[RequestLog]) -> Vec<(Option<&str>, u16, u64)> {
    let mut log: Vec<&RequestLog> = log.iter().collect();
    log.sort_by_key(|l| l.seq);
    log.iter()
        .map(|l| (l.range.as_deref(), l.status, l.bytes_sent))
        .collect()
}

#[test]
fn tls13_key_updates_every_50_000_bytes_are_followed() {
    let image = ota_cloud::generate_firmware(300_000);
    let faults = Faults {
        tls_key_update_every: Some(50_000),
        ..Faults::default()
    };
    let server = server(&image, faults, &[&TLS13]);
    let log = session_download(&server, 0, 1);
    assert_eq!(summary(&log), [(None, 200, 300_000)]);
    assert!(log[0].complete);
    // After 50 000, 100 000, ..., 250 000 bytes: the receive keys changed five times.
    assert_eq!(server.tls_key_updates(), 5);
}

#[test]
fn tls13_key_updates_between_small_records_are_followed() {
    // A KeyUpdate after every 1 000 bytes: several of them arrive in one read of the socket.
    let image = ota_cloud::generate_firmware(100_000);
    let faults = Faults {
        tls_key_update_every: Some(1_000),
        ..Faults::default()
    };
    let server = server(&image, faults, &[&TLS13]);
    let mut src = source();
    src.open(&server.url(), 0).unwrap();
    let (info, bytes, end) = read_body(&mut src);
    assert_eq!(end, Ok(()));
    assert_eq!(info.map(|i| i.status), Some(200));
    assert!(bytes == image, "{} bytes", bytes.len());
    assert_eq!(server.tls_key_updates(), 99);
}

/// A cut mid-body with `version`: the session goes on with Range on a new TLS connection,
/// which resumes the first one's session (a TLS 1.3 ticket the record layer gave to rustls,
/// a TLS 1.2 session ID).
fn a_cut_is_resumed_with_range(version: &'static SupportedProtocolVersion) {
    let image = ota_cloud::generate_firmware(300_000);
    let faults = Faults {
        cuts: vec![120_000],
        ..Faults::default()
    };
    let server = server(&image, faults, &[version]);
    let log = session_download(&server, 1, 2);
    assert_eq!(
        summary(&log),
        [(None, 200, 120_000), (Some("bytes=120000-"), 206, 180_000)]
    );
    assert_eq!(server.connections(), 2);
    assert_eq!(server.tls_resumed_connections(), 1);
}

#[test]
fn tls13_a_cut_mid_body_is_resumed_with_range_on_a_new_connection() {
    a_cut_is_resumed_with_range(&TLS13);
}

/// TLS 1.2 AES-GCM: the explicit nonce of each record, and the sequence numbers of the
/// additional data starting over on the second (abbreviated) handshake.
#[test]
fn tls12_a_cut_mid_body_is_resumed_with_range_on_a_new_connection() {
    a_cut_is_resumed_with_range(&TLS12);
}

/// A cut (no `close_notify`) and a clean `close_notify` before the announced length are both
/// a truncation, and transient: the rest comes with Range.
#[test]
fn an_early_close_with_or_without_close_notify_is_a_truncation() {
    let image = ota_cloud::generate_firmware(250_000);
    for (what, faults) in [
        (
            "close_notify",
            Faults {
                tls_close_notify_at: Some(100_000),
                ..Faults::default()
            },
        ),
        (
            "cut",
            Faults {
                cut_at: Some(100_000),
                ..Faults::default()
            },
        ),
    ] {
        let server = server(&image, faults, &[&TLS13]);
        let mut src = source();
        src.open(&server.url(), 0).unwrap();
        let (info, first, end) = read_body(&mut src);
        assert_eq!(info.and_then(|i| i.content_length), Some(250_000), "{what}");
        assert_eq!(first.len(), 100_000, "{what}");
        assert_eq!(end, Err(DownloadError::Truncated), "{what}");
        assert!(DownloadError::Truncated.is_transient());
        src.open(&server.url(), 100_000).unwrap();
        let (info, rest, end) = read_body(&mut src);
        assert_eq!(end, Ok(()), "{what}");
        assert_eq!(info.and_then(|i| i.range_start), Some(100_000), "{what}");
        assert!([first, rest].concat() == image, "{what}");
        let log = server.requests_when(2, WAIT);
        assert_eq!(
            summary(&log),
            [(None, 200, 100_000), (Some("bytes=100000-"), 206, 150_000)],
            "{what}"
        );
    }
}

#[test]
fn close_notify_mid_body_is_resumed_with_range_in_a_session() {
    for version in [&TLS13, &TLS12] {
        let image = ota_cloud::generate_firmware(200_000);
        let faults = Faults {
            tls_close_notify_at: Some(77_777),
            ..Faults::default()
        };
        let server = server(&image, faults, &[version]);
        let log = session_download(&server, 1, 2);
        assert_eq!(
            summary(&log),
            [(None, 200, 77_777), (Some("bytes=77777-"), 206, 122_223)],
            "{version:?}"
        );
        assert!(log.iter().all(|l| l.complete), "{log:?}");
    }
}

/// A TLS server for one request, answered with a close-delimited body (no Content-Length):
/// `body`, then `close_notify`. The TCP connection stays open until the client closes it, so
/// only the `close_notify` can end the body. Returns the URL.
fn close_delimited_server(
    body: Vec<u8>,
    version: &'static SupportedProtocolVersion,
) -> (String, JoinHandle<()>) {
    let leaf = &pki().server;
    let config = Arc::new(
        ota_cloud::http::server_tls_config(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            &[version],
            None,
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}/firmware.bin",
        listener.local_addr().unwrap().port()
    );
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = [0u8; 2048];
        let mut got = 0;
        while !request[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            got += tls.read(&mut request[got..]).unwrap();
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap();
        tls.write_all(&body).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        // Held open until the client goes away (or WAIT passes).
        let mut rest = [0u8; 256];
        while matches!(tls.sock.read(&mut rest), Ok(n) if n > 0) {}
    });
    (url, server)
}

#[test]
fn a_close_delimited_body_ends_cleanly_at_close_notify() {
    let image = ota_cloud::generate_firmware(120_000);
    for version in [&TLS13, &TLS12] {
        let (url, server) = close_delimited_server(image.clone(), version);
        let mut src = source();
        src.open(&url, 0).unwrap();
        let (info, bytes, end) = read_body(&mut src);
        assert_eq!(end, Ok(()), "{version:?}");
        let info = info.expect("a head");
        assert_eq!((info.status, info.content_length), (200, None));
        assert!(bytes == image, "{version:?}: {} bytes", bytes.len());
        drop(src);
        server.join().unwrap();
    }
}

/// Each AES-GCM suite the client offers, on two connections (a cut, then Range).
#[test]
fn every_aes_gcm_suite_resumes_a_cut_download() {
    let image = ota_cloud::generate_firmware(100_000);
    for (version, suite) in [
        (&TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&TLS13, cs::TLS13_AES_256_GCM_SHA384),
        (&TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (&TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ] {
        let faults = Faults {
            cuts: vec![40_000],
            tls_key_update_every: Some(25_000),
            ..Faults::default()
        };
        let server = server_with_suite(&image, faults, version, suite);
        let log = session_download(&server, 1, 2);
        assert_eq!(
            summary(&log),
            [(None, 200, 40_000), (Some("bytes=40000-"), 206, 60_000)],
            "{suite:?}"
        );
        // TLS 1.3: after 25 000 bytes of each body; TLS 1.2 has no key update.
        let key_updates = if version == &TLS13 { 3 } else { 0 };
        assert_eq!(server.tls_key_updates(), key_updates, "{suite:?}");
    }
}

/// ChaCha20-Poly1305 (nonce: the IV XOR the sequence number in both versions), with a cut,
/// and key updates in TLS 1.3.
#[cfg(feature = "tls-chacha20")]
#[test]
fn chacha20_poly1305_only_servers_are_met() {
    let image = ota_cloud::generate_firmware(200_000);
    for (version, suite) in [
        (&TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (&TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ] {
        let faults = Faults {
            cuts: vec![90_000],
            tls_key_update_every: Some(40_000),
            ..Faults::default()
        };
        let server = server_with_suite(&image, faults, version, suite);
        let log = session_download(&server, 1, 2);
        assert_eq!(
            summary(&log),
            [(None, 200, 90_000), (Some("bytes=90000-"), 206, 110_000)],
            "{suite:?}"
        );
        let key_updates = if version == &TLS13 { 4 } else { 0 };
        assert_eq!(server.tls_key_updates(), key_updates, "{suite:?}");
        assert_eq!(server.tls_resumed_connections(), 1, "{suite:?}");
    }
}

/// Without the `tls-chacha20` feature the client offers AES-GCM only: a server that speaks
/// nothing else fails the handshake, which no retry can mend.
#[cfg(not(feature = "tls-chacha20"))]
#[test]
fn without_the_feature_a_chacha20_only_server_is_a_handshake_failure() {
    let image = ota_cloud::generate_firmware(1_000);
    for (version, suite) in [
        (&TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (&TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ] {
        let server = server_with_suite(&image, Faults::default(), version, suite);
        let mut src = source();
        src.open(&server.url(), 0).unwrap();
        let (info, _, end) = read_body(&mut src);
        assert_eq!((info, end), (None, Err(DownloadError::Tls)), "{suite:?}");
        assert!(!DownloadError::Tls.is_transient());
        assert!(server.requests().is_empty());
    }
}

// Records no rustls server sends: rustls makes the handshake and reads the request, then the
// test writes the server's records itself with the keys rustls hands over (ring's AEAD).

mod forged {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use ring::aead;
    use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite, SupportedProtocolVersion};

    use super::{pki, WAIT};

    pub const APPLICATION_DATA: u8 = 23;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;

    /// The server's side after the handshake: its sending keys, and the socket.
    pub struct Forger {
        sock: TcpStream,
        key: aead::LessSafeKey,
        iv: [u8; aead::NONCE_LEN],
        seq: u64,
        tls13: bool,
        /// TLS 1.2 AES-GCM: the explicit nonce of the next record. rustls sends the IV XOR
        /// the sequence number there; any unique value is valid (OpenSSL counts from the
        /// IV), so these are neither, and a reader must take each from its record.
        explicit: Option<u64>,
    }

    fn xor_nonce(iv: &[u8; aead::NONCE_LEN], seq: u64) -> [u8; aead::NONCE_LEN] {
        let mut n = *iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    impl Forger {
        /// One record of type `typ` holding `content`, encrypted; TLS 1.3 puts `padding`
        /// zeros after the inner type. The record's bytes (not sent).
        pub fn seal(&mut self, typ: u8, content: &[u8], padding: usize) -> Vec<u8> {
            let seq = self.seq;
            self.seq += 1;
            let mut payload = content.to_vec();
            let header = |typ: u8, len: usize| {
                let len = u16::try_from(len).unwrap().to_be_bytes();
                vec![typ, 3, 3, len[0], len[1]]
            };
            if self.tls13 {
                payload.push(typ);
                payload.resize(payload.len() + padding, 0);
                let mut record = header(APPLICATION_DATA, payload.len() + 16);
                let nonce = aead::Nonce::assume_unique_for_key(xor_nonce(&self.iv, seq));
                let aad: [u8; 5] = record[..].try_into().unwrap();
                self.key
                    .seal_in_place_append_tag(nonce, aead::Aad::from(aad), &mut payload)
                    .unwrap();
                record.extend_from_slice(&payload);
                return record;
            }
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8..11].copy_from_slice(&[typ, 3, 3]);
            aad[11..].copy_from_slice(&(content.len() as u16).to_be_bytes());
            let (nonce, explicit) = match self.explicit.as_mut() {
                Some(next) => {
                    let e = *next;
                    *next = next.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let mut n = [0u8; aead::NONCE_LEN];
                    n[..4].copy_from_slice(&self.iv[..4]);
                    n[4..].copy_from_slice(&e.to_be_bytes());
                    (n, Some(e.to_be_bytes()))
                }
                None => (xor_nonce(&self.iv, seq), None),
            };
            self.key
                .seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut payload,
                )
                .unwrap();
            let explicit = explicit.as_ref().map_or(&[][..], |e| &e[..]);
            let mut record = header(typ, explicit.len() + payload.len());
            record.extend_from_slice(explicit);
            record.extend_from_slice(&payload);
            record
        }

        /// Sends one record (see [`seal`](Self::seal)).
        pub fn record(&mut self, typ: u8, content: &[u8], padding: usize) {
            let record = self.seal(typ, content, padding);
            self.raw(&record);
        }

        /// Sends `bytes` as application data, in records of at most 2^14 bytes.
        pub fn data(&mut self, bytes: &[u8]) {
            for part in bytes.chunks(16384) {
                self.record(APPLICATION_DATA, part, 0);
            }
        }

        /// Sends `bytes` as they are.
        pub fn raw(&mut self, bytes: &[u8]) {
            self.sock.write_all(bytes).unwrap();
        }

        /// Sends `bytes` one byte per write.
        pub fn trickle(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.sock.write_all(std::slice::from_ref(b)).unwrap();
            }
        }
    }

    /// A server for one connection: rustls makes the handshake (`version`, `suite`, the
    /// test CA's localhost certificate) and reads the request, `script` sends the answer;
    /// then the server closes (without `close_notify` unless the script sent one) and waits
    /// for the client to go. Returns the URL.
    pub fn server(
        version: &'static SupportedProtocolVersion,
        suite: SupportedCipherSuite,
        script: impl FnOnce(&mut Forger) + Send + 'static,
    ) -> (String, JoinHandle<()>) {
        let leaf = &pki().server;
        let mut config = ota_cloud::http::server_tls_config(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            &[version],
            Some(&[suite]),
        )
        .unwrap();
        config.enable_secret_extraction = true;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://localhost:{}/firmware.bin",
            listener.local_addr().unwrap().port()
        );
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(WAIT)).unwrap();
            tcp.set_nodelay(true).unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut request = [0u8; 2048];
            let mut got = 0;
            while !request[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                got += tls.read(&mut request[got..]).unwrap();
            }
            tls.flush().unwrap(); // TLS 1.3 session tickets
            let rustls::StreamOwned { conn, sock } = tls;
            let (seq, secrets) = conn.dangerous_extract_secrets().unwrap().tx;
            let (alg, key, iv, gcm) = match &secrets {
                ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                    (&aead::AES_128_GCM, key, iv, true)
                }
                ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                    (&aead::AES_256_GCM, key, iv, true)
                }
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                    (&aead::CHACHA20_POLY1305, key, iv, false)
                }
                _ => panic!("unexpected suite"),
            };
            let tls13 = version == &rustls::version::TLS13;
            let mut forger = Forger {
                sock,
                key: aead::LessSafeKey::new(aead::UnboundKey::new(alg, key.as_ref()).unwrap()),
                iv: iv.as_ref().try_into().unwrap(),
                seq,
                tls13,
                explicit: (gcm && !tls13).then_some(0x0123_4567_89ab_cdef),
            };
            script(&mut forger);
            let _ = forger.sock.shutdown(Shutdown::Write);
            let mut rest = [0u8; 256];
            while matches!(forger.sock.read(&mut rest), Ok(n) if n > 0) {}
        });
        (url, server)
    }

    /// A response head announcing `len` body bytes.
    pub fn head(len: usize) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes()
    }

    /// A handshake message: type, 24-bit length, body.
    pub fn handshake_message(typ: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut m = vec![typ, len[1], len[2], len[3]];
        m.extend_from_slice(body);
        m
    }
}

use forged::{handshake_message, head, ALERT, APPLICATION_DATA, HANDSHAKE};

/// Downloads from a forging server running `script`: the bytes and how the body ended.
fn forged_download(
    version: &'static SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
    script: impl FnOnce(&mut forged::Forger) + Send + 'static,
) -> (Vec<u8>, Result<(), DownloadError>) {
    let (url, server) = forged::server(version, suite, script);
    let mut src = source();
    src.open(&url, 0).unwrap();
    let (info, bytes, end) = read_body(&mut src);
    assert_eq!(info.map(|i| i.status), Some(200));
    drop(src);
    server.join().unwrap();
    (bytes, end)
}

#[test]
fn tls12_gcm_takes_the_nonce_of_each_record_from_the_record() {
    let image = ota_cloud::generate_firmware(60_000);
    for suite in [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ] {
        let body = image.clone();
        let (bytes, end) = forged_download(&TLS12, suite, move |f| {
            f.data(&head(body.len()));
            f.data(&body[..1]);
            f.data(&body[1..40_000]);
            f.record(APPLICATION_DATA, &[], 0); // empty: allowed for application data
            f.data(&body[40_000..]);
        });
        assert_eq!(end, Ok(()), "{suite:?}");
        assert!(bytes == image, "{suite:?}");
    }
}

#[test]
fn tls13_padding_empty_records_and_any_segmentation_are_read() {
    let image = ota_cloud::generate_firmware(70_000);
    let body = image.clone();
    let (bytes, end) = forged_download(&TLS13, cs::TLS13_AES_128_GCM_SHA256, move |f| {
        // The head one byte per write: the record is put together from many reads.
        let record = f.seal(APPLICATION_DATA, &head(body.len()), 33);
        f.trickle(&record);
        // Then many records in one write, whole and padded ones mixed, one of the largest
        // content, empty ones, one that is padding only.
        let mut burst = Vec::new();
        burst.extend(f.seal(APPLICATION_DATA, &body[..16384], 0));
        burst.extend(f.seal(APPLICATION_DATA, &[], 0));
        burst.extend(f.seal(APPLICATION_DATA, &body[16384..20_000], 200));
        burst.extend(f.seal(APPLICATION_DATA, &[], 100));
        burst.extend(f.seal(APPLICATION_DATA, &body[20_000..36_000], 239));
        for part in body[36_000..].chunks(5_000) {
            burst.extend(f.seal(APPLICATION_DATA, part, 1));
        }
        f.raw(&burst);
    });
    assert_eq!(end, Ok(()));
    assert!(bytes == image, "{} bytes", bytes.len());
}

#[test]
fn post_handshake_messages_that_are_allowed_do_not_stop_the_body() {
    let image = ota_cloud::generate_firmware(30_000);
    // TLS 1.3: session tickets rustls cannot use (only logged), two in one record.
    let body = image.clone();
    let (bytes, end) = forged_download(&TLS13, cs::TLS13_AES_256_GCM_SHA384, move |f| {
        f.data(&head(body.len()));
        f.data(&body[..10_000]);
        f.record(HANDSHAKE, &handshake_message(4, &[0; 9]), 0);
        let two = [handshake_message(4, &[1; 20]), handshake_message(4, &[])].concat();
        f.record(HANDSHAKE, &two, 0);
        f.data(&body[10_000..]);
    });
    assert_eq!(end, Ok(()));
    assert!(bytes == image);
    // TLS 1.2: a renegotiation request, declined by not answering it.
    let body = image.clone();
    let (bytes, end) = forged_download(
        &TLS12,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        move |f| {
            f.data(&head(body.len()));
            f.data(&body[..10_000]);
            f.record(HANDSHAKE, &handshake_message(0, &[]), 0);
            f.data(&body[10_000..]);
        },
    );
    assert_eq!(end, Ok(()));
    assert!(bytes == image);
}

/// What a forging server sends after the head and 1 000 body bytes of 5 000, before it closes
/// without close_notify: a record the layer must refuse (the download fails at once with
/// `TlsBroken`; had it been accepted, the close would be a plain truncation).
type Bad = fn(&mut forged::Forger);

fn refused(version: &'static SupportedProtocolVersion, cases: &[(&str, Bad)]) {
    let suite = if version == &TLS13 {
        cs::TLS13_AES_128_GCM_SHA256
    } else {
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    };
    let mut accepted = Vec::new();
    for &(what, bad) in cases {
        let (bytes, end) = forged_download(version, suite, move |f| {
            f.data(&head(5_000));
            f.data(&[7; 1_000]);
            bad(f);
        });
        if (bytes.len(), end) != (1_000, Err(DownloadError::TlsBroken)) {
            accepted.push((what, bytes.len(), end));
        }
    }
    assert!(accepted.is_empty(), "{version:?}: {accepted:?}");
}

#[test]
fn records_that_must_be_refused_in_either_version() {
    let cases: &[(&str, Bad)] = &[
        ("content over 2^14", |f| {
            f.record(APPLICATION_DATA, &[7; 16385], 0)
        }),
        ("a header announcing over 2^14 + 256", |f| {
            f.raw(&[APPLICATION_DATA, 3, 3, 0x41, 0x01]);
            f.raw(&[0; 64]);
        }),
        ("a tag that does not match", |f| {
            let mut r = f.seal(APPLICATION_DATA, &[7; 100], 0);
            let last = r.len() - 1;
            r[last] ^= 1;
            f.raw(&r);
        }),
        ("a warning alert other than close_notify", |f| {
            f.record(ALERT, &[1, 90], 0) // user_canceled
        }),
        ("a fatal alert", |f| f.record(ALERT, &[2, 80], 0)),
        ("a malformed alert", |f| f.record(ALERT, &[1, 0, 0], 0)),
        ("change_cipher_spec after the handshake", |f| {
            f.raw(&[20, 3, 3, 0, 1, 1])
        }),
        ("a handshake message split across records", |f| {
            let ticket = handshake_message(4, &[0; 40]);
            f.record(HANDSHAKE, &ticket[..10], 0);
            f.record(HANDSHAKE, &ticket[10..], 0);
        }),
        ("an unknown record type", |f| f.record(24, &[1, 2, 3], 0)),
    ];
    refused(&TLS13, cases);
    refused(&TLS12, cases);
}

#[test]
fn tls13_records_that_must_be_refused() {
    refused(
        &TLS13,
        &[
            ("an unencrypted handshake record", |f| {
                f.raw(&[HANDSHAKE, 3, 3, 0, 4, 4, 0, 0, 0])
            }),
            ("a record of padding only (no content type)", |f| {
                f.record(0, &[], 10) // type 0, then padding: all zeros
            }),
            ("a renegotiation request", |f| {
                f.record(HANDSHAKE, &handshake_message(0, &[]), 0)
            }),
            ("a key update followed by more in its record", |f| {
                let m = [handshake_message(24, &[0]), handshake_message(4, &[0; 9])];
                f.record(HANDSHAKE, &m.concat(), 0);
            }),
            ("a key update whose body is not one byte", |f| {
                f.record(HANDSHAKE, &handshake_message(24, &[0, 0]), 0)
            }),
            ("a key update asking for an unknown thing", |f| {
                f.record(HANDSHAKE, &handshake_message(24, &[2]), 0)
            }),
            ("content, type and padding longer than 2^14 + 1", |f| {
                f.record(APPLICATION_DATA, &[0x41; 16384], 1)
            }),
            ("an empty handshake record", |f| f.record(HANDSHAKE, &[], 0)),
        ],
    );
}

#[test]
fn tls12_records_that_must_be_refused() {
    refused(
        &TLS12,
        &[
            ("a TLS 1.3 key update", |f| {
                f.record(HANDSHAKE, &handshake_message(24, &[0]), 0)
            }),
            ("a session ticket after the handshake", |f| {
                f.record(HANDSHAKE, &handshake_message(4, &[0; 9]), 0)
            }),
            ("a record too short for its explicit nonce and tag", |f| {
                f.raw(&[APPLICATION_DATA, 3, 3, 0, 20]);
                f.raw(&[0; 20]);
            }),
            ("an empty handshake record", |f| f.record(HANDSHAKE, &[], 0)),
        ],
    );
}
