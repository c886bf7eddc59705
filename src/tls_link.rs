//! The TLS of an HTTPS download: rustls runs the handshake (certificate checks, key exchange,
//! the encrypted request), then this module opens the server's records itself, in place in one
//! buffer, with the traffic keys rustls hands over (its `kernel` API, made for kTLS).
//!
//! Why not rustls' own reader: in rustls 0.23 both of its APIs give decrypted application data
//! as a new `Vec` per record, read the socket 4 KiB at a time and keep a record-sized deframing
//! buffer and a plaintext queue side by side (about 50 KB during a download). Here the socket
//! is read into [`TlsLink`]'s record buffer as far as it has room, a record is authenticated
//! and decrypted where it lies (ring's AEAD), and its plaintext is copied once, into the
//! caller's buffer: no allocation per record, one buffer of one maximal record.
//!
//! What the record layer accepts after the handshake (RFC 8446 §5, RFC 5246 §6.2):
//! application data; TLS 1.3 `NewSessionTicket` (given to rustls for resumption) and
//! `KeyUpdate` (new receive keys from rustls; the update the server may ask of us is owed only
//! before we send data, and we send none); a `close_notify` alert (the clean end). Anything
//! else (another alert, a record that does not authenticate, a renegotiation) fails the
//! connection, and the download goes on from where it was on a new one.

use std::io;

use ring::aead;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use crate::net::{Interest, Net};

/// Record header: type, version, length.
const HEADER: usize = 5;
/// Largest record payload a peer may send: 2^14 of plaintext plus 256, TLS 1.3's limit (RFC
/// 8446 §5.2). TLS 1.2 allows 2048 for any cipher, but the AEAD suites offered here add 24 at
/// most (an explicit nonce and a tag), so a longer record is an overflow in either version.
const MAX_PAYLOAD: usize = 16384 + 256;
/// The record buffer: one whole record, the most a record layer must hold to authenticate it.
const RECORD_BUFFER: usize = HEADER + MAX_PAYLOAD;
/// A handshake message may span records; rustls joins them in this buffer, which grows up to
/// this (its own limit for buffered handshake data) while the handshake runs.
const MAX_HANDSHAKE_BUFFER: usize = 0xffff + HEADER;
/// AEAD tag of every suite offered.
const TAG: usize = 16;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLOSE_NOTIFY: u8 = 0;
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Where the handshake stands after [`TlsLink::handshake`].
pub enum Handshake {
    /// Done: the request is encrypted, for [`TlsLink::send_request`].
    Done,
    /// It needs the socket ready for this.
    Wait(Interest),
}

/// The receive keys and record state once the handshake is over.
struct Records {
    key: aead::LessSafeKey,
    /// TLS 1.3 and ChaCha20: the per-connection IV XORed with the sequence number. TLS 1.2
    /// AES-GCM: the first 4 bytes are the salt, the rest of the nonce comes with each record.
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    tls13: bool,
    gcm: bool,
    /// rustls' side after the handshake: new keys on a key update, session tickets.
    kernel: KernelConnection<ClientConnectionData>,
}

enum Phase {
    Handshake(Box<UnbufferedClientConnection>),
    Records(Box<Records>),
    /// Only after a failed hand-over of the keys.
    Gone,
}

