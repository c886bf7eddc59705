//! Signed images through the engine (issue 14): the image's own checks run on the bytes
//! `fetch_yield` hands out, over a real HTTP socket, and decide `check_firmware` together with
//! the platform's digest; a refusal ends the download with the protocol's verify-failed report
//! naming the cause.
//!
//! Every fault of the issue (one flipped byte in the payload, the header, the protected TLVs,
//! the signature; a wrong key; no signature TLV with a signature required; a lower version; a
//! lower security counter; a truncated TLV area; a TLV length past the end) is run on all four
//! platforms, on the committed imgtool fixtures of both algorithms and on images signed at test
//! time by the real imgtool with fresh keys. The platform announces the size and digest of the
//! file it serves, as a cloud does: its digest matches, only the image's own checks refuse.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::imgtool::{fresh_key, fresh_key_named, imgtool, scratch, sign};
use common::mcuboot::{fixture, flipped, key, without_tlv, Layout};
use common::recorder::{payloads, Recorder, Sent};
use ota::error::Error;
use ota::image::{tlv, ImageError, ImageKey, ImagePolicy, ImageVersion, VerifiedImage};
use ota::retry::RetryPolicy;
use ota::source::{HttpConfig, HttpSource};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::http::{Faults, FirmwareServer};
use ota_cloud::{md5_hex, sha256_hex};

/// The version every upgrade here installs.
const TARGET: &str = "2.0.0";

/// The upgrade message `protocol`'s cloud sends for `image` at `url`: the served file's size
/// and digest (MD5; SHA-256 on SagooIOT, where the image's own hash is SHA-256 too).
fn notice(protocol: Protocol, image: &[u8], url: &str) -> String {
    let size = image.len();
    match protocol {
        Protocol::Aliyun => format!(
            r#"{{"code":"1000","data":{{"size":{size},"version":"{TARGET}","url":"{url}","md5":"{}"}},"id":1,"message":"success"}}"#,
            md5_hex(image)
        ),
        Protocol::Sagoo => format!(
            r#"{{"code":"200","data":{{"size":{size},"version":"{TARGET}","url":"{url}","sign":"{}","signMethod":"SHA256"}},"id":1,"message":"success"}}"#,
            sha256_hex(image)
        ),
        Protocol::Tencent => format!(
            r#"{{"file_size":{size},"md5sum":"{}","type":"update_firmware","url":"{url}","version":"{TARGET}"}}"#,
            md5_hex(image)
        ),
        Protocol::Ucloud => format!(
            r#"{{"Method":"notify","Payload":{{"Version":"{TARGET}","URL":"{url}","MD5":"{}","Size":{size},"TaskID":"t-14"}}}}"#,
            md5_hex(image)
        ),
    }
}

