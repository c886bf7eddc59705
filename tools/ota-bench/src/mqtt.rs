//! Section 7 of the table: download over MQTT (issue 16) beside HTTP, through Mosquitto on
//! 127.0.0.1.
//!
//! - The same image downloaded by an `OtaSession` attached to an `MqttClient` on Mosquitto,
//!   with the FetchYield loop of the C bench (5000-byte buffer), from the `FirmwareServer`
//!   over HTTP (the baseline) and over MQTT from `MqttDownloadServer` at two block sizes.
//!   Mosquitto runs with `set_tcp_nodelay true`; one more row shows its default (Nagle on).
//! - What enabling download over MQTT allocates per session at each block size (the counting
//!   allocator, and the heap it keeps): the number behind keeping it opt-in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::mqtt::{MqttEvent, QoS};
use ota::protocol::mqtt_download::crc16_arc;
use ota::source::MqttDownloadConfig;
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::{CloudOptions, Protocol as CloudProtocol};
use ota_cloud::{FirmwareServer, MqttDownloadServer, MqttFaults, Package};

use super::{
    allocated_bytes, allocs, firmware, mb_s, set_counting, Campaign, Res, Three, DN, MIB, PK,
};

/// The block sizes of the MQTT rows: the Link SDK's default, and a larger one.
pub const BLOCK_SIZES: [u32; 2] = [5 * 1024, 32 * 1024];
/// The image of the row through Mosquitto's default configuration: each block waits about
/// 40 ms there, so a small image tells as much.
pub const NAGLE_IMAGE: usize = 64 * 1024;
/// The FetchYield buffer of every row (the iotkit sample's order).
const BUF_LEN: usize = 5000;
/// The upgrade's `streamId`.
const STREAM_ID: u32 = 16;
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Mosquitto in a child process.

/// The mosquitto binary; `Ok(None)` when it is not installed, an error then when
/// OTA_REQUIRE_MOSQUITTO=required (CI).
fn mosquitto_binary() -> Res<Option<PathBuf>> {
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/mosquitto"),
        PathBuf::from("/usr/local/sbin/mosquitto"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("mosquitto")));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() && std::env::var("OTA_REQUIRE_MOSQUITTO").as_deref() == Ok("required") {
        return Err(
            "mosquitto is not installed and OTA_REQUIRE_MOSQUITTO=required: the MQTT download rows are required"
                .into(),
        );
    }
    Ok(found)
}

/// `mosquitto version X.Y.Z` as `mosquitto -h` prints it first.
fn mosquitto_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| l.starts_with("mosquitto version"))
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
}

/// Mosquitto listening on 127.0.0.1 (plain MQTT, anonymous); killed and its directory removed
/// on drop.
struct Mosquitto {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Mosquitto {
    /// Starts mosquitto on a free port, with `set_tcp_nodelay true` when `nodelay` (else its
    /// default, false), and returns once it listens. A port taken between finding it and
    /// mosquitto's bind is tried again with another.
    fn start(binary: &Path, work: &Path, nodelay: bool) -> Res<Mosquitto> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let dir = work.join(format!(
                "mosquitto-{}",
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir)?;
            let conf = dir.join("mosquitto.conf");
            let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
            if nodelay {
                text += "set_tcp_nodelay true\n";
            }
            std::fs::write(&conf, text)?;
            let log = std::fs::File::create(dir.join("mosquitto.log"))?;
            let child = Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let mut broker = Mosquitto { child, dir, port };
            match broker.wait_listening() {
                Ok(()) => return Ok(broker),
                Err(e) => last = e,
            }
        }
        Err(format!("mosquitto did not start: {last}").into())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let addr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status}:\n{}", self.log()));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("it did not listen within 10 s:\n{}", self.log()))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// One device on Mosquitto.

static CLIENT_ID: AtomicUsize = AtomicUsize::new(0);

/// Options of a client of `broker`; `block`: room for its reply frames.
fn options(broker: &Mosquitto, who: &str, block: Option<u32>) -> MqttOptions {
    let id = CLIENT_ID.fetch_add(1, Ordering::Relaxed);
    let mut o = MqttOptions::new("127.0.0.1", broker.port, &format!("ota-bench-{who}-{id}"));
    // A block's reply frame (its header and the topic besides the data) must fit a packet.
    if let Some(block) = block {
        o.max_packet_size = o.max_packet_size.max(block as usize + 4096);
    }
    o
}

fn config(block: Option<u32>) -> OtaConfig {
    let mut config = OtaConfig::for_protocol(Protocol::Aliyun);
    config.mqtt_download = block.map(|block_size| MqttDownloadConfig {
        block_size,
        ..MqttDownloadConfig::default()
    });
    config
}

/// A row: how the image comes (`block`: over MQTT in blocks of that size, else HTTP), through
/// which Mosquitto, and how big it is.
#[derive(Clone, Copy)]
struct Spec {
    block: Option<u32>,
    /// Through Mosquitto's default configuration (Nagle's algorithm on its sockets).
    nagle: bool,
    image_len: usize,
}

impl Spec {
    fn label(&self) -> String {
        match self.block {
            None => "HTTP, FirmwareServer (the baseline)".into(),
            Some(block) if self.nagle => format!(
                "MQTT, {} KiB, {} KiB image, set_tcp_nodelay off",
                block / 1024,
                self.image_len / 1024
            ),
            Some(block) if block == BLOCK_SIZES[0] => {
                format!("MQTT, {} KiB blocks (Link SDK default)", block / 1024)
            }
            Some(block) => format!("MQTT, {} KiB blocks", block / 1024),
        }
    }

