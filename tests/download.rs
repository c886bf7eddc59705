//! A download: the firmware sources (`HttpSource`, `MemorySource`) at their edges — the end of
//! a body, URLs that cannot be fetched, servers that answer a redirect without a target, speak
//! something other than HTTP, reset the connection or stall —, `HttpSource::read` keeping its
//! deadline against servers that misbehave at every stage while reads that never wait take the
//! download on from wherever the last one stopped, and what a download's state in the engine
//! lives as long as.

mod common;
use common::certs::pki;
use common::firmware::image;
use common::recorder::{payloads, Recorder, Sent};
use common::wait;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ota::error::Error;
use ota::ota::Once;
use ota::retry::RetryPolicy;
use ota::source::{Chunk, DownloadError, FirmwareSource, HttpConfig, HttpSource, MemorySource};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::Firmware;
use ota_cloud::http::{Faults, FirmwareServer};

const WAIT: Duration = Duration::from_secs(5);

/// Slack allowed past a read's timeout (a shared 2-core machine).
const SLACK: Duration = Duration::from_millis(400);

/// An `HttpSource` with `config`, trusting the test CA.
fn source(config: HttpConfig) -> HttpSource {
    HttpSource::new(HttpConfig {
        ca_pem: Some(Arc::from(pki().ca_pem.as_bytes())),
        ..config
    })
    .unwrap()
}

/// One read, timed: what it returned and how long it took.
fn timed_read(src: &mut HttpSource, timeout: Duration) -> (Result<Chunk, DownloadError>, Duration) {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    let r = src.read(&mut buf, timeout);
    (r, t.elapsed())
}

/// Everything a source yields until it ends or fails: the headers, the bytes, how it stopped.
struct Drained {
    opened: Vec<ota::source::OpenInfo>,
    bytes: Vec<u8>,
    end: Result<(), DownloadError>,
}

fn drain(src: &mut impl FirmwareSource) -> Drained {
    let mut d = Drained {
        opened: Vec::new(),
        bytes: Vec::new(),
        end: Ok(()),
    };
    drain_until(src, &mut d, |_| false);
    d
}

/// Reads into `d` until the source ends or fails, or `enough` holds for what was read.
fn drain_until(src: &mut impl FirmwareSource, d: &mut Drained, enough: impl Fn(&Drained) -> bool) {
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !enough(d) {
        assert!(
            Instant::now() < deadline,
            "the source neither ended nor failed"
        );
        match src.read(&mut buf, WAIT) {
            Ok(Chunk::Opened(info)) => d.opened.push(info),
            Ok(Chunk::Data(n)) => d.bytes.extend_from_slice(&buf[..n]),
            Ok(Chunk::Pending) => {}
            Ok(Chunk::End) => return,
            Err(e) => {
                d.end = Err(e);
                return;
            }
        }
    }
}

/// Listens for one download on 127.0.0.1: the URL to fetch, and the listener.
fn listen() -> (String, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/f.bin", listener.local_addr().unwrap());
    (url, listener)
}

