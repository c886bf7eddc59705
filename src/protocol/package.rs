//! Packages of several files (the `files` array) and the download protocol (`dProtocol`), as
//! SagooIOT and Aliyun (Link SDK 4.x) upgrade messages carry them. The field tables, where each
//! name comes from and the readings taken: `docs/packages.md`.
//!
//! A package's files are decoded into [`FileList`], whose slots are allocated once with the
//! notice ([`Limits::max_files`] files of [`Limits::max_file_name`] and [`Limits::url`] bytes);
//! decoding never allocates.

use super::fields::{check_url, take_digest, take_size, take_str};
use super::json::{Object, Value};
use super::{DigestKind, FixedStr, Limits, NoticeError, SetJsonError, UpgradeNotice};

/// How an upgrade's image is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// HTTP(S) GET of the notice's (or each file's) URL.
    Http,
    /// Blocks requested on `/sys/{pk}/{dn}/thing/file/download` (`dProtocol` `mqtt`); see
    /// [`mqtt_download`](super::mqtt_download).
    Mqtt {
        /// The platform's stream (`streamId`), one per upgrade.
        stream_id: u32,
        /// The file within the stream (`streamFileId`) of a single-file upgrade; for a package,
        /// the first file's (each [`PackageFile`] carries its own).
        file_id: u32,
    },
}

/// One file of a package.
#[derive(Debug, Clone)]
pub struct PackageFile {
    /// `fileName`: unique within the package; empty only in a package of one file that names
    /// none.
    pub name: FixedStr,
    /// `fileUrl`, `http://` or `https://`; empty when the package comes over MQTT.
    pub url: FixedStr,
    /// `fileSize`, 1 ..= `u32::MAX` bytes.
    pub size: u64,
    /// Which digest [`digest`](Self::digest) holds (the package's `signMethod`).
    pub digest_kind: DigestKind,
    /// `fileSign`; the first `digest_kind.len()` bytes are meaningful.
    pub digest: [u8; 32],
    /// `streamFileId` when the package comes over MQTT, else 0.
    pub stream_file_id: u32,
}

impl PackageFile {
    fn new(limits: &Limits) -> Self {
        PackageFile {
            name: FixedStr::with_capacity(limits.max_file_name),
            url: FixedStr::with_capacity(limits.url),
            size: 0,
            digest_kind: DigestKind::Md5,
            digest: [0; 32],
            stream_file_id: 0,
        }
    }

    fn clear(&mut self) {
        self.name.clear();
        self.url.clear();
        self.size = 0;
        self.digest_kind = DigestKind::Md5;
        self.digest = [0; 32];
        self.stream_file_id = 0;
    }

    /// The expected digest bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest[..self.digest_kind.len()]
    }

    /// Same file: name, size, digest and stream file id (a re-sent package may carry fresh URLs).
    fn same_file(&self, other: &PackageFile) -> bool {
        self.name == other.name
            && self.size == other.size
            && self.digest_kind == other.digest_kind
            && self.digest() == other.digest()
            && self.stream_file_id == other.stream_file_id
    }
}

/// The files of a package, in the platform's order, in slots allocated at init.
#[derive(Debug, Clone)]
pub struct FileList {
    slots: Box<[PackageFile]>,
    len: usize,
}

impl FileList {
    /// Room for [`Limits::max_files`] files; the only allocation.
    pub fn new(limits: &Limits) -> Self {
        FileList {
            slots: (0..limits.max_files)
                .map(|_| PackageFile::new(limits))
                .collect(),
            len: 0,
        }
    }

    /// Most files the list holds ([`Limits::max_files`]).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Files held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no file (a single-file upgrade).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The files, in order.
    pub fn as_slice(&self) -> &[PackageFile] {
        &self.slots[..self.len]
    }

    /// The file at `index`.
    pub fn get(&self, index: usize) -> Option<&PackageFile> {
        self.as_slice().get(index)
    }

