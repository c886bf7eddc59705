//! `ota-cloud fleet` against devices played by this test, through the embedded broker and real
//! HTTP: per-device outcomes, the exit status, and how often the server sent each image.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;

use common::{broker_port, http_get, FakeDevice, TIMEOUT};
use ota_cloud::md5_hex;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ota-cloud");

/// The line `fleet` prints once every device's topics are subscribed.
const READY: &str = "waiting for the version reports of";

/// What a played device does once announced the upgrade.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Play {
    /// Downloads the image over HTTP, checks its digest, reports success.
    Download,
    /// Reports success without a download (its gateway streamed the image from its own copy).
    FromGateway,
    /// Reports the download failed.
    Fail,
    /// Says nothing more.
    Silent,
}

/// A running `fleet`: its lines as they come, stdout's and stderr's apart.
struct FleetRun {
    child: Child,
    lines: Receiver<(bool, String)>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a finished `fleet` printed.
struct Finished {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Finished {
    /// The JSON report: stdout's only line with --json.
    fn json(&self) -> Value {
        assert_eq!(self.stdout.len(), 1, "{:?}", self.stdout);
        serde_json::from_str(&self.stdout[0]).expect("the report is JSON")
    }
}

/// Starts `ota-cloud fleet --broker ... ARGS`; returns once it is ready for the devices.
fn start_fleet(args: &[&str]) -> FleetRun {
    let broker = format!("127.0.0.1:{}", broker_port());
    let mut child = Command::new(BIN)
        .args(["fleet", "--broker", &broker])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let mut readers = Vec::new();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for (is_stdout, stream) in [
        (true, Box::new(out) as Box<dyn std::io::Read + Send>),
        (false, Box::new(err)),
    ] {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                println!("fleet {} | {line}", if is_stdout { "out" } else { "err" });
                let _ = tx.send((is_stdout, line));
            }
        }));
    }
    let run = FleetRun {
        child,
        lines,
        readers,
    };
    loop {
        let (_, line) = run
            .lines
            .recv_timeout(TIMEOUT)
            .expect("fleet says it is ready");
        if line.contains(READY) {
            return run;
        }
    }
}

impl FleetRun {
    fn finish(mut self) -> Finished {
        let code = self.child.wait().unwrap().code();
        for r in self.readers {
            r.join().unwrap();
        }
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for (is_stdout, line) in self.lines.try_iter() {
            assert!(
                !line.contains('\x1b'),
                "not a terminal: plain lines: {line:?}"
            );
            if is_stdout {
                stdout.push(line);
            } else {
                stderr.push(line);
            }
        }
        Finished {
            code,
            stdout,
            stderr,
        }
    }
}

