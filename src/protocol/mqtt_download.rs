//! Download over MQTT (Aliyun Link SDK 4.x `aiot_mqtt_download_api`, which SagooIOT's
//! `dProtocol` borrows): the device asks for one block of a file on
//! `/sys/{pk}/{dn}/thing/file/download` and the platform answers on `…/download_reply` with a
//! binary frame. Field tables, byte layout and sources: `docs/packages.md`.
//!
//! Request (JSON, QoS 0 in the Link SDK):
//! `{"id":"<n>","version":"1.0","params":{"fileToken":"<token>","fileInfo":{"streamId":<n>,
//! "fileId":<n>},"fileBlock":{"size":<n>,"offset":<n>}}}`.
//!
//! Reply frame: `[header length: u16 big-endian][JSON header][block data][CRC-16: u16
//! little-endian]`, the header `{"code":200,"data":{"bSize":<n>,"bOffset":<n>,
//! "fileLength":<n>,"fileToken":"<token>"}…}`, and the CRC-16/ARC (polynomial 0x8005 reflected,
//! initial value 0, no final XOR) of the block data alone.
//!
//! Pure: bytes in, bytes out, into the caller's buffers; no I/O, no allocation.

use super::json::{JsonError, Object, Value, Writer};

/// Topic of block requests, after `/sys/{pk}/{dn}`.
pub const REQUEST_SUFFIX: &str = "/thing/file/download";

/// Topic of block replies, after `/sys/{pk}/{dn}`.
pub const REPLY_SUFFIX: &str = "/thing/file/download_reply";

/// The `fileToken` the Link SDK sends in every request.
pub const DEFAULT_TOKEN: &str = "default";

/// Longest `fileToken` the Link SDK keeps (`MQTT_DOWNLOAD_TOKEN_MAXLEN`).
pub(crate) const TOKEN_MAX: usize = 128;

/// Bytes of a frame besides its header and data: the header length and the CRC.
pub(crate) const FRAME_OVERHEAD: usize = 4;

/// The `code` of a reply that carries a block.
pub(crate) const SUCCESS_CODE: u64 = 200;

/// The request topic `/sys/{pk}/{dn}/thing/file/download` into `out`; its length.
pub fn request_topic(
    product_key: &str,
    device_name: &str,
    out: &mut [u8],
) -> Result<usize, JsonError> {
    topic(product_key, device_name, REQUEST_SUFFIX, out)
}

/// The reply topic `/sys/{pk}/{dn}/thing/file/download_reply` into `out`; its length.
pub fn reply_topic(
    product_key: &str,
    device_name: &str,
    out: &mut [u8],
) -> Result<usize, JsonError> {
    topic(product_key, device_name, REPLY_SUFFIX, out)
}

fn topic(pk: &str, dn: &str, suffix: &str, out: &mut [u8]) -> Result<usize, JsonError> {
    let mut w = Writer::new(out);
    w.raw("/sys/").raw(pk).raw("/").raw(dn).raw(suffix);
    w.finish()
}

/// How an [`MqttFile`] is written as the URL a firmware source opens.
pub const URL_PREFIX: &str = "mqtt-download:";

/// Longest URL of an [`MqttFile`]: the prefix, two 32-bit ids and a 64-bit size.
pub const URL_MAX: usize = URL_PREFIX.len() + 10 + 1 + 10 + 1 + 20;

/// The file to download: the upgrade's `streamId`, the file's `streamFileId` and its announced
/// size. Written as a URL (`mqtt-download:{streamId}/{fileId}/{size}`) it is what the MQTT
/// block source's `open` takes, so the engine opens it like any firmware source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttFile {
    /// `streamId` of the upgrade message.
    pub stream_id: u32,
    /// `streamFileId` of the file.
    pub file_id: u32,
    /// The file's size as the upgrade announced it (every reply's `fileLength` must equal it).
    pub size: u64,
}

