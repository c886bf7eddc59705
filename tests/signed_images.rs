//! Signed images through the engine (issue 14): the image's own checks run on the bytes
//! `fetch_yield` hands out, over a real HTTP socket, and decide `check_firmware` together with
//! the platform's digest; a refusal ends the download with the protocol's verify-failed report
//! naming the cause.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::recorder::{payloads, Recorder, Sent};
use ota::error::Error;
use ota::image::{ImageError, ImageKey, ImagePolicy};
use ota::source::{HttpConfig, HttpSource};
use ota::{OtaConfig, OtaSession};
use ota_cloud::http::FirmwareServer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcuboot");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn key(name: &str) -> ImageKey {
    ImageKey::parse(&fixture(name)).expect("key")
}

/// A session under `policy`, told to upgrade to what `server` serves (Aliyun).
fn session(server: &FirmwareServer, policy: ImagePolicy) -> (OtaSession, Sent) {
    let config = OtaConfig {
        http: HttpConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        },
        image: policy,
        ..OtaConfig::default()
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
    let image = server.image();
    let notice = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{}","md5":"{}"}},"id":1,"message":"success"}}"#,
        image.len(),
        server.url(),
        ota_cloud::md5_hex(image)
    );
    s.handle_message(s.downstream_topic(), notice.as_bytes())
        .expect("upgrade accepted");
    (s, sent)
}

/// The iotkit sample's loop: append what fetch_yield returns, stop at is_fetch_finished; the
/// bytes and the first error.
fn fetch_all(s: &OtaSession) -> (Vec<u8>, Option<Error>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut got, mut first_error) = (Vec::new(), None);
    let mut buf = vec![0u8; 1000];
    while !s.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not end");
        match s.fetch_yield(&mut buf, Duration::from_secs(1)) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (got, first_error)
}

fn required(keys: &[&str]) -> ImagePolicy {
    ImagePolicy {
        keys: keys.iter().map(|k| key(k)).collect(),
        require_signature: true,
        ..ImagePolicy::default()
    }
}

#[test]
fn a_signed_image_verifies_and_says_what_it_is() {
    for (file, pubkey) in [
        ("ecdsa-p256.bin", "test-only-ecdsa-p256.pub.pem"),
        ("ed25519.bin", "test-only-ed25519.pub.pem"),
    ] {
        let server = FirmwareServer::start(fixture(file)).expect("server");
        let (s, sent) = session(
            &server,
            required(&["test-only-ecdsa-p256-other.pub.pem", pubkey]),
        );
        let (got, e) = fetch_all(&s);
        assert_eq!(e, None, "{file}");
        assert_eq!(got, &server.image()[..]);
        assert!(s.check_firmware().unwrap(), "{file}");
        let v = s.verified_image().expect("verified image");
        assert!(v.signed && v.mcuboot, "{file}: {v:?}");
        assert_eq!(v.key_index, Some(1), "{file}");
        assert_eq!(v.version.map(|v| v.to_string()).as_deref(), Some("1.2.3+4"));
        assert_eq!(v.security_counter, Some(7));
        assert_eq!(v.payload_size, 3000);
        assert!(
            !payloads(&sent).iter().any(|p| p.contains("\"-3\"")),
            "no failure report: {:?}",
            payloads(&sent)
        );
    }
}

#[test]
fn a_tampered_payload_is_refused_with_a_verify_failed_report_naming_the_cause() {
    let mut image = fixture("ecdsa-p256.bin");
    image[0x200 + 100] ^= 1;
    let server = FirmwareServer::start(image).expect("server");
    let (s, sent) = session(&server, required(&["test-only-ecdsa-p256.pub.pem"]));
    let (got, e) = fetch_all(&s);
    // The platform's digest is of the tampered file (the cloud was told so): the image's own
    // hash is what catches it, at the end; the bytes are out, the verdict is not.
    assert_eq!(got.len(), server.image().len());
    assert!(!s.check_firmware().unwrap());
    assert_eq!(s.verified_image(), None);
    assert_eq!(
        e, None,
        "the last bytes went out; the cycle ended after them"
    );
    assert_eq!(s.last_error(), Some(Error::Image(ImageError::HashMismatch)));
    let reports = payloads(&sent);
    assert!(
        reports
            .iter()
            .any(|p| p.contains(r#""step":"-3""#) && p.contains("image hash mismatch")),
        "{reports:?}"
    );
}

#[test]
fn an_unsigned_file_is_refused_at_its_fourth_byte_when_a_signature_is_required() {
    let server = FirmwareServer::start(vec![0x5a; 20_000]).expect("server");
    let (s, sent) = session(&server, required(&["test-only-ed25519.pub.pem"]));
    let (got, e) = fetch_all(&s);
    assert!(got.is_empty(), "no byte of a refused file is handed out");
    assert!(matches!(
        e,
        Some(Error::Image(ImageError::NotAnImage { .. }))
    ));
    assert!(!s.check_firmware().unwrap());
    assert!(payloads(&sent)
        .iter()
        .any(|p| p.contains(r#""step":"-3""#) && p.contains("not an MCUboot image")));
}

#[test]
fn without_a_policy_a_plain_file_is_accepted_as_before() {
    let server = FirmwareServer::start(vec![0x5a; 20_000]).expect("server");
    let (s, _) = session(&server, ImagePolicy::default());
    let (_, e) = fetch_all(&s);
    assert_eq!(e, None);
    assert!(s.check_firmware().unwrap());
    let v = s.verified_image().unwrap();
    assert!(!v.mcuboot && !v.signed);
    assert_eq!((v.payload_offset, v.payload_size), (0, 20_000));
}

#[test]
fn the_policy_cannot_change_during_a_download() {
    let server = FirmwareServer::start(fixture("ed25519.bin")).expect("server");
    let (s, _) = session(&server, ImagePolicy::default());
    assert!(matches!(
        s.set_image_policy(required(&["test-only-ed25519.pub.pem"])),
        Err(Error::InvalidState(_))
    ));
    fetch_all(&s);
    assert!(s.check_firmware().unwrap());
    s.set_image_policy(required(&["test-only-ed25519.pub.pem"]))
        .expect("between downloads");
}
