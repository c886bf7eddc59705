//! The MQTT download source ([`MqttBlockSource`]) through the embedded broker, against a small
//! platform written here: it answers each block request on
//! `/sys/{pk}/{dn}/thing/file/download` with a frame built from the layout in
//! `docs/packages.md` (`[header length BE][JSON header][data][CRC-16/ARC LE]`), and misbehaves
//! on cue (a corrupted CRC, a dropped reply, a stale block, another file's token, a file
//! length or code it disagrees on). Each test names what the device relies on.

mod common;
use common::mqtt_wire::{read_packet, read_until, CONNECT, PUBLISH};
use common::wait;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ota::error::Error;
use ota::mqtt::{MqttEvent, QoS};
use ota::mqtt_source::{MqttBlockSource, MqttDownloadConfig, MqttFile};
use ota::source::{Chunk, DownloadError, FirmwareSource, OpenInfo};
use ota::{MqttClient, MqttOptions};
use ota_cloud::broker::EmbeddedBroker;

const PK: &str = "a1pk";
const DN: &str = "dev1";
const REQUEST_TOPIC: &str = "/sys/a1pk/dev1/thing/file/download";
const REPLY_TOPIC: &str = "/sys/a1pk/dev1/thing/file/download_reply";
const STREAM_ID: u32 = 1234;
const FILE_ID: u32 = 7;
const BLOCK: u64 = 5120;
const TOKEN: &str = "tok-A";

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new("127.0.0.1", port, id);
    o.request_timeout = Duration::from_secs(1);
    o
}

/// Bytes no two blocks share by accident.
fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// CRC-16/ARC as docs/packages.md gives it: polynomial 0x8005 reflected (0xA001), initial 0, no
/// final XOR.
fn crc16_arc(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A reply frame from the layout: header length (u16 BE), header, data, CRC (u16 LE).
fn frame(header: &str, data: &[u8], crc: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(header.len() + data.len() + 4);
    f.extend_from_slice(&(header.len() as u16).to_be_bytes());
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(data);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn header(code: u32, size: usize, offset: u64, length: u64, token: &str) -> String {
    format!(
        r#"{{"code":{code},"data":{{"bSize":{size},"bOffset":{offset},"fileLength":{length},"fileToken":"{token}"}},"msg":"success"}}"#
    )
}

/// How the platform misbehaves for a request at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The reply's data has a byte flipped after its CRC was computed.
    FlipCrc,
    /// No reply.
    Drop,
    /// The previous block (at its own offset) first, then the right reply.
    StaleFirst,
    /// A reply at the right offset with another file's token and other bytes, nothing else.
    OtherToken,
    /// Only the previous block, at its own offset.
    WrongOffsetOnly,
    /// `fileLength` one byte more than the file.
    LongerFile,
    /// `code` 404.
    Refuse,
}

/// A block request as the platform saw it.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    id: u64,
    stream_id: u64,
    file_id: u64,
    offset: u64,
    size: u64,
    token: String,
}

/// The value after `"name":` in `json`, a number or a string of digits.
fn number(json: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + key.len();
    let digits: String = json[at..]
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap()
}

fn string(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    let at = json.find(&key).unwrap() + key.len();
    json[at..].split('"').next().unwrap().to_string()
}

