//! `ota-bench`: the benchmark table of the OTA SDK (throughput against the digest limit,
//! allocations, peak memory, sizes, notification latency), every row measured in one run.
//!
//! Usage: `cargo run --release -p ota-bench [-- --quick]` after `cargo build --release` (the C
//! rows link `target/release/libota.a`). See README.md for what each row measures.

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::Digest as _;
use ota::fetch::{HttpSource, MemorySource};
use ota::ota::{OtaConfig, Uplink};
use ota::{MqttClient, MqttOptions, OtaSession, Protocol};
use ota_cloud::counting::{allocated_bytes, allocations, set_counting, Counting};
use ota_cloud::{EmbeddedBroker, Firmware, FirmwareServer, SignMethod};

type Res<T> = Result<T, Box<dyn Error>>;

// ---------------------------------------------------------------------------------------------
// Counting allocator (ota_cloud::counting): every allocation of the process while counting.

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    allocations()
}

// ---------------------------------------------------------------------------------------------

const PK: &str = "a1BenchPk01";
const DN: &str = "bench_device";
const MIB: usize = 1024 * 1024;
const C_LIBS: [&str; 7] = [
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// An uplink that drops what it is given, without allocating.
struct NullUplink(Arc<AtomicUsize>);

impl Uplink for NullUplink {
    fn publish(&mut self, _topic: &str, _payload: &[u8]) -> ota::error::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Settings {
    quick: bool,
    throughput_size: usize,
    rss_sizes: [usize; 2],
    alloc_http_size: usize,
    latency_runs: usize,
    latency_size: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        // Internal: the firmware server for the allocation row, in its own process so its
        // allocations are not counted.
        if let Err(e) = serve(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(MIB)) {
            eprintln!("ota-bench serve: {e}");
            std::process::exit(1);
        }
        return;
    }
    let quick = args.iter().skip(1).any(|a| a == "--quick");
    if let Some(bad) = args.iter().skip(1).find(|a| *a != "--quick") {
        eprintln!("usage: ota-bench [--quick]   (unknown argument {bad:?})");
        std::process::exit(2);
    }
    let settings = if quick {
        Settings {
            quick,
            throughput_size: 16 * MIB,
            rss_sizes: [4 * MIB, 64 * MIB],
            alloc_http_size: 16 * MIB,
            latency_runs: 5,
            latency_size: 64 * 1024,
        }
    } else {
        Settings {
            quick,
            throughput_size: 256 * MIB,
            rss_sizes: [16 * MIB, 1024 * MIB],
            alloc_http_size: 64 * MIB,
            latency_runs: 50,
            latency_size: 64 * 1024,
        }
    };
    let mut settings = settings;
    // OTA_BENCH_MIB=N: the throughput image size in MiB (default 256, 16 with --quick).
    if let Some(mib) = std::env::var("OTA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        settings.throughput_size = mib.max(1) * MIB;
    }
    match run(&args, &settings) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("ota-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn serve(size: usize) -> Res<()> {
    let server = FirmwareServer::start(ota_cloud::generate_firmware(size))?;
    println!("URL {}", server.url());
    std::io::stdout().flush()?;
    // Serve until the parent closes our stdin.
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn md5_hex(data: &[u8]) -> String {
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn firmware(url: &str, image: &[u8], with_sha256: bool) -> Firmware {
    Firmware {
        version: "2.0.0".into(),
        url: url.into(),
        size: image.len() as u64,
        md5: md5_hex(image),
        sha256: if with_sha256 {
            sha256_hex(image)
        } else {
            String::new()
        },
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cc(args: &[&str]) -> Res<()> {
    let out = Command::new("cc").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "cc {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn file_size(p: &Path) -> Res<u64> {
    Ok(std::fs::metadata(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .len())
}

/// How the size rows link the C example (glibc stays dynamic in all).
const EXAMPLE_LINKS: [(&str, &[&str]); 4] = [
    ("ota_mqtt_example + libota.a, -O2, stripped", &[]),
    (
        "  + -ffunction-sections -fdata-sections -Wl,--gc-sections",
        &[
            "-ffunction-sections",
            "-fdata-sections",
            "-Wl,--gc-sections",
        ],
    ),
    (
        "  + gc-sections + -Wl,-z,pack-relative-relocs (PIE, RELR)",
        &[
            "-ffunction-sections",
            "-fdata-sections",
            "-Wl,--gc-sections",
            "-Wl,-z,pack-relative-relocs",
        ],
    ),
    (
        "  + gc-sections + -no-pie",
        &[
            "-ffunction-sections",
            "-fdata-sections",
            "-Wl,--gc-sections",
            "-no-pie",
        ],
    ),
];

/// The size goal of the stripped static example with TLS.
const SIZE_GOAL: u64 = 2 * 1024 * 1024;

/// Links examples-c/ota_mqtt_example.c against `lib` with `flags`; the stripped size.
fn example_size(work: &Path, src: &Path, inc: &str, lib: &Path, flags: &[&str]) -> Res<u64> {
    let bin = work.join("ota_mqtt_example");
    let (src, lib, bin_s) = (
        src.display().to_string(),
        lib.display().to_string(),
        bin.display().to_string(),
    );
    let mut a = vec!["-O2", inc, &src, &lib];
    a.extend(C_LIBS);
    a.extend(flags);
    a.extend(["-o", &bin_s]);
    cc(&a)?;
    stripped_size(&bin)
}

/// Copies `bin` to `bin.stripped`, strips it and returns its size.
fn stripped_size(bin: &Path) -> Res<u64> {
    let out = bin.with_extension("stripped");
    std::fs::copy(bin, &out)?;
    let st = Command::new("strip").arg(&out).status()?;
    if !st.success() {
        return Err("strip failed".into());
    }
    file_size(&out)
}

// ---------------------------------------------------------------------------------------------
// The C device program.

struct CRun {
    bytes: u64,
    loop_ns: u64,
    check_ns: u64,
    latency_ns: u64,
    maxrss_kib: i64,
    hwm_kib: i64,
    /// malloc heap in use after init / at the end of the download, minus before init (bytes).
    heap_init: i64,
    heap_download: i64,
    /// The program's threads after init, and the most seen during the download.
    threads_init: i64,
    threads_max: i64,
}

fn read_until(lines: &mut BufReader<ChildStdout>, prefix: &str) -> Res<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err(format!("the C bench exited before printing {prefix}").into());
        }
        if line.starts_with(prefix) {
            return Ok(line.trim().to_string());
        }
    }
}

/// Waits for `child` with wait4, returning its exit code and peak RSS (KiB).
fn wait_rusage(child: Child) -> Res<(i32, i64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for yet; the pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()).into());
    }
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, ru.ru_maxrss))
}

