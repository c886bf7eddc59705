//! `ota-cloud` command line. Arguments are parsed by hand: three subcommands with a handful of
//! `--flag value` options do not justify a parser dependency.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use ota_cloud::demo::{self, DemoOptions, DeviceKind};
use ota_cloud::milestones::{self, Milestones, Supersede};
use ota_cloud::{
    generate_firmware, Cloud, CloudOptions, EmbeddedBroker, ExpireRule, Faults, Firmware,
    FirmwareServer, Protocol, SignMethod, Summary,
};

const USAGE: &str = "\
usage:
  ota-cloud serve --broker HOST:PORT --product-key PK --device-name DN --version V
                  (--firmware FILE | --firmware-size BYTES [--write-firmware PATH])
                  [--timeout-s 120] [--protocol aliyun|sagoo|tencent|ucloud]
                  [--module M] [--sign-method md5|sha256] [--current-version X]
                  [run flags] [fault flags]
      Serve the firmware over HTTP on 127.0.0.1 and play the platform's side of one upgrade
      to version V, checking every message the device sends against the protocol (a wrong
      topic, a missing or unknown key or a wrong JSON type fails the run) and the life of an
      upgrade: at most one failure report per upgrade; after a failure report nothing more
      about that upgrade (no progress, no success, no version report naming it); aliyun and
      sagoo steps are 1..100 or -1..-4 (never '0'), tencent percents 0..100. A broken rule
      prints a line 'violation: ...' and fails the run. The run ends with exactly one line
      'outcome: success VERSION', 'outcome: failed VERSION reports=N desc=DESC' (the device
      reported the target upgrade failed; the run goes on for the grace period first, to
      catch what must not follow) or 'outcome: timeout' (nothing decisive happened). Exit 0
      when the upgrade succeeds without a violation (aliyun/sagoo: the device reports V;
      tencent: state done for V; ucloud: success for the task), 1 otherwise. A device that
      reports its old version again (e.g. restarted) gets the pending upgrade again.
      --module M            sagoo, ucloud: upgrade module M (default: the default module)
      --sign-method         sagoo: digest announced in signMethod/sign (default md5)
      --current-version X   ucloud: announce CurrentVersion X instead of the version the
                            device reported; a correct device refuses with fail + ErrMsg
  ota-cloud broker [--port P]
      Run the embedded MQTT 3.1.1 broker on 127.0.0.1 in the foreground.
  ota-cloud demo [--device c|rust] [--size BYTES] [--timeout-s 120]
                 [--protocol aliyun|sagoo|tencent|ucloud] [--sign-method md5|sha256]
                 [run flags] [fault flags]
      One-command demo: embedded broker + firmware server + cloud + a device program from
      this workspace (default rust, 4 MiB), told the protocol in OTA_PROTOCOL. Exit 0 only
      if the device wrote a file byte-identical to the target image (the superseding one
      with --supersede-at) and completed the upgrade without a violation.
  ota-cloud help
run flags (serve, demo): what the cloud does on its own or leaves undone; PERCENT counts
the bytes of the (first) image the firmware server has written to sockets, over all
responses (a byte sent twice counts twice); the response that reaches it pauses until the
announcement has gone through the broker, so it lands at the same point every run.
  --supersede-at PERCENT[:VERSION]  once PERCENT % has been sent, publish a different
                                upgrade: VERSION (default V.1), another image of the same
                                size at its own URL path (.../firmware-next.bin) with its
                                own digest; from then on the run's target is the new
                                upgrade (the device must report the old one failed, once,
                                and install the new one). serve: with --write-firmware
                                PATH the new image is written to PATH.next
  --renotify-at PERCENT         once PERCENT % has been sent, publish the same upgrade
                                message again (same URL, version, digest, size, task)
  --ignore-requests             never answer the device's requests for the upgrade (an
                                aliyun request, a version re-reported after the first
                                announcement, a tencent/ucloud failure naming an expired
                                URL): an expired URL is then never refreshed
  --grace-ms MS                 after a failure report for the target upgrade, watch MS
                                more for violations before exiting 1 (default 2000)