/// The verify-failed report, (topic, message), a device on `protocol` sends for a refusal
/// described as `desc`: Aliyun/SagooIOT step -3 with it as desc (the session's first message
/// with an id), Tencent fail -4 with it as result_msg, UCloud fail with it as ErrMsg.
fn verify_failed(protocol: Protocol, desc: &str) -> (String, String) {
    let (topic, message) = match protocol {
        Protocol::Aliyun => (
            "/ota/device/progress/pk/dn",
            format!(r#"{{"id":1,"params":{{"step":"-3","desc":"{desc}"}}}}"#),
        ),
        Protocol::Sagoo => (
            "/ota/device/progress/pk/dn",
            format!(r#"{{"id":"1","params":{{"step":"-3","desc":"{desc}"}}}}"#),
        ),
        Protocol::Tencent => (
            "$ota/report/pk/dn",
            format!(
                r#"{{"type":"report_progress","report":{{"progress":{{"state":"fail","result_code":"-4","result_msg":"{desc}"}},"version":"{TARGET}"}}}}"#
            ),
        ),
        Protocol::Ucloud => (
            "/$system/pk/dn/ota/upstream",
            format!(r#"{{"Method":"fail","Payload":{{"TaskID":"t-14","ErrMsg":"{desc}"}}}}"#),
        ),
    };
    (topic.to_string(), message)
}

/// Whether `message` reports a failure in `protocol`'s terms (any cause).
fn is_failure(protocol: Protocol, message: &str) -> bool {
    match protocol {
        Protocol::Aliyun | Protocol::Sagoo => message.contains(r#""step":"-"#),
        Protocol::Tencent => message.contains(r#""state":"fail""#),
        Protocol::Ucloud => message.starts_with(r#"{"Method":"fail""#),
    }
}

/// The failure reports the session sent, (topic, message).
fn failure_reports(protocol: Protocol, sent: &Sent) -> Vec<(String, String)> {
    sent.lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| is_failure(protocol, m))
        .cloned()
        .collect()
}

/// Retries quick enough for a test that cuts the connection on purpose.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        stall_timeout: Duration::from_secs(5),
    }
}

/// A session on `protocol` under `policy`, told to upgrade to what `server` serves.
fn session(protocol: Protocol, server: &FirmwareServer, policy: ImagePolicy) -> (OtaSession, Sent) {
    let config = OtaConfig {
        http: HttpConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        },
        retry: fast_retries(),
        image: policy,
        ..OtaConfig::for_protocol(protocol)
    };
    let source = HttpSource::new(config.http.clone()).expect("HTTP source");
    let sent: Sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .expect("session");
    let message = notice(protocol, server.image(), &server.url());
    s.handle_message(s.downstream_topic(), message.as_bytes())
        .expect("upgrade accepted");
    (s, sent)
}

/// What firmware written like the iotkit sample got: the bytes it appended and the first
/// error `fetch_yield` returned.
struct Fetched {
    bytes: Vec<u8>,
    first_error: Option<Error>,
}

/// The iotkit sample's loop: append what fetch_yield returns, report FETCH_FAILED (-2) on every
/// return <= 0, stop at is_fetch_finished.
fn fetch_all(s: &OtaSession) -> Fetched {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fetched = Fetched {
        bytes: Vec::new(),
        first_error: None,
    };
    let mut buf = vec![0u8; 1000];
    while !s.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not end");
        match s.fetch_yield(&mut buf, Duration::from_secs(1)) {
            Ok(n) if n > 0 => fetched.bytes.extend_from_slice(&buf[..n]),
            r => {
                if let Err(e) = r {
                    fetched.first_error.get_or_insert(e);
                }
                // As the sample does; its result is not the sample's concern either.
                let _ = s.report_progress(-2, None);
            }
        }
    }
    fetched
}

fn required(keys: Vec<ImageKey>) -> ImagePolicy {
    ImagePolicy {
        keys,
        require_signature: true,
        ..ImagePolicy::default()
    }
}

/// Downloads `image` on `protocol` under `policy` and checks it is accepted with every byte
/// handed out and no failure report; what the image's own checks found.
fn accepted(protocol: Protocol, image: &[u8], policy: ImagePolicy) -> VerifiedImage {
    let server = FirmwareServer::start(image.to_vec()).expect("server");
    let (s, sent) = session(protocol, &server, policy);
    let fetched = fetch_all(&s);
    assert_eq!(fetched.first_error, None, "{protocol:?}");
    assert!(fetched.bytes == image, "{protocol:?}: the image as served");
    assert_eq!(s.check_firmware(), Ok(true), "{protocol:?}");
    assert_eq!(
        failure_reports(protocol, &sent),
        [],
        "{protocol:?}: {:?}",
        payloads(&sent)
    );
    s.verified_image().expect("verified image")
}

/// Where a refusal shows.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// When the image is complete (hash, signature, key, downgrade): every byte was handed
    /// out, `check_firmware` says no and `last_error` says why.
    AtTheEnd,
    /// As the bytes stream (a header or TLV layout that cannot be right), once the byte before
    /// this offset arrived: `fetch_yield` returns the refusal and hands out no byte from this
    /// offset on.
    Before(usize),
}

/// One way an image is wrong, the policy it meets and the refusal it must get.
struct Fault {
    what: String,
    image: Vec<u8>,
    policy: ImagePolicy,
    refusal: ImageError,
    found: Found,
}

