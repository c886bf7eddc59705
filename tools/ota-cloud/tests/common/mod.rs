//! Helpers shared by the integration tests: one embedded broker per test binary, a scripted
//! fake device speaking MQTT with rumqttc, and a raw HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use ota_cloud::EmbeddedBroker;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One broker per test binary: rumqttd cannot be stopped, so sharing it saves threads.
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
    /// Connects and subscribes to the device's upgrade topic (waits for the SubAck).
    pub fn connect(port: u16, pk: &str, dn: &str) -> FakeDevice {
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
        client
            .subscribe(format!("/ota/device/upgrade/{pk}/{dn}"), QoS::AtLeastOnce)
            .unwrap();
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
