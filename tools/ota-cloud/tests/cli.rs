//! The `ota-cloud` binary: usage errors and `serve` against a fake device.

mod common;

use std::process::{Command, Stdio};

use common::{assert_plain, broker_port, serve_lines, FakeDevice, HttpConn, BIN};
use ota_cloud::generate_firmware;
use ota_cloud::imgtool::{Imgtool, Layout};

/// Runs the binary with `args`; its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_plain(&String::from_utf8_lossy(&out.stdout));
    assert_plain(&stderr);
    (out.status.code(), stderr)
}

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
            "bogus",
        ][..],
        &["demo", "--device", "java"][..],
        &["demo", "--protocol", "bogus"][..],
        &["demo", "--protocol", "tencent", "--sign-method", "sha256"][..],
        &["demo", "--supersede-at", "50:2.0.0"][..],
        &["demo", "--renotify-at", "x"][..],
        &["demo", "--tamper"][..],
        &["demo", "--signed", "--tamper=flip"][..],
        &["demo", "--signed=rsa-2048"][..],
        &["demo", "--signed", "ed25519"][..],
        &["demo", "--signed", "--supersede-at", "50"][..],
        &["broker", "--port"][..],
        &["sign"][..],
        &["sign", "--key", "k.pem", "in.bin", "out.bin"][..],
        &["sign", "--key", "k.pem", "--version", "1.0.0", "in.bin"][..],
        &SIGN_BASE[..],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}");
        // The usage, or where to find it.
        assert!(
            stderr.contains("Usage: ota-cloud") || stderr.contains("try '--help'"),
            "{args:?}: {stderr}"
        );
    }
    // Options that do not fit the protocol, or bad values.
    for extra in [
        &["--module", "MCU"][..],
        &["--protocol", "tencent", "--module", "MCU"][..],
        &["--protocol", "ucloud", "--sign-method", "sha256"][..],
        &["--protocol", "sagoo", "--sign-method", "sha1"][..],
        &["--protocol", "sagoo", "--current-version", "0.9"][..],
        &["--protocol", "sagoo", "--module", ""][..],
        &["--stall-at", "100"][..],
        &["--stall-at", "x:5"][..],
        &["--cut-at", "10,,20"][..],
        &["--random-cuts", "3:"][..],
        &["--status", "42"][..],
        &["--fail-first", "503,x"][..],
        &["--expire-after", "1", "--expire-after-s", "2"][..],
        &["--expire-after-s", "-1"][..],
        &["--ignore-range", "yes"][..],
        &["--endless-body", "yes"][..],
        &["--content-length", "-1"][..],
        &["--slow-head-ms", "x"][..],
        &["--huge-head", "1k"][..],
        &["--redirect"][..],
        &["--supersede-at", "101"][..],
        &["--supersede-at", "x"][..],
        &["--supersede-at", "50:"][..],
        &["--supersede-at", "50:2"][..],
        &["--renotify-at", "-1"][..],
        &["--renotify-at"][..],
        &["--grace-ms", "2s"][..],
        &["--ignore-requests", "yes"][..],
        &["--grace-ms", "1", "--grace-ms", "2"][..],
        &["--firmware", "/nonexistent"][..],
        &["--write-firmware", "x", "--firmware", "y"][..],
    ] {
        let args = [&SERVE_BASE[..], extra].concat();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{extra:?}: {stderr}");
    }
}

/// `sign` with every required flag but the files.
const SIGN_BASE: [&str; 5] = ["sign", "--key", "k.pem", "--version", "1.0.0"];

#[test]
fn sign_usage_errors_name_the_flag() {
    for (extra, named) in [
        (&["--header-size", "16"][..], "16 is not a header size"),
        (
            &["--header-size", "0x10000"][..],
            "0x10000 is not a header size",
        ),
        (&["--header-size", "0x2g0"][..], "is not a byte count"),
        (&["--align", "3"][..], "not an alignment imgtool takes"),
        (&["--slot-size", "-1"][..], "is not a byte count"),
        (
            &["--keygen", "rsa-2048"][..],
            "'rsa-2048' for '--keygen <TYPE>'",
        ),
        (
            &["--security-counter", "x"][..],
            "'x' for '--security-counter <N>'",
        ),
    ] {
        let args = [&SIGN_BASE[..], extra, &["in.bin", "out.bin"]].concat();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(named), "{named:?} in {stderr}");
    }
}

