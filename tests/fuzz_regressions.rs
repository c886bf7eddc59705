//! Replays every saved fuzz input through the same checks as the fuzz targets (`fuzz/`), with
//! no libFuzzer: the seed corpora (`fuzz/corpus/<target>/`) and the inputs of past findings
//! (`fuzz/regressions/<target>/`, one file per fixed bug). A decoder that starts to panic, or a
//! C call that breaks its contract on one of them, fails `cargo test`.

#[path = "../fuzz/src/lib.rs"]
mod ota_fuzz;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

thread_local! {
    /// Panics on this thread, including those the C shims catch at their boundary (which
    /// libFuzzer reports as crashes, since its panic hook aborts). Per thread, because the
    /// tests run in parallel.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("readable directory").path()));
    }
    files.retain(|p| p.is_file());
    files.sort();
    files
}

fn replay(target: &str) {
    count_panics();
    let (_, check) = ota_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a fuzz target of that name");
    let files = inputs(target);
    assert!(!files.is_empty(), "no saved inputs for {target}");
    for file in files {
        let data = std::fs::read(&file).expect("readable input");
        let before = PANICS.with(Cell::get);
        let outcome = std::panic::catch_unwind(|| check(&data));
        let panicked = outcome.is_err() || PANICS.with(Cell::get) != before;
        assert!(!panicked, "{target}: {} fails its checks", file.display());
    }
}

#[test]
fn decode_aliyun() {
    replay("decode_aliyun");
}

#[test]
fn decode_tencent() {
    replay("decode_tencent");
}

#[test]
fn decode_ucloud() {
    replay("decode_ucloud");
}

#[test]
fn decode_sagoo() {
    replay("decode_sagoo");
}

#[test]
fn json() {
    replay("json");
}

#[test]
fn breakpoint() {
    replay("breakpoint");
}

#[test]
fn c_api() {
    replay("c_api");
}

#[test]
fn mqtt_client() {
    replay("mqtt_client");
}

#[test]
fn image_tlv() {
    replay("image_tlv");
}

#[test]
fn files() {
    replay("files");
}

#[test]
fn download_reply() {
    replay("download_reply");
}

#[test]
fn delta() {
    replay("delta");
}