/// The platform: its own MQTT client on a thread, answering block requests from `file`.
struct Cloud {
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Cloud {
    /// Starts answering; each `(offset, fault, times)` applies to the first `times` requests at
    /// that offset. Returns once the platform's subscription is granted.
    fn start(port: u16, file: Vec<u8>, faults: &[(u64, Fault, u32)]) -> Cloud {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let mut faults = faults.to_vec();
        let (log, halt, up) = (requests.clone(), stop.clone(), ready.clone());
        let thread = thread::spawn(move || {
            let client = MqttClient::connect(&options(port, "platform")).unwrap();
            let granted = up.clone();
            client.on_event(move |e| {
                if matches!(e, MqttEvent::SubscribeAck { .. }) {
                    granted.store(true, Ordering::SeqCst);
                }
            });
            let (tx, rx) = mpsc::channel::<String>();
            client
                .subscribe(REQUEST_TOPIC, QoS::AtMostOnce, move |m| {
                    let _ = tx.send(String::from_utf8(m.payload.to_vec()).unwrap());
                })
                .unwrap();
            while !halt.load(Ordering::SeqCst) {
                client.yield_for(Duration::from_millis(5)).unwrap();
                for json in rx.try_iter() {
                    let req = Request {
                        at: Instant::now(),
                        id: number(&json, "id"),
                        stream_id: number(&json, "streamId"),
                        file_id: number(&json, "fileId"),
                        offset: number(&json, "offset"),
                        size: number(&json, "size"),
                        token: string(&json, "fileToken"),
                    };
                    let fault = faults
                        .iter_mut()
                        .find(|(at, _, times)| *at == req.offset && *times > 0)
                        .map(|(_, fault, times)| {
                            *times -= 1;
                            *fault
                        });
                    for reply in replies(&file, &req, fault) {
                        client
                            .publish(REPLY_TOPIC, QoS::AtMostOnce, false, &reply)
                            .unwrap();
                    }
                    log.lock().unwrap().push(req);
                }
            }
        });
        wait::until("platform subscribed", Duration::from_secs(10), || {
            ready.load(Ordering::SeqCst)
        });
        Cloud {
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn offsets(&self) -> Vec<u64> {
        self.requests().iter().map(|r| r.offset).collect()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The frames the platform sends for `req`.
fn replies(file: &[u8], req: &Request, fault: Option<Fault>) -> Vec<Vec<u8>> {
    let len = file.len() as u64;
    let block = |offset: u64, token: &str, length: u64, code: u32| {
        let end = (offset + req.size).min(len);
        let data = &file[offset as usize..end as usize];
        let h = header(code, data.len(), offset, length, token);
        frame(&h, data, crc16_arc(data))
    };
    let good = block(req.offset, TOKEN, len, 200);
    let stale = || block(req.offset.saturating_sub(BLOCK), TOKEN, len, 200);
    match fault {
        None => vec![good],
        Some(Fault::FlipCrc) => {
            let mut bad = good;
            let header_len = u16::from_be_bytes([bad[0], bad[1]]) as usize;
            bad[2 + header_len + 3] ^= 0x40;
            vec![bad]
        }
        Some(Fault::Drop) => vec![],
        Some(Fault::StaleFirst) => vec![stale(), good],
        Some(Fault::OtherToken) => {
            let end = (req.offset + req.size).min(len) as usize;
            let other = vec![0xEE; end - req.offset as usize];
            let h = header(200, other.len(), req.offset, len, "tok-B");
            vec![frame(&h, &other, crc16_arc(&other))]
        }
        Some(Fault::WrongOffsetOnly) => vec![stale()],
        Some(Fault::LongerFile) => vec![block(req.offset, TOKEN, len + 1, 200)],
        Some(Fault::Refuse) => vec![block(req.offset, TOKEN, len, 404)],
    }
}

fn url(size: usize) -> String {
    MqttFile {
        stream_id: STREAM_ID,
        file_id: FILE_ID,
        size: size as u64,
    }
    .to_string()
}

fn config(block_timeout: Duration, block_retries: u32) -> MqttDownloadConfig {
    MqttDownloadConfig {
        block_size: BLOCK as u32,
        block_timeout,
        block_retries,
    }
}

/// Reads until `want` bytes came (then once more: the end), as FetchYield would, in pieces of
/// `piece` bytes with reads of `timeout`; what `Opened` said and the bytes.
fn fetch(
    source: &mut MqttBlockSource,
    want: usize,
    piece: usize,
    timeout: Duration,
) -> Result<(OpenInfo, Vec<u8>), DownloadError> {
    let limit = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; piece];
    let mut opened = None;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(Instant::now() < limit, "download stuck at {}", got.len());
        match source.read(&mut buf, timeout)? {
            Chunk::Opened(info) => {
                assert!(opened.is_none() && got.is_empty(), "Opened first, once");
                opened = Some(info);
            }
            Chunk::Data(n) => {
                assert!(opened.is_some(), "Opened before data");
                got.extend_from_slice(&buf[..n]);
            }
            Chunk::Pending => {}
            Chunk::End => panic!("end after {} of {want} bytes", got.len()),
        }
    }
    assert_eq!(got.len(), want, "no byte past the file");
    assert_eq!(source.read(&mut buf, timeout)?, Chunk::End);
    Ok((opened.unwrap(), got))
}

struct Setup {
    _broker: EmbeddedBroker,
    cloud: Cloud,
    device: Arc<MqttClient>,
    file: Vec<u8>,
}

fn setup(size: usize, faults: &[(u64, Fault, u32)]) -> Setup {
    let broker = EmbeddedBroker::start().unwrap();
    let file = image(size);
    let cloud = Cloud::start(broker.port(), file.clone(), faults);
    let device = Arc::new(MqttClient::connect(&options(broker.port(), "device")).unwrap());
    Setup {
        _broker: broker,
        cloud,
        device,
        file,
    }
}

#[test]
fn a_whole_file_arrives_in_order_when_only_read_drives_mqtt() {
    let size = 3 * BLOCK as usize + 777;
    let s = setup(size, &[]);
    // Nothing else yields the device's client: read() must.
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, MqttDownloadConfig::default()).unwrap();
    assert_eq!(source.block_size(), 5 * 1024, "the Link SDK's default");
    source.open(&url(size), 0).unwrap();
    let (info, got) = fetch(&mut source, size, 1000, Duration::from_secs(1)).unwrap();
    assert_eq!(
        info,
        OpenInfo {
            status: 200,
            content_length: Some(size as u64),
            range_start: None,
            range_total: None
        }
    );
    assert!(got == s.file, "byte-exact");
    let reqs = s.cloud.requests();
    let asked: Vec<(u64, u64)> = reqs.iter().map(|r| (r.offset, r.size)).collect();
    assert_eq!(
        asked,
        [
            (0, BLOCK),
            (BLOCK, BLOCK),
            (2 * BLOCK, BLOCK),
            (3 * BLOCK, 777)
        ]
    );
    assert!(reqs.windows(2).all(|w| w[1].id > w[0].id), "ids grow");
    for r in &reqs {
        assert_eq!((r.stream_id, r.file_id), (STREAM_ID.into(), FILE_ID.into()));
        assert_eq!(r.token, "default");
    }
    let stats = source.stats();
    assert_eq!((stats.requests, stats.blocks, stats.retries), (4, 4, 0));
    assert_eq!((stats.ignored, stats.refused), (0, 0));
}

#[test]
fn a_block_with_a_bad_crc_is_asked_again_at_once() {
    let size = 3 * BLOCK as usize;
    let s = setup(size, &[(BLOCK, Fault::FlipCrc, 1)]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_secs(10), 3)).unwrap();
    let start = Instant::now();
    source.open(&url(size), 0).unwrap();
    let (_, got) = fetch(&mut source, size, 4096, Duration::from_secs(1)).unwrap();
    assert!(
        got == s.file,
        "the corrupted block never reached the caller"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "asked again on the bad reply, not after the 10 s block timeout"
    );
    assert_eq!(s.cloud.offsets(), [0, BLOCK, BLOCK, 2 * BLOCK]);
    let stats = source.stats();
    assert_eq!((stats.refused, stats.retries), (1, 1));
}

#[test]
fn a_dropped_reply_is_asked_again_after_the_block_timeout() {
    let size = 2 * BLOCK as usize + 10;
    let s = setup(size, &[(BLOCK, Fault::Drop, 1)]);
    let timeout = Duration::from_millis(400);
    let mut source = MqttBlockSource::new(&s.device, PK, DN, config(timeout, 3)).unwrap();
    source.open(&url(size), 0).unwrap();
    let (_, got) = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap();
    assert!(got == s.file);
    let reqs = s.cloud.requests();
    let offsets: Vec<u64> = reqs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, BLOCK, BLOCK, 2 * BLOCK]);
    let gap = reqs[2].at - reqs[1].at;
    assert!(
        gap >= Duration::from_millis(300),
        "asked again after the block timeout, not before: {gap:?}"
    );
    assert_eq!(source.stats().retries, 1);
}

