//! The vendor's public keys a device trusts, with the key hash imgtool writes in the KEYHASH TLV.
//!
//! imgtool hashes the public key as DER `SubjectPublicKeyInfo` with the image's hash algorithm
//! (SHA-256 for both algorithms here), so a key given raw is first rebuilt into that DER form.

use sha2::Digest as _;

use super::format::tlv;

/// The signature algorithm of an [`ImageKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 over the 32-byte image hash (ED25519 TLV, 64-byte signature).
    Ed25519,
    /// ECDSA P-256 with SHA-256, prehashed: the image hash is the message digest (ECDSA_SIG
    /// TLV, ASN.1 DER signature).
    EcdsaP256,
}

impl KeyAlgorithm {
    /// The signature TLV type an image signed with this algorithm carries.
    pub fn signature_tlv(self) -> u16 {
        match self {
            KeyAlgorithm::Ed25519 => tlv::ED25519,
            KeyAlgorithm::EcdsaP256 => tlv::ECDSA_SIG,
        }
    }
}

/// Why a key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageKeyError {
    /// Neither PEM, nor DER `SubjectPublicKeyInfo`, nor a raw key of 32 or 65 bytes.
    #[error("not a PEM, DER or raw public key")]
    NotAKey,
    /// A private key (PEM `PRIVATE KEY`, `EC PRIVATE KEY`, ...): refused so that a signing key
    /// never ships on devices; `imgtool getpub -k KEY -e pem` gives the public half.
    #[error("a private key: give the device the public key (imgtool getpub -e pem)")]
    PrivateKey,
    /// A well-formed key of another algorithm or curve (RSA, P-384, a compressed point...).
    #[error("not an Ed25519 or uncompressed ECDSA P-256 public key")]
    UnsupportedAlgorithm,
    /// The 65 bytes are not a point on the P-256 curve.
    #[error("not a valid P-256 public key")]
    BadPoint,
    /// An ECDSA P-256 key in a build without the `ecdsa-p256` feature.
    #[error("ECDSA P-256 support is not built in (feature ecdsa-p256)")]
    EcdsaNotBuilt,
}

/// DER `SubjectPublicKeyInfo` up to the key bytes: id-ecPublicKey, prime256v1, BIT STRING of 66.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER `SubjectPublicKeyInfo` up to the key bytes: id-Ed25519, BIT STRING of 33.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Uncompressed SEC1 P-256 point: 0x04, X, Y.
const P256_POINT_LEN: usize = 65;
const ED25519_KEY_LEN: usize = 32;
/// Room for a decoded PEM body: the longest key we accept is 91 bytes of DER.
const PEM_DER_MAX: usize = 128;

/// One trusted public key with its key hash. A fixed-size value (no allocation), so a policy
/// holding several (key rotation) is allocated once when it is configured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ImageKey {
    algorithm: KeyAlgorithm,
    /// Ed25519: the first 32 bytes; P-256: the uncompressed point.
    public: [u8; P256_POINT_LEN],
    hash: [u8; 32],
}

impl core::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut hex = [0u8; 64];
        f.debug_struct("ImageKey")
            .field("algorithm", &self.algorithm)
            .field("hash", &crate::digest::to_hex(&self.hash, &mut hex))
            .finish()
    }
}

