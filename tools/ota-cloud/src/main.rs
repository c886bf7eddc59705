//! `ota-cloud` command line. Arguments are parsed by hand: three subcommands with a handful of
//! `--flag value` options do not justify a parser dependency.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use ota_cloud::demo::{self, DemoOptions, DeviceKind};
use ota_cloud::{
    generate_firmware, Cloud, CloudOptions, EmbeddedBroker, Firmware, FirmwareServer, Protocol,
    SignMethod,
};

const USAGE: &str = "\
usage:
  ota-cloud serve --broker HOST:PORT --product-key PK --device-name DN --version V
                  (--firmware FILE | --firmware-size BYTES [--write-firmware PATH])
                  [--timeout-s 120] [--protocol aliyun|sagoo|tencent|ucloud]
                  [--module M] [--sign-method md5|sha256] [--current-version X]
      Serve the firmware over HTTP on 127.0.0.1 and play the platform's side of one upgrade
      to version V, checking every message the device sends against the protocol (a wrong
      topic, a missing or unknown key or a wrong JSON type fails the run). Exit 0 when the
      upgrade succeeds (aliyun/sagoo: the device reports V; tencent: state done for V;
      ucloud: success for the task), 1 on failure, violation or timeout.
      --module M            sagoo, ucloud: upgrade module M (default: the default module)
      --sign-method         sagoo: digest announced in signMethod/sign (default md5)
      --current-version X   ucloud: announce CurrentVersion X instead of the version the
                            device reported; a correct device refuses with fail + ErrMsg
  ota-cloud broker [--port P]
      Run the embedded MQTT 3.1.1 broker on 127.0.0.1 in the foreground.
  ota-cloud demo [--device c|rust] [--size BYTES] [--timeout-s 120]
                 [--protocol aliyun|sagoo|tencent|ucloud] [--sign-method md5|sha256]
      One-command demo: embedded broker + firmware server + cloud + a device program from
      this workspace (default rust, 4 MiB), told the protocol in OTA_PROTOCOL. Exit 0 only
      if the device wrote a byte-identical file and completed the upgrade.
  ota-cloud help
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

/// Parses `--name value` pairs, accepting only `allowed` names, each at most once.
fn flags(args: &[String], allowed: &[&str]) -> Result<HashMap<String, String>, Usage> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let name = arg
            .strip_prefix("--")
            .filter(|n| allowed.contains(n))
            .ok_or_else(|| Usage(format!("unexpected argument {arg:?}")))?;
        let value = it
            .next()
            .ok_or_else(|| Usage(format!("--{name} needs a value")))?;
        if out.insert(name.to_string(), value.clone()).is_some() {
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

fn fail(msg: impl std::fmt::Display) -> Result<ExitCode, Usage> {
    eprintln!("ota-cloud: {msg}");
    Ok(ExitCode::FAILURE)
}

fn serve(args: &[String]) -> Result<ExitCode, Usage> {
    let f = flags(
        args,
        &[
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
        ],
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

    let server = match FirmwareServer::start(image) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot start the HTTP server: {e}")),
    };
    let firmware = Firmware::new(version, server.url(), &server.image()[..]);
    println!("firmware url: {}", firmware.url);
    println!("firmware md5: {}", firmware.md5);
    println!("firmware size: {}", firmware.size);
    let mut cloud = match Cloud::connect(protocol, host, port, product_key, device_name) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = cloud.set_options(options) {
        return Err(Usage(e));
    }
    let summary = cloud.run(&firmware, timeout);
    match summary.outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => fail(e),
    }
}

fn broker(args: &[String]) -> Result<ExitCode, Usage> {
    let f = flags(args, &["port"])?;
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
        &["device", "size", "timeout-s", "protocol", "sign-method"],
    )?;
    let defaults = DemoOptions::default();
    let protocol = protocol(&f)?;
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
    };
    match demo::run(&opts) {
        Ok(report) => {
            demo::print_report(&report);
            Ok(if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => fail(e),
    }
}
