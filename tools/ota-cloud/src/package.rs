//! Packages of several files (a `files` array in one upgrade) and single files streamed over
//! MQTT (`dProtocol` `mqtt`), cloud side, for Aliyun and SagooIOT: the upgrade message as
//! `docs/packages.md` describes it, and what the cloud checks about the device's download
//! ([`PackageMeter`]: the bytes handed out so far, and whether every file went out whole).
//!
//! Pure but for [`Package::serve_on`] and [`HttpPackageMeter`], which read a
//! [`FirmwareServer`]. The MQTT side of the transfer is [`crate::mqtt_download`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::http::{FirmwareServer, RequestLog, SentMeter};
use crate::options::{CloudOptions, Protocol};
use crate::platform::{md5_hex, sha256_hex, Firmware};
use crate::sagoo::{self, SignMethod};

/// The `dProtocol` value of a download over MQTT (the SDK compares it lowercase).
pub const MQTT_D_PROTOCOL: &str = "mqtt";

/// The `streamId` the simulator announces unless told otherwise.
pub const DEFAULT_STREAM_ID: u32 = 1234;

/// A file's name and bytes, as [`Package::new`] takes them.
pub type NamedFile = (String, Arc<[u8]>);

/// One file of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// `fileName`.
    pub name: String,
    pub data: Arc<[u8]>,
    /// `fileUrl` (HTTP): set by [`Package::serve_on`].
    pub url: String,
    /// `streamFileId` (MQTT): the file's 1-based place in the package.
    pub stream_file_id: u32,
    pub md5: String,
    pub sha256: String,
}

impl PackageFile {
    pub fn new(name: impl Into<String>, data: impl Into<Arc<[u8]>>) -> PackageFile {
        let data = data.into();
        PackageFile {
            name: name.into(),
            md5: md5_hex(&data),
            sha256: sha256_hex(&data),
            data,
            url: String::new(),
            stream_file_id: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn sign(&self, method: SignMethod) -> &str {
        match method {
            SignMethod::Md5 => &self.md5,
            SignMethod::Sha256 => &self.sha256,
        }
    }
}

/// How the device is told to fetch the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Each file at its own URL (`fileUrl`).
    Http,
    /// Blocks requested over MQTT (`dProtocol` `mqtt`, this `streamId`; `streamFileId` per
    /// file).
    Mqtt { stream_id: u32 },
}

/// What one upgrade delivers: one or more files, over HTTP or MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package's version (one for all files).
    pub version: String,
    /// In install order; `streamFileId` 1, 2, ...
    pub files: Vec<PackageFile>,
    pub delivery: Delivery,
    /// The message lists the files in a `files` array (true), or describes its one file with
    /// the single-file fields (`size`, `sign`, and `url` or `streamFileId`): a plain upgrade
    /// over MQTT.
    pub files_array: bool,
}

impl Package {
    /// A package of `files` (name, bytes) in install order, over HTTP, announced with a
    /// `files` array. Fails for no files, an empty or repeated name, or a name that cannot be
    /// a URL path segment (`/`, `?`, `#`).
    pub fn new(version: impl Into<String>, files: Vec<NamedFile>) -> Result<Package, String> {
        if files.is_empty() {
            return Err("a package holds at least one file".into());
        }
        let mut out: Vec<PackageFile> = Vec::with_capacity(files.len());
        for (i, (name, data)) in files.into_iter().enumerate() {
            if name.is_empty() || name.contains(['/', '?', '#']) {
                return Err(format!("{name:?} cannot name a file of the package"));
            }
            if out.iter().any(|f| f.name == name) {
                return Err(format!("two files named {name:?} in the package"));
            }
            let mut file = PackageFile::new(name, data);
            file.stream_file_id = i as u32 + 1;
            out.push(file);
        }
        Ok(Package {
            version: version.into(),
            files: out,
            delivery: Delivery::Http,
            files_array: true,
        })
    }