    /// Empties the list (slots kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The next slot, emptied; `None` when the list is full.
    fn push(&mut self) -> Option<&mut PackageFile> {
        let slot = self.slots.get_mut(self.len)?;
        slot.clear();
        self.len += 1;
        Some(slot)
    }

    /// The same files in the same order (see [`PackageFile`]'s fields). Lists of at most one
    /// file always match: the notice's own fields repeat that file and are compared already, and
    /// a notice rebuilt from a breakpoint record holds no list.
    pub(crate) fn same_files(&self, other: &FileList) -> bool {
        if self.len <= 1 && other.len <= 1 {
            return true;
        }
        self.len == other.len
            && self
                .as_slice()
                .iter()
                .zip(other.as_slice())
                .all(|(a, b)| a.same_file(b))
    }
}

/// Whether `dProtocol` is present: an absent, `null` or empty value (a serializer's "unset"; the
/// SagooIOT server always writes the field) means HTTP(S).
pub(crate) fn over_mqtt(data: &Object<'_>) -> bool {
    match data.get("dProtocol") {
        None | Some(Value::Null) => false,
        Some(Value::Str(s)) => !s.raw().is_empty(),
        Some(_) => true,
    }
}

/// Whether `data` carries a `files` array (`null` counts as absent).
pub(crate) fn has_files(data: &Object<'_>) -> bool {
    !matches!(data.get("files"), None | Some(Value::Null))
}

/// The transfer `dProtocol` names: `mqtt` in any letter case, with `streamId` (the file id is
/// read per file: [`single_file_transfer`], [`take_files`]); absent means HTTP(S); any other
/// value is unsupported.
pub(crate) fn take_transfer(data: &Object<'_>) -> Result<Transfer, NoticeError> {
    if !over_mqtt(data) {
        return Ok(Transfer::Http);
    }
    let value = data
        .get("dProtocol")
        .ok_or(NoticeError::Missing("dProtocol"))?;
    let name = value.as_str().ok_or(NoticeError::WrongType {
        field: "dProtocol",
        expected: "string",
        found: value.kind(),
    })?;
    let mqtt = "MQTT".chars();
    if !name.chars().map(|c| c.to_ascii_uppercase()).eq(mqtt) {
        return Err(NoticeError::Unsupported(
            "dProtocol: unknown download protocol",
        ));
    }
    let stream_id = take_id(data, "streamId")?;
    Ok(Transfer::Mqtt {
        stream_id,
        file_id: 0,
    })
}

/// `transfer` completed with the `streamFileId` a single file over MQTT needs.
pub(crate) fn single_file_transfer(
    data: &Object<'_>,
    transfer: Transfer,
) -> Result<Transfer, NoticeError> {
    match transfer {
        Transfer::Http => Ok(Transfer::Http),
        Transfer::Mqtt { stream_id, .. } => Ok(Transfer::Mqtt {
            stream_id,
            file_id: take_id(data, "streamFileId")?,
        }),
    }
}

/// A 32-bit id as a JSON number or a string of digits (the Link SDK reads either).
pub(crate) fn take_id(obj: &Object<'_>, field: &'static str) -> Result<u32, NoticeError> {
    let value = obj.get(field).ok_or(NoticeError::Missing(field))?;
    let n = match value {
        Value::Num(_) => value.as_u64(),
        Value::Str(s) => s.as_plain().and_then(plain_u64),
        other => {
            return Err(NoticeError::WrongType {
                field,
                expected: "integer",
                found: other.kind(),
            })
        }
    };
    n.and_then(|n| u32::try_from(n).ok())
        .ok_or(NoticeError::WrongType {
            field,
            expected: "integer",
            found: value.kind(),
        })
}

