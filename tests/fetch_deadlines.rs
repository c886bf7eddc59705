//! `HttpSource::read` keeps its deadline against servers that misbehave at every stage (accept
//! and never answer, one byte a second, close after the head, reset during the TLS handshake),
//! and a download driven by reads that never wait goes on from wherever the last one stopped:
//! mid-connect, mid-handshake, mid-head, mid-body, mid-chunk.

mod common;
use common::certs::pki;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ota::fetch::{Chunk, FetchError, FirmwareSource, HttpConfig, HttpSource};
use ota_cloud::http::{Faults, FirmwareServer};

/// Slack allowed past a read's timeout (a shared 2-core machine).
const SLACK: Duration = Duration::from_millis(400);

fn source(config: HttpConfig) -> HttpSource {
    HttpSource::new(HttpConfig {
        ca_pem: Some(Arc::from(pki().ca_pem.as_bytes())),
        ..config
    })
    .unwrap()
}

/// One read, timed: what it returned and how long it took.
fn timed_read(src: &mut HttpSource, timeout: Duration) -> (Result<Chunk, FetchError>, Duration) {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    let r = src.read(&mut buf, timeout);
    (r, t.elapsed())
}

/// Accepts connections and holds them open without a byte; `on_accept` runs on each.
fn silent_server(on_accept: fn(&mut TcpStream)) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        on_accept(&mut conn);
        // Held until the client goes away.
        let mut buf = [0u8; 1024];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    (format!("127.0.0.1:{port}"), handle)
}

#[test]
fn a_server_that_accepts_and_never_answers_costs_each_read_its_timeout_only() {
    for scheme in ["http", "https"] {
        let (addr, server) = silent_server(|_| {});
        let mut src = source(HttpConfig {
            connect_timeout: Duration::from_millis(1500),
            response_timeout: Duration::from_millis(1500),
            ..HttpConfig::default()
        });
        src.open(&format!("{scheme}://{addr}/f.bin"), 0).unwrap();
        let started = Instant::now();
        for _ in 0..3 {
            let (r, took) = timed_read(&mut src, Duration::from_millis(200));
            assert_eq!(r, Ok(Chunk::Pending), "{scheme}");
            assert!(
                took < Duration::from_millis(200) + SLACK,
                "{scheme}: {took:?}"
            );
        }
        // The phase's own bound (the handshake's over TLS, the head's over plain HTTP) ends it.
        let (r, took) = timed_read(&mut src, Duration::from_secs(5));
        assert_eq!(r, Err(FetchError::Timeout), "{scheme}");
        assert!(started.elapsed() >= Duration::from_millis(1500), "{scheme}");
        assert!(
            took < Duration::from_millis(1500) + SLACK,
            "{scheme}: {took:?}"
        );
        assert!(FetchError::Timeout.is_transient());
        server.join().unwrap();
    }
}

#[test]
fn a_head_of_one_byte_a_second_costs_each_read_its_timeout_only() {
    let image = ota_cloud::generate_firmware(1000);
    let server = FirmwareServer::start_with(
        image,
        Faults {
            slow_head_ms: Some(1000),
            ..Faults::default()
        },
    )
    .unwrap();
    let mut src = source(HttpConfig::default());
    src.open(&server.url(), 0).unwrap();
    for _ in 0..4 {
        let (r, took) = timed_read(&mut src, Duration::from_millis(300));
        assert_eq!(r, Ok(Chunk::Pending));
        assert!(took < Duration::from_millis(300) + SLACK, "{took:?}");
    }
    src.close();
}

/// Answers one connection with `answer` after reading the request head, then closes it.
fn answer_once(answer: Vec<u8>, pause: Duration) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/f.bin", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        // In pieces of 7 bytes: chunk-size lines and chunks are split across reads.
        for piece in answer.chunks(7) {
            if conn.write_all(piece).is_err() {
                return;
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    });
    (url, handle)
}

#[test]
fn a_server_that_closes_after_the_head_is_a_prompt_truncation() {
    let (url, server) = answer_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
        Duration::ZERO,
    );
    let mut src = source(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let (r, _) = timed_read(&mut src, Duration::from_secs(5));
    assert!(
        matches!(r, Ok(Chunk::Opened(o)) if o.content_length == Some(1000)),
        "{r:?}"
    );
    let (r, took) = timed_read(&mut src, Duration::from_secs(5));
    assert_eq!(r, Err(FetchError::Truncated));
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(FetchError::Truncated.is_transient());
    server.join().unwrap();
}

/// SO_LINGER 0: closing the socket sends RST.
fn reset_on_close(conn: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a linger of the given size.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_reset_during_the_tls_handshake_is_a_prompt_transient_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/f.bin", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // Take the ClientHello, then abort the connection.
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf);
        reset_on_close(&conn);
    });
    let mut src = source(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let (r, took) = timed_read(&mut src, Duration::from_secs(5));
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            FetchError::Io(std::io::ErrorKind::ConnectionReset)
                | FetchError::Io(std::io::ErrorKind::UnexpectedEof)
        ),
        "{e:?}"
    );
    assert!(e.is_transient(), "the next try may succeed");
    assert!(took < Duration::from_secs(1), "{took:?}");
    server.join().unwrap();
    // After the failure the source holds nothing: a read waits for the next open.
    assert_eq!(timed_read(&mut src, Duration::ZERO).0, Ok(Chunk::Pending));
}

