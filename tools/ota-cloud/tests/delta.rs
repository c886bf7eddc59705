//! `serve --delta-from` and `demo --delta-from`: a delta upgrade is served as the detools
//! sequential patch from the old image to the new one, announced with the patch's size and
//! digest, on every platform. The served bytes are checked against the real detools (the same
//! patch made by the test, applied back to the new image) where detools is importable (always
//! under OTA_REQUIRE_DETOOLS=required, where its absence fails); a ready patch (--delta-patch,
//! the committed fixtures of tests/fixtures/delta/) is served without detools.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{serve_lines, serve_lines_in, FakeDevice, HttpConn, BIN};
use ota_cloud::{generate_firmware, md5_hex, sha256_hex};
use serde_json::Value;

/// detools is importable by `python3`; panics under OTA_REQUIRE_DETOOLS=required when not.
fn detools(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import detools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("OTA_REQUIRE_DETOOLS").as_deref() == Ok("required") {
        panic!("{test}: detools is not importable and OTA_REQUIRE_DETOOLS=required (pip install detools)");
    }
    println!("SKIPPED {test}: detools is not importable (pip install detools; OTA_REQUIRE_DETOOLS=required makes this fail)");
    false
}

/// `tests/fixtures/delta/NAME` (see its MANIFEST).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/delta")
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ota-cloud-delta-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `python3 -m detools ARGS`, which must succeed.
fn run_detools(args: &[&str]) {
    let out = Command::new("python3")
        .args(["-m", "detools"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "detools {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the platform offered: where, how large, which digest.
#[derive(Debug)]
struct Offer {
    url: String,
    size: u64,
    /// md5 (sagoo: sha256 with --sign-method sha256), lowercase hex.
    digest: String,
    /// UCloud's task.
    task: Option<String>,
    /// SagooIOT's batch id, which progress reports echo.
    strategy: Option<String>,
}

/// The device side of each platform, as far as these tests need it.
#[derive(Debug, Clone, Copy)]
enum Platform {
    Aliyun,
    /// With --sign-method sha256.
    Sagoo,
    Tencent,
    Ucloud,
}

impl Platform {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Platform::Aliyun => &["--protocol", "aliyun"],
            Platform::Sagoo => &["--protocol", "sagoo", "--sign-method", "sha256"],
            Platform::Tencent => &["--protocol", "tencent"],
            Platform::Ucloud => &["--protocol", "ucloud"],
        }
    }

    fn downstream(self, dn: &str) -> String {
        match self {
            Platform::Aliyun | Platform::Sagoo => format!("/ota/device/upgrade/pk/{dn}"),
            Platform::Tencent => format!("$ota/update/pk/{dn}"),
            Platform::Ucloud => format!("/$system/pk/{dn}/ota/downstream"),
        }
    }

    fn upstream(self, dn: &str, kind: &str) -> String {
        match self {
            Platform::Aliyun | Platform::Sagoo => format!("/ota/device/{kind}/pk/{dn}"),
            Platform::Tencent => format!("$ota/report/pk/{dn}"),
            Platform::Ucloud => format!("/$system/pk/{dn}/ota/upstream"),
        }
    }

    /// Reports version 1.0.0; the upgrade the platform answers with.
    fn offer(self, dev: &FakeDevice, dn: &str) -> Offer {
        let up = self.upstream(dn, "inform");
        let field = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
        match self {
            Platform::Aliyun | Platform::Sagoo => {
                dev.publish(&up, r#"{"id":"1","params":{"version":"1.0.0"}}"#);
                let data = dev.next_upgrade()["data"].clone();
                let digest = match self {
                    Platform::Sagoo => {
                        assert_eq!(data["signMethod"], "SHA256");
                        field(&data, "sign")
                    }
                    _ => field(&data, "md5"),
                };
                Offer {
                    url: field(&data, "url"),
                    size: data["size"].as_u64().unwrap(),
                    digest,
                    task: None,
                    strategy: data["extData"]["strategy"].as_str().map(str::to_string),
                }
            }
            Platform::Tencent => {
                dev.publish(
                    &up,
                    r#"{"type":"report_version","report":{"version":"1.0.0"}}"#,
                );
                assert_eq!(dev.next_message().1["type"], "report_version_rsp");
                let msg = dev.next_message().1;
                assert_eq!(msg["type"], "update_firmware");
                Offer {
                    url: field(&msg, "url"),
                    size: msg["file_size"].as_u64().unwrap(),
                    digest: field(&msg, "md5sum"),
                    task: None,
                    strategy: None,
                }
            }
            Platform::Ucloud => {
                dev.publish(&up, r#"{"Method":"report","Payload":{"Version":"1.0.0"}}"#);
                let task = dev.next_message().1["Payload"].clone();
                Offer {
                    url: field(&task, "URL"),
                    size: task["Size"].as_u64().unwrap(),
                    digest: field(&task, "MD5"),
                    task: Some(field(&task, "TaskID")),
                    strategy: None,
                }
            }
        }
    }

    /// What the device says once it has written and checked the new image.
    fn complete(self, dev: &FakeDevice, dn: &str, offer: &Offer) {
        match self {
            Platform::Aliyun | Platform::Sagoo => {
                let strategy = offer
                    .strategy
                    .as_ref()
                    .map_or(String::new(), |s| format!(r#","strategy":"{s}""#));
                dev.publish(
                    &self.upstream(dn, "progress"),
                    &format!(r#"{{"id":"2","params":{{"step":"100"{strategy}}}}}"#),
                );
                dev.publish(
                    &self.upstream(dn, "inform"),
                    r#"{"id":"3","params":{"version":"2.0.0"}}"#,
                );
            }
            Platform::Tencent => {
                for state in ["burning", "done"] {
                    dev.publish(
                        &self.upstream(dn, ""),
                        &format!(
                            r#"{{"type":"report_progress","report":{{"progress":{{"state":"{state}","result_code":"0","result_msg":""}},"version":"2.0.0"}}}}"#
                        ),
                    );
                }
            }
            Platform::Ucloud => {
                let task = offer.task.as_deref().unwrap();
                for method in ["notify", "upgrading", "success"] {
                    dev.publish(
                        &self.upstream(dn, ""),
                        &format!(r#"{{"Method":"{method}","Payload":{{"TaskID":"{task}"}}}}"#),
                    );
                }
            }
        }
    }

    /// The digest the platform announces for `bytes`.
    fn digest(self, bytes: &[u8]) -> String {
        match self {
            Platform::Sagoo => sha256_hex(bytes),
            _ => md5_hex(bytes),
        }
    }
}

/// The `delta:` line for these sizes, computed here.
fn delta_line(old: usize, new: usize, patch: usize, compression: &str) -> String {
    format!(
        "delta: old {old} bytes, new {new} bytes, patch {patch} bytes (P/M = {:.2}), compression {compression}",
        patch as f64 / new as f64
    )
}

/// The lines of `serve`'s output that start with `prefix`.
fn lines_with<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

#[test]
fn every_platform_is_served_the_detools_patch_that_makes_the_new_image() {
    let test = "every_platform_is_served_the_detools_patch_that_makes_the_new_image";
    if !detools(test) {
        return;
    }
    let dir = scratch("platforms");
    for (platform, pair, compression) in [
        (Platform::Aliyun, "inserted-block", "heatshrink"),
        (Platform::Sagoo, "appended", "none"),
        (Platform::Tencent, "small-change", "heatshrink"),
        (Platform::Ucloud, "empty-old", "heatshrink"),
    ] {
        let (old, new) = (
            fixture(&format!("{pair}.old")),
            fixture(&format!("{pair}.new")),
        );
        let written = dir.join(format!("{pair}.served.patch"));
        let dn = format!("delta-{platform:?}").to_lowercase();
        let mut served = Vec::new();
        let mut offer = None;
        let (code, stderr, startup, after) = serve_lines(
            &dn,
            &platform.downstream(&dn),
            &[
                platform.flags(),
                &[
                    "--firmware",
                    text(&new),
                    "--delta-from",
                    text(&old),
                    "--delta-compression",
                    compression,
                    "--write-patch",
                    text(&written),
                ],
            ]
            .concat(),
            |dev, url| {
                let o = platform.offer(dev, &dn);
                assert_eq!(o.url, url);
                served = common::http_get(url);
                platform.complete(dev, &dn, &o);
                offer = Some(o);
            },
        );
        assert_eq!(code, Some(0), "{platform:?}: {stderr}");
        let offer = offer.unwrap();

        // What was served is the patch serve wrote, announced with its own size and digest.
        assert_eq!(served, read(&written), "{platform:?}");
        assert_eq!(offer.size, served.len() as u64, "{platform:?}");
        assert_eq!(offer.digest, platform.digest(&served), "{platform:?}");
        // ... it is exactly detools' patch for the pair ...
        let own = dir.join(format!("{pair}.{compression}.patch"));
        run_detools(&[
            "create_patch",
            "--patch-type",
            "sequential",
            "--compression",
            compression,
            text(&old),
            text(&new),
            text(&own),
        ]);
        assert!(served == read(&own), "{platform:?}: not detools' patch");
        // ... and detools applies it to the old image to give the new one.
        let rebuilt = dir.join(format!("{pair}.rebuilt"));
        run_detools(&["apply_patch", text(&old), text(&written), text(&rebuilt)]);
        assert!(read(&rebuilt) == read(&new), "{platform:?}");

        let line = delta_line(
            read(&old).len(),
            read(&new).len(),
            served.len(),
            compression,
        );
        assert_eq!(
            lines_with(&startup, "delta:"),
            [line.as_str()],
            "{platform:?}"
        );
        let detools_line = lines_with(&startup, "detools ");
        assert_eq!(detools_line.len(), 1, "{startup:?}");
        assert!(
            detools_line[0].ends_with(&format!(
                "create_patch --patch-type sequential --compression {compression} {} {} {}",
                text(&old),
                text(&new),
                text(&written)
            )),
            "the command as it can be run again: {detools_line:?}"
        );
        assert!(
            startup.contains(&format!("firmware size: {}", served.len())),
            "{startup:?}"
        );
        assert_eq!(
            lines_with(&after, "outcome:"),
            ["outcome: success 2.0.0"],
            "{platform:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_generated_new_image_is_written_and_the_json_report_has_the_sizes() {
    let test = "a_generated_new_image_is_written_and_the_json_report_has_the_sizes";
    if !detools(test) {
        return;
    }
    let dir = scratch("generated");
    // generate_firmware is prefix-stable: the new image is the old one with 3000 bytes more.
    let old = dir.join("old.bin");
    std::fs::write(&old, generate_firmware(20_000)).unwrap();
    let new = dir.join("new.bin");
    let dn = "delta-generated";
    let mut served = Vec::new();
    let (code, stderr, _, after) = serve_lines(
        dn,
        &Platform::Aliyun.downstream(dn),
        &[
            "--firmware-size",
            "23000",
            "--write-firmware",
            text(&new),
            "--delta-from",
            text(&old),
            "--json",
            "--quiet",
        ],
        |dev, url| {
            let offer = Platform::Aliyun.offer(dev, dn);
            served = common::http_get(url);
            Platform::Aliyun.complete(dev, dn, &offer);
        },
    );
    assert_eq!(code, Some(0), "{stderr}");
    // --write-firmware is the new image, what the device must end with.
    assert_eq!(read(&new), generate_firmware(23_000));
    let rebuilt = dir.join("rebuilt.bin");
    let patch = dir.join("served.patch");
    std::fs::write(&patch, &served).unwrap();
    run_detools(&["apply_patch", text(&old), text(&patch), text(&rebuilt)]);
    assert_eq!(read(&rebuilt), generate_firmware(23_000));
    assert!(served.len() < 23_000 / 5, "{} bytes", served.len());

    let [.., outcome, json] = &after[..] else {
        panic!("{after:?}");
    };
    assert_eq!(outcome, "outcome: success 2.0.0");
    let report: Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        report["delta"],
        serde_json::json!({
            "old_size": 20_000,
            "new_size": 23_000,
            "patch_size": served.len(),
            "compression": "heatshrink",
            "saved_bytes": 23_000 - served.len() as i64,
        })
    );
    assert_eq!(report["upgrades"][0]["size"], served.len());
    let _ = std::fs::remove_dir_all(dir);
}

/// A directory on which no `python3` can be found, for a PATH.
fn empty_path(test: &str) -> PathBuf {
    scratch(&format!("{test}-path"))
}

#[test]
fn a_ready_patch_is_served_without_detools_and_the_faults_cut_its_bytes() {
    let dir = scratch("ready");
    let patch = read(&fixture("inserted-block.heatshrink.patch"));
    let written = dir.join("written.patch");
    let no_python = empty_path("ready");
    let mut cmd = Command::new(BIN);
    cmd.env("PATH", &no_python);
    let dn = "delta-ready";
    let (code, stderr, startup, after) = serve_lines_in(
        cmd,
        dn,
        &Platform::Aliyun.downstream(dn),
        &[
            "--firmware",
            text(&fixture("inserted-block.new")),
            "--delta-from",
            text(&fixture("inserted-block.old")),
            "--delta-patch",
            text(&fixture("inserted-block.heatshrink.patch")),
            "--write-patch",
            text(&written),
            "--cut-at",
            "300",
        ],
        |dev, url| {
            let offer = Platform::Aliyun.offer(dev, dn);
            assert_eq!(offer.size, patch.len() as u64);
            assert_eq!(offer.digest, md5_hex(&patch));
            let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
            let (port, path) = rest.split_once('/').unwrap();
            let mut got = Vec::new();
            let mut cuts = Vec::new();
            while got.len() < patch.len() && cuts.len() < 5 {
                let mut conn = HttpConn::open(port.parse().unwrap());
                let range = format!("bytes={}-", got.len());
                let r = conn.request("GET", &format!("/{path}"), &[("Range", &range)]);
                assert_eq!(r.status, 206);
                let announced: usize = r.header("Content-Length").unwrap().parse().unwrap();
                got.extend_from_slice(&r.body);
                if r.body.len() < announced {
                    cuts.push(got.len());
                }
            }
            // --cut-at counts in the patch.
            assert_eq!(cuts, [300]);
            assert!(got == patch, "the patch as committed");
            Platform::Aliyun.complete(dev, dn, &offer);
        },
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines_with(&startup, "delta:"),
        [delta_line(6000, 6700, 612, "heatshrink").as_str()]
    );
    assert!(lines_with(&startup, "detools").is_empty(), "{startup:?}");
    assert!(read(&written) == patch);
    assert_eq!(lines_with(&after, "outcome:"), ["outcome: success 2.0.0"]);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(no_python);
}

#[test]
fn a_patch_the_device_cannot_apply_is_served_with_a_warning() {
    let dir = scratch("lzma");
    // An lzma patch's header for a 4000-byte image (size field a0 3e), then bytes detools
    // would not read: only the header is the simulator's business.
    let mut lzma = vec![0x01, 0xa0, 0x3e];
    lzma.extend(generate_firmware(500));
    let patch = dir.join("lzma.patch");
    std::fs::write(&patch, &lzma).unwrap();
    let dn = "delta-lzma";
    let (code, _, startup, after) = serve_lines(
        dn,
        &Platform::Aliyun.downstream(dn),
        &[
            "--firmware",
            text(&fixture("unrelated.new")),
            "--delta-from",
            text(&fixture("unrelated.old")),
            "--delta-patch",
            text(&patch),
            "--grace-ms",
            "100",
        ],
        |dev, url| {
            let offer = Platform::Aliyun.offer(dev, dn);
            assert!(common::http_get(url) == lzma);
            assert_eq!(offer.digest, md5_hex(&lzma));
            dev.send(
                "progress",
                r#"{"id":"2","params":{"step":"-3","desc":"delta patch refused: lzma"}}"#,
            );
        },
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        lines_with(&startup, "delta:"),
        [
            delta_line(3000, 4000, 503, "lzma").as_str(),
            "delta: warning: the device applies sequential patches compressed with none or \
             heatshrink; this sequential patch (lzma) is served to rehearse its refusal"
        ]
    );
    assert_eq!(
        lines_with(&after, "outcome:"),
        ["outcome: failed 2.0.0 reports=1 desc=delta patch refused: lzma"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the binary with `args` (and `path` as PATH when given); its exit code and stderr.
fn run(args: &[&str], path: Option<&Path>) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `serve` with every required flag, a broker nobody listens on and a delta from a committed
/// pair: whatever fails must fail before it connects.
fn serve_args(extra: &[&str]) -> Vec<String> {
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
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

#[test]
fn delta_flags_that_do_not_fit_are_usage_errors_naming_them() {
    let old = fixture("small-change.old");
    let new = fixture("small-change.new");
    let patch = fixture("small-change.heatshrink.patch");
    let (old, new, patch) = (text(&old), text(&new), text(&patch));
    let conflict = |a: &'static str, b: &'static str| vec!["cannot be used with", a, b];
    for (extra, named) in [
        (
            &["--files-sizes", "10,20", "--delta-from", old][..],
            conflict("'--delta-from <OLD>'", "'--files-sizes"),
        ),
        (
            &["--files", new, "--delta-from", old][..],
            conflict("'--delta-from <OLD>'", "'--files <"),
        ),
        (
            &["--firmware", new, "--delta-from", old, "--mqtt-download"][..],
            conflict("'--delta-from <OLD>'", "'--mqtt-download'"),
        ),
        (
            &[
                "--firmware",
                new,
                "--delta-from",
                old,
                "--supersede-at",
                "50",
            ][..],
            conflict("'--delta-from <OLD>'", "'--supersede-at"),
        ),
        (
            &["--firmware", new, "--delta-from", "/nonexistent/old.bin"][..],
            vec!["invalid value '/nonexistent/old.bin' for '--delta-from <OLD>': cannot read"],
        ),
        (
            &["--firmware", new, "--delta-from", "/"][..],
            vec!["'/' for '--delta-from <OLD>': / is not a file"],
        ),
        (
            &[
                "--firmware",
                new,
                "--delta-from",
                old,
                "--delta-patch",
                "/nonexistent/p",
            ][..],
            vec!["'--delta-patch <PATCH>': cannot read"],
        ),
        (
            &["--firmware", new, "--delta-compression", "none"][..],
            vec!["required arguments were not provided:\n  --delta-from <OLD>"],
        ),
        (
            &["--firmware", new, "--delta-patch", patch][..],
            vec!["required arguments were not provided:\n  --delta-from <OLD>"],
        ),
        (
            &["--firmware", new, "--write-patch", "/tmp/p"][..],
            vec!["required arguments were not provided:\n  --delta-from <OLD>"],
        ),
        (
            &[
                "--firmware",
                new,
                "--delta-from",
                old,
                "--delta-compression",
                "lzma",
            ][..],
            vec!["'lzma' for '--delta-compression <C>'"],
        ),
        (
            &[
                "--firmware",
                new,
                "--delta-from",
                old,
                "--delta-patch",
                patch,
                "--delta-compression",
                "none",
            ][..],
            conflict("'--delta-compression <C>'", "'--delta-patch <PATCH>'"),
        ),
    ] {
        let args = serve_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run(&args, None);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        for words in named {
            assert!(stderr.contains(words), "{words:?} in {stderr}");
        }
    }
    for (args, named) in [
        (
            &["demo", "--delta-from", "--signed"][..],
            conflict("'--delta-from [<OLD>]'", "'--signed"),
        ),
        (
            &["demo", "--delta-from", old, "--supersede-at", "50"][..],
            conflict("'--delta-from [<OLD>]'", "'--supersede-at"),
        ),
        (
            &["demo", "--delta-from", "/nonexistent/old.bin"][..],
            vec!["'/nonexistent/old.bin' for '--delta-from [<OLD>]': cannot read"],
        ),
        (
            &["demo", "--delta-compression", "none"][..],
            vec!["required arguments were not provided:\n  --delta-from [<OLD>]"],
        ),
    ] {
        let (code, stderr) = run(args, None);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        for words in named {
            assert!(stderr.contains(words), "{words:?} in {stderr}");
        }
    }
}

#[test]
fn a_ready_patch_for_another_image_size_or_no_patch_at_all_fails_before_connecting() {
    let dir = scratch("bad-ready");
    let not_a_patch = dir.join("not-a-patch");
    std::fs::write(&not_a_patch, [0xff; 64]).unwrap();
    let (old, new) = (fixture("inserted-block.old"), fixture("inserted-block.new"));
    for (patch, named) in [
        (
            fixture("small-change.heatshrink.patch"),
            "the patch makes an image of 6000 bytes, the new image has 6700",
        ),
        (
            not_a_patch,
            "first byte 0xff is no detools patch type and compression",
        ),
    ] {
        let args = serve_args(&[
            "--firmware",
            text(&new),
            "--delta-from",
            text(&old),
            "--delta-patch",
            text(&patch),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run(&args, None);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("--delta-patch {}: {named}", text(&patch))),
            "{stderr}"
        );
        assert!(!stderr.contains("MQTT"), "before connecting: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_detools_the_error_names_the_pip_package() {
    let dir = scratch("no-detools");
    // No python3 at all, and a python3 without the detools module.
    let no_python = empty_path("no-python");
    let no_module = dir.join("bin");
    std::fs::create_dir_all(&no_module).unwrap();
    let python = no_module.join("python3");
    std::fs::write(
        &python,
        "#!/bin/sh\necho \"/usr/bin/python3: No module named detools\" >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (old, new) = (fixture("small-change.old"), fixture("small-change.new"));
    let serve = serve_args(&["--firmware", text(&new), "--delta-from", text(&old)]);
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    for path in [&no_python, &no_module] {
        for args in [&serve[..], &["demo", "--delta-from", "--device", "c"][..]] {
            let (code, stderr) = run(args, Some(path));
            assert_eq!(code, Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains("detools (delta patches) cannot be run")
                    && stderr.contains("PyPI package `detools`")
                    && stderr.contains("pip install detools"),
                "{args:?}: {stderr}"
            );
            assert!(!stderr.contains("MQTT"), "before connecting: {stderr}");
            assert!(!stderr.contains("cargo"), "nothing built: {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(no_python);
}

#[test]
fn help_shows_the_delta_flags() {
    for (args, words) in [
        (
            &["serve", "--help"][..],
            &[
                "Delta upgrades:",
                "--delta-from <OLD>",
                "--delta-compression <C>",
                "heatshrink, none",
                "--delta-patch <PATCH>",
                "--write-patch <PATH>",
                "create_patch",
                "`detools`",
                "in the patch",
            ][..],
        ),
        (
            &["demo", "--help"][..],
            &[
                "Delta upgrades:",
                "--delta-from [<OLD>]",
                "--delta-compression <C>",
                "OTA_DELTA_OLD",
                "saved",
            ][..],
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for word in words {
            assert!(help.contains(word), "{word} in {args:?}: {help}");
        }
    }
}

#[test]
fn the_old_image_is_announced_in_ext_data_and_delta_claim_old_names_another() {
    let (old, other) = (fixture("small-change.old"), fixture("unrelated.old"));
    let expect =
        |image: &[u8]| serde_json::json!({"size": image.len(), "sha256": sha256_hex(image)});
    for (platform, claim, announced) in [
        (Platform::Sagoo, None, expect(&read(&old))),
        (Platform::Sagoo, Some(&other), expect(&read(&other))),
        (Platform::Aliyun, Some(&other), expect(&read(&other))),
        (Platform::Aliyun, None, expect(&read(&old))),
    ] {
        let dn = format!("delta-claim-{platform:?}-{}", claim.is_some()).to_lowercase();
        let (new, patch) = (
            fixture("small-change.new"),
            fixture("small-change.heatshrink.patch"),
        );
        let mut flags: Vec<&str> = platform.flags().to_vec();
        flags.extend([
            "--firmware",
            text(&new),
            "--delta-from",
            text(&old),
            "--delta-patch",
            text(&patch),
        ]);
        if let Some(c) = claim {
            flags.extend(["--delta-claim-old", text(c)]);
        }
        let mut ext = Value::Null;
        let (code, stderr, startup, _) =
            serve_lines(&dn, &platform.downstream(&dn), &flags, |dev, _url| {
                dev.publish(
                    &platform.upstream(&dn, "inform"),
                    r#"{"id":"1","params":{"version":"1.0.0"}}"#,
                );
                ext = dev.next_upgrade()["data"]["extData"].clone();
                let offer = Offer {
                    url: String::new(),
                    size: 0,
                    digest: String::new(),
                    task: None,
                    strategy: ext["strategy"].as_str().map(str::to_string),
                };
                platform.complete(dev, &dn, &offer);
            });
        assert_eq!(code, Some(0), "{platform:?}: {stderr}");
        let what = format!("{platform:?}, claim {claim:?}");
        assert_eq!(
            serde_json::json!({"size": ext["_delta_old_size"], "sha256": ext["_delta_old_sha256"]}),
            announced,
            "{what}: {ext}"
        );
        // The image the patch makes is named too (the device's second check).
        let new_sha = sha256_hex(&read(&new));
        assert_eq!(ext["_delta_new_sha256"], new_sha.as_str(), "{what}: {ext}");
        let line = format!(
            "extData announces the old image: _delta_old_size = {}, _delta_old_sha256 = {}, \
             and the new image: _delta_new_sha256 = {new_sha}",
            announced["size"],
            announced["sha256"].as_str().unwrap()
        );
        assert_eq!(lines_with(&startup, "extData"), [line.as_str()], "{what}");
    }
    // Tencent's messages have no extData: --delta-claim-old is a usage error there, and
    // --delta-from alone says the old image is not announced.
    let args = serve_args(&[
        "--protocol",
        "tencent",
        "--firmware",
        text(&fixture("small-change.new")),
        "--delta-from",
        text(&old),
        "--delta-patch",
        text(&fixture("small-change.heatshrink.patch")),
        "--delta-claim-old",
        text(&other),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = run(&args, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--delta-claim-old needs --protocol aliyun or sagoo"),
        "{stderr}"
    );
    let args = serve_args(&["--delta-claim-old", text(&other)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = run(&args, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--delta-from <OLD>"), "{stderr}");
}
