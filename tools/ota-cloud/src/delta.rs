//! Delta upgrades, the platform's side: instead of the new image the platform serves a detools
//! *sequential* patch from the image the device runs (the old image) to the new one, and the
//! upgrade message announces the patch's size and digest (issue 17, docs/delta.md). The device
//! rebuilds the new image from its old one and the patch.
//!
//! The patches are the real tool's bytes: [`Detools`] runs `python3 -m detools create_patch`
//! (PyPI package `detools`), as a vendor's build would. This module only spells its command
//! lines and reads a patch's header (to name its compression and check its new size), so that
//! a ready patch can be served without detools.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Map, Value};

use crate::imgtool::command_line;
use crate::platform::sha256_hex;

/// The PyPI package that provides `detools`.
pub const PIP_PACKAGE: &str = "detools";

/// The compressions of a sequential patch the device applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchCompression {
    /// heatshrink (window 2^8, lookahead 2^7: detools' defaults, what its C library takes).
    #[default]
    Heatshrink,
    /// The diff and extra data as they are: no smaller than the new image.
    None,
}

impl PatchCompression {
    pub const ALL: [PatchCompression; 2] = [PatchCompression::Heatshrink, PatchCompression::None];

    /// The name detools gives it (`create_patch --compression`).
    pub fn name(self) -> &'static str {
        match self {
            PatchCompression::Heatshrink => "heatshrink",
            PatchCompression::None => "none",
        }
    }
}

impl FromStr for PatchCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<PatchCompression, String> {
        PatchCompression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown patch compression {s:?} (the device applies heatshrink or none)")
            })
    }
}

impl fmt::Display for PatchCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// detools' patch types by number (docs/delta.md, "Header": bits 6..4 of the first byte).
const PATCH_TYPES: [&str; 3] = ["sequential", "in-place", "hdiffpatch"];

/// detools' compressions by number (bits 3..0 of the first byte).
const COMPRESSIONS: [&str; 7] = ["none", "lzma", "crle", "bz2", "heatshrink", "zstd", "lz4"];

/// The uncompressed start of a detools patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchHeader {
    /// `sequential`, `in-place` or `hdiffpatch`.
    pub patch_type: &'static str,
    /// `none`, `lzma`, `crle`, `bz2`, `heatshrink`, `zstd` or `lz4`.
    pub compression: &'static str,
    /// The new image's size (read for sequential patches only).
    pub new_size: Option<u64>,
}

impl PatchHeader {
    /// The header of `patch`; `Err` when it does not start like a detools patch.
    pub fn parse(patch: &[u8]) -> Result<PatchHeader, String> {
        let &first = patch.first().ok_or("an empty file is no detools patch")?;
        let patch_type = usize::from((first >> 4) & 0x7);
        let compression = usize::from(first & 0xf);
        let (Some(&patch_type), Some(&compression), 0) = (
            PATCH_TYPES.get(patch_type),
            COMPRESSIONS.get(compression),
            first & 0x80,
        ) else {
            return Err(format!(
                "first byte {first:#04x} is no detools patch type and compression"
            ));
        };
        let new_size = match patch_type {
            "sequential" => Some(read_size(&patch[1..])?),
            _ => None,
        };
        Ok(PatchHeader {
            patch_type,
            compression,
            new_size,
        })
    }

    /// The compression, when the device applies this patch's kind.
    pub fn applicable(&self) -> Option<PatchCompression> {
        (self.patch_type == "sequential")
            .then(|| self.compression.parse().ok())
            .flatten()
    }
}

/// A detools size field (docs/delta.md, "Size fields"): 6 bits then 7 per byte, least
/// significant first; bit 7 says another byte follows, bit 6 of the first that it is negative.
fn read_size(bytes: &[u8]) -> Result<u64, String> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        if i == 0 {
            if b & 0x40 != 0 && b & 0x3f != 0 {
                return Err("the new image's size is negative".into());
            }
            value = u64::from(b & 0x3f);
        } else {
            let bits = u64::from(b & 0x7f);
            let shift = 6 + 7 * (i as u32 - 1);
            if shift >= 64 || (bits << shift) >> shift != bits {
                return Err("the new image's size does not fit 64 bits".into());
            }
            value |= bits << shift;
        }
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("the new image's size field is cut short or longer than 10 bytes".into())
}