/// Digits only, no sign or leading `+`, fitting `u64`.
fn plain_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The digest `signMethod` names, in any letter case; `None` when it is absent.
pub(crate) fn named_sign_method(data: &Object<'_>) -> Result<Option<DigestKind>, NoticeError> {
    let Some(value) = data.get("signMethod") else {
        return Ok(None);
    };
    let method = value.as_str().ok_or(NoticeError::WrongType {
        field: "signMethod",
        expected: "string",
        found: value.kind(),
    })?;
    let upper = || method.chars().map(|c| c.to_ascii_uppercase());
    [DigestKind::Md5, DigestKind::Sha256]
        .into_iter()
        .find(|kind| upper().eq(kind.name().chars()))
        .map(Some)
        .ok_or(NoticeError::Unsupported("signMethod must be MD5 or SHA256"))
}

/// The digest kind a hex digest's length implies when no `signMethod` names one: 64 hex digits
/// SHA256, anything else MD5 (a wrong length then fails as a bad digest).
pub(crate) fn kind_by_length(digest: Option<Value<'_>>) -> DigestKind {
    match digest.and_then(|v| v.as_str()) {
        Some(s) if s.raw().len() == 2 * DigestKind::Sha256.len() => DigestKind::Sha256,
        _ => DigestKind::Md5,
    }
}

/// A file field under its package name (`fileUrl`) or, as the Link SDK reads a one-file array,
/// its single-file name (`url`): the name present, or `None`.
fn present(obj: &Object<'_>, names: [&'static str; 2]) -> Option<&'static str> {
    names.into_iter().find(|n| obj.get(n).is_some())
}

/// Decodes `data.files` into `out.files` (`out.transfer` already decoded), then fills the
/// notice's own `url`/`size`/`digest` from it (see [`UpgradeNotice::files`]). The top-level
/// `url`, `size` and `sign` of a message with a `files` array are ignored.
pub(crate) fn take_files(
    data: &Object<'_>,
    method: Option<DigestKind>,
    out: &mut UpgradeNotice,
) -> Result<(), NoticeError> {
    let value = data.get("files").ok_or(NoticeError::Missing("files"))?;
    let elements = value.elements().ok_or(NoticeError::WrongType {
        field: "files",
        expected: "array",
        found: value.kind(),
    })?;
    let count = elements.clone().count();
    if count == 0 {
        return Err(NoticeError::EmptyPackage);
    }
    let max = out.files.capacity();
    if count > max {
        return Err(NoticeError::TooManyFiles { count, max });
    }
    out.files.clear();
    let mqtt = matches!(out.transfer, Transfer::Mqtt { .. });
    for (index, element) in elements.enumerate() {
        let obj = element.as_object().ok_or(NoticeError::WrongType {
            field: "files",
            expected: "array of objects",
            found: element.kind(),
        })?;
        let file = out
            .files
            .push()
            .ok_or(NoticeError::TooManyFiles { count, max })?;
        take_file(&obj, index, count > 1, method, mqtt, file)?;
    }
    let files = out.files.as_slice();
    for (index, file) in files.iter().enumerate().skip(1) {
        if files[..index].iter().any(|f| f.name == file.name) {
            return Err(NoticeError::DuplicateFileName { index });
        }
    }
    let first = &files[0];
    if let Transfer::Mqtt { stream_id, .. } = out.transfer {
        out.transfer = Transfer::Mqtt {
            stream_id,
            file_id: first.stream_file_id,
        };
    }
    out.digest_kind = first.digest_kind;
    if count == 1 {
        let url = first.url.as_str();
        out.url.set(url).map_err(|e| NoticeError::TooLong {
            field: "fileUrl",
            len: e.len,
            max: e.max,
        })?;
        out.size = first.size;
        out.digest = first.digest;
    } else {
        out.url.clear();
        out.size = files.iter().map(|f| f.size).sum();
        out.digest = [0; 32];
    }
    Ok(())
}

