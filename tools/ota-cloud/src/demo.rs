//! The one-command demo: embedded broker + firmware server + cloud + a real device program,
//! all on this machine.
//!
//! The device programs (the Rust example `ota_upgrade` and the C example
//! `examples-c/ota_mqtt_example.c`) live in the workspace root and are built here on demand.
//! Their contract: connect to `IOTX_MQTT_HOST:IOTX_MQTT_PORT`, speak the protocol named in
//! `OTA_PROTOCOL` (aliyun, sagoo, tencent or ucloud), report version 1.0.0, download the
//! offered firmware to argv[1], verify it, complete the upgrade as the protocol says
//! ("reboot", i.e. re-initialise OTA, and report the new version; Tencent `done`; UCloud
//! `success`), then exit 0. Images: a signature is required unless `OTA_REQUIRE_SIGNATURE=0`,
//! with the public key(s) in `OTA_IMAGE_KEY` (PEM files, `:`-separated); after a verified
//! image the device prints a line containing `image: signed S, key K, version V, payload
//! offset O size N`, and for a refused one a line containing `firmware refused: ` and why,
//! then exits non-zero.
//!
//! With [`SignedDemo`] the image is an MCUboot image signed by the real `imgtool` with a key
//! made for the run ([`crate::imgtool`]), or one of the [`Tamper`]ed images the device must
//! refuse.
//!
//! With [`DeltaDemo`] the upgrade is a delta: the device runs an old image, is told where it
//! is in `OTA_DELTA_OLD` (it reads it as its delta source), and is served the detools
//! sequential patch ([`crate::delta`]) to a new release made from it
//! ([`crate::delta::next_release`]); it must write the new release, not the patch. A device
//! that ignores `OTA_DELTA_OLD` writes the patch itself, which the report names.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::delta::{
    self, DeltaSizes, DeltaUpgrade, Detools, OldImageClaim, PatchCompression, PatchFiles,
};
use crate::imgtool::{Imgtool, KeyType, Layout, SignOptions};
use crate::{
    console, generate_firmware, Cloud, CloudOptions, EmbeddedBroker, Failure, Faults, Firmware,
    FirmwareServer, Milestones, NextUpgrade, Protocol, SentMeter, Success, Summary, DEFAULT_GRACE,
};

pub const PRODUCT_KEY: &str = "a1DemoProduct";
pub const DEVICE_NAME: &str = "demo-device";
pub const DEVICE_SECRET: &str = "demo-secret";
pub const OLD_VERSION: &str = "1.0.0";
pub const NEW_VERSION: &str = "2.0.0";
/// The header version of [`Tamper::Downgrade`]'s image: below [`OLD_VERSION`].
pub const DOWNGRADE_VERSION: &str = "0.9.0";
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

/// A signed demo: the image signed with a key of `key_type` made for the run, the device
/// given its public key and told to require a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignedDemo {
    pub key_type: KeyType,
    /// Serve this bad image instead; the device must refuse it.
    pub tamper: Option<Tamper>,
}

/// What is wrong with the image of a tampered demo. The upgrade message announces the served
/// file's own size and digest, as a compromised cloud account (or a path attacker on plain
/// MQTT) would: only the vendor's signature can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// A payload byte flipped after signing.
    Payload,
    /// A byte of the signature flipped.
    Signature,
    /// Signed with a key the device does not have.
    Key,
    /// An MCUboot image without a signature.
    Unsigned,
    /// Correctly signed, but as [`DOWNGRADE_VERSION`], older than the running version.
    Downgrade,
}

