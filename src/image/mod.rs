//! Signed firmware images in MCUboot's `imgtool` format, verified while they download.
//!
//! The platforms' digests only say the bytes arrived as the upgrade message announced; whoever
//! can send that message chooses the image. A vendor signature made with `imgtool sign` says
//! the vendor built it. [`ImageVerifier`] checks one in a single streaming pass (SHA-256 over
//! header, payload and protected TLVs; ECDSA P-256 or Ed25519 over that hash, the key picked by
//! the KEYHASH TLV; anti-downgrade by version and security counter) in fixed memory, and can be
//! saved and restored with the download's breakpoint. [`ImagePolicy`] says what is required.
//!
//! The format (MCUboot's docs/design.md, "Image format"): a header of `hdr_size` bytes (32
//! fixed, see [`ImageHeader`], then padding), the payload of `img_size` bytes, the protected
//! TLV area of `protect_tlv_size` bytes (absent when 0), then the unprotected TLV area. Each
//! area opens with a 4-byte info (magic 0x6908 protected, 0x6907 unprotected; the area's size
//! including the info) followed by TLVs (type `u16`, length `u16`, value; see [`tlv`]) packed
//! without alignment. All little-endian. The image hash is SHA-256 over everything before the
//! unprotected area; the signature signs that hash.
//!
//! ```no_run
//! use ota::image::{ImageKey, ImagePolicy, ImageVerifier, ImageVersion};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = ImagePolicy {
//!     keys: vec![ImageKey::parse(&std::fs::read("vendor.pub.pem")?)?],
//!     require_signature: true,
//!     running_version: ImageVersion::parse("1.2.3"),
//!     ..ImagePolicy::default()
//! };
//! let mut verifier = ImageVerifier::new(&policy);
//! for chunk in std::fs::read("signed.bin")?.chunks(4096) {
//!     verifier.update(chunk)?; // as each chunk is written to flash
//! }
//! let image = verifier.finish(&policy)?;
//! println!("{:?} signed by key {:?}", image.version, image.key_index);
//! # Ok(()) }
//! ```

// cbindgen reads every integer `pub const` of the crate into include/ota.h; these modules are
// Rust-only, so they are private, marked for cbindgen to skip, and re-exported below.
/// cbindgen:ignore
mod error;
/// cbindgen:ignore
mod format;
/// cbindgen:ignore
mod key;
/// cbindgen:ignore
mod verifier;

pub use error::ImageError;
pub use format::{tlv, ImageHeader, ImageVersion, IMAGE_MAGIC};
pub use key::{ImageKey, ImageKeyError, KeyAlgorithm};
pub use verifier::{ImageVerifier, STATE_MAX};

/// What a device accepts. Set once at configuration (the keys are allocated then, never
/// during a download).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    /// The vendor's public keys; several for rotation. A KEYHASH TLV picks one; without it
    /// each key of the signature's algorithm is tried.
    pub keys: Vec<ImageKey>,
    /// Only MCUboot images signed with one of `keys` are accepted. Off: a file that is not an
    /// MCUboot image passes as unsigned, and an MCUboot image still gets every check that can
    /// be made (its hash; its signature when keys are configured and it has one; downgrade).
    pub require_signature: bool,
    /// The running image's version: an image whose `major.minor.revision` is lower is refused
    /// (the build number does not count, as in MCUboot by default).
    pub running_version: Option<ImageVersion>,
    /// The running image's security counter: an image whose protected SEC_CNT TLV is lower
    /// (an image without one counts as 0) is refused.
    pub running_security_counter: Option<u32>,
    /// Accepts lower versions and security counters (a deliberate rollback).
    pub allow_downgrade: bool,
}

impl ImagePolicy {
    /// Whether the policy asks for anything a plain file cannot give: a signature, or a check
    /// with configured keys.
    pub fn checks_signatures(&self) -> bool {
        self.require_signature || !self.keys.is_empty()
    }
}

/// What [`ImageVerifier::finish`] found in an accepted image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedImage {
    /// An MCUboot image (else a plain file accepted as unsigned).
    pub mcuboot: bool,
    /// Its signature verified with a configured key.
    pub signed: bool,
    /// Which of [`ImagePolicy::keys`] verified it.
    pub key_index: Option<usize>,
    /// The header's version.
    pub version: Option<ImageVersion>,
    /// The protected SEC_CNT TLV.
    pub security_counter: Option<u32>,
    /// Where the payload starts in the file (`hdr_size`; 0 for a plain file), so firmware that
    /// installs the bare payload can strip the header.
    pub payload_offset: u64,
    /// The payload's length (`img_size`; the whole file for a plain file).
    pub payload_size: u64,
}

impl VerifiedImage {
    /// A file accepted as it is, not an MCUboot image: `size` bytes of payload at offset 0.
    pub fn plain(size: u64) -> VerifiedImage {
        VerifiedImage {
            mcuboot: false,
            signed: false,
            key_index: None,
            version: None,
            security_counter: None,
            payload_offset: 0,
            payload_size: size,
        }
    }
}