/// Accepts one connection and reads its request head; `None` when the client left first.
fn accept_request(listener: &TcpListener) -> Option<TcpStream> {
    let (mut conn, _) = listener.accept().unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(conn)
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

/// `HttpSource` and `MemorySource` at their edges.
mod sources {
    use super::*;

    #[test]
    fn http_source_delivers_the_whole_body_then_its_end() {
        let image = ota_cloud::generate_firmware(100_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let mut src = source(HttpConfig {
            receive_buffer: 8 * 1024,
            ..HttpConfig::default()
        });
        src.open(&server.url(), 0).unwrap();
        let d = drain(&mut src);
        assert_eq!(d.end, Ok(()));
        assert_eq!(d.opened.len(), 1);
        assert_eq!(
            (d.opened[0].status, d.opened[0].content_length),
            (200, Some(100_000))
        );
        assert!(d.bytes == image);
        // Again from an offset: a partial answer for the rest, then the end.
        src.open(&server.url(), 99_000).unwrap();
        let d = drain(&mut src);
        assert_eq!(d.end, Ok(()));
        let o = d.opened[0];
        assert_eq!(
            (o.status, o.content_length, o.range_start, o.range_total),
            (206, Some(1000), Some(99_000), Some(100_000))
        );
        assert!(d.bytes == image[99_000..]);
    }

    #[test]
    fn urls_that_cannot_be_fetched_are_refused_at_open() {
        let mut src = source(HttpConfig {
            max_url: 64,
            ..HttpConfig::default()
        });
        for url in ["ftp://h/f.bin", "h/f.bin", "", "file:///etc/passwd"] {
            assert_eq!(src.open(url, 0), Err(DownloadError::Url), "{url:?}");
        }
        let long = format!("http://h/{}", "a".repeat(64));
        assert_eq!(src.open(&long, 0), Err(DownloadError::Url));
        let mut strict = source(HttpConfig {
            allow_plain_http: false,
            ..HttpConfig::default()
        });
        assert_eq!(
            strict.open("http://h/f.bin", 0),
            Err(DownloadError::PlainHttp)
        );
        let https = if cfg!(feature = "tls") {
            Ok(())
        } else {
            Err(DownloadError::Tls)
        };
        assert_eq!(strict.open("HTTPS://h/f.bin", 0), https);
        strict.close();
    }

    #[test]
    fn urls_the_http_client_cannot_parse_fail_for_good() {
        for url in [
            "http://exa mple/f.bin",
            "http://[::1/f.bin",
            "http:///f.bin",
        ] {
            let mut src = source(HttpConfig::default());
            src.open(url, 0).unwrap();
            let d = drain(&mut src);
            assert_eq!(d.end, Err(DownloadError::Url), "{url}");
            assert!(!DownloadError::Url.is_transient());
        }
    }

    #[test]
    fn a_download_closed_before_its_headers_delivers_nothing() {
        // The head comes one byte per 3 ms (about half a second); the download is abandoned
        // before it is complete.
        let image = ota_cloud::generate_firmware(30_000);
        let slow = FirmwareServer::start_with(
            image.clone(),
            Faults {
                slow_head_ms: Some(3),
                ..Faults::default()
            },
        )
        .unwrap();
        let mut src = source(HttpConfig::default());
        src.open(&slow.url(), 0).unwrap();
        // The download runs only inside `read`: 50 ms of it sends the request and takes part of
        // the head, which is not handed over.
        let mut buf = [0u8; 100];
        assert_eq!(
            src.read(&mut buf, Duration::from_millis(50)),
            Ok(Chunk::Pending)
        );
        src.close();
        assert!(
            !slow.requests_when(1, Duration::from_secs(20)).is_empty(),
            "the slow response never ended"
        );
        // All of the response has been sent by now: a source that had kept its connection
        // would have it to hand over.
        assert_eq!(
            src.read(&mut buf, Duration::from_millis(200)),
            Ok(Chunk::Pending),
            "the abandoned response is not handed over"
        );
        // The next download is served at once, from the new server.
        let fast = FirmwareServer::start(image.clone()).unwrap();
        let t = Instant::now();
        src.open(&fast.url(), 0).unwrap();
        let d = drain(&mut src);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!((d.end, d.opened.len()), (Ok(()), 1));
        assert!(d.bytes == image);
        assert_eq!(slow.connections(), 1);
    }

    /// Answers one connection on 127.0.0.1 with `answer` (after reading the request head), then
    /// closes it. The URL to fetch.
    fn raw_server(answer: Vec<u8>) -> (String, JoinHandle<()>) {
        let (url, listener) = listen();
        let handle = std::thread::spawn(move || {
            if let Some(mut conn) = accept_request(&listener) {
                conn.write_all(&answer).unwrap();
            }
        });
        (url, handle)
    }

    #[test]
    fn a_redirect_without_a_location_fails() {
        let (url, server) = raw_server(
            b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        );
        let mut src = source(HttpConfig::default());
        src.open(&url, 0).unwrap();
        let d = drain(&mut src);
        let e = DownloadError::BadResponse("redirect without a Location");
        assert_eq!(d.end, Err(e));
        assert!(d.opened.is_empty() && d.bytes.is_empty());
        assert!(!e.is_transient(), "the same answer would come again");
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_does_not_speak_http_is_a_malformed_response() {
        let (url, server) = raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec());
        let mut src = source(HttpConfig::default());
        src.open(&url, 0).unwrap();
        let d = drain(&mut src);
        let e = d.end.unwrap_err();
        assert!(matches!(e, DownloadError::BadResponse(_)), "{e:?}");
        assert!(!e.is_transient());
        server.join().unwrap();
    }

    #[test]
    fn a_connection_reset_mid_body_is_a_transient_network_error() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        answer.extend(std::iter::repeat_n(0x5a, 1000));
        let (url, listener) = listen();
        let (taken, taken_rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let mut conn = accept_request(&listener).expect("a request");
            conn.write_all(&answer).unwrap();
            // Abort the connection once the client has taken what was sent.
            taken_rx
                .recv_timeout(WAIT)
                .expect("the client took the bytes");
            reset_on_close(&conn);
        });
        let mut src = source(HttpConfig::default());
        src.open(&url, 0).unwrap();
        let mut d = Drained {
            opened: Vec::new(),
            bytes: Vec::new(),
            end: Ok(()),
        };
        drain_until(&mut src, &mut d, |d| d.bytes.len() == 1000);
        taken.send(()).unwrap();
        drain_until(&mut src, &mut d, |_| false);
        assert_eq!(d.opened.len(), 1);
        assert_eq!(d.opened[0].content_length, Some(100_000));
        assert_eq!(
            d.bytes,
            vec![0x5a; 1000],
            "the bytes before the reset count"
        );
        // A reset may also read as an early end of the body.
        let e = d.end.unwrap_err();
        assert!(
            matches!(
                e,
                DownloadError::Truncated | DownloadError::Io(std::io::ErrorKind::ConnectionReset)
            ),
            "{e:?}"
        );
        assert!(e.is_transient(), "a resume from byte 1000 may succeed");
        server.join().unwrap();
    }

    /// A server that stops for 1.5 s after 20 000 bytes, and a source with a 400 ms body timeout.
    fn stalled_body() -> (FirmwareServer, Vec<u8>, HttpSource) {
        let image = ota_cloud::generate_firmware(60_000);
        let server = FirmwareServer::start_with(
            image.clone(),
            Faults {
                stall_once: Some((20_000, 1500)),
                ..Faults::default()
            },
        )
        .unwrap();
        let src = source(HttpConfig {
            body_timeout: Duration::from_millis(400),
            ..HttpConfig::default()
        });
        (server, image, src)
    }

    #[test]
    fn a_body_stalled_past_the_body_timeout_ends_the_download_for_a_retry() {
        let (server, image, mut src) = stalled_body();
        let t = Instant::now();
        src.open(&server.url(), 0).unwrap();
        let d = drain(&mut src);
        assert!(
            t.elapsed() < Duration::from_millis(1400),
            "{:?}",
            t.elapsed()
        );
        assert!(d.bytes == image[..20_000], "{} bytes", d.bytes.len());
        let e = d.end.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }

    /// The body timeout must come out as a timeout (reported as one: Tencent −1), not a plain
    /// network error.
    #[test]
    fn a_body_stalled_past_the_body_timeout_is_a_timeout() {
        let (server, _, mut src) = stalled_body();
        src.open(&server.url(), 0).unwrap();
        assert_eq!(drain(&mut src).end, Err(DownloadError::Timeout));
    }

    #[test]
    fn memory_source_serves_ranges_and_refuses_offsets_past_its_image() {
        let image: &'static [u8] = b"0123456789";
        let mut src = MemorySource::new(image);
        let mut buf = [0u8; 4];
        assert_eq!(
            src.read(&mut buf, WAIT),
            Err(DownloadError::BadResponse("not open"))
        );
        assert_eq!(src.open("mem:", 11), Err(DownloadError::Status(416)));
        src.open("mem:", 10).unwrap();
        let d = drain(&mut src);
        assert_eq!(d.opened[0].content_length, Some(0));
        assert!(d.bytes.is_empty() && d.end.is_ok());
        src.chunk = 3;
        src.open("mem:", 4).unwrap();
        let d = drain(&mut src);
        assert_eq!(
            (d.opened[0].status, d.opened[0].range_start),
            (206, Some(4))
        );
        assert_eq!(d.bytes, b"456789");
        src.close();
        assert_eq!(
            src.read(&mut buf, WAIT),
            Err(DownloadError::BadResponse("not open"))
        );
    }

    /// `open` in the middle of a download whose data waits unread (a quarter MiB and more in the
    /// socket buffers): the old connection is dropped at once, so the open costs no wait and
    /// makes exactly one new request. (Named from the worker thread this source once had.)
    #[test]
    fn reopening_while_the_worker_waits_for_room_is_immediate() {
        let image = ota_cloud::generate_firmware(4_000_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let mut src = source(HttpConfig {
            receive_buffer: 16 * 1024,
            ..HttpConfig::default()
        });
        src.open(&server.url(), 0).unwrap();
        let mut buf = [0u8; 1000];
        while !matches!(src.read(&mut buf, WAIT).unwrap(), Chunk::Data(_)) {}
        wait::until("unread data in the socket buffers", WAIT, || {
            server.image_bytes_sent() >= 256 * 1024
        });
        let t = Instant::now();
        src.open(&server.url(), 5000).unwrap();
        let took = t.elapsed();
        let first = src.read(&mut buf, WAIT).unwrap();
        assert!(matches!(first, Chunk::Opened(o) if o.range_start == Some(5000)));
        assert!(took < Duration::from_millis(100), "open took {took:?}");
        assert_eq!(server.connections(), 2);
        assert!(
            wait::never_within(Duration::from_millis(300), || server.connections() > 2),
            "one request per open"
        );
    }
}

/// `HttpSource::read` keeps its deadline against servers that misbehave at every stage (accept
/// and never answer, one byte a second, close after the head, reset during the TLS handshake), and
/// a download driven by reads that never wait goes on from wherever the last one stopped:
/// mid-connect, mid-handshake, mid-head, mid-body, mid-chunk.
mod deadlines {
    use super::*;

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
            assert_eq!(r, Err(DownloadError::Timeout), "{scheme}");
            assert!(started.elapsed() >= Duration::from_millis(1500), "{scheme}");
            assert!(
                took < Duration::from_millis(1500) + SLACK,
                "{scheme}: {took:?}"
            );
            assert!(DownloadError::Timeout.is_transient());
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
        let (url, listener) = listen();
        let handle = std::thread::spawn(move || {
            let Some(mut conn) = accept_request(&listener) else {
                return;
            };
            // In pieces of 7 bytes: chunk-size lines and chunks are split across reads.
            for piece in answer.chunks(7) {
                if conn.write_all(piece).is_err() {
                    return;
                }
                if !pause.is_zero() {
                    // A server that trickles: the fault under test, not a synchronisation.
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
        assert_eq!(r, Err(DownloadError::Truncated));
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(DownloadError::Truncated.is_transient());
        server.join().unwrap();
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
                DownloadError::Io(std::io::ErrorKind::ConnectionReset)
                    | DownloadError::Io(std::io::ErrorKind::UnexpectedEof)
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
                    // The firmware's other work between polls, not a synchronisation.
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
            receive_buffer: 0, // the smallest receive buffer: the head's
            max_header_bytes: 1024,
            ..HttpConfig::default()
        });
        let (bytes, _) = poll_download(&mut src, &url);
        assert!(bytes == body, "{} bytes", bytes.len());
        server.join().unwrap();
    }

    #[test]
    fn a_chunked_body_cut_before_its_last_chunk_is_truncated() {
        let answer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
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
        assert_eq!(end, Err(DownloadError::Truncated));
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
        assert_eq!(e, DownloadError::TlsBroken);
        assert!(e.is_transient(), "a new connection may well work");
        drop(src);
        server.join().unwrap();
    }
}

/// What a download's state lives as long as: a new upgrade starts with none of the last one's
/// (offset, digest, retries, the failure already reported, what was said once), while Tencent's
/// `start_download` goes on with the same download (digest, retries) in a new cycle.
mod state {
    use super::*;

    const URL: &str = "http://h/2.0.0.bin";
    const NEXT_URL: &str = "http://h/3.0.0.bin";

    /// Serves each URL's image in reads of 300 bytes; its next opens can be made to fail.
    struct Source {
        images: [(&'static str, &'static [u8]); 2],
        image: MemorySource,
        open_errors: Arc<Mutex<VecDeque<DownloadError>>>,
        opens: Arc<Mutex<Vec<u64>>>,
    }

    impl FirmwareSource for Source {
        fn open(&mut self, url: &str, offset: u64) -> Result<(), DownloadError> {
            self.opens.lock().unwrap().push(offset);
            if let Some(e) = self.open_errors.lock().unwrap().pop_front() {
                return Err(e);
            }
            let (_, img) = self.images.iter().find(|(u, _)| *u == url).unwrap();
            self.image = MemorySource::new(img);
            self.image.chunk = 300;
            self.image.open(url, offset)
        }

        fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, DownloadError> {
            self.image.read(buf, timeout)
        }

        fn close(&mut self) {
            self.image.close();
        }
    }

    struct Rig {
        s: OtaSession,
        sent: Sent,
        open_errors: Arc<Mutex<VecDeque<DownloadError>>>,
        opens: Arc<Mutex<Vec<u64>>>,
    }

    /// A session whose source serves `img` at [`URL`] and `next` at [`NEXT_URL`], and whose
    /// downloads retry within milliseconds.
    fn rig(protocol: Protocol, img: &'static [u8], next: &'static [u8]) -> Rig {
        let sent: Sent = Arc::default();
        let open_errors = Arc::new(Mutex::new(VecDeque::new()));
        let opens = Arc::new(Mutex::new(Vec::new()));
        let config = OtaConfig {
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                stall_timeout: Duration::from_secs(5),
            },
            ..OtaConfig::for_protocol(protocol)
        };
        let source = Source {
            images: [(URL, img), (NEXT_URL, next)],
            image: MemorySource::new(img),
            open_errors: open_errors.clone(),
            opens: opens.clone(),
        };
        let s = OtaSession::new(
            "pk",
            "dn",
            config,
            Box::new(Recorder(sent.clone())),
            Box::new(source),
        )
        .unwrap();
        Rig {
            s,
            sent,
            open_errors,
            opens,
        }
    }

    impl Rig {
        fn announce(&self, msg: &str) {
            self.s
                .handle_message(self.s.downstream_topic(), msg.as_bytes())
                .unwrap();
        }

        fn fetch(&self) -> Result<Vec<u8>, Error> {
            let mut buf = [0u8; 700];
            let n = self.s.fetch_yield(&mut buf, Duration::from_secs(1))?;
            Ok(buf[..n].to_vec())
        }

        fn fetch_rest(&self) -> Vec<u8> {
            let mut out = Vec::new();
            while !self.s.is_fetch_finished() {
                out.extend(self.fetch().unwrap());
            }
            out
        }

        fn failures(&self) -> usize {
            payloads(&self.sent)
                .iter()
                .filter(|p| p.contains(r#""step":"-"#) || p.contains("fail"))
                .count()
        }
    }

    /// The first download: one failed open (a retry), 300 bytes, then the caller gives up twice
    /// (one failure report, the second dropped and said so once).
    fn first_download_fails(r: &Rig) {
        r.open_errors
            .lock()
            .unwrap()
            .push_back(DownloadError::Connect);
        assert_eq!(r.fetch().unwrap().len(), 300);
        assert_eq!(r.s.retries(), 1);
        assert_eq!(r.s.fetched_size(), 300);
        r.s.report_progress(-1, Some("cancelled")).unwrap();
        r.s.report_progress(-1, Some("cancelled again")).unwrap();
        assert_eq!(r.failures(), 1, "{:?}", payloads(&r.sent));
        assert!(!r.s.first_in_upgrade(Once::DroppedReport), "already said");
        assert!(r.s.is_fetch_finished());
    }

    #[test]
    fn a_new_upgrade_starts_with_none_of_the_last_downloads_state() {
        let (first, second) = (image(1000, 1), image(1000, 2));
        let r = rig(Protocol::Aliyun, first, second);
        r.announce(&ota_cloud::aliyun::upgrade_message(
            &Firmware::new("2.0.0", URL, first),
            1,
        ));
        first_download_fails(&r);

        r.announce(&ota_cloud::aliyun::upgrade_message(
            &Firmware::new("3.0.0", NEXT_URL, second),
            2,
        ));
        assert!(
            r.s.is_fetching(),
            "the end was seen: the next upgrade starts"
        );
        assert_eq!(r.s.fetched_size(), 0);
        assert_eq!(r.s.retries(), 0);
        assert!(
            r.s.first_in_upgrade(Once::DroppedReport),
            "said once per upgrade"
        );
        // Its failure is not reported yet: progress goes out again.
        r.s.report_progress(10, None).unwrap();
        assert!(payloads(&r.sent).last().unwrap().contains(r#""step":"10""#));
        assert_eq!(r.fetch_rest(), second, "from byte 0");
        assert!(
            r.s.check_firmware().unwrap(),
            "digested from its first byte"
        );
        assert_eq!(r.opens.lock().unwrap().as_slice(), [0, 0, 0]);
    }

    #[test]
    fn start_download_goes_on_with_the_same_download_in_a_new_cycle() {
        let img = image(1000, 3);
        let r = rig(Protocol::Tencent, img, img);
        r.announce(&ota_cloud::tencent::update_message(&Firmware::new(
            "2.0.0", URL, img,
        )));
        first_download_fails(&r);

        // The firmware kept the 300 bytes: the download resumes at 300 with the digest it had.
        r.s.start_download(300, img.len() as u64).unwrap();
        assert!(r.s.is_fetching());
        assert_eq!(r.s.retries(), 1, "the same download's retries");
        assert!(
            !r.s.first_in_upgrade(Once::DroppedReport),
            "the same upgrade"
        );
        // A new cycle: its failure is not reported yet.
        r.s.report_progress(10, None).unwrap();
        let rest = r.fetch_rest();
        assert_eq!(rest, img[300..]);
        assert!(
            r.s.check_firmware().unwrap(),
            "the digest covers all 1000 bytes"
        );
        assert_eq!(r.opens.lock().unwrap().as_slice(), [0, 0, 300]);
    }
}