#[test]
fn stale_blocks_and_another_files_token_are_dropped() {
    let size = 4 * BLOCK as usize;
    let s = setup(
        size,
        &[
            // The token "tok-A" is learnt from block 0; a reply naming "tok-B" is another
            // file's, whatever its offset and CRC.
            (BLOCK, Fault::OtherToken, 1),
            (2 * BLOCK, Fault::StaleFirst, 1),
        ],
    );
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_millis(400), 3)).unwrap();
    source.open(&url(size), 0).unwrap();
    let (_, got) = fetch(&mut source, size, 5120, Duration::from_secs(1)).unwrap();
    assert!(
        got == s.file,
        "neither the other file's bytes nor the stale block were taken"
    );
    // The other file's reply: dropped, the block asked again after its timeout. The stale
    // block: dropped, the right reply behind it taken without asking again.
    assert_eq!(s.cloud.offsets(), [0, BLOCK, BLOCK, 2 * BLOCK, 3 * BLOCK]);
    let stats = source.stats();
    assert_eq!((stats.ignored, stats.retries, stats.refused), (2, 1, 0));
}

#[test]
fn replies_only_at_another_offset_fail_once_the_retries_are_used_up() {
    let size = 2 * BLOCK as usize;
    let s = setup(size, &[(BLOCK, Fault::WrongOffsetOnly, 100)]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_millis(200), 2)).unwrap();
    source.open(&url(size), 0).unwrap();
    let e = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        e,
        DownloadError::BadBlock("replies at another offset than asked")
    );
    assert!(
        !e.is_transient(),
        "the platform will not mend: a failure report"
    );
    // The first request and two more.
    assert_eq!(s.cloud.offsets(), [0, BLOCK, BLOCK, BLOCK]);
    assert_eq!(source.stats().ignored, 3);
    // The source is closed after a failure.
    let mut buf = [0u8; 16];
    assert!(source.read(&mut buf, Duration::ZERO).is_err());
}