impl MqttFile {
    /// The file a `mqtt-download:{streamId}/{fileId}/{size}` URL names (decimal numbers).
    pub fn from_url(url: &str) -> Option<MqttFile> {
        let mut parts = url.strip_prefix(URL_PREFIX)?.split('/');
        let mut next = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let file = MqttFile {
            stream_id: next()?.parse().ok()?,
            file_id: next()?.parse().ok()?,
            size: next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(file)
    }

    /// The file's URL, written into `out` (no allocation: the engine opens it per request).
    pub fn write_url<'a>(&self, out: &'a mut [u8; URL_MAX]) -> &'a str {
        let mut w = Writer::new(out);
        w.raw(URL_PREFIX)
            .u64(self.stream_id.into())
            .raw("/")
            .u64(self.file_id.into())
            .raw("/")
            .u64(self.size);
        // URL_MAX holds the longest numbers: never short.
        let len = w.finish().unwrap_or(0);
        std::str::from_utf8(&out[..len]).unwrap_or("")
    }
}

impl std::fmt::Display for MqttFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut url = [0; URL_MAX];
        f.write_str(self.write_url(&mut url))
    }
}

/// One block request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRequest<'a> {
    /// Message id, sent as a string of digits.
    pub id: u64,
    /// `fileToken` ([`DEFAULT_TOKEN`] as the Link SDK sends).
    pub token: &'a str,
    /// `fileInfo.streamId`: the upgrade's `streamId`.
    pub stream_id: u32,
    /// `fileInfo.fileId`: the file's `streamFileId`.
    pub file_id: u32,
    /// `fileBlock.offset`: the first byte asked for.
    pub offset: u64,
    /// `fileBlock.size`: bytes asked for (the Link SDK asks for at most what remains).
    pub size: u32,
}

/// The request's JSON into `out`; its length, or `Overflow` (nothing written past `out`).
pub fn encode_request(req: &BlockRequest<'_>, out: &mut [u8]) -> Result<usize, JsonError> {
    let mut w = Writer::new(out);
    w.raw("{\"id\":\"")
        .u64(req.id)
        .raw("\",\"version\":\"1.0\",\"params\":{\"fileToken\":")
        .string(req.token)
        .raw(",\"fileInfo\":{\"streamId\":")
        .u64(req.stream_id.into())
        .raw(",\"fileId\":")
        .u64(req.file_id.into())
        .raw("},\"fileBlock\":{\"size\":")
        .u64(req.size.into())
        .raw(",\"offset\":")
        .u64(req.offset)
        .raw("}}}");
    w.finish()
}

/// What the reply to the outstanding request must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The token of the file being fetched: `None` until a first reply named one (the Link SDK
    /// sends `default` and never checks what comes back), then that token.
    pub token: Option<&'a [u8]>,
    /// The offset asked for.
    pub offset: u64,
    /// The block size asked for.
    pub size: u32,
    /// The file's size as announced in the upgrade notice.
    pub file_length: u64,
}

/// A reply's header fields and data, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block<'a> {
    /// `bOffset`: where `data` starts in the file.
    pub offset: u64,
    /// `fileLength`: the whole file's size.
    pub file_length: u64,
    /// `fileToken` as sent (JSON string content, still escaped), at most 128 bytes (the Link SDK's
    /// `MQTT_DOWNLOAD_TOKEN_MAXLEN`); empty when absent.
    pub token: &'a [u8],
    /// The block's bytes (`bSize` of them), CRC-checked.
    pub data: &'a [u8],
}

