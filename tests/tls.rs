//! TLS end to end on real sockets, with certificates made at test time: firmware over HTTPS
//! (right CA, wrong CA, wrong host name, expired certificate), MQTT over TLS against Mosquitto,
//! and the C option `IOTX_IOCTL_SET_HTTPS_CA`.

#![cfg(feature = "tls")]

mod common;
use common::certs::{pki, Leaf};
use common::cmqtt;
use common::firmware::aliyun_notice;
use common::mosquitto::{self, Mosquitto};
use common::recorder::{Recorder, Sent};

use std::ffi::{c_int, c_void, CString};
use std::net::TcpListener;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error, MqttError};
use ota::mqtt::{MqttEvent, QoS};
use ota::source::{HttpConfig, HttpSource};
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, OtaState};
use ota_cloud::http::{Faults, FirmwareServer};

const PK: &str = "pkTls";
const DN: &str = "devTls";
/// Upper bound of every wait (a download, a broker start, a message).
const WAIT: Duration = Duration::from_secs(30);

fn http_config(ca_pem: Option<&str>) -> HttpConfig {
    HttpConfig {
        ca_pem: ca_pem.map(|p| Arc::from(p.as_bytes())),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    }
}

/// A session on a recording uplink and a real HTTP(S) source trusting `ca_pem` (None: the web
/// roots), already told to upgrade to what `server` serves.
fn session_for(server: &FirmwareServer, ca_pem: Option<&str>) -> (OtaSession, Sent) {
    let config = OtaConfig {
        http: http_config(ca_pem),
        ..OtaConfig::default()
    };
    let source = HttpSource::new(config.http.clone()).expect("HTTP source");
    let sent: Sent = Arc::default();
    let session = OtaSession::new(
        PK,
        DN,
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .expect("session");
    let msg = aliyun_notice(server.image(), &server.url(), "2.0.0");
    session
        .handle_message(session.downstream_topic(), msg.as_bytes())
        .expect("upgrade accepted");
    assert_eq!(session.state(), OtaState::Downloading);
    (session, sent)
}

/// Fetches until the download ends; the bytes, or the first error.
fn download(session: &OtaSession) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + WAIT;
    let mut image = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !session.is_fetch_finished() {
        assert!(Instant::now() < deadline, "download did not finish");
        let n = session.fetch_yield(&mut buf, Duration::from_secs(1))?;
        image.extend_from_slice(&buf[..n]);
    }
    Ok(image)
}

fn tls_server(leaf: &Leaf, image: Vec<u8>) -> FirmwareServer {
    FirmwareServer::start_tls(
        image,
        Faults::default(),
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
    )
    .expect("HTTPS server")
}

#[test]
fn https_download_with_the_right_ca() {
    let image = ota_cloud::generate_firmware(300_000);
    let server = tls_server(&pki().server, image.clone());
    assert!(server.url().starts_with("https://localhost:"));
    let (session, sent) = session_for(&server, Some(&pki().ca_pem));
    let got = download(&session).expect("HTTPS download");
    assert_eq!(got.len(), image.len());
    assert!(
        got == image,
        "downloaded bytes differ from the served image"
    );
    assert_eq!(session.state(), OtaState::Fetched);
    assert!(session.check_firmware().unwrap());
    assert!(sent.lock().unwrap().is_empty(), "no failure was reported");
    // Logged when the response ends, which may be just after the client took its last byte.
    let requests = server.requests_when(1, Duration::from_secs(5));
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 200);
}

/// The download fails on TLS, the session ends in Fetched and unverified, and the platform was
/// told with a step -2 progress report.
#[test]
fn https_download_from_a_tls_1_2_only_server() {
    // The client offers AES-GCM only (no ChaCha20 without `tls-chacha20`): the ECDHE suites
    // of TLS 1.2 must still meet a server that never learnt TLS 1.3.
    let pki = pki();
    let image: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let server = FirmwareServer::start_tls_versions(
        image.clone(),
        Faults::default(),
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        &[&rustls::version::TLS12],
    )
    .expect("HTTPS server");
    let (session, _sent) = session_for(&server, Some(&pki.ca_pem));
    assert_eq!(download(&session).unwrap(), image);
    assert!(session.check_firmware().unwrap());
}

