//! The MQTT download reply parser (`ota::protocol::mqtt_download::parse_reply`) on arbitrary
//! frames, and on frames the harness builds from the documented layout and then damages.
//!
//! Input: a mode byte, the expected offset (u32), block size (u16), file length (u32) and a
//! token choice, then the frame (mode 0) or the block data and a damage choice (mode 1).
//! An accepted block is exactly the frame's data bytes, within the size asked, at the offset
//! asked, of the announced file length, with the frame's CRC; it re-encodes to the same frame.
//! A frame the harness built is accepted, and any single damaged data byte fails its CRC.

use super::input::Input;
use ota::protocol::json::JsonError;
use ota::protocol::mqtt_download::{
    crc16_arc, encode_reply, encode_request, parse_reply, BlockRequest, Expected, ReplyError,
};

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let offset = u64::from(input.u32());
    let size = u32::from(input.u16());
    let file_length = u64::from(input.u32());
    let token_choice = input.u8();
    let token: Option<&[u8]> = match token_choice % 3 {
        0 => None,
        1 => Some(b"t1"),
        _ => Some(b""),
    };
    let expect = Expected {
        token,
        offset,
        size,
        file_length,
    };
    if mode & 1 == 0 {
        check_frame(input.rest(), &expect);
    } else {
        let data = input.bytes(usize::from(u16::MAX));
        built_frame(data, &mut input, &expect);
    }
    check_request(offset, size, token_choice);
}

/// Whatever `parse_reply` says about `frame` is consistent with the frame's bytes.
fn check_frame(frame: &[u8], expect: &Expected<'_>) {
    match parse_reply(frame, expect) {
        Ok(block) => {
            let header_len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
            let data_at = 2 + header_len;
            assert_eq!(frame.len(), data_at + block.data.len() + 2, "frame length");
            assert_eq!(block.data, &frame[data_at..frame.len() - 2], "data slice");
            let crc = u16::from_le_bytes([frame[frame.len() - 2], frame[frame.len() - 1]]);
            assert_eq!(crc16_arc(block.data), crc, "accepted a bad CRC");
            assert!(
                block.data.len() <= expect.size as usize,
                "larger than asked"
            );
            assert_eq!(block.offset, expect.offset);
            assert_eq!(block.file_length, expect.file_length);
            assert!(block.token.len() <= 128);
            if let Some(t) = expect.token {
                assert_eq!(block.token, t, "another file's token accepted");
            }
            if block.data.is_empty() {
                assert!(block.offset >= block.file_length, "an empty block mid-file");
            }
            let mut again = vec![0u8; frame.len()];
            let n = encode_reply(&frame[2..data_at], block.data, &mut again);
            assert_eq!(n, Some(frame.len()));
            assert_eq!(again, frame, "the frame does not re-encode");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                ReplyError::TooShort { len } => assert!(len < 4 && len == frame.len()),
                ReplyError::HeaderPastFrame { header_len, .. } => {
                    assert!(frame.len() >= 4 && header_len > frame.len() - 4)
                }
                _ => assert!(frame.len() >= 4),
            }
        }
    }
}

/// A frame built from the layout is accepted; a damaged data byte fails the CRC.
fn built_frame(data: &[u8], input: &mut Input<'_>, expect: &Expected<'_>) {
    let data = &data[..data.len().min(expect.size as usize)];
    if data.is_empty() && expect.offset < expect.file_length {
        return;
    }
    let token = expect
        .token
        .map_or("any", |t| core::str::from_utf8(t).unwrap_or(""));
    let header = format!(
        r#"{{"code":200,"data":{{"bSize":{},"bOffset":{},"fileLength":{},"fileToken":"{token}"}}}}"#,
        data.len(),
        expect.offset,
        expect.file_length
    );
    let mut frame = vec![0u8; header.len() + data.len() + 4];
    let n = encode_reply(header.as_bytes(), data, &mut frame);
    assert_eq!(n, Some(frame.len()));
    let block = parse_reply(&frame, expect).expect("a frame built from the layout");
    assert_eq!(block.data, data);
    check_frame(&frame, expect);
    if !data.is_empty() {
        let at = 2 + header.len() + usize::from(input.u16()) % data.len();
        let flip = input.u8().max(1);
        frame[at] ^= flip;
        assert!(
            matches!(
                parse_reply(&frame, expect),
                Err(ReplyError::CrcMismatch { .. })
            ),
            "a damaged byte passed the CRC"
        );
    }
}

/// The request encodes into any buffer without a byte past it.
fn check_request(offset: u64, size: u32, choice: u8) {
    let req = BlockRequest {
        id: u64::from(choice) << 40 | offset,
        token: if choice & 4 == 0 {
            "default"
        } else {
            "to\"k\\en"
        },
        stream_id: size,
        file_id: u32::from(choice),
        offset,
        size,
    };
    let mut big = [0u8; 512];
    let len = encode_request(&req, &mut big).expect("fits 512 bytes");
    ota::protocol::json::Object::parse(&big[..len]).expect("valid JSON");
    let cap = usize::from(choice) % (len + 1);
    let mut small = vec![0xA5u8; cap + 8];
    let r = encode_request(&req, &mut small[..cap]);
    if cap < len {
        assert_eq!(r, Err(JsonError::Overflow));
    } else {
        assert_eq!(r, Ok(len));
    }
    assert!(
        small[cap..].iter().all(|&b| b == 0xA5),
        "wrote past the buffer"
    );
}
