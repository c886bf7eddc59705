//! Sessions that share one MQTT client: a gateway upgrading itself and the devices behind it.
//!
//! Every session attached to a client joins the client's [`Gateway`] (one per client, made by
//! the first attach). The gateway decides when each session's download may start:
//!
//! - **Download slots**: at most [`Gateway::max_downloads`] sessions download from the network
//!   at once (default 1, what a cellular gateway wants). A session whose upgrade arrives while
//!   every slot is taken waits ([`Waiting::Slot`], `is_fetching` false) and starts, in arrival
//!   order, when a slot frees and its firmware asks `is_fetching` again.
//! - **Each distinct image once**: a session whose firmware keeps its verified images
//!   ([`OtaSession::set_local_image_source`](super::OtaSession::set_local_image_source)) offers
//!   its image from `check_firmware` true until it accepts another upgrade, withdraws the
//!   source or is dropped. Another session told to fetch the same image (same size and
//!   digest) streams it from there instead of the network: the local bytes are first read once
//!   and checked against the digest (so a mismatch falls back to the network before any byte
//!   is handed out), then streamed through the session's usual checks (digest, signature).
//!   While a session that keeps its images downloads one, the others needing the same image
//!   wait for it ([`Waiting::SameImage`]) instead of downloading it again in parallel.
//! - A session whose kept image is being read by others waits ([`Waiting::Readers`]) before
//!   its own next download starts, so its firmware never overwrites bytes being read.
//!
//! Lock order: the engine, then the gateway, then a shelf (the firmware's reader). Nothing here
//! calls back into an engine; sessions ask (`is_fetching`), the gateway answers.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::digest::{DigestKind, StreamDigest};
use crate::error::{Error, Result};
use crate::protocol::UpgradeNotice;
use crate::source::{Chunk, DownloadError, FirmwareSource, OpenInfo};

/// Most OTA sessions on one MQTT client (a gateway and its sub-devices).
/// cbindgen:ignore
pub const MAX_SESSIONS_PER_CLIENT: usize = 1024;

/// The firmware's copy of an image one session verified, read back for other sessions.
pub trait LocalImage: Send {
    /// Copies up to `buf.len()` bytes of the image from byte `offset` into `buf`; returns the
    /// count (0 only past the end). Runs on the thread of the reading session's `fetch_yield`,
    /// with no SDK lock but the source's own held: it must not call into the SDK.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Why a session with an accepted upgrade is not downloading yet (`is_fetching` false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Not waiting.
    No,
    /// Every download slot of the client is taken; it starts in arrival order.
    Slot,
    /// Another session, which keeps its images, is downloading the same image: this one
    /// streams it from there once it is verified (or downloads it if that fails).
    SameImage,
    /// Other sessions are still reading this session's kept image; its next download would
    /// overwrite it.
    Readers,
}

/// The log's words for `why`.
pub(crate) fn describe(why: Waiting) -> &'static str {
    match why {
        Waiting::No => "not waiting",
        Waiting::Slot => "every download slot of the MQTT client is taken",
        Waiting::SameImage => "another session is downloading the same image",
        Waiting::Readers => "other sessions are still reading the image this one keeps",
    }
}

/// What identifies an image across sessions: size and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageId {
    size: u64,
    kind: DigestKind,
    digest: [u8; 32],
    /// A package of several files has no digest of its own: never shared.
    shared: bool,
}

impl ImageId {
    pub(crate) fn of(notice: &UpgradeNotice) -> ImageId {
        // Only the digest's own bytes: the rest of the array is whatever an earlier notice left.
        let mut digest = [0u8; 32];
        digest[..notice.digest_kind.len()].copy_from_slice(notice.digest());
        ImageId {
            size: notice.size,
            kind: notice.digest_kind,
            digest,
            shared: !notice.is_package(),
        }
    }

    fn digest(&self) -> &[u8] {
        &self.digest[..self.kind.len()]
    }
}

/// Where one session's kept image is read from: the firmware's reader, emptied when the
/// session withdraws it or is dropped (after a read in progress ends).
pub(crate) struct Shelf {
    reader: Mutex<Option<Box<dyn LocalImage>>>,
}

