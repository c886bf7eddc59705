//! FirmwareServer's TLS faults as a rustls client sees them: KeyUpdates at the body offsets
//! asked (counted in the raw records), a clean `close_notify` before the announced end, a cut
//! without one, cipher suites restricted, and plain HTTP left as it was.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

use ota_cloud::{generate_firmware, Faults, FirmwareServer, RequestLog};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

/// A CA and a `localhost` certificate it signed, made at test time.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "tls fault CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        Pki {
            ca_pem,
            cert_pem: leaf.signed_by(&key, &issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    })
}

fn tls_server(
    image: &[u8],
    faults: Faults,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> FirmwareServer {
    let pki = pki();
    FirmwareServer::start_tls_versions(
        image.to_vec(),
        faults,
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        versions,
    )
    .unwrap()
}

/// A client trusting the test CA, offering `suites` (all of ring's when `None`). One config
/// per test: connections made with it may resume each other's sessions.
fn client_config(suites: Option<&[rustls::SupportedCipherSuite]>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pki().ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites.to_vec();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The socket, keeping a copy of every byte received (to look at the records).
struct Tap {
    sock: TcpStream,
    received: Vec<u8>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.received.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// How a response's body ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// All `Content-Length` bytes arrived (the connection was left open).
    Complete,
    /// A `close_notify`, then the close, before the announced end.
    CloseNotify,
    /// A close without `close_notify` before the announced end.
    Cut,
}

struct Response {
    status: u16,
    body: Vec<u8>,
    end: End,
    /// Every byte the client received, handshake included.
    raw: Vec<u8>,
    suite: Option<rustls::CipherSuite>,
}

/// One GET of the firmware (with `range`) on a new TLS connection made with `config`.
fn tls_get(port: u16, config: &Arc<rustls::ClientConfig>, range: Option<&str>) -> Response {
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(
        conn,
        Tap {
            sock,
            received: Vec::new(),
        },
    );
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    write!(
        tls,
        "GET /firmware.bin HTTP/1.1\r\nHost: localhost\r\n{range}\r\n"
    )
    .unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let mut head_end = None;
    let mut length = None;
    let end = loop {
        if let (Some(h), Some(len)) = (head_end, length) {
            if got.len() >= h + len {
                assert_eq!(got.len(), h + len, "bytes past the announced length");
                break End::Complete;
            }
        }
        match tls.read(&mut buf) {
            Ok(0) => break End::CloseNotify,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break End::Cut,
            Err(e) => panic!("TLS read: {e}"),
        }
        if head_end.is_none() {
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                head_end = Some(at + 4);
                let head = std::str::from_utf8(&got[..at])
                    .unwrap()
                    .to_ascii_lowercase();
                length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
            }
        }
    };
    let head_end = head_end.expect("a whole response head");
    let status = std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap();
    Response {
        status,
        body: got.split_off(head_end),
        end,
        suite: tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        raw: std::mem::take(&mut tls.sock.received),
    }
}

/// The records in `raw`: content type and payload length.
fn records(raw: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!(rest.len() >= 5 + len, "a partial record at the end");
        out.push((rest[0], len));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty());
    out
}

/// TLS 1.3 AEAD record overhead: the inner content type and a 16-byte tag.
const OVERHEAD: usize = 17;
/// A KeyUpdate record's payload: the 5-byte message and the overhead.
const KEY_UPDATE_RECORD: usize = 5 + OVERHEAD;

/// The plaintext bytes after each KeyUpdate record of a TLS 1.3 stream, up to the next one or
/// the end (no body record here is as short as a KeyUpdate's).
fn plaintext_between_key_updates(raw: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    for (typ, len) in records(raw) {
        match (typ, len) {
            (23, KEY_UPDATE_RECORD) => {
                out.extend(run);
                run = Some(0);
            }
            (23, len) => run = run.map(|r| r + len - OVERHEAD),
            _ => {}
        }
    }
    out.extend(run);
    out
}

