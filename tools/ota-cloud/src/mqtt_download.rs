//! Download over MQTT, cloud side (`docs/packages.md`, "Download over MQTT"): the device asks
//! for blocks on `/sys/{pk}/{dn}/thing/file/download` (JSON), the platform answers each on
//! `…/download_reply` with a binary frame (2-byte big-endian header length, the JSON header,
//! the data, the CRC-16/ARC of the data little-endian).
//!
//! [`MqttDownloadServer`] answers the requests of one device on a broker, checks each one
//! (ids, token, offset within the file, size within the block size it allows), and injects
//! [`MqttFaults`]. Our own encoder and CRC: this crate does not depend on the `ota` crate, so
//! a bug shared by both sides cannot hide.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Map, Value};

use crate::package::{describe_gaps, Coverage, Delivery, Package, PackageMeter};

/// The block size the simulator allows unless told otherwise: the Link SDK's default request
/// size (5 KiB, `MQTT_DOWNLOAD_DEFAULT_REQUEST_SIZE`).
pub const DEFAULT_BLOCK_SIZE: u32 = 5 * 1024;

/// The largest block size: a frame must fit the embedded broker's payload limit with room for
/// its header.
pub const MAX_BLOCK_SIZE: u32 = (crate::broker::MAX_PAYLOAD - 1024) as u32;

/// The token the Link SDK always sends (`fileToken`).
pub const DEFAULT_TOKEN: &str = "default";

/// `fileToken` values longer than this are not a token (the SDK's `MQTT_DOWNLOAD_TOKEN_MAXLEN`).
pub const MAX_TOKEN_LEN: usize = 128;

/// The device's two topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Device → platform: block requests.
    pub request: String,
    /// Platform → device: block replies.
    pub reply: String,
}

impl Topics {
    pub fn new(product_key: &str, device_name: &str) -> Topics {
        let base = format!("/sys/{product_key}/{device_name}/thing/file/download");
        Topics {
            reply: format!("{base}_reply"),
            request: base,
        }
    }
}

/// CRC-16/ARC: polynomial 0x8005 reflected (0xA001), initial value 0, no final XOR; "123456789"
/// gives 0xBB3D.
pub fn crc16_arc(data: &[u8]) -> u16 {
    let table = crc16_table();
    data.iter().fold(0u16, |crc, &byte| {
        table[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

/// The CRC of each byte value alone, made once (a byte at a time is 8x the bit loop: the
/// bench's replies at 32 KiB blocks spent most of their time here).
fn crc16_table() -> &'static [u16; 256] {
    static TABLE: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|n| {
            (0..8).fold(n as u16, |c, _| match c & 1 {
                1 => (c >> 1) ^ 0xA001,
                _ => c >> 1,
            })
        })
    })
}

/// The reply header for a block.
pub fn reply_header(b_offset: u64, b_size: u64, file_length: u64, token: &str) -> String {
    json!({"code": 200, "data": {"bSize": b_size, "bOffset": b_offset,
           "fileLength": file_length, "fileToken": token}})
    .to_string()
}

/// A reply frame: header length (big-endian u16), `header`, `data`, `crc` (little-endian).
/// `crc` is normally [`crc16_arc`] of `data`; a fault passes another.
pub fn frame(header: &str, data: &[u8], crc: u16) -> Vec<u8> {
    let h = header.as_bytes();
    let mut out = Vec::with_capacity(2 + h.len() + data.len() + 2);
    out.extend_from_slice(&(h.len() as u16).to_be_bytes());
    out.extend_from_slice(h);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The block reply for `data` at `b_offset` of a file of `file_length` bytes.
pub fn block_reply(b_offset: u64, data: &[u8], file_length: u64, token: &str) -> Vec<u8> {
    let header = reply_header(b_offset, data.len() as u64, file_length, token);
    frame(&header, data, crc16_arc(data))
}

/// What a reply frame says, as [`parse_frame`] reads it (for tests and device sides written in
/// tests; the SDK's parser is `ota::protocol::mqtt_download`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    pub header: Value,
    pub code: i64,
    pub b_offset: u64,
    pub b_size: u64,
    pub file_length: u64,
    pub token: Option<String>,
    pub data: Vec<u8>,
    /// The CRC the frame carries.
    pub crc: u16,
}