impl Tamper {
    pub const ALL: [Tamper; 5] = [
        Tamper::Payload,
        Tamper::Signature,
        Tamper::Key,
        Tamper::Unsigned,
        Tamper::Downgrade,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tamper::Payload => "payload",
            Tamper::Signature => "signature",
            Tamper::Key => "key",
            Tamper::Unsigned => "unsigned",
            Tamper::Downgrade => "downgrade",
        }
    }

    /// The refusal the SDK gives such an image: words its failure report carries, and its C
    /// error code (include/ota.h).
    pub fn expected_refusal(self) -> Refusal {
        let (words, code_name, code) = match self {
            Tamper::Payload => ("image hash mismatch", "IOT_OTAE_IMAGE_HASH_MISMATCH", -33),
            Tamper::Signature => ("bad signature", "IOT_OTAE_IMAGE_BAD_SIGNATURE", -37),
            Tamper::Key => ("unknown key", "IOT_OTAE_IMAGE_UNKNOWN_KEY", -36),
            Tamper::Unsigned => (
                "signature TLV missing",
                "IOT_OTAE_IMAGE_MISSING_SIGNATURE",
                -34,
            ),
            Tamper::Downgrade => ("downgrade", "IOT_OTAE_IMAGE_DOWNGRADE", -38),
        };
        Refusal {
            words,
            code_name,
            code,
        }
    }
}

/// How the device refuses a [`Tamper`]ed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// In the failure report's description (and the Rust device's refusal line).
    pub words: &'static str,
    /// The `IOT_OTA_Err_t` constant.
    pub code_name: &'static str,
    /// Its value (the C device's refusal line says `error CODE`).
    pub code: i32,
}

impl Refusal {
    /// Whether the device's `firmware refused: ...` line names this cause.
    pub fn named_in(&self, line: &str) -> bool {
        line.contains(self.words) || line.ends_with(&format!("error {}", self.code))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\", {} ({})", self.words, self.code_name, self.code)
    }
}

impl FromStr for Tamper {
    type Err = String;
    fn from_str(s: &str) -> Result<Tamper, String> {
        Tamper::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown tampering {s:?} (payload, signature, key, unsigned, downgrade)")
            })
    }
}

/// A delta demo: the device runs `old` and gets the patch to a new release made from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeltaDemo {
    /// The old image's file; `None`: a generated image of [`DemoOptions::size`] bytes.
    pub old: Option<PathBuf>,
    pub compression: PatchCompression,
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
    /// A signed image (none by default: the device is told `OTA_REQUIRE_SIGNATURE=0`).
    pub signed: Option<SignedDemo>,
    /// A delta upgrade (none by default).
    pub delta: Option<DeltaDemo>,
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
            signed: None,
            delta: None,
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
    /// The signed demo run, if it was one.
    pub signed: Option<SignedDemo>,
    /// What the device said it verified (`image: signed ...`).
    pub device_image: Option<String>,
    /// Why the device refused the image (`firmware refused: ...`).
    pub device_refusal: Option<String>,
    /// The delta upgrade's sizes, if it was one ([`DemoReport::firmware_size`] is then the new
    /// image's).
    pub delta: Option<DeltaSizes>,
    /// A delta demo's device wrote the patch as it came instead of applying it.
    pub device_wrote_patch: bool,
}