/// A PATH on which no imgtool can be found.
fn path_without_imgtool() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ota-cloud-cli-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sign_and_the_signed_demo_without_imgtool_name_the_pip_package() {
    let empty = path_without_imgtool();
    for args in [
        &[
            "sign",
            "--key",
            "k.pem",
            "--version",
            "1.0.0",
            "in.bin",
            "out.bin",
        ][..],
        // Before anything is built.
        &["demo", "--signed"][..],
        &["demo", "--signed=ed25519", "--tamper=key", "--device", "c"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env("PATH", &empty)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("imgtool")
                && stderr.contains("PyPI package `imgtool`")
                && stderr.contains("pip install imgtool"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("cargo"), "nothing built: {stderr}");
    }
    let _ = std::fs::remove_dir(empty);
}

/// `imgtool` when it runs; `None` (the test skips) when it does not, unless
/// OTA_REQUIRE_IMGTOOL=required (CI), where the test fails.
fn imgtool(test: &str) -> Option<Imgtool> {
    match Imgtool::find() {
        Ok(tool) => Some(tool),
        Err(e) if std::env::var("OTA_REQUIRE_IMGTOOL").as_deref() == Ok("required") => {
            panic!("{test}: OTA_REQUIRE_IMGTOOL=required: {e}")
        }
        Err(e) => {
            println!("SKIPPED {test}: {e} (OTA_REQUIRE_IMGTOOL=required makes this fail)");
            None
        }
    }
}

#[test]
fn sign_makes_keys_and_images_that_imgtool_verifies() {
    let Some(tool) = imgtool("sign_makes_keys_and_images_that_imgtool_verifies") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("ota-cloud-cli-sign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let payload = generate_firmware(100_003);
    let input = dir.join("app.bin");
    std::fs::write(&input, &payload).unwrap();
    // (key type, --header-size, its value, --version, the header's version, --security-counter)
    for (key_type, header, header_size, version, version_text, counter) in [
        (
            "ecdsa-p256",
            "0x200",
            0x200,
            "2.1.0+7",
            "2.1.0+7",
            Some("5"),
        ),
        ("ed25519", "64", 64, "3", "3.0.0", None),
    ] {
        let key = dir.join(format!("{key_type}.pem"));
        let public = dir.join(format!("{key_type}.pub.pem"));
        let output = dir.join(format!("{key_type}-signed.bin"));
        let (key_s, input_s, output_s) = (
            key.to_str().unwrap(),
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        );
        let mut args = vec!["sign", "--key", key_s, "--keygen", key_type];
        args.extend(["--version", version, "--header-size", header]);
        if let Some(n) = counter {
            args.extend(["--security-counter", n]);
        }
        args.extend([input_s, output_s]);
        let out = Command::new(BIN).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        assert_plain(&stdout);
        // The exact commands, to copy into a build script.
        for line in [
            format!("imgtool keygen -k {key_s} -t {key_type}"),
            format!("imgtool getpub -k {key_s} -e pem -o {}", public.display()),
            format!("imgtool sign --key {key_s} --header-size {header_size:#x} --pad-header"),
            format!("--version {version} "),
            format!(" {input_s} {output_s}"),
        ] {
            assert!(stdout.contains(&line), "{line:?} in {stdout}");
        }
        assert!(
            stdout.contains(&format!("version {version_text}")),
            "{stdout}"
        );

        let image = std::fs::read(&output).unwrap();
        let layout = Layout::of(&image).expect("an MCUboot image");
        assert_eq!(layout.header_size, header_size);
        assert_eq!(layout.payload_size, payload.len() as u64);
        assert_eq!(
            &image[header_size as usize..][..payload.len()],
            &payload[..]
        );
        assert_eq!(layout.version_text(), version_text);
        // Only the security counter is protected here.
        assert_eq!(layout.protected_size > 0, counter.is_some());
        // imgtool itself accepts it with the public key `sign` wrote, and with no other key.
        let verified = tool.verify(&public, &output).unwrap();
        assert!(verified.contains("correctly validated"), "{verified}");
        let other = dir.join(format!("{key_type}-other.pem"));
        tool.keygen(&other, key_type.parse().unwrap()).unwrap();
        assert!(tool.verify(&other, &output).is_err());
    }

    // --keygen never replaces a key; without it the key must exist.
    let key = dir.join("ed25519.pem");
    let before = std::fs::read(&key).unwrap();
    let (input_s, out_s) = (input.to_str().unwrap(), dir.join("x.bin"));
    let out_s = out_s.to_str().unwrap();
    let missing = dir.join("missing.pem");
    for (key_arg, keygen, named) in [
        (&key, &["--keygen", "ed25519"][..], "is not overwritten"),
        (&missing, &[][..], "does not exist"),
    ] {
        let base = ["sign", "--key", key_arg.to_str().unwrap(), "--version", "1"];
        let args = [&base[..], keygen, &[input_s, out_s]].concat();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(stderr.contains(named), "{named:?} in {stderr}");
    }
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert!(!missing.exists());
    // imgtool's own refusal, passed on: the image does not fit the slot.
    let key_s = key.to_str().unwrap();
    let (code, stderr) = run(&[
        "sign",
        "--key",
        key_s,
        "--version",
        "1",
        "--slot-size",
        "0x1000",
        input_s,
        out_s,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("exceeds requested size"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_announces_an_imgtool_signed_file_as_it_is() {
    // Committed by tests/fixtures/mcuboot/make.sh: readable where imgtool is missing.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/mcuboot/ecdsa-p256.bin");
    let image = std::fs::read(&path).unwrap();
    assert!(Layout::of(&image).is_some(), "an MCUboot image");
    let path = path.to_str().unwrap().to_string();
    let code = serve("cli-signed", &["--firmware", &path], |dev, url| {
        dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
        let msg = dev.next_upgrade();
        // The file's own size and digest: the signature inside is the device's business.
        assert_eq!(msg["data"]["size"], image.len());
        assert_eq!(msg["data"]["md5"], ota_cloud::md5_hex(&image));
        assert_eq!(common::http_get(url), image);
        dev.send("progress", r#"{"id":2,"params":{"step":"100"}}"#);
        dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
    });
    assert_eq!(code, Some(0));
}

/// `serve` with every required flag (and a broker nobody listens on).
const SERVE_BASE: [&str; 11] = [
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
];

#[test]
fn a_bad_flag_or_value_is_named_in_the_error() {
    for (args, named) in [
        (&["serve", "--bogus"][..], "'--bogus'"),
        (&["demo", "--cut-at"][..], "'--cut-at <OFFSET[,OFFSET...]>'"),
        (
            &["demo", "--grace-ms", "2s"][..],
            "'2s' for '--grace-ms <MS>'",
        ),
        (
            &["demo", "--renotify-at", "-1"][..],
            "'-1' for '--renotify-at <PERCENT>'",
        ),
        (
            &["demo", "--protocol", "azure"][..],
            "'azure' for '--protocol <PROTOCOL>'",
        ),
        (&["demo", "--status", "42"][..], "42 is not an HTTP status"),
        (
            &["demo", "--stall-at", "100"][..],
            "'100' for '--stall-at <OFFSET:MS>'",
        ),
        (
            &["broker", "--port", "70000"][..],
            "'70000' for '--port <P>'",
        ),
        (
            &["demo", "--expire-after", "1", "--expire-after-s", "2"][..],
            "'--expire-after <N>' cannot be used with '--expire-after-s <SECONDS>'",
        ),
        (
            &["demo", "--supersede-at", "50:2.0.0"][..],
            "--supersede-at: the new upgrade",
        ),
        (
            &["demo", "--protocol", "tencent", "--sign-method", "sha256"][..],
            "--protocol tencent",
        ),
        (
            &SERVE_BASE[..9],
            "--firmware <FILE>|--firmware-size <BYTES>",
        ),
        (&["serv"][..], "'serv'"),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(stderr.contains(named), "{named:?} in {stderr}");
    }
    // Close to a real flag: the error suggests it.
    let (_, stderr) = run(&["demo", "--renotify", "50"]);
    assert!(stderr.contains("--renotify-at"), "{stderr}");
}

#[test]
fn help_of_each_subcommand() {
    // `help` is what run_fault_matrix.sh greps for the run flags and the outcome lines.
    for args in [&["help"][..], &["--help"][..]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert_plain(&help);
        for word in [
            "serve",
            "broker",
            "demo",
            "sign",
            "--supersede-at",
            "--renotify-at",
            "--ignore-requests",
            "--grace-ms",
            "'outcome: success VERSION'",
            "'outcome: failed VERSION reports=N desc=DESC'",
            "'outcome: timeout'",
            "'violation: ...'",
            "2 usage error",
        ] {
            assert!(help.contains(word), "{word} in {args:?}");
        }
    }
    let run_and_faults = [
        "--supersede-at <PERCENT[:VERSION]>",
        "--renotify-at <PERCENT>",
        "--ignore-requests",
        "--grace-ms <MS>",
        "--cut-at <OFFSET[,OFFSET...]>",
        "--random-cuts <N[:SEED]>",
        "--stall-ms <MS>",
        "--stall-at <OFFSET:MS>",
        "--short-body <BYTES>",
        "--flip-at <OFFSET>",
        "--ignore-range",
        "--status <CODE>",
        "--fail-first <CODE[,CODE...]>",
        "--close-before-headers <N>",
        "--expire-after <N>",
        "--expire-after-s <SECONDS>",
        "--redirect <LOCATION>",
        "--endless-body",
        "--content-length <BYTES>",
        "--slow-head-ms <MS>",
        "--huge-head <BYTES>",
        "--quiet",
        "--json",
        "aliyun, sagoo, tencent, ucloud",
    ];
    let serve_own = [
        "--broker <HOST:PORT>",
        "--product-key <PK>",
        "--device-name <DN>",
        "--version <V>",
        "--firmware <FILE>",
        "--firmware-size <BYTES>",
        "--write-firmware <PATH>",
        "--timeout-s <SECONDS>",
        "--module <M>",
        "--sign-method <METHOD>",
        "--current-version <X>",
    ];
    let demo_own = [
        "--device <DEVICE>",
        "--size <BYTES>",
        "--timeout-s <SECONDS>",
        "--signed[=<TYPE>]",
        "--tamper[=<WHAT>]",
        "ecdsa-p256, ed25519",
        "payload, signature, key, unsigned, downgrade",
    ];
    let sign_own = vec![
        "--key <KEY>",
        "--keygen <TYPE>",
        "--public-key <PEM>",
        "--version <V>",
        "--security-counter <N>",
        "--header-size <BYTES>",
        "--align <N>",
        "--slot-size <BYTES>",
        "<INPUT>",
        "<OUTPUT>",
        "imgtool keygen",
        "imgtool getpub",
        "imgtool sign",
        "PyPI package `imgtool`",
        "IOT_OTAC_ADD_IMAGE_KEY",
    ];
    for (args, words) in [
        (
            &["serve", "--help"][..],
            [&serve_own[..], &run_and_faults].concat(),
        ),
        (
            &["help", "serve"][..],
            [&serve_own[..], &run_and_faults].concat(),
        ),
        (
            &["demo", "--help"][..],
            [&demo_own[..], &run_and_faults].concat(),
        ),
        (&["broker", "--help"][..], vec!["--port <P>"]),
        (&["sign", "--help"][..], sign_own),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert_plain(&help);
        for word in words {
            assert!(help.contains(word), "{word} in {args:?}");
        }
    }
}

/// Runs `serve` for device `dn`; returns its exit code after `script` played the device.
fn serve(dn: &str, extra: &[&str], script: impl FnOnce(&FakeDevice, &str)) -> Option<i32> {
    serve_on(dn, &format!("/ota/device/upgrade/pk/{dn}"), extra, script).0
}

/// Like [`serve`], with the fake device subscribed to `downstream`; also returns stderr.
fn serve_on(
    dn: &str,
    downstream: &str,
    extra: &[&str],
    script: impl FnOnce(&FakeDevice, &str),
) -> (Option<i32>, String) {
    let (code, stderr, _) = serve_full(dn, downstream, extra, script);
    (code, stderr)
}

/// Like [`serve_on`]; also returns what `serve` printed before the device started.
fn serve_full(
    dn: &str,
    downstream: &str,
    extra: &[&str],
    script: impl FnOnce(&FakeDevice, &str),
) -> (Option<i32>, String, Vec<String>) {
    let (code, stderr, startup, _) = serve_lines(dn, downstream, extra, script);
    (code, stderr, startup)
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
    let (code, _, _, after) = serve_lines(
        "cli-fail",
        "/ota/device/upgrade/pk/cli-fail",
        &["--firmware-size", "1000", "--grace-ms", "300"],
        |dev, _| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            dev.next_upgrade();
            dev.send(
                "progress",
                r#"{"id":2,"params":{"step":"-3","desc":"md5 mismatch"}}"#,
            );
        },
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        outcome_lines(&after),
        ["outcome: failed 2.0.0 reports=1 desc=md5 mismatch"]
    );
    assert!(
        !after.iter().any(|l| l.starts_with("violation:")),
        "{after:?}"
    );
}

/// The `outcome:` lines of `serve`'s output; the last line must be one.
fn outcome_lines(lines: &[String]) -> Vec<&str> {
    assert!(
        lines.last().is_some_and(|l| l.starts_with("outcome: ")),
        "{lines:?}"
    );
    lines
        .iter()
        .filter(|l| l.starts_with("outcome:"))
        .map(String::as_str)
        .collect()
}

#[test]
fn serve_json_reports_the_run_after_the_outcome_line() {
    let (code, _, _, after) = serve_lines(
        "cli-json",
        "/ota/device/upgrade/pk/cli-json",
        &[
            "--firmware-size",
            "1000",
            "--grace-ms",
            "300",
            "--json",
            "--quiet",
        ],
        |dev, _| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            dev.next_upgrade();
            dev.send(
                "progress",
                r#"{"id":2,"params":{"step":"-3","desc":"md5 mismatch"}}"#,
            );
        },
    );
    assert_eq!(code, Some(1));
    let [.., outcome, json] = &after[..] else {
        panic!("{after:?}");
    };
    assert_eq!(outcome, "outcome: failed 2.0.0 reports=1 desc=md5 mismatch");
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["protocol"], "aliyun");
    assert_eq!(report["target_version"], "2.0.0");
    assert_eq!(report["failure_reports"], 1);
    assert_eq!(report["failure_desc"], "md5 mismatch");
    assert_eq!(report["success"], false);
    assert_eq!(report["violation"], serde_json::Value::Null);
    assert_eq!(report["versions"], serde_json::json!(["1.0.0"]));
    assert_eq!(report["progress"], serde_json::json!([-3]));
    assert_eq!(report["upgrade_messages_sent"], 1);
    let upgrades = report["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 1);
    assert_eq!(upgrades[0]["size"], 1000);
    assert_eq!(upgrades[0]["first_failure"]["code"], -3);
    assert_eq!(outcome_lines(&after[..after.len() - 1]).len(), 1);
}

#[test]
fn serve_progress_after_a_failure_report_is_a_violation() {
    let (code, _, _, after) = serve_lines(
        "cli-step-after-fail",
        "/ota/device/upgrade/pk/cli-step-after-fail",
        &["--firmware-size", "1000"],
        |dev, _| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            dev.next_upgrade();
            for step in ["-2", "50"] {
                dev.send(
                    "progress",
                    &format!(r#"{{"id":2,"params":{{"step":"{step}","desc":"download failed"}}}}"#),
                );
            }
        },
    );
    assert_eq!(code, Some(1));
    let violations: Vec<_> = after
        .iter()
        .filter(|l| l.starts_with("violation:"))
        .collect();
    assert_eq!(violations.len(), 1, "{after:?}");
    assert!(violations[0].contains("step 50"), "{violations:?}");
    assert_eq!(
        outcome_lines(&after),
        ["outcome: failed 2.0.0 reports=1 desc=download failed"]
    );
}

#[test]
fn serve_ignore_requests_and_renotify_at() {
    let (code, _, startup, after) = serve_lines(
        "cli-renotify",
        "/ota/device/upgrade/pk/cli-renotify",
        &[
            "--firmware-size",
            "30000",
            "--ignore-requests",
            "--renotify-at",
            "50",
        ],
        |dev, url| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            let first = dev.next_upgrade();
            dev.send("request", r#"{"id":2,"params":{"version":"1.0.0"}}"#);
            assert!(dev.nothing_within(std::time::Duration::from_millis(500)));
            assert_eq!(common::http_get(url), generate_firmware(30000));
            assert_eq!(dev.next_upgrade()["data"], first["data"]);
            dev.send("progress", r#"{"id":3,"params":{"step":"100"}}"#);
            dev.send("inform", r#"{"id":4,"params":{"version":"2.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    assert!(
        startup
            .iter()
            .any(|l| l == "milestone: at 15000 bytes sent (50 %), the upgrade is announced again"),
        "{startup:?}"
    );
    assert_eq!(outcome_lines(&after), ["outcome: success 2.0.0"]);
}

#[test]
fn serve_supersede_at_with_sagoo_sha256_announces_a_different_image() {
    let path = std::env::temp_dir().join(format!("ota-cloud-cli-ss-{}.bin", std::process::id()));
    let path_s = path.to_str().unwrap().to_string();
    let first = generate_firmware(40000);
    let next = ota_cloud::milestones::next_image(&first);
    let sha256 = |b: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let progress = |step: &str, desc: &str| {
        format!(r#"{{"id":"p","params":{{"step":"{step}","desc":"{desc}","strategy":"batch-7"}}}}"#)
    };
    let (code, _, startup, after) = serve_lines(
        "cli-supersede",
        "/ota/device/upgrade/pk/cli-supersede",
        &[
            "--firmware-size",
            "40000",
            "--write-firmware",
            &path_s,
            "--protocol",
            "sagoo",
            "--sign-method",
            "sha256",
            "--supersede-at",
            "50:3.0.0",
        ],
        |dev, url| {
            dev.send("inform", r#"{"id":"1","params":{"version":"1.0.0"}}"#);
            let data = dev.next_upgrade()["data"].clone();
            assert_eq!(data["sign"], sha256(&first));
            assert_eq!(common::http_get(url), first);
            let data = dev.next_upgrade()["data"].clone();
            assert_eq!(data["version"], "3.0.0");
            assert_eq!(data["size"], 40000);
            assert_eq!(data["signMethod"], "SHA256");
            assert_eq!(data["sign"], sha256(&next));
            let next_url = data["url"].as_str().unwrap();
            assert!(next_url.ends_with("/firmware-next.bin"), "{next_url}");
            assert_eq!(common::http_get(next_url), next);
            dev.send("progress", &progress("-1", "superseded by 3.0.0"));
            dev.send("progress", &progress("100", ""));
            dev.send("inform", r#"{"id":"2","params":{"version":"3.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    assert!(
        startup
            .iter()
            .any(|l| l
                == "milestone: at 20000 bytes sent (50 %), an upgrade to 3.0.0 supersedes 2.0.0"),
        "{startup:?}"
    );
    assert_eq!(outcome_lines(&after), ["outcome: success 3.0.0"]);
    assert_eq!(std::fs::read(&path).unwrap(), first);
    let next_path = format!("{path_s}.next");
    assert_eq!(std::fs::read(&next_path).unwrap(), next);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(next_path);
}

#[test]
fn serve_sagoo_with_sha256_and_a_module() {
    let code = serve(
        "cli-sagoo",
        &[
            "--firmware-size",
            "3000",
            "--protocol",
            "sagoo",
            "--sign-method",
            "sha256",
            "--module",
            "MCU",
        ],
        |dev, _| {
            dev.send(
                "inform",
                r#"{"id":"1","params":{"version":"1.0.0","module":"MCU"}}"#,
            );
            let data = dev.next_upgrade()["data"].clone();
            assert_eq!(data["signMethod"], "SHA256");
            assert_eq!(data["module"], "MCU");
            assert_eq!(data["sign"].as_str().unwrap().len(), 64);
            dev.send(
                "progress",
                r#"{"id":"2","params":{"step":"100","module":"MCU","strategy":"batch-7"}}"#,
            );
            dev.send(
                "inform",
                r#"{"id":"3","params":{"version":"2.0.0","module":"MCU"}}"#,
            );
        },
    );
    assert_eq!(code, Some(0));
}

#[test]
fn serve_tencent_succeeds_on_done() {
    let dn = "cli-tencent";
    let (code, _) = serve_on(
        dn,
        &format!("$ota/update/pk/{dn}"),
        &["--firmware-size", "3000", "--protocol", "tencent"],
        |dev, _| {
            let report = format!("$ota/report/pk/{dn}");
            dev.publish(
                &report,
                r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
            );
            assert_eq!(dev.next_message().1["type"], "report_version_rsp");
            assert_eq!(dev.next_message().1["type"], "update_firmware");
            for state in ["burning", "done"] {
                dev.publish(
                    &report,
                    &format!(
                        r#"{{"type":"report_progress","report":{{"progress":{{"state":"{state}","result_code":"0","result_msg":""}},"version":"2.0.0"}}}}"#
                    ),
                );
            }
        },
    );
    assert_eq!(code, Some(0));
}

#[test]
fn serve_ucloud_current_version_mismatch_exits_1_with_the_errmsg() {
    let dn = "cli-ucloud";
    let (code, stderr) = serve_on(
        dn,
        &format!("/$system/pk/{dn}/ota/downstream"),
        &[
            "--firmware-size",
            "3000",
            "--protocol",
            "ucloud",
            "--current-version",
            "0.9",
        ],
        |dev, _| {
            let up = format!("/$system/pk/{dn}/ota/upstream");
            dev.publish(&up, r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#);
            let task = dev.next_message().1["Payload"].clone();
            assert_eq!(task["CurrentVersion"], "0.9");
            dev.publish(
                &up,
                &format!(
                    r#"{{"Method":"fail","Payload":{{"TaskID":{},"ErrMsg":"refused: task upgrades from 0.9 but 1.0.0 runs"}}}}"#,
                    task["TaskID"]
                ),
            );
        },
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("refused: task upgrades from 0.9 but 1.0.0 runs"),
        "{stderr}"
    );
}

#[test]
fn serve_reports_a_violation_with_exit_1() {
    let (code, stderr) = serve_on(
        "cli-violation",
        "/ota/device/upgrade/pk/cli-violation",
        &["--firmware-size", "3000", "--protocol", "sagoo"],
        |dev, _| dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#),
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("protocol violation"), "{stderr}");
}

/// The path and query of `http://127.0.0.1:PORT/...`, and the port.
fn split_url(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    (port.parse().unwrap(), format!("/{path}"))
}

#[test]
fn serve_cut_at_a_device_that_resumes_with_range_completes() {
    let (code, _, startup) = serve_full(
        "cli-cut",
        "/ota/device/upgrade/pk/cli-cut",
        &["--firmware-size", "70000", "--cut-at", "20000,50000"],
        |dev, url| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            assert_eq!(dev.next_upgrade()["data"]["url"], url);
            let (port, path) = split_url(url);
            let mut got = Vec::new();
            let mut cuts = Vec::new();
            while got.len() < 70_000 && cuts.len() < 10 {
                let mut conn = HttpConn::open(port);
                let range = format!("bytes={}-", got.len());
                let r = conn.request("GET", &path, &[("Range", &range)]);
                assert_eq!(r.status, 206);
                let announced: usize = r.header("Content-Length").unwrap().parse().unwrap();
                got.extend_from_slice(&r.body);
                if r.body.len() < announced {
                    cuts.push(got.len());
                }
            }
            assert_eq!(cuts, [20_000, 50_000]);
            assert_eq!(got, generate_firmware(70_000));
            dev.send("progress", r#"{"id":2,"params":{"step":"100"}}"#);
            dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    assert!(
        startup
            .iter()
            .any(|l| l.starts_with("fault: ") && l.contains("20000, 50000")),
        "{startup:?}"
    );
}

#[test]
fn serve_expire_after_a_device_that_asks_again_gets_a_fresh_url() {
    let (code, _, startup) = serve_full(
        "cli-expire",
        "/ota/device/upgrade/pk/cli-expire",
        &["--firmware-size", "5000", "--expire-after", "1"],
        |dev, url| {
            assert!(url.ends_with("?token=0"), "{url}");
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            assert_eq!(dev.next_upgrade()["data"]["url"], url);
            let (port, old) = split_url(url);
            let mut conn = HttpConn::open(port);
            let r = conn.request("GET", &old, &[("Range", "bytes=0-1999")]);
            assert_eq!(r.status, 206);
            let mut got = r.body;
            // One request was all the URL was good for.
            let r = conn.request("GET", &old, &[("Range", "bytes=2000-")]);
            assert_eq!(r.status, 403);
            dev.send("request", r#"{"id":2,"params":{"version":"1.0.0"}}"#);
            let data = dev.next_upgrade()["data"].clone();
            let fresh = data["url"].as_str().unwrap();
            assert_ne!(fresh, url);
            assert!(fresh.ends_with("?token=1"), "{fresh}");
            assert_eq!(data["md5"].as_str().unwrap().len(), 32);
            let (_, new) = split_url(fresh);
            let r = conn.request("GET", &new, &[("Range", "bytes=2000-")]);
            assert_eq!(r.status, 206);
            got.extend_from_slice(&r.body);
            assert_eq!(got, generate_firmware(5000));
            assert_eq!(conn.request("GET", &old, &[]).status, 403);
            dev.send("progress", r#"{"id":3,"params":{"step":"100"}}"#);
            dev.send("inform", r#"{"id":4,"params":{"version":"2.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    assert!(
        startup.iter().any(|l| l.contains("expires (403) after 1")),
        "{startup:?}"
    );
}

#[test]
fn serve_prints_the_active_faults() {
    for (flags, expected) in [
        (&[][..], "faults: none"),
        (&["--ignore-range"][..], "fault: Range ignored"),
        (
            &[
                "--random-cuts",
                "3:9",
                "--stall-at",
                "5:10",
                "--fail-first",
                "503,503",
            ][..],
            "fault: the first 2 request(s) answered with 503, 503",
        ),
    ] {
        let (code, _, startup) = serve_full(
            "cli-faults",
            "/ota/device/upgrade/pk/cli-faults",
            &[&["--firmware-size", "100"][..], flags].concat(),
            |dev, url| {
                assert!(!url.contains('?'));
                dev.send("inform", r#"{"id":1,"params":{"version":"2.0.0"}}"#);
            },
        );
        assert_eq!(code, Some(0));
        assert!(
            startup.iter().any(|l| l.starts_with(expected)),
            "{expected:?} in {startup:?}"
        );
    }
}

/// `serve` for `timeout_s` with no device, on a pseudo-terminal (util-linux `script`): what the
/// terminal showed.
fn serve_on_a_terminal(extra: &str) -> String {
    let cmd = format!(
        "{BIN} serve --broker 127.0.0.1:{} --product-key pk --device-name cli-tty \
         --version 2.0.0 --firmware-size 1000 --timeout-s 1 {extra}",
        broker_port()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script runs (it gives the test a terminal)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_unless_quiet() {
    let shown = serve_on_a_terminal("");
    assert!(shown.contains("download "), "{shown}");
    assert!(shown.contains("0 B/1000 B sent"), "{shown}");
    // The narration and the outcome line come through whole, the bar cleared before the end.
    assert!(shown.contains("cloud: playing aliyun"), "{shown}");
    assert!(shown.contains("outcome: timeout"), "{shown}");
    for flag in ["--quiet", "--json"] {
        let shown = serve_on_a_terminal(flag);
        assert!(!shown.contains("download "), "{flag}: {shown}");
        assert!(!shown.contains('\x1b'), "{flag}: {shown}");
        assert!(shown.contains("outcome: timeout"), "{flag}: {shown}");
    }
}

#[test]
fn serve_files_sizes_serves_each_file_and_counts_its_requests() {
    let (code, _, _, after) = serve_lines(
        "cli-files",
        "/ota/device/upgrade/pk/cli-files",
        &["--files-sizes", "1000,2000,3000"],
        |dev, _| {
            dev.send("inform", r#"{"id":1,"params":{"version":"1.0.0"}}"#);
            let msg = dev.next_upgrade();
            let files = msg["data"]["files"].as_array().unwrap().clone();
            assert_eq!(files.len(), 3);
            let mut done = 0;
            for (f, size) in files.iter().zip([1000, 2000, 3000]) {
                assert_eq!(f["fileSize"], size);
                let body = common::http_get(f["fileUrl"].as_str().unwrap());
                assert_eq!(body.len(), size);
                assert_eq!(f["fileSign"], ota_cloud::md5_hex(&body).as_str());
                done += size;
                let step = done * 100 / 6000;
                if step < 100 {
                    dev.send(
                        "progress",
                        &format!(r#"{{"id":2,"params":{{"step":"{step}"}}}}"#),
                    );
                }
            }
            dev.send("progress", r#"{"id":2,"params":{"step":"100"}}"#);
            dev.send("inform", r#"{"id":3,"params":{"version":"2.0.0"}}"#);
        },
    );
    assert_eq!(code, Some(0));
    for want in [
        "http: file1.bin: 1 requests, 1000 of 1000 bytes sent",
        "http: file3.bin: 1 requests, 3000 of 3000 bytes sent",
        "outcome: success 2.0.0",
    ] {
        assert!(after.iter().any(|l| l == want), "{want} in {after:?}");
    }
}

#[test]
fn serve_packages_only_where_the_platform_has_them() {
    let base = [
        "serve",
        "--broker",
        "127.0.0.1:1",
        "--product-key",
        "pk",
        "--device-name",
        "d",
        "--version",
        "2",
    ];
    for (extra, want) in [
        (
            &["--files-sizes", "10,20", "--protocol", "tencent"][..],
            "tencent has no packages",
        ),
        (
            &[
                "--firmware-size",
                "10",
                "--mqtt-download",
                "--protocol",
                "ucloud",
            ][..],
            "ucloud has no packages",
        ),
        (
            &[
                "--firmware-size",
                "10",
                "--mqtt-download",
                "--status",
                "500",
            ][..],
            "--status is an HTTP fault",
        ),
        (
            &["--files-sizes", "10", "--renotify-at", "50"][..],
            "not packages",
        ),
        (
            &[
                "--firmware-size",
                "10",
                "--mqtt-download",
                "--block-size",
                "0",
            ][..],
            "--block-size",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
    }
}