/// Every fault of issue 14 made from one good signed `image`, signed by `signer` and
/// carrying a security-counter TLV; `stranger` is a key that did not sign it.
fn faults(name: &str, image: &[u8], signer: &ImageKey, stranger: &ImageKey) -> Vec<Fault> {
    let layout = Layout::of(image);
    let signature_tlv = if layout.find(tlv::ECDSA_SIG).is_some() {
        tlv::ECDSA_SIG
    } else {
        tlv::ED25519
    };
    let (signature, signature_len) = layout.value(signature_tlv);
    let (sec_cnt, _) = layout.value(tlv::SEC_CNT);
    let counter = u32::from_le_bytes(image[sec_cnt..sec_cnt + 4].try_into().unwrap());
    let signed_by = required(vec![*signer]);
    let version = layout.version;
    let newer = ImageVersion::new(version.major, version.minor, version.revision + 1, 0);
    // The last TLV is the signature: one byte longer than what is left of its area.
    let &(last, _, last_len) = layout.tlvs.last().unwrap();
    let mut past_end = image.to_vec();
    past_end[last + 2..last + 4].copy_from_slice(&(last_len as u16 + 1).to_le_bytes());
    // The signature cut short; the cloud announces the cut file's size.
    let cut = layout.end - 10;
    let fault = |what: &str, image: Vec<u8>, policy: &ImagePolicy, refusal, found| Fault {
        what: format!("{name}: {what}"),
        image,
        policy: policy.clone(),
        refusal,
        found,
    };
    use Found::{AtTheEnd, Before};
    vec![
        fault(
            "a payload byte flipped",
            flipped(image, layout.hdr_size + layout.img_size / 2),
            &signed_by,
            ImageError::HashMismatch,
            AtTheEnd,
        ),
        fault(
            "a header byte flipped (the minor version: an attacker's upgrade)",
            flipped(image, 21),
            &signed_by,
            ImageError::HashMismatch,
            AtTheEnd,
        ),
        fault(
            "a protected TLV byte flipped (the security counter)",
            flipped(image, sec_cnt),
            &signed_by,
            ImageError::HashMismatch,
            AtTheEnd,
        ),
        fault(
            "a signature byte flipped",
            flipped(image, signature + signature_len / 2),
            &signed_by,
            ImageError::BadSignature,
            AtTheEnd,
        ),
        fault(
            "a wrong key",
            image.to_vec(),
            &required(vec![*stranger]),
            ImageError::UnknownKey,
            AtTheEnd,
        ),
        fault(
            "no signature TLV, a signature required",
            without_tlv(image, signature_tlv),
            &signed_by,
            ImageError::MissingSignature,
            AtTheEnd,
        ),
        fault(
            "a lower version than the running one",
            image.to_vec(),
            &ImagePolicy {
                running_version: Some(newer),
                ..signed_by.clone()
            },
            ImageError::Downgrade {
                running: newer,
                image: version,
            },
            AtTheEnd,
        ),
        fault(
            "a lower security counter than the running one",
            image.to_vec(),
            &ImagePolicy {
                running_security_counter: Some(counter + 1),
                ..signed_by.clone()
            },
            ImageError::CounterDowngrade {
                running: counter + 1,
                image: counter,
            },
            AtTheEnd,
        ),
        // Announced as served, a short TLV area contradicts the unprotected area's info.
        fault(
            "a truncated TLV area",
            image[..cut].to_vec(),
            &signed_by,
            ImageError::SizeMismatch {
                announced: cut as u64,
                image: layout.end as u64,
            },
            Before(layout.unprotected_at + 4),
        ),
        fault(
            "a TLV length pointing past the end",
            past_end,
            &signed_by,
            ImageError::TlvPastEnd {
                offset: last as u64,
                end: layout.end as u64,
            },
            Before(last + 4),
        ),
    ]
}

/// The faults that need no signed image: a plain file and an imgtool image made without a
/// key, a signature required.
fn unsigned_faults() -> Vec<Fault> {
    let policy = required(vec![key("test-only-ed25519.pub.pem")]);
    vec![
        Fault {
            what: "a plain file, a signature required".into(),
            image: vec![0x5a; 20_000],
            policy: policy.clone(),
            refusal: ImageError::NotAnImage { magic: 0x5a5a_5a5a },
            found: Found::Before(4),
        },
        Fault {
            what: "unsigned.bin (imgtool sign without a key), a signature required".into(),
            image: fixture("unsigned.bin"),
            policy,
            refusal: ImageError::MissingSignature,
            found: Found::AtTheEnd,
        },
    ]
}

