//! MCUboot's signing tool `imgtool` (PyPI package `imgtool`), run as a program: vendor keys and
//! signed images for `ota-cloud sign`, the demo's `--signed` and the bench. The images are the
//! real tool's bytes; this module only spells its command lines and reads back the layout of
//! what it wrote (MCUboot's docs/design.md, "Image format": a header, the payload, the
//! protected TLV area, the unprotected TLV area; little-endian).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// The PyPI package that provides `imgtool`.
pub const PIP_PACKAGE: &str = "imgtool";

/// The header size `sign` uses unless told: MCUboot's common 0x200, room for the 32-byte
/// header on any vector-table alignment.
pub const DEFAULT_HEADER_SIZE: u32 = 0x200;

/// The flash write alignment `sign` uses unless told.
pub const DEFAULT_ALIGN: u32 = 4;

/// The first four bytes of an MCUboot image (little-endian `IMAGE_MAGIC`).
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;

/// The algorithm of a vendor key, as imgtool names it (`imgtool keygen -t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    Ed25519,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// The type of the signature TLV imgtool writes with such a key.
    pub fn signature_tlv(self) -> u16 {
        match self {
            KeyType::EcdsaP256 => 0x22,
            KeyType::Ed25519 => 0x24,
        }
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyType, String> {
        match s {
            "ecdsa-p256" => Ok(KeyType::EcdsaP256),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(format!(
                "unknown key type {s:?} (expected ecdsa-p256 or ed25519)"
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `imgtool sign` is told besides the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignOptions {
    /// The vendor's private key; `None` makes an unsigned image (header, payload, SHA-256 TLV).
    pub key: Option<PathBuf>,
    /// `MAJOR[.MINOR[.REVISION[+BUILD]]]`, what the header carries.
    pub version: String,
    /// The protected security-counter TLV, when set.
    pub security_counter: Option<u32>,
    /// Bytes of header (32 used, the rest zero), added in front of the payload (`--pad-header`).
    pub header_size: u32,
    /// The flash write alignment.
    pub align: u32,
    /// The slot the image is for; `None`: just large enough (imgtool only checks that the image
    /// and its trailer fit; without `--pad` the slot size changes no byte of the image).
    pub slot_size: Option<u64>,
}

impl SignOptions {
    /// Signed with `key` as `version`, with the default header size and alignment.
    pub fn new(key: Option<PathBuf>, version: &str) -> SignOptions {
        SignOptions {
            key,
            version: version.to_string(),
            security_counter: None,
            header_size: DEFAULT_HEADER_SIZE,
            align: DEFAULT_ALIGN,
            slot_size: None,
        }
    }

    /// The slot size imgtool is given for a payload of `payload_len` bytes.
    fn slot_size_for(&self, payload_len: u64) -> u64 {
        // Header + payload + TLVs (< 1 KiB) + the swap trailer (< 4 KiB at align 8), rounded
        // up to 64 KiB.
        self.slot_size.unwrap_or_else(|| {
            let need = payload_len + u64::from(self.header_size) + 32 * 1024;
            need.div_ceil(0x10000) * 0x10000
        })
    }
}

/// The `imgtool` program.
#[derive(Debug, Clone)]
pub struct Imgtool {
    program: PathBuf,
}

/// The error when `imgtool` cannot be run, naming the package that provides it.
pub fn not_found_message(why: &str) -> String {
    format!(
        "imgtool (MCUboot's signing tool) cannot be run: {why}; install the PyPI package \
         `{PIP_PACKAGE}` (`python3 -m pip install {PIP_PACKAGE}`) so that `imgtool` is on PATH"
    )
}

impl Imgtool {
    /// `imgtool` from PATH, checked by running `imgtool version`; the error names the pip
    /// package.
    pub fn find() -> Result<Imgtool, String> {
        let tool = Imgtool {
            program: PathBuf::from("imgtool"),
        };
        tool.version()?;
        Ok(tool)
    }

    /// `imgtool version`.
    pub fn version(&self) -> Result<String, String> {
        let out = Command::new(&self.program)
            .arg("version")
            .output()
            .map_err(|e| not_found_message(&e.to_string()))?;
        if !out.status.success() {
            return Err(not_found_message(&format!(
                "`imgtool version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `imgtool keygen -k KEY -t TYPE`: a new private key (PEM, unencrypted). Returns the
    /// command line run.
    pub fn keygen(&self, key: &Path, key_type: KeyType) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args(["keygen", "-k"])
            .arg(key)
            .args(["-t", key_type.name()]);
        run(cmd)
    }

    /// `imgtool getpub -k KEY -e pem -o OUT`: the public half as SubjectPublicKeyInfo PEM (what
    /// a device is given). Returns the command line run.
    pub fn getpub(&self, key: &Path, out: &Path) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args(["getpub", "-k"])
            .arg(key)
            .args(["-e", "pem", "-o"])
            .arg(out);
        run(cmd)
    }

    /// `imgtool sign ... INPUT OUTPUT`: the bare payload in `input` becomes an MCUboot image in
    /// `output`. Returns the command line run.
    pub fn sign(&self, o: &SignOptions, input: &Path, output: &Path) -> Result<String, String> {
        let len = std::fs::metadata(input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))?
            .len();
        let mut cmd = self.command();
        cmd.arg("sign");
        if let Some(key) = &o.key {
            cmd.arg("--key").arg(key);
        }
        cmd.args(["--header-size", &format!("{:#x}", o.header_size)])
            .arg("--pad-header")
            .args(["--align", &o.align.to_string()])
            .args(["--slot-size", &format!("{:#x}", o.slot_size_for(len))])
            .args(["--version", &o.version]);
        if let Some(n) = o.security_counter {
            cmd.args(["--security-counter", &n.to_string()]);
        }
        cmd.arg(input).arg(output);
        run(cmd)
    }

    /// `imgtool verify -k KEY IMAGE`: imgtool's own check of a signed image. Returns its
    /// output.
    pub fn verify(&self, key: &Path, image: &Path) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args(["verify", "-k"]).arg(key).arg(image);
        let line = command_line(&cmd);
        let out = cmd
            .output()
            .map_err(|e| not_found_message(&e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{line}: {text}"))
        }
    }

    fn command(&self) -> Command {
        Command::new(&self.program)
    }
}

/// Runs `cmd`; its command line, or an error with imgtool's own message.
fn run(mut cmd: Command) -> Result<String, String> {
    let line = command_line(&cmd);
    let out = cmd
        .output()
        .map_err(|e| not_found_message(&e.to_string()))?;
    if out.status.success() {
        return Ok(line);
    }
    let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if why.is_empty() {
        why = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(format!("`{line}` failed ({}): {why}", out.status))
}

/// `cmd` as a shell would take it (arguments with spaces quoted).
pub fn command_line(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            format!("'{}'", s.replace('\'', r"'\''"))
        } else {
            s.into_owned()
        }
    };
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the parts of an MCUboot image are, read from its header and TLV infos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The header's size: where the payload starts.
    pub header_size: u64,
    /// The payload's length.
    pub payload_size: u64,
    /// The protected TLV area's size (0: none).
    pub protected_size: u64,
    /// Where the unprotected TLV area starts (its 4-byte info).
    pub unprotected_at: u64,
    /// The unprotected area's size, its info included.
    pub unprotected_size: u64,
    /// major, minor, revision, build.
    pub version: (u8, u8, u16, u32),
}

impl Layout {
    /// The layout of `image`; `None` when it is not a whole MCUboot image.
    pub fn of(image: &[u8]) -> Option<Layout> {
        let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
        if u32_at(0)? != IMAGE_MAGIC {
            return None;
        }
        let header_size = u64::from(u16_at(8)?);
        let protected_size = u64::from(u16_at(10)?);
        let payload_size = u64::from(u32_at(12)?);
        let version = (*image.get(20)?, *image.get(21)?, u16_at(22)?, u32_at(24)?);
        let unprotected_at = header_size + payload_size + protected_size;
        let at = usize::try_from(unprotected_at).ok()?;
        if u16_at(at)? != 0x6907 {
            return None;
        }
        let unprotected_size = u64::from(u16_at(at + 2)?);
        if unprotected_at + unprotected_size != image.len() as u64 {
            return None;
        }
        Some(Layout {
            header_size,
            payload_size,
            protected_size,
            unprotected_at,
            unprotected_size,
            version,
        })
    }

    /// The version as imgtool spells it ("2.0.0", "+BUILD" when not 0).
    pub fn version_text(&self) -> String {
        let (a, b, c, build) = self.version;
        match build {
            0 => format!("{a}.{b}.{c}"),
            n => format!("{a}.{b}.{c}+{n}"),
        }
    }

    /// Where the value of the first unprotected TLV of type `tlv_type` lies in `image`.
    pub fn unprotected_tlv(&self, image: &[u8], tlv_type: u16) -> Option<std::ops::Range<usize>> {
        let end = usize::try_from(self.unprotected_at + self.unprotected_size).ok()?;
        let mut at = usize::try_from(self.unprotected_at).ok()? + 4;
        while at + 4 <= end {
            let t = u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?);
            let len = usize::from(u16::from_le_bytes(
                image.get(at + 2..at + 4)?.try_into().ok()?,
            ));
            let value = at + 4..at + 4 + len;
            if value.end > end {
                return None;
            }
            if t == tlv_type {
                return Some(value);
            }
            at = value.end;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/mcuboot")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_layout_of_imgtool_images() {
        // tests/fixtures/mcuboot/make.sh: a 3000-byte payload, 0x200 header, version 1.2.3+4.
        let image = fixture("ecdsa-p256.bin");
        let l = Layout::of(&image).expect("an MCUboot image");
        assert_eq!((l.header_size, l.payload_size), (0x200, 3000));
        assert_eq!(l.version_text(), "1.2.3+4");
        assert!(l.protected_size > 0, "it has a security counter");
        let sig = l
            .unprotected_tlv(&image, KeyType::EcdsaP256.signature_tlv())
            .expect("an ECDSA signature TLV");
        assert!((68..=72).contains(&sig.len()), "a DER signature: {sig:?}");
        assert_eq!(l.unprotected_tlv(&image, 0x24), None);

        let image = fixture("ed25519.bin");
        let l = Layout::of(&image).expect("an MCUboot image");
        assert_eq!(l.header_size, 0x20);
        let sig = l.unprotected_tlv(&image, KeyType::Ed25519.signature_tlv());
        assert_eq!(sig.map(|r| r.len()), Some(64));

        let image = fixture("unsigned.bin");
        let l = Layout::of(&image).expect("an MCUboot image");
        assert_eq!(l.version_text(), "1.2.3");
        assert_eq!(l.unprotected_tlv(&image, 0x22), None);
    }

    #[test]
    fn not_an_image_has_no_layout() {
        assert_eq!(Layout::of(b""), None);
        assert_eq!(Layout::of(&crate::generate_firmware(4096)), None);
        let mut image = fixture("ed25519.bin");
        image.push(0);
        assert_eq!(Layout::of(&image), None, "a byte past the TLV area");
        image.truncate(image.len() - 2);
        assert_eq!(Layout::of(&image), None, "a truncated TLV area");
    }

    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        let mut cmd = Command::new("imgtool");
        cmd.args(["sign", "--version", "2.0.0", "my key.pem", "it's"]);
        assert_eq!(
            command_line(&cmd),
            r"imgtool sign --version 2.0.0 'my key.pem' 'it'\''s'"
        );
    }

    #[test]
    fn the_slot_size_holds_the_image_and_its_trailer() {
        let o = SignOptions::new(None, "1.0.0");
        assert_eq!(o.slot_size_for(0), 0x10000);
        assert_eq!(o.slot_size_for(4 * 1024 * 1024), 0x410000);
        let fixed = SignOptions {
            slot_size: Some(0x20000),
            ..o
        };
        assert_eq!(fixed.slot_size_for(4 * 1024 * 1024), 0x20000);
    }

    #[test]
    fn key_types_by_imgtool_name() {
        for t in [KeyType::EcdsaP256, KeyType::Ed25519] {
            assert_eq!(t.name().parse::<KeyType>(), Ok(t));
        }
        assert!("rsa-2048".parse::<KeyType>().is_err());
    }
}
