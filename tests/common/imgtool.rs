//! The real `imgtool` (PyPI; MCUboot's signing tool), for the tests that sign fresh images at
//! test time. Without it those tests skip with a printed line, unless
//! OTA_REQUIRE_IMGTOOL=required (CI), where they fail: nothing skips silently there.

use std::path::{Path, PathBuf};
use std::process::Command;

use ota::image::ImageKey;

/// The imgtool to sign with, or `None` (with a printed line) when it is missing and not
/// required; panics when OTA_REQUIRE_IMGTOOL=required and it is missing.
pub fn imgtool(test: &str) -> Option<&'static str> {
    let found = Command::new("imgtool")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("imgtool");
    }
    if std::env::var("OTA_REQUIRE_IMGTOOL").as_deref() == Ok("required") {
        panic!(
            "{test}: imgtool is not on PATH and OTA_REQUIRE_IMGTOOL=required (pip install imgtool)"
        );
    }
    println!("SKIPPED {test}: imgtool is not on PATH (pip install imgtool; OTA_REQUIRE_IMGTOOL=required makes this fail)");
    None
}

/// An empty scratch directory of its own under the target's test directory; `name` must be
/// unique over all test crates (prefix it with the crate's name).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tool args` in `dir`; panics with its output when it fails.
pub fn run(tool: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a fresh key pair of `kind` (`ecdsa-p256`, `ed25519`) as `{kind}.pem` in `dir`; returns
/// the public key as the device holds it.
pub fn fresh_key(tool: &str, dir: &Path, kind: &str) -> ImageKey {
    fresh_key_named(tool, dir, kind, kind)
}

/// [`fresh_key`] into `{name}.pem` (and `{name}.pub.pem`), for several keys of one kind.
pub fn fresh_key_named(tool: &str, dir: &Path, kind: &str, name: &str) -> ImageKey {
    let private = format!("{name}.pem");
    let public = format!("{name}.pub.pem");
    run(tool, dir, &["keygen", "-k", &private, "-t", kind]);
    run(
        tool,
        dir,
        &["getpub", "-k", &private, "-e", "pem", "-o", &public],
    );
    ImageKey::parse(&std::fs::read(dir.join(public)).unwrap()).unwrap()
}

/// `imgtool sign --pad-header --slot-size 0x100000 ARGS` of `payload`; the signed image.
pub fn sign(tool: &str, dir: &Path, payload: &[u8], args: &[&str]) -> Vec<u8> {
    std::fs::write(dir.join("in.bin"), payload).unwrap();
    let mut all = vec!["sign", "--pad-header", "--slot-size", "0x100000"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["in.bin", "out.bin"]);
    run(tool, dir, &all);
    std::fs::read(dir.join("out.bin")).unwrap()
}
