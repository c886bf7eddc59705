//! `HttpSource` and `MemorySource` at their edges: the end of a body, URLs that cannot be
//! fetched, servers that answer a redirect without a target, speak something other than HTTP,
//! reset the connection mid-body or stall past the body timeout.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ota::fetch::{Chunk, FetchError, FirmwareSource, HttpConfig, HttpSource, MemorySource};
use ota_cloud::http::{Faults, FirmwareServer};

const WAIT: Duration = Duration::from_secs(5);

/// Everything a source yields until it ends or fails: the headers, the bytes, how it stopped.
struct Drained {
    opened: Vec<ota::fetch::OpenInfo>,
    bytes: Vec<u8>,
    end: Result<(), FetchError>,
}

fn drain(src: &mut impl FirmwareSource) -> Drained {
    let mut d = Drained {
        opened: Vec::new(),
        bytes: Vec::new(),
        end: Ok(()),
    };
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the source neither ended nor failed"
        );
        match src.read(&mut buf, WAIT) {
            Ok(Chunk::Opened(info)) => d.opened.push(info),
            Ok(Chunk::Data(n)) => d.bytes.extend_from_slice(&buf[..n]),
            Ok(Chunk::Pending) => {}
            Ok(Chunk::End) => return d,
            Err(e) => {
                d.end = Err(e);
                return d;
            }
        }
    }
}

fn http(config: HttpConfig) -> HttpSource {
    HttpSource::new(config).unwrap()
}

#[test]
fn http_source_delivers_the_whole_body_then_its_end() {
    let image = ota_cloud::generate_firmware(100_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let mut src = http(HttpConfig {
        ring_size: 8 * 1024,
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
    let mut src = http(HttpConfig {
        max_url: 64,
        ..HttpConfig::default()
    });
    for url in ["ftp://h/f.bin", "h/f.bin", "", "file:///etc/passwd"] {
        assert_eq!(src.open(url, 0), Err(FetchError::Url), "{url:?}");
    }
    let long = format!("http://h/{}", "a".repeat(64));
    assert_eq!(src.open(&long, 0), Err(FetchError::Url));
    let mut strict = http(HttpConfig {
        allow_plain_http: false,
        ..HttpConfig::default()
    });
    assert_eq!(strict.open("http://h/f.bin", 0), Err(FetchError::PlainHttp));
    let https = if cfg!(feature = "tls") {
        Ok(())
    } else {
        Err(FetchError::Tls)
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
        let mut src = http(HttpConfig::default());
        src.open(url, 0).unwrap();
        let d = drain(&mut src);
        assert_eq!(d.end, Err(FetchError::Url), "{url}");
        assert!(!FetchError::Url.is_transient());
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
    let mut src = http(HttpConfig::default());
    src.open(&slow.url(), 0).unwrap();
    // The download runs only inside `read`: 50 ms of it sends the request and takes part of
    // the head, which is not handed over.
    let mut buf = [0u8; 100];
    assert_eq!(
        src.read(&mut buf, Duration::from_millis(50)),
        Ok(Chunk::Pending)
    );
    src.close();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.requests().is_empty() {
        assert!(Instant::now() < deadline, "the slow response never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
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
/// closes it, with a reset (RST) instead of a clean close when `reset`. The URL to fetch.
fn raw_server(answer: Vec<u8>, reset: bool) -> (String, JoinHandle<()>) {
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
        conn.write_all(&answer).unwrap();
        if reset {
            // Let the client take what was sent, then abort the connection.
            std::thread::sleep(Duration::from_millis(300));
            set_linger_zero(&conn);
        }
    });
    (url, handle)
}

/// SO_LINGER 0: closing the socket sends RST.
fn set_linger_zero(conn: &std::net::TcpStream) {
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
fn a_redirect_without_a_location_fails() {
    let (url, server) = raw_server(
        b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        false,
    );
    let mut src = http(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let d = drain(&mut src);
    let e = FetchError::BadResponse("redirect without a Location");
    assert_eq!(d.end, Err(e));
    assert!(d.opened.is_empty() && d.bytes.is_empty());
    assert!(!e.is_transient(), "the same answer would come again");
    server.join().unwrap();
}

#[test]
fn a_server_that_does_not_speak_http_is_a_malformed_response() {
    let (url, server) = raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), false);
    let mut src = http(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let d = drain(&mut src);
    let e = d.end.unwrap_err();
    assert!(matches!(e, FetchError::BadResponse(_)), "{e:?}");
    assert!(!e.is_transient());
    server.join().unwrap();
}

#[test]
fn a_connection_reset_mid_body_is_a_transient_network_error() {
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    answer.extend(std::iter::repeat_n(0x5a, 1000));
    let (url, server) = raw_server(answer, true);
    let mut src = http(HttpConfig::default());
    src.open(&url, 0).unwrap();
    let d = drain(&mut src);
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
            FetchError::Truncated | FetchError::Io(std::io::ErrorKind::ConnectionReset)
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
    let src = http(HttpConfig {
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
    assert_eq!(drain(&mut src).end, Err(FetchError::Timeout));
}

#[test]
fn memory_source_serves_ranges_and_refuses_offsets_past_its_image() {
    let image: &'static [u8] = b"0123456789";
    let mut src = MemorySource::new(image);
    let mut buf = [0u8; 4];
    assert_eq!(
        src.read(&mut buf, WAIT),
        Err(FetchError::BadResponse("not open"))
    );
    assert_eq!(src.open("mem:", 11), Err(FetchError::Status(416)));
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
        Err(FetchError::BadResponse("not open"))
    );
}

/// `open` in the middle of a download whose data waits unread (the socket's buffers full):
/// the old connection is dropped at once, so the open costs no wait and makes exactly one new
/// request. (Named from the worker thread this source once had.)
#[test]
fn reopening_while_the_worker_waits_for_room_is_immediate() {
    let image = ota_cloud::generate_firmware(4_000_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let mut src = http(HttpConfig {
        ring_size: 16 * 1024,
        ..HttpConfig::default()
    });
    src.open(&server.url(), 0).unwrap();
    let mut buf = [0u8; 1000];
    while !matches!(src.read(&mut buf, WAIT).unwrap(), Chunk::Data(_)) {}
    std::thread::sleep(Duration::from_millis(300)); // the ring fills up
    let t = Instant::now();
    src.open(&server.url(), 5000).unwrap();
    let took = t.elapsed();
    let first = src.read(&mut buf, WAIT).unwrap();
    assert!(matches!(first, Chunk::Opened(o) if o.range_start == Some(5000)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(took < Duration::from_millis(100), "open took {took:?}");
    assert_eq!(server.connections(), 2, "one request per open");
}