/// Bytes waiting to be sent: handshake records, then the encrypted request.
struct Outgoing {
    buf: Vec<u8>,
    len: usize,
    sent: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        &self.buf[self.sent..self.len]
    }

    /// Room for `extra` more bytes (it grows only for the handshake and the request: a
    /// ClientHello, a request as long as the URL allows).
    fn room(&mut self, extra: usize) -> &mut [u8] {
        if self.buf.len() < self.len + extra {
            self.buf.resize(self.len + extra, 0);
        }
        &mut self.buf[self.len..]
    }

    /// Sends what is pending; false when the socket took only part of it.
    fn flush<N: Net>(&mut self, net: &mut N, socket: &mut N::Socket) -> io::Result<bool> {
        while self.sent < self.len {
            match net.send(socket, &self.buf[self.sent..self.len]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.sent = 0;
        self.len = 0;
        Ok(true)
    }
}

/// Why the handshake stopped.
pub enum HandshakeError {
    /// The socket failed or closed.
    Io(io::Error),
    /// TLS refused the server (or the server us): what rustls said.
    Tls(String),
}

/// One HTTPS connection's TLS over a [`Net`] socket (see the module doc).
pub struct TlsLink {
    phase: Phase,
    /// Received bytes: `buf[..filled]`. After the handshake, the record at the front occupies
    /// `buf[..record_end]` and its unread plaintext is `buf[plain_start..plain_end]`.
    buf: Vec<u8>,
    filled: usize,
    record_end: usize,
    plain_start: usize,
    plain_end: usize,
    /// The server's `close_notify` arrived: the stream ended cleanly.
    closed: bool,
    out: Outgoing,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn bad_record(what: &str) -> io::Error {
    tls_error(rustls::Error::General(what.to_owned()))
}

/// Drops `n` processed bytes from the front of `buf[..*filled]`.
fn discard(buf: &mut [u8], filled: &mut usize, n: usize) {
    if n > 0 {
        buf.copy_within(n..*filled, 0);
        *filled -= n;
    }
}

impl TlsLink {
    /// Starts a client connection to `name` (nothing is sent yet). Allocates the record buffer.
    pub fn new(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<TlsLink, rustls::Error> {
        let conn = UnbufferedClientConnection::new(config, name)?;
        Ok(TlsLink {
            phase: Phase::Handshake(Box::new(conn)),
            buf: vec![0; RECORD_BUFFER],
            filled: 0,
            record_end: 0,
            plain_start: 0,
            plain_end: 0,
            closed: false,
            out: Outgoing {
                buf: Vec::new(),
                len: 0,
                sent: 0,
            },
        })
    }

    /// Sends the encrypted request (after [`Handshake::Done`]); false when the socket took
    /// only part of it.
    pub fn send_request<N: Net>(
        &mut self,
        net: &mut N,
        socket: &mut N::Socket,
    ) -> io::Result<bool> {
        let done = self.out.flush(net, socket)?;
        if done {
            // Not needed again on this connection.
            self.out.buf = Vec::new();
        }
        Ok(done)
    }

    /// Drives the handshake as far as the socket allows. Once it is complete, `request` is
    /// encrypted (for [`send_request`](Self::send_request)) and the receive keys are taken over
    /// from rustls.
    pub fn handshake<N: Net>(
        &mut self,
        net: &mut N,
        socket: &mut N::Socket,
        request: &[u8],
    ) -> Result<Handshake, HandshakeError> {
        enum Next {
            Again,
            Read,
            Encrypted,
            Return(Result<Handshake, HandshakeError>),
        }
        loop {
            let Phase::Handshake(conn) = &mut self.phase else {
                return Ok(Handshake::Done);
            };
            let out = &mut self.out;
            if !out.pending().is_empty() {
                match out.flush(net, socket) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Handshake::Wait(Interest::Write)),
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            let status = conn.process_tls_records(&mut self.buf[..self.filled]);
            let discarded = status.discard;
            let next = match status.state {
                Err(e) => Next::Return(Err(HandshakeError::Tls(e.to_string()))),
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    let n = match data.encode(out.room(0)) {
                        Err(EncodeError::InsufficientSize(s)) => {
                            data.encode(out.room(s.required_size))
                        }
                        r => r,
                    };
                    match n {
                        Ok(n) => {
                            out.len += n;
                            Next::Again
                        }
                        Err(e) => Next::Return(Err(HandshakeError::Tls(format!("{e:?}")))),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => match out.flush(net, socket) {
                    Ok(true) => {
                        data.done();
                        Next::Again
                    }
                    Ok(false) => Next::Return(Ok(Handshake::Wait(Interest::Write))),
                    Err(e) => Next::Return(Err(HandshakeError::Io(e))),
                },
                Ok(ConnectionState::BlockedHandshake) => Next::Read,
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    // The record overhead is at most a header, a tag and the content type.
                    match traffic.encrypt(request, out.room(request.len() + 64)) {
                        Ok(n) => {
                            out.len += n;
                            Next::Encrypted
                        }
                        Err(e) => Next::Return(Err(HandshakeError::Tls(format!("{e:?}")))),
                    }
                }
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                    Next::Return(Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())))
                }
                Ok(_) => Next::Return(Err(HandshakeError::Tls(
                    "unexpected data during the handshake".into(),
                ))),
            };
            discard(&mut self.buf, &mut self.filled, discarded);
            match next {
                Next::Again => {}
                Next::Read => match self.read_handshake(net, socket) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Handshake::Wait(Interest::Read)),
                    Err(e) => return Err(HandshakeError::Io(e)),
                },
                Next::Encrypted => {
                    self.take_over_records().map_err(HandshakeError::Tls)?;
                    return Ok(Handshake::Done);
                }
                Next::Return(r) => return r,
            }
        }
    }

    /// Receives handshake bytes; false when none are there yet. The buffer grows for a
    /// handshake message longer than a record, within rustls' own limit.
    fn read_handshake<N: Net>(&mut self, net: &mut N, socket: &mut N::Socket) -> io::Result<bool> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= MAX_HANDSHAKE_BUFFER {
                return Err(bad_record("handshake message too large"));
            }
            let grown = (self.buf.len() * 2).min(MAX_HANDSHAKE_BUFFER);
            self.buf.resize(grown, 0);
        }
        match net.recv(socket, &mut self.buf[self.filled..]) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.filled += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The handshake is over: rustls hands over the receive keys.
    fn take_over_records(&mut self) -> Result<(), String> {
        let Phase::Handshake(conn) = std::mem::replace(&mut self.phase, Phase::Gone) else {
            return Err("no handshake to finish".into());
        };
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(|e| e.to_string())?;
        let tls13 = kernel.protocol_version() == ProtocolVersion::TLSv1_3;
        let (seq, traffic) = secrets.rx;
        let (key, iv, gcm) = keys(traffic)?;
        self.phase = Phase::Records(Box::new(Records {
            key,
            iv,
            seq,
            tls13,
            gcm,
            kernel,
        }));
        if self.buf.len() > RECORD_BUFFER && self.filled <= RECORD_BUFFER {
            self.buf.truncate(RECORD_BUFFER);
            self.buf.shrink_to_fit();
        }
        Ok(())
    }

    /// Plaintext into `out`: `WouldBlock` when no whole record has arrived, `Ok(0)` after
    /// the server's `close_notify`, `UnexpectedEof` at a close without it, `InvalidData`
    /// (carrying a [`rustls::Error`]) for a record that is refused.
    pub fn receive<N: Net>(
        &mut self,
        net: &mut N,
        socket: &mut N::Socket,
        out: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            if self.plain_start < self.plain_end {
                let n = (self.plain_end - self.plain_start).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.plain_start..self.plain_start + n]);
                self.plain_start += n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            if self.record_end > 0 {
                discard(&mut self.buf, &mut self.filled, self.record_end);
                self.record_end = 0;
                self.plain_start = 0;
                self.plain_end = 0;
            }
            if self.filled >= HEADER {
                let len = usize::from(u16::from_be_bytes([self.buf[3], self.buf[4]]));
                if len > MAX_PAYLOAD {
                    return Err(bad_record("record too long"));
                }
                if self.filled >= HEADER + len {
                    self.open_record(len)?;
                    continue;
                }
            }
            match net.recv(socket, &mut self.buf[self.filled..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => self.filled += n,
                Err(e) => return Err(e),
            }
        }
    }

    /// Authenticates and decrypts the record at the front (`len` bytes after its header) in
    /// place, and acts on what it holds.
    fn open_record(&mut self, len: usize) -> io::Result<()> {
        let Phase::Records(rx) = &mut self.phase else {
            return Err(bad_record("record before the handshake ended"));
        };
        let header = [
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
            self.buf[4],
        ];
        let seq = rx.seq;
        rx.seq = rx.seq.wrapping_add(1);
        self.record_end = HEADER + len;
        let payload = &mut self.buf[HEADER..HEADER + len];
        let (typ, start, end) = if rx.tls13 {
            if header[0] != APPLICATION_DATA {
                return Err(bad_record("unencrypted record after the handshake"));
            }
            let plain = rx
                .key
                .open_in_place(nonce_xor(&rx.iv, seq), aead::Aad::from(header), payload)
                .map_err(|_| tls_error(rustls::Error::DecryptError))?;
            // Content, type and padding: at most 2^14 + 1 (RFC 8446 §5.4).
            if plain.len() > 16385 {
                return Err(bad_record("record plaintext too long"));
            }
            // The inner type is the last non-zero byte; zeros after it are padding.
            let Some(at) = plain.iter().rposition(|&b| b != 0) else {
                return Err(bad_record("record without a content type"));
            };
            (plain[at], HEADER, HEADER + at)
        } else {
            let explicit = if rx.gcm { 8 } else { 0 };
            let Some(plain_len) = len.checked_sub(explicit + TAG) else {
                return Err(tls_error(rustls::Error::DecryptError));
            };
            let nonce = if rx.gcm {
                let mut n = [0u8; aead::NONCE_LEN];
                n[..4].copy_from_slice(&rx.iv[..4]);
                n[4..].copy_from_slice(&payload[..8]);
                aead::Nonce::assume_unique_for_key(n)
            } else {
                nonce_xor(&rx.iv, seq)
            };
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8..11].copy_from_slice(&header[..3]);
            aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
            rx.key
                .open_in_place(nonce, aead::Aad::from(aad), &mut payload[explicit..])
                .map_err(|_| tls_error(rustls::Error::DecryptError))?;
            (header[0], HEADER + explicit, HEADER + explicit + plain_len)
        };
        if end - start > 16384 {
            return Err(bad_record("record plaintext too long"));
        }
        match typ {
            APPLICATION_DATA => {
                self.plain_start = start;
                self.plain_end = end;
                Ok(())
            }
            ALERT => match self.buf[start..end] {
                [_, CLOSE_NOTIFY] => {
                    self.closed = true;
                    Ok(())
                }
                [_, desc] => Err(tls_error(rustls::Error::AlertReceived(desc.into()))),
                _ => Err(bad_record("malformed alert")),
            },
            // Zero-length handshake fragments are forbidden (RFC 8446 §5.1, RFC 5246 §6.2.1).
            HANDSHAKE if start == end => Err(bad_record("empty handshake record")),
            HANDSHAKE => {
                let Phase::Records(rx) = &mut self.phase else {
                    return Err(bad_record("record before the handshake ended"));
                };
                post_handshake(rx, &self.buf[start..end])
            }
            _ => Err(bad_record("unexpected record type")),
        }
    }
}

