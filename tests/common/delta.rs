//! Delta upgrades for tests: the committed detools fixtures (tests/fixtures/delta/, made by the
//! real detools; make.py there), a device whose session has a delta source, the iotkit
//! sample's firmware loop that downloads through it, and the running image as a C firmware's
//! reader gives it to IOT_OTA_SetDeltaSource.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::delta::OldImage;
use ota::ffi::delta::IOT_OTA_SetDeltaSource;
use ota::ota::DeltaOptions;
use ota::source::{HttpConfig, HttpSource};
use ota::{Error, OtaConfig, OtaSession, Protocol};
use ota_cloud::FirmwareServer;

use super::firmware::aliyun_notice;
use super::recorder::{Recorder, Sent};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/delta");

/// A file of tests/fixtures/delta: `{pair}.old`, `{pair}.new`, `{pair}.{compression}.patch`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The slot of a test's device, unless the test says otherwise.
pub const SLOT: u64 = 64 * 1024;

/// The running image a device patches: read through `image`, under `options`.
pub struct DeltaSource {
    pub image: Box<dyn OldImage + Send>,
    pub options: DeltaOptions,
}

impl DeltaSource {
    /// `old` in memory, in a slot of [`SLOT`] bytes.
    pub fn in_memory(old: &[u8]) -> DeltaSource {
        DeltaSource {
            image: Box::new(leaked(old)),
            options: DeltaOptions::for_slot(SLOT),
        }
    }
}

/// A copy of `bytes` that lives as long as the test process, as an [`OldImage`] of a session
/// must.
pub fn leaked(bytes: &[u8]) -> &'static [u8] {
    Box::leak(bytes.to_vec().into_boxed_slice())
}

/// A device of product "pk", name "dn", on `protocol`, downloading over plain HTTP, its
/// publications recorded: `prepare` runs on its session first (a breakpoint store, say), then
/// `source` is set as its delta source when there is one, then it reports version 1.0.0.
pub fn device(
    protocol: Protocol,
    source: Option<DeltaSource>,
    prepare: impl FnOnce(&OtaSession),
) -> (OtaSession, Sent) {
    let sent: Sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(protocol),
        Box::new(Recorder(sent.clone())),
        Box::new(HttpSource::new(HttpConfig::default()).unwrap()),
    )
    .unwrap();
    prepare(&s);
    if let Some(DeltaSource { image, options }) = source {
        s.set_delta_source(image, options).unwrap();
    }
    s.report_version("1.0.0").unwrap();
    (s, sent)
}

/// Hands `notice` to `s` as if it came on its upgrade topic; the download must start.
pub fn upgrade(s: &OtaSession, notice: &str) {
    s.handle_message(s.downstream_topic(), notice.as_bytes())
        .unwrap();
    assert!(s.is_fetching(), "the upgrade starts a download");
}

/// A [`device`] on Aliyun with `source`, told to upgrade to version 2.0.0, `served` as
/// `server` serves it (announced with its own size and MD5).
pub fn aliyun_device(
    server: &FirmwareServer,
    served: &[u8],
    source: Option<DeltaSource>,
) -> (OtaSession, Sent) {
    let (s, sent) = device(Protocol::Aliyun, source, |_| {});
    upgrade(&s, &aliyun_notice(served, &server.url(), "2.0.0"));
    (s, sent)
}

/// How long one run of [`SampleFirmware`] may take before it fails as stuck.
const STUCK: Duration = Duration::from_secs(30);

/// The firmware of the iotkit OTA sample, over the Rust API: it calls FetchYield into its own
/// buffer, appends what it gets to flash and never rewinds, reports "fetch failed" (-2) on
/// every return ≤ 0, and leaves only when IsFetchFinish says the download ended. Every call
/// that hands out bytes is checked: FETCHED_SIZE is the count of bytes stored, and no more
/// than FILE_SIZE are handed out.
pub struct SampleFirmware {
    buf: Vec<u8>,
    /// What the firmware wrote to flash, from the image's first byte.
    pub stored: Vec<u8>,
    /// Every error FetchYield returned, in order.
    pub errors: Vec<Error>,
    /// How many of the bytes stored the last call handed out: what a power cut takes.
    last: usize,
}

impl SampleFirmware {
    /// The firmware with a `buf_len`-byte buffer, nothing stored yet.
    pub fn new(buf_len: usize) -> SampleFirmware {
        SampleFirmware {
            buf: vec![0; buf_len],
            stored: Vec::new(),
            errors: Vec::new(),
            last: 0,
        }
    }

    /// One turn of the loop.
    pub fn call(&mut self, s: &OtaSession) {
        self.last = 0;
        match s.fetch_yield(&mut self.buf, Duration::from_secs(1)) {
            Ok(n) if n > 0 => {
                self.stored.extend_from_slice(&self.buf[..n]);
                self.last = n;
                assert_eq!(
                    s.fetched_size(),
                    self.stored.len() as u64,
                    "FETCHED_SIZE counts the bytes stored"
                );
                assert!(
                    self.stored.len() as u64 <= s.file_size(),
                    "{} bytes handed out of a {}-byte image",
                    self.stored.len(),
                    s.file_size()
                );
            }
            r => {
                if let Err(e) = r {
                    self.errors.push(e);
                }
                // As the sample does; the SDK keeps it to one failure report per upgrade.
                let _ = s.report_progress(-2, None);
            }
        }
    }

