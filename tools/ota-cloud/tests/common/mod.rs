//! Helpers shared by the integration tests: one embedded broker per test binary, a scripted
//! fake device speaking MQTT with rumqttc, and a raw HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use ota_cloud::{Cloud, CloudOptions, EmbeddedBroker, Firmware, FirmwareServer, Protocol, Summary};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One broker per test binary: an EmbeddedBroker cannot be stopped, so sharing it saves threads.
pub fn broker_port() -> u16 {
    static BROKER: OnceLock<EmbeddedBroker> = OnceLock::new();
    BROKER
        .get_or_init(|| EmbeddedBroker::start().expect("broker starts"))
        .port()
}

/// A device that does only what the test tells it to.
pub struct FakeDevice {
    pub client: Client,
    messages: Receiver<(String, Vec<u8>)>,
    pk: String,
    dn: String,
}

impl FakeDevice {
    /// Connects and subscribes to the device's Aliyun upgrade topic (waits for the SubAck).
    pub fn connect(port: u16, pk: &str, dn: &str) -> FakeDevice {
        Self::connect_on(port, pk, dn, &format!("/ota/device/upgrade/{pk}/{dn}"))
    }

    /// Connects and subscribes to `downstream` (waits for the SubAck).
    pub fn connect_on(port: u16, pk: &str, dn: &str, downstream: &str) -> FakeDevice {
        let mut options = MqttOptions::new(format!("fake-{dn}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 16);
        let (tx, messages) = mpsc::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        client.subscribe(downstream, QoS::AtLeastOnce).unwrap();
        ack_rx
            .recv_timeout(TIMEOUT)
            .expect("fake device subscribed");
        FakeDevice {
            client,
            messages,
            pk: pk.into(),
            dn: dn.into(),
        }
    }

    /// Publishes `payload` on `/ota/device/{kind}/{pk}/{dn}` (QoS 1).
    pub fn send(&self, kind: &str, payload: &str) {
        self.client
            .publish(
                format!("/ota/device/{kind}/{}/{}", self.pk, self.dn),
                QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .unwrap();
    }

    /// Publishes `payload` on `topic` (QoS 1).
    pub fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .unwrap();
    }

    /// The next message on the subscribed topic: its topic and its payload, parsed.
    pub fn next_message(&self) -> (String, Value) {
        let (topic, payload) = self
            .messages
            .recv_timeout(TIMEOUT)
            .expect("a message from the cloud");
        let value = serde_json::from_slice(&payload).expect("the cloud's message is JSON");
        (topic, value)
    }

    /// Whether a message arrives within `wait`.
    pub fn nothing_within(&self, wait: Duration) -> bool {
        self.messages.recv_timeout(wait).is_err()
    }

    /// The next upgrade message, parsed.
    pub fn next_upgrade(&self) -> Value {
        let (topic, payload) = self
            .messages
            .recv_timeout(TIMEOUT)
            .expect("an upgrade message");
        assert_eq!(
            topic,
            format!("/ota/device/upgrade/{}/{}", self.pk, self.dn)
        );
        serde_json::from_slice(&payload).expect("upgrade message is JSON")
    }
}

/// Connects a cloud playing `protocol` with `options` for `pk`/`dn` and runs it in a thread
/// (the test thread plays the device).
pub fn start_cloud(
    protocol: Protocol,
    pk: &str,
    dn: &str,
    firmware: &Firmware,
    options: CloudOptions,
    timeout: Duration,
) -> thread::JoinHandle<Summary> {
    let mut cloud = Cloud::connect(protocol, "127.0.0.1", broker_port(), pk, dn).unwrap();
    cloud.set_options(options).unwrap();
    let firmware = firmware.clone();
    thread::spawn(move || cloud.run(&firmware, timeout))
}

/// Like [`start_cloud`], with `setup` applied to the cloud before it runs (grace, requests,
/// triggers, ...).
pub fn start_cloud_with(
    protocol: Protocol,
    pk: &str,
    dn: &str,
    firmware: &Firmware,
    timeout: Duration,
    setup: impl FnOnce(&mut Cloud),
) -> thread::JoinHandle<Summary> {
    let mut cloud = Cloud::connect(protocol, "127.0.0.1", broker_port(), pk, dn).unwrap();
    setup(&mut cloud);
    let firmware = firmware.clone();
    thread::spawn(move || cloud.run(&firmware, timeout))
}

/// A 50 000-byte image served over HTTP, described as version 2.0.0.
pub fn firmware_for_test() -> (FirmwareServer, Firmware, Vec<u8>) {
    let image = ota_cloud::generate_firmware(50_000);
    let server = FirmwareServer::start(image.clone()).unwrap();
    let fw = Firmware::new("2.0.0", server.url(), &image);
    (server, fw, image)
}

/// The violation's reason, or a panic showing what happened instead.
pub fn violation(summary: &Summary) -> (String, String) {
    match &summary.outcome {
        Err(ota_cloud::Failure::Violation { topic, reason, .. }) => (topic.clone(), reason.clone()),
        other => panic!("expected a violation, got {other:?}"),
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    pub fn open(port: u16) -> HttpConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        HttpConn { stream, reader }
    }

    /// Sends a request and reads the response head, then the body as `Content-Length` says
    /// (none for HEAD). A body cut short is returned as far as it came.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (n, v) in extra_headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).unwrap();

        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if method != "HEAD" {
            let len: u64 = resp.header("Content-Length").unwrap().parse().unwrap();
            (&mut self.reader)
                .take(len)
                .read_to_end(&mut resp.body)
                .unwrap();
        }
        resp
    }

    /// Everything the server sends until it closes the connection.
    pub fn read_rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).unwrap();
        rest
    }
}

/// Downloads `url` (`http://127.0.0.1:PORT/path`) in one GET.
pub fn http_get(url: &str) -> Vec<u8> {
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let mut conn = HttpConn::open(port.parse().unwrap());
    let resp = conn.request("GET", &format!("/{path}"), &[]);
    assert_eq!(resp.status, 200);
    resp.body
}