fn assert_tls_rejected(leaf: &Leaf, ca_pem: Option<&str>) {
    let image = ota_cloud::generate_firmware(10_000);
    let server = tls_server(leaf, image);
    let (session, sent) = session_for(&server, ca_pem);
    let err = download(&session).expect_err("the download must fail");
    assert_eq!(err, Error::Download(DownloadError::Tls));
    assert_eq!(
        session.last_error(),
        Some(Error::Download(DownloadError::Tls))
    );
    assert_eq!(session.state(), OtaState::Fetched);
    assert!(session.is_fetch_finished());
    assert!(!session.check_firmware().unwrap());
    let sent = sent.lock().unwrap();
    assert!(
        sent.iter()
            .any(|(topic, payload)| topic.contains("/progress/")
                && payload.contains(r#""step":"-2""#)),
        "no step -2 report among {sent:?}"
    );
    assert!(
        server.requests().is_empty(),
        "no request may reach a server the client does not trust"
    );
}

#[test]
fn https_rejects_a_server_from_another_ca() {
    assert_tls_rejected(&pki().server, Some(&pki().other_ca_pem));
}

#[test]
fn https_rejects_a_host_name_mismatch() {
    assert_tls_rejected(&pki().other_host, Some(&pki().ca_pem));
}

#[test]
fn https_rejects_an_expired_certificate() {
    assert_tls_rejected(&pki().expired, Some(&pki().ca_pem));
}

#[test]
fn https_without_a_ca_trusts_only_the_web_roots() {
    assert_tls_rejected(&pki().server, None);
}

#[test]
fn http_source_refuses_a_ca_that_is_not_a_pem_certificate() {
    for bad in [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    ] {
        let config = HttpConfig {
            ca_pem: Some(Arc::from(bad.as_bytes())),
            ..HttpConfig::default()
        };
        let e = HttpSource::new(config).err().expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
}

fn tls_options(port: u16, client_id: &str, ca_pem: &str) -> MqttOptions {
    MqttOptions {
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        ..MqttOptions::new("localhost", port, client_id)
    }
}

/// The broker's certificate is checked like an HTTPS server's: a certificate for another host
/// name, or an expired one, is refused even when it chains to the trusted CA.
#[test]
fn mqtt_over_tls_times_out_on_a_broker_that_never_answers_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Reads the ClientHello and answers nothing until the client gives up.
        let mut buf = [0u8; 4096];
        while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
    });
    let mut o = tls_options(port, "tls-stall", &pki().ca_pem);
    o.request_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = MqttClient::connect(&o).err().expect("no connection");
    assert_eq!(err, Error::Mqtt(MqttError::Timeout));
    // The 1 s request timeout plus the 2 s CONNACK margin, with slack for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
    peer.join().unwrap();
}

#[test]
fn mqtt_over_tls_refuses_a_wrong_host_name_and_an_expired_certificate() {
    let Some(binary) = mosquitto::binary_or_skip() else {
        return;
    };
    let pki = pki();
    for (what, leaf) in [("host name", &pki.other_host), ("expired", &pki.expired)] {
        let broker = Mosquitto::start_tls(&binary, pki, leaf);
        let r = MqttClient::connect(&tls_options(broker.port, "ota-tls-bad", &pki.ca_pem));
        assert_eq!(r.err(), Some(Error::Mqtt(MqttError::Tls)), "{what}");
    }
}

#[test]
fn mqtt_over_tls_with_mosquitto() {
    let Some(binary) = mosquitto::binary_or_skip() else {
        return;
    };
    let pki = pki();
    let broker = Mosquitto::start_tls(&binary, pki, &pki.server);

    let client = MqttClient::connect(&tls_options(broker.port, "ota-tls-echo", &pki.ca_pem))
        .unwrap_or_else(|e| panic!("TLS connect failed: {e}\n{}", broker.log()));
    let subacks = Arc::new(AtomicUsize::new(0));
    let counter = subacks.clone();
    client.on_event(move |e| {
        if matches!(e, MqttEvent::SubscribeAck { .. }) {
            counter.fetch_add(1, SeqCst);
        }
    });
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = received.clone();
    client
        .subscribe("ota/tls/echo", QoS::AtLeastOnce, move |m| {
            sink.lock().unwrap().push(m.payload.to_vec())
        })
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while subacks.load(SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no SUBACK over TLS");
        client.yield_for(Duration::from_millis(50)).unwrap();
    }
    client
        .publish("ota/tls/echo", QoS::AtLeastOnce, false, b"over TLS")
        .unwrap();
    while received.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "own message not received over TLS"
        );
        client.yield_for(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(received.lock().unwrap()[0], b"over TLS");
    client.disconnect(Duration::from_secs(1));

    let wrong = MqttClient::connect(&tls_options(
        broker.port,
        "ota-tls-wrong",
        &pki.other_ca_pem,
    ));
    assert_eq!(wrong.err(), Some(Error::Mqtt(MqttError::Tls)));
}