fault flags (serve, demo): the firmware server misbehaves so the device's recovery can be
rehearsed; all off by default, any combination; OFFSETs are byte offsets in the image.
  --cut-at OFFSET[,OFFSET...]   close the connection once the bytes up to each OFFSET have
                                been sent; each fires once, on the first response that
                                covers it (a resumed request starting past it is not cut)
  --random-cuts N[:SEED]        N such cuts at distinct pseudo-random offsets drawn from SEED
                                (default 0: the same seed and size give the same offsets)
  --stall-ms MS                 pause MS between the head and the body of every response
  --stall-at OFFSET:MS          pause MS once, mid-body, just before the byte at OFFSET
  --short-body BYTES            announce the full Content-Length but send only BYTES of
                                every body, then close
  --flip-at OFFSET              corrupt the byte at OFFSET (XOR 0xFF) in every response
                                that sends it
  --ignore-range                ignore Range headers: always 200 with the whole file
  --status CODE                 answer every request with status CODE
  --fail-first CODE[,CODE...]   answer the first requests with these statuses, in order,
                                then serve normally (e.g. 503,503)
  --close-before-headers N      accept the first N connections and close them unanswered
  --expire-after N              the URL gets 403 after N successful requests
  --expire-after-s SECONDS      the URL gets 403 once it is SECONDS old
  --redirect LOCATION           answer every request with 302 to LOCATION ({self}: the
                                server's own URL, i.e. a redirect loop; relative values
                                are sent as they are)
  --endless-body                answer with no Content-Length, then the image followed by
                                garbage until the device closes the connection
  --content-length BYTES        announce Content-Length BYTES, send the real bytes
  --slow-head-ms MS             slow-loris: send every response head one byte per MS
  --huge-head BYTES             pad every response head with BYTES of header lines
      With --expire-after or --expire-after-s the URL carries ?token=N, and every upgrade
      message after the first (the device asks again: aliyun request on
      /ota/device/request/PK/DN; or it re-reports its version; a superseding upgrade; not
      the exact repeat of --renotify-at) carries a fresh URL that works again while the old
      one keeps getting 403. The cloud still sends at most 5
      upgrade messages per run in answer to the device (--supersede-at and --renotify-at
      come on top). The faults apply to the superseding image too (its own offsets; each cut
      fires once per server; one URL token for both). The active faults are printed at
      start.
exit status: 0 success, 1 failure, 2 usage error";

/// A usage error: printed with the usage text, exit 2.
struct Usage(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("broker") => broker(&args[1..]),
        Some("demo") => run_demo(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(Usage(format!("unknown command {other:?}"))),
        None => Err(Usage("missing command".into())),
    };
    match result {
        Ok(code) => code,
        Err(Usage(msg)) => {
            eprintln!("ota-cloud: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Fault flags taking a value, shared by `serve` and `demo`.
const FAULT_FLAGS: &[&str] = &[
    "cut-at",
    "random-cuts",
    "stall-ms",
    "stall-at",
    "short-body",
    "flip-at",
    "status",
    "fail-first",
    "close-before-headers",
    "expire-after",
    "expire-after-s",
    "redirect",
    "content-length",
    "slow-head-ms",
    "huge-head",
];

/// Fault flags without a value, and the run switches.
const FAULT_SWITCHES: &[&str] = &["ignore-range", "endless-body", "ignore-requests"];

/// Run flags taking a value, shared by `serve` and `demo`.
const RUN_FLAGS: &[&str] = &["supersede-at", "renotify-at", "grace-ms"];

/// Parses `--name value` pairs, accepting only `allowed` names, and `--name` alone for the
/// `switches` (stored with an empty value), each at most once.
fn flags(
    args: &[String],
    allowed: &[&str],
    switches: &[&str],
) -> Result<HashMap<String, String>, Usage> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let name = arg
            .strip_prefix("--")
            .filter(|n| allowed.contains(n) || switches.contains(n))
            .ok_or_else(|| Usage(format!("unexpected argument {arg:?}")))?;
        let value = if switches.contains(&name) {
            String::new()
        } else {
            it.next()
                .ok_or_else(|| Usage(format!("--{name} needs a value")))?
                .clone()
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(Usage(format!("--{name} given twice")));
        }
    }
    Ok(out)
}

fn required<'a>(f: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Usage> {
    f.get(name)
        .map(String::as_str)
        .ok_or_else(|| Usage(format!("--{name} is required")))
}

fn number<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    name: &str,
    default: T,
) -> Result<T, Usage> {
    match f.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| Usage(format!("--{name}: {v:?} is not a valid number"))),
    }
}