#[test]
fn silence_fails_as_a_transient_timeout_once_the_retries_are_used_up() {
    let size = 2 * BLOCK as usize;
    let s = setup(size, &[(0, Fault::Drop, 2)]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_millis(200), 1)).unwrap();
    source.open(&url(size), 0).unwrap();
    let e = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap_err();
    assert_eq!(e, DownloadError::Timeout);
    assert!(e.is_transient(), "the engine's retry policy reopens");
    assert_eq!(s.cloud.offsets(), [0, 0]);
    // Reopened as the engine does: the third request is answered.
    source.open(&url(size), 0).unwrap();
    let (_, got) = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap();
    assert!(got == s.file);
}

#[test]
fn a_file_length_or_code_the_platform_disagrees_on_fails_at_once() {
    let size = 2 * BLOCK as usize;
    let s = setup(size, &[(0, Fault::LongerFile, 1), (0, Fault::Refuse, 1)]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_secs(10), 3)).unwrap();
    source.open(&url(size), 0).unwrap();
    let start = Instant::now();
    let e = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        e,
        DownloadError::Oversize,
        "fileLength above the announced size"
    );
    source.open(&url(size), 0).unwrap();
    let e = fetch(&mut source, size, 8192, Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        e,
        DownloadError::BadBlock("the platform refused (code not 200)")
    );
    assert!(!e.is_transient());
    assert!(start.elapsed() < Duration::from_secs(5), "no block timeout");
    assert_eq!(s.cloud.offsets(), [0, 0], "neither was asked again");
    assert_eq!(source.stats().retries, 0);
}