/// The `detools` tool, run as `python3 -m detools` (the python3 on PATH, where tests/run.sh
/// puts the one it installed detools for).
#[derive(Debug, Clone)]
pub struct Detools {
    python: PathBuf,
}

/// The error when detools cannot be run, naming the package that provides it.
pub fn not_found_message(why: &str) -> String {
    format!(
        "detools (delta patches) cannot be run: {why}; install the PyPI package \
         `{PIP_PACKAGE}` (`python3 -m pip install {PIP_PACKAGE}`) for the python3 on PATH, \
         or give a ready patch with --delta-patch"
    )
}

impl Detools {
    /// `python3 -m detools` from PATH, checked by asking its version; the error names the pip
    /// package.
    pub fn find() -> Result<Detools, String> {
        let tool = Detools {
            python: PathBuf::from("python3"),
        };
        tool.version()?;
        Ok(tool)
    }

    /// `detools --version`.
    pub fn version(&self) -> Result<String, String> {
        let out = self
            .command()
            .arg("--version")
            .output()
            .map_err(|e| not_found_message(&format!("python3: {e}")))?;
        if !out.status.success() {
            return Err(not_found_message(
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("`python3 -m detools --version` failed")
                    .trim(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `detools create_patch --patch-type sequential --compression C OLD NEW PATCH`. Returns
    /// the command line run.
    pub fn create_patch(
        &self,
        old: &Path,
        new: &Path,
        patch: &Path,
        compression: PatchCompression,
    ) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args([
            "create_patch",
            "--patch-type",
            "sequential",
            "--compression",
        ])
        .arg(compression.name())
        .args([old, new, patch]);
        run(cmd)
    }

    /// `detools apply_patch OLD PATCH NEW`: detools' own application of a patch. Returns the
    /// command line run.
    pub fn apply_patch(&self, old: &Path, patch: &Path, new: &Path) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.arg("apply_patch").args([old, patch, new]);
        run(cmd)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "detools"]);
        cmd
    }
}

/// Runs `cmd`; its command line, or an error with detools' own message.
fn run(mut cmd: Command) -> Result<String, String> {
    let line = command_line(&cmd);
    let out = cmd
        .output()
        .map_err(|e| not_found_message(&format!("python3: {e}")))?;
    if out.status.success() {
        return Ok(line);
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if why.contains("No module named detools") {
        return Err(not_found_message(&why));
    }
    Err(format!("`{line}` failed ({}): {why}", out.status))
}

/// The files [`DeltaUpgrade::make`] hands detools: the old and new images where the caller has
/// them, where the patch goes; `None`: a scratch file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchFiles {
    pub old: Option<PathBuf>,
    pub new: Option<PathBuf>,
    pub patch: Option<PathBuf>,
}

/// The old image a patch applies to, as the upgrade message announces it in `extData` on the
/// platforms whose message carries one (aliyun, sagoo): `_delta_old_size` and
/// `_delta_old_sha256`, the device SDK's convention (docs/delta.md, "The old image's
/// requirement"). A detools patch names no old image; this lets the device refuse a patch made
/// for another image than the one it runs before writing any byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldImageClaim {
    /// The old image's size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// The new image's SHA-256 (`_delta_new_sha256`), the second check of the device: what
    /// the patch must make.
    pub new_sha256: Option<String>,
}

impl OldImageClaim {
    /// The `extData` key of the size.
    pub const SIZE_KEY: &'static str = "_delta_old_size";
    /// The `extData` key of the SHA-256.
    pub const SHA256_KEY: &'static str = "_delta_old_sha256";
    /// The `extData` key of the new image's SHA-256.
    pub const NEW_SHA256_KEY: &'static str = "_delta_new_sha256";

    /// The claim that names `image`.
    pub fn of(image: &[u8]) -> OldImageClaim {
        OldImageClaim {
            size: image.len() as u64,
            sha256: sha256_hex(image),
            new_sha256: None,
        }
    }

    /// The claim, naming the image the patch makes too.
    pub fn making(self, new: &[u8]) -> OldImageClaim {
        OldImageClaim {
            new_sha256: Some(sha256_hex(new)),
            ..self
        }
    }

