//! Hostile firmware servers (ota-cloud's fault injection) against the download limits of
//! `HttpConfig` and the engine: redirect loops and scheme downgrades, plain http refused, a
//! slow-loris head, a huge head, a huge `Content-Length` and an endless body. Each must be
//! stopped by its documented limit — checked on the server's side too (requests and
//! connections it saw, whether the client left), so a test cannot pass by luck — and end in
//! the protocol's failure report (Aliyun progress step -2 or -3) with a clear error.

mod common;
use common::certs::pki;
use common::firmware::aliyun_notice;
use common::recorder::{payloads, Recorder, Sent};
use common::wait;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::retry::RetryPolicy;
use ota::source::{HttpConfig, HttpSource};
use ota::{OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::http::{Faults, FirmwareServer, RequestLog};

const SIZE: usize = 200_000;
/// Upper bound of any one download in these tests.
const WAIT: Duration = Duration::from_secs(60);
/// How long a server is watched for a connection that must not come.
const ABSENCE: Duration = Duration::from_millis(200);

fn image() -> Vec<u8> {
    ota_cloud::generate_firmware(SIZE)
}

/// Retries that are quick, and patient enough that only the limit under test ends a try.
fn retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(60),
    }
}

/// HTTP settings trusting the test CA (for the HTTPS servers); the rest as shipped.
fn http() -> HttpConfig {
    HttpConfig {
        ca_pem: Some(Arc::from(pki().ca_pem.as_bytes())),
        ..HttpConfig::default()
    }
}

struct Device {
    session: OtaSession,
    sent: Sent,
}

/// An Aliyun session on a real `HttpSource`, told to upgrade to `image` at `url`.
fn device(url: &str, image: &[u8], http: HttpConfig, retry: RetryPolicy) -> Device {
    let config = OtaConfig {
        http,
        retry,
        ..OtaConfig::for_protocol(Protocol::Aliyun)
    };
    let source = HttpSource::new(config.http.clone()).expect("HTTP source");
    let sent: Sent = Arc::default();
    let session = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .expect("session");
    let msg = aliyun_notice(image, url, "2.0.0");
    session
        .handle_message(session.downstream_topic(), msg.as_bytes())
        .expect("upgrade accepted");
    assert_eq!(session.state(), OtaState::Downloading);
    Device { session, sent }
}

/// Fetches until the download ends, each call waiting up to `call_timeout`. Returns what was
/// written (at the offsets the session gives), the first error, and the time taken.
fn download(d: &Device, call_timeout: Duration) -> (Vec<u8>, Option<Error>, Duration) {
    let s = &d.session;
    let started = Instant::now();
    let mut flash = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !s.is_fetch_finished() {
        assert!(started.elapsed() < WAIT, "download did not end");
        let at = s.fetched_size() as usize;
        match s.fetch_yield(&mut buf, call_timeout) {
            Ok(n) => {
                flash.resize(flash.len().max(at + n), 0);
                flash[at..at + n].copy_from_slice(&buf[..n]);
            }
            Err(e) => return (flash, Some(e), started.elapsed()),
        }
    }
    (flash, None, started.elapsed())
}

