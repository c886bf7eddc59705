//! The one-command demo: embedded broker + firmware server + cloud + a real device program,
//! all on this machine.
//!
//! The device programs (the Rust example `ota_upgrade` and the C example
//! `examples-c/ota_mqtt_example.c`) live in the workspace root and are built here on demand.
//! Their contract: connect to `IOTX_MQTT_HOST:IOTX_MQTT_PORT`, speak the protocol named in
//! `OTA_PROTOCOL` (aliyun, sagoo, tencent or ucloud), report version 1.0.0, download the
//! offered firmware to argv[1], verify it, complete the upgrade as the protocol says
//! ("reboot", i.e. re-initialise OTA, and report the new version; Tencent `done`; UCloud
//! `success`), then exit 0.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    console, generate_firmware, Cloud, CloudOptions, EmbeddedBroker, Faults, Firmware,
    FirmwareServer, Milestones, NextUpgrade, Protocol, SentMeter, Success, Summary, DEFAULT_GRACE,
};

pub const PRODUCT_KEY: &str = "a1DemoProduct";
pub const DEVICE_NAME: &str = "demo-device";
pub const DEVICE_SECRET: &str = "demo-secret";
pub const OLD_VERSION: &str = "1.0.0";
pub const NEW_VERSION: &str = "2.0.0";
pub const DEFAULT_SIZE: usize = 4 * 1024 * 1024;

