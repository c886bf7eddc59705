//! The caller's side of a download (the thread inside `fetch_yield`): the firmware source and
//! the loop of `fetch_yield`, which takes the engine lock only for bookkeeping between its waits.
//!
//! The engine decides each step ([`Step`]) under its lock (an open, which never waits, runs
//! there too); the wait itself (a sleep before a retry, a read of the source) runs with only
//! this side's lock held, which no MQTT callback ever takes. A message that arrives meanwhile
//! (a supersede, a fresh URL) changes the engine at once; the read in flight is then recognised
//! as belonging to an abandoned request and dropped.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::breakpoint::{flush, StoreWriter};
use super::delta::{DeltaSide, Mode};
use super::gateway::{ImageId, LocalSource, Shelf};
use super::Engine;
use crate::error::{Error, Result};
use crate::source::{Chunk, DownloadError, FirmwareSource};

/// The firmware sources and what the caller of `fetch_yield` knows of them.
pub(super) struct SourceSide {
    /// The network (HTTP(S)).
    source: Box<dyn FirmwareSource>,
    /// Another session's kept image (a gateway's sub-devices sharing one download).
    local: LocalSource,
    /// Blocks over the MQTT connection (`dProtocol` `mqtt`), when enabled.
    mqtt: Option<Box<dyn FirmwareSource>>,
    /// What an MQTT download reads once its source was removed (`detach`).
    detached: Detached,
    /// Which of them the open request reads.
    reads: Reads,
    /// The old image, the patch applier and the patch buffer, when a delta source is set.
    pub(super) delta: Option<DeltaSide>,
    /// The engine's request the source was opened for (None: closed).
    pub(super) open_request: Option<u64>,
}

impl SourceSide {
    pub(super) fn new(source: Box<dyn FirmwareSource>) -> SourceSide {
        SourceSide {
            source,
            local: LocalSource::new(),
            mqtt: None,
            detached: Detached,
            reads: Reads::Http,
            delta: None,
            open_request: None,
        }
    }

    /// The source the next open and reads use.
    pub(super) fn active(&mut self) -> &mut dyn FirmwareSource {
        active_of(
            self.reads,
            &mut self.source,
            &mut self.local,
            &mut self.mqtt,
            &mut self.detached,
        )
    }

    /// Reads at most `want` bytes into the free end of the patch buffer; None without a delta
    /// source.
    fn read_patch(
        &mut self,
        want: usize,
        wait: Duration,
    ) -> Option<(Result<Chunk, DownloadError>, &mut DeltaSide)> {
        let SourceSide {
            source,
            local,
            mqtt,
            detached,
            reads,
            delta,
            ..
        } = self;
        let delta = delta.as_mut()?;
        let free = delta.free();
        let want = want.min(free.len());
        let r = active_of(*reads, source, local, mqtt, detached).read(&mut free[..want], wait);
        Some((r, delta))
    }

    /// Installs the MQTT block source (dropping one installed before).
    pub(super) fn set_mqtt(&mut self, source: Box<dyn FirmwareSource>) {
        self.take_mqtt();
        self.mqtt = Some(source);
    }

    /// Removes the MQTT block source, closing it first if it is read.
    pub(super) fn take_mqtt(&mut self) -> Option<Box<dyn FirmwareSource>> {
        if self.reads == Reads::Mqtt {
            // An MQTT download under way now reads `Detached`, which ends it.
            self.close();
        }
        self.mqtt.take()
    }

    /// The next open reads `image` from `shelf`.
    pub(super) fn use_local(&mut self, shelf: &Arc<Shelf>, image: ImageId) {
        self.local.prepare(shelf, image);
        self.reads = Reads::Local;
    }

    /// The next open reads the network: HTTP(S), or blocks over MQTT.
    pub(super) fn use_network(&mut self, over_mqtt: bool) {
        self.local.forget();
        self.reads = match over_mqtt {
            true => Reads::Mqtt,
            false => Reads::Http,
        };
    }

    /// Closes the open request's source.
    pub(super) fn close(&mut self) {
        self.active().close();
        self.open_request = None;
    }
}

/// The source `reads` names.
fn active_of<'a>(
    reads: Reads,
    source: &'a mut Box<dyn FirmwareSource>,
    local: &'a mut LocalSource,
    mqtt: &'a mut Option<Box<dyn FirmwareSource>>,
    detached: &'a mut Detached,
) -> &'a mut dyn FirmwareSource {
    match (reads, mqtt) {
        (Reads::Local, _) => local,
        (Reads::Mqtt, Some(mqtt)) => mqtt.as_mut(),
        // The engine refuses MQTT downloads without a source; one removed during a download
        // ends it.
        (Reads::Mqtt, None) => detached,
        (Reads::Http, _) => source.as_mut(),
    }
}