/// The committed fixtures' faults, both algorithms, and the unsigned ones.
fn fixture_faults() -> Vec<Fault> {
    let stranger = key("test-only-ecdsa-p256-other.pub.pem");
    let mut all = faults(
        "ecdsa-p256.bin",
        &fixture("ecdsa-p256.bin"),
        &key("test-only-ecdsa-p256.pub.pem"),
        &stranger,
    );
    all.extend(faults(
        "ed25519.bin",
        &fixture("ed25519.bin"),
        &key("test-only-ed25519.pub.pem"),
        &stranger,
    ));
    all.extend(unsigned_faults());
    all
}

/// Downloads `fault`'s image on `protocol` and checks its refusal: where it showed, what
/// `check_firmware` and `last_error` say, and the one verify-failed report naming the cause.
fn assert_refused(protocol: Protocol, fault: &Fault) {
    let what = format!("{protocol:?}, {}", fault.what);
    let server = FirmwareServer::start(fault.image.clone()).expect("server");
    let (s, sent) = session(protocol, &server, fault.policy.clone());
    let fetched = fetch_all(&s);
    let image = Error::Image(fault.refusal);
    match fault.found {
        Found::AtTheEnd => {
            assert_eq!(fetched.first_error, None, "{what}: the last bytes went out");
            assert!(
                fetched.bytes == fault.image,
                "{what}: every byte handed out"
            );
        }
        Found::Before(offset) => {
            assert_eq!(fetched.first_error.as_ref(), Some(&image), "{what}");
            let n = fetched.bytes.len();
            assert!(
                n < offset,
                "{what}: {n} bytes handed out, refused by {offset}"
            );
            assert!(fetched.bytes == fault.image[..n], "{what}: a prefix");
        }
    }
    assert_eq!(s.check_firmware(), Ok(false), "{what}");
    assert_eq!(s.verified_image(), None, "{what}");
    assert_eq!(s.last_error(), Some(image), "{what}");
    assert_eq!(
        failure_reports(protocol, &sent),
        [verify_failed(protocol, &fault.refusal.to_string())],
        "{what}: one verify-failed report naming the cause; sent {:?}",
        payloads(&sent)
    );
}

#[test]
fn a_good_signed_image_is_accepted_on_every_platform_and_says_what_it_is() {
    let payload = fixture("payload.bin");
    for protocol in Protocol::ALL {
        for (file, signer, offset) in [
            ("ecdsa-p256.bin", "test-only-ecdsa-p256.pub.pem", 0x200),
            ("ed25519.bin", "test-only-ed25519.pub.pem", 0x20),
        ] {
            let image = fixture(file);
            let policy = required(vec![key("test-only-ecdsa-p256-other.pub.pem"), key(signer)]);
            let v = accepted(protocol, &image, policy);
            assert_eq!(
                v,
                VerifiedImage {
                    mcuboot: true,
                    signed: true,
                    key_index: Some(1),
                    version: Some(ImageVersion::new(1, 2, 3, 4)),
                    security_counter: Some(7),
                    payload_offset: offset,
                    payload_size: 3000,
                },
                "{protocol:?} {file}"
            );
            assert_eq!(&image[offset as usize..][..3000], &payload[..]);
        }
    }
}

#[test]
fn every_fault_is_refused_on_aliyun_with_step_minus_3_naming_the_cause() {
    for fault in fixture_faults() {
        assert_refused(Protocol::Aliyun, &fault);
    }
}

#[test]
fn every_fault_is_refused_on_sagoo_with_step_minus_3_naming_the_cause() {
    for fault in fixture_faults() {
        assert_refused(Protocol::Sagoo, &fault);
    }
}

