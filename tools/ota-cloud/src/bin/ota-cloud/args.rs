//! The command line of `ota-cloud` (clap): the subcommands, their flags, and the parsers that
//! turn flag values into the library's types, so a bad value is reported with its flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};
use ota_cloud::delta::PatchCompression;
use ota_cloud::demo::{self, DeltaDemo, DeviceKind, SignedDemo, Tamper};
use ota_cloud::fleet::DeviceId;
use ota_cloud::imgtool::{self, KeyType, SignOptions};
use ota_cloud::milestones::{self, Milestones, Supersede};
use ota_cloud::{ExpireRule, Faults, Protocol, SignMethod};

/// The contract of a run, shown by `ota-cloud help` (scripts grep it for the run flags).
const RUN_CONTRACT: &str = "\
A run (serve, demo) checks every message the device sends against the protocol (a wrong topic,
a missing or unknown key or a wrong JSON type fails the run) and the life of an upgrade: at most
one failure report per upgrade; after a failure report nothing more about that upgrade (no
progress, no success, no version report naming it); aliyun and sagoo steps are 1..100 or -1..-4
(never '0'), tencent percents 0..100. A broken rule prints a line 'violation: ...' and fails the
run. The run ends with exactly one of these lines:
  'outcome: success VERSION'
  'outcome: failed VERSION reports=N desc=DESC': the device reported the target upgrade
      failed (the run goes on for the grace period first, to catch what must not follow)
  'outcome: timeout': nothing decisive happened
With --json, one line with the run's report as a JSON object follows it.

Run flags (serve, demo): --supersede-at PERCENT[:VERSION], --renotify-at PERCENT,
--ignore-requests, --grace-ms MS: what the cloud does on its own or leaves undone.
Fault flags (serve, demo): --cut-at, --random-cuts, --stall-ms, --stall-at, --short-body,
--flip-at, --ignore-range, --status, --fail-first, --close-before-headers, --expire-after,
--expire-after-s, --redirect, --endless-body, --content-length, --slow-head-ms, --huge-head:
the firmware server misbehaves so the device's recovery can be rehearsed.
See 'ota-cloud help serve' for each flag.

On a terminal, serve and demo draw the download's progress on stderr (not with --quiet or
--json); elsewhere only plain lines are written.

fleet plays such a run for each of many devices at once over one MQTT connection and ends with a
summary of all of them instead: upgraded / failed / still waiting, and the HTTP downloads served
per image (see 'ota-cloud help fleet').

Exit status: 0 success, 1 failure, 2 usage error.";

/// Local OTA platform simulator: plays the cloud side (Aliyun, SagooIOT, Tencent, UCloud)
/// against a real MQTT broker and serves the firmware over HTTP on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(
    name = "ota-cloud",
    version,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = RUN_CONTRACT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Play the platform's side of one upgrade to version V against your device and broker.
    ///
    /// Serves the firmware over HTTP on 127.0.0.1 and plays the platform's side of one upgrade
    /// to version V, checking every message the device sends (see 'ota-cloud help'). Exit 0
    /// when the upgrade succeeds without a violation (aliyun/sagoo: the device reports V;
    /// tencent: state done for V; ucloud: success for the task), 1 otherwise. A device that
    /// reports its old version again (e.g. restarted) gets the pending upgrade again. With
    /// --delta-from OLD the firmware is the new image and what is served is the detools patch
    /// from OLD to it.
    #[command(after_help = FAULT_NOTES)]
    Serve(Box<ServeArgs>),
    /// Play the platform for many devices at once: one upgrade campaign, one MQTT connection.
    ///
    /// A gateway's sub-devices, or any devices on one broker: each device is announced the
    /// upgrade to V when it reports its version and every message it sends is checked, as
    /// 'serve' does for one (the same success rule per platform). The images are served over
    /// HTTP on 127.0.0.1 (Range honoured): one image for every device by default, so the
    /// per-image count of full downloads shows whether a gateway fetched it once; --distinct
    /// gives each device its own. On a terminal (stdout), a live table with one row per device;
    /// otherwise one plain line per change of a device's state ('fleet: PK/DN: STATE'). Then a
    /// summary: upgraded / failed / still waiting, and 'HTTP downloads served per image: NAME
    /// COUNT ...'. Exit 0 when every device upgraded without a violation, 1 otherwise, 2 usage
    /// error.
    #[command(after_help = FLEET_NOTES)]
    Fleet(Box<FleetArgs>),
    /// Run the embedded MQTT 3.1.1 broker on 127.0.0.1 in the foreground.
    Broker(BrokerArgs),
    /// One-command demo: broker, firmware server, cloud and a device program of this workspace.
    ///
    /// Embedded broker + firmware server + cloud + a device program from this workspace
    /// (default rust, 4 MiB), told the protocol in OTA_PROTOCOL. Exit 0 only if the device
    /// wrote a file byte-identical to the target image (the superseding one with
    /// --supersede-at; with --delta-from, the new image the patch makes) and completed the
    /// upgrade without a violation.
    #[command(after_help = FAULT_NOTES)]
    Demo(Box<DemoArgs>),
    /// Sign a firmware image with MCUboot's imgtool, for devices that require a signature.
    ///
    /// Runs the real `imgtool` (PyPI package `imgtool`, which must be on PATH) and prints each
    /// command it runs, so they can go into a build script as they are: with --keygen
    /// `imgtool keygen` first (a new private key in KEY), then `imgtool getpub` (the public
    /// half, what the device is given: --public-key, default KEY's name with .pub.pem), then
    /// `imgtool sign` (INPUT, the bare payload, becomes OUTPUT: a header of --header-size bytes,
    /// the payload, the SHA-256 and the signature). Serve OUTPUT with `serve --firmware OUTPUT`;
    /// the upgrade announces its own size and digest. Exit 0 signed, 1 imgtool failed or is
    /// missing, 2 usage error.
    #[command(after_help = SIGN_NOTES)]
    Sign(SignArgs),
}

