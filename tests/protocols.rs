//! Each platform's protocol: full upgrades through the Rust API for every protocol — the
//! simulator's embedded MQTT broker (`tools/ota-cloud/src/broker.rs`), the `ota-cloud`
//! simulator playing the platform and checking every message the device sends (the shapes:
//! `docs/protocols.md`), firmware over real HTTP on 127.0.0.1 —, upgrade messages as they
//! arrive over MQTT, each platform's rules as the engine applies them on in-memory transports
//! (what is sent for every event, what is refused, what is ignored), and decoding details the
//! other tests do not reach.

mod common;
use common::firmware::{aliyun_notice, image};
use common::recorder::{payloads, Recorder, Sent};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::mqtt::MqttEvent;
use ota::protocol::{decode, FixedStr, Limits, NoticeError, UpgradeNotice};
use ota::source::{HttpConfig, HttpSource, MemorySource};
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, OtaState, Protocol};
use ota_cloud::broker::EmbeddedBroker;
use ota_cloud::cloud::{Cloud, CloudOptions, Firmware, Success};
use ota_cloud::http::FirmwareServer;
use ota_cloud::sagoo::SignMethod;
use ota_cloud::{md5_hex, sha256_hex};

fn connect(port: u16, client_id: &str) -> MqttClient {
    MqttClient::connect(&MqttOptions::new("127.0.0.1", port, client_id)).expect("broker reachable")
}

/// A whole upgrade per platform through the broker, the simulator checking every message.
mod full_upgrades {
    use super::*;

    /// Plays the device until the download ends; returns the bytes it wrote.
    fn download(mqtt: &MqttClient, session: &OtaSession, buf_len: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut image = Vec::new();
        let mut buf = vec![0u8; buf_len];
        let mut last = 0;
        while !session.is_fetch_finished() {
            assert!(Instant::now() < deadline, "download did not finish");
            mqtt.yield_for(Duration::from_millis(if session.is_fetching() {
                0
            } else {
                50
            }))
            .unwrap();
            if session.is_fetching() {
                let n = session
                    .fetch_yield(&mut buf, Duration::from_secs(1))
                    .unwrap();
                image.extend_from_slice(&buf[..n]);
                let percent = (session.fetched_size() * 100 / session.file_size()) as i32;
                if percent > last {
                    session.report_progress(percent, None).unwrap();
                    last = percent;
                }
            }
        }
        image
    }

    struct Case {
        protocol: Protocol,
        size: usize,
        buf_len: usize,
        device: &'static str,
        module: Option<&'static str>,
        sign_method: SignMethod,
    }

    impl Case {
        fn new(protocol: Protocol, device: &'static str) -> Case {
            Case {
                protocol,
                size: 1_000_000,
                buf_len: 5000,
                device,
                module: None,
                sign_method: SignMethod::Md5,
            }
        }
    }

    fn cloud_protocol(p: Protocol) -> ota_cloud::cloud::Protocol {
        p.name().parse().unwrap()
    }

    fn full_upgrade(case: Case) {
        let Case {
            protocol,
            size,
            buf_len,
            device,
            module,
            sign_method,
        } = case;
        let broker = EmbeddedBroker::start().unwrap();
        let image = ota_cloud::generate_firmware(size);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let firmware = Firmware::new("2.0.0", server.url(), &image);
        let mut cloud = Cloud::connect(
            cloud_protocol(protocol),
            "127.0.0.1",
            broker.port(),
            "pk1",
            device,
        )
        .unwrap();
        cloud.set_quiet(true);
        cloud
            .set_options(CloudOptions {
                module: module.map(str::to_string),
                sign_method,
                ..CloudOptions::default()
            })
            .unwrap();
        let cloud_thread =
            std::thread::spawn(move || cloud.run(&firmware, Duration::from_secs(60)));

        let config = OtaConfig::for_protocol(protocol);
        let mqtt = connect(broker.port(), device);
        let session = OtaSession::attach(&mqtt, "pk1", device, config.clone()).unwrap();
        match module {
            Some(m) => session.report_module_version(m, "1.0.0").unwrap(),
            None => session.report_version("1.0.0").unwrap(),
        }
        let got = download(&mqtt, &session, buf_len);
        assert_eq!(got.len(), image.len());
        assert!(
            got == image,
            "downloaded bytes differ from the served image"
        );
        assert!(session.check_firmware().unwrap());
        assert_eq!(
            session.with_notice(|n| n.version.as_str().to_string()),
            "2.0.0"
        );
        assert_eq!(
            session.with_notice(|n| n.module_name().to_string()),
            module.unwrap_or("default")
        );
        session.report_upgrade_begin().unwrap();
        session.report_upgrade_success("2.0.0").unwrap();

        // "Reboot": a new session reports the version now running.
        session.detach(&mqtt).unwrap();
        drop(session);
        let session = OtaSession::attach(&mqtt, "pk1", device, config).unwrap();
        match module {
            Some(m) => session.report_module_version(m, "2.0.0").unwrap(),
            None => session.report_version("2.0.0").unwrap(),
        }
        let summary = loop {
            mqtt.yield_for(Duration::from_millis(50)).unwrap();
            if cloud_thread.is_finished() {
                break cloud_thread.join().unwrap();
            }
        };
        assert!(
            matches!(summary.outcome, Ok(Success::Upgraded)),
            "{protocol:?} cloud outcome: {:?}",
            summary.outcome
        );
        if protocol != Protocol::Ucloud {
            assert_eq!(
                summary.progress.last(),
                Some(&100),
                "{:?}",
                summary.progress
            );
        }
    }

