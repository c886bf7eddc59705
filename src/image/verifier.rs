//! [`ImageVerifier`]: one pass over the image as it downloads, fixed memory, no allocation.
//!
//! The verifier is a cursor over the image's layout (see [`format`](super::format)): it hashes
//! the header, payload and protected TLV area as they go by, and reads the TLV areas keeping
//! only what the verdict needs (the key hash, one signature, the security counter; the SHA-256
//! TLV is compared byte by byte as it arrives, since the hash it covers is final by then).
//! Structural faults are refused at the byte that reveals them, so the same image gives the
//! same error however it is cut into chunks. The signature is checked by
//! [`finish`](ImageVerifier::finish), with the policy's keys.

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::Digest as _;

use super::format::{
    tlv, ImageHeader, FLAG_ENCRYPTED, HEADER_LEN, IMAGE_MAGIC, TLV_HEADER_LEN, TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
};
use super::{ImageError, ImagePolicy, VerifiedImage};

/// The longest signature kept: an ECDSA P-256 DER signature, zero-padded to 72 by imgtool's
/// `--pad-sig` (unpadded it is 70 to 72 bytes; Ed25519's is 64).
const SIGNATURE_MAX: usize = 72;
/// The shortest DER ECDSA signature: SEQUENCE { INTEGER 1 byte, INTEGER 1 byte }.
const ECDSA_SIG_MIN: u16 = 8;
const ED25519_SIG_LEN: u16 = 64;
const SHA256_LEN: usize = 32;
/// Bytes of a serialized SHA-256 state (sha2 0.11 `SerializableState`).
const SHA_STATE_LEN: usize = 104;

/// Bytes of a state written by [`ImageVerifier::save_state`]: what a breakpoint record must
/// reserve for it.
pub const STATE_MAX: usize = 284;
/// First byte of a saved state: the layout's version, so a record from another layout is
/// refused rather than misread.
const STATE_FORMAT: u8 = 1;

const SEEN_HASH: u8 = 1;
const HASH_MISMATCH: u8 = 2;
const SEEN_KEY_HASH: u8 = 4;
const SEEN_COUNTER: u8 = 8;
const SEEN_ALL: u8 = SEEN_HASH | HASH_MISMATCH | SEEN_KEY_HASH | SEEN_COUNTER;

/// What the first bytes said the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Fewer than 32 bytes so far (and the magic matched, or fewer than 4).
    Pending,
    /// Not an MCUboot image, accepted as unsigned (no signature required): bytes are counted.
    Raw,
    /// An MCUboot image whose header passed its checks.
    Mcuboot,
}

/// Where a TLV's value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Compared with the image hash as it arrives.
    CompareHash,
    KeyHash,
    Signature,
    Counter,
    /// Not needed (or not checkable): passed over.
    Skip,
    /// Needed but of a length we cannot use: refused.
    Misfit,
}

/// The image hash: running until the end of the protected area, then final.
#[derive(Clone)]
enum ImageHash {
    Running(sha2::Sha256),
    Done([u8; SHA256_LEN]),
}

/// Verifies an MCUboot image in one streaming pass: feed every byte in order with
/// [`update`](Self::update) (any chunk sizes), then ask [`finish`](Self::finish). A fixed-size
/// value with no heap and no image-sized buffer; [`save_state`](Self::save_state) /
/// [`restore`](Self::restore) carry it across a reboot with the download's breakpoint.
#[derive(Clone)]
pub struct ImageVerifier {
    require_signature: bool,
    announced_size: Option<u64>,
    received: u64,
    /// The fixed header; bytes beyond `received` are still zero.
    header: [u8; HEADER_LEN],
    kind: Kind,
    hash: ImageHash,
    /// The unprotected TLV area's size from its info; 0 until that info is read.
    unprotected_size: u16,
    /// Start of the TLV being read (or the next one) in the current area.
    tlv_at: u64,
    /// The current area info or TLV header as it arrives.
    tlv_header: [u8; TLV_HEADER_LEN],
    key_hash: [u8; 32],
    signature: [u8; SIGNATURE_MAX],
    signature_len: u8,
    /// The signature TLV's type; 0 while there is none.
    signature_tlv: u16,
    security_counter: [u8; 4],
    seen: u8,
    /// First hash TLV of an unsupported kind (SHA-384/512, pure signature); 0: none.
    unsupported_hash: u16,
    /// First signature TLV of an unsupported kind (RSA, P-224); 0: none.
    unsupported_signature: u16,
    /// The refusal that stopped the stream: every later call returns it.
    failed: Option<ImageError>,
}

