//! Each platform's rules as the engine applies them, on in-memory transports: what is sent
//! for every event, what is refused, what is ignored.

mod common;
use common::recorder::{Recorder, Sent};

use std::sync::Arc;
use std::time::Duration;

use ota::error::{Error, FetchError};
use ota::fetch::{HttpConfig, HttpSource, MemorySource};
use ota::protocol::NoticeError;
use ota::{OtaConfig, OtaSession, OtaState, Protocol};

fn image(len: usize) -> &'static [u8] {
    let v: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    Box::leak(v.into_boxed_slice())
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn session_on(
    protocol: Protocol,
    source: Box<dyn ota::fetch::FirmwareSource>,
) -> (OtaSession, Sent) {
    let sent: Sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(protocol),
        Box::new(Recorder(sent.clone())),
        source,
    )
    .unwrap();
    (s, sent)
}

fn session(protocol: Protocol, img: &'static [u8]) -> (OtaSession, Sent) {
    session_on(protocol, Box::new(MemorySource::new(img)))
}

fn fetch_all(s: &OtaSession) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !s.is_fetch_finished() {
        match s.fetch_yield(&mut buf, Duration::from_secs(2)) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

fn texts(sent: &Sent) -> Vec<String> {
    sent.lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect()
}

fn ucloud_notice(img: &[u8], current: &str) -> String {
    format!(
        r#"{{"Method":"notify","Payload":{{"Version":"2.0","CurrentVersion":"{current}","URL":"http://h/f.bin","MD5":"{}","Size":{},"TaskID":"t-9"}}}}"#,
        md5_hex(img),
        img.len()
    )
}

#[test]
fn ucloud_acks_reports_upgrading_once_and_success_with_the_task_id() {
    let img = image(10_000);
    let (s, sent) = session(Protocol::Ucloud, img);
    let down = s.downstream_topic().to_string();
    assert_eq!(down, "/$system/pk/dn/ota/downstream");
    s.report_version("1.0").unwrap();
    s.handle_message(&down, ucloud_notice(img, "1.0").as_bytes())
        .unwrap();
    assert_eq!(fetch_all(&s), img);
    assert!(s.check_firmware().unwrap());
    s.report_progress(100, None).unwrap();
    s.report_upgrade_begin().unwrap();
    s.report_upgrade_success("2.0").unwrap();
    let sent = sent.lock().unwrap();
    assert!(sent.iter().all(|(t, _)| t == "/$system/pk/dn/ota/upstream"));
    let texts: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            r#"{"Method":"report","Payload":{"Version":"1.0"}}"#,
            r#"{"Method":"notify","Payload":{"TaskID":"t-9"}}"#,
            r#"{"Method":"upgrading","Payload":{"TaskID":"t-9"}}"#,
            r#"{"Method":"success","Payload":{"TaskID":"t-9"}}"#,
        ]
    );
}

