//! An embedded MQTT 3.1.1 broker on 127.0.0.1, so a demo or a test needs no external broker.
//!
//! Written here rather than taken from rumqttd: rumqttd 0.20 disconnects any client that
//! subscribes to a filter starting with `$` and never routes topics starting with `$`, so
//! Tencent's `$ota/report/…` / `$ota/update/…` topics could not pass through it. This broker
//! does what a device test needs and no more:
//!
//! - MQTT 3.1 and 3.1.1 (protocol levels 3 and 4; level 5 is answered "unacceptable protocol
//!   version"); every session is clean (`session present` is always 0).
//! - PUBLISH at QoS 0, 1 and 2 (QoS 2 is acknowledged with PUBREC/PUBCOMP and delivered once on
//!   arrival), retained messages, last will, SUBSCRIBE/UNSUBSCRIBE with `+`/`#` wildcards
//!   (granted QoS at most 1), PINGREQ, keep-alive timeout (1.5 × the client's keep-alive), and
//!   client-id takeover (a second CONNECT with the same id closes the first connection).
//! - Topics starting with `$` are routed like any other, except that a filter starting with a
//!   wildcard does not match them (MQTT 3.1.1 § 4.7.2).
//! - Payloads up to [`MAX_PAYLOAD`]; a bigger packet closes the connection.
//!
//! Each connection has a reader thread and a writer thread fed by a queue, so a client that
//! does not read for a while (a device between two `IOT_MQTT_Yield` calls) never blocks the
//! others. A broker has no shutdown: it lives until the process exits; dropping the
//! [`EmbeddedBroker`] handle does not stop it (each test that starts one leaks an idle
//! listening thread, which is harmless).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Largest MQTT payload the broker accepts. Firmware messages are small, but a generous limit
/// keeps the broker from being the reason a protocol experiment fails.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Largest packet (after the fixed header): the payload limit plus room for the topic.
const MAX_PACKET: usize = MAX_PAYLOAD + 64 * 1024;

/// A running broker; see the module docs for its lifetime.
#[derive(Debug)]
pub struct EmbeddedBroker {
    port: u16,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1. It accepts connections on return.
    pub fn start() -> io::Result<EmbeddedBroker> {
        Self::start_on(0)
    }

    /// Starts a broker on `127.0.0.1:port` (0: any free port). It accepts connections on
    /// return.
    pub fn start_on(port: u16) -> io::Result<EmbeddedBroker> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        thread::Builder::new()
            .name(format!("broker-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else {
                        // Out of file descriptors or similar: don't spin.
                        thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let _ = thread::Builder::new()
                        .name(format!("broker-{port}-conn"))
                        .spawn(move || serve(stream, &shared));
                }
            })?;
        Ok(EmbeddedBroker { port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
}

// Packet types (high nibble of the first byte).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// A message being routed.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: Arc<[u8]>,
    qos: u8,
}

/// One connected client, as the router sees it.
struct Session {
    client_id: String,
    out: Sender<Vec<u8>>,
    /// Used to close a connection taken over by a newer one with the same client id.
    stream: TcpStream,
    subs: Vec<(String, u8)>,
    next_pkid: u16,
}

impl Session {
    fn deliver(&mut self, msg: &Message, granted: u8, retain: bool) {
        let qos = msg.qos.min(granted);
        let pkid = if qos > 0 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            Some(self.next_pkid)
        } else {
            None
        };
        let _ = self
            .out
            .send(publish_packet(&msg.topic, &msg.payload, qos, retain, pkid));
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    next_conn: AtomicU64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Session>,
    retained: BTreeMap<String, Message>,
}

impl State {
    fn route(&mut self, msg: &Message) {
        for session in self.sessions.values_mut() {
            let granted = session
                .subs
                .iter()
                .filter(|(f, _)| matches(f, &msg.topic))
                .map(|(_, q)| *q)
                .max();
            if let Some(q) = granted {
                session.deliver(msg, q, false);
            }
        }
    }
}

/// An error that ends a connection; never reported anywhere.
struct Closed;

impl From<io::Error> for Closed {
    fn from(_: io::Error) -> Closed {
        Closed
    }
}