fn protocol(f: &HashMap<String, String>) -> Result<Protocol, Usage> {
    Ok(f.get("protocol")
        .map(|p| p.parse())
        .transpose()
        .map_err(Usage)?
        .unwrap_or_default())
}

fn sign_method(f: &HashMap<String, String>) -> Result<SignMethod, Usage> {
    Ok(f.get("sign-method")
        .map(|p| p.parse())
        .transpose()
        .map_err(Usage)?
        .unwrap_or_default())
}

/// Parses one number of a flag's value.
fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, Usage> {
    v.trim()
        .parse()
        .map_err(|_| Usage(format!("--{name}: {v:?} is not a valid number")))
}

/// Parses `A[,B...]` into numbers.
fn num_list<T: std::str::FromStr>(name: &str, v: &str) -> Result<Vec<T>, Usage> {
    v.split(',').map(|x| parse_num(name, x)).collect()
}

fn http_status(name: &str, v: &str) -> Result<u16, Usage> {
    let code: u16 = parse_num(name, v)?;
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(Usage(format!("--{name}: {code} is not an HTTP status")))
    }
}

/// The firmware server's faults from the fault flags.
fn faults(f: &HashMap<String, String>) -> Result<Faults, Usage> {
    let get = |name: &str| f.get(name).map(String::as_str);
    let mut faults = Faults {
        ignore_range: f.contains_key("ignore-range"),
        stall_ms: number(f, "stall-ms", 0u64)?,
        close_before_headers: number(f, "close-before-headers", 0u32)?,
        redirect: f.get("redirect").cloned(),
        endless_body: f.contains_key("endless-body"),
        huge_head: number(f, "huge-head", 0usize)?,
        ..Faults::default()
    };
    if let Some(v) = get("content-length") {
        faults.content_length = Some(parse_num("content-length", v)?);
    }
    if let Some(v) = get("slow-head-ms") {
        faults.slow_head_ms = Some(parse_num("slow-head-ms", v)?);
    }
    if let Some(v) = get("cut-at") {
        faults.cuts = num_list("cut-at", v)?;
    }
    if let Some(v) = get("random-cuts") {
        let (n, seed) = v.split_once(':').unwrap_or((v, "0"));
        faults.random_cuts = Some((
            parse_num("random-cuts", n)?,
            parse_num("random-cuts", seed)?,
        ));
    }
    if let Some(v) = get("stall-at") {
        let (at, ms) = v
            .split_once(':')
            .ok_or_else(|| Usage(format!("--stall-at {v:?} is not OFFSET:MS")))?;
        faults.stall_once = Some((parse_num("stall-at", at)?, parse_num("stall-at", ms)?));
    }
    if let Some(v) = get("short-body") {
        faults.short_body = Some(parse_num("short-body", v)?);
    }
    if let Some(v) = get("flip-at") {
        faults.flip_byte_at = Some(parse_num("flip-at", v)?);
    }
    if let Some(v) = get("status") {
        faults.status = Some(http_status("status", v)?);
    }
    if let Some(v) = get("fail-first") {
        faults.fail_first = v
            .split(',')
            .map(|c| http_status("fail-first", c))
            .collect::<Result<_, _>>()?;
    }
    faults.expire_after = match (get("expire-after"), get("expire-after-s")) {
        (Some(_), Some(_)) => {
            return Err(Usage(
                "give --expire-after or --expire-after-s, not both".into(),
            ))
        }
        (Some(n), None) => Some(ExpireRule::Requests(parse_num("expire-after", n)?)),
        (None, Some(s)) => {
            let secs: f64 = parse_num("expire-after-s", s)?;
            let d = Duration::try_from_secs_f64(secs)
                .map_err(|_| Usage(format!("--expire-after-s: {s:?} is not a duration")))?;
            Some(ExpireRule::Duration(d))
        }
        (None, None) => None,
    };
    Ok(faults)
}

