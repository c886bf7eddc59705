//! FirmwareServer: Range semantics, keep-alive, HEAD, and every fault, over real sockets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::HttpConn;
use ota_cloud::{generate_firmware, ExpireRule, Faults, FirmwareServer, RequestLog};

const SIZE: usize = 100_000;

/// Log entries appear once a response is fully written, possibly just after the client read it.
fn wait_for_log(server: &FirmwareServer, n: usize) -> Vec<RequestLog> {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let log = server.requests();
        if log.len() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn server(faults: Faults) -> (FirmwareServer, Vec<u8>) {
    let image = generate_firmware(SIZE);
    (
        FirmwareServer::start_with(image.clone(), faults).unwrap(),
        image,
    )
}

#[test]
fn url_and_whole_file() {
    let (server, image) = server(Faults::default());
    assert_eq!(
        server.url(),
        format!("http://127.0.0.1:{}/firmware.bin", server.port())
    );
    assert_eq!(common::http_get(&server.url()), image);
    // Any path ending in the file name (a query string too) is the firmware.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/ota/abc/firmware.bin?Expires=1&Signature=x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, image);
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    let r = conn.request("GET", "/other.bin", &[]);
    assert_eq!(r.status, 404);
    let r = conn.request("POST", "/firmware.bin", &[]);
    assert_eq!(r.status, 405);
}

#[test]
fn ranges_give_206_with_the_right_slice() {
    let (server, image) = server(Faults::default());
    let mut conn = HttpConn::open(server.port());
    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=99000-", 99000, SIZE - 1),
        ("bytes=0-0", 0, 0),
        ("bytes=50000-999999", 50000, SIZE - 1),
    ] {
        let r = conn.request("GET", "/firmware.bin", &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &image[start..=end], "{range}");
        assert_eq!(
            r.header("Content-Length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {start}-{end}/{SIZE}").as_str()),
        );
    }
    let log = wait_for_log(&server, 4);
    assert_eq!(log[0].range.as_deref(), Some("bytes=1000-1999"));
    assert_eq!((log[0].status, log[0].bytes_sent), (206, 1000));
}

#[test]
fn unsatisfiable_range_gives_416() {
    let (server, _) = server(Faults::default());
    let mut conn = HttpConn::open(server.port());
    for range in [
        format!("bytes={SIZE}-"),
        format!("bytes={}-{}", SIZE + 5, SIZE + 9),
    ] {
        let r = conn.request("GET", "/firmware.bin", &[("Range", &range)]);
        assert_eq!(r.status, 416);
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes */{SIZE}").as_str())
        );
        assert!(r.body.is_empty());
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let (server, image) = server(Faults::default());
    let mut conn = HttpConn::open(server.port());
    let r1 = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-9999")]);
    let r2 = conn.request("GET", "/firmware.bin", &[("Range", "bytes=10000-")]);
    assert_eq!((r1.status, r2.status), (206, 206));
    assert_eq!([r1.body, r2.body].concat(), image);
    // HEAD: same head as GET, no body.
    let h = conn.request("HEAD", "/firmware.bin", &[]);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("Content-Length"), Some(SIZE.to_string().as_str()));
    let r3 = conn.request("GET", "/firmware.bin", &[("Connection", "close")]);
    assert_eq!(r3.body, image);
    assert!(
        conn.read_rest().is_empty(),
        "server closes after Connection: close"
    );
    let log = wait_for_log(&server, 4);
    let methods: Vec<_> = log
        .iter()
        .map(|l| (l.method.as_str(), l.bytes_sent))
        .collect();
    assert_eq!(
        methods,
        [
            ("GET", 10000),
            ("GET", SIZE as u64 - 10000),
            ("HEAD", 0),
            ("GET", SIZE as u64)
        ]
    );
}