    fn short(&self) -> String {
        match self.block {
            None => "HTTP".into(),
            Some(block) if self.nagle => format!("MQTT {} KiB (Nagle)", block / 1024),
            Some(block) => format!("MQTT {} KiB", block / 1024),
        }
    }
}

/// One download: MB/s of its FetchYield loop, and its progress reports refused; for MQTT the
/// block requests the platform got and how many of them asked for an offset again (the
/// device's retries).
struct Run {
    mb_s: f64,
    refused_reports: u64,
    requests: u64,
    retries: u64,
}

/// Attaches a session (`block`: with MQTT download) to a new client of `broker`, waits for its
/// subscriptions, publishes the upgrade `message` from a second client, and runs the C
/// bench's loop: FetchYield into a 5000-byte buffer, a progress report when the percentage
/// grows, `yield_for(0)`, until IsFetchFinish; then CHECK_FIRMWARE must pass. Returns the
/// loop's MB/s and the progress reports refused.
fn download(broker: &Mosquitto, block: Option<u32>, message: &str, len: usize) -> Res<(f64, u64)> {
    let device = MqttClient::connect(&options(broker, "device", block))?;
    let acks = Arc::new(AtomicUsize::new(0));
    let counted = acks.clone();
    device.on_event(move |e| {
        if let MqttEvent::SubscribeAck { .. } = e {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let session = OtaSession::attach(&device, PK, DN, config(block))?;
    session.report_version("1.0.0")?;
    // The upgrade topic, and the block replies' topic with MQTT download.
    let subscriptions = 1 + usize::from(block.is_some());
    let deadline = Instant::now() + LIMIT;
    while acks.load(Ordering::SeqCst) < subscriptions {
        if Instant::now() > deadline {
            return Err("the device's subscriptions were not acknowledged".into());
        }
        device.yield_for(Duration::from_millis(5))?;
    }
    let cloud = MqttClient::connect(&options(broker, "cloud", None))?;
    cloud.publish(
        session.downstream_topic(),
        QoS::AtLeastOnce,
        false,
        message.as_bytes(),
    )?;
    cloud.yield_for(Duration::ZERO)?;
    while !session.is_fetching() {
        if Instant::now() > deadline {
            return Err("the device did not start the upgrade".into());
        }
        device.yield_for(Duration::from_millis(5))?;
        cloud.yield_for(Duration::ZERO)?;
    }
    let mut buf = vec![0u8; BUF_LEN];
    let (mut total, mut last, mut refused) = (0usize, 0u64, 0u64);
    let t0 = Instant::now();
    while !session.is_fetch_finished() {
        if t0.elapsed() > LIMIT {
            return Err(format!("the download stuck at {total} of {len} bytes").into());
        }
        total += session.fetch_yield(&mut buf, Duration::from_secs(1))?;
        let percent = session.fetched_size() * 100 / session.file_size().max(1);
        if percent > last {
            // As the C loop (and the iotkit sample): a report refused is not the download's
            // failure; on a fast link the QoS 1 reports can outrun their PUBACKs.
            if session.report_progress(percent as i32, None).is_err() {
                refused += 1;
            }
            last = percent;
        }
        device.yield_for(Duration::ZERO)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if !session.check_firmware()? || total != len {
        return Err(format!("a download of {len} bytes gave {total} or did not verify").into());
    }
    drop(session);
    device.disconnect(Duration::from_millis(50));
    cloud.disconnect(Duration::from_millis(50));
    Ok((mb_s(total, secs), refused))
}

/// One run of `spec` through `broker`: HTTP with `http_message`, MQTT from a platform of its
/// own (so that its counts are this run's) serving the first `spec.image_len` bytes of `image`.
fn run_once(broker: &Mosquitto, spec: Spec, image: &[u8], http_message: &str) -> Res<Run> {
    let Some(block) = spec.block else {
        let (mb_s, refused_reports) = download(broker, None, http_message, spec.image_len)?;
        return Ok(Run {
            mb_s,
            refused_reports,
            requests: 0,
            retries: 0,
        });
    };
    let data: Arc<[u8]> = Arc::from(&image[..spec.image_len]);
    let package = Package::single_over_mqtt("2.0.0", "fw.bin", data, STREAM_ID);
    let platform = MqttDownloadServer::start(
        "127.0.0.1",
        broker.port,
        PK,
        DN,
        &package,
        block,
        MqttFaults::default(),
    )?;
    let message = package.upgrade_message(CloudProtocol::Aliyun, 1, &CloudOptions::default())?;
    let (mb_s, refused_reports) = download(broker, Some(block), &message, spec.image_len)?;
    let stats = platform.stats();
    if let Some(v) = stats.violations.first() {
        return Err(format!("the platform refused a block request: {v}").into());
    }
    Ok(Run {
        mb_s,
        refused_reports,
        requests: stats.requests,
        retries: stats.repeated_requests,
    })
}

// ---------------------------------------------------------------------------------------------
// The heap of enabling MQTT download.

/// What one call cost: allocations and bytes asked of the allocator during it (reallocations
/// count their new size), and the growth of the heap in use across it (glibc `mallinfo2`:
/// what the call left allocated).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Cost {
    allocations: usize,
    bytes: usize,
    kept: i64,
}

/// Three tries, in the order they ran.
type Costs = [Cost; 3];

fn heap_in_use() -> i64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as i64
}

/// `f` with the allocations counted; what it returned and cost.
fn counted<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let before = (allocs(), allocated_bytes(), heap_in_use());
    set_counting(true);
    let r = f();
    set_counting(false);
    let cost = Cost {
        allocations: allocs() - before.0,
        bytes: allocated_bytes() - before.1,
        kept: heap_in_use() - before.2,
    };
    (r, cost)
}

/// What `OtaSession::attach` costs without MQTT download, and what `enable_mqtt_download`
/// then adds at each of [`BLOCK_SIZES`]; three tries each, every try on a client of its own
/// (connected, and yielded once, before counting).
fn heap_costs(broker: &Mosquitto) -> Res<(Costs, Vec<Costs>)> {
    let client = |block: Option<u32>| -> Res<MqttClient> {
        let c = MqttClient::connect(&options(broker, "heap", block))?;
        c.yield_for(Duration::ZERO)?;
        Ok(c)
    };
    let mut attach = Costs::default();
    for slot in &mut attach {
        let c = client(None)?;
        let (session, cost) = counted(|| OtaSession::attach(&c, PK, DN, config(None)));
        drop(session?);
        *slot = cost;
        c.disconnect(Duration::from_millis(50));
    }
    let mut enable = Vec::new();
    for block in BLOCK_SIZES {
        let mut costs = Costs::default();
        for slot in &mut costs {
            let c = client(Some(block))?;
            let session = OtaSession::attach(&c, PK, DN, config(None))?;
            let download = MqttDownloadConfig {
                block_size: block,
                ..MqttDownloadConfig::default()
            };
            let (r, cost) = counted(|| session.enable_mqtt_download(&c, download));
            r?;
            *slot = cost;
            drop(session);
            c.disconnect(Duration::from_millis(50));
        }
        enable.push(costs);
    }
    Ok((attach, enable))
}

// ---------------------------------------------------------------------------------------------
// The section.

pub struct Mqtt {
    mosquitto: String,
    image_len: usize,
    /// Per row, its three runs.
    runs: Vec<(Spec, Vec<Run>)>,
    attach: Costs,
    /// Per block size.
    enable: Vec<Costs>,
    /// MB/s of the CRC-16 over the image in memory, best of 3: the device's, the simulator's.
    crc_mb_s: (f64, f64),
}

/// Section 7's measurements; `Err` with why when mosquitto is not installed (and not
/// required).
pub fn measure(image_len: usize, work: &Path, c: &Campaign) -> Res<Result<Mqtt, String>> {
    let Some(binary) = mosquitto_binary()? else {
        return Ok(Err(
            "not run: mosquitto is not installed (/usr/sbin, /usr/local/sbin, PATH; Debian package mosquitto)"
                .into(),
        ));
    };
    // No progress bar while counting: its ticker thread allocates.
    c.finish();
    let broker = Mosquitto::start(&binary, work, true)?;
    let default_broker = Mosquitto::start(&binary, work, false)?;
    let (attach, enable) = heap_costs(&broker)?;
    let mut specs = vec![Spec {
        block: None,
        nagle: false,
        image_len,
    }];
    specs.extend(BLOCK_SIZES.map(|block| Spec {
        block: Some(block),
        nagle: false,
        image_len,
    }));
    specs.push(Spec {
        block: Some(BLOCK_SIZES[0]),
        nagle: true,
        image_len: NAGLE_IMAGE.min(image_len),
    });
    c.phase(
        &format!(
            "download over MQTT vs HTTP, {} MiB through Mosquitto (3 runs of {} rows, round-robin)",
            image_len / MIB,
            specs.len()
        ),
        3 * specs.len(),
    );
    let image = ota_cloud::generate_firmware(image_len);
    let server = FirmwareServer::start(image.clone())?;
    let http_message =
        ota_cloud::aliyun::upgrade_message(&firmware(&server.url(), &image, false), 1);
    let mut runs: Vec<(Spec, Vec<Run>)> = specs.iter().map(|&s| (s, Vec::new())).collect();
    // Round-robin like the throughput rows: a busy moment lands on one run of each row.
    for _ in 0..3 {
        for (spec, runs) in &mut runs {
            let through = if spec.nagle { &default_broker } else { &broker };
            runs.push(run_once(through, *spec, &image, &http_message)?);
            c.step();
        }
    }
    Ok(Ok(Mqtt {
        mosquitto: mosquitto_version(&binary),
        image_len,
        runs,
        attach,
        enable,
        crc_mb_s: (
            crc_in_memory(&image, crc16_arc),
            crc_in_memory(&image, ota_cloud::mqtt_download::crc16_arc),
        ),
    }))
}

/// `crc` over `image` in memory: MB/s, best of 3.
fn crc_in_memory(image: &[u8], crc: fn(&[u8]) -> u16) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(crc(std::hint::black_box(image)));
            mb_s(image.len(), t.elapsed().as_secs_f64())
        })
        .fold(0.0, f64::max)
}

