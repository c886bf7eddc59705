//! One upgrade campaign for many devices at once (`ota-cloud fleet`): a gateway's sub-devices,
//! or any set of devices on one broker.
//!
//! Every device gets the [`Cloud`] that `serve` plays for one (same checks, same success rule
//! per platform), all of them on one MQTT connection ([`SharedConnection`]), each run in its
//! own thread. The images are served by one [`FirmwareServer`]: one image for every device
//! ([`Images::Shared`], the case a gateway downloads once), or one per device
//! ([`Images::Distinct`], same size, other bytes, own URL path and digest); a gateway of its
//! own has its own image and version. The [`FleetReport`] says, per device, how its run ended
//! and, per image, how often the server actually sent it: the proof that a gateway downloaded
//! a shared image once.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{RequestLog, FILE_NAME};
use crate::{
    generate_firmware_seeded, md5_hex, sha256_hex, Cloud, CloudOptions, Failure, Firmware,
    FirmwareServer, Protocol, SharedConnection, Stage, Summary, FIRMWARE_SEED,
};

/// The seed of a gateway's own image ([`GatewaySpec`]).
pub const GATEWAY_SEED: u64 = 0x5eed_f1a3_0000_0003;

/// The seed of device `index`'s image with [`Images::Distinct`].
pub fn distinct_seed(index: usize) -> u64 {
    FIRMWARE_SEED.wrapping_add(0x1_0000 + index as u64)
}

/// The name `--sub-devices N` gives sub-device `i` (1-based): `prefix` and `i` with at least two
/// digits, as many as N has (sub-01 … sub-16; sub-001 … sub-256).
pub fn sub_device_name(prefix: &str, i: usize, n: usize) -> String {
    let width = n.to_string().len().max(2);
    format!("{prefix}{i:0width$}")
}

/// A device's identity in its topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId {
    pub product_key: String,
    pub device_name: String,
}

impl DeviceId {
    /// `PK/DN`; both parts non-empty, of letters, digits and `-_.:@` (they end up in topics
    /// and URL paths).
    pub fn parse(s: &str) -> Result<DeviceId, String> {
        let (pk, dn) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not PK/DN"))?;
        check_name("product key", pk)?;
        check_name("device name", dn)?;
        Ok(DeviceId {
            product_key: pk.into(),
            device_name: dn.into(),
        })
    }
}

/// `Err` unless `v` is a non-empty identity of letters, digits and `-_.:@`.
pub fn check_name(what: &str, v: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
    if v.is_empty() || !v.chars().all(ok) {
        return Err(format!(
            "{what} {v:?}: letters, digits and -_.:@ only, not empty"
        ));
    }
    Ok(())
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.product_key, self.device_name)
    }
}

/// What the devices are offered.
#[derive(Debug, Clone)]
pub enum Images {
    /// This image for every device, at one URL.
    Shared(Vec<u8>),
    /// A generated image of this size for each device ([`distinct_seed`]), at `<dn>.bin`.
    Distinct { size: usize },
}

/// The gateway itself as one more device, with its own image (generated from
/// [`GATEWAY_SEED`]) and version.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub id: DeviceId,
    pub version: String,
    pub size: usize,
}

/// The campaign.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub protocol: Protocol,
    pub options: CloudOptions,
    pub devices: Vec<DeviceId>,
    /// The version the devices' upgrade installs.
    pub version: String,
    pub images: Images,
    pub gateway: Option<GatewaySpec>,
    pub timeout: Duration,
}

impl FleetSpec {
    /// `Err` says what is wrong with the campaign: no device, a device twice, two devices of
    /// one name (their images and files are named after it), options the protocol has no use
    /// for.
    pub fn check(&self) -> Result<(), String> {
        if self.devices.is_empty() {
            return Err("no devices".into());
        }
        self.options.check(self.protocol)?;
        let mut names = std::collections::HashSet::new();
        for id in self.all_devices() {
            if !names.insert(id.device_name.as_str()) {
                return Err(format!(
                    "device name {:?} appears twice (each device's image and file is named \
                     after it)",
                    id.device_name
                ));
            }
            if format!("{}.bin", id.device_name) == FILE_NAME {
                return Err(format!(
                    "device name {:?} is the shared image's file name",
                    id.device_name
                ));
            }
        }
        Ok(())
    }

    /// The sub-devices, then the gateway (if any).
    fn all_devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices
            .iter()
            .chain(self.gateway.iter().map(|g| &g.id))
    }
}

/// One device of a prepared [`Fleet`].
#[derive(Debug, Clone)]
pub struct FleetDevice {
    pub id: DeviceId,
    /// What its cloud offers it.
    pub firmware: Firmware,
    /// Its image, an index into [`Fleet::images`].
    pub image: usize,
    pub is_gateway: bool,
}