/// Under `fleet --help`.
const FLEET_NOTES: &str = "\
Devices: --devices PK/DN,PK/DN,... or --sub-devices N, named PK/PREFIXNN (--product-key, default
a1OtaExmpPk; --name-prefix, default sub-; NN from 01, as many digits as N has: sub-01..sub-16,
sub-001..sub-256). --gateway PK/DN adds the gateway itself as one more device, with its own
image (GATEWAY.bin, --gateway-firmware-size, default the fleet's image size) and version
(--gateway-version, default V).

Images: shared (default): --firmware FILE or a generated image of --firmware-size bytes at
/firmware.bin for every device. --distinct: a generated image per device, same size, different
bytes, at /DN.bin with its own digest. --write-firmware-dir DIR writes DIR/DN.bin, the image
each device is offered (the gateway's too), so what a device wrote can be compared byte for
byte.

Start-up: the images are printed ('image NAME: SIZE bytes, md5 ..., url ...'), then the line
'fleet: playing PLATFORM for N devices; waiting for the version reports of N devices' once every
device's topics are subscribed: start the devices after it.

Summary: 'fleet: N devices: U upgraded, F failed, W still waiting', a line per device that did
not upgrade, 'HTTP downloads served per image: NAME COUNT ...' (COUNT: whole images' worth of
bytes served), then per image its requests, those from byte 0 and the bytes served, and the
total bytes served. --json: stdout carries only one JSON object (devices with pk, dn, state,
version; images with name, size, md5, sha256, requests, full_downloads; the request log); the
lines above go to stderr.";

/// Under `sign --help`.
const SIGN_NOTES: &str = "\
The device side: C, IOT_OTA_Ioctl(h, IOT_OTAC_ADD_IMAGE_KEY, pem, pem_len) and
IOT_OTAC_REQUIRE_SIGNATURE 1 after IOT_OTA_Init; Rust, OtaConfig::image (ImagePolicy: keys from
ImageKey::parse, require_signature). Keep KEY secret, off shared machines: whoever holds it signs
firmware that every device trusting its public key installs.";

/// How the fault flags combine, under `serve --help` and `demo --help`.
const FAULT_NOTES: &str = "\
Run flags: PERCENT counts the bytes of the (first) image the firmware server has written to
sockets, over all responses (a byte sent twice counts twice); the response that reaches it pauses
until the announcement has gone through the broker, so it lands at the same point every run.

Fault flags: all off by default, any combination; OFFSETs are byte offsets in the image (with
--delta-from, in the patch served: the run flags' PERCENT counts its bytes too). With
--expire-after or --expire-after-s the URL carries ?token=N, and every upgrade message after the
first (the device asks again: aliyun request on /ota/device/request/PK/DN; or it re-reports its
version; a superseding upgrade; not the exact repeat of --renotify-at) carries a fresh URL that
works again while the old one keeps getting 403. The cloud still sends at most 5 upgrade
messages per run in answer to the device (--supersede-at and --renotify-at come on top). The
faults apply to the superseding image too (its own offsets; each cut fires once per server; one
URL token for both). The active faults are printed at start.";

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("image")
        .required(true)
        .args(["firmware", "firmware_size", "files", "files_sizes"])
))]
pub struct ServeArgs {
    /// The MQTT broker the device is connected to.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_broker)]
    pub broker: BrokerAddr,
    /// The device's product key (Tencent: product ID, UCloud: product SN), as in its topics.
    #[arg(long, value_name = "PK")]
    pub product_key: String,
    /// The device's name (UCloud: device SN), as in its topics.
    #[arg(long, value_name = "DN")]
    pub device_name: String,
    /// The version the upgrade installs.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Serve this file.
    #[arg(long, value_name = "FILE")]
    pub firmware: Option<PathBuf>,
    /// Serve a generated image of BYTES bytes (the same bytes every run).
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES")]
    pub firmware_size: Option<usize>,
    /// aliyun, sagoo: one upgrade of several files (a `files` array), each served at its own
    /// URL (or streamed over MQTT with --mqtt-download), named by its file name.
    #[arg(long, value_name = "FILE,FILE,...", value_delimiter = ',')]
    pub files: Vec<PathBuf>,
    /// Like --files, with generated files of these sizes (file1.bin, file2.bin, ...).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "BYTES,BYTES,...",
        value_delimiter = ','
    )]
    pub files_sizes: Vec<usize>,
    /// Write the generated files of --files-sizes into DIR (created).
    #[arg(long, value_name = "DIR", requires = "files_sizes")]
    pub write_files: Option<PathBuf>,
    /// aliyun, sagoo: the device downloads over MQTT (`dProtocol` mqtt): block requests on
    /// /sys/PK/DN/thing/file/download, answered on .../download_reply. --cut-at drops the
    /// reply holding each OFFSET, --flip-at corrupts one block after its CRC, --stall-at
    /// delays one reply (OFFSETs within a file; each fires once).
    #[arg(long)]
    pub mqtt_download: bool,
    /// With --mqtt-download: the largest block a request may ask for.
    #[arg(long, allow_negative_numbers = true, value_name = "N", requires = "mqtt_download",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(ota_cloud::mqtt_download::MAX_BLOCK_SIZE)),
          default_value_t = ota_cloud::mqtt_download::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// With --mqtt-download: a header length past the frame in the reply holding OFFSET.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "OFFSET",
        requires = "mqtt_download"
    )]
    pub header_past_frame_at: Option<u64>,
    /// With --mqtt-download: answer the request holding OFFSET with the block one byte on.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "OFFSET",
        requires = "mqtt_download"
    )]
    pub wrong_offset_at: Option<u64>,
    /// Write the generated image to PATH (with --supersede-at, the new one to PATH.next; with
    /// --delta-from, the new image, not the patch).
    #[arg(
        long,
        value_name = "PATH",
        requires = "firmware_size",
        conflicts_with = "firmware"
    )]
    pub write_firmware: Option<PathBuf>,
    /// Give up after this long.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SECONDS",
        default_value_t = 120
    )]
    pub timeout_s: u64,
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// sagoo, ucloud: upgrade module M (default: the default module).
    #[arg(long, value_name = "M")]
    pub module: Option<String>,
    /// ucloud: announce CurrentVersion X instead of the version the device reported; a
    /// correct device refuses with fail + ErrMsg.
    #[arg(long, value_name = "X")]
    pub current_version: Option<String>,
    #[command(flatten)]
    pub delta: ServeDeltaArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `serve --delta-from`: a delta upgrade.