/// Reads with a zero timeout until the end: the bytes, and how many reads found nothing.
fn poll_download(src: &mut HttpSource, url: &str) -> (Vec<u8>, usize) {
    src.open(url, 0).unwrap();
    let mut bytes = Vec::new();
    let mut pending = 0;
    let mut opened = 0;
    let mut buf = [0u8; 3000];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{url}: no end");
        match src.read(&mut buf, Duration::ZERO).unwrap() {
            Chunk::Opened(_) => opened += 1,
            Chunk::Data(n) => {
                assert_eq!(opened, 1, "data before the head");
                bytes.extend_from_slice(&buf[..n]);
            }
            Chunk::Pending => {
                pending += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            Chunk::End => return (bytes, pending),
        }
    }
}

#[test]
fn reads_that_never_wait_take_the_download_through_every_stage() {
    let image = ota_cloud::generate_firmware(200_000);
    // The head one byte per 2 ms: many reads find a partial head.
    let slow_head = Faults {
        slow_head_ms: Some(2),
        ..Faults::default()
    };
    let plain = FirmwareServer::start_with(image.clone(), slow_head.clone()).unwrap();
    let tls = FirmwareServer::start_tls(
        image.clone(),
        slow_head,
        pki().server.cert_pem.as_bytes(),
        pki().server.key_pem.as_bytes(),
    )
    .unwrap();
    let mut src = source(HttpConfig::default());
    for server in [&plain, &tls] {
        let (bytes, pending) = poll_download(&mut src, &server.url());
        assert!(bytes == image, "{}: {} bytes", server.url(), bytes.len());
        assert!(pending > 20, "{}: {pending} empty reads", server.url());
    }
}

#[test]
fn a_chunked_body_is_decoded_across_reads() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(777) {
        answer.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        answer.extend_from_slice(part);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    let (url, server) = answer_once(answer, Duration::from_micros(300));
    let mut src = source(HttpConfig {
        ring_size: 0, // the smallest receive buffer: the head's
        max_header_bytes: 1024,
        ..HttpConfig::default()
    });
    let (bytes, _) = poll_download(&mut src, &url);
    assert!(bytes == body, "{} bytes", bytes.len());
    server.join().unwrap();
}

#[test]
fn a_chunked_body_cut_before_its_last_chunk_is_truncated() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
    let (url, server) = answer_once(answer, Duration::ZERO);
    let mut src = source(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        // "For ever" is a valid timeout: the server's close ends the wait.
        match src.read(&mut buf, Duration::MAX) {
            Ok(Chunk::Data(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Chunk::Opened(_)) => {}
            other => break other,
        }
    };
    assert_eq!(got, b"hello");
    assert_eq!(end, Err(FetchError::Truncated));
    server.join().unwrap();
}

/// A TLS server that breaks the connection mid-body: a record that does not decrypt (as a
/// corrupted or forged one would be) after part of the body. The download sees a transient
/// failure at once, and the next open may succeed: unlike a failed handshake, it is retried.
#[test]
fn a_tls_record_that_does_not_decrypt_mid_body_is_a_prompt_transient_failure() {
    let pki = pki();
    let config = Arc::new(
        ota_cloud::http::server_tls_config(
            pki.server.cert_pem.as_bytes(),
            pki.server.key_pem.as_bytes(),
            rustls::DEFAULT_VERSIONS,
            None,
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}/f.bin",
        listener.local_addr().unwrap().port()
    );
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = [0u8; 2048];
        let mut got = 0;
        while !request[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            got += tls.read(&mut request[got..]).unwrap();
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .unwrap();
        tls.write_all(&[7u8; 20_000]).unwrap();
        tls.flush().unwrap();
        // An application-data record of the right shape whose contents do not decrypt.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        forged.extend_from_slice(&[0x5a; 0x40]);
        tls.sock.write_all(&forged).unwrap();
        let mut rest = [0u8; 256];
        while matches!(tls.sock.read(&mut rest), Ok(n) if n > 0) {}
    });
    let mut src = source(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let mut buf = [0u8; 4096];
    let mut body = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        assert!(
            Instant::now() < deadline,
            "the broken record was not noticed"
        );
        match src.read(&mut buf, Duration::from_secs(2)) {
            Ok(Chunk::Data(n)) => body += n,
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    // Records rustls decrypted with the broken one may be dropped with it: the retry's Range
    // starts after the last byte delivered, so nothing is lost and nothing repeated.
    assert!(body > 0 && body <= 20_000, "{body}");
    assert_eq!(e, FetchError::TlsBroken);
    assert!(e.is_transient(), "a new connection may well work");
    drop(src);
    server.join().unwrap();
}
