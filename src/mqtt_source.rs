//! Firmware download over MQTT (`dProtocol` `mqtt`, Aliyun Link SDK 4.x's MQTT download, which
//! SagooIOT borrows): [`MqttBlockSource`] asks for one block of a file at a time on
//! `/sys/{pk}/{dn}/thing/file/download` and takes the answer from `…/download_reply`, over the
//! caller's [`MqttClient`]; no extra connection. Frame layout and checks: `docs/packages.md`
//! and [`crate::protocol::mqtt_download`].
//!
//! Who drives MQTT: single-thread firmware calls only FetchYield in its fetch loop (the iotkit
//! sample does not yield MQTT inside it), so [`read`](FirmwareSource::read) yields the client
//! itself, bounded by its timeout (in slices of 50 ms), while no reply is there. When another
//! thread yields the client (it is inside `yield_for`, or called it within the last second),
//! the reply arrives through that thread's yield and `read` waits for it on a condition
//! variable, holding no lock; so a yield thread's calls do not find the link taken. A yield
//! thread's first call, while a read still drives its slice, waits for the slice to end.
//!
//! One request is in flight at a time. The reply topic's handler checks each frame with
//! [`parse_reply`] against that request and copies a good block's data into a buffer made at
//! creation (nothing is allocated per block); `read` hands it out in the caller's pieces and
//! asks for the next block when the last byte is taken.
//!
//! Failures, and who retries them:
//! - the source itself re-asks for the same offset, at most
//!   [`block_retries`](MqttDownloadConfig::block_retries) times in a row per block: on no reply
//!   within [`block_timeout`](MqttDownloadConfig::block_timeout), and on a reply refused for its
//!   frame (length, header, CRC-16, a block larger than asked or empty);
//! - replies at another offset (a late duplicate after a retry) or for another file's token are
//!   dropped, one log line each: the frame names no request id, so an older request's answer
//!   is known by its offset (a late answer at the same offset holds the same bytes, and is
//!   taken);
//! - when a block's retries are used up, `read` fails with what ended the last attempt:
//!   [`DownloadError::Timeout`] (transient: the engine's retry policy reopens at the same
//!   offset) after a silent wait, else the reply's error by [`download_error`]
//!   (non-transient: a platform that sent the wrong thing four times will not mend);
//! - a `code` other than 200 or a `fileLength` other than the announced size fail at once
//!   (non-transient): the platform disagrees about the file.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, MqttError, Result};
use crate::log::Level;
use crate::mqtt::{Drive, MqttClient, MqttDriver, QoS, YieldBreak};
use crate::ota_log;
use crate::protocol::mqtt_download::{
    encode_request, parse_reply, BlockRequest, Expected, ReplyError, DEFAULT_TOKEN, FRAME_OVERHEAD,
    REPLY_SUFFIX, REQUEST_SUFFIX, TOKEN_MAX,
};
pub use crate::protocol::mqtt_download::{MqttFile, URL_PREFIX};
pub use crate::source::MqttDownloadConfig;
use crate::source::{Chunk, DownloadError, FirmwareSource, OpenInfo};

/// Room kept in a reply frame for its JSON header: `code`, `data` with three 20-digit numbers
/// and a 128-byte token, and fields we ignore (`msg`, an `id` echo); about 250 bytes in practice.
const REPLY_HEADER_ROOM: usize = 512;

/// Room for one encoded block request (about 170 bytes with 20-digit numbers).
const REQUEST_ROOM: usize = 256;

/// Longest a read waits on another thread's yield before trying to yield the client itself
/// (that thread may have stopped yielding).
const BUSY_POLL: Duration = Duration::from_millis(10);

/// What a [`MqttBlockSource`] did since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MqttBlockStats {
    /// Block requests published, retries included.
    pub requests: u64,
    /// Requests sent again for the same offset (after a timeout or a refused reply).
    pub retries: u64,
    /// Blocks accepted.
    pub blocks: u64,
    /// Replies dropped: at another offset, for another file, or with no request in flight.
    pub ignored: u64,
    /// Replies refused by [`parse_reply`] (bad frame, CRC, code, length).
    pub refused: u64,
}