#[test]
fn a_download_resumes_from_any_offset() {
    let size = 4 * BLOCK as usize + 100;
    let s = setup(size, &[]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, MqttDownloadConfig::default()).unwrap();
    let from = 7000u64;
    source.open(&url(size), from).unwrap();
    let mut buf = vec![0u8; 3000];
    let mut got = Vec::new();
    let mut info = None;
    // Two blocks' worth, then the connection is dropped and reopened where it stopped.
    while got.len() < 2 * BLOCK as usize {
        match source.read(&mut buf, Duration::from_secs(1)).unwrap() {
            Chunk::Opened(i) => info = Some(i),
            Chunk::Data(n) => got.extend_from_slice(&buf[..n]),
            Chunk::Pending => {}
            Chunk::End => panic!("early end"),
        }
    }
    assert_eq!(
        info,
        Some(OpenInfo {
            status: 206,
            content_length: Some(size as u64 - from),
            range_start: Some(from),
            range_total: Some(size as u64),
        })
    );
    source.close();
    let at = from + got.len() as u64;
    source.open(&url(size), at).unwrap();
    let (info, rest) = fetch(
        &mut source,
        size - at as usize,
        3000,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(info.range_start, Some(at));
    got.extend_from_slice(&rest);
    assert!(got == s.file[from as usize..], "byte-exact from the offset");
    // The request queued as the second block was taken may go out after the reopening: its
    // answer is at the offset reopened from, so either is taken and the other dropped.
    let mut offsets = s.cloud.offsets();
    offsets.dedup();
    assert_eq!(offsets, [from, from + BLOCK, from + 2 * BLOCK]);
    assert_eq!(at, from + 2 * BLOCK);
    // Opening at the end: nothing to ask for.
    source.open(&url(size), size as u64).unwrap();
    let mut buf = [0u8; 16];
    let opened = source.read(&mut buf, Duration::ZERO).unwrap();
    assert!(matches!(
        opened,
        Chunk::Opened(OpenInfo {
            content_length: Some(0),
            ..
        })
    ));
    assert_eq!(source.read(&mut buf, Duration::ZERO), Ok(Chunk::End));
    // Past the end, or not an MQTT file: refused at open.
    assert_eq!(
        source.open(&url(size), size as u64 + 1),
        Err(DownloadError::Status(416))
    );
    for bad in [
        "http://h/x.bin",
        "mqtt-download:1/2",
        "mqtt-download:1/2/3/4",
        "mqtt-download:1/x/3",
        "mqtt-download:99999999999/2/3",
    ] {
        assert_eq!(source.open(bad, 0), Err(DownloadError::Url), "{bad}");
    }
}

#[test]
fn another_thread_yields_the_client_all_along() {
    let size = 6 * BLOCK as usize + 1;
    let s = setup(size, &[(2 * BLOCK, Fault::FlipCrc, 1)]);
    let stop = Arc::new(AtomicBool::new(false));
    let (yields, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let yielder = {
        let (device, stop, yields, failed) = (
            s.device.clone(),
            stop.clone(),
            yields.clone(),
            failed.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if device.yield_for(Duration::from_millis(50)).is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                yields.fetch_add(1, Ordering::SeqCst);
                // Other work between yields: the link is free then, and still not the read's.
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait::until("the yield thread runs", Duration::from_secs(5), || {
        yields.load(Ordering::SeqCst) > 0
    });
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_secs(10), 3)).unwrap();
    let start = Instant::now();
    source.open(&url(size), 0).unwrap();
    let (_, got) = fetch(&mut source, size, 2048, Duration::from_secs(1)).unwrap();
    let took = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    yielder.join().unwrap();
    assert!(got == s.file);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "the reads never took the connection from the yield thread"
    );
    // Each reply is taken as the yield thread delivers it, not at the end of a read's timeout.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(source.stats().retries, 1);
}

#[test]
fn blocks_whose_frame_exceeds_the_client_packet_limit_are_refused_at_creation() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut o = options(broker.port(), "small-device");
    o.max_packet_size = 4096;
    let device = MqttClient::connect(&o).unwrap();
    let make = |block_size: u32| {
        MqttBlockSource::new(
            &device,
            PK,
            DN,
            MqttDownloadConfig {
                block_size,
                ..MqttDownloadConfig::default()
            },
        )
    };
    assert!(matches!(make(5120), Err(Error::InvalidParam(_))));
    assert!(matches!(make(3600), Err(Error::InvalidParam(_))));
    assert!(matches!(make(0), Err(Error::InvalidParam(_))));
    let fits = make(2048).unwrap();
    // One source per device and client: the reply topic is the device's.
    assert!(matches!(make(2048), Err(Error::InvalidState(_))));
    drop(fits);
    let again = make(2048).expect("dropping a source unsubscribes its topic");
    // What the engine holds: a boxed source it may move to the fetching thread.
    let _engine_side: Box<dyn FirmwareSource + Send> = Box::new(again);
}

