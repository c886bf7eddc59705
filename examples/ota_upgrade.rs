//! A device that upgrades itself through the Rust API, Aliyun protocol.
//!
//! Usage: `ota_upgrade [OUTPUT_FILE]` with the broker in `IOTX_MQTT_HOST` / `IOTX_MQTT_PORT`
//! and the identity in `OTA_PRODUCT_KEY`, `OTA_DEVICE_NAME`, `OTA_DEVICE_SECRET`,
//! `OTA_FIRMWARE_VERSION` (defaults: a demo device at version 1.0.0), and the platform in
//! `OTA_PROTOCOL` (`aliyun`, `sagoo`, `tencent` or `ucloud`; default `aliyun`).
//!
//! Images must carry the vendor's signature (MCUboot `imgtool sign`), the secure way: the
//! vendor's public key(s) in `OTA_IMAGE_KEY` (PEM files from `imgtool getpub -e pem`,
//! `:`-separated for key rotation), and an image older than the running version is refused.
//! `OTA_REQUIRE_SIGNATURE=0` accepts unsigned images on the platform's digest alone (not
//! recommended: whoever can publish the upgrade message then chooses the firmware).
//!
//! Flow: connect, report the running version, wait for an upgrade, download it into
//! OUTPUT_FILE while reporting progress, verify (digest, signature, version), report that
//! flashing begins and succeeded, then "reboot" (a new session) and report the version now
//! running. A refused image ends the program with a line `firmware refused: CAUSE`.
//!
//! Delta upgrades: with `OTA_DELTA_OLD=PATH` (the image it runs, as a file here; a device reads
//! its flash), a detools patch the platform sends is applied on the way and OUTPUT_FILE gets the
//! new image (`ota-cloud demo --delta-from`).

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ota::conninfo::aliyun_conn_info;
use ota::delta::{OldImage, OldReadError};
use ota::image::{ImageKey, ImagePolicy, ImageVersion};
use ota::ota::DeltaOptions;
use ota::{Error, MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The running image a delta patch applies to, read from a file by offset.
struct OldFile {
    file: std::fs::File,
    size: u64,
}

impl OldFile {
    fn open(path: &str) -> std::io::Result<OldFile> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(OldFile { file, size })
    }
}

