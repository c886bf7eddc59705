//! `ota-cloud` command line: `serve`, `fleet`, `broker`, `demo`, `sign` (see `ota-cloud help`). The flags are
//! in args.rs; usage errors exit 2 with the flag named, failures of a run exit 1.

mod args;
mod fleet_view;
mod progress;
mod report;

use std::process::ExitCode;
use std::time::Duration;

use args::{BrokerArgs, Cli, Command, DemoArgs, FleetArgs, PlatformArgs, ServeArgs, SignArgs};
use clap::Parser;
use ota_cloud::delta::{DeltaUpgrade, Detools, OldImageClaim, PatchFiles};
use ota_cloud::demo::{self, DemoOptions};
use ota_cloud::fleet::{self, DeviceId, Fleet, FleetDevice, FleetSpec, GatewaySpec, Images};
use ota_cloud::imgtool::{Imgtool, Layout};
use ota_cloud::milestones::{self, Milestones, NextUpgrade};
use ota_cloud::package::{self, Delivery, HttpPackageMeter, Package, PackageMeter};
use ota_cloud::{
    generate_firmware, Cloud, CloudOptions, EmbeddedBroker, Firmware, FirmwareServer,
    MqttDownloadServer, Protocol, Summary,
};
use progress::DownloadBar;
use std::sync::Arc;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(a) => serve(&a),
        Command::Fleet(a) => run_fleet(&a),
        Command::Broker(a) => broker(&a),
        Command::Demo(a) => run_demo(&a),
        Command::Sign(a) => sign(&a),
    };
    result.unwrap_or_else(|msg| {
        eprintln!("ota-cloud: {msg}");
        ExitCode::FAILURE
    })
}

/// `serve`: the firmware server and the cloud for a device of the caller's.
fn serve(args: &ServeArgs) -> Result<ExitCode, String> {
    if !args.files.is_empty() || !args.files_sizes.is_empty() || args.mqtt_download {
        return serve_package(args);
    }
    let mut options = serve_options(args);
    args.run.check_supersede("serve", &args.version);
    let image = firmware_image(args)?;
    let delta = match &args.delta.delta_from {
        Some(old) => Some(delta_upgrade(args, old, image.clone())?),
        None => None,
    };
    options.delta_old = delta_old_claim(args, delta.as_ref().map(|d| &d.new[..]))?;
    let served = delta.as_ref().map_or(image, |d| d.patch.clone());
    let faults = args.faults.faults();
    let expires = faults.expire_after.is_some();
    let server = FirmwareServer::start_with(served, faults)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    let firmware = Firmware::new(&args.version, server.url(), &server.image()[..]);
    print_firmware("", &firmware);
    print_faults(&server);
    let mut cloud = connect_cloud(args, options)?;
    if expires {
        let renewer = server.url_renewer();
        cloud.set_url_renewer_for(move |url| renewer.renew_url_of(url));
    }
    let milestones = args.run.milestones();
    let next = milestones.install(&cloud, &server, &firmware)?;
    print_milestones(&milestones, &firmware, next.as_ref());
    if let (Some(next), Some(path)) = (&next, &args.write_firmware) {
        let path = format!("{}.next", path.display());
        std::fs::write(&path, &next.image[..]).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let bar = DownloadBar::start(server.sent_meter(), args.output.progress());
    let summary = cloud.run(&firmware, Duration::from_secs(args.timeout_s));
    if let Some(bar) = bar {
        bar.finish();
    }
    let json = args.output.json.then(|| {
        let mut json = report::summary(&summary);
        json["delta"] = report::delta(delta.as_ref().map(DeltaUpgrade::sizes).as_ref());
        json
    });
    finish_run(&summary, json);
    summary
        .outcome
        .map(|_| ExitCode::SUCCESS)
        .map_err(|e| e.to_string())
}

/// `serve --delta-from OLD`: the patch from OLD to `new`, made by detools or read from
/// --delta-patch, narrated (one `delta:` line) and written to --write-patch.
fn delta_upgrade(
    args: &ServeArgs,
    old_path: &std::path::Path,
    new: Vec<u8>,
) -> Result<DeltaUpgrade, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let old = read(old_path)?;
    let delta = match &args.delta.delta_patch {
        Some(path) => {
            let delta = DeltaUpgrade::from_patch(old.len() as u64, new, read(path)?)
                .map_err(|e| format!("--delta-patch {}: {e}", path.display()))?;
            if let Some(out) = &args.delta.write_patch {
                std::fs::write(out, &delta.patch)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            }
            delta
        }
        None => {
            let tool = Detools::find()?;
            let compression = args.delta.delta_compression.unwrap_or_default();
            // The caller's own files where there are some, so the command printed can be rerun.
            let files = PatchFiles {
                old: Some(old_path.to_path_buf()),
                new: args.firmware.clone().or(args.write_firmware.clone()),
                patch: args.delta.write_patch.clone(),
            };
            let (delta, line) = DeltaUpgrade::make(&tool, &old, new, compression, &files)?;
            println!("detools {}: {line}", tool.version()?);
            delta
        }
    };
    println!("{}", delta.sizes().summary_line());
    if let Some(warning) = delta.applicability_warning() {
        println!("{warning}");
    }
    Ok(delta)
}