    /// One file streamed over MQTT, announced with the single-file fields (no `files`).
    pub fn single_over_mqtt(
        version: impl Into<String>,
        name: impl Into<String>,
        data: impl Into<Arc<[u8]>>,
        stream_id: u32,
    ) -> Package {
        let mut file = PackageFile::new(name, data);
        file.stream_file_id = 1;
        Package {
            version: version.into(),
            files: vec![file],
            delivery: Delivery::Mqtt { stream_id },
            files_array: false,
        }
    }

    /// Sends the files over MQTT (stream `stream_id`) instead of HTTP.
    pub fn over_mqtt(mut self, stream_id: u32) -> Package {
        self.delivery = Delivery::Mqtt { stream_id };
        self
    }

    /// Serves every file on `server` at `.../NAME` ([`FirmwareServer::add_image`]) and sets
    /// its URL.
    pub fn serve_on(&mut self, server: &FirmwareServer) -> io::Result<()> {
        for file in &mut self.files {
            file.url = server.add_image(&file.name, Arc::clone(&file.data))?;
        }
        Ok(())
    }

    /// The bytes of all files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(PackageFile::size).sum()
    }

    /// The file with `streamFileId` `id`.
    pub fn file_by_stream_id(&self, id: u32) -> Option<&PackageFile> {
        self.files.iter().find(|f| f.stream_file_id == id)
    }

    /// What [`crate::Cloud`] records as the run's upgrade: the version, the package's size (all
    /// files), the first file's URL (for MQTT `mqtt://stream/ID`), and the digests of the
    /// files' bytes end to end (no device checks those: they name the package in the
    /// narration).
    pub fn firmware(&self) -> Firmware {
        let all: Vec<u8> = self
            .files
            .iter()
            .flat_map(|f| f.data.iter().copied())
            .collect();
        let url = match self.delivery {
            Delivery::Http => self.files[0].url.clone(),
            Delivery::Mqtt { stream_id } => format!("mqtt://stream/{stream_id}"),
        };
        Firmware {
            version: self.version.clone(),
            url,
            size: self.size(),
            md5: md5_hex(&all),
            sha256: sha256_hex(&all),
        }
    }

    /// `Err` when `protocol` has no packages (Tencent, UCloud) or `options` ask for what the
    /// platform's package message cannot say.
    pub fn check(&self, protocol: Protocol, options: &CloudOptions) -> Result<(), String> {
        match protocol {
            Protocol::Aliyun | Protocol::Sagoo => {}
            Protocol::Tencent | Protocol::Ucloud => {
                return Err(format!(
                    "{protocol} has no packages of several files and no download over MQTT \
                     (its upgrade message carries one URL); only aliyun and sagoo do"
                ))
            }
        }
        if self.files.is_empty() {
            return Err("a package holds at least one file".into());
        }
        options.check(protocol)
    }

    /// The upgrade message `protocol`'s platform sends for this package (`docs/packages.md`):
    /// `data` holds `version`, `signMethod`, then either `files` (each `fileName`, `fileSize`,
    /// `fileSign` and `fileUrl` or `streamFileId`) or the single file's `size`, `sign` (Aliyun:
    /// `md5` too) and `url` or `streamFileId`; `dProtocol` and `streamId` for MQTT; SagooIOT
    /// adds `module` and `extData` as for one file. No top-level `url`/`size`/`sign` beside
    /// `files`.
    pub fn upgrade_message(
        &self,
        protocol: Protocol,
        id: u64,
        options: &CloudOptions,
    ) -> Result<String, String> {
        self.check(protocol, options)?;
        // Aliyun's package digests are MD5 (its sign method option is SagooIOT's).
        let method = match protocol {
            Protocol::Sagoo => options.sign_method,
            _ => SignMethod::Md5,
        };
        let mut data = Map::new();
        data.insert("version".into(), json!(self.version));
        data.insert("signMethod".into(), json!(method.name()));
        if self.files_array {
            let files: Vec<Value> = self.files.iter().map(|f| self.element(f, method)).collect();
            data.insert("files".into(), Value::Array(files));
        } else {
            let f = &self.files[0];
            data.insert("size".into(), json!(f.size()));
            data.insert("sign".into(), json!(f.sign(method)));
            if protocol == Protocol::Aliyun {
                data.insert("md5".into(), json!(f.md5));
            }
            match self.delivery {
                Delivery::Http => data.insert("url".into(), json!(f.url)),
                Delivery::Mqtt { .. } => {
                    data.insert("streamFileId".into(), json!(f.stream_file_id))
                }
            };
        }
        if let Delivery::Mqtt { stream_id } = self.delivery {
            data.insert("dProtocol".into(), json!(MQTT_D_PROTOCOL));
            data.insert("streamId".into(), json!(stream_id));
        }
        let code = match protocol {
            Protocol::Sagoo => {
                if let Some(m) = &options.module {
                    data.insert("module".into(), json!(m));
                }
                data.insert(
                    "extData".into(),
                    sagoo::ext_data(options.strategy.as_deref()),
                );
                "200"
            }
            _ => "1000",
        };
        Ok(json!({"code": code, "data": data, "id": id, "message": "success"}).to_string())
    }

    fn element(&self, f: &PackageFile, method: SignMethod) -> Value {
        let mut e = Map::new();
        e.insert("fileName".into(), json!(f.name));
        match self.delivery {
            Delivery::Http => e.insert("fileUrl".into(), json!(f.url)),
            Delivery::Mqtt { .. } => e.insert("streamFileId".into(), json!(f.stream_file_id)),
        };
        e.insert("fileSize".into(), json!(f.size()));
        e.insert("fileSign".into(), json!(f.sign(method)));
        Value::Object(e)
    }
}