#[test]
fn a_caller_slower_than_the_block_timeout_causes_no_request_again() {
    let size = 3 * BLOCK as usize;
    let s = setup(size, &[]);
    let mut source =
        MqttBlockSource::new(&s.device, PK, DN, config(Duration::from_millis(200), 3)).unwrap();
    source.open(&url(size), 0).unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut got = Vec::new();
    while got.len() < size {
        match source.read(&mut buf, Duration::from_secs(1)).unwrap() {
            Chunk::Data(n) => got.extend_from_slice(&buf[..n]),
            Chunk::Opened(_) | Chunk::Pending => {}
            Chunk::End => panic!("early end"),
        }
        // Firmware writing flash between two FetchYields, longer than the block timeout: the
        // request went out with the read, its reply waits in the socket.
        thread::sleep(Duration::from_millis(400));
    }
    assert!(got == s.file);
    assert_eq!(s.cloud.offsets(), [0, BLOCK, 2 * BLOCK]);
    assert_eq!(source.stats().retries, 0);
}

#[test]
fn a_firmware_yield_during_the_sdks_reconnection_waits_within_its_timeout() {
    use std::io::Write;
    // A broker that drops the first connection after the block request, and answers the second
    // CONNECT 1.5 s late: the MQTT download's read reconnects the client, holding it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (dialing_tx, dialing) = mpsc::channel();
    let broker = thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        read_until(&mut first, CONNECT).expect("CONNECT");
        first.write_all(&[0x20, 2, 0, 0]).unwrap();
        read_until(&mut first, PUBLISH).expect("the block request");
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        read_until(&mut second, CONNECT).expect("CONNECT");
        dialing_tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(1500));
        second.write_all(&[0x20, 2, 0, 0]).unwrap();
        while read_packet(&mut second).is_some() {}
    });
    let mut o = options(port, "redial-device");
    o.request_timeout = Duration::from_secs(5);
    let device = Arc::new(MqttClient::connect(&o).unwrap());
    let size = 2 * BLOCK as usize;
    let mut source =
        MqttBlockSource::new(&device, PK, DN, config(Duration::from_secs(30), 3)).unwrap();
    source.open(&url(size), 0).unwrap();
    // The firmware's FetchYield loop on this thread, its yield thread beside it once the
    // reconnection is under way.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; BLOCK as usize];
            while !stop.load(Ordering::SeqCst) {
                let _ = source.read(&mut buf, Duration::from_millis(200));
            }
        })
    };
    dialing
        .recv_timeout(Duration::from_secs(10))
        .expect("the read reconnects the client");
    let mut yields = Vec::new();
    while !device.is_connected() && yields.len() < 40 {
        let start = Instant::now();
        let r = device.yield_for(Duration::from_millis(200));
        yields.push((r, start.elapsed()));
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let longest = yields.iter().map(|(_, t)| *t).max().unwrap();
    println!(
        "{} yields of 200 ms during a 1.5 s reconnection by the SDK, longest {longest:?}",
        yields.len()
    );
    assert!(device.is_connected(), "the reconnection ended");
    assert!(
        yields.iter().all(|(r, _)| r.is_ok()),
        "a yield while the SDK reconnects is not an error: {yields:?}"
    );
    // Each returned at the end of its own time, not at the end of the 1.5 s CONNACK wait.
    assert!(yields.len() >= 3, "{yields:?}");
    assert!(longest < Duration::from_millis(1000), "{yields:?}");
    device.disconnect(Duration::from_secs(1));
    drop(device);
    broker.join().unwrap();
}