    /// Adds its keys to an `extData` object.
    pub fn insert_into(&self, ext: &mut Map<String, Value>) {
        ext.insert(Self::SIZE_KEY.into(), json!(self.size));
        ext.insert(Self::SHA256_KEY.into(), json!(self.sha256));
        if let Some(new) = &self.new_sha256 {
            ext.insert(Self::NEW_SHA256_KEY.into(), json!(new));
        }
    }

    /// The one line `serve` prints about it.
    pub fn summary_line(&self) -> String {
        let new = match &self.new_sha256 {
            Some(sha) => format!(", and the new image: {} = {sha}", Self::NEW_SHA256_KEY),
            None => String::new(),
        };
        format!(
            "extData announces the old image: {} = {}, {} = {}{new}",
            Self::SIZE_KEY,
            self.size,
            Self::SHA256_KEY,
            self.sha256
        )
    }
}

/// A delta upgrade: the old and new images' sizes, the new image (what the device must end
/// with) and the patch (what is served and announced).
#[derive(Debug, Clone)]
pub struct DeltaUpgrade {
    pub old_size: u64,
    pub new: Vec<u8>,
    pub patch: Vec<u8>,
    /// The patch's compression as detools names it.
    pub compression: &'static str,
}

impl DeltaUpgrade {
    /// The patch from `old` to `new`, made by `detools` from the files `files` names (they
    /// must hold `old` and `new`) or, for those it leaves out, from scratch files in a
    /// directory of its own (removed after). Also returns the command line run, which names
    /// the caller's files where it gave them.
    pub fn make(
        detools: &Detools,
        old: &[u8],
        new: Vec<u8>,
        compression: PatchCompression,
        files: &PatchFiles,
    ) -> Result<(DeltaUpgrade, String), String> {
        let dir = ScratchDir::new()?;
        let old_path = match &files.old {
            Some(path) => path.clone(),
            None => dir.file("old.bin", old)?,
        };
        let new_path = match &files.new {
            Some(path) => path.clone(),
            None => dir.file("new.bin", &new)?,
        };
        let patch_path = files
            .patch
            .clone()
            .unwrap_or_else(|| dir.0.join("patch.bin"));
        let line = detools.create_patch(&old_path, &new_path, &patch_path, compression)?;
        let patch = read(&patch_path)?;
        let delta = DeltaUpgrade {
            old_size: old.len() as u64,
            new,
            patch,
            compression: compression.name(),
        };
        delta.check()?;
        Ok((delta, line))
    }

    /// A ready `patch` from an old image of `old_size` bytes to `new`. Only its header is
    /// read: it must be a detools patch for an image of `new`'s size; what else it holds is
    /// served as it is (so a patch for another old image rehearses the device's refusal).
    pub fn from_patch(old_size: u64, new: Vec<u8>, patch: Vec<u8>) -> Result<DeltaUpgrade, String> {
        let header = PatchHeader::parse(&patch)?;
        let delta = DeltaUpgrade {
            old_size,
            new,
            patch,
            compression: header.compression,
        };
        delta.check()?;
        Ok(delta)
    }

    /// The patch's header, with its new size checked against the new image's.
    pub fn header(&self) -> Result<PatchHeader, String> {
        let header = PatchHeader::parse(&self.patch)?;
        match header.new_size {
            Some(n) if n != self.new.len() as u64 => Err(format!(
                "the patch makes an image of {n} bytes, the new image has {}",
                self.new.len()
            )),
            _ => Ok(header),
        }
    }

    fn check(&self) -> Result<(), String> {
        self.header().map(|_| ())
    }

    /// The sizes the run reports.
    pub fn sizes(&self) -> DeltaSizes {
        DeltaSizes {
            old: self.old_size,
            new: self.new.len() as u64,
            patch: self.patch.len() as u64,
            compression: self.compression,
        }
    }

    /// A warning when the device cannot apply this patch (its type or compression), which is
    /// then served to rehearse the refusal.
    pub fn applicability_warning(&self) -> Option<String> {
        let header = PatchHeader::parse(&self.patch).ok()?;
        header.applicable().is_none().then(|| {
            format!(
                "delta: warning: the device applies sequential patches compressed with none or \
                 heatshrink; this {} patch ({}) is served to rehearse its refusal",
                header.patch_type, header.compression
            )
        })
    }
}