#[derive(Debug, Args)]
#[command(next_help_heading = "Delta upgrades")]
pub struct ServeDeltaArgs {
    /// The image the device runs: the upgrade is a delta from OLD to the firmware (--firmware,
    /// --firmware-size: the new image). What is served and announced (size, digest) is the
    /// detools sequential patch, made here by `python3 -m detools create_patch` (PyPI package
    /// `detools`) unless --delta-patch gives it. The fault flags' OFFSETs are in the patch.
    /// Any protocol; a single file over HTTP only.
    #[arg(
        long,
        value_name = "OLD",
        value_parser = readable_file,
        conflicts_with_all = ["files", "files_sizes", "mqtt_download", "supersede_at"]
    )]
    pub delta_from: Option<PathBuf>,
    /// The patch's compression (default heatshrink, detools' window 8 and lookahead 7).
    #[arg(
        long,
        value_name = "C",
        value_parser = compression_parser(),
        requires = "delta_from",
        conflicts_with = "delta_patch"
    )]
    pub delta_compression: Option<PatchCompression>,
    /// Serve this ready patch (detools not needed): only its header is read (it must make an
    /// image of the firmware's size); a patch for another old image, or one the device cannot
    /// apply (lzma, hdiffpatch), is served as it is to rehearse the device's refusal.
    #[arg(
        long,
        value_name = "PATCH",
        value_parser = readable_file,
        requires = "delta_from"
    )]
    pub delta_patch: Option<PathBuf>,
    /// Write the patch served to PATH.
    #[arg(long, value_name = "PATH", requires = "delta_from")]
    pub write_patch: Option<PathBuf>,
    /// Announce FILE as the old image in the upgrade message's extData (`_delta_old_size`,
    /// `_delta_old_sha256`) instead of OLD, to rehearse the device's refusal of a patch made
    /// for another image than the one it runs (aliyun, sagoo: the platforms whose upgrade
    /// message carries extData; there --delta-from announces OLD).
    #[arg(
        long,
        value_name = "FILE",
        value_parser = readable_file,
        requires = "delta_from"
    )]
    pub delta_claim_old: Option<PathBuf>,
}