/// What the cloud knows of a package's transfer, from the server that carries it.
pub trait PackageMeter: Send + Sync {
    /// Bytes of the package's files handed to the device so far (a byte sent twice counts
    /// twice), counted before they leave: an upper bound of what the device can have, so a
    /// progress above `100 * bytes_sent / size` is not weighted by bytes.
    fn bytes_sent(&self) -> u64;

    /// `None` when every byte of every file has gone out intact at least once; else which file
    /// and which bytes never did.
    fn missing(&self) -> Option<String>;

    /// A request the device made against the protocol (MQTT block requests), once: the topic,
    /// why, and the payload.
    fn violation(&self) -> Option<(String, String, String)> {
        None
    }
}

/// Union of half-open byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    pub fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }

    /// The first range of `0..len` not covered.
    pub fn first_gap(&self, len: u64) -> Option<(u64, u64)> {
        let mut at = 0;
        for &(s, e) in &self.0 {
            if s > at {
                return Some((at, s.min(len))).filter(|(a, b)| a < b);
            }
            at = at.max(e);
            if at >= len {
                return None;
            }
        }
        (at < len).then_some((at, len))
    }
}

/// Says which file of `files` (name, size, coverage) has a gap, if one has.
pub fn describe_gaps<'a>(
    files: impl IntoIterator<Item = (&'a str, u64, &'a Coverage)>,
) -> Option<String> {
    files.into_iter().find_map(|(name, size, cov)| {
        cov.first_gap(size).map(|(s, e)| {
            format!("file {name:?} ({size} bytes) was never sent whole: bytes {s}..{e} missing")
        })
    })
}

/// A package served over HTTP by a [`FirmwareServer`]: bytes from its all-images counter,
/// whole files from its request log (each GET answered 200 or 206 covers its range start plus
/// the body bytes written).
pub struct HttpPackageMeter {
    meter: SentMeter,
    /// Name and size of each file.
    files: Vec<(String, u64)>,
}

/// How long [`HttpPackageMeter::missing`] waits for the request log to catch up (an entry is
/// made once its response is written, which a fast client may beat).
const LOG_CATCH_UP: Duration = Duration::from_secs(2);