/// Which device program plays the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// `examples-c/ota_mqtt_example.c` linked against `libota.a`.
    C,
    /// The Rust example `ota_upgrade`.
    #[default]
    Rust,
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceKind, String> {
        match s {
            "c" | "C" => Ok(DeviceKind::C),
            "rust" => Ok(DeviceKind::Rust),
            _ => Err(format!("unknown device {s:?} (expected c or rust)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub device: DeviceKind,
    /// The platform the cloud plays; passed to the device as `OTA_PROTOCOL`.
    pub protocol: Protocol,
    /// Module, sign method, … of the upgrade (must fit `protocol`, see [`CloudOptions::check`]).
    pub options: CloudOptions,
    /// Firmware image size in bytes.
    pub size: usize,
    /// Time the cloud waits for the upgrade, once the device program is built.
    pub timeout: Duration,
    /// Faults the firmware server injects (none by default). With
    /// [`Faults::expire_after`], every upgrade message after the first carries a fresh URL.
    pub faults: Faults,
    /// What the cloud announces on its own (none by default); with a supersede, the device
    /// must end up with the superseding image.
    pub milestones: Milestones,
    /// [`Cloud::set_ignore_requests`].
    pub ignore_requests: bool,
    /// [`Cloud::set_grace`].
    pub grace: Duration,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            device: DeviceKind::default(),
            protocol: Protocol::default(),
            options: CloudOptions::default(),
            size: DEFAULT_SIZE,
            timeout: Duration::from_secs(120),
            faults: Faults::default(),
            milestones: Milestones::default(),
            ignore_requests: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// What the demo observed.
#[derive(Debug)]
pub struct DemoReport {
    pub summary: Summary,
    pub firmware_size: usize,
    /// Whether the device's output file has exactly the target image's bytes (the
    /// superseding one after a supersede).
    pub identical: bool,
    /// The target upgrade's version.
    pub target_version: String,
    /// Size of the device's output file (0 if missing).
    pub output_size: u64,
    pub device_status: Option<ExitStatus>,
    /// Body bytes the HTTP server sent and the number of requests.
    pub http_bytes: u64,
    pub http_requests: usize,
}

impl DemoReport {
    /// The demo's verdict: a byte-identical file and the upgrade completed (without a
    /// violation).
    pub fn success(&self) -> bool {
        self.identical && self.summary.outcome == Ok(Success::Upgraded)
    }

    /// Download throughput in MB/s (10^6 bytes), over the time from the upgrade notification
    /// to 100 % progress (or the whole run when the device never reported 100 %).
    pub fn mb_per_s(&self) -> f64 {
        let t = self.summary.download_time.unwrap_or(self.summary.elapsed);
        self.http_bytes as f64 / 1e6 / t.as_secs_f64().max(1e-6)
    }
}

/// Runs the demo, narrating on stdout ([`console`]). `Err` means it could not be set up at
/// all.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, String> {
    run_observed(opts, |_| {})
}

/// [`run`], handing `observe` a meter of the firmware server's bytes sent once the device
/// starts (e.g. for a progress bar).
pub fn run_observed(
    opts: &DemoOptions,
    observe: impl FnOnce(SentMeter),
) -> Result<DemoReport, String> {
    let root = workspace_root()?;
    let work = std::env::temp_dir().join(format!("ota-cloud-demo-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let output = work.join("firmware.out");
    let _ = fs::remove_file(&output);

    // Build first, so compile time does not eat into the upgrade's timeout.
    let device = build_device(opts.device, &root, &work)?;

    let broker = EmbeddedBroker::start().map_err(|e| format!("cannot start the broker: {e}"))?;
    console::say(&format!("demo: MQTT broker on 127.0.0.1:{}", broker.port()));
    let (server, firmware) = start_firmware_server(opts)?;
    let (mut cloud, next) = connect_cloud(opts, broker.port(), &server, &firmware)?;
    let device = start_device(device, opts.protocol, broker.port(), &root, &output)?;
    observe(server.sent_meter());
    let summary = cloud.run_until(&firmware, opts.timeout, &device.exited);
    let device_status = device.wait(summary.is_success());

    let report = report(
        opts,
        summary,
        &server,
        next.as_ref(),
        &output,
        device_status,
    );
    if report.success() {
        let _ = fs::remove_dir_all(&work);
    } else {
        console::say(&format!("demo: files kept in {}", work.display()));
    }
    Ok(report)
}

/// The firmware server with the demo's image and faults, and the upgrade it serves.
fn start_firmware_server(opts: &DemoOptions) -> Result<(FirmwareServer, Firmware), String> {
    let image = generate_firmware(opts.size);
    let server = FirmwareServer::start_with(image, opts.faults.clone())
        .map_err(|e| format!("cannot start HTTP server: {e}"))?;
    let firmware = Firmware::new(NEW_VERSION, server.url(), &server.image()[..]);
    console::say(&format!(
        "demo: firmware {} bytes, version {NEW_VERSION}, md5 {}, at {}",
        firmware.size, firmware.md5, firmware.url
    ));
    for fault in server.fault_descriptions() {
        console::say(&format!("demo: fault: {fault}"));
    }
    Ok((server, firmware))
}

/// The cloud, connected to the broker on `port` and set up as `opts` say; the superseding
/// upgrade, if there is one.
fn connect_cloud(
    opts: &DemoOptions,
    port: u16,
    server: &FirmwareServer,
    firmware: &Firmware,
) -> Result<(Cloud, Option<NextUpgrade>), String> {
    let mut cloud = Cloud::connect(opts.protocol, "127.0.0.1", port, PRODUCT_KEY, DEVICE_NAME)
        .map_err(|e| format!("cloud cannot connect: {e}"))?;
    cloud.set_options(opts.options.clone())?;
    cloud
        .set_ignore_requests(opts.ignore_requests)
        .set_grace(opts.grace);
    if opts.faults.expire_after.is_some() {
        let renewer = server.url_renewer();
        cloud.set_url_renewer_for(move |url| renewer.renew_url_of(url));
    }
    let next = opts.milestones.install(&cloud, server, firmware)?;
    if let Some(next) = &next {
        console::say(&format!(
            "demo: a different upgrade to {} (md5 {}, at {}) supersedes it once {} % is sent",
            next.firmware.version,
            next.firmware.md5,
            next.firmware.url,
            opts.milestones.supersede.as_ref().map_or(0, |s| s.percent)
        ));
    }
    if let Some(p) = opts.milestones.renotify_at {
        console::say(&format!(
            "demo: the upgrade is announced again once {p} % is sent"
        ));
    }
    console::say(&format!("demo: the cloud plays {}", opts.protocol));
    Ok((cloud, next))
}

/// The device program, started and watched.
struct RunningDevice {
    child: Arc<Mutex<Child>>,
    /// Set once the program exited, so the cloud stops waiting.
    exited: Arc<AtomicBool>,
    watcher: thread::JoinHandle<Option<ExitStatus>>,
    /// The threads echoing its stdout and stderr.
    pipes: [Option<thread::JoinHandle<()>>; 2],
}

/// Starts `device` against the broker on `port`, told `protocol`, writing to `output`.
fn start_device(
    mut device: Command,
    protocol: Protocol,
    port: u16,
    root: &Path,
    output: &Path,
) -> Result<RunningDevice, String> {
    device
        .env("IOTX_MQTT_HOST", "127.0.0.1")
        .env("IOTX_MQTT_PORT", port.to_string())
        .env("OTA_PRODUCT_KEY", PRODUCT_KEY)
        .env("OTA_DEVICE_NAME", DEVICE_NAME)
        .env("OTA_DEVICE_SECRET", DEVICE_SECRET)
        .env("OTA_FIRMWARE_VERSION", OLD_VERSION)
        .env("OTA_PROTOCOL", protocol.name())
        .arg(output)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    console::say(&format!("demo: starting the device: {device:?}"));
    let mut child = device
        .spawn()
        .map_err(|e| format!("cannot start the device: {e}"))?;
    let pipes = [
        child.stdout.take().map(|o| echo("device", o)),
        child.stderr.take().map(|e| echo("device", e)),
    ];
    let child = Arc::new(Mutex::new(child));
    let exited = Arc::new(AtomicBool::new(false));
    let watcher = watch(Arc::clone(&child), Arc::clone(&exited));
    Ok(RunningDevice {
        child,
        exited,
        watcher,
        pipes,
    })
}

impl RunningDevice {
    /// Waits for the program to exit by itself shortly after the run (30 s after a success,
    /// 5 s otherwise), then kills it; its exit status.
    fn wait(self, upgraded: bool) -> Option<ExitStatus> {
        let give_up = Instant::now() + Duration::from_secs(if upgraded { 30 } else { 5 });
        while !self.exited.load(Ordering::SeqCst) && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(50));
        }
        if !self.exited.load(Ordering::SeqCst) {
            console::say("demo: the device did not exit; killing it");
            let _ = self.child.lock().unwrap().kill();
        }
        let status = self.watcher.join().unwrap_or(None);
        for p in self.pipes.into_iter().flatten() {
            let _ = p.join();
        }
        status
    }
}

/// What the demo observed: the cloud's summary, the device's file against the target image,
/// the server's traffic.
fn report(
    opts: &DemoOptions,
    summary: Summary,
    server: &FirmwareServer,
    next: Option<&NextUpgrade>,
    output: &Path,
    device_status: Option<ExitStatus>,
) -> DemoReport {
    let written = fs::read(output).unwrap_or_default();
    let target_image = match next {
        Some(next) if summary.upgrades.len() > 1 => &next.image[..],
        _ => &server.image()[..],
    };
    let requests = server.requests();
    DemoReport {
        firmware_size: opts.size,
        identical: written.as_slice() == target_image,
        target_version: summary.target().firmware.version.clone(),
        output_size: written.len() as u64,
        device_status,
        http_bytes: requests.iter().map(|r| r.bytes_sent).sum(),
        http_requests: requests.len(),
        summary,
    }
}

/// Prints the end-of-demo summary.
pub fn print_report(r: &DemoReport) {
    let s = &r.summary;
    println!("---- demo summary ----");
    println!("protocol       {}", s.protocol);
    println!(
        "firmware       {} bytes, {OLD_VERSION} -> {}",
        r.firmware_size, r.target_version
    );
    println!(
        "download       {} bytes in {} HTTP request(s), {:.1} MB/s",
        r.http_bytes,
        r.http_requests,
        r.mb_per_s()
    );
    println!(
        "cloud          {} upgrade message(s), {} progress report(s), versions reported {:?}",
        s.upgrade_messages_sent,
        s.progress.len(),
        s.versions
    );
    if s.urls_renewed > 0 {
        println!("fresh URLs     {}", s.urls_renewed);
    }
    println!(
        "output file    {} ({} bytes)",
        if r.identical {
            "identical"
        } else {
            "DIFFERENT"
        },
        r.output_size
    );
    match r.device_status {
        Some(st) => println!("device         exited with {st}"),
        None => println!("device         did not exit by itself"),
    }
    match &s.outcome {
        Ok(o) => println!("cloud outcome  {o:?} in {:.1} s", s.elapsed.as_secs_f64()),
        Err(e) => println!("cloud outcome  FAILED: {e}"),
    }
    println!(
        "result         {}",
        if r.success() { "SUCCESS" } else { "FAILURE" }
    );
}

/// The workspace root, two levels above this crate.
fn workspace_root() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .map_err(|e| format!("workspace root {} not found: {e}", root.display()))
}

/// Cargo's target directory for the workspace, made absolute (a relative `CARGO_TARGET_DIR`
/// is relative to where we were started, not to the root we run cargo in).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().unwrap_or_default().join(dir)
            }
        }
        None => root.join("target"),
    }
}