/// `fleet`: one campaign for many devices.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("image")
        .required(true)
        .args(["firmware", "firmware_size"])
))]
#[command(group(
    ArgGroup::new("fleet")
        .required(true)
        .args(["devices", "sub_devices"])
))]
pub struct FleetArgs {
    /// The MQTT broker the devices are connected to.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_broker)]
    pub broker: BrokerAddr,
    /// The platform whose cloud side is played.
    #[arg(
        long,
        alias = "protocol",
        value_name = "PLATFORM",
        value_parser = protocol_parser(),
        ignore_case = true,
        default_value = "aliyun"
    )]
    pub platform: Protocol,
    /// sagoo: the digest announced in signMethod/sign.
    #[arg(
        long,
        value_name = "METHOD",
        value_parser = sign_method_parser(),
        ignore_case = true,
        default_value = "md5"
    )]
    pub sign_method: SignMethod,
    /// The devices, by product key and device name as in their topics.
    #[arg(long, value_name = "PK/DN,PK/DN,...", value_delimiter = ',', value_parser = DeviceId::parse)]
    pub devices: Vec<DeviceId>,
    /// N sub-devices named PK/PREFIX01.. (see below).
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = parse_fleet_size)]
    pub sub_devices: Option<usize>,
    /// With --sub-devices: their product key.
    #[arg(long, value_name = "PK", requires = "sub_devices", default_value = DEFAULT_SUB_PRODUCT_KEY)]
    pub product_key: String,
    /// With --sub-devices: their names' prefix.
    #[arg(
        long,
        value_name = "PREFIX",
        requires = "sub_devices",
        default_value = "sub-"
    )]
    pub name_prefix: String,
    /// The version the upgrade installs.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Serve this file to every device.
    #[arg(long, value_name = "FILE", conflicts_with = "distinct")]
    pub firmware: Option<PathBuf>,
    /// Serve a generated image of BYTES bytes.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES")]
    pub firmware_size: Option<usize>,
    /// Each device gets its own image (same size, different bytes, own URL path and digest).
    #[arg(long)]
    pub distinct: bool,
    /// The gateway itself, as one more device with its own image and version.
    #[arg(long, value_name = "PK/DN", value_parser = DeviceId::parse)]
    pub gateway: Option<DeviceId>,
    /// The version the gateway's upgrade installs (default V).
    #[arg(long, value_name = "V", requires = "gateway")]
    pub gateway_version: Option<String>,
    /// The size of the gateway's image (default the fleet's image size).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "BYTES",
        requires = "gateway"
    )]
    pub gateway_firmware_size: Option<usize>,
    /// Write each device's image to DIR/DN.bin (DIR is created).
    #[arg(long, value_name = "DIR")]
    pub write_firmware_dir: Option<PathBuf>,
    /// Give up after this long.
    #[arg(
        long,
        alias = "timeout-s",
        allow_negative_numbers = true,
        value_name = "SECONDS",
        default_value_t = 120
    )]
    pub timeout: u64,
    /// Print the summary as one JSON object on stdout (everything else on stderr, no table).
    #[arg(long)]
    pub json: bool,
}

/// `--sub-devices`' product key by default: the C examples' own.
pub const DEFAULT_SUB_PRODUCT_KEY: &str = "a1OtaExmpPk";

/// Most devices of one fleet.
pub const MAX_FLEET: usize = 1024;

fn parse_fleet_size(v: &str) -> Result<usize, String> {
    match number::<usize>(v)? {
        n @ 1..=MAX_FLEET => Ok(n),
        n => Err(format!("{n} sub-devices: 1 to {MAX_FLEET}")),
    }
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Listen on this port (0: a free one, printed).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "P",
        default_value_t = 0
    )]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The device program: the C example on libota.a, or the Rust example.
    #[arg(long, value_name = "DEVICE", value_parser = device_parser(), default_value = "rust")]
    pub device: DeviceKind,
    /// The firmware image's size.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES", default_value_t = demo::DEFAULT_SIZE)]
    pub size: usize,
    /// Give up after this long, once the device program is built.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SECONDS",
        default_value_t = 120
    )]
    pub timeout_s: u64,
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub signing: DemoSigningArgs,
    #[command(flatten)]
    pub delta: DemoDeltaArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The demo's signed image (`demo --signed`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Signed images")]