/// Plays an Aliyun device `pk/dn` running 1.0.0; returns the image it downloaded, if it did.
fn aliyun_device(pk: &str, dn: &str, play: Play) -> Option<Vec<u8>> {
    let dev = FakeDevice::connect(broker_port(), pk, dn);
    dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
    let data = dev.next_upgrade()["data"].clone();
    let version = data["version"].as_str().unwrap().to_string();
    let mut body = None;
    match play {
        Play::Silent => return None,
        Play::Fail => {
            dev.send(
                "progress",
                r#"{"id":2,"params":{"step":"-2","desc":"link lost"}}"#,
            );
            return None;
        }
        Play::Download => {
            let image = http_get(data["url"].as_str().unwrap());
            assert_eq!(md5_hex(&image), data["md5"].as_str().unwrap());
            body = Some(image);
        }
        Play::FromGateway => {}
    }
    for step in ["50", "100"] {
        dev.send(
            "progress",
            &format!(r#"{{"id":3,"params":{{"step":"{step}","desc":""}}}}"#),
        );
    }
    dev.send(
        "inform",
        &format!(r#"{{"id":4,"params":{{"version":"{version}"}}}}"#),
    );
    body
}

/// Plays a Tencent device `pk/dn` running 1.0.0; returns the image it downloaded, if it did.
fn tencent_device(pk: &str, dn: &str, play: Play) -> Option<Vec<u8>> {
    let dev = FakeDevice::connect_on(broker_port(), pk, dn, &format!("$ota/update/{pk}/{dn}"));
    let report = format!("$ota/report/{pk}/{dn}");
    dev.publish(
        &report,
        r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
    );
    assert_eq!(dev.next_message().1["type"], "report_version_rsp");
    let (_, update) = dev.next_message();
    assert_eq!(update["type"], "update_firmware");
    let version = update["version"].as_str().unwrap().to_string();
    let progress = |state: &str, extra: &str| {
        dev.publish(
            &report,
            &format!(
                r#"{{"type":"report_progress","report":{{"progress":{{"state":"{state}"{extra},"result_code":"0","result_msg":""}},"version":"{version}"}}}}"#
            ),
        );
    };
    let mut body = None;
    match play {
        Play::Silent => return None,
        Play::Fail => {
            dev.publish(
                &report,
                &format!(
                    r#"{{"type":"report_progress","report":{{"progress":{{"state":"fail","result_code":"-2","result_msg":"link lost"}},"version":"{version}"}}}}"#
                ),
            );
            return None;
        }
        Play::Download => {
            progress("downloading", r#","percent":"10""#);
            let image = http_get(update["url"].as_str().unwrap());
            assert_eq!(md5_hex(&image), update["md5sum"].as_str().unwrap());
            body = Some(image);
        }
        Play::FromGateway => {}
    }
    progress("burning", "");
    progress("done", "");
    body
}

/// Plays every device at once; returns what each downloaded.
fn play_all(
    device: fn(&str, &str, Play) -> Option<Vec<u8>>,
    devices: &[(&str, &str, Play)],
) -> Vec<Option<Vec<u8>>> {
    let runs: Vec<_> = devices
        .iter()
        .map(|&(pk, dn, play)| {
            let (pk, dn) = (pk.to_string(), dn.to_string());
            thread::spawn(move || device(&pk, &dn, play))
        })
        .collect();
    runs.into_iter().map(|r| r.join().unwrap()).collect()
}

fn image<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("image {name} in {report}"))
}

fn device<'a>(report: &'a Value, dn: &str) -> &'a Value {
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dn"] == dn)
        .unwrap_or_else(|| panic!("device {dn} in {report}"))
}