/// Builds the device program and returns the command that runs it (argv[1] still to add).
fn build_device(kind: DeviceKind, root: &Path, work: &Path) -> Result<Command, String> {
    let target = target_dir(root);
    match kind {
        DeviceKind::Rust => {
            run_step(
                Command::new(cargo())
                    .current_dir(root)
                    .env("CARGO_TARGET_DIR", &target)
                    .args(["build", "--release", "--example", "ota_upgrade"]),
            )?;
            // Already built: `cargo run` only checks freshness and then execs the example.
            let mut cmd = Command::new(cargo());
            cmd.env("CARGO_TARGET_DIR", &target).args([
                "run",
                "--quiet",
                "--release",
                "--example",
                "ota_upgrade",
                "--",
            ]);
            Ok(cmd)
        }
        DeviceKind::C => {
            run_step(
                Command::new(cargo())
                    .current_dir(root)
                    .env("CARGO_TARGET_DIR", &target)
                    .args(["build", "--release", "-p", "ota"]),
            )?;
            let exe = work.join("ota_mqtt_example");
            run_step(
                Command::new("cc")
                    .current_dir(root)
                    .args(["-O2", "-I", "include", "examples-c/ota_mqtt_example.c"])
                    .arg(target.join("release/libota.a"))
                    .args([
                        "-lgcc_s",
                        "-lutil",
                        "-lrt",
                        "-lpthread",
                        "-lm",
                        "-ldl",
                        "-lc",
                        "-o",
                    ])
                    .arg(&exe),
            )?;
            Ok(Command::new(exe))
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run_step(cmd: &mut Command) -> Result<(), String> {
    console::say(&format!("demo: {cmd:?}"));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// Echoes a child's output line by line with a prefix, so device and cloud lines interleave
/// readably.
fn echo(prefix: &'static str, pipe: impl Read + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) => console::say(&format!("{prefix} | {l}")),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            }
        }
    })
}

/// Polls the child until it exits; sets `exited` so the cloud stops waiting.
fn watch(
    child: Arc<Mutex<Child>>,
    exited: Arc<AtomicBool>,
) -> thread::JoinHandle<Option<ExitStatus>> {
    thread::spawn(move || loop {
        match child.lock().unwrap().try_wait() {
            Ok(Some(status)) => {
                exited.store(true, Ordering::SeqCst);
                return Some(status);
            }
            Ok(None) => {}
            Err(_) => {
                exited.store(true, Ordering::SeqCst);
                return None;
            }
        }
        thread::sleep(Duration::from_millis(50));
    })
}
