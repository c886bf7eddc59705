//! FirmwareServer: Range semantics, keep-alive, HEAD, and every fault, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::HttpConn;
use ota_cloud::{generate_firmware, Faults, FirmwareServer, RequestLog};

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