impl HttpPackageMeter {
    pub fn new(server: &FirmwareServer, package: &Package) -> HttpPackageMeter {
        HttpPackageMeter {
            meter: server.sent_meter(),
            files: package
                .files
                .iter()
                .map(|f| (f.name.clone(), f.size()))
                .collect(),
        }
    }

    fn gaps(&self) -> Option<String> {
        let log = self.meter.requests();
        let covs: Vec<Coverage> = self
            .files
            .iter()
            .map(|(name, _)| http_coverage(&log, name))
            .collect();
        describe_gaps(
            self.files
                .iter()
                .zip(&covs)
                .map(|((n, s), c)| (n.as_str(), *s, c)),
        )
    }
}

impl PackageMeter for HttpPackageMeter {
    fn bytes_sent(&self) -> u64 {
        self.meter.all_bytes_sent()
    }

    fn missing(&self) -> Option<String> {
        let end = Instant::now() + LOG_CATCH_UP;
        loop {
            let gaps = self.gaps();
            if gaps.is_none() || Instant::now() >= end {
                return gaps;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The bytes of file `name` that GET responses in `log` carried.
pub fn http_coverage(log: &[RequestLog], name: &str) -> Coverage {
    let mut cov = Coverage::default();
    for r in log {
        let path = r.path.split(['?', '#']).next().unwrap_or("");
        if r.method != "GET" || !path.ends_with(&format!("/{name}")) {
            continue;
        }
        let start = match (r.status, &r.range) {
            (200, _) => 0,
            (206, Some(range)) => match range_start(range) {
                Some(s) => s,
                None => continue,
            },
            _ => continue,
        };
        cov.add(start, start + r.bytes_sent);
    }
    cov
}

/// `S` of `bytes=S-` or `bytes=S-E`.
fn range_start(range: &str) -> Option<u64> {
    let spec = range.trim().strip_prefix("bytes=")?;
    spec.split('-').next()?.trim().parse().ok()
}

/// Reads `a.bin,b.bin,...` from disk as package files named by their file names.
pub fn read_files(paths: &[std::path::PathBuf]) -> Result<Vec<NamedFile>, String> {
    paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| format!("{} names no file", p.display()))?;
            let data = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Ok((name, Arc::from(data)))
        })
        .collect()
}

/// Generated files of `sizes` bytes, `file1.bin`, `file2.bin`, ..., each from its own seed
/// ([`crate::generate_firmware_seeded`], seed [`crate::FIRMWARE_SEED`] + index), so two files
/// of one size differ.
pub fn generated_files(sizes: &[usize]) -> Vec<NamedFile> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let data =
                crate::generate_firmware_seeded(size, crate::FIRMWARE_SEED.wrapping_add(i as u64));
            (format!("file{}.bin", i + 1), Arc::from(data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package() -> Package {
        let mut p = Package::new(
            "2.0.0",
            vec![
                ("app.bin".into(), Arc::from(&b"abc"[..])),
                ("mcu.bin".into(), Arc::from(&b"hello"[..])),
            ],
        )
        .unwrap();
        p.files[0].url = "https://h/app.bin".into();
        p.files[1].url = "https://h/mcu.bin".into();
        p
    }

    #[test]
    fn aliyun_package_message_has_the_documented_fields_only() {
        let msg = package()
            .upgrade_message(Protocol::Aliyun, 7, &CloudOptions::default())
            .unwrap();
        let v: Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(
            v,
            json!({"code":"1000","data":{"version":"2.0.0","signMethod":"MD5","files":[
                {"fileName":"app.bin","fileUrl":"https://h/app.bin","fileSize":3,"fileSign":md5_hex(b"abc")},
                {"fileName":"mcu.bin","fileUrl":"https://h/mcu.bin","fileSize":5,"fileSign":md5_hex(b"hello")}]},
                "id":7,"message":"success"})
        );
    }

    #[test]
    fn sagoo_package_over_mqtt_names_stream_and_file_ids() {
        let options = CloudOptions {
            sign_method: SignMethod::Sha256,
            module: Some("MCU".into()),
            ..CloudOptions::default()
        };
        let msg = package()
            .over_mqtt(99)
            .upgrade_message(Protocol::Sagoo, 1, &options)
            .unwrap();
        let v: Value = serde_json::from_str(&msg).unwrap();
        let data = &v["data"];
        assert_eq!(v["code"], "200");
        assert_eq!(data["dProtocol"], "mqtt");
        assert_eq!(data["streamId"], 99);
        assert_eq!(data["signMethod"], "SHA256");
        assert_eq!(data["module"], "MCU");
        assert_eq!(data["extData"]["strategy"], sagoo::DEFAULT_STRATEGY);
        assert_eq!(data["files"][1]["streamFileId"], 2);
        assert_eq!(data["files"][1]["fileSign"], sha256_hex(b"hello"));
        assert!(data["files"][1].get("fileUrl").is_none());
        for absent in ["url", "size", "sign", "md5"] {
            assert!(data.get(absent).is_none(), "{absent} beside files");
        }
    }

    #[test]
    fn a_single_file_over_mqtt_uses_the_single_file_fields() {
        let p = Package::single_over_mqtt("2.0.0", "firmware.bin", &b"abcd"[..], 5);
        let v: Value = serde_json::from_str(
            &p.upgrade_message(Protocol::Aliyun, 1, &CloudOptions::default())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["data"],
            json!({"version":"2.0.0","signMethod":"MD5","size":4,"sign":md5_hex(b"abcd"),
                   "md5":md5_hex(b"abcd"),"streamFileId":1,"dProtocol":"mqtt","streamId":5})
        );
    }

    #[test]
    fn platforms_without_packages_are_refused() {
        for protocol in [Protocol::Tencent, Protocol::Ucloud] {
            let err = package()
                .upgrade_message(protocol, 1, &CloudOptions::default())
                .unwrap_err();
            assert!(err.contains("has no packages"), "{err}");
        }
    }

    #[test]
    fn bad_file_lists_are_refused() {
        assert!(Package::new("1", vec![]).is_err());
        let a: Arc<[u8]> = Arc::from(&b"x"[..]);
        assert!(Package::new("1", vec![("a".into(), a.clone()), ("a".into(), a.clone())]).is_err());
        assert!(Package::new("1", vec![("a/b".into(), a.clone())]).is_err());
        assert!(Package::new("1", vec![(String::new(), a)]).is_err());
    }

    #[test]
    fn coverage_finds_the_first_gap() {
        let mut c = Coverage::default();
        assert_eq!(c.first_gap(10), Some((0, 10)));
        c.add(0, 4);
        c.add(6, 10);
        assert_eq!(c.first_gap(10), Some((4, 6)));
        c.add(3, 7);
        assert_eq!(c.first_gap(10), None);
        assert_eq!(c.first_gap(12), Some((10, 12)));
        assert_eq!(Coverage::default().first_gap(0), None);
    }

    #[test]
    fn http_coverage_reads_ranges_and_skips_other_files() {
        let req = |path: &str, status, range: Option<&str>, bytes| RequestLog {
            seq: 0,
            method: "GET".into(),
            path: path.into(),
            range: range.map(str::to_string),
            status,
            bytes_sent: bytes,
            complete: true,
        };
        let log = vec![
            req("/a.bin", 200, None, 40),
            req("/b.bin", 200, None, 100),
            req("/a.bin?token=1", 206, Some("bytes=40-"), 30),
            req("/a.bin", 403, None, 9),
        ];
        let c = http_coverage(&log, "a.bin");
        assert_eq!(c.first_gap(70), None);
        assert_eq!(c.first_gap(100), Some((70, 100)));
    }
}
