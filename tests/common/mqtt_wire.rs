//! The MQTT wire as a scripted broker in a test sees it: packet types, whole packets read off a
//! socket.

use std::io::Read;
use std::net::TcpStream;

// Packet types (high nibble of the first byte).
pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const PINGREQ: u8 = 12;
pub const DISCONNECT: u8 = 14;

/// One MQTT packet as a scripted peer reads it: the first byte and the body.
pub struct Raw {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// Reads one packet; `None` at end of stream.
pub fn read_packet(s: &mut TcpStream) -> Option<Raw> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(Raw {
        first: first[0],
        body,
    })
}

/// Reads packets until one of `kind` (answering nothing); `None` at end of stream.
pub fn read_until(s: &mut TcpStream, kind: u8) -> Option<Raw> {
    loop {
        let p = read_packet(s)?;
        if p.kind() == kind {
            return Some(p);
        }
    }
}
