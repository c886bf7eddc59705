//! Secure defaults (issue 14, item 5): what a plain `http://` download says protects the image,
//! once per upgrade, whatever the number of requests it takes.
//!
//! The session publishes into a recorder whose `authenticated()` answer stands for the MQTT
//! connection (TLS with the broker verified, or plain TCP); the download runs over a real
//! socket against ota-cloud's firmware server, cut twice so that it takes three requests.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ota::ota::Uplink;
use ota::source::{HttpConfig, HttpSource};
use ota::{OtaConfig, OtaSession};
use ota_cloud::http::{Faults, FirmwareServer};

/// Every log line of this test process, as `[tag] module: text`.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The tests share the log: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn keep_line(tag: &str, module: &str, args: std::fmt::Arguments<'_>) -> bool {
    let line = format!("[{tag}] {module}: {args}");
    LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    false // and to stderr as usual
}

fn serial() -> MutexGuard<'static, ()> {
    ota::log::set_sink(keep_line);
    // The protected case says so at info level.
    ota::log::set_level(ota::log::Level::Info);
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LINES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    guard
}

fn lines_with(text: &str) -> Vec<String> {
    let lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
    lines.iter().filter(|l| l.contains(text)).cloned().collect()
}

/// An uplink that drops what it is given and answers `authenticated` as told.
struct Link {
    tls: bool,
}

impl Uplink for Link {
    fn publish(&mut self, _topic: &str, _payload: &[u8]) -> ota::error::Result<()> {
        Ok(())
    }

    fn authenticated(&self) -> bool {
        self.tls
    }
}

/// Downloads the image `server` serves over a session whose MQTT link is `tls`; the image.
fn download(server: &FirmwareServer, tls: bool) -> Vec<u8> {
    download_under(server, tls, ota::image::ImagePolicy::default())
}

/// [`download`] under an image policy.
fn download_under(server: &FirmwareServer, tls: bool, image: ota::image::ImagePolicy) -> Vec<u8> {
    let config = OtaConfig {
        image,
        http: HttpConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        },
        ..OtaConfig::default()
    };
    let source = HttpSource::new(config.http.clone()).expect("HTTP source");
    let session = OtaSession::new("pk", "dn", config, Box::new(Link { tls }), Box::new(source))
        .expect("session");
    let image = server.image();
    let notice = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{}","md5":"{}"}},"id":1,"message":"success"}}"#,
        image.len(),
        server.url(),
        ota_cloud::md5_hex(image)
    );
    session
        .handle_message(session.downstream_topic(), notice.as_bytes())
        .expect("upgrade accepted");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !session.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not finish");
        let n = session
            .fetch_yield(&mut buf, Duration::from_secs(1))
            .expect("fetch");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(session.check_firmware().expect("check"), "image verified");
    got
}

fn cut_server() -> FirmwareServer {
    let image: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    FirmwareServer::start_with(
        image,
        Faults {
            cuts: vec![30_000, 60_000],
            ..Faults::default()
        },
    )
    .expect("firmware server")
}

#[test]
fn plain_http_with_plain_mqtt_warns_once_that_nothing_protects_the_image() {
    let _g = serial();
    let server = cut_server();
    assert!(server.url().starts_with("http://"));
    assert_eq!(download(&server, false), &server.image()[..]);
    assert!(
        server.cut_offsets().len() >= 2,
        "the download took several requests"
    );
    let warned = lines_with("nothing protects");
    assert_eq!(warned.len(), 1, "one line per upgrade: {warned:?}");
    assert!(warned[0].starts_with("[wrn]"), "{}", warned[0]);
    assert!(lines_with("came over MQTT on TLS").is_empty());
}

#[test]
fn plain_http_with_mqtt_on_tls_says_the_digest_protects_the_image() {
    let _g = serial();
    let server = cut_server();
    assert_eq!(download(&server, true), &server.image()[..]);
    let said = lines_with("MD5 digest that came over MQTT on TLS");
    assert_eq!(said.len(), 1, "one line per upgrade: {said:?}");
    assert!(lines_with("nothing protects").is_empty());
}

#[test]
fn each_upgrade_gets_its_own_line() {
    let _g = serial();
    let server = cut_server();
    download(&server, false);
    download(&server, false);
    assert_eq!(lines_with("nothing protects").len(), 2);
}

#[test]
fn plain_http_with_a_signature_required_says_the_signature_protects_the_image() {
    let _g = serial();
    let image = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mcuboot/ed25519.bin"
    ))
    .expect("fixture");
    let server = FirmwareServer::start(image).expect("firmware server");
    let key = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mcuboot/test-only-ed25519.pub.pem"
    ))
    .expect("key");
    let policy = ota::image::ImagePolicy {
        keys: vec![ota::image::ImageKey::parse(&key).expect("key")],
        require_signature: true,
        ..Default::default()
    };
    assert_eq!(download_under(&server, false, policy), &server.image()[..]);
    assert_eq!(lines_with("valid signature of a configured key").len(), 1);
    assert!(lines_with("nothing protects").is_empty());
}

// The bundled web roots for MQTT are exercised in src/conninfo.rs (the default connection
// info) and through `crate::tls::mqtt_config`; a real broker with a publicly rooted
// certificate is out of reach of a test machine without the internet.
#[test]
fn the_web_roots_marker_is_a_ca_everywhere_a_ca_is_taken() {
    let pem = ota::tls::WEB_ROOTS_PEM.as_bytes();
    assert!(ota::tls::is_web_roots(pem));
    assert_eq!(ota::tls::check_ca_pem(pem), Ok(()));
    let mut options = ota::MqttOptions::new("127.0.0.1", 1, "web-roots");
    options.ca_pem = Some(pem.to_vec());
    options.request_timeout = Duration::from_millis(200);
    // Nothing listens on port 1: the options are accepted and the connection is refused,
    // not the CA.
    let e = ota::MqttClient::connect(&options).err().expect("no broker");
    assert!(
        matches!(e, ota::Error::Mqtt(_)),
        "refused by the network, not the CA: {e:?}"
    );
}