pub struct DemoSigningArgs {
    /// Sign the image with imgtool (PyPI `imgtool`) with a key of TYPE made for the run, give
    /// the device its public key and make it require the signature (OTA_IMAGE_KEY,
    /// OTA_REQUIRE_SIGNATURE=1); the device prints what it verified.
    #[arg(
        long,
        value_name = "TYPE",
        value_parser = key_type_parser(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "ecdsa-p256",
        conflicts_with = "supersede_at"
    )]
    pub signed: Option<KeyType>,
    /// With --signed: serve a bad image instead, which the device must refuse (exit 0 when it
    /// does): payload (a payload byte flipped after signing, the default), signature (a byte
    /// of the signature flipped), key (signed with another key), unsigned (no signature),
    /// downgrade (signed as 0.9.0, below the device's 1.0.0). The cloud announces the served
    /// file's own digest, as a compromised cloud account would.
    #[arg(
        long,
        value_name = "WHAT",
        value_parser = tamper_parser(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "payload",
        requires = "signed"
    )]
    pub tamper: Option<Tamper>,
}

impl DemoSigningArgs {
    pub fn signed(&self) -> Option<SignedDemo> {
        self.signed.map(|key_type| SignedDemo {
            key_type,
            tamper: self.tamper,
        })
    }
}

/// The demo's delta upgrade (`demo --delta-from`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Delta upgrades")]
pub struct DemoDeltaArgs {
    /// A delta upgrade: the device runs OLD (without a value, a generated image of --size
    /// bytes) and is served the detools sequential patch (PyPI package `detools`) to a new
    /// release made from OLD (a byte changed every 4 KiB, 1 KiB inserted, 2 KiB appended). It
    /// reads OLD as its delta source (OTA_DELTA_OLD=PATH) and must end with the new release
    /// byte for byte; the summary shows the bytes saved.
    #[arg(
        long,
        value_name = "OLD",
        num_args = 0..=1,
        value_parser = readable_file,
        conflicts_with_all = ["signed", "supersede_at"]
    )]
    pub delta_from: Option<Option<PathBuf>>,
    /// The patch's compression (default heatshrink).
    #[arg(
        long,
        value_name = "C",
        value_parser = compression_parser(),
        requires = "delta_from"
    )]
    pub delta_compression: Option<PatchCompression>,
}

impl DemoDeltaArgs {
    pub fn delta(&self) -> Option<DeltaDemo> {
        self.delta_from.clone().map(|old| DeltaDemo {
            old,
            compression: self.delta_compression.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The vendor's private key (PEM); made by --keygen, else it must exist.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// Make KEY first, a new key of this type (refused when KEY exists).
    #[arg(long, value_name = "TYPE", value_parser = key_type_parser())]
    pub keygen: Option<KeyType>,
    /// Where the public key goes (PEM; default: next to KEY, NAME.pub.pem).
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
    /// The image's version in its header, MAJOR[.MINOR[.REVISION[+BUILD]]] (devices refuse an
    /// image older than the one they run).
    #[arg(long, value_name = "V")]
    pub version: String,
    /// The protected security counter (devices refuse a lower one than theirs).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub security_counter: Option<u32>,
    /// Bytes of header added in front of the payload (decimal or 0x hex, 32..=65535).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "BYTES",
        value_parser = parse_header_size,
        default_value = "0x200"
    )]
    pub header_size: u32,
    /// The flash write alignment.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        value_parser = parse_align,
        default_value_t = imgtool::DEFAULT_ALIGN
    )]
    pub align: u32,
    /// The slot the image is for (decimal or 0x hex; default: just large enough). imgtool
    /// refuses an image that does not fit.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES", value_parser = parse_size)]
    pub slot_size: Option<u64>,
    /// The bare firmware (e.g. a build's .bin).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The signed image.
    #[arg(value_name = "OUTPUT")]
    pub output: PathBuf,
}

impl SignArgs {
    pub fn options(&self) -> SignOptions {
        SignOptions {
            key: Some(self.key.clone()),
            version: self.version.clone(),
            security_counter: self.security_counter,
            header_size: self.header_size,
            align: self.align,
            slot_size: self.slot_size,
        }
    }

    /// --public-key, or KEY's name with `.pub.pem`.
    pub fn public_key_path(&self) -> PathBuf {
        self.public_key.clone().unwrap_or_else(|| {
            let stem = self
                .key
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "key".into());
            self.key.with_file_name(format!("{stem}.pub.pem"))
        })
    }
}