/// Runs one connection until it ends.
fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let (Ok(mut reader), Ok(writer), Ok(control)) =
        (stream.try_clone(), stream.try_clone(), stream.try_clone())
    else {
        return;
    };
    // The client must send CONNECT promptly.
    let _ = reader.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok((header, body)) = read_packet(&mut reader) else {
        return;
    };
    if header >> 4 != CONNECT {
        return;
    }
    let Ok(connect) = parse_connect(&body) else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let writer_thread = thread::spawn(move || write_loop(writer, rx));
    if !matches!(connect.level, 3 | 4) {
        let _ = tx.send(vec![CONNACK << 4, 2, 0, 1]);
        drop(tx);
        let _ = writer_thread.join();
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let client_id = if connect.client_id.is_empty() {
        format!("auto-{id}")
    } else {
        connect.client_id.clone()
    };
    {
        let mut state = shared.state.lock().unwrap();
        // Takeover: the older connection with this client id is closed.
        let old: Vec<u64> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.client_id == client_id)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if let Some(s) = state.sessions.remove(&k) {
                let _ = s.stream.shutdown(Shutdown::Both);
            }
        }
        let _ = tx.send(vec![CONNACK << 4, 2, 0, 0]);
        state.sessions.insert(
            id,
            Session {
                client_id,
                out: tx.clone(),
                stream: control,
                subs: Vec::new(),
                next_pkid: 0,
            },
        );
    }
    let keep_alive = match connect.keep_alive {
        0 => None,
        s => Some(Duration::from_millis(u64::from(s) * 1500)),
    };
    let _ = reader.set_read_timeout(keep_alive);
    let clean = session_loop(&mut reader, shared, id, &tx).is_ok();

    let mut state = shared.state.lock().unwrap();
    let was_current = state.sessions.remove(&id).is_some();
    if !clean && was_current {
        if let Some(will) = &connect.will {
            if connect.will_retain {
                retain(&mut state, will);
            }
            state.route(will);
        }
    }
    drop(state);
    drop(tx);
    let _ = writer_thread.join();
    let _ = reader.shutdown(Shutdown::Both);
}

/// Handles packets until DISCONNECT (`Ok`) or an error or timeout (`Err`).
fn session_loop(
    reader: &mut TcpStream,
    shared: &Shared,
    id: u64,
    tx: &Sender<Vec<u8>>,
) -> Result<(), Closed> {
    loop {
        let (header, body) = read_packet(reader)?;
        let flags = header & 0x0f;
        match header >> 4 {
            PUBLISH => {
                let qos = (flags >> 1) & 3;
                let retain_flag = flags & 1 == 1;
                let mut r = Cursor::new(&body);
                let topic = r.string()?;
                if !valid_topic(&topic) || qos > 2 {
                    return Err(Closed);
                }
                let pkid = if qos > 0 { Some(r.u16()?) } else { None };
                let msg = Message {
                    topic,
                    payload: r.rest().into(),
                    qos,
                };
                match (qos, pkid) {
                    (1, Some(p)) => send(tx, ack(PUBACK, 0, p))?,
                    (2, Some(p)) => send(tx, ack(PUBREC, 0, p))?,
                    _ => {}
                }
                let mut state = shared.state.lock().unwrap();
                if retain_flag {
                    retain(&mut state, &msg);
                }
                state.route(&msg);
            }
            PUBREL => {
                let pkid = Cursor::new(&body).u16()?;
                send(tx, ack(PUBCOMP, 0, pkid))?;
            }
            PUBACK | PUBREC | PUBCOMP => {
                // We deliver at most QoS 1 and do not retransmit: nothing to track.
                if header >> 4 == PUBREC {
                    let pkid = Cursor::new(&body).u16()?;
                    send(tx, ack(PUBREL, 2, pkid))?;
                }
            }
            SUBSCRIBE => {
                let mut r = Cursor::new(&body);
                let pkid = r.u16()?;
                let mut filters = Vec::new();
                while !r.is_empty() {
                    let filter = r.string()?;
                    let qos = r.u8()?;
                    filters.push((filter, qos));
                }
                if filters.is_empty() {
                    return Err(Closed);
                }
                let mut state = shared.state.lock().unwrap();
                let State { sessions, retained } = &mut *state;
                let session = sessions.get_mut(&id).ok_or(Closed)?;
                let mut codes = Vec::new();
                let mut granted = Vec::new();
                for (filter, qos) in filters {
                    if !valid_filter(&filter) || qos > 2 {
                        codes.push(0x80);
                        continue;
                    }
                    let q = qos.min(1);
                    session.subs.retain(|(f, _)| *f != filter);
                    session.subs.push((filter.clone(), q));
                    codes.push(q);
                    granted.push((filter, q));
                }
                let mut packet = vec![SUBACK << 4];
                push_len(&mut packet, 2 + codes.len());
                packet.extend_from_slice(&pkid.to_be_bytes());
                packet.extend_from_slice(&codes);
                let _ = session.out.send(packet);
                for (filter, q) in granted {
                    for msg in retained.values().filter(|m| matches(&filter, &m.topic)) {
                        session.deliver(msg, q, true);
                    }
                }
            }
            UNSUBSCRIBE => {
                let mut r = Cursor::new(&body);
                let pkid = r.u16()?;
                let mut filters = Vec::new();
                while !r.is_empty() {
                    filters.push(r.string()?);
                }
                let mut state = shared.state.lock().unwrap();
                if let Some(s) = state.sessions.get_mut(&id) {
                    s.subs.retain(|(f, _)| !filters.contains(f));
                }
                send(tx, ack(UNSUBACK, 0, pkid))?;
            }
            PINGREQ => send(tx, vec![PINGRESP << 4, 0])?,
            DISCONNECT => return Ok(()),
            _ => return Err(Closed),
        }
    }
}