/// One image the server holds.
#[derive(Debug, Clone)]
pub struct FleetImage {
    /// Its file name in the URL path.
    pub name: String,
    pub bytes: Arc<[u8]>,
    pub md5: String,
    pub sha256: String,
}

impl FleetImage {
    fn new(name: String, bytes: Arc<[u8]>) -> FleetImage {
        FleetImage {
            md5: md5_hex(&bytes),
            sha256: sha256_hex(&bytes),
            name,
            bytes,
        }
    }
}

/// A campaign ready to run: images served, every device's cloud subscribed to its topics.
pub struct Fleet {
    pub protocol: Protocol,
    pub devices: Vec<FleetDevice>,
    pub images: Vec<FleetImage>,
    server: FirmwareServer,
    clouds: Vec<Cloud>,
    timeout: Duration,
    /// Dropped last: the clouds publish through it.
    _connection: SharedConnection,
}

impl Fleet {
    /// Starts the firmware server and connects one MQTT connection to the broker at
    /// `host:port`; returns once every device's topics are subscribed, so devices started
    /// afterwards cannot report their versions unseen. `spec` must pass [`FleetSpec::check`].
    pub fn prepare(spec: &FleetSpec, host: &str, port: u16) -> io::Result<Fleet> {
        spec.check().map_err(io::Error::other)?;
        let (server, images, device_images) = serve_images(spec)?;
        let mut devices = Vec::new();
        for (i, id) in spec.devices.iter().enumerate() {
            let image = device_images[i];
            devices.push(FleetDevice {
                id: id.clone(),
                firmware: firmware_of(&spec.version, &server, &images[image]),
                image,
                is_gateway: false,
            });
        }
        if let Some(g) = &spec.gateway {
            let image = images.len() - 1;
            devices.push(FleetDevice {
                id: g.id.clone(),
                firmware: firmware_of(&g.version, &server, &images[image]),
                image,
                is_gateway: true,
            });
        }
        let connection = SharedConnection::connect(host, port)?;
        let mut clouds = Vec::new();
        for d in &devices {
            let mut cloud = connection.attach(spec.protocol, &d.id.product_key, &d.id.device_name);
            cloud
                .set_options(spec.options.clone())
                .map_err(io::Error::other)?;
            cloud.set_quiet(true);
            clouds.push(cloud);
        }
        connection.subscribe()?;
        Ok(Fleet {
            protocol: spec.protocol,
            devices,
            images,
            server,
            clouds,
            timeout: spec.timeout,
            _connection: connection,
        })
    }

    /// The firmware server's port on 127.0.0.1.
    pub fn http_port(&self) -> u16 {
        self.server.port()
    }

    /// Runs every device's upgrade at once until each one ended (upgraded, failed, or the
    /// timeout); `observe` hears each device's [`Stage`]s by index into
    /// [`devices`](Self::devices), from the devices' threads.
    pub fn run(self, observe: impl Fn(usize, Stage) + Send + Sync + 'static) -> FleetReport {
        let started = Instant::now();
        let observe = Arc::new(observe);
        let mut runs = Vec::new();
        for (i, (mut cloud, device)) in self.clouds.into_iter().zip(&self.devices).enumerate() {
            let observe = Arc::clone(&observe);
            cloud.set_observer(move |stage| observe(i, stage));
            let firmware = device.firmware.clone();
            let timeout = self.timeout;
            let run = thread::Builder::new()
                .name(format!("fleet-{i}"))
                .stack_size(512 * 1024)
                .spawn(move || cloud.run(&firmware, timeout))
                .expect("a thread per device");
            runs.push(run);
        }
        let summaries: Vec<Summary> = runs
            .into_iter()
            .map(|r| r.join().expect("a device's run does not panic"))
            .collect();
        let requests = self.server.requests();
        let images = images_served(&self.images, &requests);
        let devices = self
            .devices
            .into_iter()
            .zip(summaries)
            .map(|(device, summary)| DeviceOutcome { device, summary })
            .collect();
        FleetReport {
            protocol: self.protocol,
            devices,
            bytes_served: images.iter().map(|i| i.bytes_served).sum(),
            image_names: self.images.iter().map(|i| i.name.clone()).collect(),
            images,
            requests,
            elapsed: started.elapsed(),
        }
    }
}