impl ReplyFrame {
    /// The frame's CRC is the data's.
    pub fn crc_ok(&self) -> bool {
        crc16_arc(&self.data) == self.crc
    }
}

/// Reads a reply frame by the layout; `Err` says what is wrong with its framing or header (a
/// CRC mismatch is not an error here: [`ReplyFrame::crc_ok`]).
pub fn parse_frame(frame: &[u8]) -> Result<ReplyFrame, String> {
    if frame.len() < 4 {
        return Err(format!("frame of {} bytes is too short", frame.len()));
    }
    let h = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
    if 2 + h > frame.len() - 2 {
        return Err(format!(
            "header length {h} runs past the frame ({} bytes)",
            frame.len()
        ));
    }
    let header: Value =
        serde_json::from_slice(&frame[2..2 + h]).map_err(|e| format!("header is not JSON: {e}"))?;
    let num = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let code = header
        .get("code")
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or("header without a numeric code")?;
    let data = header.get("data").ok_or("header without data")?;
    let field = |k: &str| {
        data.get(k)
            .and_then(num)
            .ok_or_else(|| format!("header without data.{k}"))
    };
    let (b_size, b_offset, file_length) =
        (field("bSize")?, field("bOffset")?, field("fileLength")?);
    let body_end = 2 + h + b_size as usize;
    if body_end + 2 != frame.len() {
        return Err(format!(
            "frame is {} bytes, the header says {}",
            frame.len(),
            body_end + 2
        ));
    }
    Ok(ReplyFrame {
        code,
        b_offset,
        b_size,
        file_length,
        token: data
            .get("fileToken")
            .and_then(Value::as_str)
            .map(str::to_string),
        data: frame[2 + h..body_end].to_vec(),
        crc: u16::from_le_bytes([frame[body_end], frame[body_end + 1]]),
        header,
    })
}

/// The block request a device sends (`docs/packages.md`, "Block request"); for device sides
/// written in tests.
pub fn request(
    id: u64,
    token: &str,
    stream_id: u32,
    file_id: u32,
    offset: u64,
    size: u64,
) -> String {
    json!({"id": id.to_string(), "version": "1.0", "params": {"fileToken": token,
           "fileInfo": {"streamId": stream_id, "fileId": file_id},
           "fileBlock": {"size": size, "offset": offset}}})
    .to_string()
}

/// A block request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRequest {
    pub id: String,
    pub token: String,
    pub stream_id: u64,
    pub file_id: u64,
    pub offset: u64,
    pub size: u64,
}

/// Checks the JSON of a block request: exactly `id` (a string of digits), `version` `"1.0"`
/// and `params` with `fileToken` (a string), `fileInfo` {`streamId`, `fileId`} and `fileBlock`
/// {`size`, `offset`}, all non-negative integers; nothing else. What the values must be
/// (stream, file, token, ranges) is the server's check.
pub fn parse_request(payload: &[u8]) -> Result<BlockRequest, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let top = object(&value, "payload", &["id", "version", "params"])?;
    let id = match top.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.clone()
        }
        Some(other) => return Err(format!("\"id\" must be a string of digits, got {other}")),
        None => return Err("missing \"id\"".into()),
    };
    match top.get("version") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(other) => return Err(format!("\"version\" must be \"1.0\", got {other}")),
        None => return Err("missing \"version\"".into()),
    }
    let params = object(
        top.get("params").ok_or("missing \"params\"")?,
        "params",
        &["fileToken", "fileInfo", "fileBlock"],
    )?;
    let token = match params.get("fileToken") {
        Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TOKEN_LEN => t.clone(),
        Some(other) => {
            return Err(format!(
                "params.fileToken must be a string of 1..={MAX_TOKEN_LEN} bytes, got {other}"
            ))
        }
        None => return Err("missing params.fileToken".into()),
    };
    let info = object(
        params.get("fileInfo").ok_or("missing params.fileInfo")?,
        "params.fileInfo",
        &["streamId", "fileId"],
    )?;
    let block = object(
        params.get("fileBlock").ok_or("missing params.fileBlock")?,
        "params.fileBlock",
        &["size", "offset"],
    )?;
    let int = |obj: &Map<String, Value>, at: &str, k: &str| {
        obj.get(k)
            .ok_or_else(|| format!("missing {at}.{k}"))?
            .as_u64()
            .ok_or_else(|| format!("{at}.{k} must be a non-negative integer, got {}", obj[k]))
    };
    Ok(BlockRequest {
        id,
        token,
        stream_id: int(info, "params.fileInfo", "streamId")?,
        file_id: int(info, "params.fileInfo", "fileId")?,
        size: int(block, "params.fileBlock", "size")?,
        offset: int(block, "params.fileBlock", "offset")?,
    })
}