/// The download failed with `error` and the platform was told once, last, with `step` and a
/// description containing `desc`; the image does not verify.
fn assert_failed(d: &Device, error: DownloadError, step: i32, desc: &str) {
    let s = &d.session;
    assert_eq!(s.last_error(), Some(Error::Download(error)));
    assert_eq!(s.state(), OtaState::Fetched);
    assert!(
        !s.check_firmware().unwrap(),
        "a failed download must not verify"
    );
    let sent = payloads(&d.sent);
    let failures: Vec<&String> = sent.iter().filter(|p| p.contains(r#""step":"-"#)).collect();
    assert_eq!(failures.len(), 1, "one failure report: {sent:?}");
    let last = sent.last().unwrap();
    assert!(
        last.contains(&format!(r#""step":"{step}""#)) && last.contains(desc),
        "expected step {step} with {desc:?}, got {last}"
    );
}

/// The server's log in arrival order, once it holds `n` entries (an entry is made when a
/// response ends, which for a client that walked away is when the server notices). Waits at
/// most `wait`.
fn log_of(server: &FirmwareServer, n: usize, wait: Duration) -> Vec<RequestLog> {
    let mut log = server.requests_when(n, wait);
    log.sort_by_key(|l| l.seq);
    log
}

fn statuses(log: &[RequestLog]) -> Vec<u16> {
    log.iter().map(|l| l.status).collect()
}

fn plain(image: &[u8], faults: Faults) -> FirmwareServer {
    FirmwareServer::start_with(image.to_vec(), faults).expect("HTTP server")
}

fn tls(image: &[u8], faults: Faults) -> FirmwareServer {
    let leaf = &pki().server;
    FirmwareServer::start_tls(
        image.to_vec(),
        faults,
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
    )
    .expect("HTTPS server")
}

fn redirect(location: &str) -> Faults {
    Faults {
        redirect: Some(location.into()),
        ..Faults::default()
    }
}

/// (a) A server that redirects to itself forever: the client follows `max_redirects` and
/// refuses the next one, so the server sees exactly `max_redirects + 1` requests; not retried.
#[test]
fn a_redirect_loop_stops_after_max_redirects() {
    let image = image();
    for (location, max_redirects) in [("{self}", 5), ("{self}", 2), ("firmware.bin", 1)] {
        let server = plain(&image, redirect(location));
        let config = HttpConfig {
            max_redirects,
            ..http()
        };
        assert_eq!(HttpConfig::default().max_redirects, 5);
        let d = device(&server.url(), &image, config, retries(3));
        let (_, err, _) = download(&d, Duration::from_secs(2));
        assert_eq!(
            err,
            Some(Error::Download(DownloadError::Redirects)),
            "{location}"
        );
        assert_failed(&d, DownloadError::Redirects, -2, "too many redirects");
        let want = max_redirects as usize + 1;
        let log = log_of(&server, want, Duration::from_secs(5));
        assert_eq!(log.len(), want, "{location}, max {max_redirects}: {log:?}");
        assert!(log.iter().all(|l| l.status == 302 && l.bytes_sent > 0));
        assert!(log.iter().all(|l| l.path == "/firmware.bin"));
        assert_eq!(d.session.retries(), 0, "not retried");
    }
}

/// The redirect limit is exact: `max_redirects` hops download, one more fails.
#[test]
fn max_redirects_hops_are_followed_and_one_more_is_not() {
    let image = image();
    let hops = |n: usize| Faults {
        redirect_first: vec!["{self}".to_string(); n],
        ..Faults::default()
    };
    let max = HttpConfig::default().max_redirects as usize;
    let server = plain(&image, hops(max));
    let d = device(&server.url(), &image, http(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert!(flash == image);
    assert!(d.session.check_firmware().unwrap());
    let log = log_of(&server, max + 1, Duration::from_secs(5));
    let mut want = vec![302; max];
    want.push(200);
    assert_eq!(statuses(&log), want);

    let server = plain(&image, hops(max + 1));
    let d = device(&server.url(), &image, http(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, Some(Error::Download(DownloadError::Redirects)));
    assert_failed(&d, DownloadError::Redirects, -2, "too many redirects");
    let log = log_of(&server, max + 1, Duration::from_secs(5));
    assert_eq!(
        statuses(&log),
        vec![302; max + 1],
        "the file was never asked for"
    );
}

/// (b) HTTPS redirecting to plain http is a downgrade: refused before the http server is
/// contacted.
#[test]
fn an_https_redirect_to_http_is_refused() {
    let image = image();
    let target = plain(&image, Faults::default());
    let server = tls(&image, redirect(&target.url()));
    assert!(server.url().starts_with("https://"));
    let d = device(&server.url(), &image, http(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, Some(Error::Download(DownloadError::RedirectScheme)));
    assert_failed(
        &d,
        DownloadError::RedirectScheme,
        -2,
        "redirect to a weaker scheme refused",
    );
    assert_eq!(statuses(&log_of(&server, 1, Duration::from_secs(5))), [302]);
    assert!(
        wait::never_within(ABSENCE, || target.connections() > 0),
        "the http server was never contacted"
    );
    assert!(target.requests().is_empty());
}

/// (c) Redirects to other schemes (and scheme-relative ones, which could hide a downgrade)
/// are refused at once.
#[test]
fn redirects_to_other_schemes_are_refused() {
    let image = image();
    for location in [
        "ftp://127.0.0.1/firmware.bin",
        "file:///etc/passwd",
        "data:,firmware",
        "//127.0.0.1/firmware.bin",
    ] {
        let server = plain(&image, redirect(location));
        let d = device(&server.url(), &image, http(), retries(3));
        let (_, err, _) = download(&d, Duration::from_secs(2));
        assert_eq!(
            err,
            Some(Error::Download(DownloadError::RedirectScheme)),
            "{location}"
        );
        assert_failed(
            &d,
            DownloadError::RedirectScheme,
            -2,
            "redirect to a weaker scheme refused",
        );
        let log = log_of(&server, 1, Duration::from_secs(5));
        assert_eq!(
            statuses(&log),
            [302],
            "{location}: one request, not retried"
        );
    }
}

/// A redirect to a URL longer than `max_url` is refused, not followed.
#[test]
fn a_redirect_to_an_overlong_url_is_refused() {
    let image = image();
    let max_url = HttpConfig::default().max_url;
    let server = plain(
        &image,
        redirect(&format!("{{self}}?{}", "a".repeat(max_url))),
    );
    let d = device(&server.url(), &image, http(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, Some(Error::Download(DownloadError::Url)));
    assert_failed(&d, DownloadError::Url, -2, "download failed");
    assert_eq!(statuses(&log_of(&server, 1, Duration::from_secs(5))), [302]);
}

/// (d) Valid chains download and verify: http -> http by relative paths (absolute and
/// relative to the current directory), and http -> (relative) http -> https.
#[test]
fn a_valid_redirect_chain_downloads_and_verifies() {
    let image = image();
    let server = plain(
        &image,
        Faults {
            redirect_first: vec!["/hop1/firmware.bin".into(), "next/firmware.bin".into()],
            ..Faults::default()
        },
    );
    let d = device(&server.url(), &image, http(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert!(flash == image);
    assert!(d.session.check_firmware().unwrap());
    let log = log_of(&server, 3, Duration::from_secs(5));
    let paths: Vec<(&str, u16)> = log.iter().map(|l| (l.path.as_str(), l.status)).collect();
    assert_eq!(
        paths,
        [
            ("/firmware.bin", 302),
            ("/hop1/firmware.bin", 302),
            ("/hop1/next/firmware.bin", 200)
        ]
    );

    // Up to https is allowed: the image then comes over TLS.
    let secure = tls(&image, Faults::default());
    let server = plain(
        &image,
        Faults {
            redirect_first: vec!["/moved/firmware.bin".into(), secure.url()],
            ..Faults::default()
        },
    );
    let d = device(&server.url(), &image, http(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert!(flash == image);
    assert!(d.session.check_firmware().unwrap());
    assert_eq!(
        statuses(&log_of(&server, 2, Duration::from_secs(5))),
        [302, 302]
    );
    let log = log_of(&secure, 1, Duration::from_secs(5));
    assert_eq!((log.len(), log[0].status), (1, 200));
    assert_eq!(log[0].bytes_sent, SIZE as u64);
}

/// (e) With `allow_plain_http` false an http:// URL is refused before any connection; https
/// still works with the same settings.
#[test]
fn plain_http_is_refused_when_not_allowed() {
    let image = image();
    let strict = || HttpConfig {
        allow_plain_http: false,
        ..http()
    };
    assert!(HttpConfig::default().allow_plain_http);
    let server = plain(&image, Faults::default());
    let d = device(&server.url(), &image, strict(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, Some(Error::Download(DownloadError::PlainHttp)));
    assert_failed(
        &d,
        DownloadError::PlainHttp,
        -2,
        "plain http:// not allowed",
    );
    assert!(
        wait::never_within(ABSENCE, || server.connections() > 0),
        "no connection was made"
    );
    assert!(server.requests().is_empty());
    assert_eq!(d.session.retries(), 0);

    // Nor is an https server allowed to send the client to http.
    let secure = tls(&image, redirect(&server.url()));
    let d = device(&secure.url(), &image, strict(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, Some(Error::Download(DownloadError::RedirectScheme)));
    assert_eq!(server.connections(), 0);

    let secure = tls(&image, Faults::default());
    let d = device(&secure.url(), &image, strict(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert!(flash == image && d.session.check_firmware().unwrap());
}

/// (f) Slow-loris: the head comes one byte every 200 ms, so the whole head would take about
/// 25 s, but `response_timeout` bounds the whole head, not each read. Each try ends after
/// 500 ms; `max_attempts` retries later the download fails as a timeout. The session's own
/// stall detection is set far beyond the bound, so only `response_timeout` can end a try in
/// time.
#[test]
fn a_slow_loris_head_is_cut_by_the_response_timeout() {
    let image = image();
    let server = plain(
        &image,
        Faults {
            slow_head_ms: Some(200),
            ..Faults::default()
        },
    );
    let config = HttpConfig {
        response_timeout: Duration::from_millis(500),
        ..http()
    };
    let max_attempts = 2;
    let d = device(&server.url(), &image, config, retries(max_attempts));
    let (_, err, took) = download(&d, Duration::from_secs(10));
    assert_eq!(err, Some(Error::Download(DownloadError::Timeout)));
    assert_failed(&d, DownloadError::Timeout, -2, "timed out");
    assert!(
        took >= Duration::from_millis(1400),
        "{} tries of 500 ms took {took:?}",
        max_attempts + 1
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(d.session.retries(), max_attempts);
    let tries = max_attempts as usize + 1;
    // The server gave up on each try when the client hung up, long before the head was out.
    let log = log_of(&server, tries, Duration::from_secs(10));
    assert_eq!(
        log.len(),
        tries,
        "the server noticed every hang-up: {log:?}"
    );
    assert_eq!(server.connections(), tries as u64, "one connection per try");
    assert!(
        log.iter().all(|l| !l.complete && l.bytes_sent == 0),
        "{log:?}"
    );
}

/// (g) A response head larger than `max_header_bytes` (default 8 KiB; the padding stays
/// below ureq's own 64 KiB default, so only the configured limit can refuse it): refused as
/// malformed, not retried. The same server is fine for a client with a larger limit.
#[test]
fn a_huge_response_head_is_refused() {
    let image = image();
    let padded = |bytes: usize| Faults {
        huge_head: bytes,
        ..Faults::default()
    };
    let too_large = DownloadError::BadResponse("response head too large");
    assert_eq!(HttpConfig::default().max_header_bytes, 8 * 1024);
    for (pad, limit) in [
        (32 * 1024, None),
        (64 * 1024, None),
        (8 * 1024, Some(4 * 1024)),
    ] {
        let server = plain(&image, padded(pad));
        let config = HttpConfig {
            max_header_bytes: limit.unwrap_or(HttpConfig::default().max_header_bytes),
            ..http()
        };
        let d = device(&server.url(), &image, config, retries(3));
        let (_, err, _) = download(&d, Duration::from_secs(2));
        assert_eq!(
            err,
            Some(Error::Download(too_large)),
            "{pad} bytes of headers"
        );
        assert_failed(&d, too_large, -2, "malformed HTTP response");
        assert_eq!(log_of(&server, 1, Duration::from_secs(5)).len(), 1);
        assert_eq!(server.connections(), 1);
        assert!(
            wait::never_within(ABSENCE, || server.connections() > 1),
            "not retried"
        );
        assert_eq!(server.requests_when(1, Duration::from_secs(5)).len(), 1);
    }

    let server = plain(&image, padded(64 * 1024));
    let roomy = HttpConfig {
        max_header_bytes: 128 * 1024,
        ..http()
    };
    let d = device(&server.url(), &image, roomy, retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert!(flash == image && d.session.check_firmware().unwrap());
}

/// (h) `Content-Length: 2^50` with the real image: the engine reads exactly the announced
/// size and rejects the image although its bytes are right (the server's file is larger
/// than announced).
#[test]
fn a_huge_content_length_is_read_up_to_the_announced_size_and_rejected() {
    let image = image();
    let server = plain(
        &image,
        Faults {
            content_length: Some(1 << 50),
            ..Faults::default()
        },
    );
    let d = device(&server.url(), &image, http(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None, "the download itself ends normally");
    assert_eq!(d.session.fetched_size(), SIZE as u64);
    assert!(
        flash == image,
        "the bytes were right: the length rejected them"
    );
    assert_failed(
        &d,
        DownloadError::Oversize,
        -3,
        "server file larger than announced",
    );
    assert_eq!(statuses(&log_of(&server, 1, Duration::from_secs(5))), [200]);

    // A Content-Length below the announced size is refused at once.
    let server = plain(
        &image,
        Faults {
            content_length: Some(SIZE as u64 - 1),
            ..Faults::default()
        },
    );
    let d = device(&server.url(), &image, http(), retries(3));
    let (_, err, _) = download(&d, Duration::from_secs(2));
    let smaller = DownloadError::BadResponse("server file is smaller than the announced size");
    assert_eq!(err, Some(Error::Download(smaller)));
    assert_failed(&d, smaller, -2, "malformed HTTP response");
    assert_eq!(d.session.fetched_size(), 0);
}

/// Runs an endless-body download of a server whose stream starts with `served` (then
/// garbage, forever) for an upgrade announcing `image`. Checks that the engine took exactly
/// the announced size and that the client hung up: the server notices within seconds
/// (without a close it would go on until its 30 s write timeout).
fn endless(served: &[u8], image: &[u8]) -> (Device, Vec<u8>) {
    let server = plain(
        served,
        Faults {
            endless_body: true,
            ..Faults::default()
        },
    );
    let d = device(&server.url(), image, http(), retries(3));
    let (flash, err, _) = download(&d, Duration::from_secs(2));
    assert_eq!(err, None);
    assert_eq!(d.session.fetched_size(), image.len() as u64);
    assert_eq!(flash.len(), image.len());
    let ended = Instant::now();
    let log = log_of(&server, 1, Duration::from_secs(10));
    assert_eq!(log.len(), 1, "the server did not notice the client leave");
    assert!(
        ended.elapsed() < Duration::from_secs(5),
        "{:?}",
        ended.elapsed()
    );
    assert!(!log[0].complete);
    assert!(log[0].bytes_sent > SIZE as u64, "the server did send more");
    assert_eq!(server.connections(), 1);
    (d, flash)
}

/// (i) A body without `Content-Length` that never ends is cut at the announced size. Here
/// the stream is garbage from the start: the digest rejects it (step -3).
#[test]
fn an_endless_garbage_body_is_cut_at_the_announced_size_and_rejected() {
    let image = image();
    let garbage = ota_cloud::generate_firmware(2 * SIZE)[SIZE..].to_vec();
    let (d, _) = endless(&garbage, &image);
    assert_failed(
        &d,
        DownloadError::BadResponse("digest mismatch"),
        -3,
        "digest mismatch",
    );
}

/// (i) The same with the real image first, then garbage: the engine takes exactly the
/// announced bytes, none of the garbage reaches the image, and it verifies.
#[test]
fn an_endless_body_after_the_real_image_never_reaches_the_image() {
    let image = image();
    let (d, flash) = endless(&image, &image);
    assert!(flash == image);
    assert!(d.session.check_firmware().unwrap());
    assert_eq!(d.session.last_error(), None);
    assert!(payloads(&d.sent)
        .iter()
        .all(|p| !p.contains(r#""step":"-"#)));
}