/// The error a refused reply becomes when it ends the download (see the module doc for when).
pub fn download_error(e: ReplyError) -> DownloadError {
    use ReplyError as R;
    match e {
        R::TooShort { .. } | R::HeaderPastFrame { .. } | R::LengthMismatch { .. } => {
            DownloadError::BadBlock("frame is malformed")
        }
        R::HeaderJson(_) | R::MissingField(_) | R::BadField(_) => {
            DownloadError::BadBlock("header is malformed")
        }
        R::NotSuccess { .. } => DownloadError::BadBlock("the platform refused (code not 200)"),
        R::CrcMismatch { .. } => DownloadError::BadBlock("block CRC-16 mismatch"),
        R::OtherFile => DownloadError::BadBlock("replies are for another file"),
        R::WrongOffset { .. } => DownloadError::BadBlock("replies at another offset than asked"),
        R::FileLengthMismatch { announced, got } if got > announced => DownloadError::Oversize,
        R::FileLengthMismatch { .. } => {
            DownloadError::BadBlock("the file is smaller than the announced size")
        }
        R::BlockTooLarge { .. } => DownloadError::BadBlock("block larger than asked"),
        R::EmptyBlock => DownloadError::BadBlock("block empty before the end of the file"),
    }
}

/// Whether asking again can help: not when the platform disagrees about the file.
pub fn is_retried(e: ReplyError) -> bool {
    !matches!(
        e,
        ReplyError::NotSuccess { .. } | ReplyError::FileLengthMismatch { .. }
    )
}

/// The request in flight, as its reply must match it.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    offset: u64,
    size: u32,
    file_length: u64,
}

/// What came for the request in flight.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Waiting,
    /// A good block of this many bytes is in `Slot::data`.
    Block(usize),
    /// The last reply was refused (a later good one replaces it).
    Refused(ReplyError),
}

/// Where the reply topic's handler leaves what arrived; shared with the source.
struct Slot {
    /// None: no request in flight, replies are dropped.
    awaiting: Option<Awaiting>,
    outcome: Outcome,
    /// Why the last reply for the request in flight was dropped (another offset or file).
    dropped: Option<ReplyError>,
    /// The file's token, once a first good reply named one (or none: then empty).
    token: [u8; TOKEN_MAX],
    token_len: usize,
    token_known: bool,
    /// The block's data; `block_size` bytes, made at creation.
    data: Box<[u8]>,
    /// The source is yielding the client itself: a reply ends that yield at once.
    driving: bool,
    ignored: u64,
    refused: u64,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Signalled when an outcome arrives, for a read waiting on another thread's yield.
    arrived: Condvar,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The reply topic's handler: checks `frame` against the request in flight and keeps a good
    /// block (or why it was refused) for `read`.
    fn take_reply(&self, frame: &[u8], yield_break: &YieldBreak) {
        let mut guard = lock(&self.slot);
        let slot = &mut *guard;
        let Some(a) = slot.awaiting else {
            slot.ignored += 1;
            drop(guard);
            ota_log!(
                Level::Debug,
                "MQTT download: reply with no request in flight dropped"
            );
            return;
        };
        if let Outcome::Block(_) = slot.outcome {
            // A duplicate of the block already taken.
            slot.ignored += 1;
            return;
        }
        let expect = Expected {
            token: slot.token_known.then_some(&slot.token[..slot.token_len]),
            offset: a.offset,
            size: a.size,
            file_length: a.file_length,
        };
        match parse_reply(frame, &expect) {
            Ok(block) => {
                let n = block.data.len();
                // parse_reply checked n <= the size asked <= the buffer.
                slot.data[..n].copy_from_slice(block.data);
                if !slot.token_known {
                    slot.token[..block.token.len()].copy_from_slice(block.token);
                    slot.token_len = block.token.len();
                    slot.token_known = true;
                }
                slot.outcome = Outcome::Block(n);
            }
            Err(e @ (ReplyError::WrongOffset { .. } | ReplyError::OtherFile)) => {
                slot.dropped = Some(e);
                slot.ignored += 1;
                drop(guard);
                ota_log!(Level::Warning, "MQTT download: reply dropped: {e}");
                return;
            }
            Err(e) => {
                slot.outcome = Outcome::Refused(e);
                slot.refused += 1;
            }
        }
        let driving = slot.driving;
        drop(guard);
        self.arrived.notify_all();
        if driving {
            yield_break.request();
        }
    }
}

/// Where a download stands between two reads.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Not open (never opened, closed, or failed).
    Idle,
    /// Opened: the next read reports [`Chunk::Opened`].
    Opening,
    /// The request for `offset` is to be sent.
    Request,
    /// The request for `offset` is in flight until `deadline`.
    Awaiting { deadline: Instant },
    /// A block of `len` bytes is in the slot, `given` of them handed out.
    Handing { len: usize, given: usize },
    /// The whole file was handed out.
    Ended,
}

