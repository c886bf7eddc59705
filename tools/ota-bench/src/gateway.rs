//! Section 6 of the table: gateways (issue 15), many OTA handles on one MQTT client.
//!
//! - Peak RSS and heap of the C program (linked as firmware) holding 1, 16 and 256 idle handles.
//! - 16 sub-devices upgraded by one single-threaded gateway loop (as tests/gateway.rs), every
//!   device keeping its image in memory as its local image source: one image shared by all vs
//!   16 distinct images, on 127.0.0.1 at full speed and through a link paced to
//!   [`CELLULAR_RATE`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ota::mqtt::{MqttEvent, QoS};
use ota::ota::{Gateway, LocalImage};
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};
use ota_cloud::{EmbeddedBroker, Firmware, FirmwareServer};

use super::{CDevice, CJob, Campaign, Res, Three, FIRMWARE_LINK, MIB, PK};

/// The idle-handle counts of the RSS rows.
pub const IDLE_HANDLES: [usize; 3] = [1, 16, 256];
/// Sub-devices behind the gateway in the shared / distinct rows.
pub const SUB_DEVICES: usize = 16;
/// Each sub-device's image.
pub const IMAGE_SIZE: usize = MIB;
/// The paced link's rate (bytes per second, server to device): a cellular uplink's order.
pub const CELLULAR_RATE: f64 = 8e6;
/// The gateway loop's FetchYield buffer.
const BUF_LEN: usize = 16 * 1024;
const LIMIT: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Idle handles: the C program with `--handles N --idle`.

/// One idle run: VmHWM (KiB) and the heap after the first and after the last handle (bytes).
#[derive(Clone, Copy)]
struct IdleRun {
    hwm_kib: i64,
    heap_first: i64,
    heap_last: i64,
}

pub struct Idle {
    /// Per count of [`IDLE_HANDLES`], its three runs in the order they ran.
    runs: Vec<Vec<IdleRun>>,
}

/// The C device (linked as firmware) with 1, 16 and 256 idle handles, three rounds.
pub fn measure_idle(dev_fw: &CDevice<'_>, c: &Campaign) -> Res<Idle> {
    c.phase(
        "gateways: idle OTA handles on one MQTT client (3 runs of 1, 16, 256)",
        3 * IDLE_HANDLES.len(),
    );
    let mut runs = vec![Vec::new(); IDLE_HANDLES.len()];
    // Round-robin like the throughput rows: a busy moment lands on one run of each count.
    for _ in 0..3 {
        for (&handles, runs) in IDLE_HANDLES.iter().zip(&mut runs) {
            let mut job = CJob::new(5000, "");
            job.handles = handles;
            job.idle = true;
            let r = dev_fw.run(&job)?;
            let heap: Vec<i64> = r.heap_handles.iter().map_while(|h| *h).collect();
            if heap.len() != handles {
                return Err(format!(
                    "{handles} idle handles: only {} IOT_OTA_Init succeeded",
                    heap.len()
                )
                .into());
            }
            runs.push(IdleRun {
                hwm_kib: r.hwm_kib,
                heap_first: heap[0],
                heap_last: heap[heap.len() - 1],
            });
            c.step();
        }
    }
    Ok(Idle { runs })
}

fn three(v: impl Iterator<Item = f64>) -> Three {
    let mut t = Three::default();
    for (slot, x) in t.0.iter_mut().zip(v) {
        *slot = x;
    }
    t
}