/// The platform played, for `serve` and `demo`.
#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// The platform whose cloud side is played.
    #[arg(
        long,
        value_name = "PROTOCOL",
        value_parser = protocol_parser(),
        ignore_case = true,
        default_value = "aliyun"
    )]
    pub protocol: Protocol,
    /// sagoo: the digest announced in signMethod/sign.
    #[arg(
        long,
        value_name = "METHOD",
        value_parser = sign_method_parser(),
        ignore_case = true,
        default_value = "md5"
    )]
    pub sign_method: SignMethod,
}

/// What the cloud does on its own or leaves undone (`serve`, `demo`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Run flags")]
pub struct RunArgs {
    /// Once PERCENT % has been sent, publish a different upgrade: VERSION (default V.1), another
    /// image of the same size at its own URL path (.../firmware-next.bin) with its own digest;
    /// from then on the run's target is the new upgrade (the device must report the old one
    /// failed, once, and install the new one).
    #[arg(long, allow_negative_numbers = true, value_name = "PERCENT[:VERSION]", value_parser = Supersede::parse)]
    pub supersede_at: Option<Supersede>,
    /// Once PERCENT % has been sent, publish the same upgrade message again (same URL,
    /// version, digest, size, task).
    #[arg(long, allow_negative_numbers = true, value_name = "PERCENT", value_parser = milestones::parse_percent)]
    pub renotify_at: Option<u8>,
    /// Never answer the device's requests for the upgrade (an aliyun request, a version
    /// re-reported after the first announcement, a tencent/ucloud failure naming an expired
    /// URL): an expired URL is then never refreshed.
    #[arg(long)]
    pub ignore_requests: bool,
    /// After a failure report for the target upgrade, watch MS more for violations before
    /// exiting 1.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "MS",
        default_value_t = 2000
    )]
    pub grace_ms: u64,
}

/// The firmware server's faults (`serve`, `demo`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault flags")]
pub struct FaultArgs {
    /// Close the connection once the bytes up to each OFFSET have been sent; each fires once,
    /// on the first response that covers it (a resumed request starting past it is not cut).
    #[arg(long, allow_negative_numbers = true, value_name = "OFFSET[,OFFSET...]", value_parser = parse_offsets)]
    pub cut_at: Option<Offsets>,
    /// N such cuts at distinct pseudo-random offsets drawn from SEED (default 0: the same seed
    /// and size give the same offsets).
    #[arg(long, allow_negative_numbers = true, value_name = "N[:SEED]", value_parser = parse_random_cuts)]
    pub random_cuts: Option<(u32, u64)>,
    /// Pause MS between the head and the body of every response.
    #[arg(long, allow_negative_numbers = true, value_name = "MS")]
    pub stall_ms: Option<u64>,
    /// Pause MS once, mid-body, just before the byte at OFFSET.
    #[arg(long, allow_negative_numbers = true, value_name = "OFFSET:MS", value_parser = parse_stall_at)]
    pub stall_at: Option<(u64, u64)>,
    /// Announce the full Content-Length but send only BYTES of every body, then close.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES")]
    pub short_body: Option<u64>,
    /// Corrupt the byte at OFFSET (XOR 0xFF) in every response that sends it.
    #[arg(long, allow_negative_numbers = true, value_name = "OFFSET")]
    pub flip_at: Option<u64>,
    /// Ignore Range headers: always 200 with the whole file.
    #[arg(long)]
    pub ignore_range: bool,
    /// Answer every request with status CODE.
    #[arg(long, allow_negative_numbers = true, value_name = "CODE", value_parser = parse_http_status)]
    pub status: Option<u16>,
    /// Answer the first requests with these statuses, in order, then serve normally (e.g.
    /// 503,503).
    #[arg(long, allow_negative_numbers = true, value_name = "CODE[,CODE...]", value_parser = parse_http_statuses)]
    pub fail_first: Option<Statuses>,
    /// Accept the first N connections and close them unanswered.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub close_before_headers: Option<u32>,
    /// The URL gets 403 after N successful requests.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        conflicts_with = "expire_after_s"
    )]
    pub expire_after: Option<u32>,
    /// The URL gets 403 once it is SECONDS old.
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS", value_parser = parse_seconds)]
    pub expire_after_s: Option<Duration>,
    /// Answer every request with 302 to LOCATION ({self}: the server's own URL, i.e. a
    /// redirect loop; relative values are sent as they are).
    #[arg(long, value_name = "LOCATION")]
    pub redirect: Option<String>,
    /// Answer with no Content-Length, then the image followed by garbage until the device
    /// closes the connection.
    #[arg(long)]
    pub endless_body: bool,
    /// Announce Content-Length BYTES, send the real bytes.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES")]
    pub content_length: Option<u64>,
    /// Slow-loris: send every response head one byte per MS.
    #[arg(long, allow_negative_numbers = true, value_name = "MS")]
    pub slow_head_ms: Option<u64>,
    /// Pad every response head with BYTES of header lines.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES")]
    pub huge_head: Option<usize>,
}