/// `serve`'s and `demo`'s flags plus the run and fault flags.
fn with_faults<'a>(own: &[&'a str]) -> Vec<&'a str> {
    own.iter()
        .chain(RUN_FLAGS)
        .chain(FAULT_FLAGS)
        .copied()
        .collect()
}

/// The run flags.
struct RunFlags {
    milestones: Milestones,
    ignore_requests: bool,
    grace: Duration,
}

fn run_flags(f: &HashMap<String, String>) -> Result<RunFlags, Usage> {
    let supersede = f
        .get("supersede-at")
        .map(|v| Supersede::parse(v))
        .transpose()
        .map_err(|e| Usage(format!("--supersede-at: {e}")))?;
    let renotify_at = f
        .get("renotify-at")
        .map(|v| milestones::parse_percent(v))
        .transpose()
        .map_err(|e| Usage(format!("--renotify-at: {e}")))?;
    Ok(RunFlags {
        milestones: Milestones {
            supersede,
            renotify_at,
        },
        ignore_requests: f.contains_key("ignore-requests"),
        grace: Duration::from_millis(number(f, "grace-ms", 2000u64)?),
    })
}

/// Prints the run's violation (if any) and its outcome line; the exit status.
fn finish(summary: &Summary) -> Result<ExitCode, Usage> {
    if let Some(v) = summary.violation() {
        println!("violation: {v}");
    }
    println!("{}", summary.outcome_line());
    match &summary.outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => fail(e),
    }
}

fn fail(msg: impl std::fmt::Display) -> Result<ExitCode, Usage> {
    eprintln!("ota-cloud: {msg}");
    Ok(ExitCode::FAILURE)
}

fn serve(args: &[String]) -> Result<ExitCode, Usage> {
    let f = flags(
        args,
        &with_faults(&[
            "broker",
            "product-key",
            "device-name",
            "firmware",
            "firmware-size",
            "write-firmware",
            "version",
            "timeout-s",
            "protocol",
            "module",
            "sign-method",
            "current-version",
        ]),
        FAULT_SWITCHES,
    )?;
    let broker = required(&f, "broker")?;
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| Usage(format!("--broker {broker:?} is not HOST:PORT")))?;
    let product_key = required(&f, "product-key")?;
    let device_name = required(&f, "device-name")?;
    let version = required(&f, "version")?;
    let timeout = Duration::from_secs(number(&f, "timeout-s", 120u64)?);
    let protocol = protocol(&f)?;
    let options = CloudOptions {
        module: f.get("module").cloned(),
        sign_method: sign_method(&f)?,
        current_version: f.get("current-version").cloned(),
        ..CloudOptions::default()
    };
    options
        .check(protocol)
        .map_err(|e| Usage(format!("{e} (--protocol {protocol})")))?;
    let faults = faults(&f)?;
    let run = run_flags(&f)?;
    if let Some(s) = &run.milestones.supersede {
        if s.version.as_deref() == Some(version) {
            return Err(Usage(format!(
                "--supersede-at: the new upgrade needs a version other than {version}"
            )));
        }
    }

    let image = match (f.get("firmware"), f.get("firmware-size")) {
        (Some(_), Some(_)) => {
            return Err(Usage("give --firmware or --firmware-size, not both".into()))
        }
        (None, None) => return Err(Usage("--firmware or --firmware-size is required".into())),
        (Some(_), None) if f.contains_key("write-firmware") => {
            return Err(Usage("--write-firmware goes with --firmware-size".into()))
        }
        (Some(path), None) => match std::fs::read(path) {
            Ok(data) => data,
            Err(e) => return fail(format!("cannot read {path}: {e}")),
        },
        (None, Some(_)) => {
            let image = generate_firmware(number(&f, "firmware-size", 0usize)?);
            if let Some(path) = f.get("write-firmware") {
                if let Err(e) = std::fs::write(path, &image) {
                    return fail(format!("cannot write {path}: {e}"));
                }
            }
            image
        }
    };

    let expires = faults.expire_after.is_some();
    let server = match FirmwareServer::start_with(image, faults) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot start the HTTP server: {e}")),
    };
    let firmware = Firmware::new(version, server.url(), &server.image()[..]);
    println!("firmware url: {}", firmware.url);
    println!("firmware md5: {}", firmware.md5);
    println!("firmware size: {}", firmware.size);
    print_faults(&server);
    let mut cloud = match Cloud::connect(protocol, host, port, product_key, device_name) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = cloud.set_options(options) {
        return Err(Usage(e));
    }
    cloud
        .set_ignore_requests(run.ignore_requests)
        .set_grace(run.grace);
    if expires {
        let renewer = server.url_renewer();
        cloud.set_url_renewer_for(move |url| renewer.renew_url_of(url));
    }
    let next = match run.milestones.install(&cloud, &server, &firmware) {
        Ok(next) => next,
        Err(e) => return fail(e),
    };
    print_milestones(&run.milestones, &firmware, next.as_ref());
    if let (Some(next), Some(path)) = (&next, f.get("write-firmware")) {
        let path = format!("{path}.next");
        if let Err(e) = std::fs::write(&path, &next.image[..]) {
            return fail(format!("cannot write {path}: {e}"));
        }
    }
    let summary = cloud.run(&firmware, timeout);
    finish(&summary)
}