impl ImageVerifier {
    /// A verifier for one download under `policy`. Only `require_signature` is read now, so
    /// that a file without the MCUboot magic is refused at its fourth byte; the keys and the
    /// downgrade rule are applied by [`finish`](Self::finish).
    pub fn new(policy: &ImagePolicy) -> ImageVerifier {
        ImageVerifier {
            require_signature: policy.require_signature,
            announced_size: None,
            received: 0,
            header: [0; HEADER_LEN],
            kind: Kind::Pending,
            hash: ImageHash::Running(sha2::Sha256::new()),
            unprotected_size: 0,
            tlv_at: 0,
            tlv_header: [0; TLV_HEADER_LEN],
            key_hash: [0; 32],
            signature: [0; SIGNATURE_MAX],
            signature_len: 0,
            signature_tlv: 0,
            security_counter: [0; 4],
            seen: 0,
            unsupported_hash: 0,
            unsupported_signature: 0,
            failed: None,
        }
    }

    /// The size the platform announced: an MCUboot image whose headers give another length is
    /// refused ([`ImageError::SizeMismatch`]) as soon as they are read, not at the end.
    pub fn with_announced_size(mut self, size: u64) -> ImageVerifier {
        self.announced_size = Some(size);
        self
    }

    /// Bytes fed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The image's header once its 32 bytes arrived and passed their checks (so the payload
    /// offset and version are known early); `None` before, and for a non-MCUboot file.
    pub fn header(&self) -> Option<ImageHeader> {
        (self.kind == Kind::Mcuboot).then(|| ImageHeader::parse(&self.header))
    }

