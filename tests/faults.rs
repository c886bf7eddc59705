//! Downloads through a misbehaving HTTP server (ota-cloud's fault injection): the outcome is
//! a byte-exact image that verifies, or the protocol's failure report and an image that does
//! not — never a wrong image reported valid. First how a download recovers from each fault,
//! then every fault against every protocol.

mod common;
use common::firmware::aliyun_notice;
use common::recorder::{payloads, Recorder, Sent};

use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::retry::RetryPolicy;
use ota::source::{HttpConfig, HttpSource};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::http::{Faults, FirmwareServer};

/// One fault at a time on Aliyun: how the download recovers (Range, skipped bytes, retries,
/// reconnections after a stall, a new cycle, a fresh URL) and what it reports when it cannot.
mod recovery {
    use super::*;

    struct Run {
        session: OtaSession,
        sent: Sent,
        image: Vec<u8>,
        server: FirmwareServer,
    }

    fn start(size: usize, faults: Faults, retry: RetryPolicy) -> Run {
        let image = ota_cloud::generate_firmware(size);
        let server = FirmwareServer::start_with(image.clone(), faults).unwrap();
        let sent: Sent = Arc::default();
        let config = OtaConfig {
            retry,
            ..OtaConfig::for_protocol(Protocol::Aliyun)
        };
        let session = OtaSession::new(
            "pk",
            "dn",
            config,
            Box::new(Recorder(sent.clone())),
            Box::new(HttpSource::new(HttpConfig::default()).unwrap()),
        )
        .unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        let topic = session.downstream_topic().to_string();
        session.handle_message(&topic, msg.as_bytes()).unwrap();
        Run {
            session,
            sent,
            image,
            server,
        }
    }