/// A file downloaded in blocks over the caller's MQTT client (see the module doc).
pub struct MqttBlockSource {
    driver: MqttDriver,
    shared: Arc<Shared>,
    config: MqttDownloadConfig,
    request_topic: String,
    reply_topic: String,
    request: Box<[u8]>,
    file: Option<MqttFile>,
    /// The next byte to hand out (and to ask for, between blocks).
    offset: u64,
    /// Requests sent again for the block at `offset`.
    attempt: u32,
    step: Step,
    next_id: u64,
    requests: u64,
    retries: u64,
    blocks: u64,
}

impl MqttBlockSource {
    /// Makes the block buffer and subscribes the reply topic of device `product_key` /
    /// `device_name` on `mqtt` (QoS 0; the subscription goes out with the next yield).
    ///
    /// [`Error::InvalidParam`] when the block size is 0 or its reply frame would not fit the
    /// client's `max_packet_size` (a bigger packet would break the connection at every block),
    /// or a name is empty; [`Error::InvalidState`] while another source of this device is
    /// subscribed on the client; the client's error when its request queue is full.
    pub fn new(
        mqtt: &MqttClient,
        product_key: &str,
        device_name: &str,
        config: MqttDownloadConfig,
    ) -> Result<MqttBlockSource> {
        if product_key.is_empty() || device_name.is_empty() {
            return Err(Error::InvalidParam(
                "product key and device name are required",
            ));
        }
        if config.block_size == 0 {
            return Err(Error::InvalidParam("MQTT download block size is 0"));
        }
        let request_topic = format!("/sys/{product_key}/{device_name}{REQUEST_SUFFIX}");
        let reply_topic = format!("/sys/{product_key}/{device_name}{REPLY_SUFFIX}");
        if config.block_size > Self::largest_block(mqtt, product_key, device_name) {
            return Err(Error::InvalidParam(
                "MQTT download block size: its reply frame exceeds the MQTT client's max_packet_size",
            ));
        }
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                awaiting: None,
                outcome: Outcome::Waiting,
                dropped: None,
                token: [0; TOKEN_MAX],
                token_len: 0,
                token_known: false,
                data: vec![0; config.block_size as usize].into_boxed_slice(),
                driving: false,
                ignored: 0,
                refused: 0,
            }),
            arrived: Condvar::new(),
        });
        let handler_shared = shared.clone();
        let yield_break = mqtt.yield_break();
        mqtt.subscribe_new(&reply_topic, QoS::AtMostOnce, move |msg| {
            handler_shared.take_reply(msg.payload, &yield_break)
        })?;
        // The subscription and one block request wait in the queue beside the sessions'.
        mqtt.reserve_requests(2);
        Ok(MqttBlockSource {
            driver: mqtt.driver(),
            shared,
            config,
            request_topic,
            reply_topic,
            request: vec![0; REQUEST_ROOM].into_boxed_slice(),
            file: None,
            offset: 0,
            attempt: 0,
            step: Step::Idle,
            next_id: 1,
            requests: 0,
            retries: 0,
            blocks: 0,
        })
    }

    /// The largest block whose reply frame (with 512 bytes for its header) fits
    /// `mqtt`'s `max_packet_size` for device `product_key` / `device_name`.
    pub fn largest_block(mqtt: &MqttClient, product_key: &str, device_name: &str) -> u32 {
        let reply_topic = "/sys/".len() + product_key.len() + 1 + device_name.len();
        // Fixed header (at most 5 bytes), the topic with its length, a packet id should the
        // broker deliver at QoS 1, then the frame.
        let packet = 5 + 2 + reply_topic + REPLY_SUFFIX.len() + 2;
        let room = mqtt
            .max_packet_size()
            .saturating_sub(packet + FRAME_OVERHEAD + REPLY_HEADER_ROOM);
        u32::try_from(room).unwrap_or(u32::MAX)
    }

    /// Bytes asked per request.
    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// The file opened last, if any.
    pub fn file(&self) -> Option<MqttFile> {
        self.file
    }

    /// What the source did since it was made.
    pub fn stats(&self) -> MqttBlockStats {
        let slot = lock(&self.shared.slot);
        MqttBlockStats {
            requests: self.requests,
            retries: self.retries,
            blocks: self.blocks,
            ignored: slot.ignored,
            refused: slot.refused,
        }
    }

    /// No request in flight: replies from now on are dropped.
    fn disarm(&self) {
        let mut slot = lock(&self.shared.slot);
        slot.awaiting = None;
        slot.outcome = Outcome::Waiting;
        slot.dropped = None;
    }

    /// Queues the request for the block at `offset` and arms the slot for its reply.
    fn send_request(&mut self, file: MqttFile) -> std::result::Result<(), DownloadError> {
        let size = (file.size - self.offset).min(self.config.block_size.into()) as u32;
        let req = BlockRequest {
            id: self.next_id,
            token: DEFAULT_TOKEN,
            stream_id: file.stream_id,
            file_id: file.file_id,
            offset: self.offset,
            size,
        };
        self.next_id += 1;
        let n = encode_request(&req, &mut self.request)
            .map_err(|_| DownloadError::BadResponse("MQTT download request too long"))?;
        {
            // Armed before the request can be answered.
            let mut slot = lock(&self.shared.slot);
            slot.awaiting = Some(Awaiting {
                offset: self.offset,
                size,
                file_length: file.size,
            });
            slot.outcome = Outcome::Waiting;
            slot.dropped = None;
        }
        match self
            .driver
            .publish(&self.request_topic, QoS::AtMostOnce, &self.request[..n])
        {
            Ok(()) => {}
            // As if sent and lost: the block timeout asks again.
            Err(Error::Mqtt(MqttError::QueueFull)) => ota_log!(
                Level::Warning,
                "MQTT download: request queue full, block at byte {} not asked yet",
                self.offset
            ),
            Err(Error::Mqtt(MqttError::NotConnected)) => {
                return Err(DownloadError::Io(std::io::ErrorKind::NotConnected))
            }
            Err(_) => {
                return Err(DownloadError::BadResponse(
                    "MQTT download request refused by the MQTT client",
                ))
            }
        }
        self.requests += 1;
        // Sent now (unless a yield thread sends it), so the block timeout counts from here
        // and not from the caller's next read.
        if let Drive::Gone = self.driver.drive(Duration::ZERO) {
            return Err(DownloadError::Io(std::io::ErrorKind::NotConnected));
        }
        self.step = Step::Awaiting {
            deadline: Instant::now() + self.config.block_timeout,
        };
        Ok(())
    }

    /// The attempt at the block at `offset` ended with `why`: asks again, or fails with `err`
    /// once the block's retries are used up.
    fn retry_or(
        &mut self,
        why: &dyn fmt::Display,
        err: DownloadError,
    ) -> std::result::Result<(), DownloadError> {
        if self.attempt >= self.config.block_retries {
            ota_log!(
                Level::Error,
                "MQTT download: block at byte {} failed {} times ({why})",
                self.offset,
                self.attempt + 1
            );
            return Err(err);
        }
        self.attempt += 1;
        self.retries += 1;
        ota_log!(
            Level::Warning,
            "MQTT download: block at byte {} asked again ({}/{}): {why}",
            self.offset,
            self.attempt,
            self.config.block_retries
        );
        self.step = Step::Request;
        Ok(())
    }

    /// Waits until `until` for something to arrive: yields the client, or, while another
    /// thread yields it, waits for that yield to deliver.
    fn wait(&self, until: Instant) -> std::result::Result<(), DownloadError> {
        lock(&self.shared.slot).driving = true;
        let left = until.saturating_duration_since(Instant::now());
        // One slice at most (`MAX_DRIVE_SLICE`): a yield thread that starts calling meanwhile
        // waits until it ends.
        let drove = self.driver.drive(left);
        let mut slot = lock(&self.shared.slot);
        slot.driving = false;
        match drove {
            Drive::Drove => Ok(()),
            Drive::Busy => {
                let left = until.saturating_duration_since(Instant::now());
                if matches!(slot.outcome, Outcome::Waiting) && !left.is_zero() {
                    let _ = self
                        .shared
                        .arrived
                        .wait_timeout(slot, left.min(BUSY_POLL))
                        .unwrap_or_else(|p| p.into_inner());
                }
                Ok(())
            }
            Drive::Gone => Err(DownloadError::Io(std::io::ErrorKind::NotConnected)),
        }
    }

    /// Goes on with the download until a chunk for the caller, or `deadline`.
    fn step(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> std::result::Result<Chunk, DownloadError> {
        let file = self.file.ok_or(DownloadError::BadResponse("not open"))?;
        let mut waited = false;
        loop {
            match self.step {
                Step::Idle => return Err(DownloadError::BadResponse("not open")),
                Step::Ended => return Ok(Chunk::End),
                Step::Opening => return self.opened(file),
                Step::Request => self.send_request(file)?,
                Step::Handing { len, given } => return self.hand(buf, file, len, given),
                Step::Awaiting {
                    deadline: block_deadline,
                } => {
                    let until = Deadlines {
                        call: deadline,
                        block: block_deadline,
                    };
                    if let Some(chunk) = self.awaiting(until, &mut waited)? {
                        return Ok(chunk);
                    }
                }
            }
        }
    }

    /// The open's answer, the first block request on its way while the caller looks at it.
    fn opened(&mut self, file: MqttFile) -> std::result::Result<Chunk, DownloadError> {
        if self.offset == file.size {
            self.step = Step::Ended;
        } else {
            self.step = Step::Request;
            self.send_request(file)?;
        }
        let partial = self.offset > 0;
        Ok(Chunk::Opened(OpenInfo {
            status: if partial { 206 } else { 200 },
            content_length: Some(file.size - self.offset),
            range_start: partial.then_some(self.offset),
            range_total: partial.then_some(file.size),
        }))
    }

    /// Hands the caller what fits of the block's bytes from `given` on; once all `len` are
    /// given, asks for the next block (or ends at the file's end).
    fn hand(
        &mut self,
        buf: &mut [u8],
        file: MqttFile,
        len: usize,
        given: usize,
    ) -> std::result::Result<Chunk, DownloadError> {
        let n = buf.len().min(len - given);
        buf[..n].copy_from_slice(&lock(&self.shared.slot).data[given..given + n]);
        self.offset += n as u64;
        self.step = Step::Handing {
            len,
            given: given + n,
        };
        if given + n == len {
            if self.offset == file.size {
                self.step = Step::Ended;
            } else {
                self.send_request(file)?;
            }
        }
        Ok(Chunk::Data(n))
    }

    /// A block request is out: takes its reply, asks again after a bad one or none in time,
    /// or waits (once per call before giving up at `until.call`). `Some` ends the call.
    fn awaiting(
        &mut self,
        until: Deadlines,
        waited: &mut bool,
    ) -> std::result::Result<Option<Chunk>, DownloadError> {
        let (outcome, dropped) = {
            let slot = lock(&self.shared.slot);
            (slot.outcome, slot.dropped)
        };
        match outcome {
            Outcome::Block(len) => {
                self.disarm();
                self.blocks += 1;
                self.attempt = 0;
                self.step = Step::Handing { len, given: 0 };
            }
            Outcome::Refused(e) if !is_retried(e) => {
                ota_log!(
                    Level::Error,
                    "MQTT download: reply for byte {} refused: {e}",
                    self.offset
                );
                return Err(download_error(e));
            }
            Outcome::Refused(e) => {
                self.disarm();
                self.retry_or(&e, download_error(e))?;
            }
            Outcome::Waiting => {
                let now = Instant::now();
                // Past the block's deadline, the socket is looked at once more first: a
                // caller slower than the timeout left the reply there.
                if *waited && now >= until.block {
                    self.disarm();
                    match dropped {
                        Some(e) => self.retry_or(
                            &format_args!("no reply in time, one dropped: {e}"),
                            download_error(e),
                        )?,
                        None => self.retry_or(&"no reply in time", DownloadError::Timeout)?,
                    }
                } else if *waited && now >= until.call {
                    return Ok(Some(Chunk::Pending));
                } else {
                    self.wait(until.call.min(until.block))?;
                    *waited = true;
                }
            }
        }
        Ok(None)
    }
}