/// Handshake messages after the handshake: each must be whole in its record (a session
/// ticket or a key update is far smaller than one).
fn post_handshake(rx: &mut Records, mut messages: &[u8]) -> io::Result<()> {
    while !messages.is_empty() {
        let (typ, body, more) = next_message(messages)?;
        messages = more;
        match (typ, rx.tls13) {
            (NEW_SESSION_TICKET, true) => {
                // Only for resumption later: a ticket that cannot be kept costs nothing now.
                if let Err(e) = rx.kernel.handle_new_session_ticket(body) {
                    crate::ota_log!(
                        crate::log::Level::Debug,
                        "firmware download: TLS session ticket not kept: {e}"
                    );
                }
            }
            (KEY_UPDATE, true) => {
                // One byte, 0 or 1 (RFC 8446 §4.6.3), and the record's last message: what
                // followed it would be under the old keys (§5.1).
                if !matches!(body, [0 | 1]) || !messages.is_empty() {
                    return Err(bad_record("malformed key update"));
                }
                let (seq, traffic) = rx.kernel.update_rx_secret().map_err(tls_error)?;
                let (key, iv, gcm) = keys(traffic).map_err(|e| bad_record(&e))?;
                rx.key = key;
                rx.iv = iv;
                rx.gcm = gcm;
                rx.seq = seq;
            }
            // A renegotiation request is declined by not answering it (RFC 5246 §7.4.1.1).
            (HELLO_REQUEST, false) => {}
            _ => return Err(bad_record("unexpected handshake message")),
        }
    }
    Ok(())
}