#[test]
fn ucloud_refuses_a_task_for_another_running_version() {
    let img = image(100);
    let (s, sent) = session(Protocol::Ucloud, img);
    let down = s.downstream_topic().to_string();
    s.report_version("1.5").unwrap();
    let r = s.handle_message(&down, ucloud_notice(img, "1.0").as_bytes());
    assert_eq!(r, Err(Error::Notice(NoticeError::NotForRunningVersion)));
    assert_eq!(s.state(), OtaState::Idle);
    let last = texts(&sent).pop().unwrap();
    assert!(
        last.starts_with(r#"{"Method":"fail","Payload":{"TaskID":"t-9","ErrMsg":""#),
        "{last}"
    );
    assert!(
        last.contains("1.0") && last.contains("1.5"),
        "ErrMsg names both versions: {last}"
    );
}

#[test]
fn sagoo_sha256_upgrade_with_module_and_batch_echo() {
    let img = image(5000);
    let (s, sent) = session(Protocol::Sagoo, img);
    let down = s.downstream_topic().to_string();
    s.report_module_version("MCU", "1.0.1").unwrap();
    let msg = format!(
        r#"{{"code":"200","data":{{"size":{},"version":"2.0.0","url":"https://h/f","sign":"{}","signMethod":"sha256","module":"MCU","extData":{{"strategy":"b-7","_package_udi":"{{\"ota_notice\":\"x\"}}"}}}},"id":1626969597470,"message":"success"}}"#,
        img.len(),
        sha256_hex(img)
    );
    s.handle_message(&down, msg.as_bytes()).unwrap();
    assert_eq!(s.with_notice(|n| n.module_name().to_string()), "MCU");
    assert_eq!(
        s.with_notice(|n| n.ext_data.as_str().to_string()),
        r#"{"strategy":"b-7","_package_udi":"{\"ota_notice\":\"x\"}"}"#
    );
    assert_eq!(fetch_all(&s), img);
    assert!(s.check_firmware().unwrap());
    s.report_progress(100, None).unwrap();
    let texts = texts(&sent);
    assert_eq!(
        texts[0],
        r#"{"id":"1","params":{"version":"1.0.1","module":"MCU"}}"#
    );
    assert_eq!(
        texts.last().unwrap(),
        r#"{"id":"2","params":{"step":"100","desc":"","module":"MCU","strategy":"b-7"}}"#
    );
}

#[test]
fn sagoo_refuses_dprotocol_with_a_minus_1_report() {
    let img = image(100);
    let (s, sent) = session(Protocol::Sagoo, img);
    let down = s.downstream_topic().to_string();
    let msg = format!(
        r#"{{"code":"200","data":{{"size":100,"version":"2.0.0","url":"https://h/f","sign":"{}","signMethod":"MD5","module":"MCU","dProtocol":"mqtt"}},"id":1,"message":"success"}}"#,
        md5_hex(img)
    );
    let r = s.handle_message(&down, msg.as_bytes());
    assert!(
        matches!(r, Err(Error::Notice(NoticeError::Unsupported(_)))),
        "{r:?}"
    );
    assert_eq!(s.state(), OtaState::Idle);
    let last = texts(&sent).pop().unwrap();
    assert!(
        last.contains(r#""step":"-1""#) && last.contains(r#""module":"MCU""#),
        "{last}"
    );
}

fn tencent_notice(img: &[u8], url: &str) -> String {
    format!(
        r#"{{"file_size":{},"md5sum":"{}","type":"update_firmware","url":"{url}","version":"0.2"}}"#,
        img.len(),
        md5_hex(img)
    )
}

#[test]
fn tencent_reports_downloading_burning_done_and_reads_version_answers() {
    let img = image(3000);
    let (s, sent) = session(Protocol::Tencent, img);
    let down = s.downstream_topic().to_string();
    assert_eq!(down, "$ota/update/pk/dn");
    s.report_version("0.1").unwrap();
    s.handle_message(
        &down,
        br#"{"type":"report_version_rsp","result_code":0,"result_msg":"success","version":"0.1"}"#,
    )
    .unwrap();
    assert_eq!(
        s.handle_message(
            &down,
            br#"{"type":"report_version_rsp","result_code":-3,"result_msg":"refused","version":"0.1"}"#
        ),
        Err(Error::VersionRefused(-3))
    );
    assert_eq!(s.last_error(), Some(Error::VersionRefused(-3)));
    s.handle_message(&down, br#"{"type":"something_new","x":1}"#)
        .unwrap();
    assert_eq!(s.state(), OtaState::Idle);
    s.handle_message(&down, tencent_notice(img, "https://h/f").as_bytes())
        .unwrap();
    assert_eq!(fetch_all(&s), img);
    s.report_progress(10, None).unwrap();
    s.report_upgrade_begin().unwrap();
    s.report_upgrade_success("0.2").unwrap();
    let sent = sent.lock().unwrap();
    assert!(sent.iter().all(|(t, _)| t == "$ota/report/pk/dn"));
    let texts: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            r#"{"type":"report_version","report":{"version":"0.1"}}"#,
            r#"{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"10","result_code":"0","result_msg":""},"version":"0.2"}}"#,
            r#"{"type":"report_progress","report":{"progress":{"state":"burning","result_code":"0","result_msg":""},"version":"0.2"}}"#,
            r#"{"type":"report_progress","report":{"progress":{"state":"done","result_code":"0","result_msg":""},"version":"0.2"}}"#,
        ]
    );
}

#[test]
fn tencent_failure_codes_follow_the_real_cause() {
    use ota_cloud::http::{Faults, FirmwareServer};
    let img = image(1000);
    for (status, code) in [(404u16, "-2"), (403, "-3"), (500, "-5")] {
        let server = FirmwareServer::start_with(
            img.to_vec(),
            Faults {
                status: Some(status),
                ..Faults::default()
            },
        )
        .unwrap();
        let source = HttpSource::new(HttpConfig::default()).unwrap();
        let (s, sent) = session_on(Protocol::Tencent, Box::new(source));
        // A 500 would be retried; here every status must fail at once.
        s.set_retry_policy(ota::retry::RetryPolicy {
            max_attempts: 0,
            ..Default::default()
        })
        .unwrap();
        let down = s.downstream_topic().to_string();
        s.handle_message(&down, tencent_notice(img, &server.url()).as_bytes())
            .unwrap();
        let mut buf = [0u8; 512];
        let r = s.fetch_yield(&mut buf, Duration::from_secs(5));
        assert_eq!(r, Err(Error::Fetch(FetchError::Status(status))));
        let last = texts(&sent).pop().unwrap();
        assert!(
            last.contains(r#""state":"fail""#)
                && last.contains(&format!(r#""result_code":"{code}""#)),
            "HTTP {status}: {last}"
        );
        assert!(
            !last.contains(r#""result_msg":"""#),
            "result_msg names the cause: {last}"
        );
        // The firmware's own -2 afterwards is not sent again.
        s.report_progress(-2, None).unwrap();
        assert_eq!(texts(&sent).pop().unwrap(), last);
    }
}

#[test]
fn tencent_resume_with_start_download_and_client_md5() {
    let img = image(20_000);
    let (s, _) = session(Protocol::Tencent, img);
    let down = s.downstream_topic().to_string();
    s.handle_message(&down, tencent_notice(img, "https://h/f").as_bytes())
        .unwrap();
    // The firmware kept 7000 bytes from an earlier attempt: feed them, resume after them.
    s.reset_client_digest().unwrap();
    s.update_client_digest(&img[..7000]).unwrap();
    s.start_download(7000, img.len() as u64).unwrap();
    assert_eq!(fetch_all(&s), &img[7000..]);
    assert!(s.check_firmware().unwrap());

    // Resuming without feeding the stored bytes can never verify.
    let (s, _) = session(Protocol::Tencent, img);
    s.handle_message(&down, tencent_notice(img, "https://h/f").as_bytes())
        .unwrap();
    s.start_download(7000, 0).unwrap();
    assert_eq!(fetch_all(&s).len(), img.len() - 7000);
    assert!(!s.check_firmware().unwrap());
    assert!(matches!(
        s.start_download(30_000, 0),
        Err(Error::InvalidParam(_))
    ));
}

#[test]
fn an_upgrade_for_another_module_is_delivered_with_its_module() {
    let img = image(100);
    let (s, sent) = session(Protocol::Aliyun, img);
    let down = s.downstream_topic().to_string();
    s.report_version("1.0.0").unwrap();
    s.report_module_version("MCU", "3.1").unwrap();
    let msg = format!(
        r#"{{"code":"1000","data":{{"size":100,"version":"3.2","url":"http://h/f","md5":"{}","module":"driver"}},"id":1,"message":"success"}}"#,
        md5_hex(img)
    );
    s.handle_message(&down, msg.as_bytes()).unwrap();
    assert_eq!(s.with_notice(|n| n.module_name().to_string()), "driver");
    fetch_all(&s);
    s.report_upgrade_success("3.2").unwrap();
    assert_eq!(
        texts(&sent).pop().unwrap(),
        r#"{"id":3,"params":{"version":"3.2","module":"driver"}}"#
    );
}