fn log_when(server: &FirmwareServer, n: usize) -> Vec<RequestLog> {
    server.requests_when(n, common::TIMEOUT)
}

#[test]
fn tls13_key_updates_split_each_body_at_the_offsets_asked() {
    let image = generate_firmware(130_000);
    let faults = Faults {
        tls_key_update_every: Some(30_000),
        ..Faults::default()
    };
    let server = tls_server(&image, faults, &[&rustls::version::TLS13]);
    let config = client_config(None);
    let r = tls_get(server.port(), &config, None);
    assert_eq!((r.status, r.end), (200, End::Complete));
    assert!(r.body == image);
    // After 30 000, 60 000, 90 000 and 120 000 body bytes: exactly 30 000 between two.
    assert_eq!(server.tls_key_updates(), 4);
    assert_eq!(
        plaintext_between_key_updates(&r.raw),
        [30_000, 30_000, 30_000, 10_000]
    );
    // Counted from the first byte of a ranged body, not from the image's.
    let r = tls_get(server.port(), &config, Some("bytes=10000-"));
    assert_eq!((r.status, r.end), (206, End::Complete));
    assert!(r.body == image[10_000..]);
    assert_eq!(server.tls_key_updates(), 7);
    assert_eq!(
        plaintext_between_key_updates(&r.raw),
        [30_000, 30_000, 30_000]
    );
    let log = log_when(&server, 2);
    assert!(log.iter().all(|l| l.complete), "{log:?}");
    assert_eq!(server.tls_resumed_connections(), 1, "the second resumed");
}

#[test]
fn without_the_fault_no_key_update_is_sent() {
    let image = generate_firmware(100_000);
    let server = tls_server(&image, Faults::default(), &[&rustls::version::TLS13]);
    let r = tls_get(server.port(), &client_config(None), None);
    assert!(r.body == image);
    assert_eq!(server.tls_key_updates(), 0);
    assert!(plaintext_between_key_updates(&r.raw).is_empty());
}

#[test]
fn tls12_has_no_key_update_and_serves_the_body_whole() {
    let image = generate_firmware(100_000);
    let faults = Faults {
        tls_key_update_every: Some(10_000),
        ..Faults::default()
    };
    let server = tls_server(&image, faults, &[&rustls::version::TLS12]);
    let r = tls_get(server.port(), &client_config(None), None);
    assert_eq!((r.status, r.end), (200, End::Complete));
    assert!(r.body == image);
    assert_eq!(server.tls_key_updates(), 0);
}

#[test]
fn close_notify_ends_the_first_body_cleanly_once() {
    let image = generate_firmware(100_000);
    let faults = Faults {
        tls_close_notify_at: Some(40_000),
        ..Faults::default()
    };
    let server = tls_server(&image, faults, rustls::DEFAULT_VERSIONS);
    assert!(server
        .fault_descriptions()
        .iter()
        .any(|d| d.contains("close_notify")));
    let config = client_config(None);
    let r = tls_get(server.port(), &config, None);
    assert_eq!((r.status, r.end), (200, End::CloseNotify));
    assert!(r.body == image[..40_000]);
    // Resuming from there: the fault has fired.
    let r = tls_get(server.port(), &config, Some("bytes=40000-"));
    assert_eq!((r.status, r.end), (206, End::Complete));
    assert!(r.body == image[40_000..]);
    let r = tls_get(server.port(), &config, None);
    assert_eq!(r.end, End::Complete);
    let log = log_when(&server, 3);
    let sent: Vec<_> = log.iter().map(|l| (l.bytes_sent, l.complete)).collect();
    assert_eq!(sent, [(40_000, true), (60_000, true), (100_000, true)]);
}