    /// The loop to the download's end: CHECK_FIRMWARE's verdict.
    pub fn run(&mut self, s: &OtaSession) -> bool {
        self.run_for(s, usize::MAX).expect("the download ends")
    }

    /// The loop for at most `calls` calls: the verdict when the download ended, `None` when
    /// the calls ran out first.
    pub fn run_for(&mut self, s: &OtaSession, calls: usize) -> Option<bool> {
        let deadline = Instant::now() + STUCK;
        let mut made = 0;
        while !s.is_fetch_finished() {
            if made == calls {
                return None;
            }
            assert!(Instant::now() < deadline, "stuck at {}", self.stored.len());
            self.call(s);
            made += 1;
        }
        Some(s.check_firmware().unwrap())
    }

    /// A power cut (the caller drops the session): the bytes the last call handed out never
    /// reached flash.
    pub fn kill(&mut self) {
        self.stored.truncate(self.stored.len() - self.last);
        self.last = 0;
    }

    /// After a restart, with `s` the new session: the firmware writes from the offset
    /// FETCHED_SIZE gives, which must be within what it stored. Returns that offset.
    pub fn resume(&mut self, s: &OtaSession) -> usize {
        let at = s.fetched_size() as usize;
        assert!(
            at <= self.stored.len(),
            "resumes at byte {at}, past the {} stored",
            self.stored.len()
        );
        self.stored.truncate(at);
        at
    }
}

/// What a whole run of the sample's loop ended with.
pub struct Sampled {
    pub stored: Vec<u8>,
    pub errors: Vec<Error>,
    /// CHECK_FIRMWARE at the end.
    pub valid: bool,
}

/// The sample's loop, from nothing stored to the download's end, with a `buf_len`-byte buffer.
pub fn sample(s: &OtaSession, buf_len: usize) -> Sampled {
    let mut firmware = SampleFirmware::new(buf_len);
    let valid = firmware.run(s);
    Sampled {
        stored: firmware.stored,
        errors: firmware.errors,
        valid,
    }
}

/// How a test's reader of the running image answers, through the C ABI.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Honest,
    /// The `n`-th read (from 1) returns -1.
    FailsAt(usize),
    /// The `n`-th read copies its bytes and returns `len - 1`.
    ShortAt(usize),
    /// The `n`-th read copies its bytes and returns `len + 1`.
    LongAt(usize),
}

/// The running image as firmware would read it from flash; `ctx` of [`read_old`].
pub struct Flash {
    pub image: Vec<u8>,
    /// The `old_size` given to IOT_OTA_SetDeltaSource.
    pub declared: u32,
    pub answer: Answer,
    pub reads: AtomicUsize,
    /// Reads outside `declared` (the SDK promises none).
    pub outside: AtomicUsize,
    /// Reads made while IOT_OTA_SetDeltaSource computed the image's SHA-256 (one pass over
    /// it): `answer` counts the reads after them, those of the patch.
    pub at_set: AtomicUsize,
}

impl Flash {
    /// The old image of the fixture pair `pair`, declared whole, answering as `answer` says;
    /// it lives as long as the test process, as the handle's `ctx` must.
    pub fn of(pair: &str, answer: Answer) -> &'static Flash {
        let image = fixture(&format!("{pair}.old"));
        Box::leak(Box::new(Flash {
            declared: image.len() as u32,
            image,
            answer,
            reads: AtomicUsize::new(0),
            outside: AtomicUsize::new(0),
            at_set: AtomicUsize::new(0),
        }))
    }
}

/// The firmware's `IOT_OTA_OldImageRead`: `ctx` is a [`Flash`].
///
/// # Safety
/// `ctx` is a `Flash` that outlives the handle; `buf` is NULL or holds `len` bytes.
pub unsafe extern "C" fn read_old(ctx: *mut c_void, offset: u32, buf: *mut u8, len: u32) -> c_int {
    let flash = &*(ctx as *const Flash);
    let n = (flash.reads.fetch_add(1, SeqCst) + 1).wrapping_sub(flash.at_set.load(SeqCst));
    let (at, len) = (offset as usize, len as usize);
    if buf.is_null() || at + len > flash.declared as usize || at + len > flash.image.len() {
        flash.outside.fetch_add(1, SeqCst);
        return -1;
    }
    match flash.answer {
        Answer::FailsAt(k) if k == n => return -1,
        _ => {}
    }
    std::ptr::copy_nonoverlapping(flash.image[at..].as_ptr(), buf, len);
    match flash.answer {
        Answer::ShortAt(k) if k == n => len as c_int - 1,
        Answer::LongAt(k) if k == n => len as c_int + 1,
        _ => len as c_int,
    }
}

/// IOT_OTA_SetDeltaSource(`ota`, [`read_old`], `flash`, its declared size): the reads it
/// makes over the whole image (to know its SHA-256) are honest, [`Flash::answer`] counts from
/// the first read after them.
pub fn set_delta_source(ota: *mut c_void, flash: &Flash) -> c_int {
    let ctx = flash as *const Flash as *mut c_void;
    flash.at_set.store(usize::MAX / 2, SeqCst);
    let rc = unsafe { IOT_OTA_SetDeltaSource(ota, Some(read_old), ctx, flash.declared) };
    flash.at_set.store(flash.reads.load(SeqCst), SeqCst);
    rc
}
