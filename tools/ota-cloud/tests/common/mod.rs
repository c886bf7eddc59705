//! Helpers shared by the integration tests: one embedded broker per test binary, a scripted
//! fake device speaking MQTT with rumqttc, and a raw HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use ota_cloud::{Cloud, CloudOptions, EmbeddedBroker, Firmware, FirmwareServer, Protocol, Summary};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The `ota-cloud` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_ota-cloud");

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

/// Text for a log: no escape sequences, no carriage returns (a progress bar's or colour's).
pub fn assert_plain(text: &str) {
    assert!(
        !text.contains(['\x1b', '\r']),
        "control characters in {text:?}"
    );
}

/// Runs `serve` for device `pk/dn` with `extra` flags and plays the device with
/// `script` (subscribed to `downstream`, given the firmware URL) once `serve` waits for it:
/// the exit code, stderr, what `serve` printed before the device started and after.
pub fn serve_lines(
    dn: &str,
    downstream: &str,
    extra: &[&str],
    script: impl FnOnce(&FakeDevice, &str),
) -> (Option<i32>, String, Vec<String>, Vec<String>) {
    serve_lines_in(Command::new(BIN), dn, downstream, extra, script)
}

/// [`serve_lines`] with `serve` run by `cmd` (the binary with the caller's environment).
pub fn serve_lines_in(
    mut cmd: Command,
    dn: &str,
    downstream: &str,
    extra: &[&str],
    script: impl FnOnce(&FakeDevice, &str),
) -> (Option<i32>, String, Vec<String>, Vec<String>) {
    let port = broker_port().to_string();
    let broker = format!("127.0.0.1:{port}");
    let mut child = cmd
        .args([
            "serve",
            "--broker",
            &broker,
            "--product-key",
            "pk",
            "--device-name",
            dn,
        ])
        .args(["--version", "2.0.0", "--timeout-s", "20"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let echo = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("serve | {line}");
            let _ = tx.send(line);
        }
    });
    // The cloud is subscribed once it says it waits for the version report.
    let mut url = String::new();
    let mut startup = Vec::new();
    loop {
        let line = lines
            .recv_timeout(TIMEOUT)
            .expect("serve prints its progress");
        if let Some(u) = line.strip_prefix("firmware url: ") {
            url = u.to_string();
        }
        if line.contains("waiting for the device's version report") {
            break;
        }
        startup.push(line);
    }
    let device = FakeDevice::connect_on(broker_port(), "pk", dn, downstream);
    script(&device, &url);
    let code = child.wait().unwrap().code();
    let errors = errors.join().unwrap();
    eprint!("{errors}");
    echo.join().unwrap();
    let after: Vec<String> = lines.try_iter().collect();
    // Not a terminal: plain lines only, whatever happened.
    assert_plain(&errors);
    assert_plain(&startup.join("\n"));
    assert_plain(&after.join("\n"));
    (code, errors, startup, after)
}