/// `v` as an object with every key of `keys` and no other.
fn object<'a>(v: &'a Value, at: &str, keys: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let Value::Object(obj) = v else {
        return Err(format!("{at} must be a JSON object, got {v}"));
    };
    if let Some(k) = obj.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!("unexpected key {at}.{k}"));
    }
    if let Some(k) = keys.iter().find(|k| !obj.contains_key(**k)) {
        return Err(format!("missing {at}.{k}"));
    }
    Ok(obj)
}

/// Faults on block replies; all off by default. An OFFSET is a byte offset within a file: a
/// fault fires once per server, on the first reply (of any file) whose block holds that byte.
/// When several are due on one reply, the first in this order fires and the others stay
/// pending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttFaults {
    /// Drop the reply (nothing is sent): the device must time out and ask again.
    pub cuts: Vec<u64>,
    /// Send a header length that runs past the frame (the frame is otherwise right).
    pub header_past_frame_at: Option<u64>,
    /// Answer with the block one byte further on (`bOffset` = asked + 1, its CRC right).
    pub wrong_offset_at: Option<u64>,
    /// XOR 0xFF into one data byte (the one at the offset) after the CRC was computed: the
    /// CRC fails.
    pub flip_at: Option<u64>,
    /// Send the reply this much later (other replies go on meanwhile).
    pub stall_at: Option<(u64, Duration)>,
}

impl MqttFaults {
    /// One line per fault, for the start of a run.
    pub fn descriptions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cuts
            .iter()
            .map(|c| format!("mqtt: drop the reply whose block holds byte {c}"))
            .collect();
        if let Some(at) = self.header_past_frame_at {
            out.push(format!(
                "mqtt: header length past the frame in the reply holding byte {at}"
            ));
        }
        if let Some(at) = self.wrong_offset_at {
            out.push(format!(
                "mqtt: the block one byte further on instead of the one holding byte {at}"
            ));
        }
        if let Some(at) = self.flip_at {
            out.push(format!(
                "mqtt: corrupt byte {at} after the CRC was computed (the CRC fails)"
            ));
        }
        if let Some((at, d)) = self.stall_at {
            out.push(format!(
                "mqtt: delay the reply holding byte {at} by {} ms",
                d.as_millis()
            ));
        }
        out
    }
}

/// What a [`MqttDownloadServer`] did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttDownloadStats {
    /// Block requests received.
    pub requests: u64,
    /// Replies with a block sent (faulty ones included, dropped ones not).
    pub blocks_served: u64,
    /// Requests for a (file, offset) asked before: the device's retries.
    pub repeated_requests: u64,
    /// Data bytes in the replies sent (faulty ones included).
    pub bytes_served: u64,
    /// Replies dropped ([`MqttFaults::cuts`]).
    pub replies_dropped: u64,
    /// Each fault as it fired.
    pub faults_fired: Vec<String>,
    /// Requests against the protocol, with why.
    pub violations: Vec<String>,
}

/// One file of the stream, and which of its bytes went out intact.
struct StreamFile {
    id: u32,
    name: String,
    data: Arc<[u8]>,
    token: String,
    coverage: Coverage,
}

struct State {
    stream_id: u32,
    block_size: u32,
    files: Vec<StreamFile>,
    faults: MqttFaults,
    cuts_fired: Vec<bool>,
    header_past_frame_done: bool,
    wrong_offset_done: bool,
    flip_done: bool,
    stall_done: bool,
    /// (file, offset) asked so far.
    asked: std::collections::HashSet<(u64, u64)>,
    stats: MqttDownloadStats,
    /// The first violation: topic, reason, payload.
    violation: Option<(String, String, String)>,
}