impl Shelf {
    fn reader(&self) -> MutexGuard<'_, Option<Box<dyn LocalImage>>> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a member's download is doing, as the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Idle,
    /// An accepted upgrade waits to start (its place is in the queue).
    Waiting(ImageId),
    /// Downloading from the network (holds a slot).
    Network(ImageId),
    /// Downloaded and verified; the firmware has not judged it yet (check_firmware).
    Verified(ImageId),
    /// Streaming from `holder`'s kept image.
    Local {
        image: ImageId,
        holder: u64,
    },
}

struct Member {
    id: u64,
    activity: Activity,
    /// The verified image this member's firmware keeps and offers.
    held: Option<ImageId>,
    /// Whether the firmware set a source (it keeps its images).
    keeps_images: bool,
    shelf: Arc<Shelf>,
    /// Members streaming from `held` now.
    readers: u32,
}

struct Members {
    max_downloads: usize,
    next_id: u64,
    list: Vec<Member>,
    /// Members waiting to start, in arrival order.
    queue: VecDeque<u64>,
}

/// What a waiting member may do, slots aside.
enum Turn {
    Wait(Waiting),
    /// Stream the kept image of `list[i]`.
    Local(usize),
    /// Download it: a slot is needed.
    NeedsSlot,
}

/// What a member may do with its upgrade now.
pub(crate) enum Start {
    /// Download from the network (a slot is taken).
    Network,
    /// Stream `holder`'s kept image from this shelf.
    Local { shelf: Arc<Shelf>, holder: u64 },
    /// Not yet.
    Wait(Waiting),
}

/// The state the sessions on one MQTT client share (see the module doc).
pub(crate) struct Group {
    members: Mutex<Members>,
}

impl Members {
    fn index(&self, id: u64) -> Option<usize> {
        self.list.iter().position(|m| m.id == id)
    }

    fn network_downloads(&self) -> usize {
        self.list
            .iter()
            .filter(|m| matches!(m.activity, Activity::Network(_)))
            .count()
    }

    /// A member (not `except`) that offers `image` and may be read.
    fn holder_of(&self, image: &ImageId, except: u64) -> Option<usize> {
        self.list
            .iter()
            .position(|m| m.id != except && m.keeps_images && m.held.as_ref() == Some(image))
            .filter(|_| image.shared)
    }

    /// Whether a member (not `except`) that keeps its images is getting `image` now.
    fn in_flight(&self, image: &ImageId, except: u64) -> bool {
        image.shared
            && self.list.iter().any(|m| {
                m.id != except
                    && m.keeps_images
                    && matches!(m.activity,
                    Activity::Network(i) | Activity::Verified(i) | Activity::Local { image: i, .. }
                    if i == *image)
            })
    }

    /// What `self.list[i]`, wanting `image`, may do apart from the slots.
    fn turn(&self, i: usize, image: &ImageId) -> Turn {
        let m = &self.list[i];
        if m.readers > 0 {
            return Turn::Wait(Waiting::Readers);
        }
        if let Some(h) = self.holder_of(image, m.id) {
            return Turn::Local(h);
        }
        if self.in_flight(image, m.id) {
            return Turn::Wait(Waiting::SameImage);
        }
        Turn::NeedsSlot
    }

    /// Whether a waiter that arrived before `id` would use a free slot now.
    fn earlier_waiter_wants_slot(&self, id: u64) -> bool {
        for &w in &self.queue {
            if w == id {
                return false;
            }
            let Some(i) = self.index(w) else { continue };
            if let Activity::Waiting(image) = self.list[i].activity {
                if matches!(self.turn(i, &image), Turn::NeedsSlot) {
                    return true;
                }
            }
        }
        false
    }

    fn dequeue(&mut self, id: u64) {
        self.queue.retain(|&w| w != id);
    }

    /// Ends `list[i]`'s reading of another member's image, if it was reading one.
    fn stop_reading(&mut self, i: usize) {
        if let Activity::Local { holder, .. } = self.list[i].activity {
            if let Some(h) = self.index(holder) {
                self.list[h].readers = self.list[h].readers.saturating_sub(1);
            }
        }
    }
}