/// `serve --delta-from OLD [--delta-claim-old FILE]`: the old image the upgrade message
/// announces in extData (FILE, else OLD), and the new image the patch makes (`new`), on the
/// platforms whose message carries extData.
fn delta_old_claim(args: &ServeArgs, new: Option<&[u8]>) -> Result<Option<OldImageClaim>, String> {
    let Some(old) = &args.delta.delta_from else {
        return Ok(None);
    };
    let protocol = args.platform.protocol;
    if !matches!(protocol, Protocol::Aliyun | Protocol::Sagoo) {
        if args.delta.delta_claim_old.is_some() {
            args::usage_error(
                "serve",
                format!(
                    "{protocol}'s upgrade message has no extData to announce the old image in: \
                     --delta-claim-old needs --protocol aliyun or sagoo"
                ),
            );
        }
        println!("extData: none in {protocol}'s upgrade message, the old image is not announced");
        return Ok(None);
    }
    let path = args.delta.delta_claim_old.as_ref().unwrap_or(old);
    let image = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut claim = OldImageClaim::of(&image);
    if let Some(new) = new {
        claim = claim.making(new);
    }
    println!("{}", claim.summary_line());
    Ok(Some(claim))
}

/// `serve --files` / `--files-sizes` / `--mqtt-download`: one upgrade of several files, or
/// one streamed over MQTT (aliyun, sagoo).
fn serve_package(args: &ServeArgs) -> Result<ExitCode, String> {
    let protocol = args.platform.protocol;
    if !matches!(protocol, Protocol::Aliyun | Protocol::Sagoo) {
        args::usage_error(
            "serve",
            format!(
                "{protocol} has no packages of several files and no download over MQTT (only \
                 aliyun and sagoo do): --files, --files-sizes and --mqtt-download need \
                 --protocol aliyun or sagoo"
            ),
        );
    }
    let m = args.run.milestones();
    if m.supersede.is_some() || m.renotify_at.is_some() {
        args::usage_error(
            "serve",
            "--supersede-at and --renotify-at are for single-file upgrades, not packages",
        );
    }
    let options = serve_options(args);
    // Checked before anything connects: a fault without an MQTT meaning is a usage error.
    let mqtt_faults = args.mqtt_download.then(|| {
        args.faults
            .mqtt_faults(args.header_past_frame_at, args.wrong_offset_at)
    });
    let single = args.files.is_empty() && args.files_sizes.is_empty();
    let files = if single {
        vec![("firmware.bin".to_string(), firmware_image(args)?.into())]
    } else if !args.files.is_empty() {
        package::read_files(&args.files)?
    } else {
        package::generated_files(&args.files_sizes)
    };
    if let Some(dir) = &args.write_files {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, data) in &files {
            let path = dir.join(name);
            std::fs::write(&path, &data[..])
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    let mut package = if single {
        let (name, data) = files.into_iter().next().expect("one file");
        Package::single_over_mqtt(&args.version, name, data, package::DEFAULT_STREAM_ID)
    } else {
        Package::new(&args.version, files).unwrap_or_else(|e| args::usage_error("serve", e))
    };
    if args.mqtt_download && !single {
        package = package.over_mqtt(package::DEFAULT_STREAM_ID);
    }
    let mut cloud = connect_cloud(args, options)?;
    let (http, mqtt, meter): (
        Option<FirmwareServer>,
        Option<MqttDownloadServer>,
        Arc<dyn PackageMeter>,
    ) = if let Some(faults) = mqtt_faults {
        for line in faults.descriptions() {
            println!("fault: {line}");
        }
        if faults.descriptions().is_empty() {
            println!("faults: none");
        }
        let server = MqttDownloadServer::start(
            &args.broker.host,
            args.broker.port,
            &args.product_key,
            &args.device_name,
            &package,
            args.block_size,
            faults,
        )
        .map_err(|e| format!("cannot start the MQTT download: {e}"))?;
        println!(
            "mqtt download: stream {}, blocks of at most {} bytes, requests on {}",
            package::DEFAULT_STREAM_ID,
            args.block_size,
            server.topics().request
        );
        let meter = server.meter();
        (None, Some(server), meter)
    } else {
        let faults = args.faults.faults();
        let expires = faults.expire_after.is_some();
        let server = FirmwareServer::start_with(Vec::new(), faults)
            .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        package
            .serve_on(&server)
            .map_err(|e| format!("cannot serve the files: {e}"))?;
        print_faults(&server);
        if expires {
            let renewer = server.url_renewer();
            cloud.set_url_renewer_for(move |url| renewer.renew_url_of(url));
        }
        let meter: Arc<dyn PackageMeter> = Arc::new(HttpPackageMeter::new(&server, &package));
        (Some(server), None, meter)
    };
    for f in &package.files {
        let at = match package.delivery {
            Delivery::Http => format!("url {}", f.url),
            Delivery::Mqtt { .. } => format!("streamFileId {}", f.stream_file_id),
        };
        println!(
            "file {}: {} bytes, md5 {}, sha256 {}, {at}",
            f.name,
            f.size(),
            f.md5,
            f.sha256
        );
    }
    println!(
        "package: {} file{}, {} bytes, version {}",
        package.files.len(),
        if package.files.len() == 1 { "" } else { "s" },
        package.size(),
        package.version
    );
    let files: Vec<(String, u64)> = package
        .files
        .iter()
        .map(|f| (f.name.clone(), f.size()))
        .collect();
    if let Err(e) = cloud.set_package(package, meter) {
        args::usage_error("serve", e);
    }
    let summary = cloud.run_package(Duration::from_secs(args.timeout_s));
    if let Some(server) = &mqtt {
        println!("{}", server.summary_line());
    }
    if let Some(server) = &http {
        let log = server.requests();
        for (name, size) in &files {
            let gets: Vec<_> = log
                .iter()
                .filter(|r| {
                    r.method == "GET"
                        && r.path
                            .split('?')
                            .next()
                            .is_some_and(|p| p.ends_with(&format!("/{name}")))
                })
                .collect();
            let bytes: u64 = gets.iter().map(|r| r.bytes_sent).sum();
            println!(
                "http: {name}: {} requests, {bytes} of {size} bytes sent",
                gets.len()
            );
        }
    }
    finish_run(
        &summary,
        args.output.json.then(|| report::summary(&summary)),
    );
    summary
        .outcome
        .map(|_| ExitCode::SUCCESS)
        .map_err(|e| e.to_string())
}

/// `fleet`: one campaign for many devices on one connection.
fn run_fleet(args: &FleetArgs) -> Result<ExitCode, String> {
    let spec = fleet_spec(args)?;
    if let Err(e) = spec.check() {
        args::usage_error("fleet", e);
    }
    let out = fleet_view::Out { json: args.json };
    let fleet =
        Fleet::prepare(&spec, &args.broker.host, args.broker.port).map_err(|e| e.to_string())?;
    for image in &fleet.images {
        let users: Vec<&FleetDevice> = fleet
            .devices
            .iter()
            .filter(|d| fleet.images[d.image].name == image.name)
            .collect();
        out.line(&format!(
            "image {}: {} bytes, md5 {}, sha256 {}, url {}, for {} device{}",
            image.name,
            image.bytes.len(),
            image.md5,
            image.sha256,
            users[0].firmware.url,
            users.len(),
            if users.len() == 1 { "" } else { "s" }
        ));
    }
    if let Some(dir) = &args.write_firmware_dir {
        write_images(dir, &fleet)?;
    }
    let ids: Vec<DeviceId> = fleet.devices.iter().map(|d| d.id.clone()).collect();
    out.line(&format!(
        "fleet: playing {} for {} devices; waiting for the version reports of {} devices",
        fleet.protocol,
        ids.len(),
        ids.len()
    ));
    let view = fleet_view::FleetView::start(ids, out);
    let report = fleet.run(view.observer());
    view.finish();
    for line in report.summary_lines() {
        out.line(&line);
    }
    if args.json {
        println!("{}", report::fleet(&report));
    }
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The campaign `fleet`'s flags describe; a usage error for what clap cannot check.
fn fleet_spec(args: &FleetArgs) -> Result<FleetSpec, String> {
    let devices = match args.sub_devices {
        Some(n) => {
            if let Err(e) = fleet::check_name("--product-key", &args.product_key)
                .and_then(|_| fleet::check_name("--name-prefix", &format!("{}1", args.name_prefix)))
            {
                args::usage_error("fleet", e);
            }
            (1..=n)
                .map(|i| DeviceId {
                    product_key: args.product_key.clone(),
                    device_name: fleet::sub_device_name(&args.name_prefix, i, n),
                })
                .collect()
        }
        None => args.devices.clone(),
    };
    let shared = match (&args.firmware, args.firmware_size) {
        (Some(path), _) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        (None, size) => generate_firmware(size.unwrap_or(0)),
    };
    let size = shared.len();
    let images = if args.distinct {
        Images::Distinct { size }
    } else {
        Images::Shared(shared)
    };
    let options = CloudOptions {
        sign_method: args.sign_method,
        ..CloudOptions::default()
    };
    Ok(FleetSpec {
        protocol: args.platform,
        options,
        devices,
        version: args.version.clone(),
        images,
        gateway: args.gateway.clone().map(|id| GatewaySpec {
            id,
            version: args.gateway_version.clone().unwrap_or(args.version.clone()),
            size: args.gateway_firmware_size.unwrap_or(size),
        }),
        timeout: Duration::from_secs(args.timeout),
    })
}

/// `--write-firmware-dir`: DIR/DN.bin, the image each device is offered.
fn write_images(dir: &std::path::Path, fleet: &Fleet) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for d in &fleet.devices {
        let path = dir.join(format!("{}.bin", d.id.device_name));
        std::fs::write(&path, &fleet.images[d.image].bytes[..])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The upgrade's options from `serve`'s flags.
fn serve_options(args: &ServeArgs) -> CloudOptions {
    let options = CloudOptions {
        module: args.module.clone(),
        sign_method: args.platform.sign_method,
        current_version: args.current_version.clone(),
        ..CloudOptions::default()
    };
    check_options("serve", &args.platform, options)
}

/// `o`, or a usage error when an option does not fit the protocol.
fn check_options(subcommand: &str, platform: &PlatformArgs, o: CloudOptions) -> CloudOptions {
    let protocol = platform.protocol;
    if let Err(e) = o.check(protocol) {
        args::usage_error(subcommand, format!("{e} (--protocol {protocol})"));
    }
    o
}

/// The image `serve` offers: `--firmware` read, or `--firmware-size` generated (and written to
/// `--write-firmware`).
fn firmware_image(args: &ServeArgs) -> Result<Vec<u8>, String> {
    if let Some(path) = &args.firmware {
        return std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    }
    let image = generate_firmware(args.firmware_size.unwrap_or(0));
    if let Some(path) = &args.write_firmware {
        std::fs::write(path, &image)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(image)
}

/// The cloud of `serve`, connected and subscribed to the device's topics.
fn connect_cloud(args: &ServeArgs, options: CloudOptions) -> Result<Cloud, String> {
    let mut cloud = Cloud::connect(
        args.platform.protocol,
        &args.broker.host,
        args.broker.port,
        &args.product_key,
        &args.device_name,
    )
    .map_err(|e| e.to_string())?;
    if let Err(e) = cloud.set_options(options) {
        args::usage_error("serve", e);
    }
    cloud
        .set_ignore_requests(args.run.ignore_requests)
        .set_grace(args.run.grace());
    Ok(cloud)
}

/// The lines a run ends with: the violation (if any), the outcome, the JSON report (if asked).
fn finish_run(summary: &Summary, json: Option<serde_json::Value>) {
    if let Some(v) = summary.violation() {
        println!("violation: {v}");
    }
    println!("{}", summary.outcome_line());
    if let Some(json) = json {
        println!("{json}");
    }
}

fn print_firmware(prefix: &str, firmware: &Firmware) {
    println!("{prefix}firmware url: {}", firmware.url);
    println!("{prefix}firmware md5: {}", firmware.md5);
    println!("{prefix}firmware size: {}", firmware.size);
}

/// Says what the cloud will do on its own, and where the superseding image is.
fn print_milestones(m: &Milestones, first: &Firmware, next: Option<&NextUpgrade>) {
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
        print_firmware("next ", &next.firmware);
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

/// `broker`: runs until the process is stopped.
fn broker(args: &BrokerArgs) -> Result<ExitCode, String> {
    let started = match args.port {
        0 => EmbeddedBroker::start(),
        port => EmbeddedBroker::start_on(port),
    };
    let broker = started.map_err(|e| format!("cannot start the broker: {e}"))?;
    println!("broker listening on 127.0.0.1:{}", broker.port());
    // The broker runs in its own thread until the process is stopped (Ctrl-C).
    loop {
        std::thread::park();
    }
}

/// `demo`: the whole upgrade on this machine.
fn run_demo(args: &DemoArgs) -> Result<ExitCode, String> {
    args.run.check_supersede("demo", demo::NEW_VERSION);
    let options = CloudOptions {
        sign_method: args.platform.sign_method,
        ..CloudOptions::default()
    };
    let opts = DemoOptions {
        protocol: args.platform.protocol,
        options: check_options("demo", &args.platform, options),
        device: args.device,
        size: args.size,
        timeout: Duration::from_secs(args.timeout_s),
        faults: args.faults.faults(),
        milestones: args.run.milestones(),
        ignore_requests: args.run.ignore_requests,
        grace: args.run.grace(),
        signed: args.signing.signed(),
        delta: args.delta.delta(),
    };
    let mut bar = None;
    let report = demo::run_observed(&opts, |meter| {
        bar = DownloadBar::start(meter, args.output.progress());
    });
    if let Some(bar) = bar {
        bar.finish();
    }
    let report = report?;
    demo::print_report(&report);
    finish_run(
        &report.summary,
        args.output.json.then(|| report::demo(&report)),
    );
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sign`: imgtool keygen (when asked), getpub and sign, each command printed as it runs.
fn sign(args: &SignArgs) -> Result<ExitCode, String> {
    let tool = Imgtool::find()?;
    println!("imgtool {}", tool.version()?);
    if let Some(key_type) = args.keygen {
        if args.key.exists() {
            return Err(format!(
                "--keygen: {} exists; it is not overwritten (another key would orphan every \
                 device that trusts this one)",
                args.key.display()
            ));
        }
        println!("{}", tool.keygen(&args.key, key_type)?);
    } else if !args.key.exists() {
        return Err(format!(
            "{} does not exist (--keygen ecdsa-p256 or ed25519 makes a new key)",
            args.key.display()
        ));
    }
    let public = args.public_key_path();
    println!("{}", tool.getpub(&args.key, &public)?);
    println!("{}", tool.sign(&args.options(), &args.input, &args.output)?);
    let image = std::fs::read(&args.output)
        .map_err(|e| format!("cannot read {}: {e}", args.output.display()))?;
    let layout = Layout::of(&image).ok_or_else(|| {
        format!(
            "{} is not an MCUboot image after imgtool sign",
            args.output.display()
        )
    })?;
    println!(
        "signed image: {} ({} bytes: header {}, payload {}, TLVs {}), version {}",
        args.output.display(),
        image.len(),
        layout.header_size,
        layout.payload_size,
        image.len() as u64 - layout.header_size - layout.payload_size,
        layout.version_text()
    );
    println!(
        "public key for the device: {} (IOT_OTAC_ADD_IMAGE_KEY; Rust ImageKey::parse)",
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}