    /// Feeds the next bytes of the image, in order. Returns the refusal as soon as a
    /// structural fault shows (bad magic with a signature required, header, TLV layout,
    /// length); after one, every call returns it again and nothing more is read.
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), ImageError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while !bytes.is_empty() {
            let taken = match self.step(bytes) {
                Ok(taken) => taken,
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
            };
            bytes = bytes.get(taken..).unwrap_or_default();
            self.finalize_hash_at_end_of_protected_area();
        }
        Ok(())
    }

    /// Takes bytes from the start of `bytes` up to the next point of interest (end of the
    /// header, payload, area info, TLV header or value); returns how many, at least one.
    fn step(&mut self, bytes: &[u8]) -> Result<usize, ImageError> {
        match self.kind {
            Kind::Raw => {
                self.received = self.received.saturating_add(bytes.len() as u64);
                Ok(bytes.len())
            }
            Kind::Pending => self.take_header(bytes),
            Kind::Mcuboot => {
                let header = ImageHeader::parse(&self.header);
                let pos = self.received;
                let n = if pos < header.tlv_offset() {
                    take(bytes, header.tlv_offset() - pos)
                } else if pos < header.hashed_len() {
                    self.take_tlv_area(bytes, header.tlv_offset(), true)?
                } else {
                    self.take_tlv_area(bytes, header.hashed_len(), false)?
                };
                if pos < header.hashed_len() {
                    if let ImageHash::Running(sha) = &mut self.hash {
                        sha.update(&bytes[..n]);
                    }
                }
                self.received += n as u64;
                Ok(n)
            }
        }
    }

    /// The first 32 bytes: the magic is judged at byte 4, the rest at byte 32.
    fn take_header(&mut self, bytes: &[u8]) -> Result<usize, ImageError> {
        let at = self.received as usize;
        let upto = if at < 4 { 4 } else { HEADER_LEN };
        let n = take(bytes, (upto - at) as u64);
        self.header[at..at + n].copy_from_slice(&bytes[..n]);
        if let ImageHash::Running(sha) = &mut self.hash {
            sha.update(&bytes[..n]);
        }
        self.received += n as u64;
        if self.received == 4 && self.magic() != IMAGE_MAGIC {
            if self.require_signature {
                return Err(ImageError::NotAnImage {
                    magic: self.magic(),
                });
            }
            self.kind = Kind::Raw;
            self.hash = ImageHash::Running(sha2::Sha256::new());
        } else if self.received == HEADER_LEN as u64 {
            self.check_header(&ImageHeader::parse(&self.header))?;
            self.kind = Kind::Mcuboot;
        }
        Ok(n)
    }

    fn magic(&self) -> u32 {
        u32::from_le_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn check_header(&self, header: &ImageHeader) -> Result<(), ImageError> {
        check_header(header)?;
        let least = header.hashed_len() + TLV_HEADER_LEN as u64;
        match self.announced_size {
            Some(announced) if announced < least => Err(ImageError::SizeMismatch {
                announced,
                image: least,
            }),
            _ => Ok(()),
        }
    }

    /// Bytes of a TLV area starting at `start`: its info, then TLV headers and values.
    /// `tlv_at` is the start of the TLV being read until its value is complete.
    fn take_tlv_area(
        &mut self,
        bytes: &[u8],
        start: u64,
        protected: bool,
    ) -> Result<usize, ImageError> {
        let pos = self.received;
        let info_end = start + TLV_HEADER_LEN as u64;
        if pos < info_end {
            let n = self.take_tlv_header_bytes(bytes, start, info_end);
            if pos + n as u64 == info_end {
                self.check_area_info(start, protected)?;
                self.next_tlv(info_end);
            }
            return Ok(n);
        }
        let end = self.area_end(protected);
        if pos >= end {
            return Err(ImageError::TrailingBytes { expected: end });
        }
        let at = self.tlv_at;
        let value_at = at + TLV_HEADER_LEN as u64;
        if pos < value_at {
            if pos == at && end - at < TLV_HEADER_LEN as u64 {
                return Err(ImageError::TlvPastEnd { offset: at, end });
            }
            let n = self.take_tlv_header_bytes(bytes, at, value_at);
            if pos + n as u64 == value_at {
                let (tlv_type, len) = self.current_tlv();
                if value_at + u64::from(len) > end {
                    return Err(ImageError::TlvPastEnd { offset: at, end });
                }
                self.begin_tlv(tlv_type, len, protected)?;
                if len == 0 {
                    self.next_tlv(value_at);
                }
            }
            return Ok(n);
        }
        let (_, len) = self.current_tlv();
        let value_end = value_at + u64::from(len);
        let n = take(bytes, value_end - pos);
        self.take_value((pos - value_at) as usize, &bytes[..n], protected);
        if pos + n as u64 == value_end {
            self.next_tlv(value_end);
        }
        Ok(n)
    }

    /// The current item is done: the next TLV starts at `at`, its header not yet read.
    fn next_tlv(&mut self, at: u64) {
        self.tlv_at = at;
        self.tlv_header = [0; TLV_HEADER_LEN];
    }

    /// Copies bytes of the 4-byte item at `start` (area info or TLV header) up to `end`.
    fn take_tlv_header_bytes(&mut self, bytes: &[u8], start: u64, end: u64) -> usize {
        let pos = self.received;
        let n = take(bytes, end - pos);
        let from = (pos - start) as usize;
        if let Some(dst) = self.tlv_header.get_mut(from..from + n) {
            dst.copy_from_slice(&bytes[..n]);
        }
        n
    }

    fn current_tlv(&self) -> (u16, u16) {
        let [t0, t1, l0, l1] = self.tlv_header;
        (u16::from_le_bytes([t0, t1]), u16::from_le_bytes([l0, l1]))
    }

    /// End of the current area: the protected one's from the header, the unprotected one's
    /// from its info (read before this is asked).
    fn area_end(&self, protected: bool) -> u64 {
        let header = ImageHeader::parse(&self.header);
        if protected {
            header.hashed_len()
        } else {
            header.hashed_len() + u64::from(self.unprotected_size)
        }
    }

    fn check_area_info(&mut self, start: u64, protected: bool) -> Result<(), ImageError> {
        let (magic, size) = self.current_tlv();
        let header = ImageHeader::parse(&self.header);
        let bad = ImageError::BadTlvInfo {
            offset: start,
            magic,
            size,
        };
        if protected {
            if magic != TLV_PROT_INFO_MAGIC || size != header.protect_tlv_size {
                return Err(bad);
            }
            return Ok(());
        }
        if magic != TLV_INFO_MAGIC || usize::from(size) < TLV_HEADER_LEN {
            return Err(bad);
        }
        self.unprotected_size = size;
        let image = header.hashed_len() + u64::from(size);
        match self.announced_size {
            Some(announced) if announced != image => {
                Err(ImageError::SizeMismatch { announced, image })
            }
            _ => Ok(()),
        }
    }

    /// Where the value of a TLV goes, from its header alone (so the same answer holds for
    /// every chunk of the value and after a restore). A key hash or signature whose length
    /// does not fit is `Misfit`, unless an unsupported hash kind was seen first (imgtool writes
    /// the hash TLV first): then it belongs to that algorithm (SHA-384/512 key hashes, P-384
    /// signatures) and is skipped, so the verdict names the algorithm instead.
    fn sink(&self, tlv_type: u16, len: u16, protected: bool) -> Sink {
        let fits = |sink: Sink, len_ok: bool| match (len_ok, self.unsupported_hash) {
            (true, _) => sink,
            (false, 0) => Sink::Misfit,
            (false, _) => Sink::Skip,
        };
        match tlv_type {
            tlv::SHA256 if usize::from(len) != SHA256_LEN => Sink::Misfit,
            tlv::SHA256 if protected => Sink::Skip,
            tlv::SHA256 => Sink::CompareHash,
            tlv::KEYHASH => fits(Sink::KeyHash, len == 32),
            tlv::SEC_CNT if protected && len != 4 => Sink::Misfit,
            tlv::SEC_CNT if protected => Sink::Counter,
            tlv::ED25519 => fits(Sink::Signature, len == ED25519_SIG_LEN),
            tlv::ECDSA_SIG => fits(
                Sink::Signature,
                (ECDSA_SIG_MIN..=SIGNATURE_MAX as u16).contains(&len),
            ),
            _ => Sink::Skip,
        }
    }

    /// A TLV header is complete: refuses a length we cannot use and a second TLV of a kind
    /// we keep one of, and notes what it is.
    fn begin_tlv(&mut self, tlv_type: u16, len: u16, protected: bool) -> Result<(), ImageError> {
        let sink = self.sink(tlv_type, len, protected);
        let flag = match sink {
            Sink::Misfit => return Err(ImageError::TlvLength { tlv_type, len }),
            Sink::CompareHash => SEEN_HASH,
            Sink::KeyHash => SEEN_KEY_HASH,
            Sink::Counter => SEEN_COUNTER,
            Sink::Signature => 0,
            Sink::Skip => {
                self.note_skipped(tlv_type, protected);
                return Ok(());
            }
        };
        let again = match sink {
            Sink::Signature => self.signature_tlv != 0,
            _ => self.seen & flag != 0,
        };
        if again {
            return Err(ImageError::DuplicateTlv { tlv_type });
        }
        self.seen |= flag;
        if sink == Sink::Signature {
            self.signature_tlv = tlv_type;
            self.signature_len = len as u8;
        }
        Ok(())
    }

    /// A TLV whose value is not kept: notes the hash and signature kinds we cannot check.
    fn note_skipped(&mut self, tlv_type: u16, protected: bool) {
        match tlv_type {
            // A hash inside the area it hashes cannot be the hash of that area.
            tlv::SHA256 if protected => {
                if self.seen & SEEN_HASH != 0 {
                    return;
                }
                self.seen |= SEEN_HASH | HASH_MISMATCH;
            }
            tlv::SHA384 | tlv::SHA512 if self.unsupported_hash == 0 => {
                self.unsupported_hash = tlv_type;
            }
            // The decisive reason even after the SHA-512 TLV that comes with it.
            tlv::SIG_PURE => self.unsupported_hash = tlv_type,
            tlv::RSA2048_PSS | tlv::ECDSA224 | tlv::RSA3072_PSS
                if self.unsupported_signature == 0 =>
            {
                self.unsupported_signature = tlv_type;
            }
            _ => {}
        }
    }

    /// Value bytes at offset `at` of the current TLV: kept, compared or skipped.
    fn take_value(&mut self, at: usize, bytes: &[u8], protected: bool) {
        let (tlv_type, len) = self.current_tlv();
        let keep: &mut [u8] = match self.sink(tlv_type, len, protected) {
            Sink::CompareHash => {
                let matches = match &self.hash {
                    ImageHash::Done(digest) => digest.get(at..at + bytes.len()) == Some(bytes),
                    ImageHash::Running(_) => false,
                };
                if !matches {
                    self.seen |= HASH_MISMATCH;
                }
                return;
            }
            Sink::KeyHash => &mut self.key_hash,
            Sink::Counter => &mut self.security_counter,
            Sink::Signature => &mut self.signature,
            Sink::Skip | Sink::Misfit => return,
        };
        if let Some(dst) = keep.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    fn finalize_hash_at_end_of_protected_area(&mut self) {
        if self.kind != Kind::Mcuboot
            || self.received != ImageHeader::parse(&self.header).hashed_len()
        {
            return;
        }
        if let ImageHash::Running(sha) = &self.hash {
            self.hash = ImageHash::Done(sha.clone().finalize().into());
        }
    }

    /// The verdict on the bytes fed so far, under `policy` (the same policy as given to
    /// [`new`](Self::new); a signature is required when either says so). May be asked again.
    ///
    /// Not an MCUboot file: accepted as unsigned unless a signature is required. An MCUboot
    /// image must be whole and exact, its SHA-256 TLV must match; its signature is checked when
    /// it has one and keys are configured (and must exist and verify when required); its
    /// version and security counter must not be below the running ones unless downgrades are
    /// allowed. The first failing check is the error.
    pub fn finish(&self, policy: &ImagePolicy) -> Result<VerifiedImage, ImageError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let require = self.require_signature || policy.require_signature;
        let raw = || VerifiedImage {
            mcuboot: false,
            signed: false,
            key_index: None,
            version: None,
            security_counter: None,
            payload_offset: 0,
            payload_size: self.received,
        };
        match self.kind {
            Kind::Pending if self.received >= 4 => Err(ImageError::Truncated {
                received: self.received,
                expected: HEADER_LEN as u64,
            }),
            Kind::Pending | Kind::Raw if require => Err(ImageError::NotAnImage {
                magic: self.magic(),
            }),
            Kind::Pending | Kind::Raw => Ok(raw()),
            Kind::Mcuboot => self.finish_mcuboot(policy, require),
        }
    }

    fn finish_mcuboot(
        &self,
        policy: &ImagePolicy,
        require: bool,
    ) -> Result<VerifiedImage, ImageError> {
        let header = ImageHeader::parse(&self.header);
        if self.received < header.tlv_offset() {
            return Err(ImageError::Truncated {
                received: self.received,
                expected: header.tlv_offset(),
            });
        }
        let image_end = match self.unprotected_size {
            0 => header.hashed_len() + TLV_HEADER_LEN as u64,
            size => header.hashed_len() + u64::from(size),
        };
        if self.unprotected_size == 0 || self.received < image_end {
            return Err(ImageError::TlvTruncated {
                received: self.received,
                expected: image_end,
            });
        }
        let ImageHash::Done(digest) = &self.hash else {
            return Err(ImageError::MissingHash);
        };
        if self.seen & SEEN_HASH == 0 {
            return Err(match self.unsupported_hash {
                0 => ImageError::MissingHash,
                tlv_type => ImageError::Unsupported { tlv_type },
            });
        }
        if self.seen & HASH_MISMATCH != 0 {
            return Err(ImageError::HashMismatch);
        }
        if require && policy.keys.is_empty() {
            return Err(ImageError::NoKeys);
        }
        let key_index = match (self.signature_tlv, policy.keys.is_empty()) {
            (0, _) if require => {
                return Err(match self.unsupported_signature {
                    0 => ImageError::MissingSignature,
                    tlv_type => ImageError::Unsupported { tlv_type },
                })
            }
            (0, _) | (_, true) => None,
            _ => Some(self.check_signature(policy, digest)?),
        };
        let counter =
            (self.seen & SEEN_COUNTER != 0).then(|| u32::from_le_bytes(self.security_counter));
        if !policy.allow_downgrade {
            if let Some(running) = policy.running_version {
                if header.version.is_lower_than(&running) {
                    return Err(ImageError::Downgrade {
                        running,
                        image: header.version,
                    });
                }
            }
            if let Some(running) = policy.running_security_counter {
                let image = counter.unwrap_or(0);
                if image < running {
                    return Err(ImageError::CounterDowngrade { running, image });
                }
            }
        }
        Ok(VerifiedImage {
            mcuboot: true,
            signed: key_index.is_some(),
            key_index,
            version: Some(header.version),
            security_counter: counter,
            payload_offset: u64::from(header.hdr_size),
            payload_size: u64::from(header.img_size),
        })
    }

    /// The key hash picks the key; without one every key of the signature's algorithm is tried.
    fn check_signature(
        &self,
        policy: &ImagePolicy,
        digest: &[u8; SHA256_LEN],
    ) -> Result<usize, ImageError> {
        let signature = &self.signature[..usize::from(self.signature_len)];
        let verifies =
            |index: usize| policy.keys[index].verifies(digest, self.signature_tlv, signature);
        if self.seen & SEEN_KEY_HASH != 0 {
            let index = policy
                .keys
                .iter()
                .position(|key| key.key_hash() == &self.key_hash)
                .ok_or(ImageError::UnknownKey)?;
            return if verifies(index) {
                Ok(index)
            } else {
                Err(ImageError::BadSignature)
            };
        }
        let mut candidates = (0..policy.keys.len())
            .filter(|&i| policy.keys[i].algorithm().signature_tlv() == self.signature_tlv)
            .peekable();
        if candidates.peek().is_none() {
            return Err(ImageError::UnknownKey);
        }
        candidates
            .find(|&i| verifies(i))
            .ok_or(ImageError::BadSignature)
    }

    /// Writes the running state (everything fed so far) into `out` so that
    /// [`restore`](Self::restore) continues the verification after a restart, e.g. from the
    /// download's breakpoint record. Returns [`STATE_MAX`], or 0 with nothing written when
    /// `out` is shorter or the verifier already refused the image (a refused download is not
    /// resumed). No allocation. The layout is this crate's, versioned by its first byte.
    pub fn save_state(&self, out: &mut [u8]) -> usize {
        let Some(out) = out.get_mut(..STATE_MAX) else {
            return 0;
        };
        if self.failed.is_some() {
            return 0;
        }
        out.fill(0);
        let mut w = Cursor { buf: out, at: 0 };
        w.put(&[STATE_FORMAT, self.kind as u8, self.flags()]);
        w.put(&self.received.to_le_bytes());
        w.put(&self.announced_size.unwrap_or(0).to_le_bytes());
        w.put(&self.header);
        let hash = w.field(SHA_STATE_LEN);
        match (&self.hash, self.kind) {
            (ImageHash::Running(sha), Kind::Pending | Kind::Mcuboot) => {
                hash.copy_from_slice(&sha.serialize())
            }
            (ImageHash::Done(digest), _) => hash[..SHA256_LEN].copy_from_slice(digest),
            (ImageHash::Running(_), Kind::Raw) => {}
        }
        w.put(&self.unprotected_size.to_le_bytes());
        w.put(&self.tlv_at.to_le_bytes());
        w.put(&self.tlv_header);
        w.put(&self.key_hash);
        w.put(&self.signature);
        w.put(&[self.signature_len]);
        w.put(&self.signature_tlv.to_le_bytes());
        w.put(&self.security_counter);
        w.put(&self.unsupported_hash.to_le_bytes());
        w.put(&self.unsupported_signature.to_le_bytes());
        debug_assert_eq!(w.at, STATE_MAX);
        STATE_MAX
    }

    fn flags(&self) -> u8 {
        self.seen
            | u8::from(self.require_signature) << 4
            | u8::from(self.announced_size.is_some()) << 5
    }

    /// Rebuilds a verifier from a state written by [`save_state`](Self::save_state). `None`
    /// unless `state` is exactly such a state: its length, format byte and flags, a header
    /// that passed its checks, positions that fit the image's layout, a hash state that has
    /// absorbed exactly the hashed bytes received, zeros wherever nothing was written, and
    /// bytes that save back unchanged.
    pub fn restore(state: &[u8]) -> Option<ImageVerifier> {
        if state.len() != STATE_MAX {
            return None;
        }
        let mut r = Cursor { buf: state, at: 0 };
        let [format, kind, flags] = r.array()?;
        let kind = match (format, kind) {
            (STATE_FORMAT, 0) => Kind::Pending,
            (STATE_FORMAT, 1) => Kind::Raw,
            (STATE_FORMAT, 2) => Kind::Mcuboot,
            _ => return None,
        };
        if flags & !(SEEN_ALL | 0x30) != 0 {
            return None;
        }
        let received = u64::from_le_bytes(r.array()?);
        let announced = u64::from_le_bytes(r.array()?);
        let announced_size = match flags & 0x20 {
            0 if announced != 0 => return None,
            0 => None,
            _ => Some(announced),
        };
        let header: [u8; HEADER_LEN] = r.array()?;
        let hash_field = r.field(SHA_STATE_LEN)?;
        let v = ImageVerifier {
            require_signature: flags & 0x10 != 0,
            announced_size,
            received,
            header,
            kind,
            hash: ImageHash::Done([0; SHA256_LEN]),
            unprotected_size: u16::from_le_bytes(r.array()?),
            tlv_at: u64::from_le_bytes(r.array()?),
            tlv_header: r.array()?,
            key_hash: r.array()?,
            signature: r.array()?,
            signature_len: u8::from_le_bytes(r.array()?),
            signature_tlv: u16::from_le_bytes(r.array()?),
            security_counter: r.array()?,
            seen: flags & SEEN_ALL,
            unsupported_hash: u16::from_le_bytes(r.array()?),
            unsupported_signature: u16::from_le_bytes(r.array()?),
            failed: None,
        };
        let hashed = v.hashed_so_far();
        let v = ImageVerifier {
            hash: restore_hash(hash_field, hashed, kind)?,
            ..v
        };
        if !v.is_reachable() {
            return None;
        }
        // Canonical: what was read saves back to the same bytes (nothing ignored on the way).
        let mut again = [0u8; STATE_MAX];
        (v.save_state(&mut again) == STATE_MAX && again[..] == *state).then_some(v)
    }

    /// Bytes the image hash has absorbed at this point (`None`: final), as `update` leaves it.
    fn hashed_so_far(&self) -> Option<u64> {
        match self.kind {
            Kind::Pending => Some(self.received),
            Kind::Raw => Some(0),
            Kind::Mcuboot => {
                let hashed_len = ImageHeader::parse(&self.header).hashed_len();
                (self.received < hashed_len).then_some(self.received)
            }
        }
    }

    /// Whether `update` could have left the verifier in this state: the checks of `restore`.
    fn is_reachable(&self) -> bool {
        let received = self.received;
        let header_filled = received.min(HEADER_LEN as u64) as usize;
        if self.header[header_filled..].iter().any(|&b| b != 0) {
            return false;
        }
        match self.kind {
            Kind::Pending => {
                received < HEADER_LEN as u64
                    && (received < 4 || self.magic() == IMAGE_MAGIC)
                    && self.nothing_read_past_the_header()
            }
            Kind::Raw => {
                !self.require_signature
                    && received >= 4
                    && self.magic() != IMAGE_MAGIC
                    && self.header[4..].iter().all(|&b| b == 0)
                    && self.nothing_read_past_the_header()
            }
            Kind::Mcuboot => {
                let header = ImageHeader::parse(&self.header);
                received >= HEADER_LEN as u64
                    && header.magic == IMAGE_MAGIC
                    && self.check_header(&header).is_ok()
                    && self.tlv_cursor_fits(&header)
                    && self.kept_values_fit()
            }
        }
    }

    fn nothing_read_past_the_header(&self) -> bool {
        self.nothing_kept() && self.tlv_at == 0 && self.tlv_header == [0; TLV_HEADER_LEN]
    }

    /// No TLV has been judged yet.
    fn nothing_kept(&self) -> bool {
        self.seen == 0
            && self.unprotected_size == 0
            && self.signature_tlv == 0
            && self.kept_values_fit()
            && self.key_hash == [0; 32]
            && self.security_counter == [0; 4]
            && self.unsupported_hash == 0
            && self.unsupported_signature == 0
    }

    /// The TLV cursor lies where the bytes received put it, within its area.
    fn tlv_cursor_fits(&self, header: &ImageHeader) -> bool {
        let pos = self.received;
        let four = TLV_HEADER_LEN as u64;
        if pos < header.tlv_offset() {
            return self.nothing_read_past_the_header();
        }
        let protected = pos < header.hashed_len();
        let area_start = if protected {
            header.tlv_offset()
        } else {
            header.hashed_len()
        };
        if pos < area_start + four {
            // Reading the area's info: the cursor is where the protected area ended, if any.
            let expected_at = match protected || header.protect_tlv_size == 0 {
                true => 0,
                false => header.hashed_len(),
            };
            let read = (pos - area_start) as usize;
            return self.unprotected_size == 0
                && self.tlv_at == expected_at
                && self.tlv_header[read..].iter().all(|&b| b == 0)
                && (!protected || self.nothing_kept());
        }
        let sizes_ok = match protected {
            true => self.unprotected_size == 0,
            false => {
                let image = header.hashed_len() + u64::from(self.unprotected_size);
                usize::from(self.unprotected_size) >= TLV_HEADER_LEN
                    && self
                        .announced_size
                        .is_none_or(|announced| announced == image)
            }
        };
        let end = self.area_end(protected);
        let at = self.tlv_at;
        if !(sizes_ok && area_start + four <= at && at <= pos && pos <= end) {
            return false;
        }
        let read = pos - at;
        if read < four {
            return (read == 0 || at + four <= end)
                && self.tlv_header[read as usize..].iter().all(|&b| b == 0);
        }
        let (tlv_type, len) = self.current_tlv();
        let value_end = at + four + u64::from(len);
        pos < value_end && value_end <= end && self.value_fits(tlv_type, len, protected)
    }

    /// The current TLV's value can go where `take_value` puts it.
    fn value_fits(&self, tlv_type: u16, len: u16, protected: bool) -> bool {
        match self.sink(tlv_type, len, protected) {
            Sink::Misfit => false,
            Sink::Skip => true,
            Sink::CompareHash => self.seen & SEEN_HASH != 0,
            Sink::KeyHash => self.seen & SEEN_KEY_HASH != 0,
            Sink::Counter => self.seen & SEEN_COUNTER != 0,
            Sink::Signature => {
                self.signature_tlv == tlv_type && u16::from(self.signature_len) == len
            }
        }
    }

    fn kept_values_fit(&self) -> bool {
        let len = usize::from(self.signature_len);
        let signature_ok = match self.signature_tlv {
            0 => len == 0,
            tlv::ED25519 => len == usize::from(ED25519_SIG_LEN),
            tlv::ECDSA_SIG => (usize::from(ECDSA_SIG_MIN)..=SIGNATURE_MAX).contains(&len),
            _ => false,
        };
        let unsupported_ok = matches!(
            self.unsupported_hash,
            0 | tlv::SHA384 | tlv::SHA512 | tlv::SIG_PURE
        ) && matches!(
            self.unsupported_signature,
            0 | tlv::RSA2048_PSS | tlv::ECDSA224 | tlv::RSA3072_PSS
        );
        signature_ok
            && unsupported_ok
            && self.signature[len..].iter().all(|&b| b == 0)
            && (self.seen & SEEN_KEY_HASH != 0 || self.key_hash == [0; 32])
            && (self.seen & SEEN_COUNTER != 0 || self.security_counter == [0; 4])
            && (self.seen & SEEN_HASH != 0 || self.seen & HASH_MISMATCH == 0)
    }
}