#[test]
fn every_fault_is_refused_on_tencent_with_fail_minus_4_naming_the_cause() {
    for fault in fixture_faults() {
        assert_refused(Protocol::Tencent, &fault);
    }
}

#[test]
fn every_fault_is_refused_on_ucloud_with_fail_and_errmsg_naming_the_cause() {
    for fault in fixture_faults() {
        assert_refused(Protocol::Ucloud, &fault);
    }
}

#[test]
fn fresh_imgtool_images_of_both_algorithms_are_accepted_and_every_fault_refused() {
    let test = "fresh_imgtool_images_of_both_algorithms_are_accepted_and_every_fault_refused";
    let Some(tool) = imgtool(test) else {
        return;
    };
    let dir = scratch("signed_images-fresh");
    let payload: Vec<u8> = (0..6000u32).map(|i| (i * 13 + i / 101) as u8).collect();
    for (kind, other_kind, header) in [
        ("ecdsa-p256", "ed25519", "0x200"),
        ("ed25519", "ecdsa-p256", "0x80"),
    ] {
        let signer = fresh_key(tool, &dir, kind);
        let bystander = fresh_key(tool, &dir, other_kind);
        let stranger = fresh_key_named(tool, &dir, kind, &format!("{kind}-stranger"));
        let private = format!("{kind}.pem");
        let base = [
            "--key",
            &private,
            "--header-size",
            header,
            "--align",
            "8",
            "--version",
            "3.4.5+6",
            "--security-counter",
            "9",
        ];
        let image = sign(tool, &dir, &payload, &base);
        let offset = u64::from_str_radix(&header[2..], 16).unwrap();
        for protocol in Protocol::ALL {
            let v = accepted(protocol, &image, required(vec![bystander, signer]));
            assert_eq!(
                v,
                VerifiedImage {
                    mcuboot: true,
                    signed: true,
                    key_index: Some(1),
                    version: Some(ImageVersion::new(3, 4, 5, 6)),
                    security_counter: Some(9),
                    payload_offset: offset,
                    payload_size: payload.len() as u64,
                },
                "{kind} on {protocol:?}"
            );
            for fault in faults(&format!("fresh {kind}"), &image, &signer, &stranger) {
                assert_refused(protocol, &fault);
            }
        }
        // With the whole public key instead of its hash, every key of the algorithm is tried:
        // a stranger's key of the same algorithm finds the signature bad.
        let mut full = base.to_vec();
        full.extend_from_slice(&["--public-key-format", "full"]);
        let full = sign(tool, &dir, &payload, &full);
        assert_eq!(
            accepted(Protocol::Tencent, &full, required(vec![stranger, signer])).key_index,
            Some(1),
            "{kind}, full key"
        );
        assert_refused(
            Protocol::Tencent,
            &Fault {
                what: format!("fresh {kind} with the full public key, a stranger's key"),
                image: full,
                policy: required(vec![stranger]),
                refusal: ImageError::BadSignature,
                found: Found::AtTheEnd,
            },
        );
    }
}