/// Firmware calling the C API: MQTT on an embedded broker, OTA handle, HTTPS download.
/// Returns `IOT_OTAG_CHECK_FIRMWARE`, or the FetchYield error code.
fn c_device_download(broker_port: u16, server: &FirmwareServer, dn: &str) -> Result<u32, c_int> {
    use ota::ffi::ioctl::IOT_OTA_Ioctl;
    use ota::ffi::mqtt::*;
    use ota::ffi::ota::*;

    let subacks: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let client_id = CString::new(format!("{PK}.{dn}")).unwrap();
    let mut param = cmqtt::mqtt_param(broker_port, &client_id, subacks);
    let mut mqtt = unsafe { IOT_MQTT_Construct(&mut param) };
    assert!(!mqtt.is_null(), "IOT_MQTT_Construct");
    let (pk, dn_c) = (CString::new(PK).unwrap(), CString::new(dn).unwrap());
    let ota = unsafe { IOT_OTA_Init(pk.as_ptr(), dn_c.as_ptr(), mqtt) };
    assert!(!ota.is_null(), "IOT_OTA_Init");
    let deadline = Instant::now() + WAIT;
    while subacks.load(SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no SUBACK for the upgrade topic");
        assert_eq!(unsafe { IOT_MQTT_Yield(mqtt, 50) }, 0);
    }

    let cloud = MqttClient::connect(&MqttOptions::new(
        "127.0.0.1",
        broker_port,
        &format!("cloud-{dn}"),
    ))
    .expect("cloud connects");
    let topic = format!("/ota/device/upgrade/{PK}/{dn}");
    let msg = aliyun_notice(server.image(), &server.url(), "2.0.0");
    cloud
        .publish(&topic, QoS::AtLeastOnce, false, msg.as_bytes())
        .unwrap();
    cloud.yield_for(Duration::from_millis(100)).unwrap();
    while IOT_OTA_IsFetching(ota) == 0 {
        assert!(Instant::now() < deadline, "upgrade not received");
        assert_eq!(unsafe { IOT_MQTT_Yield(mqtt, 50) }, 0);
    }

    let mut image = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut result = Ok(());
    while IOT_OTA_IsFetchFinish(ota) == 0 {
        assert!(Instant::now() < deadline, "download did not finish");
        let rc = unsafe { IOT_OTA_FetchYield(ota, buf.as_mut_ptr().cast(), buf.len() as u32, 1) };
        if rc < 0 {
            result = Err(rc);
            break;
        }
        image.extend_from_slice(&buf[..rc as usize]);
    }
    let result = result.map(|()| {
        assert!(
            image == server.image()[..],
            "C download differs from the image"
        );
        let mut ok: u32 = 7;
        let rc = unsafe {
            IOT_OTA_Ioctl(
                ota,
                IOT_OTAG_CHECK_FIRMWARE,
                (&mut ok as *mut u32).cast(),
                4,
            )
        };
        assert_eq!(rc, 0);
        ok
    });
    cloud.disconnect(Duration::from_millis(200));
    assert_eq!(unsafe { IOT_OTA_Deinit(ota) }, 0);
    assert_eq!(unsafe { IOT_MQTT_Destroy(&mut mqtt) }, 0);
    result
}

/// The process-wide HTTPS CA: checked, copied, used by OTA handles created afterwards, and
/// reset by NULL. One test, because the setting is global.
#[test]
fn c_api_https_ca_option() {
    use ota::ffi::conninfo::{iotx_ioctl_option_t::IOTX_IOCTL_SET_HTTPS_CA, IOT_Ioctl};
    use ota::ffi::ota::IOT_OTA_Err_t::IOT_OTAE_FETCH_FAILED;
    let option = IOTX_IOCTL_SET_HTTPS_CA as c_int;
    let set = |pem: Option<&str>| {
        let text = pem.map(|p| CString::new(p).unwrap());
        let data = text
            .as_ref()
            .map_or(null_mut(), |t| t.as_ptr() as *mut c_void);
        // SAFETY: NULL or a NUL-terminated string, which the call copies.
        unsafe { IOT_Ioctl(option, data) }
    };
    assert_eq!(set(Some("garbage, not a certificate")), -1);
    assert_eq!(
        set(Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        )),
        -1
    );
    assert_eq!(set(Some(&pki().ca_pem)), 0);

    let broker = ota_cloud::broker::EmbeddedBroker::start().expect("embedded broker");
    let server = tls_server(&pki().server, ota_cloud::generate_firmware(50_000));
    assert_eq!(c_device_download(broker.port(), &server, "devCaSet"), Ok(1));

    assert_eq!(set(None), 0);
    assert_eq!(
        c_device_download(broker.port(), &server, "devCaReset"),
        Err(IOT_OTAE_FETCH_FAILED as c_int)
    );
}