    #[test]
    fn aliyun_upgrade_with_sample_sized_buffer() {
        full_upgrade(Case::new(Protocol::Aliyun, "dev-5000"));
    }

    #[test]
    fn aliyun_upgrade_with_64k_buffer_and_odd_size() {
        full_upgrade(Case {
            size: 3_000_001,
            buf_len: 64 * 1024,
            ..Case::new(Protocol::Aliyun, "dev-64k")
        });
    }

    #[test]
    fn sagoo_upgrade() {
        full_upgrade(Case::new(Protocol::Sagoo, "dev-sagoo"));
    }

    #[test]
    fn sagoo_module_upgrade_with_sha256() {
        full_upgrade(Case {
            module: Some("MCU"),
            sign_method: SignMethod::Sha256,
            ..Case::new(Protocol::Sagoo, "dev-sagoo-mcu")
        });
    }

    #[test]
    fn tencent_upgrade() {
        full_upgrade(Case::new(Protocol::Tencent, "dev-tencent"));
    }

    #[test]
    fn ucloud_upgrade() {
        full_upgrade(Case::new(Protocol::Ucloud, "dev-ucloud"));
    }

    #[test]
    fn ucloud_module_upgrade() {
        full_upgrade(Case {
            module: Some("module_a"),
            ..Case::new(Protocol::Ucloud, "dev-ucloud-mod")
        });
    }
}

/// Upgrade messages arriving over MQTT while a download runs, or while the firmware yields.
mod upgrade_messages {
    use super::*;

    #[test]
    fn repeated_upgrade_message_keeps_the_download_going() {
        let broker = EmbeddedBroker::start().unwrap();
        let image = ota_cloud::generate_firmware(200_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        let mqtt = connect(broker.port(), "dev-repeat");
        let session = OtaSession::attach(&mqtt, "pk1", "dev-repeat", OtaConfig::default()).unwrap();
        let topic = session.downstream_topic().to_string();
        session.handle_message(&topic, msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; 50_000];
        let first = session
            .fetch_yield(&mut buf, Duration::from_secs(2))
            .unwrap();
        assert!(first > 0);
        session.handle_message(&topic, msg.as_bytes()).unwrap();
        assert!(session.is_fetching());
        assert_eq!(session.fetched_size(), first as u64, "offset kept");
        let mut got = buf[..first].to_vec();
        while !session.is_fetch_finished() {
            let n = session
                .fetch_yield(&mut buf, Duration::from_secs(2))
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == image);
        assert!(session.check_firmware().unwrap());
    }

    /// A yield that dispatches an upgrade message returns right after it (the firmware gets to
    /// FetchYield at once); other messages, and a repeat of the upgrade already being fetched, let
    /// the yield run its whole time.
    #[test]
    fn yield_returns_when_an_upgrade_starts() {
        let broker = EmbeddedBroker::start().unwrap();
        let image = ota_cloud::generate_firmware(10_000);
        let server = FirmwareServer::start(image.clone()).unwrap();
        let msg = aliyun_notice(&image, &server.url(), "2.0.0");
        let mqtt = connect(broker.port(), "dev-early");
        let subscribed = Arc::new(AtomicBool::new(false));
        let acked = subscribed.clone();
        mqtt.on_event(move |e| {
            if matches!(e, MqttEvent::SubscribeAck { .. }) {
                acked.store(true, Ordering::SeqCst);
            }
        });
        let session = OtaSession::attach(&mqtt, "pk1", "dev-early", OtaConfig::default()).unwrap();
        let topic = session.downstream_topic().to_string();
        let cloud = connect(broker.port(), "cloud-early");
        // The broker has the subscription (nothing to dispatch yet).
        let until = Instant::now() + Duration::from_secs(5);
        while !subscribed.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < until,
                "the upgrade topic was not subscribed"
            );
            mqtt.yield_for(Duration::from_millis(10)).unwrap();
        }
        let publish = |payload: &str| {
            cloud
                .publish(
                    &topic,
                    ota::mqtt::QoS::AtLeastOnce,
                    false,
                    payload.as_bytes(),
                )
                .unwrap();
            cloud.yield_for(Duration::from_millis(20)).unwrap();
        };