/// The source of an MQTT download whose block source was removed (`OtaSession::detach`):
/// the download ends with [`DownloadError::Abandoned`] instead of its URL (`mqtt-download:…`)
/// going to the HTTP source.
struct Detached;

impl FirmwareSource for Detached {
    fn open(&mut self, _url: &str, _offset: u64) -> std::result::Result<(), DownloadError> {
        Err(DownloadError::Abandoned)
    }

    fn read(
        &mut self,
        _buf: &mut [u8],
        _timeout: Duration,
    ) -> std::result::Result<Chunk, DownloadError> {
        Err(DownloadError::Abandoned)
    }

    fn close(&mut self) {}
}

/// Which source a request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// HTTP(S).
    Http,
    /// A kept image on this device.
    Local,
    /// Blocks over MQTT.
    Mqtt,
}

/// What the caller of `fetch_yield` does next.
pub(super) enum Step {
    /// Wait until then (a retry's backoff, a fresh URL), then ask again.
    Sleep(Instant),
    /// Read at most `want` bytes, waiting at most `wait` (into the patch buffer when a delta
    /// source is set, else into the caller's buffer).
    Read {
        request: u64,
        want: usize,
        wait: Duration,
        stall_at: Instant,
    },
    /// Hand out at most `want` bytes of the patch buffer into the caller's, applied when the
    /// download is a patch (`mode`).
    Hand {
        request: u64,
        want: usize,
        mode: Mode,
    },
    /// The call returns this.
    Done(Result<usize>),
}

/// One `fetch_yield` call.
pub(super) struct FetchCall {
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) buf_len: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one `fetch_yield`: the engine lock is held only between waits.
pub(super) fn fetch_yield(
    engine: &Mutex<Engine>,
    side: &Mutex<SourceSide>,
    records: &Mutex<StoreWriter>,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<usize> {
    let mut side = lock(side);
    let call = FetchCall {
        deadline: Instant::now() + timeout,
        timeout,
        buf_len: buf.len(),
    };
    let r = run(engine, &mut side, records, buf, &call);
    let mut e = lock(engine);
    let r = e.with_owed(r);
    // The source of an ended or abandoned request is closed before the call returns.
    if side.open_request.is_some_and(|s| s != e.request) {
        side.close();
    }
    e.fetch_returned(&r);
    r
}

fn run(
    engine: &Mutex<Engine>,
    side: &mut SourceSide,
    records: &Mutex<StoreWriter>,
    buf: &mut [u8],
    call: &FetchCall,
) -> Result<usize> {
    let begun = lock(engine).begin_fetch_call(buf.len(), side.delta.as_mut());
    // The record saved by begin_fetch_call (bytes of earlier calls only) is written before any
    // new byte is read, and without the engine's lock.
    flush(engine, records);
    begun?;
    loop {
        let step = lock(engine).next_step(side, call);
        match step {
            Step::Done(r) => return r,
            Step::Sleep(until) => {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
            Step::Read {
                request,
                want,
                wait,
                stall_at,
            } => {
                if let Some((r, delta)) = side.read_patch(want, wait) {
                    let n = match r {
                        Ok(Chunk::Data(n)) => n,
                        _ => 0,
                    };
                    let bytes = delta.just_read(n);
                    let mut e = lock(engine);
                    let (done, taken) = match e.took_patch(request, &r, bytes) {
                        Some(taken) => (None, taken),
                        None => (e.took(request, r, bytes, stall_at, call), 0),
                    };
                    drop(e);
                    delta.received(taken);
                    if let Some(done) = done {
                        return done;
                    }
                    continue;
                }
                let r = side.active().read(&mut buf[..want], wait);
                if let Some(done) = lock(engine).took(request, r, buf, stall_at, call) {
                    return done;
                }
            }
            Step::Hand {
                request,
                want,
                mode,
            } => {
                let Some(delta) = side.delta.as_mut() else {
                    return Err(Error::InvalidState("no delta source"));
                };
                // No lock: the old image is read through the firmware's callback.
                let r = delta.hand_out(mode, &mut buf[..want]);
                let pending = delta.pending();
                if let Some(done) = lock(engine).handed(request, r, buf, pending) {
                    return done;
                }
            }
        }
    }
}

/// Closes the source of an abandoned request when no `fetch_yield` is running (one that runs
/// closes it itself), so a supersede or a failure report leaves no connection open.
pub(super) fn close_abandoned(engine: &Mutex<Engine>, side: &Mutex<SourceSide>) {
    let Ok(mut side) = side.try_lock() else {
        return;
    };
    let request = lock(engine).request;
    if side.open_request.is_some_and(|s| s != request) {
        side.close();
    }
}