fn idle_lines(idle: &Idle) -> Vec<String> {
    let last = IDLE_HANDLES.len() - 1;
    let (n_first, n_last) = (IDLE_HANDLES[0], IDLE_HANDLES[last]);
    let mut out = vec![
        format!(
            "   peak RSS (VmHWM, KiB) of the C program linked as firmware ({}),",
            FIRMWARE_LINK.join(" ")
        ),
        format!(
            "   run as `ota_bench_fw 5000 0 --handles N --idle`: IOT_OTA_Init of {PK}/bench_device, bench_device_2 .. _N on one pclient,"
        ),
        "   IOT_OTA_ReportVersion on each, IOT_MQTT_Yield until every handle's SUBACK; no download; VmHWM then"
            .into(),
        format!(
            "   {:<34} {:>8} {:>8} {:>8} {:>8}",
            "", "run 1", "run 2", "run 3", "median"
        ),
    ];
    for (n, runs) in IDLE_HANDLES.iter().zip(&idle.runs) {
        out.push(format!(
            "   {:<34} {:>8} {:>8} {:>8} {:>8.0}",
            format!("{n} idle handle{}", if *n == 1 { "" } else { "s" }),
            runs[0].hwm_kib,
            runs[1].hwm_kib,
            runs[2].hwm_kib,
            three(runs.iter().map(|r| r.hwm_kib as f64)).median()
        ));
    }
    let per = |a: f64, b: f64, n: usize| (b - a) / (n - n_first) as f64;
    let rss_slope = three((0..3).map(|i| {
        per(
            idle.runs[0][i].hwm_kib as f64,
            idle.runs[last][i].hwm_kib as f64,
            n_last,
        )
    }));
    let rss_slope_16 = per(
        three(idle.runs[0].iter().map(|r| r.hwm_kib as f64)).median(),
        three(idle.runs[1].iter().map(|r| r.hwm_kib as f64)).median(),
        IDLE_HANDLES[1],
    );
    out.push(format!(
        "   {:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1}   (1 -> 16, medians: {:.1})",
        format!("KiB per handle ({n_first} -> {n_last})"),
        rss_slope.0[0],
        rss_slope.0[1],
        rss_slope.0[2],
        rss_slope.median(),
        rss_slope_16
    ));
    let heap_slope = three(
        idle.runs[last]
            .iter()
            .map(|r| (r.heap_last - r.heap_first) as f64 / (n_last - 1) as f64),
    );
    out.push(format!(
        "   {:<34} {:>8.0} {:>8.0} {:>8.0} {:>8.0}   [issue 15 goal: <= 65536]",
        format!("heap bytes per handle ({n_first} -> {n_last})"),
        heap_slope.0[0],
        heap_slope.0[1],
        heap_slope.0[2],
        heap_slope.median()
    ));
    out.push(format!(
        "   (heap: glibc mallinfo2 in use after the {n_last}th IOT_OTA_Init minus after the first, / {}; each handle joins the client's gateway)",
        n_last - 1
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// A paced link: a TCP relay whose server-to-device direction runs at a fixed rate.

/// What every connection through the relay shares: one link, so one rate in total.
struct Link {
    /// When the link is free to deliver the next piece.
    next: Mutex<Instant>,
    bytes_per_sec: f64,
}

impl Link {
    /// Waits until `n` more bytes have crossed the link (the pieces of all connections queue).
    fn pace(&self, n: usize) {
        let due = {
            let mut next = lock(&self.next);
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next
        };
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

/// A relay on 127.0.0.1 in front of a server's port; the device's URLs name its port.
pub struct Throttle {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Throttle {
    pub fn start(upstream: u16, bytes_per_sec: f64) -> io::Result<Throttle> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Link {
            next: Mutex::new(Instant::now()),
            bytes_per_sec,
        });
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            for down in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = relay(down, up, link.clone());
            }
        });
        Ok(Throttle {
            port,
            stop,
            accept: Some(accept),
        })
    }

    /// `url` of the server at `upstream`, through the relay.
    pub fn url(&self, url: &str, upstream: u16) -> String {
        url.replacen(
            &format!("127.0.0.1:{upstream}/"),
            &format!("127.0.0.1:{}/", self.port),
            1,
        )
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies the requests through as they come and the responses at the link's pace; each
/// direction's end is passed on as a half close.
fn relay(down: TcpStream, up: TcpStream, link: Arc<Link>) -> io::Result<()> {
    let _ = down.set_nodelay(true);
    let (mut down_r, mut up_w) = (down.try_clone()?, up.try_clone()?);
    thread::spawn(move || {
        let _ = io::copy(&mut down_r, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let (mut up_r, mut down_w) = (up, down);
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match up_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            link.pace(n);
            if down_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = down_w.shutdown(Shutdown::Write);
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 16 sub-devices, one gateway loop.

/// What the firmware stored for one device, read back as its local image source.
type Stored = Arc<Mutex<Vec<u8>>>;

struct Kept(Stored);

impl LocalImage for Kept {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let stored = lock(&self.0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(stored.len());
        let n = buf.len().min(stored.len() - start);
        buf[..n].copy_from_slice(&stored[start..start + n]);
        Ok(n)
    }
}

struct Device {
    session: OtaSession,
    stored: Stored,
    started: bool,
    valid: Option<bool>,
    from_local: bool,
}

/// One campaign's outcome.
#[derive(Clone)]
struct CampaignRun {
    /// From the first upgrade message published to the last device's CHECK_FIRMWARE.
    secs: f64,
    /// Per image served: (name, GET requests, full downloads = GETs from byte 0).
    served: Vec<(String, usize, usize)>,
    /// Devices whose image streamed from another device's kept copy.
    from_local: usize,
    /// Most network downloads seen at once.
    most_active: usize,
}

/// The images: `distinct` gives device i its own; otherwise one for all.
struct Images {
    shared: Arc<[u8]>,
    distinct: Vec<Arc<[u8]>>,
}

impl Images {
    fn make() -> Images {
        let distinct: Vec<Arc<[u8]>> = (0..SUB_DEVICES)
            .map(|i| {
                Arc::from(ota_cloud::generate_firmware_seeded(
                    IMAGE_SIZE,
                    ota_cloud::fleet::distinct_seed(i),
                ))
            })
            .collect();
        Images {
            shared: Arc::from(ota_cloud::generate_firmware(IMAGE_SIZE)),
            distinct,
        }
    }
}

static RUN_ID: AtomicUsize = AtomicUsize::new(0);

/// A gateway (one MQTT client, one thread) upgrades [`SUB_DEVICES`] Aliyun sub-devices, each
/// with a local image source kept in memory, default max_downloads (1); the bench publishes
/// each device's upgrade message. `rate`: the download goes through a [`Throttle`].
fn campaign(
    broker: &EmbeddedBroker,
    images: &Images,
    distinct: bool,
    rate: Option<f64>,
) -> Res<CampaignRun> {
    let run = RUN_ID.fetch_add(1, Ordering::Relaxed);
    let server = FirmwareServer::start(Arc::clone(&images.shared))?;
    let throttle = rate
        .map(|r| Throttle::start(server.port(), r))
        .transpose()?;
    let image_of = |i: usize| {
        if distinct {
            (format!("sub-{i:02}.bin"), &images.distinct[i])
        } else {
            ("shared.bin".to_string(), &images.shared)
        }
    };
    let mut firmware = Vec::new();
    for i in 0..SUB_DEVICES {
        let (name, img) = image_of(i);
        let url = if i == 0 || distinct {
            server.add_image(&name, Arc::clone(img))?
        } else {
            server.url_of(&name)
        };
        let url = match &throttle {
            Some(t) => t.url(&url, server.port()),
            None => url,
        };
        firmware.push(Firmware::new("2.0.0", url, img));
    }
    let options = |id: String| MqttOptions::new(broker.host(), broker.port(), &id);
    let mqtt = MqttClient::connect(&options(format!("ota-bench-gw-{run}")))?;
    let cloud = MqttClient::connect(&options(format!("ota-bench-gw-{run}-cloud")))?;
    let acks = Arc::new(AtomicUsize::new(0));
    let counted = acks.clone();
    mqtt.on_event(move |e| {
        if let MqttEvent::SubscribeAck { .. } = e {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut devices = Vec::new();
    for i in 0..SUB_DEVICES {
        let session = OtaSession::attach(
            &mqtt,
            PK,
            &format!("sub-{i:02}"),
            OtaConfig::for_protocol(Protocol::Aliyun),
        )?;
        let stored: Stored = Arc::new(Mutex::new(Vec::with_capacity(IMAGE_SIZE)));
        session.set_local_image_source(Box::new(Kept(stored.clone())))?;
        session.report_version("1.0.0")?;
        devices.push(Device {
            session,
            stored,
            started: false,
            valid: None,
            from_local: false,
        });
    }
    let deadline = Instant::now() + LIMIT;
    while acks.load(Ordering::SeqCst) < SUB_DEVICES {
        if Instant::now() > deadline {
            return Err("the gateway's subscriptions were not all acknowledged".into());
        }
        mqtt.yield_for(Duration::from_millis(5))?;
    }
    let gateway = Gateway::of(&mqtt);

    let t0 = Instant::now();
    for (d, fw) in devices.iter().zip(&firmware) {
        let msg = ota_cloud::aliyun::upgrade_message(fw, 1);
        cloud.publish(
            d.session.downstream_topic(),
            QoS::AtLeastOnce,
            false,
            msg.as_bytes(),
        )?;
    }
    cloud.yield_for(Duration::ZERO)?;
    let mut buf = vec![0u8; BUF_LEN];
    let mut most_active = 0;
    // The gateway firmware's loop: yield MQTT, then one FetchYield for each download under way.
    while devices.iter().any(|d| d.valid.is_none()) {
        if Instant::now() > deadline {
            return Err("the gateway campaign did not finish within 60 s".into());
        }
        let busy = devices.iter().any(|d| d.started && d.valid.is_none());
        mqtt.yield_for(if busy {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        })?;
        cloud.yield_for(Duration::ZERO)?;
        for d in devices.iter_mut().filter(|d| d.valid.is_none()) {
            let s = &d.session;
            if !d.started {
                if !s.is_fetching() {
                    continue;
                }
                d.started = true;
            }
            if !s.is_fetch_finished() {
                // As the iotkit sample: append what arrives; a failed call is held by the SDK
                // (its verdict comes from check_firmware).
                if let Ok(n) = s.fetch_yield(&mut buf, Duration::from_millis(50)) {
                    lock(&d.stored).extend_from_slice(&buf[..n]);
                }
                d.from_local |= s.from_local_image();
            }
            if s.is_fetch_finished() {
                d.valid = Some(s.check_firmware()?);
            }
        }
        most_active = most_active.max(gateway.downloads_active());
    }
    let secs = t0.elapsed().as_secs_f64();
    for (i, d) in devices.iter().enumerate() {
        if d.valid != Some(true) || **lock(&d.stored) != **image_of(i).1 {
            return Err(format!("sub-{i:02}: its image did not verify or differs").into());
        }
    }
    let log = server.requests();
    let names: Vec<String> = if distinct {
        (0..SUB_DEVICES).map(|i| image_of(i).0).collect()
    } else {
        vec![image_of(0).0]
    };
    let served = names
        .into_iter()
        .map(|name| {
            let gets: Vec<_> = log
                .iter()
                .filter(|r| r.method == "GET" && r.path.contains(&name))
                .collect();
            let full = gets
                .iter()
                .filter(|r| r.range.as_deref().is_none_or(|r| r == "bytes=0-"))
                .count();
            (name, gets.len(), full)
        })
        .collect();
    let from_local = devices.iter().filter(|d| d.from_local).count();
    drop(devices);
    mqtt.disconnect(Duration::from_millis(50));
    cloud.disconnect(Duration::from_millis(50));
    Ok(CampaignRun {
        secs,
        served,
        from_local,
        most_active,
    })
}

/// The four cases: (shared?, rate).
const CASES: [(bool, Option<f64>); 4] = [
    (false, None),
    (true, None),
    (false, Some(CELLULAR_RATE)),
    (true, Some(CELLULAR_RATE)),
];

pub struct Shared {
    /// Per case of [`CASES`], its three runs.
    runs: Vec<Vec<CampaignRun>>,
}

pub fn measure_shared(broker: &EmbeddedBroker, c: &Campaign) -> Res<Shared> {
    c.phase(
        &format!(
            "gateways: {SUB_DEVICES} sub-devices, one image vs {SUB_DEVICES} distinct (3 runs of 4 cases)"
        ),
        3 * CASES.len(),
    );
    let images = Images::make();
    let mut runs = vec![Vec::new(); CASES.len()];
    for _ in 0..3 {
        for (&(shared, rate), runs) in CASES.iter().zip(&mut runs) {
            runs.push(campaign(broker, &images, !shared, rate)?);
            c.step();
        }
    }
    Ok(Shared { runs })
}

/// "name GETs/full" for each image, or one entry for all when they agree.
fn served_text(served: &[(String, usize, usize)]) -> String {
    match served {
        [] => "none".into(),
        [(name, gets, full)] => format!("{name}: GETs / full downloads {gets} / {full}"),
        [(first, gets, full), .., (last, _, _)]
            if served.iter().all(|(_, g, f)| (g, f) == (gets, full)) =>
        {
            format!(
                "{} images ({first} .. {last}): GETs / full downloads {gets} / {full} each",
                served.len()
            )
        }
        _ => served
            .iter()
            .map(|(n, g, f)| format!("{n} {g}/{f}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn shared_lines(s: &Shared) -> Vec<String> {
    let mut out = vec![
        format!(
            "   {SUB_DEVICES} Aliyun sub-devices on one MQTT client (OtaSession::attach), {} MiB images, default max_downloads 1,",
            IMAGE_SIZE / MIB
        ),
        "   each with set_local_image_source (its stored copy in memory); one gateway thread: MQTT yield, then one"
            .into(),
        format!(
            "   fetch_yield ({BUF_LEN}-byte buffer) per download under way, round robin; the bench publishes the {SUB_DEVICES} upgrade messages"
        ),
        "   (EmbeddedBroker, FirmwareServer on 127.0.0.1). Seconds from the first publish to the last CHECK_FIRMWARE:"
            .into(),
        format!(
            "   {:<46} {:>8} {:>8} {:>8} {:>8}",
            "", "run 1", "run 2", "run 3", "median"
        ),
    ];
    let medians: Vec<f64> = s
        .runs
        .iter()
        .map(|r| three(r.iter().map(|x| x.secs)).median())
        .collect();
    for (k, (&(shared, rate), runs)) in CASES.iter().zip(&s.runs).enumerate() {
        let link = match rate {
            None => "127.0.0.1".to_string(),
            Some(r) => format!("link paced to {:.0} MB/s", r / 1e6),
        };
        let what = if shared {
            "1 image shared".to_string()
        } else {
            format!("{SUB_DEVICES} distinct images")
        };
        out.push(format!(
            "   {:<46} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            format!("{what}, {link}"),
            runs[0].secs,
            runs[1].secs,
            runs[2].secs,
            medians[k]
        ));
        if shared {
            out.push(format!(
                "   {:<46} distinct / shared = {:.1}x",
                "",
                medians[k - 1] / medians[k].max(1e-9)
            ));
        }
    }
    out.push("   HTTP request log of the FirmwareServer per image (GETs; full downloads = GETs from byte 0), last run of each case:".into());
    for (&(shared, rate), runs) in CASES.iter().zip(&s.runs) {
        let last = &runs[2];
        out.push(format!(
            "   {:<8} {:<9} {}; {} of {SUB_DEVICES} devices streamed a kept copy; most network downloads at once {}",
            if shared { "shared" } else { "distinct" },
            if rate.is_some() { "paced" } else { "127.0.0.1" },
            served_text(&last.served),
            last.from_local,
            last.most_active
        ));
    }
    out.push(format!(
        "   (paced link: a TCP relay in ota-bench between device and server, server-to-device bytes at {:.0} MB/s in 16 KiB pieces, one rate for all connections)",
        CELLULAR_RATE / 1e6
    ));
    out
}

/// Section 6's lines.
pub fn section(idle: &Idle, shared: &Shared) -> Vec<String> {
    let mut out = vec![
        String::new(),
        "6. Gateways (issue 15): OTA handles of sub-devices on one MQTT client".into(),
    ];
    out.extend(idle_lines(idle));
    out.extend(shared_lines(shared));
    out
}