        // Not an upgrade (ignored by the decoder): the yield runs to its end.
        publish(r#"{"code":"1000","data":{},"id":2,"message":"success"}"#);
        let t = Instant::now();
        mqtt.yield_for(Duration::from_millis(400)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert!(!session.is_fetching());

        // The upgrade: the yield returns long before its 10 s.
        publish(&msg);
        let t = Instant::now();
        mqtt.yield_for(Duration::from_secs(10)).unwrap();
        assert!(session.is_fetching(), "the upgrade was dispatched");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "yield went on for {:?} after the upgrade",
            t.elapsed()
        );

        // The same upgrade again while fetching: nothing new starts, the yield runs its time.
        publish(&msg);
        let t = Instant::now();
        mqtt.yield_for(Duration::from_millis(400)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert!(session.is_fetching());
    }
}

/// Each platform's rules as the engine applies them, on in-memory transports: what is sent
/// for every event, what is refused, what is ignored.
mod rules {
    use super::*;

    fn image(len: usize) -> &'static [u8] {
        super::image(len, 0)
    }

    fn session_on(
        protocol: Protocol,
        source: Box<dyn ota::source::FirmwareSource>,
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

    fn ucloud_notice(img: &[u8], current: &str) -> String {
        format!(
            r#"{{"Method":"notify","Payload":{{"Version":"2.0","CurrentVersion":"{current}","URL":"http://h/f.bin","MD5":"{}","Size":{},"TaskID":"t-9"}}}}"#,
            md5_hex(img),
            img.len()
        )
    }

    fn tencent_notice(img: &[u8], url: &str) -> String {
        format!(
            r#"{{"file_size":{},"md5sum":"{}","type":"update_firmware","url":"{url}","version":"0.2"}}"#,
            img.len(),
            md5_hex(img)
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
        let last = payloads(&sent).pop().unwrap();
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
        let texts = payloads(&sent);
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
        let last = payloads(&sent).pop().unwrap();
        assert!(
            last.contains(r#""step":"-1""#) && last.contains(r#""module":"MCU""#),
            "{last}"
        );
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
            assert_eq!(r, Err(Error::Download(DownloadError::Status(status))));
            let last = payloads(&sent).pop().unwrap();
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
            assert_eq!(payloads(&sent).pop().unwrap(), last);
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
            payloads(&sent).pop().unwrap(),
            r#"{"id":3,"params":{"version":"3.2","module":"driver"}}"#
        );
    }
}

/// Decoding details: SagooIOT's `extData` given as a string that does not fit, and the
/// fixed-capacity string's capacity and swap.
mod decoding {
    use super::*;

    #[test]
    fn sagoo_ext_data_as_a_string_must_fit_its_limit() {
        let limits = Limits {
            ext_data: 16,
            ..Limits::default()
        };
        let mut notice = UpgradeNotice::new(&limits);
        let msg = |ext: &str| {
            format!(
                r#"{{"code":"200","data":{{"size":10,"version":"2.0","url":"http://h/f.bin","sign":"{}","signMethod":"MD5","extData":"{ext}"}},"id":"1","message":"success"}}"#,
                "0".repeat(32)
            )
        };
        // 16 bytes once unescaped: fits exactly.
        let fits = r#"{\"strategy\":\"1\"}"#;
        assert_eq!(
            decode(Protocol::Sagoo, msg(fits).as_bytes(), &limits, &mut notice).map(|_| ()),
            Ok(())
        );
        assert_eq!(notice.ext_data.as_str(), r#"{"strategy":"1"}"#);
        // One more byte does not, and the limit is named.
        let long = r#"{\"strategy\":\"12\"}"#;
        assert_eq!(
            decode(Protocol::Sagoo, msg(long).as_bytes(), &limits, &mut notice),
            Err(NoticeError::TooLong {
                field: "extData",
                len: 17,
                max: 16
            })
        );
    }

    #[test]
    fn fixed_str_keeps_its_capacity_and_swaps_without_copying() {
        let mut a = FixedStr::with_capacity(8);
        let mut b = FixedStr::with_capacity(3);
        assert_eq!((a.capacity(), b.capacity()), (8, 3));
        a.set("abcdefgh").unwrap();
        b.set("xy").unwrap();
        let before = a.as_bytes().as_ptr();
        a.swap(&mut b);
        assert_eq!((a.as_str(), a.capacity()), ("xy", 3));
        assert_eq!((b.as_str(), b.capacity()), ("abcdefgh", 8));
        assert_eq!(
            b.as_bytes().as_ptr(),
            before,
            "the buffers moved, not the bytes"
        );
        let e = a.set("wxyz").unwrap_err();
        assert_eq!((e.len, e.max), (4, 3));
        assert_eq!(a.as_str(), "xy", "a refused set changes nothing");
        a.clear();
        assert_eq!((a.len(), a.capacity()), (0, 3));
    }
}