impl DemoReport {
    /// The demo's verdict: a byte-identical file and the upgrade completed (without a
    /// violation), with the signature verified when one was required; for a tampered image,
    /// the device refused it for the expected cause, told the cloud once and exited non-zero.
    pub fn success(&self) -> bool {
        match self.signed {
            Some(SignedDemo {
                tamper: Some(tamper),
                ..
            }) => {
                let expected = tamper.expected_refusal();
                let cloud_told = matches!(
                    &self.summary.outcome,
                    Err(Failure::DeviceFailed { desc: Some(d), .. }) if d.contains(expected.words)
                );
                cloud_told
                    && self
                        .device_refusal
                        .as_deref()
                        .is_some_and(|l| expected.named_in(l))
                    && self.device_status.is_some_and(|s| !s.success())
            }
            signed => {
                let verified = signed.is_none()
                    || self
                        .device_image
                        .as_deref()
                        .is_some_and(|l| l.contains("image: signed 1"));
                self.identical && verified && self.summary.outcome == Ok(Success::Upgraded)
            }
        }
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
    if opts.signed.is_some() && opts.delta.is_some() {
        return Err("a demo is signed or a delta upgrade, not both".into());
    }
    // Before anything is built: without imgtool a signed demo cannot run, nor a delta demo
    // without detools or its old image.
    let imgtool = opts.signed.map(|_| Imgtool::find()).transpose()?;
    let delta_old = opts
        .delta
        .as_ref()
        .map(|d| old_image(d, opts.size))
        .transpose()?;
    let detools = delta_old.as_ref().map(|_| Detools::find()).transpose()?;
    let root = workspace_root()?;
    let work = std::env::temp_dir().join(format!("ota-cloud-demo-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let output = work.join("firmware.out");
    let _ = fs::remove_file(&output);

    // Build first, so compile time does not eat into the upgrade's timeout.
    let device = build_device(opts.device, &root, &work)?;
    let mut delta = None;
    let image = match (&imgtool, opts.signed, &detools, delta_old) {
        (Some(tool), Some(signed), _, _) => sign_image(tool, signed, opts.size, &work)?,
        (_, _, Some(tool), Some(old)) => {
            let (image, upgrade) = delta_image(tool, old, opts, &work)?;
            delta = Some(upgrade);
            image
        }
        _ => DemoImage {
            bytes: generate_firmware(opts.size),
            device_key: None,
            delta_old: None,
            delta_claim: None,
        },
    };

    let broker = EmbeddedBroker::start().map_err(|e| format!("cannot start the broker: {e}"))?;
    console::say(&format!("demo: MQTT broker on 127.0.0.1:{}", broker.port()));
    let (server, firmware) = start_firmware_server(opts, image.bytes)?;
    let mut options = opts.options.clone();
    options.delta_old = image.delta_claim.clone();
    let (mut cloud, next) = connect_cloud(opts, options, broker.port(), &server, &firmware)?;
    let said = Arc::new(Mutex::new(DeviceSaid::default()));
    let device = start_device(
        device,
        opts,
        broker.port(),
        (image.device_key.as_deref(), image.delta_old.as_deref()),
        (&root, &output),
        Arc::clone(&said),
    )?;
    observe(server.sent_meter());
    let summary = cloud.run_until(&firmware, opts.timeout, &device.exited);
    let device_status = device.wait(summary.is_success());

    let mut report = report(
        opts,
        summary,
        &server,
        (next.as_ref(), delta.as_ref()),
        &output,
        device_status,
    );
    let said = std::mem::take(&mut *said.lock().unwrap());
    report.device_image = said.image;
    report.device_refusal = said.refusal;
    if report.success() {
        let _ = fs::remove_dir_all(&work);
    } else {
        console::say(&format!("demo: files kept in {}", work.display()));
    }
    Ok(report)
}

/// The image the demo serves, the public key the device is given and, for a delta, where the
/// device finds its old image.
struct DemoImage {
    bytes: Vec<u8>,
    device_key: Option<PathBuf>,
    delta_old: Option<PathBuf>,
    /// What the upgrade message's extData says of a delta's old and new images (aliyun, sagoo).
    delta_claim: Option<OldImageClaim>,
}

/// The old image of a delta demo: its file, or a generated image of `size` bytes.
fn old_image(delta: &DeltaDemo, size: usize) -> Result<Vec<u8>, String> {
    match &delta.old {
        Some(path) => fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
        None => Ok(generate_firmware(size)),
    }
}

/// The patch from `old` to the next release made from it, by detools; `old` written where the
/// device reads it. The detools command and the sizes are narrated.
fn delta_image(
    tool: &Detools,
    old: Vec<u8>,
    opts: &DemoOptions,
    work: &Path,
) -> Result<(DemoImage, DeltaUpgrade), String> {
    let say = |line: String| console::say(&format!("demo: {line}"));
    let compression = opts
        .delta
        .as_ref()
        .map(|d| d.compression)
        .unwrap_or_default();
    say(format!("making the patch with detools {}", tool.version()?));
    let new = delta::next_release(&old);
    // In the work directory, kept when the demo fails.
    let (old_path, new_path) = (work.join("old.bin"), work.join("new.bin"));
    for (path, bytes) in [(&old_path, &old), (&new_path, &new)] {
        fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let files = PatchFiles {
        old: Some(old_path.clone()),
        new: Some(new_path),
        patch: Some(work.join("patch.bin")),
    };
    let (upgrade, line) = DeltaUpgrade::make(tool, &old, new, compression, &files)?;
    say(line);
    let sizes = upgrade.sizes();
    say(sizes.summary_line());
    say(sizes.saved_line());
    say(format!(
        "the device runs the old image and reads it from {} (OTA_DELTA_OLD)",
        old_path.display()
    ));
    // Where the message has extData, it names the old image and the new one: the device
    // checks both.
    let delta_claim = matches!(opts.protocol, Protocol::Aliyun | Protocol::Sagoo)
        .then(|| OldImageClaim::of(&old).making(&upgrade.new));
    if let Some(claim) = &delta_claim {
        say(claim.summary_line());
    }
    let image = DemoImage {
        bytes: upgrade.patch.clone(),
        device_key: None,
        delta_old: Some(old_path),
        delta_claim,
    };
    Ok((image, upgrade))
}

/// The demo's image signed by imgtool with a key made for the run (tampered as `signed`
/// says), and the public key the device trusts; each imgtool command is narrated.
fn sign_image(
    tool: &Imgtool,
    signed: SignedDemo,
    size: usize,
    work: &Path,
) -> Result<DemoImage, String> {
    let say = |line: String| console::say(&format!("demo: {line}"));
    say(format!("signing with imgtool {}", tool.version()?));
    let vendor = work.join("vendor-key.pem");
    let vendor_pub = work.join("vendor-key.pub.pem");
    let _ = fs::remove_file(&vendor);
    say(tool.keygen(&vendor, signed.key_type)?);
    say(tool.getpub(&vendor, &vendor_pub)?);
    let payload = work.join("payload.bin");
    fs::write(&payload, generate_firmware(size))
        .map_err(|e| format!("cannot write {}: {e}", payload.display()))?;
    let mut options = SignOptions::new(Some(vendor.clone()), NEW_VERSION);
    match signed.tamper {
        Some(Tamper::Key) => {
            let other = work.join("other-key.pem");
            let _ = fs::remove_file(&other);
            say(tool.keygen(&other, signed.key_type)?);
            options.key = Some(other);
        }
        Some(Tamper::Unsigned) => options.key = None,
        Some(Tamper::Downgrade) => options.version = DOWNGRADE_VERSION.into(),
        _ => {}
    }
    let signed_path = work.join("firmware-signed.bin");
    say(tool.sign(&options, &payload, &signed_path)?);
    let mut bytes = fs::read(&signed_path)
        .map_err(|e| format!("cannot read {}: {e}", signed_path.display()))?;
    let layout = Layout::of(&bytes).ok_or("imgtool sign wrote no MCUboot image")?;
    say(format!(
        "signed image: header {} bytes, payload {} bytes, TLVs {} bytes, version {}, {} key",
        layout.header_size,
        layout.payload_size,
        bytes.len() as u64 - layout.header_size - layout.payload_size,
        layout.version_text(),
        signed.key_type
    ));
    if let Some(tamper) = signed.tamper {
        say(tamper_image(tamper, signed.key_type, &mut bytes, &layout)?);
        say(format!(
            "the device must refuse it: {}",
            tamper.expected_refusal()
        ));
    }
    Ok(DemoImage {
        bytes,
        device_key: Some(vendor_pub),
        delta_old: None,
        delta_claim: None,
    })
}

/// Damages a signed image as `tamper` says (the variants made by imgtool itself need
/// nothing more); what was done.
fn tamper_image(
    tamper: Tamper,
    key_type: KeyType,
    image: &mut [u8],
    layout: &Layout,
) -> Result<String, String> {
    Ok(match tamper {
        Tamper::Payload => {
            let at = (layout.header_size + layout.payload_size / 2) as usize;
            image[at] ^= 0xff;
            format!("tampered: payload byte at offset {at} flipped after signing")
        }
        Tamper::Signature => {
            let sig = layout
                .unprotected_tlv(image, key_type.signature_tlv())
                .ok_or("no signature TLV in the signed image")?;
            let at = sig.end - 1;
            image[at] ^= 0x01;
            format!("tampered: the signature's last byte (offset {at}) flipped")
        }
        Tamper::Key => "tampered: signed with another key than the one the device trusts".into(),
        Tamper::Unsigned => "tampered: an MCUboot image without a signature".into(),
        Tamper::Downgrade => format!(
            "tampered: a genuine signed image of version {DOWNGRADE_VERSION}, older than the \
             device's {OLD_VERSION} (a replayed old release)"
        ),
    })
}

/// The firmware server with the demo's image and faults, and the upgrade it serves.
fn start_firmware_server(
    opts: &DemoOptions,
    image: Vec<u8>,
) -> Result<(FirmwareServer, Firmware), String> {
    let server = FirmwareServer::start_with(image, opts.faults.clone())
        .map_err(|e| format!("cannot start HTTP server: {e}"))?;
    let firmware = Firmware::new(NEW_VERSION, server.url(), &server.image()[..]);
    let served = if opts.delta.is_some() {
        "patch"
    } else {
        "firmware"
    };
    console::say(&format!(
        "demo: {served} {} bytes, version {NEW_VERSION}, md5 {}, at {}",
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
    options: CloudOptions,
    port: u16,
    server: &FirmwareServer,
    firmware: &Firmware,
) -> Result<(Cloud, Option<NextUpgrade>), String> {
    let mut cloud = Cloud::connect(opts.protocol, "127.0.0.1", port, PRODUCT_KEY, DEVICE_NAME)
        .map_err(|e| format!("cloud cannot connect: {e}"))?;
    cloud.set_options(options)?;
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

/// What the device printed about the image (see the module's contract).
#[derive(Debug, Default)]
struct DeviceSaid {
    image: Option<String>,
    refusal: Option<String>,
}

impl DeviceSaid {
    /// Keeps the first line of each kind, from its marker on.
    fn hear(&mut self, line: &str) {
        for (marker, slot) in [
            ("image: signed", &mut self.image),
            ("firmware refused: ", &mut self.refusal),
        ] {
            if let Some(at) = line.find(marker) {
                slot.get_or_insert_with(|| line[at..].to_string());
            }
        }
    }
}

/// Starts `device` against the broker on `port` as `opts` say (protocol, image policy),
/// trusting `image_key`, with its old image at `delta_old` for a delta, in `root`, writing to
/// `output`; what it says about the image goes to `said`.
fn start_device(
    mut device: Command,
    opts: &DemoOptions,
    port: u16,
    (image_key, delta_old): (Option<&Path>, Option<&Path>),
    (root, output): (&Path, &Path),
    said: Arc<Mutex<DeviceSaid>>,
) -> Result<RunningDevice, String> {
    match delta_old {
        Some(old) => device.env("OTA_DELTA_OLD", old),
        None => device.env_remove("OTA_DELTA_OLD"),
    };
    match image_key {
        Some(key) => {
            device
                .env("OTA_IMAGE_KEY", key)
                .env("OTA_REQUIRE_SIGNATURE", "1");
        }
        // The plain demo's image is not signed: the device is told to accept that.
        None => {
            device
                .env_remove("OTA_IMAGE_KEY")
                .env("OTA_REQUIRE_SIGNATURE", "0");
        }
    }
    device
        .env("IOTX_MQTT_HOST", "127.0.0.1")
        .env("IOTX_MQTT_PORT", port.to_string())
        .env("OTA_PRODUCT_KEY", PRODUCT_KEY)
        .env("OTA_DEVICE_NAME", DEVICE_NAME)
        .env("OTA_DEVICE_SECRET", DEVICE_SECRET)
        .env("OTA_FIRMWARE_VERSION", OLD_VERSION)
        .env("OTA_PROTOCOL", opts.protocol.name())
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
        child
            .stdout
            .take()
            .map(|o| echo("device", o, Arc::clone(&said))),
        child.stderr.take().map(|e| echo("device", e, said)),
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
    (next, delta): (Option<&NextUpgrade>, Option<&DeltaUpgrade>),
    output: &Path,
    device_status: Option<ExitStatus>,
) -> DemoReport {
    let written = fs::read(output).unwrap_or_default();
    let target_image = match (next, delta) {
        (Some(next), _) if summary.upgrades.len() > 1 => &next.image[..],
        (_, Some(delta)) => &delta.new[..],
        _ => &server.image()[..],
    };
    let requests = server.requests();
    DemoReport {
        firmware_size: target_image.len(),
        identical: written.as_slice() == target_image,
        target_version: summary.target().firmware.version.clone(),
        output_size: written.len() as u64,
        device_status,
        http_bytes: requests.iter().map(|r| r.bytes_sent).sum(),
        http_requests: requests.len(),
        summary,
        signed: opts.signed,
        device_image: None,
        device_refusal: None,
        delta: delta.map(DeltaUpgrade::sizes),
        device_wrote_patch: delta.is_some_and(|d| written == d.patch && d.patch != d.new),
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
    if let Some(d) = &r.delta {
        println!(
            "delta          old {} bytes, compression {}; {}",
            d.old,
            d.compression,
            d.saved_line()
        );
    }
    // A failed run's time (its grace period included) is no download time.
    let speed = match s.outcome {
        Ok(_) => format!(", {:.1} MB/s", r.mb_per_s()),
        Err(_) => String::new(),
    };
    println!(
        "download       {} bytes in {} HTTP request(s){speed}",
        r.http_bytes, r.http_requests,
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
    if r.device_wrote_patch {
        println!(
            "               the device wrote the patch as it came: it did not apply it (does it \
             read OTA_DELTA_OLD as its delta source?)"
        );
    }
    if let Some(signed) = r.signed {
        println!(
            "signing        imgtool, {} key made for this run; the device requires a signature",
            signed.key_type
        );
        if let Some(tamper) = signed.tamper {
            println!(
                "tampered       {} (expected refusal: {})",
                tamper.name(),
                tamper.expected_refusal()
            );
        }
        match (&r.device_image, signed.tamper) {
            (Some(image), _) => println!("device check   {image}"),
            (None, None) => println!("device check   (the device printed no image line)"),
            (None, Some(_)) => {}
        }
        if let Some(refusal) = &r.device_refusal {
            println!("device refusal {refusal}");
        }
    }
    match r.device_status {
        Some(st) => println!("device         exited with {st}"),
        None => println!("device         did not exit by itself"),
    }
    match &s.outcome {
        Ok(o) => println!("cloud outcome  {o:?} in {:.1} s", s.elapsed.as_secs_f64()),
        Err(e) => println!("cloud outcome  FAILED: {e}"),
    }
    let tampered = r.signed.is_some_and(|s| s.tamper.is_some());
    println!(
        "result         {}",
        match (r.success(), tampered) {
            (true, false) => "SUCCESS",
            (true, true) => "SUCCESS: the device refused the tampered image",
            (false, false) => "FAILURE",
            (false, true) => "FAILURE: the tampered image was not refused as expected",
        }
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
/// readably; `said` hears each line.
fn echo(
    prefix: &'static str,
    pipe: impl Read + Send + 'static,
    said: Arc<Mutex<DeviceSaid>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) => {
                    said.lock().unwrap().hear(&l);
                    console::say(&format!("{prefix} | {l}"));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_lines_about_the_image_are_kept_from_their_marker() {
        let mut said = DeviceSaid::default();
        said.hear("device: running 1.0.0 (aliyun), waiting for an upgrade");
        said.hear("print_image_info|427 :: image: signed 1, key 0, version 2.0.0, payload offset 512 size 9");
        said.hear("device: image: signed 0, key -1, version none, payload offset 0 size 9");
        said.hear("verify_firmware|449 :: firmware refused: error -37");
        assert_eq!(
            said.image.as_deref(),
            Some("image: signed 1, key 0, version 2.0.0, payload offset 512 size 9"),
            "the first one"
        );
        assert_eq!(said.refusal.as_deref(), Some("firmware refused: error -37"));
    }

    #[test]
    fn a_refusal_is_named_by_its_words_or_its_c_code() {
        let bad_signature = Tamper::Signature.expected_refusal();
        assert!(bad_signature.named_in("firmware refused: bad signature"));
        assert!(bad_signature.named_in("firmware refused: error -37"));
        // Another cause, or a code that only starts like it.
        assert!(!bad_signature.named_in("firmware refused: signed with an unknown key"));
        assert!(!bad_signature.named_in("firmware refused: error -3"));
        assert!(!Tamper::Key
            .expected_refusal()
            .named_in("firmware refused: error -37"));
        let codes: std::collections::HashSet<i32> = Tamper::ALL
            .iter()
            .map(|t| t.expected_refusal().code)
            .collect();
        assert_eq!(codes.len(), Tamper::ALL.len());
        for t in Tamper::ALL {
            assert_eq!(t.name().parse::<Tamper>(), Ok(t));
        }
    }

    /// detools is importable; panics under OTA_REQUIRE_DETOOLS=required when not.
    fn detools(test: &str) -> Option<Detools> {
        match Detools::find() {
            Ok(tool) => Some(tool),
            Err(e) if std::env::var("OTA_REQUIRE_DETOOLS").as_deref() == Ok("required") => {
                panic!("{test}: OTA_REQUIRE_DETOOLS=required: {e}")
            }
            Err(e) => {
                println!("SKIPPED {test}: {e} (OTA_REQUIRE_DETOOLS=required makes this fail)");
                None
            }
        }
    }

    #[test]
    fn a_delta_demo_serves_the_patch_and_leaves_the_old_image_for_the_device() {
        let test = "a_delta_demo_serves_the_patch_and_leaves_the_old_image_for_the_device";
        let Some(tool) = detools(test) else {
            return;
        };
        let work =
            std::env::temp_dir().join(format!("ota-cloud-demo-delta-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        let opts = DemoOptions {
            size: 200_000,
            delta: Some(DeltaDemo::default()),
            ..DemoOptions::default()
        };
        let old = old_image(opts.delta.as_ref().unwrap(), opts.size).unwrap();
        assert_eq!(
            old,
            generate_firmware(200_000),
            "no file: a generated image"
        );
        let (image, upgrade) = delta_image(&tool, old.clone(), &opts, &work).unwrap();

        // The device is given the old image and served the patch; it must end with the new.
        let old_path = image.delta_old.unwrap();
        assert_eq!(fs::read(&old_path).unwrap(), old);
        assert!(image.bytes == upgrade.patch);
        assert!(upgrade.new == delta::next_release(&old));
        assert_eq!(image.device_key, None);
        let sizes = upgrade.sizes();
        assert_eq!((sizes.old, sizes.compression), (200_000, "heatshrink"));
        // A small change to the image: the patch is a small part of it.
        assert!(sizes.patch * 20 < sizes.new, "{sizes:?}");
        let rebuilt = work.join("rebuilt.bin");
        tool.apply_patch(&old_path, &work.join("patch.bin"), &rebuilt)
            .unwrap();
        assert!(fs::read(&rebuilt).unwrap() == upgrade.new);
        let _ = fs::remove_dir_all(&work);
    }
}