#[test]
fn eight_aliyun_sub_devices_upgrade_and_each_download_is_counted() {
    let dir = std::env::temp_dir().join(format!("ota-fleet-{}-eight", std::process::id()));
    let run = start_fleet(&[
        "--platform",
        "aliyun",
        "--sub-devices",
        "8",
        "--product-key",
        "pkA8",
        "--name-prefix",
        "a8-",
        "--version",
        "2.0.0",
        "--firmware-size",
        "30000",
        "--write-firmware-dir",
        dir.to_str().unwrap(),
        "--timeout",
        "20",
        "--json",
    ]);
    let names: Vec<String> = (1..=8).map(|i| format!("a8-0{i}")).collect();
    let plays: Vec<_> = names
        .iter()
        .map(|dn| ("pkA8", dn.as_str(), Play::Download))
        .collect();
    let got = play_all(aliyun_device, &plays);
    let done = run.finish();
    assert_eq!(done.code, Some(0), "{:?}", done.stderr);
    let report = done.json();
    assert_eq!(report["success"], true);
    assert_eq!(
        (report["upgraded"].as_u64(), report["failed"].as_u64()),
        (Some(8), Some(0))
    );
    for (dn, body) in names.iter().zip(&got) {
        let d = device(&report, dn);
        assert_eq!(d["state"], "upgraded", "{d}");
        assert_eq!(d["version"], "2.0.0");
        assert_eq!(d["image"], "firmware.bin");
        // What the device downloaded is what the fleet wrote for it.
        let written = std::fs::read(dir.join(format!("{dn}.bin"))).unwrap();
        assert_eq!(Some(&written), body.as_ref());
    }
    let shared = image(&report, "firmware.bin");
    assert_eq!(shared["size"], 30000);
    assert_eq!(shared["md5"], md5_hex(got[0].as_ref().unwrap()));
    assert_eq!(shared["requests"], 8);
    assert_eq!(shared["full_downloads"], 8);
    assert_eq!(report["bytes_served"], 8 * 30000);
    assert_eq!(report["requests"].as_array().unwrap().len(), 8);
    assert!(
        done.stderr
            .iter()
            .any(|l| l == "HTTP downloads served per image: firmware.bin 8"),
        "{:?}",
        done.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tencent_gateway_fetches_the_shared_image_once_and_its_own_once() {
    let run = start_fleet(&[
        "--platform",
        "tencent",
        "--devices",
        "pkT/t-1,pkT/t-2,pkT/t-3,pkT/t-4,pkT/t-5",
        "--gateway",
        "pkT/t-gw",
        "--gateway-version",
        "9.1.0",
        "--gateway-firmware-size",
        "12345",
        "--version",
        "2.0.0",
        "--firmware-size",
        "20000",
        "--timeout",
        "4",
        "--json",
    ]);
    let got = play_all(
        tencent_device,
        &[
            ("pkT", "t-gw", Play::Download),
            ("pkT", "t-1", Play::Download),
            ("pkT", "t-2", Play::FromGateway),
            ("pkT", "t-3", Play::FromGateway),
            ("pkT", "t-4", Play::FromGateway),
            ("pkT", "t-5", Play::Silent),
        ],
    );
    let done = run.finish();
    // t-5 never finished: not every device upgraded.
    assert_eq!(done.code, Some(1));
    let report = done.json();
    assert_eq!(
        (
            report["upgraded"].as_u64(),
            report["failed"].as_u64(),
            report["waiting"].as_u64()
        ),
        (Some(5), Some(0), Some(1))
    );
    let silent = device(&report, "t-5");
    assert_eq!(silent["state"], "waiting");
    assert!(
        silent["why"].as_str().unwrap().contains("progress"),
        "{silent}"
    );
    assert_eq!(device(&report, "t-2")["version"], "2.0.0");
    assert_eq!(silent["version"], "1.0.0");
    let gw = device(&report, "t-gw");
    assert_eq!(
        (&gw["gateway"], &gw["image"]),
        (&Value::Bool(true), &Value::from("t-gw.bin"))
    );
    assert_eq!(
        (&gw["target_version"], &gw["version"]),
        (&Value::from("9.1.0"), &Value::from("9.1.0"))
    );
    let gw_image = image(&report, "t-gw.bin");
    assert_eq!(gw_image["size"], 12345);
    assert_eq!(gw_image["md5"], md5_hex(got[0].as_ref().unwrap()));
    assert_eq!(gw_image["full_downloads"], 1);
    let shared = image(&report, "firmware.bin");
    assert_ne!(shared["md5"], gw_image["md5"]);
    assert_eq!(
        (&shared["requests"], &shared["full_downloads"]),
        (&Value::from(1), &Value::from(1))
    );
    assert!(
        done.stderr
            .iter()
            .any(|l| l == "HTTP downloads served per image: firmware.bin 1 t-gw.bin 1"),
        "{:?}",
        done.stderr
    );
}

#[test]
fn a_device_that_reports_failure_is_counted_failed_and_the_exit_status_is_1() {
    let run = start_fleet(&[
        "--devices",
        "pkF/f-1,pkF/f-2,pkF/f-3,pkF/f-4",
        "--version",
        "2.0.0",
        "--firmware-size",
        "5000",
        "--timeout",
        "20",
    ]);
    play_all(
        aliyun_device,
        &[
            ("pkF", "f-1", Play::Download),
            ("pkF", "f-2", Play::Download),
            ("pkF", "f-3", Play::Fail),
            ("pkF", "f-4", Play::Download),
        ],
    );
    let done = run.finish();
    assert_eq!(done.code, Some(1));
    let out = &done.stdout;
    // Plain lines: one per change of a device's state.
    for line in [
        "fleet: pkF/f-3: waiting for version",
        "fleet: pkF/f-3: announced",
        "fleet: pkF/f-3: failed: link lost",
        "fleet: pkF/f-1: downloading 50%",
        "fleet: pkF/f-1: verified",
        "fleet: pkF/f-1: upgraded",
        "  pkF/f-3 failed: device reported failure -2: link lost",
        "HTTP downloads served per image: firmware.bin 3",
        "HTTP bytes served in total: 15000",
    ] {
        assert_eq!(
            out.iter().filter(|l| *l == line).count(),
            1,
            "{line:?} once in {out:?}"
        );
    }
    assert!(
        out.iter()
            .any(|l| l.starts_with("fleet: 4 devices: 3 upgraded, 1 failed, 0 still waiting")),
        "{out:?}"
    );
}

#[test]
fn distinct_images_have_their_own_paths_and_digests() {
    let run = start_fleet(&[
        "--platform",
        "aliyun",
        "--devices",
        "pkD/d-1,pkD/d-2,pkD/d-3",
        "--distinct",
        "--version",
        "3.0.0",
        "--firmware-size",
        "4096",
        "--timeout",
        "20",
        "--json",
    ]);
    let got = play_all(
        aliyun_device,
        &[
            ("pkD", "d-1", Play::Download),
            ("pkD", "d-2", Play::Download),
            ("pkD", "d-3", Play::Download),
        ],
    );
    let done = run.finish();
    assert_eq!(done.code, Some(0), "{:?}", done.stderr);
    let report = done.json();
    let mut digests = std::collections::HashSet::new();
    for (dn, body) in ["d-1", "d-2", "d-3"].iter().zip(&got) {
        let body = body.as_ref().unwrap();
        assert_eq!(body.len(), 4096);
        let img = image(&report, &format!("{dn}.bin"));
        assert_eq!(img["md5"], md5_hex(body));
        assert_eq!(img["full_downloads"], 1);
        assert_eq!(device(&report, dn)["image"], format!("{dn}.bin"));
        digests.insert(md5_hex(body));
    }
    assert_eq!(digests.len(), 3, "three different images");
    assert_eq!(report["images"].as_array().unwrap().len(), 3);
}

#[test]
fn fleet_usage_errors_exit_2() {
    let broker = format!("127.0.0.1:{}", broker_port());
    let base = ["fleet", "--broker", &broker, "--version", "2.0.0"];
    for (extra, says) in [
        (&["--firmware-size", "10"][..], "--devices"),
        (
            &["--devices", "p/a,p/a", "--firmware-size", "10"][..],
            "twice",
        ),
        (
            &["--devices", "p/a,q/a", "--firmware-size", "10"][..],
            "twice",
        ),
        (&["--devices", "p", "--firmware-size", "10"][..], "PK/DN"),
        (
            &["--sub-devices", "0", "--firmware-size", "10"][..],
            "sub-devices",
        ),
        (
            &[
                "--sub-devices",
                "2",
                "--firmware",
                "/dev/null",
                "--distinct",
            ][..],
            "--distinct",
        ),
        (
            &[
                "--devices",
                "p/a",
                "--firmware-size",
                "10",
                "--gateway",
                "p/a",
            ][..],
            "twice",
        ),
        (
            &[
                "--devices",
                "p/a",
                "--firmware-size",
                "10",
                "--gateway-version",
                "3",
            ][..],
            "--gateway",
        ),
    ] {
        let out = Command::new(BIN).args(base).args(extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

#[test]
fn the_table_is_drawn_on_a_terminal() {
    let cmd = format!(
        "{BIN} fleet --broker 127.0.0.1:{} --devices pkY/y-1,pkY/y-2 --version 2.0.0 \
         --firmware-size 100 --timeout 1",
        broker_port()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script runs (it gives the test a terminal)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("fleet: 2 devices: 0 upgraded, 0 failed"),
        "{shown}"
    );
    assert!(shown.contains("pkY/y-1  waiting for version"), "{shown}");
    // Redrawn in place (cursor up), not one line per change.
    assert!(shown.contains("\x1b[3A"), "{shown}");
    assert!(!shown.contains("fleet: pkY/y-1: "), "{shown}");
    assert!(
        shown.contains("fleet: 2 devices: 0 upgraded, 0 failed, 2 still waiting"),
        "{shown}"
    );
}

#[test]
fn fleet_is_documented_in_help() {
    let out = Command::new(BIN).arg("help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("fleet") && help.contains("ota-cloud help fleet"),
        "{help}"
    );
    for args in [&["fleet", "--help"][..], &["help", "fleet"][..]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for word in [
            "--broker <HOST:PORT>",
            "--platform <PLATFORM>",
            "--devices <PK/DN,PK/DN,...>",
            "--sub-devices <N>",
            "--product-key <PK>",
            "--name-prefix <PREFIX>",
            "--version <V>",
            "--firmware <FILE>",
            "--firmware-size <BYTES>",
            "--distinct",
            "--gateway <PK/DN>",
            "--gateway-version <V>",
            "--gateway-firmware-size <BYTES>",
            "--write-firmware-dir <DIR>",
            "--timeout <SECONDS>",
            "--json",
            "sub-01..sub-16",
            "HTTP downloads served per image",
            READY,
        ] {
            assert!(help.contains(word), "{word} in {args:?}: {help}");
        }
    }
}

/// Plays `n` Aliyun sub-devices over one MQTT connection, as a gateway does: the first one
/// announced downloads the image, the others install the gateway's copy.
fn aliyun_gateway(pk: &str, names: &[String]) -> usize {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(format!("gateway-{pk}"), "127.0.0.1", broker_port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 1024);
    client
        .subscribe(format!("/ota/device/upgrade/{pk}/+"), QoS::AtLeastOnce)
        .unwrap();
    let mut downloads = 0;
    let mut informed = false;
    // Every publish acknowledged (3 per device) before the connection goes: what is still
    // queued in the client leaves only while its event loop runs.
    let mut acks = 0;
    for event in connection.iter() {
        match event.expect("the gateway's connection holds") {
            Event::Incoming(Packet::SubAck(_)) if !informed => {
                informed = true;
                for dn in names {
                    client
                        .publish(
                            format!("/ota/device/inform/{pk}/{dn}"),
                            QoS::AtLeastOnce,
                            false,
                            r#"{"id":1,"params":{"version":"1.0.0"}}"#,
                        )
                        .unwrap();
                }
            }
            Event::Incoming(Packet::PubAck(_)) => {
                acks += 1;
                if acks == 3 * names.len() {
                    break;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let dn = p.topic.rsplit('/').next().unwrap().to_string();
                let msg: Value = serde_json::from_slice(&p.payload).unwrap();
                if downloads == 0 {
                    let image = http_get(msg["data"]["url"].as_str().unwrap());
                    assert_eq!(md5_hex(&image), msg["data"]["md5"].as_str().unwrap());
                    downloads += 1;
                }
                let version = msg["data"]["version"].as_str().unwrap();
                for (kind, payload) in [
                    (
                        "progress",
                        r#"{"id":2,"params":{"step":"100","desc":""}}"#.to_string(),
                    ),
                    (
                        "inform",
                        format!(r#"{{"id":3,"params":{{"version":"{version}"}}}}"#),
                    ),
                ] {
                    let topic = format!("/ota/device/{kind}/{pk}/{dn}");
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .unwrap();
                }
            }
            _ => {}
        }
    }
    downloads
}

#[test]
fn two_hundred_fifty_six_sub_devices_behind_one_gateway_connection() {
    let run = start_fleet(&[
        "--sub-devices",
        "256",
        "--product-key",
        "pk256",
        "--version",
        "2.0.0",
        "--firmware-size",
        "64000",
        "--timeout",
        "60",
        "--json",
    ]);
    let names: Vec<String> = (1..=256).map(|i| format!("sub-{i:03}")).collect();
    let downloads = aliyun_gateway("pk256", &names);
    assert_eq!(downloads, 1);
    let done = run.finish();
    assert_eq!(done.code, Some(0), "{:?}", done.stderr);
    let report = done.json();
    assert_eq!(report["upgraded"], 256);
    assert_eq!(device(&report, "sub-256")["state"], "upgraded");
    let shared = image(&report, "firmware.bin");
    assert_eq!(
        (&shared["requests"], &shared["full_downloads"]),
        (&Value::from(1), &Value::from(1))
    );
}