/// How the end of a run is written (`serve`, `demo`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// No progress bar, even on a terminal (the narration stays, as plain lines).
    #[arg(long)]
    pub quiet: bool,
    /// After the outcome line, one line with the run's report as a JSON object (no progress
    /// bar).
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// Whether a progress bar may be drawn (it is only where stderr is a terminal).
    pub fn progress(&self) -> bool {
        !self.quiet && !self.json
    }
}

/// `--broker HOST:PORT`.
#[derive(Debug, Clone)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

/// `--cut-at` offsets.
#[derive(Debug, Clone)]
pub struct Offsets(pub Vec<u64>);

/// `--fail-first` statuses.
#[derive(Debug, Clone)]
pub struct Statuses(pub Vec<u16>);

fn parse_broker(v: &str) -> Result<BrokerAddr, String> {
    v.rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .map(|(host, port)| BrokerAddr {
            host: host.to_string(),
            port,
        })
        .ok_or_else(|| "not HOST:PORT".to_string())
}

fn protocol_parser() -> impl TypedValueParser<Value = Protocol> {
    PossibleValuesParser::new([
        PossibleValue::new("aliyun"),
        PossibleValue::new("sagoo").alias("sagooiot"),
        PossibleValue::new("tencent"),
        PossibleValue::new("ucloud"),
    ])
    .try_map(|v| v.parse::<Protocol>())
}

fn sign_method_parser() -> impl TypedValueParser<Value = SignMethod> {
    PossibleValuesParser::new(["md5", "sha256"]).try_map(|v| v.parse::<SignMethod>())
}

fn device_parser() -> impl TypedValueParser<Value = DeviceKind> {
    PossibleValuesParser::new([
        PossibleValue::new("c").alias("C"),
        PossibleValue::new("rust"),
    ])
    .try_map(|v| v.parse::<DeviceKind>())
}

fn key_type_parser() -> impl TypedValueParser<Value = KeyType> {
    PossibleValuesParser::new(["ecdsa-p256", "ed25519"]).try_map(|v| v.parse::<KeyType>())
}

fn compression_parser() -> impl TypedValueParser<Value = PatchCompression> {
    PossibleValuesParser::new(PatchCompression::ALL.map(|c| PossibleValue::new(c.name())))
        .try_map(|v| v.parse::<PatchCompression>())
}

/// A file that can be read (checked when the flags are, before anything starts).
fn readable_file(v: &str) -> Result<PathBuf, String> {
    std::fs::File::open(v)
        .and_then(|f| f.metadata())
        .map_err(|e| format!("cannot read {v}: {e}"))
        .and_then(|m| {
            m.is_file()
                .then(|| PathBuf::from(v))
                .ok_or_else(|| format!("{v} is not a file"))
        })
}

fn tamper_parser() -> impl TypedValueParser<Value = Tamper> {
    PossibleValuesParser::new(Tamper::ALL.map(|t| PossibleValue::new(t.name())))
        .try_map(|v| v.parse::<Tamper>())
}

/// A byte count in decimal or 0x hex (imgtool's own spelling of sizes).
fn parse_size(v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| format!("{v:?} is not a byte count (decimal or 0x hex)"))
}

fn parse_header_size(v: &str) -> Result<u32, String> {
    let n = parse_size(v)?;
    if (32..=0xffff).contains(&n) {
        Ok(n as u32)
    } else {
        Err(format!(
            "{v} is not a header size: the 32-byte header up to 65535 (its field is 16 bits)"
        ))
    }
}

fn parse_align(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n @ (1 | 2 | 4 | 8 | 16 | 32)) => Ok(n),
        _ => Err(format!(
            "{v:?} is not an alignment imgtool takes (1, 2, 4, 8, 16, 32)"
        )),
    }
}

/// One number of a list or pair; spaces around it are allowed.
fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a valid number"))
}

fn parse_offsets(v: &str) -> Result<Offsets, String> {
    v.split(',')
        .map(number)
        .collect::<Result<_, _>>()
        .map(Offsets)
}

fn parse_random_cuts(v: &str) -> Result<(u32, u64), String> {
    let (n, seed) = v.split_once(':').unwrap_or((v, "0"));
    Ok((number(n)?, number(seed)?))
}

