//! The `ota-cloud` binary: usage errors and `serve` against a fake device.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::{broker_port, FakeDevice, TIMEOUT};
use ota_cloud::generate_firmware;

const BIN: &str = env!("CARGO_BIN_EXE_ota-cloud");

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["serve"][..],
        &[
            "serve",
            "--broker",
            "nohostport",
            "--product-key",
            "p",
            "--device-name",
            "d",
            "--version",
            "2",
            "--firmware-size",
            "1",
        ][..],
        &[
            "serve",
            "--broker",
            "127.0.0.1:1",
            "--product-key",
            "p",
            "--device-name",
            "d",
            "--version",
            "2",
        ][..],
        &[
            "serve",
            "--broker",
            "127.0.0.1:1",
            "--product-key",
            "p",
            "--device-name",
            "d",
            "--version",
            "2",
            "--firmware-size",
            "1",
            "--protocol",
            "tencent",
        ][..],
        &["demo", "--device", "java"][..],
        &["broker", "--port"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}"
        );
    }
    let out = Command::new(BIN).arg("help").output().unwrap();
    assert!(out.status.success());
}

/// Runs `serve` for device `dn`; returns its exit code after `script` played the device.
fn serve(dn: &str, extra: &[&str], script: impl FnOnce(&FakeDevice, &str)) -> Option<i32> {
    let port = broker_port().to_string();
    let broker = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--broker",
            &broker,
            "--product-key",
            "pk",
            "--device-name",
            dn,
        ])
        .args(["--version", "2.0.0", "--timeout-s", "20"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("serve | {line}");
            let _ = tx.send(line);
        }
    });
    // The cloud is subscribed once it says it waits for the version report.
    let mut url = String::new();
    loop {
        let line = lines
            .recv_timeout(TIMEOUT)
            .expect("serve prints its progress");
        if let Some(u) = line.strip_prefix("firmware url: ") {
            url = u.to_string();
        }
        if line.contains("waiting for the device's version report") {
            break;
        }
    }
    let device = FakeDevice::connect(broker_port(), "pk", dn);
    script(&device, &url);
    child.wait().unwrap().code()
}

#[test]
fn serve_succeeds_when_the_device_upgrades() {
    let path = std::env::temp_dir().join(format!("ota-cloud-cli-{}.bin", std::process::id()));
    let path_s = path.to_str().unwrap().to_string();
    let code = serve(
        "cli-ok",
        &["--firmware-size", "70000", "--write-firmware", &path_s],
        |dev, url| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            let msg = dev.next_upgrade();
            assert_eq!(msg["data"]["url"], url);
            assert_eq!(msg["data"]["size"], 70000);
            let body = common::http_get(url);
            assert_eq!(body, generate_firmware(70000));
            dev.send("progress", r#"{"id":2,"params":{"step":"100"}}"#);
            dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    assert_eq!(std::fs::read(&path).unwrap(), generate_firmware(70000));
    let _ = std::fs::remove_file(path);
}

#[test]
fn serve_fails_when_the_device_fails() {
    let code = serve("cli-fail", &["--firmware-size", "1000"], |dev, _| {
        dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
        dev.next_upgrade();
        dev.send(
            "progress",
            r#"{"id":2,"params":{"step":"-3","desc":"md5 mismatch"}}"#,
        );
    });
    assert_eq!(code, Some(1));
}