#[test]
fn fault_status() {
    for status in [403, 404, 500] {
        let (server, _) = server(Faults {
            status: Some(status),
            ..Faults::default()
        });
        let mut conn = HttpConn::open(server.port());
        let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-")]);
        assert_eq!(r.status, status);
        assert!(r.header("Content-Range").is_none());
        // Still keep-alive: a second request gets the same answer.
        assert_eq!(conn.request("GET", "/firmware.bin", &[]).status, status);
    }
}

#[test]
fn fault_extra_bytes() {
    let (server, image) = server(Faults {
        extra_bytes: 10,
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=90000-")]);
    assert_eq!(r.header("Content-Length"), Some("10000"));
    assert_eq!(r.body, &image[90000..]);
    assert_eq!(
        conn.read_rest().len(),
        10,
        "10 bytes beyond Content-Length, then close"
    );
    assert_eq!(wait_for_log(&server, 1)[0].bytes_sent, 10010);
}

#[test]
fn fault_cut_at_closes_once_at_the_offset() {
    let (server, image) = server(Faults {
        cut_at: Some(30_000),
        ..Faults::default()
    });
    // A range that ends before the cut is unaffected.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-999")]);
    assert_eq!(r.body, &image[..1000]);
    // The first response covering the offset stops right there and closes.
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &image[1000..30_000]);
    assert!(conn.read_rest().is_empty());
    // Resuming from the cut works, and the fault does not fire again.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=30000-")]);
    assert_eq!(r.body, &image[30_000..]);
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert_eq!(r.body, image);
}

#[test]
fn fault_ignore_range() {
    let (server, image) = server(Faults {
        ignore_range: true,
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=500-")]);
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Range").is_none());
    assert_eq!(r.body, image);
}

#[test]
fn fault_stall() {
    let (server, image) = server(Faults {
        stall_ms: 300,
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let t = Instant::now();
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.body, image);
}

#[test]
fn empty_image() {
    let server = FirmwareServer::start(Vec::new()).unwrap();
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-")]);
    assert_eq!(r.status, 416);
}

/// A request on a fresh connection, read by hand: the status, the headers and a reader left
/// at the start of the body.
fn raw_request(
    port: u16,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .expect("status line")
        .parse()
        .unwrap();
    let mut head = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    (status, head, reader)
}

/// Downloads the whole image the way a resuming device does: `Range: bytes=POS-` on a new
/// connection after every cut. Returns the image and the offsets where connections ended
/// early.
fn download_resuming(port: u16, target: &str) -> (Vec<u8>, Vec<u64>) {
    let mut got = Vec::new();
    let mut cut_at = Vec::new();
    for _ in 0..100 {
        let mut conn = HttpConn::open(port);
        let range = format!("bytes={}-", got.len());
        let r = conn.request("GET", target, &[("Range", &range)]);
        assert_eq!(r.status, 206);
        let announced: usize = r.header("Content-Length").unwrap().parse().unwrap();
        got.extend_from_slice(&r.body);
        if r.body.len() == announced {
            return (got, cut_at);
        }
        cut_at.push(got.len() as u64);
    }
    panic!("no end after 100 requests");
}

#[test]
fn fault_cuts_fire_once_each_and_a_resuming_client_completes() {
    let (server, image) = server(Faults {
        cut_at: Some(70_000),
        cuts: vec![40_000, 10_000, 40_000, 500_000],
        ..Faults::default()
    });
    assert_eq!(server.cut_offsets(), [10_000, 40_000, 70_000, 500_000]);
    let (got, cuts) = download_resuming(server.port(), "/firmware.bin");
    assert_eq!(cuts, [10_000, 40_000, 70_000]);
    assert_eq!(got, image);
    // Every cut has fired: the whole file now comes in one piece.
    assert_eq!(common::http_get(&server.url()), image);
    let log = wait_for_log(&server, 5);
    // Each request is logged by its own thread when its last byte is written, so the resumed
    // request's entry and the whole-file GET's may land in either order.
    let mut sent: Vec<u64> = log.iter().map(|l| l.bytes_sent).collect();
    sent.sort_unstable();
    assert_eq!(sent, [10_000, 30_000, 30_000, 30_000, SIZE as u64]);
}

#[test]
fn fault_cuts_are_skipped_by_a_request_that_starts_past_them() {
    let (server, image) = server(Faults {
        cuts: vec![10_000, 50_000],
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=20000-")]);
    assert_eq!(
        r.body,
        &image[20_000..50_000],
        "10 000 skipped, cut at 50 000"
    );
    // The skipped offset is still pending: the first response that covers it is cut there.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert_eq!(r.body, &image[..10_000]);
    assert!(conn.read_rest().is_empty());
    assert_eq!(common::http_get(&server.url()), image);
}

#[test]
fn fault_random_cuts_are_reproducible_and_fire_where_announced() {
    let faults = |seed| Faults {
        random_cuts: Some((5, seed)),
        ..Faults::default()
    };
    let (server, image) = server(faults(42));
    let offsets = server.cut_offsets();
    assert_eq!(offsets.len(), 5);
    assert!(
        offsets.iter().all(|&o| o > 0 && o < SIZE as u64),
        "{offsets:?}"
    );
    assert_eq!(self::server(faults(42)).0.cut_offsets(), offsets);
    assert_ne!(self::server(faults(43)).0.cut_offsets(), offsets);
    let (got, cuts) = download_resuming(server.port(), "/firmware.bin");
    assert_eq!(cuts, offsets);
    assert_eq!(got, image);
    // Too small an image for the cuts asked: every possible offset, once.
    let tiny = FirmwareServer::start_with(
        vec![1u8, 2, 3],
        Faults {
            random_cuts: Some((10, 1)),
            ..Faults::default()
        },
    )
    .unwrap();
    assert_eq!(tiny.cut_offsets(), [1, 2]);
    assert!(tiny.fault_descriptions()[0].contains("1, 2"));
}

#[test]
fn fault_stall_once_pauses_mid_body_once() {
    const AT: usize = 30_000;
    let stall = Duration::from_millis(600);
    let (server, image) = server(Faults {
        stall_once: Some((AT as u64, 600)),
        ..Faults::default()
    });
    // A response that does not reach the offset is not stalled and leaves the stall pending.
    let t = Instant::now();
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-999")]);
    assert_eq!(r.body, &image[..1000]);
    assert!(t.elapsed() < stall);

    let (status, _, mut reader) = raw_request(server.port(), "/firmware.bin", &[]);
    assert_eq!(status, 200);
    let mut before = vec![0u8; AT];
    let t = Instant::now();
    reader.read_exact(&mut before).unwrap();
    let first = t.elapsed();
    let mut after = vec![0u8; SIZE - AT];
    reader.read_exact(&mut after).unwrap();
    let stalled = t.elapsed() - first;
    assert!(
        first < stall,
        "the bytes before the offset come at once: {first:?}"
    );
    assert!(stalled >= Duration::from_millis(500), "{stalled:?}");
    assert_eq!([before, after].concat(), image);
    // Once only.
    let t = Instant::now();
    assert_eq!(common::http_get(&server.url()), image);
    assert!(t.elapsed() < stall, "{:?}", t.elapsed());
}

#[test]
fn fault_short_body_announces_everything_sends_less_and_closes() {
    let (server, image) = server(Faults {
        short_body: Some(1000),
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert_eq!(r.header("Content-Length"), Some(SIZE.to_string().as_str()));
    assert_eq!(r.body, &image[..1000]);
    assert!(conn.read_rest().is_empty(), "closed after the short body");
    // Every request, ranges too.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=50000-")]);
    assert_eq!(r.header("Content-Length"), Some("50000"));
    assert_eq!(r.body, &image[50_000..51_000]);
    assert!(conn.read_rest().is_empty());
    // A body no longer than the limit is sent whole, on a connection that stays open.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=99500-")]);
    assert_eq!(r.body, &image[99_500..]);
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-9")]);
    assert_eq!(r.body, &image[..10]);
    let sent: Vec<u64> = wait_for_log(&server, 4)
        .iter()
        .map(|l| l.bytes_sent)
        .collect();
    assert_eq!(sent, [1000, 1000, 500, 10]);
}

#[test]
fn fault_flip_byte_corrupts_every_response_that_covers_it() {
    const AT: usize = 12_345;
    let (server, image) = server(Faults {
        flip_byte_at: Some(AT as u64),
        ..Faults::default()
    });
    let mut bad = image.clone();
    bad[AT] ^= 0xff;
    let mut conn = HttpConn::open(server.port());
    assert_eq!(conn.request("GET", "/firmware.bin", &[]).body, bad);
    assert_eq!(
        conn.request("GET", "/firmware.bin", &[]).body,
        bad,
        "every time"
    );
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-999")]);
    assert_eq!(r.body, &image[..1000]);
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=12000-12999")]);
    assert_eq!(r.body, &bad[12_000..13_000]);
    assert_ne!(r.body, &image[12_000..13_000]);
}

#[test]
fn fault_close_before_headers_drops_the_first_connections() {
    let (server, image) = server(Faults {
        close_before_headers: 2,
        ..Faults::default()
    });
    for _ in 0..2 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        stream
            .write_all(b"GET /firmware.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        // A clean close (EOF), or a reset on some systems: either way, not a byte of response.
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{} bytes of response", rest.len());
    }
    assert_eq!(common::http_get(&server.url()), image);
    assert_eq!(server.connections(), 3);
    assert_eq!(
        wait_for_log(&server, 1).len(),
        1,
        "dropped connections log nothing"
    );
}

#[test]
fn fault_fail_first_answers_the_first_requests_then_serves() {
    let (server, image) = server(Faults {
        fail_first: vec![503, 503, 500],
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    for status in [503, 503] {
        let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-")]);
        assert_eq!(r.status, status);
        assert!(r.header("Content-Range").is_none());
    }
    // Counted over all connections.
    let mut other = HttpConn::open(server.port());
    assert_eq!(other.request("GET", "/firmware.bin", &[]).status, 500);
    // Entries are logged by the connections' threads once written, possibly just after the
    // client read the response: wait for the 500's before the next request on the other one.
    assert_eq!(wait_for_log(&server, 3).len(), 3);
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-")]);
    assert_eq!((r.status, r.body), (206, image.clone()));
    assert_eq!(other.request("GET", "/firmware.bin", &[]).body, image);
    let mut statuses: Vec<u16> = wait_for_log(&server, 5).iter().map(|l| l.status).collect();
    // The last two may swap for the same reason.
    statuses[3..].sort_unstable();
    assert_eq!(statuses, [503, 503, 500, 200, 206]);
}

/// The path and query of a URL from this server.
fn target(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    format!("/{}", rest.split_once('/').unwrap().1)
}

#[test]
fn fault_expire_after_requests_gives_403_until_the_url_is_renewed() {
    let (server, image) = server(Faults {
        expire_after: Some(ExpireRule::Requests(2)),
        ..Faults::default()
    });
    let url = server.url();
    assert_eq!(
        url,
        format!("http://127.0.0.1:{}/firmware.bin?token=0", server.port())
    );
    let old = target(&url);
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", &old, &[("Range", "bytes=0-49999")]);
    assert_eq!(r.status, 206);
    // Neither a wrong path nor an unsatisfiable range costs budget.
    assert_eq!(conn.request("GET", "/x.bin?token=0", &[]).status, 404);
    let r = conn.request("GET", &old, &[("Range", &format!("bytes={SIZE}-"))]);
    assert_eq!(r.status, 416);
    let r = conn.request("GET", &old, &[("Range", "bytes=50000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &image[50_000..]);
    // Spent: 403, also without a token or with one never issued.
    for t in [old.as_str(), "/firmware.bin", "/firmware.bin?token=1"] {
        let r = conn.request("GET", t, &[("Range", "bytes=0-")]);
        assert_eq!(r.status, 403, "{t}");
        assert!(r.header("Content-Range").is_none());
    }

    let fresh = server.renew_url();
    assert_eq!(
        fresh,
        format!("http://127.0.0.1:{}/firmware.bin?token=1", server.port())
    );
    assert_eq!(server.url(), fresh);
    assert_eq!(
        conn.request("GET", &old, &[]).status,
        403,
        "the old URL stays dead"
    );
    assert_eq!(common::http_get(&fresh), image);
    assert_eq!(conn.request("GET", &target(&fresh), &[]).status, 200);
    assert_eq!(conn.request("GET", &target(&fresh), &[]).status, 403);
    // A handle renews the same server from elsewhere.
    let renewer = server.url_renewer();
    let next = std::thread::spawn(move || renewer.renew()).join().unwrap();
    assert!(next.ends_with("?token=2"), "{next}");
    assert_eq!(common::http_get(&next), image);
}

#[test]
fn fault_expire_after_a_duration() {
    let (server, image) = server(Faults {
        expire_after: Some(ExpireRule::Duration(Duration::from_millis(400))),
        ..Faults::default()
    });
    let old = server.url();
    assert_eq!(
        common::http_get(&old),
        image,
        "any number of requests while young"
    );
    assert_eq!(common::http_get(&old), image);
    std::thread::sleep(Duration::from_millis(500));
    let mut conn = HttpConn::open(server.port());
    assert_eq!(conn.request("GET", &target(&old), &[]).status, 403);
    let fresh = server.renew_url();
    assert_eq!(
        common::http_get(&fresh),
        image,
        "a fresh URL is young again"
    );
    assert_eq!(conn.request("GET", &target(&old), &[]).status, 403);
}

#[test]
fn no_fault_no_token_and_renew_url_is_the_url() {
    let (server, _) = server(Faults::default());
    assert!(!server.url().contains('?'));
    assert_eq!(server.renew_url(), server.url());
    assert!(server.fault_descriptions().is_empty());
    assert!(server.cut_offsets().is_empty());
}

#[test]
fn fault_redirect_answers_everything_with_302() {
    let (server, _) = server(Faults {
        redirect: Some("{self}".into()),
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    for (method, path) in [
        ("GET", "/firmware.bin"),
        ("GET", "/elsewhere"),
        ("HEAD", "/firmware.bin"),
    ] {
        let r = conn.request(method, path, &[("Range", "bytes=0-")]);
        assert_eq!(r.status, 302, "{method} {path}");
        assert_eq!(
            r.header("Location"),
            Some(server.url().as_str()),
            "{{self}} is the server's own URL"
        );
        assert!(r.header("Content-Range").is_none());
    }
    let log = wait_for_log(&server, 3);
    assert!(log.iter().all(|l| l.status == 302 && l.complete), "{log:?}");
    // Anything else is sent as it is, relative values included.
    for location in ["next/firmware.bin", "ftp://127.0.0.1/firmware.bin"] {
        let (server, _) = self::server(Faults {
            redirect: Some(location.into()),
            ..Faults::default()
        });
        let r = HttpConn::open(server.port()).request("GET", "/firmware.bin", &[]);
        assert_eq!((r.status, r.header("Location")), (302, Some(location)));
    }
}

#[test]
fn fault_redirect_first_redirects_the_first_requests_then_serves() {
    let (server, image) = server(Faults {
        redirect_first: vec!["/a/firmware.bin".into(), "{self}?again".into()],
        ..Faults::default()
    });
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[]);
    assert_eq!(
        (r.status, r.header("Location")),
        (302, Some("/a/firmware.bin"))
    );
    let r = conn.request("GET", "/a/firmware.bin", &[]);
    let again = format!("{}?again", server.url());
    assert_eq!(
        (r.status, r.header("Location")),
        (302, Some(again.as_str()))
    );
    let r = conn.request("GET", "/firmware.bin?again", &[]);
    assert_eq!((r.status, r.body), (200, image));
    let log = wait_for_log(&server, 3);
    let statuses: Vec<(u64, u16)> = log.iter().map(|l| (l.seq, l.status)).collect();
    assert_eq!(statuses, [(0, 302), (1, 302), (2, 200)]);
}

#[test]
fn fault_endless_body_sends_the_image_then_garbage_until_the_client_leaves() {
    let (server, image) = server(Faults {
        endless_body: true,
        ..Faults::default()
    });
    // Range is ignored: 200 from byte 0, no length, close.
    let (status, head, mut reader) =
        raw_request(server.port(), "/firmware.bin", &[("Range", "bytes=500-")]);
    assert_eq!(status, 200);
    assert!(
        !head
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-length")),
        "{head:?}"
    );
    assert!(head.iter().any(|h| h == "Connection: close"), "{head:?}");
    let mut body = vec![0u8; SIZE + 1_000_000];
    reader.read_exact(&mut body).unwrap();
    assert_eq!(body[..SIZE], image[..]);
    let garbage = &body[SIZE..];
    assert!(
        garbage
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 256,
        "pseudo-random, not a constant fill"
    );
    assert!(
        server.requests().is_empty(),
        "still sending: no log entry yet"
    );
    // The client goes away: the server notices at its next writes and logs the response.
    let t = Instant::now();
    drop(reader);
    let log = wait_for_log(&server, 1);
    assert_eq!(log.len(), 1, "the server noticed the close");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!log[0].complete);
    assert!(log[0].bytes_sent >= body.len() as u64, "{log:?}");
}

#[test]
fn fault_content_length_announces_a_false_length_and_sends_the_real_bytes() {
    for announced in [1u64 << 50, 10] {
        let (server, image) = server(Faults {
            content_length: Some(announced),
            ..Faults::default()
        });
        let mut conn = HttpConn::open(server.port());
        let h = conn.request("HEAD", "/firmware.bin", &[]);
        assert_eq!(
            h.header("Content-Length"),
            Some(announced.to_string().as_str())
        );
        let (status, head, mut reader) = raw_request(server.port(), "/firmware.bin", &[]);
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("Content-Length: {announced}")),
            "{head:?}"
        );
        assert!(head.iter().any(|h| h == "Connection: close"), "{head:?}");
        let mut body = Vec::new();
        reader.read_to_end(&mut body).unwrap();
        assert!(body == image, "the real bytes, then close");
        let log = wait_for_log(&server, 2);
        let get = log.iter().find(|l| l.method == "GET").unwrap();
        assert_eq!(get.bytes_sent, SIZE as u64);
        // Error responses keep their true length.
        let mut conn = HttpConn::open(server.port());
        let r = conn.request("GET", "/other.bin", &[]);
        assert_eq!((r.status, r.header("Content-Length")), (404, Some("10")));
    }
}

#[test]
fn fault_slow_head_dribbles_the_head_and_ends_when_the_client_leaves() {
    let (server, image) = server(Faults {
        slow_head_ms: Some(20),
        ..Faults::default()
    });
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /firmware.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let mut status_line = [0u8; 17];
    stream.read_exact(&mut status_line).unwrap();
    assert_eq!(&status_line, b"HTTP/1.1 200 OK\r\n");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(16 * 20), "{took:?}");
    drop(stream);
    let log = wait_for_log(&server, 1);
    assert_eq!(log.len(), 1, "the server noticed the close");
    assert!(!log[0].complete);
    assert_eq!(log[0].bytes_sent, 0, "the body was never reached");
    // A patient client gets the whole response; the body comes at full speed.
    let (server, _) = self::server(Faults {
        slow_head_ms: Some(1),
        ..Faults::default()
    });
    assert_eq!(common::http_get(&server.url()), image);
}

#[test]
fn fault_huge_head_pads_the_head_with_header_lines() {
    for size in [1usize, 50_000, 64 * 1024] {
        let (server, image) = server(Faults {
            huge_head: size,
            ..Faults::default()
        });
        let (status, head, mut reader) = raw_request(server.port(), "/firmware.bin", &[]);
        assert_eq!(status, 200);
        let pad: Vec<&String> = head.iter().filter(|h| h.starts_with("X-Pad-")).collect();
        let bytes: usize = pad.iter().map(|l| l.len() + 2).sum();
        assert!(
            bytes >= size && bytes < size.max(12) + 12,
            "{size}: {bytes}"
        );
        assert!(pad.iter().all(|l| l.len() + 2 <= 2048));
        assert!(
            head.iter().any(|h| h == &format!("Content-Length: {SIZE}")),
            "{head:?}"
        );
        let mut body = vec![0u8; SIZE];
        reader.read_exact(&mut body).unwrap();
        assert!(body == image);
    }
}

#[test]
fn faults_are_described() {
    let (server, _) = server(Faults {
        cut_at: Some(5),
        stall_once: Some((7, 100)),
        short_body: Some(9),
        flip_byte_at: Some(11),
        close_before_headers: 1,
        fail_first: vec![503],
        expire_after: Some(ExpireRule::Requests(3)),
        ignore_range: true,
        redirect: Some("{self}".into()),
        redirect_first: vec!["/x/firmware.bin".into()],
        endless_body: true,
        content_length: Some(77),
        slow_head_ms: Some(13),
        huge_head: 4096,
        ..Faults::default()
    });
    let text = server.fault_descriptions().join("\n");
    for word in [
        "offsets 5",
        "before byte 7",
        "after 9 bytes",
        "offset 11",
        "first 1 connection",
        "503",
        "after 3 successful",
        "Range ignored",
        "redirected (302) to {self}",
        "redirected (302) to /x/firmware.bin",
        "endless body",
        "Content-Length: 77",
        "every 13 ms",
        "4096 bytes of padding",
    ] {
        assert!(text.contains(word), "{word:?} in {text}");
    }
}

/// [`FirmwareServer::image_bytes_sent`] once it is `n`, or as it is after a while: the server
/// counts bytes once written, so a client may have them slightly before the count.
fn sent_when(server: &FirmwareServer, n: u64) -> u64 {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let sent = server.image_bytes_sent();
        if sent == n || Instant::now() > deadline {
            return sent;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn on_image_sent_fires_at_the_count_with_the_bytes_before_it_delivered_and_holds_the_rest() {
    let (server, image) = server(Faults::default());
    let (fired_tx, fired) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    server.on_image_sent(30_000, move |sent| {
        fired_tx.send(sent).unwrap();
        let _ = go.recv_timeout(common::TIMEOUT);
    });
    // Below the count; HEAD and error bodies do not count.
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/firmware.bin", &[("Range", "bytes=0-19999")]);
    assert_eq!(r.body, &image[..20_000]);
    assert_eq!(conn.request("HEAD", "/firmware.bin", &[]).status, 200);
    assert_eq!(conn.request("GET", "/nothing.bin", &[]).status, 404);
    assert_eq!(server.image_bytes_sent(), 20_000);
    assert!(fired.try_recv().is_err());

    // The next response crosses it (the count runs over responses): 10 000 bytes, then the
    // server waits for the hook.
    let (status, _, mut reader) = raw_request(server.port(), "/firmware.bin", &[]);
    assert_eq!(status, 200);
    let mut before = vec![0u8; 10_000];
    reader.read_exact(&mut before).unwrap();
    assert_eq!(before, &image[..10_000]);
    assert_eq!(fired.recv_timeout(common::TIMEOUT), Ok(30_000));
    assert!(reader.buffer().is_empty());
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let held = reader.read(&mut byte).unwrap_err();
    assert!(
        matches!(
            held.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{held:?}"
    );
    assert_eq!(server.image_bytes_sent(), 30_000);
    go_tx.send(()).unwrap();
    reader
        .get_ref()
        .set_read_timeout(Some(common::TIMEOUT))
        .unwrap();
    let mut rest = vec![0u8; SIZE - 10_000];
    reader.read_exact(&mut rest).unwrap();
    assert_eq!(rest, &image[10_000..]);
    assert_eq!(
        sent_when(&server, 20_000 + SIZE as u64),
        20_000 + SIZE as u64
    );
    // Once only.
    assert_eq!(common::http_get(&server.url()), image);
    assert!(fired.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn on_image_sent_at_zero_fires_before_the_first_byte_and_equal_counts_fire_in_order() {
    let (server, image) = server(Faults::default());
    let (tx, fired) = std::sync::mpsc::channel();
    for (bytes, name) in [(0, "zero"), (SIZE as u64, "end-a"), (SIZE as u64, "end-b")] {
        let tx = tx.clone();
        server.on_image_sent(bytes, move |sent| tx.send((name, sent)).unwrap());
    }
    // A count never reached never fires.
    let never = tx.clone();
    server.on_image_sent(10 * SIZE as u64, move |_| never.send(("never", 0)).unwrap());
    assert_eq!(common::http_get(&server.url()), image);
    let got: Vec<_> = (0..3)
        .map(|_| fired.recv_timeout(common::TIMEOUT).unwrap())
        .collect();
    assert_eq!(
        got,
        [("zero", 0), ("end-a", SIZE as u64), ("end-b", SIZE as u64)]
    );
    assert!(fired.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn add_image_serves_a_second_file_at_its_own_path_whose_bytes_do_not_count() {
    let (server, image) = server(Faults::default());
    let other = ota_cloud::generate_firmware_seeded(5000, 9);
    let url = server
        .add_image("firmware-next.bin", other.clone())
        .unwrap();
    assert_eq!(
        url,
        format!("http://127.0.0.1:{}/firmware-next.bin", server.port())
    );
    assert_eq!(server.url_of("firmware-next.bin"), url);
    assert_eq!(server.url_of("firmware.bin"), server.url());
    assert_eq!(common::http_get(&url), other);
    let mut conn = HttpConn::open(server.port());
    let r = conn.request("GET", "/a/firmware-next.bin", &[("Range", "bytes=4000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), Some("bytes 4000-4999/5000"));
    assert_eq!(r.body, &other[4000..]);
    assert_eq!(server.image_bytes_sent(), 0);
    assert_eq!(common::http_get(&server.url()), image);
    assert_eq!(sent_when(&server, SIZE as u64), SIZE as u64);
    for bad in [
        "",
        "a/b.bin",
        "firmware.bin",
        "firmware-next.bin",
        "x?y",
        "x#y",
    ] {
        let e = server.add_image(bad, vec![1u8]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[test]
fn an_added_image_shares_the_url_token_and_renews_by_its_url() {
    let (server, _) = server(Faults {
        expire_after: Some(ExpireRule::Requests(1)),
        ..Faults::default()
    });
    let other = ota_cloud::generate_firmware_seeded(3000, 9);
    let url = server
        .add_image("firmware-next.bin", other.clone())
        .unwrap();
    assert!(url.ends_with("/firmware-next.bin?token=0"), "{url}");
    assert_eq!(common::http_get(&url), other);
    let mut conn = HttpConn::open(server.port());
    assert_eq!(conn.request("GET", &target(&url), &[]).status, 403);
    let fresh = server.url_renewer().renew_url_of(&url);
    assert!(fresh.ends_with("/firmware-next.bin?token=1"), "{fresh}");
    assert_eq!(common::http_get(&fresh), other);
    assert_eq!(conn.request("GET", &target(&url), &[]).status, 403);
    // Without expiry a URL renews to itself.
    let (plain, _) = self::server(Faults::default());
    let u = plain.add_image("n.bin", vec![1u8, 2]).unwrap();
    assert_eq!(plain.url_renewer().renew_url_of(&u), u);
}