    fn fast_retries(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            stall_timeout: Duration::from_secs(5),
        }
    }

    /// Downloads like iotkit-sample firmware: from the cycle's start offset (FETCHED_SIZE when the
    /// cycle begins; the bytes before it are left zero here) it appends what FetchYield returns and
    /// never rewinds. Returns the written image, the first hard error and the longest call.
    fn download(run: &Run, timeout: Duration) -> (Vec<u8>, Option<Error>, Duration) {
        let s = &run.session;
        let mut flash = vec![0u8; s.fetched_size() as usize];
        let mut buf = vec![0u8; 5000];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut longest = Duration::ZERO;
        while !s.is_fetch_finished() {
            assert!(Instant::now() < deadline, "download did not end");
            let t = Instant::now();
            let r = s.fetch_yield(&mut buf, timeout);
            longest = longest.max(t.elapsed());
            match r {
                Ok(n) => flash.extend_from_slice(&buf[..n]),
                Err(e) => return (flash, Some(e), longest),
            }
        }
        (flash, None, longest)
    }

    #[test]
    fn a_cut_connection_resumes_with_range_and_verifies() {
        let run = start(
            2_000_000,
            Faults {
                cut_at: Some(777_777),
                ..Faults::default()
            },
            fast_retries(5),
        );
        let (flash, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, None);
        assert!(flash == run.image);
        assert!(run.session.check_firmware().unwrap());
        assert!(run.session.retries() >= 1);
        let ranges: Vec<Option<String>> = run
            .server
            .requests_when(2, Duration::from_secs(5))
            .into_iter()
            .map(|r| r.range)
            .collect();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!(ranges[1].as_deref(), Some("bytes=777777-"));
    }

    #[test]
    fn a_server_that_ignores_range_has_the_kept_bytes_skipped_by_the_sdk() {
        let run = start(
            600_000,
            Faults {
                cut_at: Some(300_000),
                ignore_range: true,
                ..Faults::default()
            },
            fast_retries(5),
        );
        let (flash, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, None);
        assert_eq!(run.session.restarts(), 1);
        assert!(flash == run.image, "the appended stream is the image");
        assert!(run.session.check_firmware().unwrap());
    }

    #[test]
    fn extra_bytes_after_the_announced_length_are_never_taken() {
        let run = start(
            100_000,
            Faults {
                extra_bytes: 5000,
                ..Faults::default()
            },
            fast_retries(2),
        );
        let (flash, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, None);
        assert_eq!(run.session.fetched_size(), 100_000);
        assert!(flash == run.image);
        assert!(run.session.check_firmware().unwrap());
    }

    #[test]
    fn a_server_error_is_retried_up_to_the_limit_then_reported() {
        let run = start(
            10_000,
            Faults {
                status: Some(503),
                ..Faults::default()
            },
            fast_retries(3),
        );
        let (_, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, Some(Error::Download(DownloadError::Status(503))));
        assert_eq!(
            run.server.requests_when(4, Duration::from_secs(5)).len(),
            4,
            "one try and three retries"
        );
        assert!(!run.session.check_firmware().unwrap());
        let last = payloads(&run.sent).pop().unwrap();
        assert!(last.contains(r#""step":"-2""#), "{last}");
    }

    #[test]
    fn fetch_yield_returns_within_its_timeout_while_the_server_stalls() {
        let run = start(
            50_000,
            Faults {
                stall_ms: 1200,
                ..Faults::default()
            },
            fast_retries(2),
        );
        let (flash, err, longest) = download(&run, Duration::from_secs(2));
        assert_eq!(err, None);
        assert!(flash == run.image);
        // Generous margin: the bound is the behaviour under test, not a speed.
        assert!(
            longest < Duration::from_millis(3000),
            "a FetchYield took {longest:?}"
        );
    }

    #[test]
    fn a_stall_past_the_fetch_yield_timeout_reconnects_with_range() {
        let run = start(
            100_000,
            Faults {
                stall_once: Some((40_000, 1500)),
                ..Faults::default()
            },
            fast_retries(3),
        );
        let (flash, err, longest) = download(&run, Duration::from_millis(300));
        assert_eq!(err, None);
        assert!(flash == run.image);
        assert!(
            longest < Duration::from_millis(1300),
            "a FetchYield took {longest:?}"
        );
        // Logged when each response ends, which may be just after the client took its last byte.
        let requests = run.server.requests_when(2, Duration::from_secs(5));
        assert!(
            requests
                .iter()
                .any(|r| r.range.as_deref() == Some("bytes=40000-")),
            "the next FetchYield reconnected at the stall: {requests:?}"
        );
    }

    #[test]
    fn a_stall_longer_than_the_stall_timeout_reconnects() {
        let run = start(
            50_000,
            Faults {
                stall_ms: 1500,
                ..Faults::default()
            },
            RetryPolicy {
                stall_timeout: Duration::from_millis(500),
                ..fast_retries(2)
            },
        );
        let (_, err, _) = download(&run, Duration::from_millis(200));
        // Every answer stalls past the limit: reconnections, then a reported timeout.
        assert_eq!(err, Some(Error::Download(DownloadError::Timeout)));
        assert!(run.server.requests().len() >= 2 || run.session.retries() == 2);
        let last = payloads(&run.sent).pop().unwrap();
        assert!(
            last.contains(r#""step":"-2""#) && last.contains("timed out"),
            "{last}"
        );
    }

    #[test]
    fn a_failed_download_sent_again_is_a_new_cycle_from_byte_0() {
        // No retries: the cut ends the cycle; the re-sent upgrade (new URL) is the next cycle, and
        // without a breakpoint store it starts from 0 (FETCHED_SIZE says so).
        let run = start(
            400_000,
            Faults {
                cut_at: Some(150_000),
                ..Faults::default()
            },
            fast_retries(0),
        );
        let (flash, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, Some(Error::Download(DownloadError::Truncated)));
        assert_eq!(flash.len(), 150_000);
        assert!(run.session.is_fetch_finished());
        let second = FirmwareServer::start(run.image.clone()).unwrap();
        let topic = run.session.downstream_topic().to_string();
        run.session
            .handle_message(
                &topic,
                aliyun_notice(&run.image, &second.url(), "2.0.0").as_bytes(),
            )
            .unwrap();
        assert!(
            run.session.is_fetch_finished(),
            "the ended cycle stays ended until the firmware asks again"
        );
        assert!(run.session.is_fetching());
        assert_eq!(run.session.fetched_size(), 0);
        let (flash, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, None);
        assert!(flash == run.image);
        assert!(run.session.check_firmware().unwrap());
        assert_eq!(
            second.requests_when(1, Duration::from_secs(5))[0].range,
            None
        );
    }

    #[test]
    fn an_expired_url_asks_for_a_fresh_one_before_reporting() {
        let run = start(
            10_000,
            Faults {
                status: Some(403),
                ..Faults::default()
            },
            fast_retries(3),
        );
        run.session
            .set_fresh_url_wait(Duration::from_millis(300))
            .unwrap();
        run.session.report_version("1.0.0").unwrap();
        let (_, err, _) = download(&run, Duration::from_secs(2));
        assert_eq!(err, Some(Error::Download(DownloadError::Status(403))));
        assert_eq!(
            run.server.requests_when(1, Duration::from_secs(5)).len(),
            1,
            "403 is not retried"
        );
        let sent = payloads(&run.sent);
        let n = sent.len();
        assert!(
            sent[n - 2].ends_with(r#""params":{"version":"1.0.0"}}"#),
            "the request comes first: {sent:?}"
        );
        assert!(
            sent[n - 1].contains(r#""step":"-2""#)
                && sent[n - 1].contains("URL expired (HTTP 403) and no fresh URL within"),
            "{sent:?}"
        );
    }
}

/// Every fault of the test server against every protocol: a byte-exact image with
/// CHECK_FIRMWARE true, or the protocol's failure report with CHECK_FIRMWARE false.
mod matrix {
    use super::*;

    const PROTOCOLS: [Protocol; 4] = [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ];

    fn notice(protocol: Protocol, image: &[u8], url: &str) -> String {
        let md5 = ota_cloud::cloud::md5_hex(image);
        let size = image.len();
        match protocol {
            Protocol::Aliyun => aliyun_notice(image, url, "2.0.0"),
            Protocol::Sagoo => format!(
                r#"{{"code":"200","data":{{"size":{size},"version":"2.0.0","url":"{url}","sign":"{md5}","signMethod":"MD5"}},"id":1,"message":"success"}}"#
            ),
            Protocol::Tencent => format!(
                r#"{{"file_size":{size},"md5sum":"{md5}","type":"update_firmware","url":"{url}","version":"2.0.0"}}"#
            ),
            Protocol::Ucloud => format!(
                r#"{{"Method":"notify","Payload":{{"Version":"2.0.0","URL":"{url}","MD5":"{md5}","Size":{size},"TaskID":"t1"}}}}"#
            ),
        }
    }

    /// The protocol's failure report for a download failure: Aliyun/SagooIOT step, Tencent
    /// result code, UCloud fail.
    fn failure_report(protocol: Protocol, aliyun_step: i32, tencent_code: i32) -> String {
        match protocol {
            Protocol::Aliyun | Protocol::Sagoo => format!(r#""step":"{aliyun_step}""#),
            Protocol::Tencent => format!(r#""state":"fail","result_code":"{tencent_code}""#),
            Protocol::Ucloud => {
                r#"{"Method":"fail","Payload":{"TaskID":"t1","ErrMsg":"#.to_string()
            }
        }
    }

    enum Expect {
        Valid,
        /// Aliyun step and Tencent code of the failure report.
        Failed(i32, i32),
    }

    /// Runs one download with iotkit-sample firmware and checks the outcome is what `expect` says.
    fn run(protocol: Protocol, size: usize, faults: Faults, expect: Expect) {
        let image = ota_cloud::generate_firmware(size);
        let server = FirmwareServer::start_with(image.clone(), faults).unwrap();
        let sent: Sent = Arc::default();
        let config = OtaConfig {
            retry: RetryPolicy {
                max_attempts: 4,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(40),
                stall_timeout: Duration::from_millis(800),
            },
            ..OtaConfig::for_protocol(protocol)
        };
        let s = OtaSession::new(
            "pk",
            "dn",
            config,
            Box::new(Recorder(sent.clone())),
            Box::new(HttpSource::new(HttpConfig::default()).unwrap()),
        )
        .unwrap();
        s.handle_message(
            s.downstream_topic(),
            notice(protocol, &image, &server.url()).as_bytes(),
        )
        .unwrap();
        let mut flash = Vec::with_capacity(image.len());
        let mut buf = vec![0u8; 5000];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut error = None;
        // Firmware written like the iotkit sample: appends what it gets, never rewinds, reports
        // "fetch failed" on every return <= 0, leaves only when the SDK says the fetch finished.
        loop {
            assert!(
                Instant::now() < deadline,
                "{protocol:?}: download did not end"
            );
            match s.fetch_yield(&mut buf, Duration::from_secs(1)) {
                Ok(n) if n > 0 => flash.extend_from_slice(&buf[..n]),
                other => {
                    if let Err(e) = other {
                        error.get_or_insert(e);
                    }
                    s.report_progress(-2, None).unwrap();
                }
            }
            if s.is_fetch_finished() {
                break;
            }
        }
        let valid = s.check_firmware().unwrap();
        let sent = payloads(&sent);
        let failures: Vec<&String> = sent.iter().filter(|m| is_failure(protocol, m)).collect();
        match expect {
            Expect::Valid => {
                assert_eq!(error, None, "{protocol:?}");
                assert!(valid, "{protocol:?}: image should verify");
                assert!(flash == image, "{protocol:?}: image differs");
                assert!(failures.is_empty(), "{protocol:?}: {failures:?}");
            }
            Expect::Failed(step, code) => {
                assert!(!valid, "{protocol:?}: a failed download must not verify");
                let want = failure_report(protocol, step, code);
                assert_eq!(
                    failures.len(),
                    1,
                    "{protocol:?}: one failure report: {sent:?}"
                );
                assert!(
                    failures[0].contains(&want),
                    "{protocol:?}: expected a report containing {want}, sent {sent:?}"
                );
            }
        }
    }

    fn is_failure(protocol: Protocol, message: &str) -> bool {
        match protocol {
            Protocol::Aliyun | Protocol::Sagoo => message.contains(r#""step":"-"#),
            Protocol::Tencent => message.contains(r#""state":"fail""#),
            Protocol::Ucloud => message.contains(r#""Method":"fail""#),
        }
    }

    fn for_all(size: usize, faults: Faults, expect: impl Fn() -> Expect) {
        for p in PROTOCOLS {
            run(p, size, faults.clone(), expect());
        }
    }

    #[test]
    fn twenty_random_cuts() {
        let faults = Faults {
            random_cuts: Some((20, 7)),
            ..Faults::default()
        };
        for_all(1_500_000, faults, || Expect::Valid);
    }

    #[test]
    fn a_stall_mid_body() {
        let faults = Faults {
            stall_once: Some((200_000, 1500)),
            ..Faults::default()
        };
        for_all(400_000, faults, || Expect::Valid);
    }

    #[test]
    fn a_server_that_ignores_range_after_a_cut() {
        let faults = Faults {
            cut_at: Some(150_000),
            ignore_range: true,
            ..Faults::default()
        };
        for_all(300_000, faults, || Expect::Valid);
    }

    #[test]
    fn connections_closed_before_the_headers() {
        let faults = Faults {
            close_before_headers: 2,
            ..Faults::default()
        };
        for_all(100_000, faults, || Expect::Valid);
    }

    #[test]
    fn transient_server_errors_then_success() {
        let faults = Faults {
            fail_first: vec![503, 500],
            ..Faults::default()
        };
        for_all(100_000, faults, || Expect::Valid);
    }

    #[test]
    fn more_bytes_than_announced_on_the_wire() {
        let faults = Faults {
            extra_bytes: 1000,
            ..Faults::default()
        };
        for_all(100_000, faults, || Expect::Valid);
    }

    #[test]
    fn a_flipped_byte_fails_verification() {
        let faults = Faults {
            flip_byte_at: Some(12_345),
            ..Faults::default()
        };
        for_all(100_000, faults, || Expect::Failed(-3, -4));
    }

    #[test]
    fn fewer_bytes_than_announced_every_time() {
        let faults = Faults {
            short_body: Some(30_000),
            ..Faults::default()
        };
        // Each request delivers some bytes, so the download creeps on with Range and completes.
        for_all(100_000, faults, || Expect::Valid);
    }

    #[test]
    fn not_found_is_reported_as_such() {
        let faults = Faults {
            status: Some(404),
            ..Faults::default()
        };
        for_all(10_000, faults, || Expect::Failed(-2, -2));
    }

    #[test]
    fn an_expired_url_is_reported_as_such() {
        let faults = Faults {
            status: Some(403),
            ..Faults::default()
        };
        for_all(10_000, faults, || Expect::Failed(-2, -3));
    }

    #[test]
    fn a_persistent_server_error_fails_after_the_retries() {
        let faults = Faults {
            status: Some(500),
            ..Faults::default()
        };
        for_all(10_000, faults, || Expect::Failed(-2, -5));
    }
}
