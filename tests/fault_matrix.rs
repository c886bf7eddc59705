//! Every fault of the test server against every protocol. The outcome is either a byte-exact
//! image with CHECK_FIRMWARE true, or the protocol's failure report with CHECK_FIRMWARE false:
//! never a wrong image reported valid.

mod common;
use common::recorder::{payloads, Recorder, Sent};

use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::fetch::{HttpConfig, HttpSource};
use ota::retry::RetryPolicy;
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::http::{Faults, FirmwareServer};

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
        Protocol::Aliyun => format!(
            r#"{{"code":"1000","data":{{"size":{size},"version":"2.0.0","url":"{url}","md5":"{md5}"}},"id":1,"message":"success"}}"#
        ),
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
        Protocol::Ucloud => r#"{"Method":"fail","Payload":{"TaskID":"t1","ErrMsg":"#.to_string(),
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