/// The fault a reply gets.
enum Fault {
    Drop,
    HeaderPastFrame,
    WrongOffset,
    Flip(u64),
    Stall(Duration),
}

impl State {
    /// The first pending fault due on block `start..end`, claimed.
    fn claim_fault(&mut self, start: u64, end: u64) -> Option<Fault> {
        let hit = |at: u64| at >= start && at < end;
        if let Some(i) =
            (0..self.faults.cuts.len()).find(|&i| !self.cuts_fired[i] && hit(self.faults.cuts[i]))
        {
            self.cuts_fired[i] = true;
            return Some(Fault::Drop);
        }
        if let Some(at) = self.faults.header_past_frame_at {
            if !self.header_past_frame_done && hit(at) {
                self.header_past_frame_done = true;
                return Some(Fault::HeaderPastFrame);
            }
        }
        if let Some(at) = self.faults.wrong_offset_at {
            if !self.wrong_offset_done && hit(at) {
                self.wrong_offset_done = true;
                return Some(Fault::WrongOffset);
            }
        }
        if let Some(at) = self.faults.flip_at {
            if !self.flip_done && hit(at) {
                self.flip_done = true;
                return Some(Fault::Flip(at - start));
            }
        }
        if let Some((at, d)) = self.faults.stall_at {
            if !self.stall_done && hit(at) {
                self.stall_done = true;
                return Some(Fault::Stall(d));
            }
        }
        None
    }

    /// Checks `req` against the stream; `Err` is a violation.
    fn check(&self, req: &BlockRequest) -> Result<usize, String> {
        if req.stream_id != u64::from(self.stream_id) {
            return Err(format!(
                "params.fileInfo.streamId {} is not the upgrade's streamId {}",
                req.stream_id, self.stream_id
            ));
        }
        let Some(i) = self
            .files
            .iter()
            .position(|f| u64::from(f.id) == req.file_id)
        else {
            let ids: Vec<String> = self.files.iter().map(|f| f.id.to_string()).collect();
            return Err(format!(
                "params.fileInfo.fileId {} is no streamFileId of the upgrade ({})",
                req.file_id,
                ids.join(", ")
            ));
        };
        let file = &self.files[i];
        if req.token != DEFAULT_TOKEN && req.token != file.token {
            return Err(format!(
                "params.fileToken {:?} is neither {DEFAULT_TOKEN:?} nor the file's token {:?}",
                req.token, file.token
            ));
        }
        if req.size == 0 || req.size > u64::from(self.block_size) {
            return Err(format!(
                "params.fileBlock.size {} is outside 1..={} (the block size allowed)",
                req.size, self.block_size
            ));
        }
        let len = file.data.len() as u64;
        if req.offset >= len {
            return Err(format!(
                "params.fileBlock.offset {} is not within file {} ({len} bytes)",
                req.offset, file.id
            ));
        }
        Ok(i)
    }
}

/// Answers one device's block requests on a broker, with [`MqttFaults`], until dropped.
pub struct MqttDownloadServer {
    client: Client,
    state: Arc<Mutex<State>>,
    topics: Topics,
    stop: Arc<AtomicBool>,
}

/// Connection events the server's start waits for.
enum Ready {
    Connected,
    Subscribed(bool),
    Error(String),
}