impl OldImage for OldFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Err(OldReadError {
                code: e.raw_os_error().unwrap_or(-1),
            }),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("device: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let out_path = std::env::args().nth(1).unwrap_or_else(|| "ota.bin".into());
    let pk = env_or("OTA_PRODUCT_KEY", "a1demoPK");
    let dn = env_or("OTA_DEVICE_NAME", "demo-device");
    let secret = env_or("OTA_DEVICE_SECRET", "demo-secret");
    let running = env_or("OTA_FIRMWARE_VERSION", "1.0.0");
    let timeout = Duration::from_secs(env_or("OTA_TIMEOUT_S", "120").parse()?);
    let protocol = match env_or("OTA_PROTOCOL", "aliyun").as_str() {
        "aliyun" => Protocol::Aliyun,
        "sagoo" => Protocol::Sagoo,
        "tencent" => Protocol::Tencent,
        "ucloud" => Protocol::Ucloud,
        other => return Err(format!("unknown OTA_PROTOCOL {other:?}").into()),
    };
    let mut config = OtaConfig::for_protocol(protocol);
    config.image = image_policy(&running)?;

    let info = aliyun_conn_info(&pk, &dn, &secret)?;
    let mut options = MqttOptions::new(&info.host, info.port, &info.client_id);
    options.username = Some(info.username);
    options.password = Some(info.password);
    // TLS unless IOTX_MQTT_HOST/PORT point at a local broker (then `ca` is None).
    options.ca_pem = info.ca.map(|ca| ca.pem().to_vec());
    let mqtt = MqttClient::connect(&options)?;

    let session = OtaSession::attach(&mqtt, &pk, &dn, config.clone())?;
    if let Some(path) = std::env::var("OTA_DELTA_OLD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        let old = OldFile::open(&path)?;
        println!("device: delta patches apply to {path} ({} bytes)", old.size);
        // The new image goes to a file: any size a patch names up to 1 GiB.
        session.set_delta_source(Box::new(old), DeltaOptions::for_slot(1 << 30))?;
    }
    session.report_version(&running)?;
    println!(
        "device: running {running} ({}), waiting for an upgrade",
        protocol.name()
    );

    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::create(&out_path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_percent = 0u64;
    let mut failed_at: Option<Instant> = None;
    loop {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        mqtt.yield_for(Duration::from_millis(if session.is_fetching() {
            0
        } else {
            200
        }))?;
        if session.is_fetching() {
            failed_at = None;
            // Write where the session says the bytes belong: after a resume from a breakpoint
            // record, that is not the end of what was written before.
            let at = session.fetched_size();
            match session.fetch_yield(&mut buf, Duration::from_secs(1)) {
                Ok(n) => {
                    file.seek(SeekFrom::Start(at))?;
                    file.write_all(&buf[..n])?;
                }
                // The platform has been told; another try would get the same image.
                Err(Error::Image(e)) => return Err(refused(&mqtt, &e.to_string())),
                Err(e) => println!("device: download interrupted: {e}"),
            }
            let size = session.file_size().max(1);
            let percent = session.fetched_size() * 100 / size;
            // 100 % waits for the image's checks: after a refusal a percentage is refused too,
            // and its error would replace the refusal as the session's last error.
            if percent > last_percent && session.is_fetching() {
                let _ = session.report_progress(percent as i32, None);
                last_percent = percent;
            }
        }
        // In the same pass as the last chunk: the verdict and 100 % go out without a wait.
        if !session.is_fetching() && session.is_fetch_finished() {
            if session.check_firmware()? {
                break;
            }
            if let Some(Error::Image(e)) = session.last_error() {
                return Err(refused(&mqtt, &e.to_string()));
            }
            // A failed download resumes if the platform announces the upgrade again (e.g. with
            // a fresh URL after an expired one); give it a while.
            let since = *failed_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(15) {
                return Err("the download failed".into());
            }
        }
    }
    let _ = session.report_progress(100, None);
    mqtt.yield_for(Duration::ZERO)?;
    file.sync_all()?;
    let new_version = session.with_notice(|n| n.version.as_str().to_string());
    if let Some(image) = session.verified_image() {
        // A device that installs the bare payload skips payload_offset bytes of the file.
        println!(
            "device: image: signed {}, key {}, version {}, payload offset {} size {}",
            u8::from(image.signed),
            image.key_index.map_or(-1, |i| i as i64),
            image
                .version
                .map_or_else(|| "none".to_string(), |v| v.to_string()),
            image.payload_offset,
            image.payload_size
        );
    }
    println!(
        "device: {} bytes of version {new_version} verified, flashing",
        session.fetched_size()
    );
    session.report_upgrade_begin()?;
    // A real device writes the image to its update partition here.
    session.report_upgrade_success(&new_version)?;
    mqtt.yield_for(Duration::from_millis(100))?;
    println!("device: rebooting into {new_version}");
    session.detach(&mqtt)?;
    drop(session);

    // After the reboot: a new session reports the version now running.
    let session = OtaSession::attach(&mqtt, &pk, &dn, config.clone())?;
    session.report_version(&new_version)?;
    for _ in 0..3 {
        mqtt.yield_for(Duration::from_millis(200))?;
    }
    println!("device: now running {new_version}");
    mqtt.disconnect(Duration::from_millis(200));
    Ok(())
}

/// What images this device accepts beyond the platform's digest: signed by the vendor
/// (`OTA_IMAGE_KEY`), unless `OTA_REQUIRE_SIGNATURE=0`, and not older than `running`.
fn image_policy(running: &str) -> Result<ImagePolicy, Box<dyn std::error::Error>> {
    let mut policy = ImagePolicy {
        require_signature: env_or("OTA_REQUIRE_SIGNATURE", "1") != "0",
        // Anti-downgrade: a signed old release replayed by whoever sends upgrades is refused.
        running_version: ImageVersion::parse(running),
        ..ImagePolicy::default()
    };
    let paths = std::env::var("OTA_IMAGE_KEY").unwrap_or_default();
    for path in paths.split(':').filter(|p| !p.is_empty()) {
        let pem = std::fs::read(path).map_err(|e| format!("OTA_IMAGE_KEY {path}: {e}"))?;
        let key = ImageKey::parse(&pem).map_err(|e| format!("OTA_IMAGE_KEY {path}: {e}"))?;
        println!("device: image key {} ({path})", policy.keys.len());
        policy.keys.push(key);
    }
    if !policy.require_signature {
        println!(
            "device: OTA_REQUIRE_SIGNATURE=0: images are accepted on the platform's digest alone"
        );
    } else if policy.keys.is_empty() {
        println!(
            "device: a signature is required and OTA_IMAGE_KEY names no key: every image will be \
             refused (give the vendor's public key, or OTA_REQUIRE_SIGNATURE=0)"
        );
    }
    Ok(policy)
}

/// The line a refused image ends the program with, and its error, once the failure report the
/// session queued has gone out.
fn refused(mqtt: &MqttClient, cause: &str) -> Box<dyn std::error::Error> {
    println!("device: firmware refused: {cause}");
    let _ = mqtt.yield_for(Duration::from_millis(200));
    mqtt.disconnect(Duration::from_millis(200));
    "the image was refused".into()
}