/// What a delta upgrade weighs: the old and new images, the patch, its compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSizes {
    pub old: u64,
    pub new: u64,
    pub patch: u64,
    pub compression: &'static str,
}

impl DeltaSizes {
    /// `P/M`: the patch's size over the new image's (`None` for an empty new image).
    pub fn ratio(&self) -> Option<f64> {
        (self.new > 0).then(|| self.patch as f64 / self.new as f64)
    }

    /// Bytes a delta upgrade sends fewer than a full one (negative: more).
    pub fn saved(&self) -> i64 {
        self.new as i64 - self.patch as i64
    }

    /// `delta: old N bytes, new M bytes, patch P bytes (P/M = x.xx), compression C`.
    pub fn summary_line(&self) -> String {
        let ratio = self
            .ratio()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
        format!(
            "delta: old {} bytes, new {} bytes, patch {} bytes (P/M = {ratio}), compression {}",
            self.old, self.new, self.patch, self.compression
        )
    }

    /// `patch P bytes instead of M: saved S bytes (x %)`, or how many more it sends.
    pub fn saved_line(&self) -> String {
        let (p, m) = (self.patch, self.new);
        if p > m {
            return format!(
                "patch {p} bytes instead of {m}: {} bytes more than the image (a full upgrade \
                 sends less)",
                p - m
            );
        }
        let percent = match m {
            0 => 0.0,
            m => (m - p) as f64 * 100.0 / m as f64,
        };
        format!(
            "patch {p} bytes instead of {m}: saved {} bytes ({percent:.1} %)",
            m - p
        )
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir, String> {
        // Tests make patches in parallel threads of one process.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ota-cloud-delta-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    fn file(&self, name: &str, data: &[u8]) -> Result<PathBuf, String> {
        let path = self.0.join(name);
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new release made from `old` for the demo: what a small firmware change does to an image
/// (one byte changed every 4 KiB, as moved addresses do; 1 KiB of new code in the middle;
/// 2 KiB appended), the same bytes every time. An empty `old` gives 3 KiB of new bytes.
pub fn next_release(old: &[u8]) -> Vec<u8> {
    let fresh = crate::generate_firmware_seeded(3 * 1024, crate::NEXT_FIRMWARE_SEED);
    let mut new = old.to_vec();
    for at in (0..new.len()).step_by(4096) {
        new[at] ^= 0x5a;
    }
    let middle = new.len() / 2;
    new.splice(middle..middle, fresh[..1024].iter().copied());
    new.extend_from_slice(&fresh[1024..]);
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/delta")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_headers_of_detools_patches() {
        // tests/fixtures/delta/MANIFEST: made by detools 0.53.0.
        for (name, compression, new_size) in [
            ("small-change.heatshrink.patch", "heatshrink", 6000),
            ("small-change.none.patch", "none", 6000),
            ("inserted-block.heatshrink.patch", "heatshrink", 6700),
            ("appended.none.patch", "none", 7500),
            ("empty-old.heatshrink.patch", "heatshrink", 3000),
        ] {
            let h = PatchHeader::parse(&fixture(name)).unwrap();
            assert_eq!(h.patch_type, "sequential", "{name}");
            assert_eq!(h.compression, compression, "{name}");
            assert_eq!(h.new_size, Some(new_size), "{name}");
            assert_eq!(h.applicable(), compression.parse().ok(), "{name}");
        }
    }

    #[test]
    fn size_fields_as_detools_packs_them() {
        // docs/delta.md: 1000 is `a8 0f`; 0 is `00`; "negative zero" is 0.
        assert_eq!(read_size(&[0xa8, 0x0f]), Ok(1000));
        assert_eq!(read_size(&[0x00]), Ok(0));
        assert_eq!(read_size(&[0x40]), Ok(0));
        assert_eq!(read_size(&[0x3f]), Ok(63));
        assert_eq!(read_size(&[0x80, 0x01]), Ok(64));
        assert!(read_size(&[0x41]).is_err(), "negative");
        assert!(read_size(&[0x80]).is_err(), "cut short");
        assert!(read_size(&[]).is_err(), "missing");
        assert!(read_size(&[0xff; 11]).is_err(), "longer than 10 bytes");
        // 6 + 8 * 7 bits, then 2 in the tenth byte: 64 bits; a third bit there does not fit.
        let mut max = vec![0xbf];
        max.extend([0xff; 8]);
        max.push(0x03);
        assert_eq!(read_size(&max), Ok(u64::MAX));
        *max.last_mut().unwrap() = 0x07;
        assert!(read_size(&max).is_err());
    }

    #[test]
    fn what_is_not_a_sequential_patch_the_device_applies() {
        assert!(PatchHeader::parse(b"").is_err());
        assert!(PatchHeader::parse(&[0x84, 0x00]).is_err(), "bit 7 set");
        assert!(PatchHeader::parse(&[0x07, 0x00]).is_err(), "compression 7");
        assert!(PatchHeader::parse(&[0x30, 0x00]).is_err(), "type 3");
        let lzma = PatchHeader::parse(&[0x01, 0x00]).unwrap();
        assert_eq!((lzma.compression, lzma.applicable()), ("lzma", None));
        let hdiff = PatchHeader::parse(&[0x24]).unwrap();
        assert_eq!((hdiff.patch_type, hdiff.new_size), ("hdiffpatch", None));
        assert_eq!(hdiff.applicable(), None);
    }

    #[test]
    fn a_ready_patch_must_make_the_new_image_size() {
        let patch = fixture("appended.heatshrink.patch");
        let new = fixture("appended.new");
        let d = DeltaUpgrade::from_patch(6000, new.clone(), patch.clone()).unwrap();
        assert_eq!(d.compression, "heatshrink");
        assert_eq!(
            d.sizes().summary_line(),
            "delta: old 6000 bytes, new 7500 bytes, patch 1293 bytes (P/M = 0.17), \
             compression heatshrink"
        );
        assert_eq!(
            d.sizes().saved_line(),
            "patch 1293 bytes instead of 7500: saved 6207 bytes (82.8 %)"
        );
        assert_eq!(d.applicability_warning(), None);
        let e = DeltaUpgrade::from_patch(6000, new[..7000].to_vec(), patch).unwrap_err();
        assert!(e.contains("7500 bytes") && e.contains("7000"), "{e}");
        let e = DeltaUpgrade::from_patch(6000, new, vec![0xff]).unwrap_err();
        assert!(e.contains("no detools patch"), "{e}");
    }

    #[test]
    fn a_patch_larger_than_the_image_says_so() {
        let d = DeltaUpgrade::from_patch(
            3000,
            fixture("unrelated.new"),
            fixture("unrelated.heatshrink.patch"),
        )
        .unwrap();
        assert_eq!(
            d.sizes().saved_line(),
            "patch 4511 bytes instead of 4000: 511 bytes more than the image (a full upgrade \
             sends less)"
        );
        let empty = DeltaUpgrade::from_patch(0, Vec::new(), vec![0x00, 0x00]).unwrap();
        assert!(
            empty.sizes().summary_line().contains("(P/M = -)"),
            "{empty:?}"
        );
    }

    #[test]
    fn an_lzma_patch_is_served_with_a_warning() {
        let d = DeltaUpgrade::from_patch(10, vec![0; 64], vec![0x01, 0x80, 0x01]).unwrap();
        let w = d.applicability_warning().unwrap();
        assert!(w.contains("sequential patch (lzma)"), "{w}");
    }

    #[test]
    fn compressions_by_detools_name() {
        for c in PatchCompression::ALL {
            assert_eq!(c.name().parse::<PatchCompression>(), Ok(c));
        }
        assert!("lzma".parse::<PatchCompression>().is_err());
    }

    #[test]
    fn the_demo_release_is_the_old_image_a_little_changed() {
        let old = crate::generate_firmware(10_000);
        let new = next_release(&old);
        assert_eq!(new, next_release(&old), "the same bytes every time");
        // Old bytes changed at 0, 4096 and 8192; 1 KiB inserted at 5000; 2 KiB appended.
        let mut changed = old.clone();
        for at in [0, 4096, 8192] {
            changed[at] ^= 0x5a;
        }
        assert_eq!(new.len(), 10_000 + 3 * 1024);
        assert_eq!(new[..5000], changed[..5000]);
        assert_eq!(new[5000 + 1024..10_000 + 1024], changed[5000..]);
        assert_ne!(new[5000..5000 + 1024], old[5000..5000 + 1024]);
        assert_eq!(next_release(&[]).len(), 3 * 1024);
    }
}