/// Why a reply frame was rejected. A retry of the request can help with each but
/// [`FileLengthMismatch`](Self::FileLengthMismatch) and [`NotSuccess`](Self::NotSuccess) (the
/// platform disagrees about the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Shorter than the header length and CRC fields.
    #[error("reply of {len} bytes is too short for a download frame")]
    TooShort {
        /// Bytes of the frame.
        len: usize,
    },
    /// The header length points past the frame's end (its CRC included).
    #[error("reply header of {header_len} bytes runs past the {frame_len}-byte frame")]
    HeaderPastFrame {
        /// The frame's header length field.
        header_len: usize,
        /// Bytes of the frame.
        frame_len: usize,
    },
    /// The header is not one well-formed JSON object.
    #[error("reply header is not a valid JSON object ({0})")]
    HeaderJson(JsonError),
    /// A header field is absent (named).
    #[error("reply header has no \"{0}\"")]
    MissingField(&'static str),
    /// A header field is not what the protocol says (a non-negative integer, a string, an
    /// object).
    #[error("reply header field \"{0}\" has the wrong type or range")]
    BadField(&'static str),
    /// `code` is not 200: the platform refused the request.
    #[error("reply code {code} is not 200")]
    NotSuccess {
        /// The code received.
        code: u64,
    },
    /// The frame is not exactly header length + header + `bSize` + CRC bytes.
    #[error("reply frame is {frame_len} bytes, its header announces {announced}")]
    LengthMismatch {
        /// Bytes of the frame.
        frame_len: usize,
        /// Bytes the header implies.
        announced: usize,
    },
    /// The data's CRC-16 differs from the frame's.
    #[error("block CRC-16 is {computed:#06x}, the frame says {received:#06x}")]
    CrcMismatch {
        /// The CRC in the frame.
        received: u16,
        /// The CRC of the data received.
        computed: u16,
    },
    /// The reply is for another file (its `fileToken` differs from the file's).
    #[error("reply is for another file (fileToken differs)")]
    OtherFile,
    /// The block does not start where the request asked.
    #[error("block at offset {got}, {expected} was asked for")]
    WrongOffset {
        /// The offset asked for.
        expected: u64,
        /// `bOffset`.
        got: u64,
    },
    /// `fileLength` differs from the size the upgrade announced.
    #[error("file length {got} differs from the announced {announced} bytes")]
    FileLengthMismatch {
        /// The notice's size.
        announced: u64,
        /// `fileLength`.
        got: u64,
    },
    /// More bytes than the request asked for.
    #[error("block of {got} bytes, at most {asked} were asked for")]
    BlockTooLarge {
        /// The size asked for.
        asked: u32,
        /// `bSize`.
        got: u64,
    },
    /// No byte, though the file has more: the download would not advance.
    #[error("empty block before the end of the file")]
    EmptyBlock,
}

/// Parses and checks one reply frame against the outstanding request, in the order a frame is
/// read: its layout, its header, its length, its CRC, then what it says about the file.
pub fn parse_reply<'a>(frame: &'a [u8], expect: &Expected<'_>) -> Result<Block<'a>, ReplyError> {
    let frame_len = frame.len();
    let (len_field, rest) = frame
        .split_first_chunk::<2>()
        .filter(|_| frame_len >= FRAME_OVERHEAD)
        .ok_or(ReplyError::TooShort { len: frame_len })?;
    let header_len = usize::from(u16::from_be_bytes(*len_field));
    if header_len > frame_len - FRAME_OVERHEAD {
        return Err(ReplyError::HeaderPastFrame {
            header_len,
            frame_len,
        });
    }
    let (header, rest) = rest.split_at(header_len);
    let head = Object::parse(header).map_err(ReplyError::HeaderJson)?;
    let code = number(&head, "code")?;
    if code != SUCCESS_CODE {
        return Err(ReplyError::NotSuccess { code });
    }
    let data = match head.get("data") {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ReplyError::BadField("data")),
        None => return Err(ReplyError::MissingField("data")),
    };
    let size = number(&data, "bSize")?;
    let offset = number(&data, "bOffset")?;
    let file_length = number(&data, "fileLength")?;
    let token = match data.get("fileToken") {
        None => &[][..],
        // The engine keeps the token in a buffer of the Link SDK's size.
        Some(Value::Str(s)) if s.raw().len() <= TOKEN_MAX => s.raw(),
        Some(_) => return Err(ReplyError::BadField("fileToken")),
    };
    let announced = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_add(header_len + FRAME_OVERHEAD))
        .unwrap_or(usize::MAX);
    if announced != frame_len {
        return Err(ReplyError::LengthMismatch {
            frame_len,
            announced,
        });
    }
    let (body, crc_field) = rest.split_at(rest.len() - 2);
    let received = u16::from_le_bytes([crc_field[0], crc_field[1]]);
    let computed = crc16_arc(body);
    if received != computed {
        return Err(ReplyError::CrcMismatch { received, computed });
    }
    if expect.token.is_some_and(|t| t != token) {
        return Err(ReplyError::OtherFile);
    }
    if file_length != expect.file_length {
        return Err(ReplyError::FileLengthMismatch {
            announced: expect.file_length,
            got: file_length,
        });
    }
    if offset != expect.offset {
        return Err(ReplyError::WrongOffset {
            expected: expect.offset,
            got: offset,
        });
    }
    if size > u64::from(expect.size) {
        return Err(ReplyError::BlockTooLarge {
            asked: expect.size,
            got: size,
        });
    }
    if size == 0 && offset < file_length {
        return Err(ReplyError::EmptyBlock);
    }
    Ok(Block {
        offset,
        file_length,
        token,
        data: body,
    })
}