impl MqttDownloadServer {
    /// Connects to the broker at `host:port`, subscribes to the device's request topic, and
    /// returns once the subscription is acknowledged. `package` must be delivered over MQTT
    /// ([`Package::over_mqtt`]); blocks of 1..=`block_size` bytes are allowed (at most
    /// [`MAX_BLOCK_SIZE`]). Each file's token is `stream-S-file-F`.
    pub fn start(
        host: &str,
        port: u16,
        product_key: &str,
        device_name: &str,
        package: &Package,
        block_size: u32,
        faults: MqttFaults,
    ) -> io::Result<MqttDownloadServer> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let Delivery::Mqtt { stream_id } = package.delivery else {
            return Err(invalid(
                "the package is delivered over HTTP, not MQTT".into(),
            ));
        };
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(invalid(format!(
                "block size {block_size} is outside 1..={MAX_BLOCK_SIZE}"
            )));
        }
        let files = package
            .files
            .iter()
            .map(|f| StreamFile {
                id: f.stream_file_id,
                name: f.name.clone(),
                data: Arc::clone(&f.data),
                token: format!("stream-{stream_id}-file-{}", f.stream_file_id),
                coverage: Coverage::default(),
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            stream_id,
            block_size,
            files,
            cuts_fired: vec![false; faults.cuts.len()],
            faults,
            header_past_frame_done: false,
            wrong_offset_done: false,
            flip_done: false,
            stall_done: false,
            asked: Default::default(),
            stats: MqttDownloadStats::default(),
            violation: None,
        }));
        let topics = Topics::new(product_key, device_name);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let client_id = format!(
            "ota-cloud-download-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        let max = crate::broker::MAX_PAYLOAD + 4096;
        options.set_max_packet_size(max, max);
        let (client, mut connection) = Client::new(options, 256);
        // The PUBACK and the reply would go as two small writes: with Nagle's algorithm the second
        // waits for the broker's delayed ACK of the first (~40 ms per block on Mosquitto).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel();
        let (work_tx, work) = mpsc::channel::<(String, Vec<u8>)>();
        let loop_stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("ota-cloud-mqtt-download".into())
            .spawn(move || {
                for event in connection.iter() {
                    if loop_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let _ = match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => ready_tx.send(Ready::Connected),
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            ready_tx.send(Ready::Subscribed(
                                ack.return_codes
                                    .iter()
                                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                            ))
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if work_tx.send((p.topic, p.payload.to_vec())).is_err() {
                                return;
                            }
                            Ok(())
                        }
                        Ok(_) => Ok(()),
                        Err(e) => {
                            let _ = ready_tx.send(Ready::Error(e.to_string()));
                            thread::sleep(Duration::from_millis(300));
                            Ok(())
                        }
                    };
                }
            })?;
        let worker = Worker {
            client: client.clone(),
            state: Arc::clone(&state),
            topics: topics.clone(),
        };
        thread::Builder::new()
            .name("ota-cloud-mqtt-blocks".into())
            .spawn(move || {
                while let Ok((topic, payload)) = work.recv() {
                    worker.on_request(&topic, &payload);
                }
            })?;
        let server = MqttDownloadServer {
            client,
            state,
            topics,
            stop,
        };
        server.wait_ready(&ready, host, port)?;
        Ok(server)
    }

    fn wait_ready(&self, ready: &Receiver<Ready>, host: &str, port: u16) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut subscribed = false;
        while !subscribed {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(Ready::Connected) => self
                    .client
                    .subscribe(&self.topics.request, QoS::AtLeastOnce)
                    .map_err(io::Error::other)?,
                Ok(Ready::Subscribed(true)) => subscribed = true,
                Ok(Ready::Subscribed(false)) => {
                    return Err(io::Error::other("broker refused the subscription"))
                }
                Ok(Ready::Error(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("cannot connect to MQTT broker {host}:{port}: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no subscription acknowledgement from the broker",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The device's two topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The token the replies for `stream_file_id` carry.
    pub fn token_of(&self, stream_file_id: u32) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.files
            .iter()
            .find(|f| f.id == stream_file_id)
            .map(|f| f.token.clone())
    }

    pub fn stats(&self) -> MqttDownloadStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// [`stats`](Self::stats) once `pick` holds, or as they are after `limit`.
    pub fn stats_when(
        &self,
        limit: Duration,
        pick: impl Fn(&MqttDownloadStats) -> bool,
    ) -> MqttDownloadStats {
        let end = Instant::now() + limit;
        loop {
            let s = self.stats();
            if pick(&s) || Instant::now() >= end {
                return s;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// For [`crate::Cloud::set_package`]: bytes served, whole files, violations.
    pub fn meter(&self) -> Arc<dyn PackageMeter> {
        Arc::new(MqttDownloadMeter {
            state: Arc::clone(&self.state),
        })
    }

    /// The one line a run ends with: `mqtt download: N requests, N blocks served, N repeated
    /// requests, N bytes, N replies dropped`.
    pub fn summary_line(&self) -> String {
        let s = self.stats();
        format!(
            "mqtt download: {} requests, {} blocks served, {} repeated requests, {} bytes \
             served, {} replies dropped",
            s.requests, s.blocks_served, s.repeated_requests, s.bytes_served, s.replies_dropped
        )
    }
}

impl Drop for MqttDownloadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
    }
}

/// Answers requests (in its own thread: publishing from the connection's thread could block
/// it).
struct Worker {
    client: Client,
    state: Arc<Mutex<State>>,
    topics: Topics,
}

impl Worker {
    fn on_request(&self, topic: &str, payload: &[u8]) {
        if topic != self.topics.request {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.stats.requests += 1;
        let checked = parse_request(payload).and_then(|r| s.check(&r).map(|i| (r, i)));
        let (req, index) = match checked {
            Ok(ok) => ok,
            Err(reason) => {
                crate::console::say(&format!("cloud: bad block request: {reason}"));
                s.stats.violations.push(reason.clone());
                if s.violation.is_none() {
                    s.violation = Some((
                        topic.to_string(),
                        reason,
                        String::from_utf8_lossy(payload).into_owned(),
                    ));
                }
                drop(s);
                let header = json!({"code": 400, "data": {"bSize": 0, "bOffset": 0,
                                    "fileLength": 0}, "msg": "bad request"});
                self.publish(frame(&header.to_string(), &[], crc16_arc(&[])));
                return;
            }
        };
        if !s.asked.insert((req.file_id, req.offset)) {
            s.stats.repeated_requests += 1;
        }
        let file = &s.files[index];
        let (data, token) = (Arc::clone(&file.data), file.token.clone());
        let len = data.len() as u64;
        let end = (req.offset + req.size).min(len);
        let fault = s.claim_fault(req.offset, end);
        let block = &data[req.offset as usize..end as usize];
        let mut reply = block_reply(req.offset, block, len, &token);
        let mut intact = true;
        let mut delay = None;
        let what = match fault {
            None => None,
            Some(Fault::Drop) => {
                s.stats.replies_dropped += 1;
                let line = format!("dropped the reply for bytes {}..{end}", req.offset);
                s.stats.faults_fired.push(line.clone());
                crate::console::say(&format!("cloud: fault: {line}"));
                return;
            }
            Some(Fault::HeaderPastFrame) => {
                intact = false;
                let claimed = (reply.len() as u16).saturating_add(1);
                reply[..2].copy_from_slice(&claimed.to_be_bytes());
                Some(format!(
                    "header length {claimed} past the frame for bytes {}..{end}",
                    req.offset
                ))
            }
            Some(Fault::WrongOffset) => {
                intact = false;
                let wrong = req.offset + 1;
                let wrong_end = (wrong + req.size).min(len);
                reply = block_reply(
                    wrong,
                    &data[wrong as usize..wrong_end as usize],
                    len,
                    &token,
                );
                Some(format!(
                    "bOffset {wrong} instead of {} for bytes {}..{end}",
                    req.offset, req.offset
                ))
            }
            Some(Fault::Flip(at)) => {
                intact = false;
                let header_len = usize::from(u16::from_be_bytes([reply[0], reply[1]]));
                reply[2 + header_len + at as usize] ^= 0xff;
                Some(format!(
                    "corrupted byte {} after the CRC (bytes {}..{end})",
                    req.offset + at,
                    req.offset
                ))
            }
            Some(Fault::Stall(d)) => {
                delay = Some(d);
                Some(format!(
                    "delayed the reply for bytes {}..{end} by {} ms",
                    req.offset,
                    d.as_millis()
                ))
            }
        };
        if let Some(line) = what {
            crate::console::say(&format!("cloud: fault: {line}"));
            s.stats.faults_fired.push(line);
        }
        s.stats.blocks_served += 1;
        s.stats.bytes_served += end - req.offset;
        if intact {
            s.files[index].coverage.add(req.offset, end);
        }
        drop(s);
        match delay {
            Some(d) => {
                let client = self.client.clone();
                let topic = self.topics.reply.clone();
                thread::spawn(move || {
                    thread::sleep(d);
                    let _ = client.publish(topic, REPLY_QOS, false, reply);
                });
            }
            None => self.publish(reply),
        }
    }

    fn publish(&self, frame: Vec<u8>) {
        let _ = self
            .client
            .publish(&self.topics.reply, REPLY_QOS, false, frame);
    }
}

/// Replies go at QoS 0, as the device subscribes to them (a lost one is asked again). At QoS 1
/// a broker with Nagle's algorithm on (Mosquitto's default) held each next request ~40 ms
/// behind its unacknowledged PUBACK to us (ota-bench section 7).
const REPLY_QOS: QoS = QoS::AtMostOnce;

/// [`PackageMeter`] of a [`MqttDownloadServer`].
struct MqttDownloadMeter {
    state: Arc<Mutex<State>>,
}

impl PackageMeter for MqttDownloadMeter {
    fn bytes_sent(&self) -> u64 {
        self.state.lock().unwrap().stats.bytes_served
    }

    fn missing(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        describe_gaps(
            s.files
                .iter()
                .map(|f| (f.name.as_str(), f.data.len() as u64, &f.coverage)),
        )
    }

    fn violation(&self) -> Option<(String, String, String)> {
        self.state.lock().unwrap().violation.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_arc_check_value() {
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
        assert_eq!(crc16_arc(b""), 0);
        // Table entries of the reflected 0xA001 table: crc of one byte n is table[n].
        assert_eq!(crc16_arc(&[0x01]), 0xC0C1);
        assert_eq!(crc16_arc(&[0x80]), 0xA001);
    }

    #[test]
    fn frame_layout_byte_for_byte() {
        let f = block_reply(5, b"AB", 9, "t");
        let header =
            r#"{"code":200,"data":{"bOffset":5,"bSize":2,"fileLength":9,"fileToken":"t"}}"#;
        let mut want = (header.len() as u16).to_be_bytes().to_vec();
        want.extend_from_slice(header.as_bytes());
        want.extend_from_slice(b"AB");
        want.extend_from_slice(&crc16_arc(b"AB").to_le_bytes());
        assert_eq!(f, want);
        let parsed = parse_frame(&f).unwrap();
        assert_eq!(
            (
                parsed.code,
                parsed.b_offset,
                parsed.b_size,
                parsed.file_length
            ),
            (200, 5, 2, 9)
        );
        assert_eq!(parsed.data, b"AB");
        assert!(parsed.crc_ok());
    }

    #[test]
    fn parse_frame_catches_bad_framing() {
        let f = block_reply(0, b"xyz", 3, "t");
        assert!(parse_frame(&f[..3]).is_err());
        let mut past = f.clone();
        past[..2].copy_from_slice(&(f.len() as u16).to_be_bytes());
        assert!(parse_frame(&past).unwrap_err().contains("past the frame"));
        let mut longer = f.clone();
        longer.push(0);
        assert!(parse_frame(&longer).is_err());
        // The last data byte flipped: the framing holds, the CRC does not.
        let mut data_flip = f;
        let last = data_flip.len() - 3;
        data_flip[last] ^= 0xff;
        assert!(!parse_frame(&data_flip).unwrap().crc_ok());
    }

    #[test]
    fn requests_are_checked_strictly() {
        let ok = request(7, "default", 1234, 1, 5120, 2048);
        assert_eq!(
            parse_request(ok.as_bytes()).unwrap(),
            BlockRequest {
                id: "7".into(),
                token: "default".into(),
                stream_id: 1234,
                file_id: 1,
                offset: 5120,
                size: 2048
            }
        );
        for bad in [
            "not json",
            r#"{"id":7,"version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":1,"offset":0}}}"#,
            r#"{"id":"7","version":"2.0","params":{"fileToken":"default","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":1,"offset":0}}}"#,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":1,"offset":0}}}"#,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1},"fileBlock":{"size":1,"offset":0}}}"#,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":-1,"offset":0}}}"#,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":1,"offset":"0"}}}"#,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1,"fileId":1},"fileBlock":{"size":1,"offset":0}},"x":1}"#,
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
