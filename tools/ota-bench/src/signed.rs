//! The signed-image rows of section 1: the throughput image signed by the real `imgtool`
//! (ECDSA P-256), downloaded by the C device with the signature not required (the SDK still
//! computes the MCUboot image's SHA-256 beside the platform's MD5) and required (the key added),
//! and the image verifier's own pace in memory.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ota::image::{ImageKey, ImagePolicy, ImageVerifier};
use ota_cloud::imgtool::{Imgtool, KeyType, SignOptions};
use ota_cloud::FirmwareServer;

use super::{mb_s, CDevice, CJob, Campaign, Limit, Measure, Payload, Res, Row};

/// The buffer of the signed rows' C downloads, as the plain row they are compared with.
pub const BUF_LEN: usize = 65536;

/// The throughput image signed by imgtool, and the public key that verifies it.
pub struct SignedImage {
    pub data: Arc<[u8]>,
    /// The public key's PEM file (what the required row adds).
    pub public_key: PathBuf,
    key: ImageKey,
    pub imgtool_version: String,
}

impl SignedImage {
    /// `payload` signed with a new ECDSA P-256 key made in `work`. `Ok(None)` when imgtool
    /// cannot be run (the rows then say so), an error instead when
    /// OTA_REQUIRE_IMGTOOL=required (CI).
    pub fn make(payload: &[u8], work: &Path, c: &Campaign) -> Res<Option<SignedImage>> {
        c.phase("signing the throughput image with imgtool", 1);
        let tool = match Imgtool::find() {
            Ok(tool) => tool,
            Err(e) if std::env::var("OTA_REQUIRE_IMGTOOL").as_deref() == Ok("required") => {
                return Err(format!("OTA_REQUIRE_IMGTOOL=required: {e}").into())
            }
            Err(e) => {
                c.note(&format!("ota-bench: no signed-image rows: {e}"));
                c.step();
                return Ok(None);
            }
        };
        let (key, public_key) = (work.join("bench-key.pem"), work.join("bench-key.pub.pem"));
        let (input, output) = (work.join("payload.bin"), work.join("payload-signed.bin"));
        let _ = std::fs::remove_file(&key);
        tool.keygen(&key, KeyType::EcdsaP256)?;
        tool.getpub(&key, &public_key)?;
        std::fs::write(&input, payload)?;
        tool.sign(&SignOptions::new(Some(key), "2.0.0"), &input, &output)?;
        let data: Arc<[u8]> = Arc::from(std::fs::read(&output)?);
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
        let key = ImageKey::parse(&std::fs::read(&public_key)?)?;
        c.step();
        Ok(Some(SignedImage {
            data,
            public_key,
            key,
            imgtool_version: tool.version()?,
        }))
    }

    /// The policy of a device that requires this image's signature.
    fn policy(&self) -> ImagePolicy {
        ImagePolicy {
            keys: vec![self.key],
            require_signature: true,
            ..ImagePolicy::default()
        }
    }
}

/// The signed image's firmware server and upgrade message.
pub struct SignedServer {
    _server: FirmwareServer,
    message: String,
}

impl SignedServer {
    pub fn start(image: &SignedImage) -> Res<SignedServer> {
        let server = FirmwareServer::start(Arc::clone(&image.data))?;
        let payload = Payload::new(&image.data);
        let message = ota_cloud::aliyun::upgrade_message(&payload.firmware_at(server.url()), 1);
        Ok(SignedServer {
            _server: server,
            message,
        })
    }
}

/// Where the signed rows are in section 1, and what they measured beside their MB/s.
pub struct SignedRows {
    /// The plain image's C row with the same buffer.
    pub plain: usize,
    /// C loop, signature not required; then required; then the verifier in memory.
    pub first: usize,
    /// `ImageVerifier::finish` of the last in-memory pass (hash comparison and signature).
    pub finish_ns: u64,
    /// Which imgtool signed the image.
    pub imgtool_version: String,
}

/// The three rows: the C device without and with the signature required, the verifier in
/// memory. A C run fails unless the image verified, and signed only when required.
pub fn rows<'a>(
    image: &'a SignedImage,
    server: &'a SignedServer,
    dev: &'a CDevice<'a>,
    finish_ns: &'a Cell<u64>,
) -> Vec<Row<'a>> {
    let c_row = move |required: bool| -> Measure<'a> {
        Box::new(move || {
            let mut job = CJob::new(BUF_LEN, &server.message);
            job.image_key = required.then_some(image.public_key.as_path());
            let r = dev.run(&job)?;
            if r.signed != required {
                return Err(format!(
                    "the signed image's C download: IOT_OTAG_IMAGE_SIGNED {} with the signature {}",
                    r.signed as u8,
                    if required { "required" } else { "not required" }
                )
                .into());
            }
            Ok(r.speed())
        })
    };
    let policy = image.policy();
    vec![
        Row::new(
            format!("C FetchYield loop, same image signed (imgtool, P-256), buffer {BUF_LEN}"),
            Limit::Md5,
            c_row(false),
        ),
        Row::new(
            "  the same, signature required (IOT_OTAC_ADD_IMAGE_KEY + REQUIRE)",
            Limit::Md5,
            c_row(true),
        ),
        Row::new(
            "ImageVerifier in memory over it (SHA-256 + P-256), 64 KiB updates",
            Limit::Sha256,
            Box::new(move || {
                let t = Instant::now();
                let mut v =
                    ImageVerifier::new(&policy).with_announced_size(image.data.len() as u64);
                for chunk in image.data.chunks(64 * 1024) {
                    v.update(chunk)?;
                }
                let t_finish = Instant::now();
                let verified = v.finish(&policy)?;
                finish_ns.set(t_finish.elapsed().as_nanos() as u64);
                if !verified.signed {
                    return Err("the verifier did not check the signature".into());
                }
                Ok(mb_s(image.data.len(), t.elapsed().as_secs_f64()))
            }),
        ),
    ]
}

/// The row labels without measurements, when imgtool is missing.
pub const MISSING: &str = "signed image rows: imgtool not found (pip install imgtool)";

/// The lines under the table: what the signature costs, from the rows' medians.
pub fn cost_lines(medians: &[f64], at: &SignedRows, md5_limit: f64, sha_limit: f64) -> [String; 3] {
    let plain = medians[at.plain];
    let (not_required, required) = (medians[at.first], medians[at.first + 1]);
    // Both digests over the same bytes on one core: the bound of a loop that computes both.
    let both = 1.0 / (1.0 / md5_limit + 1.0 / sha_limit);
    [
        format!(
            "   signed image (imgtool {}, ECDSA P-256), C loop, buffer {BUF_LEN}, medians:",
            at.imgtool_version
        ),
        format!(
            "     signature not required {not_required:.1} MB/s = {:.2} of the plain image's {plain:.1}: \
             its SHA-256 is computed beside the platform's MD5 (MD5 + SHA-256 limits on one core: {both:.1} MB/s)",
            not_required / plain
        ),
        format!(
            "     signature required {required:.1} MB/s = {:.2} of not required: one P-256 verification at the end \
             (ImageVerifier::finish in memory: {:.3} ms)",
            required / not_required,
            at.finish_ns as f64 / 1e6
        ),
    ]
}