/// The bytes of `bytes` up to `limit`.
fn take(bytes: &[u8], limit: u64) -> usize {
    usize::try_from(limit).map_or(bytes.len(), |limit| limit.min(bytes.len()))
}

/// The header checks that do not depend on the download (the announced size is separate).
fn check_header(header: &ImageHeader) -> Result<(), ImageError> {
    if usize::from(header.hdr_size) < HEADER_LEN {
        return Err(ImageError::HeaderTooSmall {
            hdr_size: header.hdr_size,
        });
    }
    if header.flags & FLAG_ENCRYPTED != 0 {
        return Err(ImageError::Encrypted {
            flags: header.flags,
        });
    }
    if (1..TLV_HEADER_LEN as u16).contains(&header.protect_tlv_size) {
        return Err(ImageError::BadTlvInfo {
            offset: header.tlv_offset(),
            magic: 0,
            size: header.protect_tlv_size,
        });
    }
    Ok(())
}

/// The image hash from its saved field: a SHA-256 state that absorbed exactly `hashed` bytes,
/// or (`None`) the final digest followed by zeros; a raw file keeps zeros.
fn restore_hash(field: &[u8], hashed: Option<u64>, kind: Kind) -> Option<ImageHash> {
    match hashed {
        Some(_) if kind == Kind::Raw => field
            .iter()
            .all(|&b| b == 0)
            .then(|| ImageHash::Running(sha2::Sha256::new())),
        Some(hashed) => {
            let state = SerializedState::<sha2::Sha256>::try_from(field).ok()?;
            let sha = sha2::Sha256::deserialize(&state).ok()?;
            let absorbed =
                crate::digest::StreamDigest::state_bytes(crate::digest::DigestKind::Sha256, field)?;
            (absorbed == hashed).then_some(ImageHash::Running(sha))
        }
        None => {
            let (digest, rest) = field.split_at(SHA256_LEN);
            rest.iter()
                .all(|&b| b == 0)
                .then(|| ImageHash::Done(digest.try_into().unwrap_or([0; SHA256_LEN])))
        }
    }
}

/// A position in a state buffer, for writing and reading fields in order.
struct Cursor<B> {
    buf: B,
    at: usize,
}

impl Cursor<&mut [u8]> {
    fn field(&mut self, len: usize) -> &mut [u8] {
        let start = self.at;
        self.at += len;
        &mut self.buf[start..start + len]
    }

    fn put(&mut self, bytes: &[u8]) {
        self.field(bytes.len()).copy_from_slice(bytes);
    }
}

impl<'a> Cursor<&'a [u8]> {
    fn field(&mut self, len: usize) -> Option<&'a [u8]> {
        let field = self.buf.get(self.at..self.at + len)?;
        self.at += len;
        Some(field)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.field(N)?.try_into().ok()
    }
}