/// One element of `files`.
fn take_file(
    obj: &Object<'_>,
    index: usize,
    several: bool,
    method: Option<DigestKind>,
    mqtt: bool,
    file: &mut PackageFile,
) -> Result<(), NoticeError> {
    let incomplete = |field| NoticeError::FileIncomplete { index, field };
    match obj.get("fileName") {
        Some(Value::Null) | None if several => return Err(incomplete("fileName")),
        Some(Value::Null) | None => {}
        Some(value) => take_name(value, index, &mut file.name)?,
    }
    if several && file.name.is_empty() {
        return Err(incomplete("fileName"));
    }
    let size = present(obj, ["fileSize", "size"]).ok_or(incomplete("fileSize"))?;
    file.size = take_size(obj, size)?;
    if mqtt {
        if obj.get("streamFileId").is_none() {
            return Err(incomplete("streamFileId"));
        }
        file.stream_file_id = take_id(obj, "streamFileId")?;
    } else {
        let url = present(obj, ["fileUrl", "url"]).ok_or(incomplete("fileUrl"))?;
        take_str(obj, url, &mut file.url)?;
        check_url(&file.url)?;
    }
    let sign = present(obj, ["fileSign", "sign"]).ok_or(incomplete("fileSign"))?;
    file.digest_kind = method.unwrap_or_else(|| kind_by_length(obj.get(sign)));
    take_digest(obj, sign, file.digest_kind, &mut file.digest)
}

/// `fileName`: a string without NUL, within [`Limits::max_file_name`].
fn take_name(value: Value<'_>, index: usize, dst: &mut FixedStr) -> Result<(), NoticeError> {
    let s = value.as_str().ok_or(NoticeError::WrongType {
        field: "fileName",
        expected: "string",
        found: value.kind(),
    })?;
    if s.chars().any(|c| c == '\0') {
        return Err(NoticeError::Nul("fileName"));
    }
    dst.set_json(s).map_err(|e| match e {
        SetJsonError::TooLong(t) => NoticeError::FileNameTooLong {
            index,
            len: t.len,
            max: t.max,
        },
        SetJsonError::Json(j) => NoticeError::Json(j),
    })
}

/// Marks `out` as asking for a download over MQTT, when `data` does, before any field is
/// decoded: a session with that off refuses such a message whatever else is wrong with it (it
/// may lack a field only such a download needs). The stream's ids come with the transfer.
/// Whether it is over MQTT.
pub(crate) fn mark_transfer(data: &Object<'_>, out: &mut UpgradeNotice) -> bool {
    let mqtt = over_mqtt(data);
    if mqtt {
        out.transfer = Transfer::Mqtt {
            stream_id: 0,
            file_id: 0,
        };
    }
    mqtt
}

#[cfg(test)]
mod tests {
    /// Packages of up to 8 files (the default is the one-file form until the engine walks them).
    fn limits() -> Limits {
        Limits {
            max_files: 8,
            ..Limits::default()
        }
    }

    use super::*;
    use crate::protocol::{decode, sagoo, Downstream, Protocol};

    const MD5_A: &str = "93230c3bde425a9d7984a594ac55ea1e";
    const MD5_B: &str = "0123456789abcdef0123456789abcdef";
    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn notice() -> UpgradeNotice {
        UpgradeNotice::new(&limits())
    }

    /// A SagooIOT upgrade whose `data` holds `files` (JSON text) and `extra` members.
    fn sagoo_msg(files: &str, extra: &str) -> String {
        format!(
            r#"{{"code":"200","data":{{"version":"2.0.0","signMethod":"MD5","module":"MCU","extData":{{"strategy":"b7"}},"files":{files}{extra}}},"id":9,"message":"success"}}"#
        )
    }

    fn file(name: &str, url: &str, size: u64, sign: &str) -> String {
        format!(
            r#"{{"fileName":"{name}","fileUrl":"{url}","fileSize":{size},"fileSign":"{sign}"}}"#
        )
    }