/// MB/s with one decimal, three below 1 (the Nagle row).
fn speed(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

fn three(runs: &[Run]) -> Three {
    let mut t = Three::default();
    for (slot, r) in t.0.iter_mut().zip(runs) {
        *slot = r.mb_s;
    }
    t
}

/// "N allocations, B bytes; heap in use +K1 +K2 +K3 (median +K)", the counts of each try
/// when they differ.
fn costs_text(c: &Costs) -> String {
    let counts = if c
        .iter()
        .all(|x| (x.allocations, x.bytes) == (c[0].allocations, c[0].bytes))
    {
        format!("{} allocations, {} bytes", c[0].allocations, c[0].bytes)
    } else {
        c.iter()
            .map(|x| format!("{} allocations, {} bytes", x.allocations, x.bytes))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut kept: Vec<i64> = c.iter().map(|x| x.kept).collect();
    let each = kept
        .iter()
        .map(|k| format!("{k:+}"))
        .collect::<Vec<_>>()
        .join(" ");
    kept.sort_unstable();
    format!("{counts}; heap in use {each} (median {:+})", kept[1])
}

/// Section 7's lines (or the one saying why it did not run).
pub fn section(m: &Result<Mqtt, String>) -> Vec<String> {
    let title = "7. Download over MQTT (issue 16) beside HTTP";
    let m = match m {
        Ok(m) => m,
        Err(why) => return vec![String::new(), title.into(), format!("   {why}")],
    };
    let mut out = vec![
        String::new(),
        format!(
            "{title}: {} MiB image, Aliyun (MD5), {} (set_tcp_nodelay true) on 127.0.0.1",
            m.image_len / MIB,
            m.mosquitto
        ),
        format!(
            "   OtaSession::attach on an MqttClient to Mosquitto; the C bench's loop in Rust: fetch_yield into {BUF_LEN} bytes,"
        ),
        "   report_progress when the percentage grows, yield_for(0), until is_fetch_finished; check_firmware must pass.".into(),
        "   MQTT: MqttDownloadServer (ota-cloud, in this process) answers the block requests through the same Mosquitto.".into(),
        "   MB/s of the loop, 3 runs round-robin; their median and min-max; median / HTTP's median; block requests / retries per run".into(),
        format!(
            "   {:<46} {:>7} {:>7} {:>7} {:>7} {:>13} {:>7}   {}",
            "", "run 1", "run 2", "run 3", "median", "min-max", "vs HTTP", "requests / retries; ms per block"
        ),
    ];
    let http = three(&m.runs[0].1).median();
    for (spec, runs) in &m.runs {
        let t = three(runs);
        let (lo, hi) = (t.0.iter().copied().fold(f64::INFINITY, f64::min), t.best());
        let blocks = if spec.block.is_some() {
            let per_run = runs
                .iter()
                .map(|r| format!("{} / {}", r.requests, r.retries))
                .collect::<Vec<_>>()
                .join(", ");
            let ms =
                spec.image_len as f64 / 1e6 / t.median() * 1e3 / runs[0].requests.max(1) as f64;
            format!("{per_run}; {ms:.2}")
        } else {
            String::new()
        };
        out.push(format!(
            "   {:<46} {:>7} {:>7} {:>7} {:>7} {:>13} {:>7.3}   {blocks}",
            spec.label(),
            speed(t.0[0]),
            speed(t.0[1]),
            speed(t.0[2]),
            speed(t.median()),
            format!("{}-{}", speed(lo), speed(hi)),
            t.median() / http.max(1e-9)
        ));
    }
    out.extend([
        "   (last row: a Mosquitto of its own with its default set_tcp_nodelay false: Nagle's algorithm on the broker's sockets."
            .into(),
        "   Each block waited one delayed ACK, 40 ms, until the device ACKed at once what it reads (TCP_QUICKACK))"
            .into(),
    ]);
    out.push(format!(
        "   CRC-16/ARC in memory, best of 3: the device's (ota::protocol::mqtt_download::crc16_arc, every block's check) {:.1} MB/s, the simulator's {:.1} MB/s",
        m.crc_mb_s.0, m.crc_mb_s.1
    ));
    let refused: Vec<String> = m
        .runs
        .iter()
        .filter_map(|(spec, runs)| {
            let n: u64 = runs.iter().map(|r| r.refused_reports).sum();
            (n > 0).then(|| format!("{} {n}", spec.short()))
        })
        .collect();
    if !refused.is_empty() {
        out.push(format!(
            "   progress reports refused in the 3 runs (request queue full: QoS 1 reports outran their PUBACKs; ignored, as the C loop does): {}",
            refused.join(", ")
        ));
    }
    out.push(
        "   heap per session (counting allocator: allocations and bytes asked during the call; mallinfo2: heap in use after minus before), 3 tries:"
            .into(),
    );
    out.push(format!(
        "   {:<46} {}",
        "OtaSession::attach, MQTT download off",
        costs_text(&m.attach)
    ));
    for (block, costs) in BLOCK_SIZES.iter().zip(&m.enable) {
        out.push(format!(
            "   {:<46} {}",
            format!("then enable_mqtt_download, {} KiB blocks", block / 1024),
            costs_text(costs)
        ));
    }
    out.push(
        "   (the block buffer is made at enable and kept by the session: why MQTT download stays opt-in)"
            .into(),
    );
    out
}