impl ImageKey {
    /// A key from whatever form it comes in: PEM (`PUBLIC KEY`, as `imgtool getpub -e pem`
    /// prints it), DER `SubjectPublicKeyInfo`, or raw bytes (32: Ed25519; 65: uncompressed
    /// SEC1 P-256, as `imgtool getpub -e raw` prints the DER minus its prefix).
    pub fn parse(bytes: &[u8]) -> Result<ImageKey, ImageKeyError> {
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN ") {
            return Self::from_pem(text);
        }
        match bytes.len() {
            ED25519_KEY_LEN | P256_POINT_LEN => Self::from_raw(bytes),
            _ => Self::from_der(bytes),
        }
    }

    /// A key from PEM text holding one `PUBLIC KEY` block (SubjectPublicKeyInfo).
    pub fn from_pem(pem: &[u8]) -> Result<ImageKey, ImageKeyError> {
        let mut der = [0u8; PEM_DER_MAX];
        let len = pem_body(pem, &mut der)?;
        Self::from_der(&der[..len])
    }

    /// A key from DER `SubjectPublicKeyInfo`: Ed25519 or P-256 with an uncompressed point.
    pub fn from_der(der: &[u8]) -> Result<ImageKey, ImageKeyError> {
        if let Some(point) = der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            if point.len() == P256_POINT_LEN {
                return Self::from_raw(point);
            }
            return Err(ImageKeyError::NotAKey);
        }
        if let Some(key) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            if key.len() == ED25519_KEY_LEN {
                return Self::from_raw(key);
            }
            return Err(ImageKeyError::NotAKey);
        }
        // A DER SEQUENCE of another algorithm is a key we do not support, not garbage.
        match der.first() {
            Some(0x30) if der.len() > 2 => Err(ImageKeyError::UnsupportedAlgorithm),
            _ => Err(ImageKeyError::NotAKey),
        }
    }

    /// A key from its raw bytes: 32 for Ed25519, 65 (0x04, X, Y) for P-256.
    pub fn from_raw(raw: &[u8]) -> Result<ImageKey, ImageKeyError> {
        let mut public = [0u8; P256_POINT_LEN];
        let mut sha = sha2::Sha256::new();
        let algorithm = match raw.len() {
            ED25519_KEY_LEN => {
                sha.update(ED25519_SPKI_PREFIX);
                KeyAlgorithm::Ed25519
            }
            P256_POINT_LEN if raw[0] == 0x04 => {
                check_p256_point(raw)?;
                sha.update(P256_SPKI_PREFIX);
                KeyAlgorithm::EcdsaP256
            }
            P256_POINT_LEN => return Err(ImageKeyError::UnsupportedAlgorithm),
            _ => return Err(ImageKeyError::NotAKey),
        };
        sha.update(raw);
        public[..raw.len()].copy_from_slice(raw);
        Ok(ImageKey {
            algorithm,
            public,
            hash: sha.finalize().into(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// SHA-256 of the key's DER `SubjectPublicKeyInfo`: what imgtool writes in the KEYHASH TLV
    /// (and `imgtool getpub` does not print; this is how to find it).
    pub fn key_hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The raw public key: 32 bytes (Ed25519) or the 65-byte uncompressed point (P-256).
    pub fn public_key(&self) -> &[u8] {
        match self.algorithm {
            KeyAlgorithm::Ed25519 => &self.public[..ED25519_KEY_LEN],
            KeyAlgorithm::EcdsaP256 => &self.public,
        }
    }

    /// Whether `signature`, from a TLV of type `signature_tlv`, signs the image hash `digest`
    /// with this key. A signature of the other algorithm is simply not valid.
    pub fn verifies(&self, digest: &[u8; 32], signature_tlv: u16, signature: &[u8]) -> bool {
        if signature_tlv != self.algorithm.signature_tlv() {
            return false;
        }
        match self.algorithm {
            KeyAlgorithm::Ed25519 => {
                let key = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ED25519,
                    self.public_key(),
                );
                key.verify(digest, signature).is_ok()
            }
            KeyAlgorithm::EcdsaP256 => verify_p256(&self.public, digest, signature),
        }
    }
}

#[cfg(feature = "ecdsa-p256")]
fn check_p256_point(point: &[u8]) -> Result<(), ImageKeyError> {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
        .map(|_| ())
        .map_err(|_| ImageKeyError::BadPoint)
}

#[cfg(not(feature = "ecdsa-p256"))]
fn check_p256_point(_point: &[u8]) -> Result<(), ImageKeyError> {
    Err(ImageKeyError::EcdsaNotBuilt)
}

/// ECDSA P-256 over a digest computed elsewhere (ring verifies only whole messages). imgtool's
/// `--pad-sig` appends zeros after the DER, which MCUboot ignores: so do we, and nothing else.
#[cfg(feature = "ecdsa-p256")]
fn verify_p256(point: &[u8; P256_POINT_LEN], digest: &[u8; 32], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let der_len = match signature {
        [0x30, len, ..] if *len < 0x80 => usize::from(*len) + 2,
        _ => return false,
    };
    let Some((der, padding)) = signature.split_at_checked(der_len) else {
        return false;
    };
    if padding.iter().any(|&b| b != 0) {
        return false;
    }
    let (Ok(key), Ok(signature)) = (
        p256::ecdsa::VerifyingKey::from_sec1_bytes(point),
        p256::ecdsa::Signature::from_der(der),
    ) else {
        return false;
    };
    key.verify_prehash(digest, &signature).is_ok()
}

#[cfg(not(feature = "ecdsa-p256"))]
fn verify_p256(_point: &[u8; P256_POINT_LEN], _digest: &[u8; 32], _signature: &[u8]) -> bool {
    false
}

/// Decodes the base64 body of the first PEM block into `out`; refuses private keys by label.
fn pem_body(pem: &[u8], out: &mut [u8; PEM_DER_MAX]) -> Result<usize, ImageKeyError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let start = find(pem, BEGIN).ok_or(ImageKeyError::NotAKey)? + BEGIN.len();
    let label_len = find(&pem[start..], DASHES).ok_or(ImageKeyError::NotAKey)?;
    let label = &pem[start..start + label_len];
    if label.ends_with(b"PRIVATE KEY") {
        return Err(ImageKeyError::PrivateKey);
    }
    if label != b"PUBLIC KEY" {
        return Err(ImageKeyError::NotAKey);
    }
    let body = &pem[start + label_len + DASHES.len()..];
    let end = find(body, b"-----END PUBLIC KEY-----").ok_or(ImageKeyError::NotAKey)?;
    base64_decode(&body[..end], out).ok_or(ImageKeyError::NotAKey)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with `=` padding, whitespace ignored; `None` on any other byte, on data
/// after the padding, or when `out` is too small.
fn base64_decode(text: &[u8], out: &mut [u8]) -> Option<usize> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let (mut acc, mut bits, mut len, mut padding) = (0u32, 0u32, 0usize, 0usize);
    for &c in text.iter().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        // At most 12 bits are pending before these 6: the rest has been written out.
        acc = ((acc << 6) | sextet(c)?) & 0x3ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(len)? = (acc >> bits) as u8;
            len += 1;
        }
    }
    // Leftover bits must be the zero fill of a properly padded final quantum.
    let quantum_ok = matches!((bits, padding), (0, 0) | (2, 1) | (4, 2));
    (quantum_ok && acc & ((1 << bits) - 1) == 0).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_junk() {
        let mut out = [0u8; 8];
        assert_eq!(base64_decode(b"aGVs\nbG8=", &mut out), Some(5));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(base64_decode(b"aGk=", &mut out), Some(2));
        assert_eq!(base64_decode(b"aA==", &mut out), Some(1));
        assert_eq!(base64_decode(b"", &mut out), Some(0));
        for bad in [
            &b"aGk"[..],
            b"aGk=a",
            b"a*k=",
            b"aGl=",
            b"aB==",
            b"aGVsbG8gd29ybGQ=",
        ] {
            assert_eq!(base64_decode(bad, &mut out), None, "{:?}", bad);
        }
    }

    #[test]
    fn raw_ed25519_key_hash_is_over_its_spki_der() {
        let raw = [7u8; 32];
        let key = ImageKey::from_raw(&raw).unwrap();
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&raw);
        let expected: [u8; 32] = sha2::Sha256::digest(&der).into();
        assert_eq!(key.key_hash(), &expected);
        assert_eq!(ImageKey::from_der(&der).unwrap(), key);
        assert_eq!(ImageKey::parse(&der).unwrap(), key);
        assert_eq!(ImageKey::parse(&raw).unwrap(), key);
        assert_eq!(key.public_key(), &raw);
    }

    #[test]
    fn private_keys_and_other_shapes_are_refused() {
        let private =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(ImageKey::parse(private), Err(ImageKeyError::PrivateKey));
        let ec = b"-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(ImageKey::parse(ec), Err(ImageKeyError::PrivateKey));
        let cert = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        assert_eq!(ImageKey::parse(cert), Err(ImageKeyError::NotAKey));
        assert_eq!(ImageKey::parse(b"short"), Err(ImageKeyError::NotAKey));
        let mut compressed = [0u8; 65];
        compressed[0] = 0x02;
        assert_eq!(
            ImageKey::parse(&compressed),
            Err(ImageKeyError::UnsupportedAlgorithm)
        );
        // An RSA SubjectPublicKeyInfo opening.
        assert_eq!(
            ImageKey::from_der(&[0x30, 0x82, 0x01, 0x22, 0x30, 0x0d]),
            Err(ImageKeyError::UnsupportedAlgorithm)
        );
    }

    #[cfg(feature = "ecdsa-p256")]
    #[test]
    fn a_p256_point_off_the_curve_is_refused() {
        let mut point = [1u8; 65];
        point[0] = 0x04;
        assert_eq!(ImageKey::from_raw(&point), Err(ImageKeyError::BadPoint));
    }

    #[test]
    fn signatures_of_the_other_algorithm_never_verify() {
        let key = ImageKey::from_raw(&[9u8; 32]).unwrap();
        assert!(!key.verifies(&[0; 32], tlv::ECDSA_SIG, &[0x30, 0x06, 2, 1, 1, 2, 1, 1]));
        assert!(!key.verifies(&[0; 32], tlv::ED25519, &[0; 64]));
    }
}