#[test]
fn a_download_cut_mid_image_resumes_and_still_verifies() {
    let image = fixture("ecdsa-p256.bin");
    let layout = Layout::of(&image);
    let (signature, _) = layout.value(tlv::ECDSA_SIG);
    // Inside the magic, the fixed header, the payload, the protected area, the signature.
    let cuts = vec![
        2,
        20,
        layout.hdr_size as u64 + 1500,
        layout.protected_at as u64 + 2,
        signature as u64 + 10,
    ];
    let signed_by = required(vec![key("test-only-ecdsa-p256.pub.pem")]);
    for protocol in Protocol::ALL {
        for ignore_range in [false, true] {
            let what = format!("{protocol:?}, ignore_range {ignore_range}");
            let faults = Faults {
                cuts: cuts.clone(),
                ignore_range,
                ..Faults::default()
            };
            let server = FirmwareServer::start_with(image.clone(), faults).expect("server");
            let (s, sent) = session(protocol, &server, signed_by.clone());
            let fetched = fetch_all(&s);
            assert_eq!(fetched.first_error, None, "{what}");
            assert!(fetched.bytes == image, "{what}: the image once, in order");
            assert_eq!(s.check_firmware(), Ok(true), "{what}");
            assert_eq!(s.verified_image().unwrap().key_index, Some(0), "{what}");
            assert_eq!(failure_reports(protocol, &sent), [], "{what}");
            // The server logs a request once its response is out, maybe after the client read it.
            let requests = server.requests_when(cuts.len() + 1, Duration::from_secs(5));
            assert_eq!(requests.len(), cuts.len() + 1, "{what}: {requests:?}");
            // Each resumed where it stopped (the server that ignores Range is asked all the same).
            let mut ranges: Vec<String> = requests.iter().filter_map(|r| r.range.clone()).collect();
            ranges.sort();
            let mut expected: Vec<String> = cuts.iter().map(|c| format!("bytes={c}-")).collect();
            expected.sort();
            assert_eq!(ranges, expected, "{what}");
        }
    }
    // Tampered, the resumed download is refused all the same.
    let tampered = flipped(&image, layout.hdr_size + 2000);
    let server = FirmwareServer::start_with(
        tampered.clone(),
        Faults {
            cuts,
            ..Faults::default()
        },
    )
    .expect("server");
    let (s, sent) = session(Protocol::Aliyun, &server, signed_by);
    let fetched = fetch_all(&s);
    assert!(fetched.bytes == tampered);
    assert_eq!(s.check_firmware(), Ok(false));
    assert_eq!(s.last_error(), Some(Error::Image(ImageError::HashMismatch)));
    assert_eq!(
        failure_reports(Protocol::Aliyun, &sent),
        [verify_failed(Protocol::Aliyun, "image hash mismatch")]
    );
}

/// Why the image was refused is what `last_error` says once `check_firmware` said no, whatever
/// the firmware called in between: the iotkit sample reports progress after every chunk, and
/// its progress 100 after the last one comes after the verify-failed report (refused).
#[test]
fn the_refusal_is_the_last_error_when_check_firmware_says_no() {
    let image = flipped(&fixture("ed25519.bin"), 0x20 + 100);
    let policy = required(vec![key("test-only-ed25519.pub.pem")]);
    for protocol in Protocol::ALL {
        let server = FirmwareServer::start(image.clone()).expect("server");
        let (s, sent) = session(protocol, &server, policy.clone());
        let (mut got, mut last_percent) = (0usize, 0usize);
        let mut buf = [0u8; 1000];
        while !s.is_fetch_finished() {
            if let Ok(n) = s.fetch_yield(&mut buf, Duration::from_secs(1)) {
                got += n;
            }
            let percent = got * 100 / image.len();
            if percent > last_percent {
                // As the sample does; after the refusal this one is refused in turn.
                let _ = s.report_progress(percent as i32, None);
                last_percent = percent;
            }
        }
        assert_eq!(got, image.len(), "{protocol:?}");
        assert_eq!(s.check_firmware(), Ok(false), "{protocol:?}");
        assert_eq!(
            s.last_error(),
            Some(Error::Image(ImageError::HashMismatch)),
            "{protocol:?}"
        );
        assert_eq!(
            failure_reports(protocol, &sent).len(),
            1,
            "{protocol:?}: {:?}",
            payloads(&sent)
        );
    }
}

#[test]
fn without_a_policy_a_plain_file_is_accepted_as_before() {
    for protocol in Protocol::ALL {
        let v = accepted(protocol, &[0x5a; 20_000], ImagePolicy::default());
        assert!(!v.mcuboot && !v.signed, "{protocol:?}");
        assert_eq!((v.payload_offset, v.payload_size), (0, 20_000));
    }
}

#[test]
fn the_policy_cannot_change_during_a_download() {
    let server = FirmwareServer::start(fixture("ed25519.bin")).expect("server");
    let (s, _) = session(Protocol::Aliyun, &server, ImagePolicy::default());
    let policy = required(vec![key("test-only-ed25519.pub.pem")]);
    assert!(matches!(
        s.set_image_policy(policy.clone()),
        Err(Error::InvalidState(_))
    ));
    fetch_all(&s);
    assert_eq!(s.check_firmware(), Ok(true));
    s.set_image_policy(policy).expect("between downloads");
}