fn parse_stall_at(v: &str) -> Result<(u64, u64), String> {
    let (at, ms) = v.split_once(':').ok_or("not OFFSET:MS")?;
    Ok((number(at)?, number(ms)?))
}

fn parse_http_status(v: &str) -> Result<u16, String> {
    let code: u16 = number(v)?;
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(format!("{code} is not an HTTP status"))
    }
}

fn parse_http_statuses(v: &str) -> Result<Statuses, String> {
    v.split(',')
        .map(parse_http_status)
        .collect::<Result<_, _>>()
        .map(Statuses)
}

fn parse_seconds(v: &str) -> Result<Duration, String> {
    let secs: f64 = number(v)?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{v:?} is not a duration"))
}

impl FaultArgs {
    /// The firmware server's faults.
    pub fn faults(&self) -> Faults {
        Faults {
            cuts: self.cut_at.clone().map(|o| o.0).unwrap_or_default(),
            random_cuts: self.random_cuts,
            stall_ms: self.stall_ms.unwrap_or(0),
            stall_once: self.stall_at,
            short_body: self.short_body,
            flip_byte_at: self.flip_at,
            ignore_range: self.ignore_range,
            status: self.status,
            fail_first: self.fail_first.clone().map(|s| s.0).unwrap_or_default(),
            close_before_headers: self.close_before_headers.unwrap_or(0),
            expire_after: match (self.expire_after, self.expire_after_s) {
                (Some(n), _) => Some(ExpireRule::Requests(n)),
                (None, Some(d)) => Some(ExpireRule::Duration(d)),
                (None, None) => None,
            },
            redirect: self.redirect.clone(),
            endless_body: self.endless_body,
            content_length: self.content_length,
            slow_head_ms: self.slow_head_ms,
            huge_head: self.huge_head.unwrap_or(0),
            ..Faults::default()
        }
    }
}

impl FaultArgs {
    /// With --mqtt-download: the faults that have an MQTT meaning, or a usage error naming a
    /// fault that has none.
    pub fn mqtt_faults(
        &self,
        header_past_frame_at: Option<u64>,
        wrong_offset_at: Option<u64>,
    ) -> ota_cloud::MqttFaults {
        let http_only = [
            ("--random-cuts", self.random_cuts.is_some()),
            ("--stall-ms", self.stall_ms.is_some()),
            ("--short-body", self.short_body.is_some()),
            ("--ignore-range", self.ignore_range),
            ("--status", self.status.is_some()),
            ("--fail-first", self.fail_first.is_some()),
            (
                "--close-before-headers",
                self.close_before_headers.is_some(),
            ),
            ("--expire-after", self.expire_after.is_some()),
            ("--expire-after-s", self.expire_after_s.is_some()),
            ("--redirect", self.redirect.is_some()),
            ("--endless-body", self.endless_body),
            ("--content-length", self.content_length.is_some()),
            ("--slow-head-ms", self.slow_head_ms.is_some()),
            ("--huge-head", self.huge_head.is_some()),
        ];
        if let Some((flag, _)) = http_only.iter().find(|(_, on)| *on) {
            usage_error(
                "serve",
                format!("{flag} is an HTTP fault; with --mqtt-download use --cut-at, --flip-at, --stall-at, --header-past-frame-at or --wrong-offset-at"),
            );
        }
        ota_cloud::MqttFaults {
            cuts: self.cut_at.clone().map(|o| o.0).unwrap_or_default(),
            header_past_frame_at,
            wrong_offset_at,
            flip_at: self.flip_at,
            stall_at: self
                .stall_at
                .map(|(at, ms)| (at, Duration::from_millis(ms))),
        }
    }
}

impl RunArgs {
    pub fn milestones(&self) -> Milestones {
        Milestones {
            supersede: self.supersede_at.clone(),
            renotify_at: self.renotify_at,
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// A usage error when the superseding upgrade would have the target's own `version`.
    pub fn check_supersede(&self, subcommand: &str, version: &str) {
        if let Some(s) = &self.supersede_at {
            if s.version.as_deref() == Some(version) {
                usage_error(
                    subcommand,
                    format!("--supersede-at: the new upgrade needs a version other than {version}"),
                );
            }
        }
    }
}

/// Exits 2 with `msg` and `subcommand`'s usage, as clap does for the errors it finds itself:
/// for the checks that need more than one flag.
pub fn usage_error(subcommand: &str, msg: impl std::fmt::Display) -> ! {
    let mut cli = Cli::command();
    cli.build();
    let cmd = cli
        .find_subcommand_mut(subcommand)
        .expect("a subcommand of ota-cloud");
    cmd.error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}