/// Says what the cloud will do on its own, and where the superseding image is.
fn print_milestones(m: &Milestones, first: &Firmware, next: Option<&milestones::NextUpgrade>) {
    let at = |percent: u8| milestones::bytes_at(first.size, percent);
    if let Some(p) = m.renotify_at {
        println!(
            "milestone: at {} bytes sent ({p} %), the upgrade is announced again",
            at(p)
        );
    }
    if let (Some(s), Some(next)) = (&m.supersede, next) {
        println!(
            "milestone: at {} bytes sent ({} %), an upgrade to {} supersedes {}",
            at(s.percent),
            s.percent,
            next.firmware.version,
            first.version
        );
        println!("next firmware url: {}", next.firmware.url);
        println!("next firmware md5: {}", next.firmware.md5);
        println!("next firmware size: {}", next.firmware.size);
    }
}

fn print_faults(server: &FirmwareServer) {
    let faults = server.fault_descriptions();
    if faults.is_empty() {
        println!("faults: none");
    }
    for fault in faults {
        println!("fault: {fault}");
    }
}

fn broker(args: &[String]) -> Result<ExitCode, Usage> {
    let f = flags(args, &["port"], &[])?;
    let started = match number(&f, "port", 0u16)? {
        0 => EmbeddedBroker::start(),
        port => EmbeddedBroker::start_on(port),
    };
    let broker = match started {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot start the broker: {e}")),
    };
    println!("broker listening on 127.0.0.1:{}", broker.port());
    // The broker runs in its own thread until the process is stopped (Ctrl-C).
    loop {
        std::thread::park();
    }
}

fn run_demo(args: &[String]) -> Result<ExitCode, Usage> {
    let f = flags(
        args,
        &with_faults(&["device", "size", "timeout-s", "protocol", "sign-method"]),
        FAULT_SWITCHES,
    )?;
    let defaults = DemoOptions::default();
    let protocol = protocol(&f)?;
    let run = run_flags(&f)?;
    if let Some(s) = &run.milestones.supersede {
        if s.version.as_deref() == Some(demo::NEW_VERSION) {
            return Err(Usage(format!(
                "--supersede-at: the new upgrade needs a version other than {}",
                demo::NEW_VERSION
            )));
        }
    }
    let options = CloudOptions {
        sign_method: sign_method(&f)?,
        ..CloudOptions::default()
    };
    options
        .check(protocol)
        .map_err(|e| Usage(format!("{e} (--protocol {protocol})")))?;
    let opts = DemoOptions {
        protocol,
        options,
        device: f
            .get("device")
            .map(|d| d.parse::<DeviceKind>())
            .transpose()
            .map_err(Usage)?
            .unwrap_or(defaults.device),
        size: number(&f, "size", defaults.size)?,
        timeout: Duration::from_secs(number(&f, "timeout-s", defaults.timeout.as_secs())?),
        faults: faults(&f)?,
        milestones: run.milestones,
        ignore_requests: run.ignore_requests,
        grace: run.grace,
    };
    match demo::run(&opts) {
        Ok(report) => {
            demo::print_report(&report);
            if let Some(v) = report.summary.violation() {
                println!("violation: {v}");
            }
            println!("{}", report.summary.outcome_line());
            Ok(if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => fail(e),
    }
}
