//! Packages of several files (the `files` array) and the download protocol (`dProtocol`), as
//! SagooIOT and Aliyun (Link SDK 4.x) upgrade messages carry them. The field tables, where each
//! name comes from and the readings taken: `docs/packages.md`.
//!
//! A package's files are decoded into [`FileList`], whose slots are allocated once with the
//! notice ([`Limits::max_files`] files of [`Limits::max_file_name`] and [`Limits::url`] bytes);
//! decoding never allocates.

use super::fields::{check_url, take_digest, take_size, take_str};
use super::json::{Object, Value};
use super::Downstream;
use super::{DigestKind, FixedStr, Limits, NoticeError, SetJsonError, UpgradeNotice};

/// Why the engine refuses a download over MQTT until it fetches blocks (the refusal's text).
pub const MQTT_REFUSAL: &str = "dProtocol: packages over MQTT are not supported";

/// Why the engine refuses a package of several files until it walks them (the refusal's text).
pub const PACKAGE_REFUSAL: &str = "files: packages of several files are not supported yet";

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

    /// The same files in the same order (see [`PackageFile`]'s fields).
    pub(crate) fn same_files(&self, other: &FileList) -> bool {
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

/// What the engine does not fetch yet is refused with its reason, after decoding as far as it
/// goes (so a refusal report names the module and batch): a download over MQTT wins over any
/// other error (such a message may lack a URL), then a decoding error, then a package of
/// several files.
pub(crate) fn until_integrated(
    data: &Object<'_>,
    decoded: Result<(), NoticeError>,
    out: &UpgradeNotice,
) -> Result<Downstream, NoticeError> {
    if over_mqtt(data) {
        return Err(NoticeError::Unsupported(MQTT_REFUSAL));
    }
    decoded?;
    if out.is_package() {
        return Err(NoticeError::Unsupported(PACKAGE_REFUSAL));
    }
    Ok(Downstream::Upgrade)
}