#[test]
fn close_notify_waits_for_a_response_that_sends_its_byte() {
    let image = generate_firmware(100_000);
    let faults = Faults {
        tls_close_notify_at: Some(10_000),
        ..Faults::default()
    };
    let server = tls_server(&image, faults, rustls::DEFAULT_VERSIONS);
    let config = client_config(None);
    let r = tls_get(server.port(), &config, Some("bytes=50000-"));
    assert_eq!(r.end, End::Complete, "starts past the offset");
    let r = tls_get(server.port(), &config, Some("bytes=0-9999"));
    assert_eq!(r.end, End::Complete, "ends before the offset");
    let r = tls_get(server.port(), &config, None);
    assert_eq!(r.end, End::CloseNotify);
    assert!(r.body == image[..10_000]);
}

#[test]
fn a_tls_cut_has_no_close_notify_and_comes_before_a_later_clean_close() {
    let image = generate_firmware(100_000);
    let faults = Faults {
        cuts: vec![20_000, 50_000],
        tls_close_notify_at: Some(50_000),
        ..Faults::default()
    };
    let server = tls_server(&image, faults, rustls::DEFAULT_VERSIONS);
    let config = client_config(None);
    let r = tls_get(server.port(), &config, None);
    assert_eq!(r.end, End::Cut);
    assert!(r.body == image[..20_000]);
    // The clean close at 50 000 is due before the cut there, which waits.
    let r = tls_get(server.port(), &config, Some("bytes=20000-"));
    assert_eq!(r.end, End::CloseNotify);
    assert!(r.body == image[20_000..50_000]);
    let r = tls_get(server.port(), &config, Some("bytes=50000-"));
    assert_eq!(r.end, End::Cut);
    assert!(r.body.is_empty());
    let r = tls_get(server.port(), &config, Some("bytes=50000-"));
    assert_eq!(r.end, End::Complete);
    assert!(r.body == image[50_000..]);
}

#[test]
fn tls_faults_leave_plain_http_unchanged() {
    let image = generate_firmware(100_000);
    let faults = Faults {
        tls_key_update_every: Some(1000),
        tls_close_notify_at: Some(5000),
        ..Faults::default()
    };
    let server = FirmwareServer::start_with(image.clone(), faults).unwrap();
    assert!(common::http_get(&server.url()) == image);
    assert!(common::http_get(&server.url()) == image);
    let log = log_when(&server, 2);
    let sent: Vec<_> = log.iter().map(|l| (l.bytes_sent, l.complete)).collect();
    assert_eq!(sent, [(100_000, true), (100_000, true)]);
    assert_eq!(server.tls_key_updates(), 0);
}

#[test]
fn a_server_restricted_to_chacha20_meets_only_clients_that_offer_it() {
    let image = generate_firmware(50_000);
    let pki = pki();
    for (version, suite) in [
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        let server = FirmwareServer::start_tls_suites(
            image.clone(),
            Faults::default(),
            pki.cert_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            &[version],
            &[suite],
        )
        .unwrap();
        let r = tls_get(server.port(), &client_config(None), None);
        assert_eq!(r.suite, Some(suite.suite()));
        assert!(r.body == image);
        // A client without ChaCha20 finds no suite in common.
        let aes_only = client_config(Some(&[
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ]));
        let sock = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        sock.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        let conn =
            rustls::ClientConnection::new(aes_only, ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        assert!(tls.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
    // Suites that fit none of the versions asked are refused.
    let e = FirmwareServer::start_tls_suites(
        image,
        Faults::default(),
        pki.cert_pem.as_bytes(),
        pki.key_pem.as_bytes(),
        &[&rustls::version::TLS12],
        &[cs::TLS13_CHACHA20_POLY1305_SHA256],
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn resumed_tls_connections_are_counted() {
    let image = generate_firmware(10_000);
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let server = tls_server(&image, Faults::default(), versions);
        let config = client_config(None);
        for _ in 0..3 {
            assert!(tls_get(server.port(), &config, None).body == image);
        }
        // A client with a config of its own has nothing to resume.
        assert!(tls_get(server.port(), &client_config(None), None).body == image);
        log_when(&server, 4);
        assert_eq!(server.tls_resumed_connections(), 2, "{versions:?}");
    }
}