/// One upgrade of the C device: start it, wait for READY, publish the Aliyun upgrade message
/// (after `delay`), read its RESULT line and reap it.
fn run_c(
    bin: &Path,
    work: &Path,
    broker: &EmbeddedBroker,
    buf_len: usize,
    message: &str,
    delay: Duration,
) -> Res<CRun> {
    run_c_with(bin, work, broker, buf_len, Protocol::Aliyun, message, delay)
}

/// [`run_c`] for any protocol (the device gets its number, the message goes to its topic).
fn run_c_with(
    bin: &Path,
    work: &Path,
    broker: &EmbeddedBroker,
    buf_len: usize,
    protocol: Protocol,
    message: &str,
    delay: Duration,
) -> Res<CRun> {
    let cloud = MqttClient::connect(&MqttOptions::new(
        broker.host(),
        broker.port(),
        "ota-bench-cloud",
    ))?;
    let stderr = std::fs::File::create(work.join("c-stderr.txt"))?;
    let mut child = Command::new(bin)
        .arg(buf_len.to_string())
        .arg(protocol.id().to_string())
        .env("IOTX_MQTT_HOST", broker.host())
        .env("IOTX_MQTT_PORT", broker.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let result = (|| -> Res<(u64, String)> {
        read_until(&mut out, "READY")?;
        std::thread::sleep(delay);
        let topic = ota::protocol::Topics::new(protocol, PK, DN).downstream;
        let published = mono_ns();
        cloud.publish(
            &topic,
            ota::mqtt::QoS::AtLeastOnce,
            false,
            message.as_bytes(),
        )?;
        cloud.yield_for(Duration::ZERO)?;
        let line = read_until(&mut out, "RESULT")?;
        Ok((published, line))
    })();
    drop(out);
    cloud.disconnect(Duration::from_millis(50));
    let (code, maxrss) = wait_rusage(child)?;
    let errors = std::fs::read_to_string(work.join("c-stderr.txt")).unwrap_or_default();
    let (published, line) = result.map_err(|e| format!("{e}\nC bench stderr:\n{errors}"))?;
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let signed = |k: &str| -> i64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    if code != 0 || field("valid") != 1 {
        return Err(format!("C bench failed (exit {code}): {line}\n{errors}").into());
    }
    Ok(CRun {
        bytes: field("bytes"),
        loop_ns: field("loop_ns"),
        check_ns: field("check_ns"),
        latency_ns: field("first_byte_mono_ns").saturating_sub(published),
        maxrss_kib: maxrss,
        hwm_kib: signed("hwm_kib"),
        heap_init: signed("heap_init"),
        heap_download: signed("heap_download"),
        threads_init: signed("threads_init"),
        threads_max: signed("threads_max"),
    })
}

// ---------------------------------------------------------------------------------------------
// Rust API downloads.

/// A whole download through `OtaSession` + `HttpSource` with a `buf_len` buffer. Returns
/// (seconds of the fetch loop, bytes, verified).
fn rust_download(
    protocol: Protocol,
    message: &str,
    buf_len: usize,
    publishes: Arc<AtomicUsize>,
    mut on_call: impl FnMut(u64, u64),
) -> Res<(f64, u64, bool)> {
    let config = OtaConfig::for_protocol(protocol);
    let source = HttpSource::new(config.http.clone())?;
    let session = OtaSession::new(
        PK,
        DN,
        config,
        Box::new(NullUplink(publishes)),
        Box::new(source),
    )?;
    let topic = session.downstream_topic().to_string();
    let mut buf = vec![0u8; buf_len];
    session.report_version("1.0.0")?;
    session.handle_message(&topic, message.as_bytes())?;
    if !session.is_fetching() {
        return Err("the session did not accept the upgrade message".into());
    }
    let size = session.file_size();
    let mut last = 0;
    let t0 = Instant::now();
    while !session.is_fetch_finished() {
        session.fetch_yield(&mut buf, Duration::from_secs(1))?;
        let fetched = session.fetched_size();
        let percent = fetched * 100 / size.max(1);
        if percent > last {
            session.report_progress(percent as i32, None)?;
            last = percent;
        }
        on_call(fetched, size);
    }
    let secs = t0.elapsed().as_secs_f64();
    let valid = session.check_firmware()?;
    Ok((secs, session.fetched_size(), valid))
}

/// Allocations after init over a full upgrade on in-memory transports (as tests/alloc.rs).
/// What creating a session with the real HTTP transport allocates: (allocations, bytes).
fn allocs_init() -> Res<(usize, usize)> {
    let create = || -> Res<OtaSession> {
        let config = OtaConfig::for_protocol(Protocol::Aliyun);
        let source = HttpSource::new(config.http.clone())?;
        let uplink = Box::new(NullUplink(Arc::new(AtomicUsize::new(0))));
        Ok(OtaSession::new(PK, DN, config, uplink, Box::new(source))?)
    };
    let before = (allocs(), allocated_bytes());
    set_counting(true);
    let session = create();
    set_counting(false);
    drop(session?);
    Ok((allocs() - before.0, allocated_bytes() - before.1))
}

fn allocs_in_memory() -> Res<(usize, usize, usize)> {
    let image: &'static [u8] = Box::leak(ota_cloud::generate_firmware(MIB).into_boxed_slice());
    let fw = firmware("http://127.0.0.1/fw.bin", image, false);
    let notice = ota_cloud::aliyun::upgrade_message(&fw, 1);
    let mut source = MemorySource::new(image);
    source.chunk = 4096;
    let session = OtaSession::new(
        PK,
        DN,
        OtaConfig::default(),
        Box::new(NullUplink(Arc::new(AtomicUsize::new(0)))),
        Box::new(source),
    )?;
    let topic = session.downstream_topic().to_string();
    let mut buf = vec![0u8; 5000];
    let mut calls = 0usize;
    let before = (allocs(), allocated_bytes());
    set_counting(true);
    session.report_version("1.0.0")?;
    session.handle_message(&topic, notice.as_bytes())?;
    let mut last = 0;
    while !session.is_fetch_finished() {
        session.fetch_yield(&mut buf, Duration::from_secs(1))?;
        calls += 1;
        let percent = (session.fetched_size() * 100 / session.file_size().max(1)) as i32;
        if percent > last {
            session.report_progress(percent, None)?;
            last = percent;
        }
    }
    let valid = session.check_firmware()?;
    session.report_version("2.0.0")?;
    set_counting(false);
    if !valid {
        return Err("in-memory upgrade did not verify".into());
    }
    Ok((allocs() - before.0, allocated_bytes() - before.1, calls))
}

/// Allocations per FetchYield in the middle 80 % (by bytes) of a real HTTP download; the server
/// runs in a child process so only the device side (the caller's thread: HttpSource has no
/// thread of its own) counts.
fn allocs_http(size: usize) -> Res<(usize, usize, usize)> {
    let mut server = Command::new(std::env::current_exe()?)
        .args(["serve", &size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(server.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("URL ")
        .ok_or("the server process printed no URL")?
        .to_string();
    let image = ota_cloud::generate_firmware(size);
    let message = ota_cloud::aliyun::upgrade_message(&firmware(&url, &image, false), 1);
    drop(image);
    // (allocs at 10 %, allocs at 90 %, calls in between)
    let mut window = [None::<usize>; 2];
    let mut calls = 0usize;
    set_counting(true);
    let r = rust_download(
        Protocol::Aliyun,
        &message,
        5000,
        Arc::new(AtomicUsize::new(0)),
        |fetched, total| {
            if window[0].is_none() && fetched * 10 >= total {
                window[0] = Some(allocs());
            } else if window[0].is_some() && window[1].is_none() {
                calls += 1;
                if fetched * 10 >= total * 9 {
                    window[1] = Some(allocs());
                }
            }
        },
    );
    set_counting(false);
    drop(server.stdin.take());
    let _ = server.wait();
    let (_, _, valid) = r?;
    if !valid {
        return Err("HTTP upgrade did not verify".into());
    }
    match window {
        [Some(a), Some(b)] => Ok((b - a, calls, size)),
        _ => Err("the download never crossed 10 % / 90 %".into()),
    }
}

// ---------------------------------------------------------------------------------------------

fn run(args: &[String], s: &Settings) -> Res<()> {
    let root = root();
    let lib_a = root.join("target/release/libota.a");
    let lib_so = root.join("target/release/libota.so");
    if !lib_a.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release` in {} first",
            lib_a.display(),
            root.display()
        )
        .into());
    }
    ota::log::set_level(ota::log::Level::Error);
    let work = std::env::temp_dir().join(format!("ota-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let t_start = Instant::now();
    eprintln!(
        "ota-bench: building the C programs against {}",
        lib_a.display()
    );
    let inc = format!("-I{}", root.join("include").display());
    let lib_a_s = lib_a.display().to_string();
    let bench_src = root
        .join("tools/ota-bench/c/ota_bench.c")
        .display()
        .to_string();
    let bench_bin = work.join("ota_bench");
    let bench_bin_s = bench_bin.display().to_string();
    let mut a = vec!["-O2", &inc, &bench_src, &lib_a_s];
    a.extend(C_LIBS);
    a.extend(["-o", &bench_bin_s]);
    cc(&a)?;
    let mut out: Vec<String> = Vec::new();
    let cmd = args
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.push(format!("command: {cmd}"));
    out.push(format!(
        "machine: nproc {cores}, CPU {}; MB = 10^6 bytes",
        cpu_model()
    ));

    // 2. Allocations (first: nothing else runs in the process yet).
    eprintln!("ota-bench: allocations");
    let (mem_allocs, mem_bytes, mem_calls) = allocs_in_memory()?;
    let (http_allocs, http_calls, http_size) = allocs_http(s.alloc_http_size)?;
    // Last: what init allocates must not land in the zero-allocation windows above.
    let init_allocs = allocs_init()?;

    // Images: generated once at the largest size; smaller ones are prefixes (the generator is
    // a stream, so a prefix is what generate_firmware(n) returns).
    let biggest = s.throughput_size.max(s.rss_sizes[1]);
    eprintln!("ota-bench: generating a {} MiB image", biggest / MIB);
    let image = ota_cloud::generate_firmware(biggest);
    let broker = EmbeddedBroker::start()?;

    // 1. Throughput.
    eprintln!("ota-bench: throughput");
    let tp = &image[..s.throughput_size];
    // The limit is the digest's best speed: the fastest of three passes (a pass slowed down by
    // another process on the machine would flatter every ratio).
    let best_of_3 = |f: &dyn Fn() -> Vec<u8>| -> (Vec<u8>, f64) {
        let mut best = (Vec::new(), 0.0f64);
        for _ in 0..3 {
            let t = Instant::now();
            let d = f();
            best = (d, best.1.max(mb_s(tp.len(), t.elapsed().as_secs_f64())));
        }
        best
    };
    let (md5_digest, md5_limit) = best_of_3(&|| md5::Md5::digest(tp).to_vec());
    let (sha_digest, sha_limit) = best_of_3(&|| sha2::Sha256::digest(tp).to_vec());
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let server = FirmwareServer::start(tp.to_vec())?;
    let url = server.url();
    let fw = Firmware {
        version: "2.0.0".into(),
        url: url.clone(),
        size: tp.len() as u64,
        md5: hex(&md5_digest),
        sha256: hex(&sha_digest),
    };
    let aliyun_msg = ota_cloud::aliyun::upgrade_message(&fw, 1);
    let sagoo_msg = ota_cloud::sagoo::upgrade_message(&fw, 1, SignMethod::Sha256, None, None);

    let raw = {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let t = Instant::now();
        let resp = agent.get(&url).call()?;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 65536];
        let mut n = 0usize;
        loop {
            let k = reader.read(&mut buf)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n != tp.len() {
            return Err(format!("raw HTTP read {n} of {} bytes", tp.len()).into());
        }
        mb_s(n, t.elapsed().as_secs_f64())
    };
    let c5000 = run_c(
        &bench_bin,
        &work,
        &broker,
        5000,
        &aliyun_msg,
        Duration::ZERO,
    )?;
    let c64k = run_c(
        &bench_bin,
        &work,
        &broker,
        65536,
        &aliyun_msg,
        Duration::ZERO,
    )?;
    let c64k_sha = run_c_with(
        &bench_bin,
        &work,
        &broker,
        65536,
        Protocol::Sagoo,
        &sagoo_msg,
        Duration::ZERO,
    )?;
    let c_speed = |r: &CRun| mb_s(r.bytes as usize, r.loop_ns as f64 / 1e9);
    let (rmd5_s, rmd5_n, ok1) = rust_download(
        Protocol::Aliyun,
        &aliyun_msg,
        65536,
        Arc::new(AtomicUsize::new(0)),
        |_, _| {},
    )?;
    let (rsha_s, rsha_n, ok2) = rust_download(
        Protocol::Sagoo,
        &sagoo_msg,
        65536,
        Arc::new(AtomicUsize::new(0)),
        |_, _| {},
    )?;
    if !(ok1 && ok2) {
        return Err("a Rust API download did not verify".into());
    }
    drop(server);
    out.push(String::new());
    out.push(format!(
        "1. Throughput, {} MiB image from ota_cloud FirmwareServer over HTTP on 127.0.0.1",
        tp.len() / MIB
    ));
    out.push(format!("   {:<66} {:>9} {:>9}", "", "MB/s", "vs limit"));
    let row = |name: &str, v: f64, limit: f64| format!("   {name:<66} {v:>9.1} {:>9.2}", v / limit);
    out.push(row(
        "MD5 in memory, md-5 0.11, 1 core, best of 3 (= MD5 limit)",
        md5_limit,
        md5_limit,
    ));
    out.push(row(
        "raw HTTP read, ureq 3, no hashing, 64 KiB reads",
        raw,
        md5_limit,
    ));
    out.push(row(
        "C FetchYield loop (libota.a, Aliyun, MD5), buffer 5000",
        c_speed(&c5000),
        md5_limit,
    ));
    out.push(row(
        "C FetchYield loop (libota.a, Aliyun, MD5), buffer 65536",
        c_speed(&c64k),
        md5_limit,
    ));
    out.push(row(
        "Rust OtaSession + HttpSource (Aliyun, MD5), buffer 65536",
        mb_s(rmd5_n as usize, rmd5_s),
        md5_limit,
    ));
    out.push(row(
        "SHA-256 in memory, sha2 0.11, 1 core, best of 3 (= SHA-256 limit)",
        sha_limit,
        sha_limit,
    ));
    out.push(row(
        "C FetchYield loop (libota.a, SagooIOT, SHA-256), buffer 65536",
        c_speed(&c64k_sha),
        sha_limit,
    ));
    out.push(row(
        "Rust OtaSession + HttpSource (SagooIOT, SHA-256), buffer 65536",
        mb_s(rsha_n as usize, rsha_s),
        sha_limit,
    ));
    out.push(format!(
        "   (CHECK_FIRMWARE after the C loop: {:.3} ms / {:.3} ms; not in the MB/s)",
        c5000.check_ns as f64 / 1e6,
        c64k.check_ns as f64 / 1e6
    ));

    out.push(String::new());
    out.push("2. Allocations (counting global allocator in ota-bench)".into());
    out.push(format!(
        "   (a) after init, full upgrade on MemorySource + no-alloc Uplink, 1 MiB image, {mem_calls} FetchYields: {mem_allocs} allocations ({mem_bytes} bytes)  [must be 0: {}]",
        if mem_allocs == 0 { "OK" } else { "FAIL" }
    ));
    out.push(format!(
        "   (b) HttpSource vs FirmwareServer (other process), {} MiB, buffer 5000, middle 80% of bytes: {http_allocs} allocations / {http_calls} FetchYields = {:.4} per FetchYield",
        http_size / MIB,
        http_allocs as f64 / http_calls.max(1) as f64
    ));

    // 3. Memory.
    eprintln!("ota-bench: peak RSS");
    let mut rss = Vec::new();
    for size in s.rss_sizes {
        let img = &image[..size];
        let server = FirmwareServer::start(img.to_vec())?;
        let msg = ota_cloud::aliyun::upgrade_message(&firmware(&server.url(), img, false), 1);
        let r = run_c(&bench_bin, &work, &broker, 5000, &msg, Duration::ZERO)?;
        rss.push((
            size,
            r.hwm_kib,
            r.maxrss_kib,
            c_speed(&r),
            r.heap_init,
            r.heap_download,
            (r.threads_init, r.threads_max),
        ));
    }
    out.push(String::new());
    out.push("3. Memory: peak RSS of the C bench program, buffer 5000".into());
    out.push("   VmHWM = /proc/self/status of the C program at its end (since exec);".into());
    out.push(
        "   wait4 ru_maxrss also counts the bench process's pages before exec (vfork), so not the program's own".into(),
    );
    for (size, kib, maxrss, speed, _, _, _) in &rss {
        out.push(format!(
            "   {:>5} MiB image: VmHWM {kib} KiB   (wait4 ru_maxrss {maxrss} KiB; {speed:.1} MB/s)",
            size / MIB
        ));
    }
    out.push(format!(
        "   ratio {} MiB / {} MiB: {:.3}",
        rss[1].0 / MIB,
        rss[0].0 / MIB,
        rss[1].1 as f64 / rss[0].1.max(1) as f64
    ));
    out.push(
        "   heap at init (C, glibc mallinfo2 in use: IOT_SetupConnInfo + IOT_MQTT_Construct + IOT_OTA_Init):"
            .into(),
    );
    for (size, _, _, _, init, download, _) in &rss {
        out.push(format!(
            "   {:>5} MiB image: {init} bytes after init, {download} bytes at the end of the download",
            size / MIB
        ));
    }
    out.push("   threads of the C program (/proc/self/task; 1 = the caller's thread only):".into());
    for (size, _, _, _, _, _, (init, max)) in &rss {
        out.push(format!(
            "   {:>5} MiB image: {init} after init, at most {max} during the download",
            size / MIB
        ));
    }
    out.push(format!(
        "   Rust OtaSession::new with HttpSource (counting allocator): {} allocations, {} bytes",
        init_allocs.0, init_allocs.1
    ));
    drop(image);

    // 4. Size.
    out.push(String::new());
    out.push("4. Size".into());
    let size_row = |name: &str, n: u64| format!("   {name:<66} {n:>10} bytes");
    out.push(size_row("target/release/libota.a", file_size(&lib_a)?));
    match file_size(&lib_so) {
        Ok(n) => out.push(size_row("target/release/libota.so", n)),
        Err(e) => out.push(format!("   target/release/libota.so: {e}")),
    }
    let ex_src = root.join("examples-c/ota_mqtt_example.c");
    let example_rows = |out: &mut Vec<String>, lib: &Path, suffix: &str, goal: bool| {
        for (label, flags) in EXAMPLE_LINKS {
            let name = format!("{label}{suffix}");
            match example_size(&work, &ex_src, &inc, lib, flags) {
                Ok(n) if goal => out.push(format!(
                    "{}   {:.2} of the 2 MiB goal",
                    size_row(&name, n),
                    n as f64 / SIZE_GOAL as f64
                )),
                Ok(n) => out.push(size_row(&name, n)),
                // An old linker without RELR, say: the row says so, the others still count.
                Err(e) => out.push(format!("   {name:<66} failed: {e}")),
            }
        }
    };
    example_rows(&mut out, &lib_a, "", true);
    // Other builds of libota.a: (what, cargo arguments, target directory).
    let variants: [(&str, &[&str], &str); 2] = [
        ("without TLS", &["--no-default-features"], "ota-bench-notls"),
        (
            "with the ChaCha20 suites",
            &["--features", "tls-chacha20"],
            "ota-bench-chacha20",
        ),
    ];
    if s.quick {
        out.push(
            "   (without TLS, with ChaCha20: skipped in --quick; each builds libota.a once more)"
                .into(),
        );
    } else {
        for (what, args, dir) in variants {
            eprintln!("ota-bench: building libota.a {what} ({})", args.join(" "));
            let dir = root.join("target").join(dir);
            let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "-q", "-p", "ota", "--lib"])
                .args(args)
                .env("CARGO_TARGET_DIR", &dir)
                .env("OTA_SKIP_HEADER", "1")
                .current_dir(&root)
                .status()?;
            if !st.success() {
                return Err(format!("cargo build {} failed", args.join(" ")).into());
            }
            let lib = dir.join("release/libota.a");
            out.push(size_row(
                &format!("libota.a {what} ({})", args.join(" ")),
                file_size(&lib)?,
            ));
            example_rows(&mut out, &lib, &format!(", {what}"), false);
        }
    }

    // 5. Latency.
    eprintln!("ota-bench: latency ({} runs)", s.latency_runs);
    let img = ota_cloud::generate_firmware(s.latency_size);
    let server = FirmwareServer::start(img.clone())?;
    let msg = ota_cloud::aliyun::upgrade_message(&firmware(&server.url(), &img, false), 1);
    let mut lat = Vec::new();
    for i in 0..s.latency_runs {
        // Spread the publish over the device's 200 ms yield window.
        let delay = Duration::from_millis((i as u64 * 37) % 200);
        let r = run_c(&bench_bin, &work, &broker, 5000, &msg, delay)?;
        lat.push(r.latency_ns as f64 / 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let median = if lat.len() % 2 == 1 {
        lat[lat.len() / 2]
    } else {
        (lat[lat.len() / 2 - 1] + lat[lat.len() / 2]) / 2.0
    };
    out.push(String::new());
    out.push(format!(
        "5. Latency: upgrade message published -> first firmware byte in the C device (IOT_MQTT_Yield(pclient, 200) loop), {} KiB image, {} runs",
        s.latency_size / 1024,
        lat.len()
    ));
    out.push(format!(
        "   median {median:.1} ms   min {:.1} ms   max {:.1} ms",
        lat[0],
        lat[lat.len() - 1]
    ));
    out.push(String::new());
    out.push(format!(
        "total bench time {:.1} s{}",
        t_start.elapsed().as_secs_f64(),
        if s.quick { " (--quick)" } else { "" }
    ));
    // OTA_BENCH_KEEP=1 keeps the C programs (e.g. for `perf report` on a recorded run).
    if std::env::var_os("OTA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("ota-bench: kept {}", work.display());
    }
    println!("{}", out.join("\n"));
    Ok(())
}