impl Group {
    pub(crate) fn new() -> Group {
        Group {
            members: Mutex::new(Members {
                max_downloads: 1,
                next_id: 1,
                list: Vec::new(),
                queue: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new member; [`Error::NoMemory`] beyond [`MAX_SESSIONS_PER_CLIENT`]. Its room in the
    /// list and the queue is allocated here (joining is part of a session's init).
    pub(crate) fn join(self: &Arc<Self>) -> Result<Membership> {
        let mut m = self.lock();
        if m.list.len() >= MAX_SESSIONS_PER_CLIENT {
            return Err(Error::TooManySessions);
        }
        let id = m.next_id;
        m.next_id += 1;
        m.list.push(Member {
            id,
            activity: Activity::Idle,
            held: None,
            keeps_images: false,
            shelf: Arc::new(Shelf {
                reader: Mutex::new(None),
            }),
            readers: 0,
        });
        let (members, queued) = (m.list.len(), m.queue.len());
        if m.queue.capacity() < members {
            m.queue.reserve(members - queued);
        }
        Ok(Membership {
            group: self.clone(),
            id,
        })
    }

    /// Sets (Some) or withdraws (None) the firmware's reader of member `id`'s kept images.
    /// Called without the engine's lock: a read in progress ends first.
    pub(crate) fn set_source(&self, id: u64, reader: Option<Box<dyn LocalImage>>) {
        let mut m = self.lock();
        let Some(i) = m.index(id) else { return };
        let keeps = reader.is_some();
        m.list[i].keeps_images = keeps;
        if !keeps {
            m.list[i].held = None;
        }
        let shelf = m.list[i].shelf.clone();
        drop(m);
        *shelf.reader() = reader;
    }

    fn leave(&self, id: u64) {
        let mut m = self.lock();
        m.dequeue(id);
        let Some(i) = m.index(id) else { return };
        m.stop_reading(i);
        let member = m.list.swap_remove(i);
        drop(m);
        // A read in progress ends first; later reads find no reader and fall back.
        *member.shelf.reader() = None;
    }
}

/// A session's place in its client's [`Group`]; leaving is dropping it.
pub(crate) struct Membership {
    group: Arc<Group>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.leave(self.id);
    }
}

impl Membership {
    /// May the accepted upgrade of `image` start? Withdraws this member's own kept image (its
    /// firmware is about to get another); queues it when it must wait.
    pub(crate) fn request_start(&self, image: ImageId) -> Start {
        let mut m = self.group.lock();
        let Some(i) = m.index(self.id) else {
            return Start::Network;
        };
        m.list[i].held = None;
        if !m.queue.contains(&self.id) {
            m.queue.push_back(self.id);
        }
        m.list[i].activity = Activity::Waiting(image);
        match m.turn(i, &image) {
            Turn::Wait(why) => return Start::Wait(why),
            Turn::Local(h) => {
                m.list[h].readers += 1;
                let (shelf, holder) = (m.list[h].shelf.clone(), m.list[h].id);
                m.list[i].activity = Activity::Local { image, holder };
                m.dequeue(self.id);
                return Start::Local { shelf, holder };
            }
            Turn::NeedsSlot => {}
        }
        if m.network_downloads() >= m.max_downloads || m.earlier_waiter_wants_slot(self.id) {
            return Start::Wait(Waiting::Slot);
        }
        m.list[i].activity = Activity::Network(image);
        m.dequeue(self.id);
        Start::Network
    }

    /// A download already under way needs the network (its local source failed, or a new
    /// cycle of it started): true when it got a slot. It goes before every waiter.
    pub(crate) fn take_slot(&self, image: ImageId) -> bool {
        let mut m = self.group.lock();
        let Some(i) = m.index(self.id) else {
            return true;
        };
        if matches!(m.list[i].activity, Activity::Network(_)) {
            return true;
        }
        m.stop_reading(i);
        if m.network_downloads() < m.max_downloads {
            m.dequeue(self.id);
            m.list[i].activity = Activity::Network(image);
            return true;
        }
        // Waits at the head: the next free slot is its.
        m.list[i].activity = Activity::Waiting(image);
        if m.queue.front() != Some(&self.id) {
            m.dequeue(self.id);
            m.queue.push_front(self.id);
        }
        false
    }

    /// The download's transfer ended (slot and reading released): verified, or not.
    pub(crate) fn transfer_ended(&self, verified: bool) {
        let mut m = self.group.lock();
        let Some(i) = m.index(self.id) else { return };
        m.stop_reading(i);
        m.dequeue(self.id);
        let image = match m.list[i].activity {
            Activity::Network(image) | Activity::Local { image, .. } | Activity::Waiting(image) => {
                Some(image)
            }
            Activity::Verified(image) => Some(image),
            Activity::Idle => None,
        };
        m.list[i].activity = match image {
            Some(image) if verified => Activity::Verified(image),
            _ => Activity::Idle,
        };
    }

    /// The firmware judged the verified image (check_firmware): a kept valid image is offered.
    pub(crate) fn judged(&self, valid: bool) {
        let mut m = self.group.lock();
        let Some(i) = m.index(self.id) else { return };
        if let Activity::Verified(image) = m.list[i].activity {
            m.list[i].activity = Activity::Idle;
            if valid && m.list[i].keeps_images {
                m.list[i].held = Some(image);
            }
        }
    }

    /// The upgrade waiting to start was dropped (replaced, or the session released).
    pub(crate) fn cancel(&self) {
        let mut m = self.group.lock();
        m.dequeue(self.id);
        if let Some(i) = m.index(self.id) {
            m.stop_reading(i);
            if !matches!(m.list[i].activity, Activity::Verified(_)) {
                m.list[i].activity = Activity::Idle;
            }
        }
    }

    /// `holder`'s kept image did not match its digest: nobody reads it again.
    pub(crate) fn image_unusable(&self, holder: u64) {
        let mut m = self.group.lock();
        if let Some(h) = m.index(holder) {
            m.list[h].held = None;
        }
    }

    /// The group and this member's number, for calls made without the engine's lock.
    pub(crate) fn detached(&self) -> (Arc<Group>, u64) {
        (self.group.clone(), self.id)
    }

    /// The gateway's settings and counts.
    pub(crate) fn gateway(&self) -> Gateway {
        Gateway(self.group.clone())
    }
}

/// The OTA sessions on one MQTT client, seen together: their download slots and counts. Get it
/// with [`Gateway::of`]; every handle to the same client's gateway is the same gateway.
#[derive(Clone)]
pub struct Gateway(pub(crate) Arc<Group>);

impl Gateway {
    pub(crate) fn new() -> Gateway {
        Gateway(Arc::new(Group::new()))
    }

    /// Sets the most simultaneous network downloads (at least 1; default 1). Downloads under
    /// way go on; the limit applies to those that start afterwards.
    pub fn set_max_downloads(&self, max: usize) -> Result<()> {
        if max == 0 {
            return Err(Error::InvalidParam("at least one download must be allowed"));
        }
        self.0.lock().max_downloads = max;
        Ok(())
    }

    /// The most simultaneous network downloads.
    pub fn max_downloads(&self) -> usize {
        self.0.lock().max_downloads
    }

    /// Sessions downloading from the network now.
    pub fn downloads_active(&self) -> usize {
        self.0.lock().network_downloads()
    }

    /// Sessions with an accepted upgrade that wait to start.
    pub fn waiting(&self) -> usize {
        self.0.lock().queue.len()
    }

    /// Sessions on the client.
    pub fn sessions(&self) -> usize {
        self.0.lock().list.len()
    }
}

/// Reads another session's kept image as a [`FirmwareSource`]: first the whole image, checked
/// against the digest (nothing is handed out before it matches), then from the requested
/// offset as the download's bytes.
pub(super) struct LocalSource {
    shelf: Option<Arc<Shelf>>,
    image: Option<ImageId>,
    check: StreamDigest,
    checked: u64,
    check_done: bool,
    offset: u64,
    opened: bool,
}

/// Why a kept image cannot be streamed (the download then falls back to the network).
pub(crate) const LOCAL_MISMATCH: &str = "the kept image does not match the announced digest";
const LOCAL_WITHDRAWN: &str = "the kept image was withdrawn";
const LOCAL_READ: &str = "the kept image could not be read";
const LOCAL_SHORT: &str = "the kept image is shorter than announced";

impl LocalSource {
    pub(super) fn new() -> LocalSource {
        LocalSource {
            shelf: None,
            image: None,
            check: StreamDigest::new(DigestKind::Md5),
            checked: 0,
            check_done: false,
            offset: 0,
            opened: false,
        }
    }

    /// The next `open` reads `image` from `shelf`.
    pub(super) fn prepare(&mut self, shelf: &Arc<Shelf>, image: ImageId) {
        if self.shelf.as_ref().is_some_and(|s| Arc::ptr_eq(s, shelf)) && self.image == Some(image) {
            return; // checked already, if it was: a reopen after an abandoned request
        }
        self.shelf = Some(shelf.clone());
        self.image = Some(image);
        self.check = StreamDigest::new(image.kind);
        self.checked = 0;
        self.check_done = false;
    }

    /// Forgets the shelf (the download no longer reads locally).
    pub(super) fn forget(&mut self) {
        self.shelf = None;
        self.image = None;
        self.opened = false;
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<usize, DownloadError> {
        let shelf = self
            .shelf
            .as_ref()
            .ok_or(DownloadError::LocalImage(LOCAL_WITHDRAWN))?;
        let mut reader = shelf.reader();
        let reader = reader
            .as_mut()
            .ok_or(DownloadError::LocalImage(LOCAL_WITHDRAWN))?;
        match reader.read(offset, buf) {
            Ok(0) => Err(DownloadError::LocalImage(LOCAL_SHORT)),
            Ok(n) if n <= buf.len() => Ok(n),
            Ok(_) | Err(_) => Err(DownloadError::LocalImage(LOCAL_READ)),
        }
    }

    /// Reads ahead through the whole image until it is checked or `until` passes.
    fn check_image(
        &mut self,
        image: ImageId,
        buf: &mut [u8],
        until: Instant,
    ) -> std::result::Result<(), DownloadError> {
        while self.checked < image.size {
            let want = buf
                .len()
                .min(usize::try_from(image.size - self.checked).unwrap_or(usize::MAX));
            let n = self.read_at(self.checked, &mut buf[..want])?;
            self.check.update(&buf[..n]);
            self.checked += n as u64;
            if Instant::now() >= until {
                break;
            }
        }
        if self.checked == image.size {
            let mut actual = [0u8; 32];
            let n = self.check.current(&mut actual);
            if actual[..n] != *image.digest() {
                return Err(DownloadError::LocalImage(LOCAL_MISMATCH));
            }
            self.check_done = true;
        }
        Ok(())
    }
}

impl FirmwareSource for LocalSource {
    fn open(&mut self, _url: &str, offset: u64) -> std::result::Result<(), DownloadError> {
        if self.shelf.is_none() {
            return Err(DownloadError::LocalImage(LOCAL_WITHDRAWN));
        }
        self.offset = offset;
        self.opened = false;
        Ok(())
    }

    fn read(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> std::result::Result<Chunk, DownloadError> {
        let image = self
            .image
            .ok_or(DownloadError::LocalImage(LOCAL_WITHDRAWN))?;
        if buf.is_empty() {
            return Ok(Chunk::Pending);
        }
        if !self.check_done {
            self.check_image(image, buf, Instant::now() + timeout)?;
            if !self.check_done {
                return Ok(Chunk::Pending);
            }
        }
        if !self.opened {
            self.opened = true;
            let rest = image.size - self.offset;
            return Ok(Chunk::Opened(OpenInfo {
                status: if self.offset == 0 { 200 } else { 206 },
                content_length: Some(rest),
                range_start: (self.offset > 0).then_some(self.offset),
                range_total: (self.offset > 0).then_some(image.size),
            }));
        }
        if self.offset >= image.size {
            return Ok(Chunk::End);
        }
        let want = buf
            .len()
            .min(usize::try_from(image.size - self.offset).unwrap_or(usize::MAX));
        let n = self.read_at(self.offset, &mut buf[..want])?;
        self.offset += n as u64;
        Ok(Chunk::Data(n))
    }

    fn close(&mut self) {
        self.opened = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;

    fn image(seed: u8) -> ImageId {
        let mut n = UpgradeNotice::new(&Limits::default());
        n.size = 1000 + u64::from(seed);
        n.digest_kind = DigestKind::Md5;
        n.digest = [seed; 32];
        ImageId::of(&n)
    }

    struct Nothing;
    impl LocalImage for Nothing {
        fn read(&mut self, _offset: u64, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    fn keeps(m: &Membership) {
        let (group, id) = m.detached();
        group.set_source(id, Some(Box::new(Nothing)));
    }

    fn is_network(s: Start) -> bool {
        matches!(s, Start::Network)
    }

    fn waits(s: Start) -> Option<Waiting> {
        match s {
            Start::Wait(w) => Some(w),
            _ => None,
        }
    }

    #[test]
    fn an_image_is_its_size_and_the_digest_bytes_only() {
        let mut a = UpgradeNotice::new(&Limits::default());
        a.size = 5;
        a.digest_kind = DigestKind::Md5;
        a.digest = [1; 32];
        let mut b = UpgradeNotice::new(&Limits::default());
        b.size = 5;
        b.digest_kind = DigestKind::Md5;
        b.digest = [1; 32];
        b.digest[20] = 9; // past the MD5: left over from an earlier SHA-256 notice
        assert_eq!(ImageId::of(&a), ImageId::of(&b));
        b.digest[3] = 9;
        assert_ne!(ImageId::of(&a), ImageId::of(&b));
    }

    #[test]
    fn one_slot_is_taken_in_arrival_order() {
        let g = Arc::new(Group::new());
        let (m1, m2, m3) = (g.join().unwrap(), g.join().unwrap(), g.join().unwrap());
        assert!(is_network(m1.request_start(image(1))));
        assert_eq!(waits(m2.request_start(image(2))), Some(Waiting::Slot));
        assert_eq!(waits(m3.request_start(image(3))), Some(Waiting::Slot));
        m1.transfer_ended(false);
        // m3 asks first, but m2 arrived first.
        assert_eq!(waits(m3.request_start(image(3))), Some(Waiting::Slot));
        assert!(is_network(m2.request_start(image(2))));
        assert_eq!(Gateway(g.clone()).downloads_active(), 1);
        Gateway(g.clone()).set_max_downloads(2).unwrap();
        assert!(is_network(m3.request_start(image(3))));
        drop(m2); // leaving frees its slot
        assert_eq!(Gateway(g).downloads_active(), 1);
    }

    #[test]
    fn the_same_image_waits_for_a_keeper_and_is_then_read_from_it() {
        let g = Arc::new(Group::new());
        let (m1, m2) = (g.join().unwrap(), g.join().unwrap());
        keeps(&m1);
        assert!(is_network(m1.request_start(image(1))));
        assert_eq!(waits(m2.request_start(image(1))), Some(Waiting::SameImage));
        m1.transfer_ended(true);
        // Verified, not yet judged by the firmware: still in flight.
        assert_eq!(waits(m2.request_start(image(1))), Some(Waiting::SameImage));
        m1.judged(true);
        assert!(matches!(m2.request_start(image(1)), Start::Local { .. }));
        // The keeper's next upgrade waits for its reader.
        assert_eq!(waits(m1.request_start(image(5))), Some(Waiting::Readers));
        m2.transfer_ended(true);
        assert!(is_network(m1.request_start(image(5))));
    }

    #[test]
    fn without_a_keeper_the_same_image_is_downloaded_again() {
        let g = Arc::new(Group::new());
        let (m1, m2) = (g.join().unwrap(), g.join().unwrap());
        assert!(is_network(m1.request_start(image(1))));
        assert_eq!(waits(m2.request_start(image(1))), Some(Waiting::Slot));
        m1.transfer_ended(true);
        m1.judged(true);
        assert!(is_network(m2.request_start(image(1))));
    }

    #[test]
    fn a_leaving_keeper_empties_its_shelf() {
        let g = Arc::new(Group::new());
        let (m1, m2) = (g.join().unwrap(), g.join().unwrap());
        keeps(&m1);
        assert!(is_network(m1.request_start(image(1))));
        m1.transfer_ended(true);
        m1.judged(true);
        let Start::Local { shelf, .. } = m2.request_start(image(1)) else {
            panic!("reads the kept image");
        };
        assert!(shelf.reader().is_some());
        drop(m1);
        assert!(
            shelf.reader().is_none(),
            "nothing reads a departed keeper's storage"
        );
    }

    #[test]
    fn the_group_has_a_limit() {
        let g = Arc::new(Group::new());
        let members: Vec<Membership> = (0..MAX_SESSIONS_PER_CLIENT)
            .map(|_| g.join().unwrap())
            .collect();
        assert!(matches!(g.join(), Err(Error::TooManySessions)));
        drop(members);
        assert!(g.join().is_ok());
    }
}