fn retain(state: &mut State, msg: &Message) {
    if msg.payload.is_empty() {
        state.retained.remove(&msg.topic);
    } else {
        state.retained.insert(msg.topic.clone(), msg.clone());
    }
}

fn send(tx: &Sender<Vec<u8>>, packet: Vec<u8>) -> Result<(), Closed> {
    tx.send(packet).map_err(|_| Closed)
}

fn write_loop(mut stream: TcpStream, rx: Receiver<Vec<u8>>) {
    for packet in rx {
        if stream.write_all(&packet).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads one packet: the first byte and the body after the remaining length.
fn read_packet(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), Closed> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let header = byte[0];
    let mut len = 0usize;
    for i in 0..4 {
        stream.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(Closed);
        }
    }
    if len > MAX_PACKET {
        return Err(Closed);
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((header, body))
}

fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

fn ack(kind: u8, flags: u8, pkid: u16) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    vec![kind << 4 | flags, 2, hi, lo]
}

fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    pkid: Option<u16>,
) -> Vec<u8> {
    let len = 2 + topic.len() + pkid.map_or(0, |_| 2) + payload.len();
    let mut p = Vec::with_capacity(len + 5);
    p.push(PUBLISH << 4 | qos << 1 | u8::from(retain));
    push_len(&mut p, len);
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    if let Some(id) = pkid {
        p.extend_from_slice(&id.to_be_bytes());
    }
    p.extend_from_slice(payload);
    p
}

struct Connect {
    level: u8,
    keep_alive: u16,
    client_id: String,
    will: Option<Message>,
    /// Whether the will is retained.
    will_retain: bool,
}

fn parse_connect(body: &[u8]) -> Result<Connect, Closed> {
    let mut r = Cursor::new(body);
    let name = r.string()?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(Closed);
    }
    let level = r.u8()?;
    let flags = r.u8()?;
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let mut will = None;
    if flags & 0x04 != 0 {
        let topic = r.string()?;
        let payload = r.binary()?;
        if !valid_topic(&topic) {
            return Err(Closed);
        }
        will = Some(Message {
            topic,
            payload: payload.into(),
            qos: ((flags >> 3) & 3).min(2),
        });
    }
    // User name and password are accepted without looking at them.
    Ok(Connect {
        level,
        keep_alive,
        client_id,
        will_retain: will.is_some() && flags & 0x20 != 0,
        will,
    })
}

/// Reads MQTT fields from a packet body.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Closed> {
        if self.data.len() < n {
            return Err(Closed);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Closed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Closed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn binary(&mut self) -> Result<&'a [u8], Closed> {
        let n = self.u16()?;
        self.take(n.into())
    }

    fn string(&mut self) -> Result<String, Closed> {
        let b = self.binary()?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| Closed)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        let hash_ok = !l.contains('#') || (*l == "#" && i == levels.len() - 1);
        let plus_ok = !l.contains('+') || *l == "+";
        hash_ok && plus_ok
    })
}

/// Whether `topic` matches `filter` (both valid).
fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt_3_1_1() {
        for (filter, topic, want) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("/$system/p/d/ota/+", "/$system/p/d/ota/upstream", true),
            ("$ota/+/p/d", "$ota/report/p/d", true),
            ("$ota/report/p/d", "$ota/report/p/d", true),
            ("#", "$ota/report/p/d", false),
            ("+/report/p/d", "$ota/report/p/d", false),
            ("a/b", "a/c", false),
            ("a/b/c", "a/b", false),
        ] {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn filter_and_topic_validity() {
        for f in ["a", "a/+", "+", "#", "a/#", "$ota/+/p/d", "/a//b"] {
            assert!(valid_filter(f), "{f}");
        }
        for f in ["", "a#", "a/#/b", "a+", "a/b+/c", "##"] {
            assert!(!valid_filter(f), "{f}");
        }
        assert!(valid_topic("$ota/report/p/d"));
        assert!(!valid_topic("a/+"));
        assert!(!valid_topic(""));
    }

    #[test]
    fn remaining_length_encoding() {
        for (len, bytes) in [
            (0usize, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            push_len(&mut out, len);
            assert_eq!(out, bytes, "{len}");
        }
    }
}
