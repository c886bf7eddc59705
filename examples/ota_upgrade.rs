//! A device that upgrades itself through the Rust API, Aliyun protocol.
//!
//! Usage: `ota_upgrade [OUTPUT_FILE]` with the broker in `IOTX_MQTT_HOST` / `IOTX_MQTT_PORT`
//! and the identity in `OTA_PRODUCT_KEY`, `OTA_DEVICE_NAME`, `OTA_DEVICE_SECRET`,
//! `OTA_FIRMWARE_VERSION` (defaults: a demo device at version 1.0.0), and the platform in
//! `OTA_PROTOCOL` (`aliyun`, `sagoo`, `tencent` or `ucloud`; default `aliyun`).
//!
//! Flow: connect, report the running version, wait for an upgrade, download it into
//! OUTPUT_FILE while reporting progress, verify, report that flashing begins and succeeded, then
//! "reboot" (a new session) and report the version now running.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use ota::conninfo::aliyun_conn_info;
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession, Protocol};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
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
    let config = OtaConfig::for_protocol(protocol);

    let info = aliyun_conn_info(&pk, &dn, &secret)?;
    let mut options = MqttOptions::new(&info.host, info.port, &info.client_id);
    options.username = Some(info.username);
    options.password = Some(info.password);
    // TLS unless IOTX_MQTT_HOST/PORT point at a local broker (then `ca` is None).
    options.ca_pem = info.ca.map(|ca| ca.pem().to_vec());
    let mqtt = MqttClient::connect(&options)?;

    let session = OtaSession::attach(&mqtt, &pk, &dn, config.clone())?;
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
                Err(e) => println!("device: download interrupted: {e}"),
            }
            let size = session.file_size().max(1);
            let percent = session.fetched_size() * 100 / size;
            if percent > last_percent {
                let _ = session.report_progress(percent as i32, None);
                last_percent = percent;
            }
        } else if session.is_fetch_finished() {
            if session.check_firmware()? {
                break;
            }
            // A failed download resumes if the platform announces the upgrade again (e.g. with
            // a fresh URL after an expired one); give it a while.
            let since = *failed_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(15) {
                return Err("the download failed".into());
            }
        }
    }
    file.sync_all()?;
    let new_version = session.with_notice(|n| n.version.as_str().to_string());
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