/// The two times a wait for a block ends by: the caller's, and the block request's.
#[derive(Clone, Copy)]
struct Deadlines {
    call: Instant,
    block: Instant,
}

impl FirmwareSource for MqttBlockSource {
    /// Starts the download of the file `url` names ([`MqttFile`]'s form) from byte `offset`;
    /// queues nothing yet. The file's token, learnt from its first reply, is kept when the same
    /// file is opened again. [`DownloadError::Url`] for another URL,
    /// [`DownloadError::Status`]`(416)` for an offset past the end.
    fn open(&mut self, url: &str, offset: u64) -> std::result::Result<(), DownloadError> {
        self.close();
        let file = MqttFile::from_url(url).ok_or(DownloadError::Url)?;
        if offset > file.size {
            return Err(DownloadError::Status(416));
        }
        if self.file != Some(file) {
            let mut slot = lock(&self.shared.slot);
            slot.token_known = false;
            slot.token_len = 0;
        }
        self.file = Some(file);
        self.offset = offset;
        self.attempt = 0;
        self.step = Step::Opening;
        Ok(())
    }

    fn read(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> std::result::Result<Chunk, DownloadError> {
        let r = self.step(buf, Instant::now() + timeout);
        if r.is_err() {
            self.close();
        }
        r
    }

    fn close(&mut self) {
        self.disarm();
        self.step = Step::Idle;
    }
}

impl Drop for MqttBlockSource {
    fn drop(&mut self) {
        self.driver.unsubscribe(&self.reply_topic);
    }
}