/// The first handshake message of `messages`: its type, its body, and what follows it.
fn next_message(messages: &[u8]) -> io::Result<(u8, &[u8], &[u8])> {
    let [typ, a, b, c, rest @ ..] = messages else {
        return Err(bad_record("malformed handshake message"));
    };
    let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
    if rest.len() < len {
        return Err(bad_record("handshake message split across records"));
    }
    let (body, more) = rest.split_at(len);
    Ok((*typ, body, more))
}

/// ring's key for `traffic`, its IV, and whether it is AES-GCM.
fn keys(
    traffic: ConnectionTrafficSecrets,
) -> Result<(aead::LessSafeKey, [u8; aead::NONCE_LEN], bool), String> {
    let (alg, key, iv, gcm) = match &traffic {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (&aead::CHACHA20_POLY1305, key, iv, false)
        }
        _ => return Err("cipher suite not supported by the record layer".into()),
    };
    let unbound = aead::UnboundKey::new(alg, key.as_ref()).map_err(|_| "bad traffic key")?;
    let iv: [u8; aead::NONCE_LEN] = iv.as_ref().try_into().map_err(|_| "bad traffic IV")?;
    Ok((aead::LessSafeKey::new(unbound), iv, gcm))
}

/// The per-record nonce of TLS 1.3 (and ChaCha20 in TLS 1.2): the IV XOR the sequence number.
fn nonce_xor(iv: &[u8; aead::NONCE_LEN], seq: u64) -> aead::Nonce {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    aead::Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_is_the_iv_xor_the_sequence_number_in_its_last_8_bytes() {
        let iv: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let nonce = |seq| *nonce_xor(&iv, seq).as_ref();
        assert_eq!(nonce(0), iv);
        assert_eq!(nonce(1), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]);
        assert_eq!(
            nonce(0x0102_0304_0506_0708),
            [0, 1, 2, 3, 5, 7, 5, 3, 13, 15, 13, 3]
        );
        assert_eq!(
            nonce(u64::MAX),
            [0, 1, 2, 3, !4, !5, !6, !7, !8, !9, !10, !11]
        );
    }

    #[test]
    fn handshake_messages_are_split_where_their_lengths_say() {
        let two = [4, 0, 0, 2, 0xaa, 0xbb, 24, 0, 0, 1, 0];
        let (typ, body, rest) = next_message(&two).unwrap();
        assert_eq!((typ, body, rest), (4, &[0xaa, 0xbb][..], &two[6..]));
        let (typ, body, rest) = next_message(rest).unwrap();
        assert_eq!((typ, body, rest), (24, &[0][..], &[][..]));
        // An empty body (a HelloRequest).
        assert_eq!(next_message(&[0, 0, 0, 0]).unwrap(), (0, &[][..], &[][..]));
    }

    #[test]
    fn a_handshake_message_cut_short_is_refused() {
        for broken in [
            &[][..],
            &[4],
            &[4, 0, 0],
            &[4, 0, 0, 3, 1, 2],
            &[4, 0xff, 0xff, 0xff, 1],
        ] {
            let e = next_message(broken).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{broken:?}");
            assert!(crate::tls::is_tls_io_error(&e), "{broken:?}");
        }
    }
}