/// A non-negative integer header field, as a JSON number or a string of digits (the Link SDK
/// reads the text of either).
fn number(obj: &Object<'_>, field: &'static str) -> Result<u64, ReplyError> {
    let value = obj.get(field).ok_or(ReplyError::MissingField(field))?;
    let n = match value {
        Value::Num(_) => value.as_u64(),
        Value::Str(s) => s
            .as_plain()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok()),
        _ => None,
    };
    n.ok_or(ReplyError::BadField(field))
}

/// CRC-16/ARC (the Link SDK's `crc_ibm`): polynomial 0x8005 bit-reflected (0xA001), initial
/// value 0, input and output reflected, no final XOR. Check value: `"123456789"` → 0xBB3D.
pub fn crc16_arc(data: &[u8]) -> u16 {
    // A byte at a time from the table (the Link SDK's way too): 8x the bitwise loop, which
    // took most of a 32 KiB block's time on loopback (ota-bench section 7).
    data.iter().fold(0u16, |crc, &b| {
        (crc >> 8) ^ CRC16_ARC_TABLE[usize::from((crc ^ u16::from(b)) as u8)]
    })
}

/// CRC-16/ARC of each byte value alone (the reflected polynomial 0xA001 applied 8 times).
const CRC16_ARC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A reply frame for `header` and `data` (its CRC computed) into `out`; its length. For the
/// platform simulator and tests: the device only parses frames.
pub fn encode_reply(header: &[u8], data: &[u8], out: &mut [u8]) -> Option<usize> {
    let header_len = u16::try_from(header.len()).ok()?;
    let len = header.len() + data.len() + FRAME_OVERHEAD;
    let frame = out.get_mut(..len)?;
    let (len_field, rest) = frame.split_at_mut(2);
    len_field.copy_from_slice(&header_len.to_be_bytes());
    let (head, rest) = rest.split_at_mut(header.len());
    head.copy_from_slice(header);
    let (body, crc) = rest.split_at_mut(data.len());
    body.copy_from_slice(data);
    crc.copy_from_slice(&crc16_arc(data).to_le_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame built by hand from the documented layout: `[len BE][header][data][crc LE]`.
    fn frame(header: &str, data: &[u8], crc: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(header.len() as u16).to_be_bytes());
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(data);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn header(size: usize, offset: u64, length: u64, token: &str) -> String {
        format!(
            r#"{{"code":200,"data":{{"bSize":{size},"bOffset":{offset},"fileLength":{length},"fileToken":"{token}"}},"msg":"success"}}"#
        )
    }

    const FILE_LEN: u64 = 10_000;

    fn expect(offset: u64, size: u32) -> Expected<'static> {
        Expected {
            token: None,
            offset,
            size,
            file_length: FILE_LEN,
        }
    }

    #[test]
    fn crc16_arc_check_values() {
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
        assert_eq!(crc16_arc(b""), 0);
        // The first entries of the Link SDK's table (crc_ibm_table[1], [2], [255]).
        assert_eq!(crc16_arc(&[1]), 0xC0C1);
        assert_eq!(crc16_arc(&[2]), 0xC181);
        assert_eq!(crc16_arc(&[255]), 0x4040);
    }

    #[test]
    fn encodes_the_request_byte_for_byte() {
        let req = BlockRequest {
            id: 7,
            token: DEFAULT_TOKEN,
            stream_id: 1234,
            file_id: 1,
            offset: 5120,
            size: 2048,
        };
        let mut buf = [0u8; 256];
        let n = encode_request(&req, &mut buf).unwrap();
        let text = core::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            text,
            r#"{"id":"7","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1234,"fileId":1},"fileBlock":{"size":2048,"offset":5120}}}"#
        );
        // Valid JSON (the Link SDK's format string leaves a comma before "}" of fileInfo).
        let o = Object::parse(&buf[..n]).unwrap();
        let params = o.get("params").unwrap().as_object().unwrap();
        let block = params.get("fileBlock").unwrap().as_object().unwrap();
        assert_eq!(block.get("offset").unwrap().as_u64(), Some(5120));
        for cap in [0, 1, n / 2, n - 1] {
            let mut small = vec![0xA5u8; cap + 8];
            assert_eq!(
                encode_request(&req, &mut small[..cap]),
                Err(JsonError::Overflow)
            );
            assert!(small[cap..].iter().all(|&b| b == 0xA5), "wrote past {cap}");
        }
        let escaped = BlockRequest {
            token: "a\"b",
            ..req
        };
        let n = encode_request(&escaped, &mut buf).unwrap();
        assert!(core::str::from_utf8(&buf[..n])
            .unwrap()
            .contains(r#""fileToken":"a\"b""#));
    }

    #[test]
    fn topics() {
        let mut buf = [0u8; 64];
        let n = request_topic("a1pk", "dev1", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"/sys/a1pk/dev1/thing/file/download");
        let n = reply_topic("a1pk", "dev1", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"/sys/a1pk/dev1/thing/file/download_reply");
        assert_eq!(
            reply_topic("a1pk", "dev1", &mut buf[..20]),
            Err(JsonError::Overflow)
        );
    }

    #[test]
    fn parses_a_frame_built_from_the_layout() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        let h = header(1024, 2048, FILE_LEN, "tok-1");
        let f = frame(&h, &data, crc16_arc(&data));
        assert_eq!(f.len(), 2 + h.len() + 1024 + 2);
        assert_eq!(u16::from_be_bytes([f[0], f[1]]) as usize, h.len());
        let b = parse_reply(&f, &expect(2048, 1024)).unwrap();
        assert_eq!(b.offset, 2048);
        assert_eq!(b.file_length, FILE_LEN);
        assert_eq!(b.token, b"tok-1");
        assert_eq!(b.data, &data[..]);
        // The token named by the first reply is then required.
        let known = Expected {
            token: Some(b"tok-1"),
            ..expect(2048, 1024)
        };
        assert!(parse_reply(&f, &known).is_ok());
        // A shorter last block, numbers as strings (the Link SDK reads either), no token.
        let h = r#"{"code":"200","data":{"bSize":"16","bOffset":"9984","fileLength":"10000"}}"#;
        let f = frame(h, &data[..16], crc16_arc(&data[..16]));
        let b = parse_reply(&f, &expect(9984, 1024)).unwrap();
        assert_eq!((b.data.len(), b.token), (16, &b""[..]));
    }

    #[test]
    fn the_crc_is_little_endian_and_covers_the_data_only() {
        let data = b"123456789";
        let h = header(9, 0, FILE_LEN, "t");
        let f = frame(&h, data, 0xBB3D);
        assert_eq!(&f[f.len() - 2..], &[0x3D, 0xBB]);
        assert!(parse_reply(&f, &expect(0, 512)).is_ok());
        let swapped = frame(&h, data, 0x3DBB);
        assert_eq!(
            parse_reply(&swapped, &expect(0, 512)),
            Err(ReplyError::CrcMismatch {
                received: 0x3DBB,
                computed: 0xBB3D
            })
        );
        // A flipped data bit fails; a changed header (not covered) with the same length passes.
        let mut flipped = f.clone();
        flipped[2 + h.len() + 4] ^= 0x10;
        assert!(matches!(
            parse_reply(&flipped, &expect(0, 512)),
            Err(ReplyError::CrcMismatch { .. })
        ));
        let other = frame(&header(9, 0, FILE_LEN, "u"), data, 0xBB3D);
        assert!(parse_reply(&other, &expect(0, 512)).is_ok());
    }

    #[test]
    fn every_bad_frame_has_its_error() {
        let data = [7u8; 32];
        let crc = crc16_arc(&data);
        let good_h = header(32, 64, FILE_LEN, "t1");
        let good = frame(&good_h, &data, crc);
        let e = expect(64, 32);
        assert!(parse_reply(&good, &e).is_ok());

        for len in 0..FRAME_OVERHEAD {
            assert_eq!(
                parse_reply(&good[..len], &e),
                Err(ReplyError::TooShort { len })
            );
        }
        // Header length past the frame (0xFFFF, and one byte more than there is).
        let mut past = good.clone();
        past[..2].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert_eq!(
            parse_reply(&past, &e),
            Err(ReplyError::HeaderPastFrame {
                header_len: 0xFFFF,
                frame_len: good.len()
            })
        );
        let mut past = good.clone();
        let max = (good.len() - FRAME_OVERHEAD + 1) as u16;
        past[..2].copy_from_slice(&max.to_be_bytes());
        assert!(matches!(
            parse_reply(&past, &e),
            Err(ReplyError::HeaderPastFrame { .. })
        ));
        // A header length that cuts the JSON short.
        let mut short = good.clone();
        short[..2].copy_from_slice(&((good_h.len() - 1) as u16).to_be_bytes());
        assert!(matches!(
            parse_reply(&short, &e),
            Err(ReplyError::HeaderJson(_))
        ));
        let bad_json = frame("{\"code\":200,", &data, crc);
        assert!(matches!(
            parse_reply(&bad_json, &e),
            Err(ReplyError::HeaderJson(_))
        ));
        assert_eq!(
            parse_reply(&frame("[1]", &data, crc), &e),
            Err(ReplyError::HeaderJson(JsonError::NotAnObject))
        );
        let h = |s: &str| frame(s, &data, crc);
        assert_eq!(
            parse_reply(&h(r#"{"data":{}}"#), &e),
            Err(ReplyError::MissingField("code"))
        );
        assert_eq!(
            parse_reply(&h(r#"{"code":-1,"data":{}}"#), &e),
            Err(ReplyError::BadField("code"))
        );
        assert_eq!(
            parse_reply(&h(r#"{"code":404,"data":{}}"#), &e),
            Err(ReplyError::NotSuccess { code: 404 })
        );
        assert_eq!(
            parse_reply(&h(r#"{"code":200}"#), &e),
            Err(ReplyError::MissingField("data"))
        );
        assert_eq!(
            parse_reply(&h(r#"{"code":200,"data":[]}"#), &e),
            Err(ReplyError::BadField("data"))
        );
        for field in ["bSize", "bOffset", "fileLength"] {
            let all = [("bSize", "32"), ("bOffset", "64"), ("fileLength", "10000")];
            let kept: Vec<String> = all
                .iter()
                .filter(|(k, _)| *k != field)
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            let text = format!(r#"{{"code":200,"data":{{{}}}}}"#, kept.join(","));
            assert_eq!(
                parse_reply(&h(&text), &e),
                Err(ReplyError::MissingField(field))
            );
            let text = format!(
                r#"{{"code":200,"data":{{{},"{field}":1.5}}}}"#,
                kept.join(",")
            );
            assert_eq!(parse_reply(&h(&text), &e), Err(ReplyError::BadField(field)));
        }
        let text =
            r#"{"code":200,"data":{"bSize":32,"bOffset":64,"fileLength":10000,"fileToken":5}}"#;
        assert_eq!(
            parse_reply(&h(text), &e),
            Err(ReplyError::BadField("fileToken"))
        );
        let long = "k".repeat(TOKEN_MAX + 1);
        let text = header(32, 64, FILE_LEN, &long);
        assert_eq!(
            parse_reply(&h(&text), &e),
            Err(ReplyError::BadField("fileToken"))
        );
        let text = header(32, 64, FILE_LEN, &long[1..]);
        assert!(parse_reply(&h(&text), &e).is_ok());
        // Frame length differing from what the header announces (a byte short, a byte more).
        assert_eq!(
            parse_reply(&good[..good.len() - 1], &e),
            Err(ReplyError::LengthMismatch {
                frame_len: good.len() - 1,
                announced: good.len()
            })
        );
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            parse_reply(&longer, &e),
            Err(ReplyError::LengthMismatch { .. })
        ));
        let huge = header(usize::MAX, 64, FILE_LEN, "t1");
        assert!(matches!(
            parse_reply(&frame(&huge, &data, crc), &e),
            Err(ReplyError::LengthMismatch { .. })
        ));
        // CRC.
        assert!(matches!(
            parse_reply(&frame(&good_h, &data, crc ^ 1), &e),
            Err(ReplyError::CrcMismatch { .. })
        ));
        // Another file's token.
        let other = Expected {
            token: Some(b"t2"),
            ..e
        };
        assert_eq!(parse_reply(&good, &other), Err(ReplyError::OtherFile));
        let no_token = frame(
            r#"{"code":200,"data":{"bSize":32,"bOffset":64,"fileLength":10000}}"#,
            &data,
            crc,
        );
        assert_eq!(parse_reply(&no_token, &other), Err(ReplyError::OtherFile));
        // Total length differing from the announced size.
        let longer_file = frame(&header(32, 64, FILE_LEN + 1, "t1"), &data, crc);
        assert_eq!(
            parse_reply(&longer_file, &e),
            Err(ReplyError::FileLengthMismatch {
                announced: FILE_LEN,
                got: FILE_LEN + 1
            })
        );
        // Wrong offset (a stale duplicate of an earlier block).
        assert_eq!(
            parse_reply(&good, &expect(32, 32)),
            Err(ReplyError::WrongOffset {
                expected: 32,
                got: 64
            })
        );
        // Larger than asked.
        assert_eq!(
            parse_reply(&good, &expect(64, 31)),
            Err(ReplyError::BlockTooLarge { asked: 31, got: 32 })
        );
        // Empty before the end; empty at the end is no error (nothing was owed).
        let empty = frame(&header(0, 64, FILE_LEN, "t1"), &[], 0);
        assert_eq!(parse_reply(&empty, &e), Err(ReplyError::EmptyBlock));
        let at_end = frame(&header(0, FILE_LEN, FILE_LEN, "t1"), &[], 0);
        assert!(parse_reply(&at_end, &expect(FILE_LEN, 32)).is_ok());
    }

    #[test]
    fn encode_reply_matches_the_hand_built_frame() {
        let data = b"block";
        let h = header(5, 0, FILE_LEN, "t");
        let mut buf = [0u8; 256];
        let n = encode_reply(h.as_bytes(), data, &mut buf).unwrap();
        assert_eq!(&buf[..n], &frame(&h, data, crc16_arc(data))[..]);
        assert_eq!(encode_reply(h.as_bytes(), data, &mut buf[..n - 1]), None);
    }
}