    fn three_files() -> String {
        format!(
            "[{},{},{}]",
            file("app.bin", "https://h/app.bin", 1000, MD5_A),
            file("mcu.bin", "https://h/mcu.bin?x=1", 200, MD5_B),
            file("config.json", "http://h/c.json", 30, MD5_A)
        )
    }

    fn package(protocol: Protocol, msg: &str) -> Result<UpgradeNotice, NoticeError> {
        let mut n = notice();
        decode(protocol, msg.as_bytes(), &limits(), &mut n).map(|d| {
            assert_eq!(d, Downstream::Upgrade);
            n
        })
    }

    fn bad(msg: &str) -> NoticeError {
        package(Protocol::Sagoo, msg).unwrap_err()
    }

    fn hex(d: &[u8]) -> String {
        let mut buf = [0u8; 64];
        crate::digest::to_hex(d, &mut buf).to_string()
    }

    #[test]
    fn a_package_of_three_files_decodes_in_order() {
        for protocol in [Protocol::Sagoo, Protocol::Aliyun] {
            let msg = sagoo_msg(&three_files(), "");
            let msg = match protocol {
                Protocol::Aliyun => msg.replace(r#""code":"200""#, r#""code":"1000""#),
                _ => msg,
            };
            let n = package(protocol, &msg).unwrap();
            assert!(n.is_package());
            let files = n.files.as_slice();
            let got: Vec<(&str, &str, u64, String)> = files
                .iter()
                .map(|f| (f.name.as_str(), f.url.as_str(), f.size, hex(f.digest())))
                .collect();
            assert_eq!(
                got,
                [
                    ("app.bin", "https://h/app.bin", 1000, MD5_A.to_string()),
                    ("mcu.bin", "https://h/mcu.bin?x=1", 200, MD5_B.to_string()),
                    ("config.json", "http://h/c.json", 30, MD5_A.to_string()),
                ]
            );
            assert!(files.iter().all(|f| f.digest_kind == DigestKind::Md5));
            assert_eq!(n.size, 1230, "the package's size is the files' sum");
            assert!(n.url.is_empty());
            assert_eq!(n.digest, [0; 32]);
            assert_eq!(n.transfer, Transfer::Http);
            assert_eq!(n.version.as_str(), "2.0.0");
            assert_eq!(n.module.as_str(), "MCU");
            assert_eq!(n.message_id, 9);
        }
    }

    #[test]
    fn a_package_of_one_file_is_a_single_file_upgrade_with_its_name() {
        // Named, package spelling.
        let msg = sagoo_msg(
            &format!("[{}]", file("app.bin", "https://h/a", 10, MD5_A)),
            "",
        );
        let n = package(Protocol::Sagoo, &msg).unwrap();
        assert!(!n.is_package());
        assert_eq!(n.files.len(), 1);
        assert_eq!(n.files.as_slice()[0].name.as_str(), "app.bin");
        assert_eq!((n.url.as_str(), n.size), ("https://h/a", 10));
        assert_eq!(hex(n.digest()), MD5_A);
        let mut d = notice();
        assert_eq!(
            sagoo::decode(msg.as_bytes(), &limits(), &mut d),
            Ok(Downstream::Upgrade),
            "the engine fetches a package of one file as today"
        );
        // The Link SDK reads a one-file array with the single-file names and no fileName.
        let one = format!(r#"[{{"size":7,"url":"https://h/b","sign":"{SHA}"}}]"#);
        let msg = sagoo_msg(&one, "").replace(r#""signMethod":"MD5","#, "");
        let n = package(Protocol::Sagoo, &msg).unwrap();
        assert_eq!(n.files.as_slice()[0].name.as_str(), "");
        assert_eq!((n.url.as_str(), n.size), ("https://h/b", 7));
        assert_eq!(
            n.digest_kind,
            DigestKind::Sha256,
            "64 hex digits without signMethod"
        );
        // The top-level url, size and sign of a message with files are ignored.
        let msg = sagoo_msg(
            &format!("[{}]", file("a", "https://h/a", 10, MD5_A)),
            r#","url":"https://other/x","size":99,"sign":"zz""#,
        );
        let n = package(Protocol::Sagoo, &msg).unwrap();
        assert_eq!((n.url.as_str(), n.size), ("https://h/a", 10));
    }

    #[test]
    fn bad_packages_each_get_their_error() {
        assert_eq!(bad(&sagoo_msg("[]", "")), NoticeError::EmptyPackage);
        let max = limits().max_files;
        let many: Vec<String> = (0..=max)
            .map(|i| file(&format!("f{i}"), "https://h/f", 1, MD5_A))
            .collect();
        assert_eq!(
            bad(&sagoo_msg(&format!("[{}]", many.join(",")), "")),
            NoticeError::TooManyFiles {
                count: max + 1,
                max
            }
        );
        let exactly: Vec<String> = many[..max].to_vec();
        assert_eq!(
            package(
                Protocol::Sagoo,
                &sagoo_msg(&format!("[{}]", exactly.join(",")), "")
            )
            .unwrap()
            .files
            .len(),
            max
        );
        let long = "n".repeat(limits().max_file_name + 1);
        let files = format!(
            "[{},{}]",
            file("a", "https://h/a", 1, MD5_A),
            file(&long, "https://h/b", 1, MD5_A)
        );
        assert_eq!(
            bad(&sagoo_msg(&files, "")),
            NoticeError::FileNameTooLong {
                index: 1,
                len: long.len(),
                max: limits().max_file_name
            }
        );
        let dup = format!(
            "[{},{},{}]",
            file("a", "https://h/a", 1, MD5_A),
            file("b", "https://h/b", 1, MD5_A),
            file("a", "https://h/c", 1, MD5_B)
        );
        assert_eq!(
            bad(&sagoo_msg(&dup, "")),
            NoticeError::DuplicateFileName { index: 2 }
        );
        let good = file("b", "https://h/b", 1, MD5_A);
        for (entry, field) in [
            (
                format!(r#"{{"fileName":"a","fileSize":1,"fileSign":"{MD5_A}"}}"#),
                "fileUrl",
            ),
            (
                r#"{"fileName":"a","fileUrl":"https://h/a","fileSize":1}"#.to_string(),
                "fileSign",
            ),
            (
                format!(r#"{{"fileName":"a","fileUrl":"https://h/a","fileSign":"{MD5_A}"}}"#),
                "fileSize",
            ),
            (
                format!(r#"{{"fileUrl":"https://h/a","fileSize":1,"fileSign":"{MD5_A}"}}"#),
                "fileName",
            ),
            (
                format!(
                    r#"{{"fileName":"","fileUrl":"https://h/a","fileSize":1,"fileSign":"{MD5_A}"}}"#
                ),
                "fileName",
            ),
        ] {
            assert_eq!(
                bad(&sagoo_msg(&format!("[{good},{entry}]"), "")),
                NoticeError::FileIncomplete { index: 1, field },
                "{entry}"
            );
        }
        assert!(matches!(
            bad(&sagoo_msg(r#"{"a":1}"#, "")),
            NoticeError::WrongType {
                field: "files",
                expected: "array",
                ..
            }
        ));
        assert!(matches!(
            bad(&sagoo_msg(r#"["a"]"#, "")),
            NoticeError::WrongType {
                field: "files",
                expected: "array of objects",
                ..
            }
        ));
        let wrong = [
            (file("a", "ftp://h/a", 1, MD5_A), NoticeError::BadUrl),
            (file("a", "https://h/a", 0, MD5_A), NoticeError::BadSize),
            (
                file("a", "https://h/a", 1, "12"),
                NoticeError::BadDigest("fileSign"),
            ),
            (
                file("a", "https://h/a", 1, SHA),
                NoticeError::BadDigest("fileSign"),
            ),
            (
                file("a\\u0000b", "https://h/a", 1, MD5_A),
                NoticeError::Nul("fileName"),
            ),
        ];
        for (entry, e) in wrong {
            assert_eq!(
                bad(&sagoo_msg(&format!("[{good},{entry}]"), "")),
                e,
                "{entry}"
            );
        }
        // null counts as absent: a single-file message is then required.
        assert_eq!(bad(&sagoo_msg("null", "")), NoticeError::Missing("size"));
    }

    #[test]
    fn download_over_mqtt_decodes_stream_and_file_ids() {
        let single = |extra: &str| {
            format!(
                r#"{{"code":"200","data":{{"size":16,"version":"3","sign":"{MD5_A}","signMethod":"Md5","module":"WIFI","dProtocol":"mqtt"{extra}}},"id":1}}"#
            )
        };
        let n = package(
            Protocol::Sagoo,
            &single(r#","streamId":1234,"streamFileId":1"#),
        )
        .unwrap();
        assert_eq!(
            n.transfer,
            Transfer::Mqtt {
                stream_id: 1234,
                file_id: 1
            }
        );
        assert!(n.url.is_empty() && n.files.is_empty());
        assert_eq!((n.size, hex(n.digest())), (16, MD5_A.to_string()));
        // Ids as strings of digits, as the Link SDK also reads them.
        let n = package(
            Protocol::Sagoo,
            &single(r#","streamId":"77","streamFileId":"2""#),
        )
        .unwrap();
        assert_eq!(
            n.transfer,
            Transfer::Mqtt {
                stream_id: 77,
                file_id: 2
            }
        );
        assert_eq!(
            bad(&single(r#","streamFileId":1"#)),
            NoticeError::Missing("streamId")
        );
        assert_eq!(
            bad(&single(r#","streamId":1"#)),
            NoticeError::Missing("streamFileId")
        );
        for id in [r#""-1""#, "4294967296", r#""""#, "1.5", "true"] {
            assert!(
                matches!(
                    bad(&single(&format!(r#","streamId":{id},"streamFileId":1"#))),
                    NoticeError::WrongType {
                        field: "streamId",
                        ..
                    }
                ),
                "{id}"
            );
        }
        let http = single(r#","streamId":1,"streamFileId":1"#).replace(r#""mqtt""#, r#""HTTPS""#);
        assert_eq!(
            bad(&http),
            NoticeError::Unsupported("dProtocol: unknown download protocol")
        );
        let mut r = notice();
        let msg = single(r#","streamId":1234,"streamFileId":1"#).replace("mqtt", "MQTT");
        assert_eq!(
            sagoo::decode(msg.as_bytes(), &limits(), &mut r),
            Ok(Downstream::Upgrade)
        );
        assert_eq!(
            r.transfer,
            Transfer::Mqtt {
                stream_id: 1234,
                file_id: 1
            }
        );
        // A download over MQTT is marked before the other fields are decoded: a session with it
        // off refuses the message by that, whatever else is wrong with it.
        for broken in [
            single(r#","streamId":"x","streamFileId":1"#),
            single(r#","streamId":1,"streamFileId":1"#).replace(r#""version":"#, r#""v":"#),
        ] {
            let mut r = notice();
            assert!(sagoo::decode(broken.as_bytes(), &limits(), &mut r).is_err());
            assert!(matches!(r.transfer, Transfer::Mqtt { .. }), "{broken}");
        }

        // A package over MQTT: each file has its streamFileId and needs no URL.
        let files = format!(
            r#"[{{"fileName":"a","fileSize":5,"fileSign":"{MD5_A}","streamFileId":1}},{{"fileName":"b","fileSize":6,"fileSign":"{MD5_B}","streamFileId":2}}]"#
        );
        let msg = sagoo_msg(&files, r#","dProtocol":"mqtt","streamId":9"#);
        let n = package(Protocol::Sagoo, &msg).unwrap();
        let ids: Vec<u32> = n
            .files
            .as_slice()
            .iter()
            .map(|f| f.stream_file_id)
            .collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(
            n.transfer,
            Transfer::Mqtt {
                stream_id: 9,
                file_id: 1
            }
        );
        let no_id = files.replace(r#","streamFileId":2"#, "");
        assert_eq!(
            bad(&sagoo_msg(&no_id, r#","dProtocol":"mqtt","streamId":9"#)),
            NoticeError::FileIncomplete {
                index: 1,
                field: "streamFileId"
            }
        );
    }

    #[test]
    fn aliyun_link_sdk_single_file_over_mqtt_and_v2_3_unchanged() {
        let v23 = format!(
            r#"{{"code":"1000","data":{{"size":432945,"version":"2.0.0","url":"https://h/f","md5":"{MD5_A}"}},"id":1}}"#
        );
        let n = package(Protocol::Aliyun, &v23).unwrap();
        assert!(n.files.is_empty());
        assert_eq!(n.transfer, Transfer::Http);
        let mqtt = format!(
            r#"{{"code":"1000","data":{{"size":100,"version":"2.0.0","sign":"{SHA}","signMethod":"SHA256","dProtocol":"mqtt","streamId":5,"streamFileId":1,"module":"m"}},"id":2}}"#
        );
        let n = package(Protocol::Aliyun, &mqtt).unwrap();
        assert_eq!(n.digest_kind, DigestKind::Sha256);
        assert_eq!(
            n.transfer,
            Transfer::Mqtt {
                stream_id: 5,
                file_id: 1
            }
        );
        assert_eq!(n.module.as_str(), "m");
    }

    #[test]
    fn tencent_and_ucloud_ignore_files_and_d_protocol() {
        let tencent = format!(
            r#"{{"type":"update_firmware","version":"0.2","file_size":1,"md5sum":"{MD5_A}","url":"https://h/f","files":[],"dProtocol":"mqtt"}}"#
        );
        let n = package(Protocol::Tencent, &tencent).unwrap();
        assert!(n.files.is_empty() && n.transfer == Transfer::Http);
        let no_url = tencent.replace(r#""url":"https://h/f","#, "");
        assert_eq!(
            package(Protocol::Tencent, &no_url).unwrap_err(),
            NoticeError::Missing("url")
        );
    }

    #[test]
    fn same_image_compares_files_and_clear_empties_them() {
        let a = package(Protocol::Sagoo, &sagoo_msg(&three_files(), "")).unwrap();
        let fresh_urls = three_files().replace("https://h/", "https://renewed/");
        let b = package(Protocol::Sagoo, &sagoo_msg(&fresh_urls, "")).unwrap();
        assert!(a.same_image(&b), "fresh URLs, same files");
        let other = three_files().replace("1000", "1001");
        let c = package(Protocol::Sagoo, &sagoo_msg(&other, "")).unwrap();
        assert!(!a.same_image(&c));
        let mut d = a.clone();
        d.clear();
        assert!(d.files.is_empty() && d.transfer == Transfer::Http);
        assert_eq!(d.files.capacity(), limits().max_files);
    }

    #[test]
    fn decoding_a_package_reuses_the_slots_allocated_at_init() {
        let mut n = notice();
        let before = n.files.as_slice().as_ptr();
        let first = sagoo_msg(&three_files(), "");
        sagoo::decode(first.as_bytes(), &limits(), &mut n).unwrap();
        let second = sagoo_msg(&format!("[{}]", file("x", "https://h/x", 3, MD5_B)), "");
        sagoo::decode(second.as_bytes(), &limits(), &mut n).unwrap();
        assert_eq!(n.files.as_slice().as_ptr(), before);
        assert_eq!(n.files.len(), 1);
        assert_eq!(n.files.as_slice()[0].name.as_str(), "x");
    }
}