/// The server with every image of `spec`: the images and, per sub-device, its image's index
/// (the gateway's image, if any, is the last).
fn serve_images(spec: &FleetSpec) -> io::Result<(FirmwareServer, Vec<FleetImage>, Vec<usize>)> {
    let (server, mut images, device_images) = match &spec.images {
        Images::Shared(image) => {
            let server = FirmwareServer::start(image.clone())?;
            let shared = FleetImage::new(FILE_NAME.into(), Arc::clone(server.image()));
            (server, vec![shared], vec![0; spec.devices.len()])
        }
        Images::Distinct { size } => {
            // Nothing is offered at the server's own firmware.bin.
            let server = FirmwareServer::start(Vec::new())?;
            let mut images = Vec::new();
            for (i, id) in spec.devices.iter().enumerate() {
                let bytes: Arc<[u8]> = generate_firmware_seeded(*size, distinct_seed(i)).into();
                images.push(add_image(&server, &id.device_name, bytes)?);
            }
            let indexes = (0..images.len()).collect();
            (server, images, indexes)
        }
    };
    if let Some(g) = &spec.gateway {
        let bytes: Arc<[u8]> = generate_firmware_seeded(g.size, GATEWAY_SEED).into();
        images.push(add_image(&server, &g.id.device_name, bytes)?);
    }
    Ok((server, images, device_images))
}

/// Serves `bytes` as `<device_name>.bin`.
fn add_image(
    server: &FirmwareServer,
    device_name: &str,
    bytes: Arc<[u8]>,
) -> io::Result<FleetImage> {
    let name = format!("{device_name}.bin");
    server.add_image(&name, Arc::clone(&bytes))?;
    Ok(FleetImage::new(name, bytes))
}

fn firmware_of(version: &str, server: &FirmwareServer, image: &FleetImage) -> Firmware {
    Firmware::new(version, server.url_of(&image.name), &image.bytes)
}

/// How one device's run ended.
#[derive(Debug, Clone)]
pub struct DeviceOutcome {
    pub device: FleetDevice,
    pub summary: Summary,
}

/// A device's run in three words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It upgraded (or already ran the version) without a violation.
    Upgraded,
    /// It reported the upgrade failed, or broke a rule: why.
    Failed(String),
    /// The run timed out: what it still waited for.
    Waiting(String),
}

impl DeviceOutcome {
    pub fn verdict(&self) -> Verdict {
        match &self.summary.outcome {
            Ok(_) => Verdict::Upgraded,
            Err(Failure::Timeout { waiting_for }) => Verdict::Waiting(waiting_for.clone()),
            Err(e) => Verdict::Failed(e.to_string()),
        }
    }

    /// The version it runs as far as the cloud knows: the target once upgraded (Tencent and
    /// UCloud say so with `done` / `success`, not with a version report), else the version it
    /// last reported.
    pub fn running_version(&self) -> Option<&str> {
        match &self.summary.outcome {
            Ok(crate::Success::Upgraded) => Some(&self.device.firmware.version),
            _ => self.summary.versions.last().map(String::as_str),
        }
    }

    /// Its final state as the display shows it.
    pub fn state(&self) -> &'static str {
        match self.verdict() {
            Verdict::Upgraded => "upgraded",
            Verdict::Failed(_) => "failed",
            Verdict::Waiting(_) => "waiting",
        }
    }
}

/// How often the server sent one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageServed {
    pub name: String,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    /// Requests for its URL path, whatever their method and status.
    pub requests: u64,
    /// GETs answered 200/206 from byte 0 (no Range, or `bytes=0-`).
    pub requests_from_start: u64,
    /// Body bytes of 200/206 answers.
    pub bytes_served: u64,
    /// Whole images' worth of bytes served (`bytes_served / size`, rounded down; for an empty
    /// image, the requests from the start).
    pub full_downloads: u64,
}

/// Per image, what the request log says was served of it.
pub fn images_served(images: &[FleetImage], log: &[RequestLog]) -> Vec<ImageServed> {
    images
        .iter()
        .map(|image| {
            let size = image.bytes.len() as u64;
            let mut served = ImageServed {
                name: image.name.clone(),
                size,
                md5: image.md5.clone(),
                sha256: image.sha256.clone(),
                requests: 0,
                requests_from_start: 0,
                bytes_served: 0,
                full_downloads: 0,
            };
            for r in log.iter().filter(|r| file_of(&r.path) == image.name) {
                served.requests += 1;
                if r.method != "GET" || !matches!(r.status, 200 | 206) {
                    continue;
                }
                served.bytes_served += r.bytes_sent;
                let from_start = match &r.range {
                    None => true,
                    Some(range) => range.replace(' ', "").starts_with("bytes=0-"),
                };
                served.requests_from_start += u64::from(from_start);
            }
            served.full_downloads = match size {
                0 => served.requests_from_start,
                _ => served.bytes_served / size,
            };
            served
        })
        .collect()
}

/// The last segment of a request path, without its query.
fn file_of(path: &str) -> &str {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// What a [`Fleet`] run did.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub protocol: Protocol,
    /// In the order of [`Fleet::devices`].
    pub devices: Vec<DeviceOutcome>,
    /// In the order of [`Fleet::images`].
    pub images: Vec<ImageServed>,
    image_names: Vec<String>,
    /// Every request the firmware server answered.
    pub requests: Vec<RequestLog>,
    /// Body bytes of the images served, all images together.
    pub bytes_served: u64,
    pub elapsed: Duration,
}

impl FleetReport {
    /// Devices upgraded, failed, still waiting.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for d in &self.devices {
            match d.verdict() {
                Verdict::Upgraded => counts.0 += 1,
                Verdict::Failed(_) => counts.1 += 1,
                Verdict::Waiting(_) => counts.2 += 1,
            }
        }
        counts
    }

    /// Every device upgraded without a violation.
    pub fn success(&self) -> bool {
        self.counts().0 == self.devices.len()
    }

    /// The image device `d` was offered.
    pub fn image_of(&self, d: &DeviceOutcome) -> &str {
        &self.image_names[d.device.image]
    }

    /// The summary the run ends with, one line each: the counts, each device that did not
    /// upgrade and why, the images served.
    pub fn summary_lines(&self) -> Vec<String> {
        let (upgraded, failed, waiting) = self.counts();
        let mut lines = vec![format!(
            "fleet: {} devices: {upgraded} upgraded, {failed} failed, {waiting} still waiting \
             ({:.1} s)",
            self.devices.len(),
            self.elapsed.as_secs_f64()
        )];
        for d in &self.devices {
            match d.verdict() {
                Verdict::Upgraded => {}
                Verdict::Failed(why) => lines.push(format!("  {} failed: {why}", d.device.id)),
                Verdict::Waiting(what) => {
                    lines.push(format!("  {} still waiting for {what}", d.device.id))
                }
            }
        }
        let counts: Vec<String> = self
            .images
            .iter()
            .map(|i| format!("{} {}", i.name, i.full_downloads))
            .collect();
        lines.push(format!(
            "HTTP downloads served per image: {}",
            counts.join(" ")
        ));
        for i in &self.images {
            let share = match i.size {
                0 => 0.0,
                size => i.bytes_served as f64 / size as f64,
            };
            lines.push(format!(
                "  {}: {} bytes, md5 {}: {} requests, {} from byte 0, {} bytes served = {share:.2} \
                 images",
                i.name, i.size, i.md5, i.requests, i.requests_from_start, i.bytes_served
            ));
        }
        lines.push(format!("HTTP bytes served in total: {}", self.bytes_served));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(path: &str, range: Option<&str>, status: u16, bytes: u64) -> RequestLog {
        RequestLog {
            seq: 0,
            method: "GET".into(),
            path: path.into(),
            range: range.map(str::to_string),
            status,
            bytes_sent: bytes,
            complete: true,
        }
    }

    #[test]
    fn full_downloads_count_whole_images_of_bytes_per_image() {
        let images = [
            FleetImage::new("firmware.bin".into(), vec![0u8; 100].into()),
            FleetImage::new("gw.bin".into(), vec![1u8; 10].into()),
        ];
        let served = images_served(
            &images,
            &[
                // A download cut at 60 and resumed, then a second whole one.
                log("/firmware.bin", None, 200, 60),
                log("/firmware.bin?token=1", Some("bytes=60-"), 206, 40),
                log("/firmware.bin", Some("bytes=0-99"), 206, 100),
                // Refused: counted as a request, no bytes.
                log("/firmware.bin", None, 403, 20),
                log("/gw.bin", None, 200, 10),
                log("/other.bin", None, 404, 9),
            ],
        );
        assert_eq!(
            (
                served[0].requests,
                served[0].requests_from_start,
                served[0].bytes_served,
                served[0].full_downloads
            ),
            (4, 2, 200, 2)
        );
        assert_eq!((served[1].requests, served[1].full_downloads), (1, 1));
    }

    #[test]
    fn sub_device_names_have_as_many_digits_as_their_count() {
        assert_eq!(sub_device_name("sub-", 1, 16), "sub-01");
        assert_eq!(sub_device_name("sub-", 16, 16), "sub-16");
        assert_eq!(sub_device_name("sub-", 7, 256), "sub-007");
        assert_eq!(sub_device_name("s", 3, 5), "s03");
    }

    #[test]
    fn a_device_is_pk_slash_dn() {
        let id = DeviceId::parse("pk/sub-01").unwrap();
        assert_eq!(
            (id.product_key.as_str(), id.device_name.as_str()),
            ("pk", "sub-01")
        );
        for bad in ["pk", "/dn", "pk/", "pk/a/b", "pk/a b", "p+k/dn", "pk/d#"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
    }
}
