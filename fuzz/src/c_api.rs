//! Sequences of `IOT_OTA_*` calls decided by the fuzz input, on a handle whose session runs on
//! in-memory transports (`ota::ffi::fuzzing`): an uplink that checks every message the SDK
//! publishes, and a firmware source that serves a fixed image either honestly or as the input
//! scripts it (errors, stalls, cut bodies, servers that ignore `Range`, odd headers).
//!
//! Arguments are arbitrary where C allows: NULL or foreign handles, NULL or invalid strings,
//! any integer, every Ioctl type, buffers of any size with any length up to their real size
//! (a length beyond the buffer is the caller's undefined behaviour, so it is never passed).
//! Upgrade messages arrive in between, raw or built from a template, and the breakpoint store
//! (C callbacks over "flash" the input can corrupt, or a file) survives simulated restarts.
//! Some runs serve a detools patch (committed fixtures) instead of the plain image, and
//! IOT_OTA_SetDeltaSource gives the handle a reader of the matching old image that may fail,
//! read short or claim too much: FetchYield must then hand out the new image's bytes or the
//! patch's as they came, never anything else.
//!
//! After every call: the return code is a documented one, nothing was written past the length
//! given (nor anything at all on error), answers are well-formed and agree with the session,
//! an error is what IOT_OTA_GetLastError reports, and the session's state is consistent.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use super::input::Input;
use ota::digest::{to_hex, StreamDigest};
use ota::error::{Error, MqttError};
use ota::ffi::delta::IOT_OTA_SetDeltaSource;
use ota::ffi::fuzzing;
use ota::ffi::gateway::{IOT_OTAG_LOCAL_IMAGE, IOT_OTAG_WAITING, OTA_WAITING_NONE};
use ota::ffi::image::*;
use ota::ffi::ioctl::IOT_OTA_Ioctl;
use ota::ffi::ota::*;
use ota::ffi::package::{
    IOT_OTAC_MAX_FILES, IOT_OTAG_FILE_COUNT, IOT_OTAG_FILE_INDEX, IOT_OTAG_FILE_NAME,
};
use ota::ffi::resume::ota_breakpoint_store_t;
use ota::ota::{OtaConfig, Uplink};
use ota::protocol::json::Object;
use ota::protocol::{self, DigestKind, Limits, Protocol, Topics, UpgradeNotice};
use ota::resume::{Breakpoint, RECORD_LEN};
use ota::retry::RetryPolicy;
use ota::source::{Chunk, DownloadError, FirmwareSource, MemorySource, OpenInfo};
use ota::{OtaSession, OtaState};

const PK: &str = "pkFuzz";
const DN: &str = "dnFuzz";
/// Calls per input, so one input stays fast.
const MAX_CALLS: usize = 96;
/// Bytes after every buffer handed to the library; they must stay untouched.
const GUARD: usize = 32;
const FILL: u8 = 0xAA;
/// Bytes of the plain image.
const PLAIN_LEN: usize = 4096;
const OTA_MAGIC: u32 = 0x4f54_4148;
const MQTT_MAGIC: u32 = 0x4d51_5454;

const NONE: c_int = IOT_OTA_Err_t::IOT_OTAE_NONE as c_int;
const INVALID_PARAM: c_int = IOT_OTA_Err_t::IOT_OTAE_INVALID_PARAM as c_int;
const STR_TOO_LONG: c_int = IOT_OTA_Err_t::IOT_OTAE_STR_TOO_LONG as c_int;
/// The most negative IOT_OTA_Err_t of v2.3.
const LOWEST: c_int = IOT_OTA_Err_t::IOT_OTAE_OSC_FAILED as c_int;
/// The extensions' codes: the image checks' first, IOT_OTAE_DELTA_OLD_MISMATCH the last.
const EXTENSIONS: std::ops::RangeInclusive<c_int> = IOT_OTA_Err_t::IOT_OTAE_DELTA_OLD_MISMATCH
    as c_int
    ..=IOT_OTA_Err_t::IOT_OTAE_IMAGE_NOT_MCUBOOT as c_int;

/// Whether `rc` is 0 or one of the IOT_OTA_Err_t codes.
fn is_code(rc: c_int) -> bool {
    (LOWEST..=NONE).contains(&rc) || EXTENSIONS.contains(&rc)
}

/// The plain firmware image.
fn plain() -> &'static [u8] {
    static IMAGE: OnceLock<&'static [u8]> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let v: Vec<u8> = (0..PLAIN_LEN as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        Box::leak(v.into_boxed_slice())
    })
}

/// A detools sequential patch (tests/fixtures/delta, made by the real detools) with the old
/// image it applies to and the new image it makes.
struct Patch {
    patch: &'static [u8],
    old: &'static [u8],
    new: &'static [u8],
}

const PATCHES: [Patch; 2] = [
    Patch {
        patch: include_bytes!("../../tests/fixtures/delta/small-change.heatshrink.patch"),
        old: include_bytes!("../../tests/fixtures/delta/small-change.old"),
        new: include_bytes!("../../tests/fixtures/delta/small-change.new"),
    },
    Patch {
        patch: include_bytes!("../../tests/fixtures/delta/inserted-block.none.patch"),
        old: include_bytes!("../../tests/fixtures/delta/inserted-block.old"),
        new: include_bytes!("../../tests/fixtures/delta/inserted-block.new"),
    },
];

thread_local! {
    /// What this run serves: None for the plain image, else an index into [`PATCHES`]
    /// (chosen when the run starts, fixed for the run).
    static SERVED: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The patch this run serves, if it serves one.
fn served_patch() -> Option<&'static Patch> {
    SERVED.with(|s| s.get()).map(|i| &PATCHES[i])
}

/// The firmware every source of this run serves: the plain image or a patch.
fn image() -> &'static [u8] {
    served_patch().map_or(plain(), |p| p.patch)
}

/// Bytes of [`image`].
fn image_len() -> usize {
    image().len()
}

/// Runs the call sequence that `data` describes.
pub fn run(data: &[u8]) {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        // Logging on (so its formatting runs too) only when asked: it costs a write per line.
        let level = match std::env::var_os("OTA_FUZZ_LOG") {
            Some(_) => ota::log::Level::Debug,
            None => ota::log::Level::None,
        };
        ota::log::set_level(level);
    });
    let mut inp = Input::new(data);
    let mut world = World::new(&mut inp);
    let mut calls = 0;
    while !inp.is_empty() && calls < MAX_CALLS {
        world.step(&mut inp);
        world.check_session();
        calls += 1;
    }
}

/// What the uplink checks a message against, and what it does with it.
struct UplinkState {
    topics: [String; 3],
    limit: usize,
    /// 0: accept, 1: broker unreachable (kept for later), 2: queue full (error).
    mode: u8,
}

struct CheckingUplink(Arc<Mutex<UplinkState>>);

impl Uplink for CheckingUplink {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            st.topics.iter().any(|t| t == topic),
            "published on {topic:?}"
        );
        assert!(
            payload.len() <= st.limit,
            "a {}-byte message",
            payload.len()
        );
        if let Err(e) = Object::parse(payload) {
            panic!(
                "published invalid JSON ({e}): {}",
                String::from_utf8_lossy(payload)
            );
        }
        match st.mode % 3 {
            0 => Ok(()),
            1 => Err(Error::Mqtt(MqttError::NotConnected)),
            _ => Err(Error::Mqtt(MqttError::QueueFull)),
        }
    }
}

/// A server the input scripts: every answer is the next script byte (and the ones after it for
/// details); at the end of the script every request fails to connect, so a download always ends.
struct ScriptedSource {
    script: Vec<u8>,
    at: usize,
    pos: Option<u64>,
    opened: bool,
}

impl ScriptedSource {
    fn next(&mut self) -> Option<u8> {
        let b = self.script.get(self.at).copied();
        self.at += 1;
        b
    }

    fn error(&mut self) -> DownloadError {
        const STATUS: [u16; 8] = [403, 404, 416, 500, 503, 429, 408, 301];
        let b = self.next().unwrap_or(0);
        match b % 12 {
            0..=3 => DownloadError::Status(STATUS[usize::from(b / 12) % 8]),
            4 => DownloadError::Connect,
            5 => DownloadError::Resolve,
            6 => DownloadError::Timeout,
            7 => DownloadError::Tls,
            8 => DownloadError::Io(std::io::ErrorKind::ConnectionReset),
            9 => DownloadError::BadResponse("scripted"),
            10 => DownloadError::Redirects,
            _ => DownloadError::Truncated,
        }
    }

    fn data(&mut self, buf: &mut [u8], pos: u64, n: usize) -> Result<Chunk, DownloadError> {
        let start = pos as usize;
        buf[..n].copy_from_slice(&image()[start..start + n]);
        self.pos = Some(pos + n as u64);
        Ok(Chunk::Data(n))
    }

    fn header(&mut self, pos: u64) -> Option<u64> {
        match self.next().unwrap_or(0) % 5 {
            0 => None,
            1 => Some(pos),
            2 => Some(image_len() as u64),
            3 => Some(image_len() as u64 - pos.min(image_len() as u64)),
            _ => Some(u64::from(self.next().unwrap_or(0)) * 61),
        }
    }
}

impl FirmwareSource for ScriptedSource {
    fn open(&mut self, _url: &str, offset: u64) -> Result<(), DownloadError> {
        match self.next() {
            None => return Err(DownloadError::Connect),
            Some(b) if b % 16 == 0 => return Err(self.error()),
            Some(_) => {}
        }
        self.pos = Some(offset);
        self.opened = false;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], _timeout: Duration) -> Result<Chunk, DownloadError> {
        let pos = self.pos.ok_or(DownloadError::BadResponse("not open"))?;
        let b = self.next().ok_or(DownloadError::Connect)?;
        let total = image_len() as u64;
        if !self.opened {
            self.opened = true;
            let info = match b % 8 {
                0 | 1 => return Err(self.error()),
                _ if pos > total => return Err(DownloadError::Status(416)),
                2 => {
                    // A server that ignores Range: the whole file, from byte 0.
                    self.pos = Some(0);
                    OpenInfo {
                        status: 200,
                        content_length: Some(total),
                        range_start: None,
                        range_total: None,
                    }
                }
                3 => {
                    let partial = self.next().unwrap_or(0) & 1 == 1;
                    if !partial {
                        self.pos = Some(0);
                    }
                    OpenInfo {
                        status: if partial { 206 } else { 200 },
                        content_length: self.header(pos),
                        range_start: self.header(pos),
                        range_total: self.header(pos),
                    }
                }
                _ => OpenInfo {
                    status: if pos > 0 { 206 } else { 200 },
                    content_length: Some(total - pos),
                    range_start: (pos > 0).then_some(pos),
                    range_total: (pos > 0).then_some(total),
                },
            };
            return Ok(Chunk::Opened(info));
        }
        let left = usize::try_from(total.saturating_sub(pos)).unwrap_or(0);
        match b % 8 {
            0 => Ok(Chunk::Pending),
            1 => Ok(Chunk::End),
            2 => Err(self.error()),
            _ if left == 0 || buf.is_empty() => Ok(Chunk::End),
            3 => self.data(buf, pos, buf.len().min(left)),
            _ => {
                let n = 1 + usize::from(self.next().unwrap_or(0)) % buf.len().min(left);
                self.data(buf, pos, n)
            }
        }
    }

    fn close(&mut self) {
        self.pos = None;
    }
}

/// "Flash" behind the C breakpoint-store callbacks; `ctx` points to it.
struct Flash {
    data: Vec<u8>,
    /// What load returns instead of the byte count (a lying or failing driver).
    load_rc: Option<c_int>,
    save_rc: c_int,
    erase_rc: c_int,
}

unsafe extern "C" fn flash_load(ctx: *mut c_void, buf: *mut u8, buf_len: u32) -> c_int {
    let f = &mut *(ctx as *mut Flash);
    assert!(!buf.is_null(), "load into NULL");
    let n = f.data.len().min(buf_len as usize);
    std::ptr::copy_nonoverlapping(f.data.as_ptr(), buf, n);
    f.load_rc.unwrap_or(n as c_int)
}

unsafe extern "C" fn flash_save(ctx: *mut c_void, buf: *const u8, len: u32) -> c_int {
    let f = &mut *(ctx as *mut Flash);
    assert!(!buf.is_null(), "save from NULL");
    let bytes = std::slice::from_raw_parts(buf, len as usize);
    if let Err(e) = Breakpoint::decode(bytes) {
        panic!("the SDK saved a record it cannot read back: {e}");
    }
    if f.save_rc >= 0 {
        f.data = bytes.to_vec();
    }
    f.save_rc
}

unsafe extern "C" fn flash_erase(ctx: *mut c_void) -> c_int {
    let f = &mut *(ctx as *mut Flash);
    if f.erase_rc >= 0 {
        f.data.clear();
    }
    f.erase_rc
}

/// The firmware's reader of its running image behind IOT_OTA_SetDeltaSource; `ctx` points to
/// it. It misbehaves as the input says.
struct OldReader {
    /// The running image: the served patch's old image (the plain image when none is served).
    image: &'static [u8],
    /// The `old_size` of the last IOT_OTA_SetDeltaSource that succeeded.
    declared: u32,
    /// 0..=3: honest; 4: fails every read; 5: fails the `at`-th read; 6: returns one byte
    /// short on it; 7: claims one byte more than asked on it.
    mode: u8,
    at: u32,
    reads: u32,
}

unsafe extern "C" fn old_read(ctx: *mut c_void, offset: u32, buf: *mut u8, len: u32) -> c_int {
    let r = &mut *(ctx as *mut OldReader);
    assert!(!buf.is_null(), "an old-image read into NULL");
    assert!(
        u64::from(offset) + u64::from(len) <= u64::from(r.declared),
        "an old-image read at {offset} of {len} bytes past old_size {}",
        r.declared
    );
    r.reads += 1;
    let (at, n) = (offset as usize, len as usize);
    // old_size may be declared larger than the image the reader holds: it fails there.
    let Some(src) = r.image.get(at..at + n) else {
        return -1;
    };
    let nth = r.reads == r.at;
    match r.mode {
        4 => return -1,
        5 if nth => return -2,
        _ => {}
    }
    std::ptr::copy_nonoverlapping(src.as_ptr(), buf, n);
    match r.mode {
        6 if nth => len as c_int - 1,
        7 if nth => len as c_int + 1,
        _ => len as c_int,
    }
}

/// A directory of this process for IOT_OTA_SetBreakpointFile (tmpfs when there is one: the
/// file store fsyncs). It exists only while an input runs.
fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::path::Path::new("/dev/shm") {
            p if p.is_dir() => p.to_path_buf(),
            _ => std::env::temp_dir(),
        };
        base.join(format!("ota-fuzz-{}", std::process::id()))
    })
}

/// The breakpoint file names the input may choose.
const FILE_NAMES: [&[u8]; 2] = [b"bp", b"b\xff"];

/// Removes what a run left in the scratch directory, so no input depends on the one before.
fn clear_scratch_dir() {
    use std::os::unix::ffi::OsStrExt;
    for name in FILE_NAMES {
        for suffix in [&b""[..], b".tmp"] {
            let file = [name, suffix].concat();
            let _ = std::fs::remove_file(scratch_dir().join(std::ffi::OsStr::from_bytes(&file)));
        }
    }
    let _ = std::fs::remove_dir(scratch_dir());
}

struct World {
    protocol: Protocol,
    /// The live handle, or NULL after a Deinit that was not followed by a restart.
    handle: *mut c_void,
    uplink: Arc<Mutex<UplinkState>>,
    /// Owned here (from `Box::into_raw`) so the callbacks' `ctx` aliases no Rust reference.
    flash: *mut Flash,
    /// Likewise, the delta source's reader.
    old_reader: *mut OldReader,
    /// IOT_OTA_SetDeltaSource succeeded on the live handle.
    delta_set: bool,
    /// Memory readable as a handle that is not one (never the OTA or MQTT magic).
    foreign: Box<[u32; 4]>,
    /// Script of the firmware source, `None` for the honest in-memory server.
    script: Option<Vec<u8>>,
    /// The last upgrade message built from the template, to craft records for it.
    last_notice: Vec<u8>,
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            assert_eq!(unsafe { IOT_OTA_Deinit(self.handle) }, NONE);
        }
        drop(unsafe { Box::from_raw(self.flash) });
        drop(unsafe { Box::from_raw(self.old_reader) });
        clear_scratch_dir();
    }
}

fn protocol_of(b: u8) -> Protocol {
    Protocol::from_id(b % 4).unwrap_or(Protocol::Aliyun)
}

fn topics(protocol: Protocol) -> [String; 3] {
    let t = Topics::new(protocol, PK, DN);
    [t.inform, t.progress, t.request]
}

impl World {
    fn new(inp: &mut Input<'_>) -> World {
        clear_scratch_dir();
        std::fs::create_dir_all(scratch_dir()).expect("scratch directory");
        let protocol = protocol_of(inp.u8());
        let script = match inp.u8() % 3 {
            0 => None,
            _ => Some(inp.bytes(4096).to_vec()),
        };
        let mut foreign = Box::new([inp.u32(), 0, 0, 0]);
        if foreign[0] == OTA_MAGIC || foreign[0] == MQTT_MAGIC {
            foreign[0] = 0;
        }
        // What is served, from the foreign word's top bits (so inputs written before patches
        // were served keep every other decision).
        let served = match foreign[0] >> 30 {
            2 => Some(0),
            3 => Some(1),
            _ => None,
        };
        SERVED.with(|s| s.set(served));
        let old_reader = Box::into_raw(Box::new(OldReader {
            image: served_patch().map_or(plain(), |p| p.old),
            declared: 0,
            mode: 0,
            at: 0,
            reads: 0,
        }));
        let flash = Box::into_raw(Box::new(Flash {
            data: Vec::new(),
            load_rc: None,
            save_rc: 0,
            erase_rc: 0,
        }));
        let uplink = Arc::new(Mutex::new(UplinkState {
            topics: topics(protocol),
            limit: Limits::default().message,
            mode: 0,
        }));
        let mut w = World {
            protocol,
            handle: null_mut(),
            uplink,
            flash,
            old_reader,
            delta_set: false,
            foreign,
            script,
            last_notice: Vec::new(),
        };
        w.handle = w.new_handle();
        w
    }

    /// A handle on a fresh session (as after a restart): same uplink, same flash.
    fn new_handle(&mut self) -> *mut c_void {
        self.delta_set = false;
        let mut config = OtaConfig::for_protocol(self.protocol);
        // Retries as the SDK makes them, without the waiting.
        config.retry = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_micros(1),
            max_delay: Duration::from_micros(20),
            stall_timeout: Duration::from_secs(20),
        };
        // An expired URL's wait for a fresh one, likewise (a FetchYield with a long timeout
        // would otherwise sleep the default minute: a hang to libFuzzer, not a finding).
        config.fresh_url_wait = Duration::from_millis(1);
        let source: Box<dyn FirmwareSource> = match &self.script {
            None => {
                let mut s = MemorySource::new(image());
                s.chunk = 1000;
                Box::new(s)
            }
            Some(script) => Box::new(ScriptedSource {
                script: script.clone(),
                at: 0,
                pos: None,
                opened: false,
            }),
        };
        {
            let mut st = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
            st.topics = topics(self.protocol);
        }
        let uplink = Box::new(CheckingUplink(self.uplink.clone()));
        let session =
            OtaSession::new(PK, DN, config, uplink, source).expect("an in-memory session");
        let h = fuzzing::handle_from_session(session);
        assert!(!h.is_null());
        h
    }

    fn session(&self) -> Option<&OtaSession> {
        unsafe { fuzzing::session(self.handle) }
    }

    fn flash(&mut self) -> &mut Flash {
        // No library call is running: nothing else uses the flash now.
        unsafe { &mut *self.flash }
    }

    /// The handle a call gets: mostly the live one, sometimes NULL or foreign memory.
    fn pick_handle(&mut self, inp: &mut Input<'_>) -> *mut c_void {
        match inp.u8() % 16 {
            0 => null_mut(),
            1 => self.foreign.as_mut_ptr() as *mut c_void,
            _ => self.handle,
        }
    }

    fn last_error(&self) -> c_int {
        if self.handle.is_null() {
            0
        } else {
            IOT_OTA_GetLastError(self.handle)
        }
    }

    /// The checks every int-returning call shares; `before` is the live handle's last error
    /// before the call.
    fn returned(&self, h: *mut c_void, rc: c_int, before: c_int, what: &str) {
        assert!(is_code(rc), "{what} returned {rc}");
        if h.is_null() || h != self.handle {
            assert_eq!(rc, INVALID_PARAM, "{what} on a NULL or foreign handle");
            assert_eq!(
                self.last_error(),
                before,
                "{what} on another handle recorded an error"
            );
        } else if rc < 0 {
            assert_eq!(
                self.last_error(),
                rc,
                "{what} returned {rc}, GetLastError differs"
            );
        }
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        let before = self.last_error();
        let b = inp.u8();
        // The top values call IOT_OTA_SetDeltaSource; the rest keep the meaning they had
        // before it was added (saved inputs still run as they did).
        if b >= 234 {
            self.set_delta_source(inp, before);
            return;
        }
        match b % 26 {
            0 | 1 => self.deliver(inp, true),
            2 => self.deliver(inp, false),
            3 => self.report_version(inp, before),
            4 => self.report_module_version(inp, before),
            5 => self.request_image(inp, before),
            6 => self.report_progress(inp, before),
            7 => self.is_fetching(inp),
            8..=10 => self.fetch_yield(inp, before),
            11..=13 => self.ioctl(inp, before),
            14 => self.start_download(inp, before),
            15 => self.update_client_md5(inp, before),
            16 => self.simple_call(inp, before),
            17 => self.report_upgrade(inp, before),
            18 => self.set_retry_policy(inp, before),
            19 => self.set_breakpoint_store(inp, before),
            20 => self.set_breakpoint_file(inp, before),
            21 => self.set_save_interval(inp, before),
            22 => self.flash_op(inp),
            23 => self.restart(inp),
            24 => self.init_and_deinit(inp, before),
            _ => {
                let mut st = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
                st.mode = inp.u8();
            }
        }
    }

    /// A string argument: NULL, typical, too long, or arbitrary (even invalid UTF-8).
    fn c_string(inp: &mut Input<'_>) -> Option<CString> {
        let bytes: Vec<u8> = match inp.u8() % 10 {
            0 => return None,
            1 => Vec::new(),
            2 => b"1.0.0".to_vec(),
            3 => b"2.0.0".to_vec(),
            4 => b"MCU".to_vec(),
            5 => b"default".to_vec(),
            6 => vec![b'9'; 62 + usize::from(inp.u8() % 4)],
            7 => vec![b'x'; 1000],
            _ => inp.bytes(80).to_vec(),
        };
        let bytes = bytes.into_iter().filter(|&b| b != 0).collect::<Vec<u8>>();
        Some(CString::new(bytes).expect("NULs removed"))
    }

    fn ptr(s: &Option<CString>) -> *const c_char {
        s.as_ref().map_or(null(), |c| c.as_ptr())
    }

    /// A buffer argument: NULL (with any length), or a real buffer of `real` bytes plus a guard,
    /// passed with its length or a shorter one.
    fn buffer(inp: &mut Input<'_>) -> (Option<Vec<u8>>, usize) {
        if inp.u8() % 10 == 0 {
            return (None, inp.u32_biased() as usize);
        }
        let real = match inp.u8() % 9 {
            0 => 0,
            1 => 4,
            2 => 33,
            3 => 64,
            4 => 65,
            5 => usize::from(inp.u8()),
            6 => usize::from(inp.u16() % 8192),
            7 => 7,
            _ => 3,
        };
        let pass = match inp.u8() % 4 {
            0 => real.saturating_sub(usize::from(inp.u8() % 8)),
            1 => usize::from(inp.u8()).min(real),
            _ => real,
        };
        (Some(vec![FILL; real + GUARD]), pass)
    }

    fn deliver(&mut self, inp: &mut Input<'_>, templated: bool) {
        let payload = if templated {
            let p = self.template(inp);
            self.last_notice = p.clone();
            p
        } else {
            inp.bytes(9000).to_vec()
        };
        let on_topic = inp.u8() % 16 != 0;
        let Some(session) = self.session() else {
            return;
        };
        let topic = if on_topic {
            session.downstream_topic().to_owned()
        } else {
            format!("{}/x", session.downstream_topic())
        };
        let r = session.handle_message(&topic, &payload);
        if let Err(e) = r {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                self.last_error(),
                err_code(&e),
                "message error not recorded"
            );
        }
        if !on_topic {
            assert!(r.is_err(), "a message on another topic was taken");
        }
    }

    /// An upgrade message of the session's protocol, mostly valid, for the image served.
    fn template(&self, inp: &mut Input<'_>) -> Vec<u8> {
        let version = match inp.u8() % 6 {
            0 | 1 => "2.0.0".to_owned(),
            2 => "1.0.0".to_owned(),
            3 => "9".repeat(63),
            4 => "9".repeat(64),
            _ => String::from_utf8_lossy(inp.bytes(12)).into_owned(),
        };
        let size: u64 = match inp.u8() % 6 {
            0 | 1 => image_len() as u64,
            2 => image_len() as u64 - 1,
            3 => image_len() as u64 + 1,
            4 => 1 + u64::from(inp.u8()),
            _ => u64::from(inp.u32_biased()),
        };
        let kind = match (self.protocol, inp.u8() % 2) {
            (Protocol::Sagoo, 1) => DigestKind::Sha256,
            _ => DigestKind::Md5,
        };
        let mut hex = [0u8; 64];
        let digest = match inp.u8() % 4 {
            0 => "0".repeat(2 * kind.len()),
            _ => {
                let mut d = StreamDigest::new(kind);
                d.update(&image()[..(size as usize).min(image_len())]);
                let mut sum = [0u8; 32];
                let n = d.current(&mut sum);
                to_hex(&sum[..n], &mut hex).to_owned()
            }
        };
        let url = match inp.u8() % 4 {
            0 => "http://fw.example/fw.bin".to_owned(),
            1 => format!("https://fw.example/fw.bin?Expires={}", inp.u8()),
            2 => "http:\\/\\/fw.example\\/f".to_owned(),
            _ => "ftp://fw.example/fw.bin".to_owned(),
        };
        let module = match inp.u8() % 4 {
            0 => None,
            1 => Some("default".to_owned()),
            2 => Some("MCU".to_owned()),
            _ => Some(String::from_utf8_lossy(inp.bytes(8)).into_owned()),
        };
        let (v, u, m) = (js(&version), quoted_url(&url), module.as_deref().map(js));
        let id = inp.u8();
        let text = match self.protocol {
            Protocol::Aliyun => {
                let m = m.map(|m| format!(",\"module\":{m}")).unwrap_or_default();
                format!(
                    r#"{{"code":"1000","data":{{"size":{size},"version":{v},"url":{u},"md5":"{digest}"{m}}},"id":{id},"message":"success"}}"#
                )
            }
            Protocol::Sagoo => {
                let m = m.map(|m| format!(",\"module\":{m}")).unwrap_or_default();
                let ext = match inp.u8() % 3 {
                    0 => "",
                    1 => r#","extData":{"strategy":"b1","k":[1]}"#,
                    _ => r#","extData":"{\"strategy\":\"b2\"}""#,
                };
                let method = kind.name();
                format!(
                    r#"{{"code":"200","data":{{"size":{size},"version":{v},"url":{u},"sign":"{digest}","signMethod":"{method}"{m}{ext}}},"id":"{id}","message":"success"}}"#
                )
            }
            Protocol::Tencent => match inp.u8() % 5 {
                0 => {
                    let code = i64::from(inp.u8() % 3) - 1;
                    format!(
                        r#"{{"type":"report_version_rsp","result_code":{code},"result_msg":"x","version":{v}}}"#
                    )
                }
                _ => format!(
                    r#"{{"file_size":{size},"md5sum":"{digest}","type":"update_firmware","url":{u},"version":{v}}}"#
                ),
            },
            Protocol::Ucloud => {
                let m = m.map(|m| format!(",\"Module\":{m}")).unwrap_or_default();
                let current = match inp.u8() % 3 {
                    0 => String::new(),
                    1 => r#","CurrentVersion":"1.0.0""#.to_owned(),
                    _ => r#","CurrentVersion":"0.9""#.to_owned(),
                };
                let task = inp.u8() % 3;
                format!(
                    r#"{{"Method":"notify","Payload":{{"Version":{v}{current}{m},"URL":{u},"MD5":"{digest}","Size":{size},"TaskID":"t{task}"}}}}"#
                )
            }
        };
        text.into_bytes()
    }

    fn report_version(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let v = Self::c_string(inp);
        let rc = unsafe { IOT_OTA_ReportVersion(h, Self::ptr(&v)) };
        self.returned(h, rc, before, "ReportVersion");
        if h == self.handle && !h.is_null() {
            check_version_rc(&v, rc);
        }
    }

    fn report_module_version(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let (m, v) = (Self::c_string(inp), Self::c_string(inp));
        let rc = unsafe { IOT_OTA_ReportModuleVersion(h, Self::ptr(&m), Self::ptr(&v)) };
        self.returned(h, rc, before, "ReportModuleVersion");
        // A module that is not UTF-8 is refused before the version is looked at.
        let module_ok = m.as_ref().is_none_or(|m| m.to_str().is_ok());
        if h == self.handle && !h.is_null() && module_ok {
            check_version_rc(&v, rc);
        }
    }

    fn request_image(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let v = Self::c_string(inp);
        let rc = unsafe { IOT_OTA_RequestImage(h, Self::ptr(&v)) };
        self.returned(h, rc, before, "RequestImage");
        if h == self.handle && !h.is_null() {
            check_version_rc(&v, rc);
        }
    }

    fn report_progress(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let progress = match inp.u8() % 4 {
            0 => inp.i32_biased(),
            _ => i32::from(inp.u8()) - 10,
        };
        let msg = Self::c_string(inp);
        let rc = unsafe { IOT_OTA_ReportProgress(h, progress, Self::ptr(&msg)) };
        self.returned(h, rc, before, "ReportProgress");
        if h == self.handle && !h.is_null() && !(-4..=100).contains(&progress) {
            assert_eq!(rc, INVALID_PARAM, "progress {progress} accepted");
        }
    }

    fn is_fetching(&mut self, inp: &mut Input<'_>) {
        let h = self.pick_handle(inp);
        let (a, b) = (IOT_OTA_IsFetching(h), IOT_OTA_IsFetchFinish(h));
        if h != self.handle || h.is_null() {
            assert_eq!(
                (a, b),
                (0, 0),
                "IsFetching/IsFetchFinish on a foreign handle"
            );
        }
        let rc = IOT_OTA_GetLastError(h);
        assert!(is_code(rc), "GetLastError returned {rc}");
    }

    fn fetch_yield(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let (mut buf, pass) = Self::buffer(inp);
        let pass = u32::try_from(pass).unwrap_or(u32::MAX);
        let timeout = match inp.u8() % 8 {
            0 => inp.u32_biased(),
            1 => 1,
            _ => 0,
        };
        let offset = self.session().map_or(0, |s| s.fetched_size());
        let ptr = buf
            .as_mut()
            .map_or(null_mut(), |b| b.as_mut_ptr() as *mut c_char);
        let rc = unsafe { IOT_OTA_FetchYield(h, ptr, pass, timeout) };
        // After the call: a patch's first call tells its new image's size.
        let size = self.session().map_or(0, |s| s.file_size());
        if rc <= 0 {
            self.returned(h, rc, before, "FetchYield");
        } else {
            assert!(h == self.handle && !h.is_null());
            let n = rc as usize;
            assert!(
                n <= pass as usize,
                "FetchYield returned {n} > buf_len {pass}"
            );
            let buf = buf.as_ref().expect("bytes into a NULL buffer");
            let start = offset as usize;
            assert!(offset + n as u64 <= size, "more bytes than announced");
            // The bytes served as they came, or (a patch, with a delta source) the new image's.
            let applied = served_patch().filter(|_| self.delta_set).map(|p| p.new);
            let is_at = |whole: &[u8]| whole.get(start..start + n) == Some(&buf[..n]);
            assert!(
                is_at(image()) || applied.is_some_and(is_at),
                "wrong bytes at {start} (delta source set: {})",
                self.delta_set
            );
            let now = self.session().map_or(0, |s| s.fetched_size());
            assert_eq!(
                now,
                offset + n as u64,
                "FETCHED_SIZE does not follow the data"
            );
        }
        if let Some(b) = buf {
            let tail = &b[pass as usize..];
            assert!(
                tail.iter().all(|&x| x == FILL),
                "FetchYield wrote past buf_len"
            );
        }
    }

    fn ioctl(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let kind = match inp.u8() % 8 {
            0 => inp.i32_biased(),
            _ => i32::from(inp.u8() % 40) - 1,
        };
        let (mut buf, pass) = Self::buffer(inp);
        let ptr = buf
            .as_mut()
            .map_or(null_mut(), |b| b.as_mut_ptr() as *mut c_void);
        let downloading = self
            .session()
            .is_some_and(|s| s.state() == OtaState::Downloading);
        let rc = unsafe { IOT_OTA_Ioctl(h, kind, ptr, pass) };
        self.returned(h, rc, before, "Ioctl");
        let Some(b) = buf else {
            return;
        };
        let untouched = |from: usize| b[from..].iter().all(|&x| x == FILL);
        assert!(untouched(pass), "Ioctl({kind}) wrote past buf_len {pass}");
        if rc != NONE {
            assert!(
                untouched(0),
                "Ioctl({kind}) failed ({rc}) but wrote its buffer"
            );
            return;
        }
        let session = self.session().expect("success on the live handle");
        let state = session.state();
        let u32_answer = || {
            assert_eq!(pass, 4, "a uint32_t answer into {pass} bytes");
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        };
        let text = || {
            let nul = b[..pass].iter().position(|&x| x == 0);
            let nul = nul.unwrap_or_else(|| panic!("Ioctl({kind}): no NUL within {pass} bytes"));
            std::str::from_utf8(&b[..nul])
                .expect("Ioctl text is UTF-8")
                .to_owned()
        };
        let hex = |t: &str, len: usize| {
            t.len() == len && t.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        };
        match kind {
            IOT_OTAG_FETCHED_SIZE | IOT_OTAG_RESUME_OFFSET => {
                assert_eq!(u64::from(u32_answer()), session.fetched_size())
            }
            IOT_OTAG_FILE_SIZE => assert_eq!(u64::from(u32_answer()), session.file_size()),
            IOT_OTAG_CHECK_FIRMWARE => {
                assert!(u32_answer() <= 1 && state == OtaState::Fetched)
            }
            IOT_OTAG_STATE => {
                let want = match state {
                    OtaState::Idle => IOT_OTA_State_t::IOT_OTAS_INITED,
                    OtaState::Waiting => IOT_OTA_State_t::IOT_OTAS_WAITING,
                    OtaState::Downloading => IOT_OTA_State_t::IOT_OTAS_FETCHING,
                    OtaState::Fetched => IOT_OTA_State_t::IOT_OTAS_FETCHED,
                };
                assert_eq!(u32_answer(), want as u32);
            }
            IOT_OTAG_MD5SUM => assert!(hex(&text(), 32)),
            IOT_OTAG_SHA256SUM => assert!(hex(&text(), 64)),
            IOT_OTAG_SIGN_METHOD => assert!(matches!(text().as_str(), "MD5" | "SHA256")),
            IOT_OTAG_VERSION => {
                let v = text();
                assert!(!v.is_empty() && v.len() < OTA_VERSION_LEN_MAX);
                assert!(session.with_notice(|n| n.version.as_str() == v));
            }
            IOT_OTAG_MODULE => assert!(!text().is_empty()),
            IOT_OTAG_TASK_ID => assert!(!text().is_empty()),
            IOT_OTAG_EXT_DATA => {
                assert!(
                    Object::parse(text().as_bytes()).is_ok(),
                    "extData is not JSON"
                )
            }
            IOT_OTAC_ADD_IMAGE_KEY
            | IOT_OTAC_REQUIRE_SIGNATURE
            | IOT_OTAC_RUNNING_VERSION
            | IOT_OTAC_RUNNING_SECURITY_COUNTER
            | IOT_OTAC_ALLOW_DOWNGRADE => {
                assert!(
                    !downloading,
                    "Ioctl({kind}): the image policy changed mid-download"
                )
            }
            IOT_OTAC_CONFIRM_BOOTS => assert_eq!(pass, 4),
            IOT_OTAG_BOOT_STATE => assert!(u32_answer() <= OTA_BOOT_ROLLED_BACK),
            IOT_OTAG_IMAGE_SIGNED
            | IOT_OTAG_IMAGE_KEY_INDEX
            | IOT_OTAG_IMAGE_VERSION
            | IOT_OTAG_PAYLOAD_OFFSET
            | IOT_OTAG_PAYLOAD_SIZE => {
                let image = session
                    .verified_image()
                    .expect("image queries answer only for a verified image");
                assert!(session.check_firmware().unwrap_or(false));
                match kind {
                    IOT_OTAG_IMAGE_SIGNED => assert_eq!(u32_answer(), image.signed as u32),
                    IOT_OTAG_IMAGE_KEY_INDEX => {
                        let v = u32_answer() as i32;
                        assert_eq!(v, image.key_index.map_or(-1, |i| i as i32));
                    }
                    IOT_OTAG_IMAGE_VERSION => {
                        let v = text();
                        assert_eq!(Some(v), image.version.map(|v| v.to_string()));
                    }
                    IOT_OTAG_PAYLOAD_OFFSET => {
                        assert_eq!(u64::from(u32_answer()), image.payload_offset)
                    }
                    _ => assert_eq!(u64::from(u32_answer()), image.payload_size),
                }
            }
            // A session on in-memory transports belongs to no gateway: it never waits, and
            // never streams another's kept image.
            IOT_OTAG_WAITING => {
                assert_eq!(u32_answer(), OTA_WAITING_NONE);
                assert_ne!(state, OtaState::Waiting);
            }
            IOT_OTAG_LOCAL_IMAGE => assert_eq!(u32_answer(), 0),
            IOT_OTAG_FILE_COUNT => assert_eq!(u64::from(u32_answer()), session.file_count() as u64),
            IOT_OTAG_FILE_INDEX => {
                assert!((u32_answer() as usize) < session.file_count().max(1))
            }
            IOT_OTAG_FILE_NAME => {
                let name = text();
                session.with_file_name(|n| assert_eq!(name, n));
            }
            // Accepted only before the first upgrade (the session was idle).
            IOT_OTAC_MAX_FILES => assert_eq!(state, OtaState::Idle),
            other => panic!("Ioctl type {other} succeeded"),
        }
        let from_notice = matches!(kind, IOT_OTAG_MD5SUM | IOT_OTAG_VERSION)
            || (IOT_OTAG_SHA256SUM..=IOT_OTAG_EXT_DATA).contains(&kind);
        assert!(
            !from_notice || state != OtaState::Idle,
            "Ioctl({kind}) answered while idle"
        );
    }

    fn set_delta_source(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let with_read = inp.u8() % 8 != 0;
        // No library call is running: nothing else uses the reader now.
        let image_len = unsafe { &*self.old_reader }.image.len() as u32;
        let old_size = match inp.u8() % 6 {
            0 => 0,
            1 => image_len / 2,
            2 => image_len + 1 + u32::from(inp.u8()),
            3 => inp.u32_biased(),
            _ => image_len,
        };
        let (mode, at) = (inp.u8() % 8, 1 + u32::from(inp.u8() % 8));
        let state = self.session().map(|s| s.state());
        let reader = self.old_reader;
        let read = with_read.then_some(old_read as _);
        // SetDeltaSource reads the whole old image once (its SHA-256), honestly here; the
        // reader misbehaves as the input says from the patch's reads on. A refused call leaves
        // the source set before, and its reader, as they were.
        let before_set = {
            let r = unsafe { &mut *reader };
            let kept = (r.declared, r.mode, r.at, r.reads);
            (r.declared, r.mode, r.reads) = (old_size, 0, 0);
            kept
        };
        let rc = unsafe { IOT_OTA_SetDeltaSource(h, read, reader as *mut c_void, old_size) };
        if rc != NONE {
            let r = unsafe { &mut *reader };
            (r.declared, r.mode, r.at, r.reads) = before_set;
        }
        self.returned(h, rc, before, "SetDeltaSource");
        if h != self.handle || h.is_null() {
            return;
        }
        let want = match (with_read, state) {
            (false, _) => INVALID_PARAM,
            (true, Some(OtaState::Idle)) if old_size > image_len => {
                IOT_OTA_Err_t::IOT_OTAE_DELTA_REFUSED as c_int
            }
            (true, Some(OtaState::Idle)) => NONE,
            (true, _) => IOT_OTA_Err_t::IOT_OTAE_INVALID_STATE as c_int,
        };
        assert_eq!(
            rc, want,
            "SetDeltaSource in {state:?}, read set: {with_read}"
        );
        if rc == NONE {
            // No library call is running: nothing else uses the reader now.
            let r = unsafe { &mut *reader };
            (r.declared, r.mode, r.at, r.reads) = (old_size, mode, at, 0);
            self.delta_set = true;
        }
    }

    fn start_download(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let (fetched, size) = self
            .session()
            .map_or((0, 0), |s| (s.fetched_size() as u32, s.file_size() as u32));
        let pick = |inp: &mut Input<'_>| match inp.u8() % 6 {
            0 => 0,
            1 => fetched,
            2 => size,
            3 => size.wrapping_add(1),
            4 => size / 2,
            _ => inp.u32_biased(),
        };
        let (offset, whole) = (pick(inp), pick(inp));
        let rc = IOT_OTA_StartDownload(h, offset, whole);
        self.returned(h, rc, before, "StartDownload");
        if rc == NONE {
            let s = self.session().expect("success on the live handle");
            assert_eq!(s.fetched_size(), u64::from(offset));
            assert!(u64::from(offset) <= s.file_size());
            // Every byte already kept: the image is checked at once, nothing left to fetch.
            if u64::from(offset) == s.file_size() {
                assert!(s.is_fetch_finished());
            } else {
                assert!(s.is_fetching());
            }
        }
    }

    fn update_client_md5(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let (buf, pass) = Self::buffer(inp);
        let mut buf = buf.map(|mut b| {
            let n = b.len().min(image_len());
            let from = usize::from(inp.u8()) * 16 % image_len();
            let n = n.min(image_len() - from);
            b[..n].copy_from_slice(&image()[from..from + n]);
            b
        });
        let pass = u32::try_from(pass).unwrap_or(u32::MAX);
        let ptr = buf
            .as_mut()
            .map_or(null_mut(), |b| b.as_mut_ptr() as *mut c_char);
        unsafe { IOT_OTA_UpdateClientMd5(h, ptr, pass) };
        if h == self.handle && !h.is_null() {
            let state = self.session().map(|s| s.state());
            let rejected = (ptr.is_null() && pass != 0) || state == Some(OtaState::Idle);
            if rejected {
                assert!(
                    self.last_error() < 0,
                    "a rejected UpdateClientMd5 left no error"
                );
            }
        } else {
            assert_eq!(
                self.last_error(),
                before,
                "UpdateClientMd5 on another handle"
            );
        }
    }

    fn simple_call(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let (rc, what) = match inp.u8() % 2 {
            0 => (IOT_OTA_ResetClientMD5(h), "ResetClientMD5"),
            _ => (IOT_OTA_ReportUpgradeBegin(h), "ReportUpgradeBegin"),
        };
        self.returned(h, rc, before, what);
    }

    fn report_upgrade(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let v = Self::c_string(inp);
        let (rc, what) = match inp.u8() % 2 {
            0 => (
                unsafe { IOT_OTA_ReportUpgradeSuccess(h, Self::ptr(&v)) },
                "Success",
            ),
            _ => (
                unsafe { IOT_OTA_ReportUpgradeFail(h, Self::ptr(&v)) },
                "Fail",
            ),
        };
        self.returned(h, rc, before, what);
    }

    fn set_retry_policy(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let attempts = match inp.u8() % 4 {
            0 => inp.u32_biased(),
            _ => u32::from(inp.u8() % 12),
        };
        let stall = inp.u32_biased();
        let rc = IOT_OTA_SetRetryPolicy(h, attempts, stall);
        self.returned(h, rc, before, "SetRetryPolicy");
        if h == self.handle && !h.is_null() {
            assert_eq!(
                rc == NONE,
                attempts <= 1000,
                "max_attempts {attempts}: {rc}"
            );
        }
    }

    fn set_breakpoint_store(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let which = inp.u8();
        let table = ota_breakpoint_store_t {
            load: (which & 1 == 0).then_some(flash_load as _),
            save: (which & 2 == 0).then_some(flash_save as _),
            erase: (which & 4 == 0).then_some(flash_erase as _),
            ctx: self.flash as *mut c_void,
        };
        let ptr = if which & 8 == 8 {
            null()
        } else {
            &table as *const _
        };
        let rc = unsafe { IOT_OTA_SetBreakpointStore(h, ptr) };
        self.returned(h, rc, before, "SetBreakpointStore");
        if h == self.handle && !h.is_null() && which & 15 != 0 {
            assert_eq!(rc, INVALID_PARAM, "an incomplete store table was taken");
        }
    }

    fn set_breakpoint_file(&mut self, inp: &mut Input<'_>, before: c_int) {
        use std::os::unix::ffi::OsStrExt;
        let h = self.pick_handle(inp);
        let dir = scratch_dir().as_os_str().as_bytes();
        let path: Option<Vec<u8>> = match inp.u8() % 6 {
            0 => None,
            1 => Some(Vec::new()),
            2 => Some([dir, b"/"].concat()),
            3 => Some([dir, b"/missing/bp"].concat()),
            4 => Some([dir, b"/", FILE_NAMES[1]].concat()),
            _ => Some([dir, b"/", FILE_NAMES[0]].concat()),
        };
        let path = path.map(|p| CString::new(p).expect("no NUL"));
        let rc = unsafe { IOT_OTA_SetBreakpointFile(h, Self::ptr(&path)) };
        self.returned(h, rc, before, "SetBreakpointFile");
    }

    fn set_save_interval(&mut self, inp: &mut Input<'_>, before: c_int) {
        let h = self.pick_handle(inp);
        let bytes = inp.u32_biased();
        let percent = match inp.u8() % 3 {
            0 => inp.u32_biased(),
            _ => u32::from(inp.u8() % 110),
        };
        let rc = IOT_OTA_SetSaveInterval(h, bytes, percent);
        self.returned(h, rc, before, "SetSaveInterval");
        if h == self.handle && !h.is_null() {
            assert_eq!(rc == NONE, percent <= 100);
        }
    }

    /// What happens to the flash between calls: corruption, a crafted record, a failing driver.
    fn flash_op(&mut self, inp: &mut Input<'_>) {
        let op = inp.u8() % 6;
        let protocol = match inp.u8() % 4 {
            0 => protocol_of(inp.u8()),
            _ => self.protocol,
        };
        let record = match op {
            0 => Some(inp.bytes(600).to_vec()),
            1 => self.crafted_record(inp, protocol),
            _ => None,
        };
        let f = self.flash();
        match op {
            0 | 1 => {
                if let Some(r) = record {
                    f.data = r;
                }
            }
            2 => {
                let (i, mask) = (usize::from(inp.u16()), inp.u8());
                if let Some(b) = f.data.get_mut(i % RECORD_LEN) {
                    *b ^= mask;
                }
            }
            3 => {
                let keep = usize::from(inp.u16()) % (RECORD_LEN + 1);
                f.data.truncate(keep);
            }
            4 => {
                f.load_rc = match inp.u8() % 4 {
                    0 => None,
                    1 => Some(inp.i32_biased()),
                    2 => Some(RECORD_LEN as c_int + 1 + c_int::from(inp.u8() % 3)),
                    _ => Some(-1),
                }
            }
            _ => {
                f.save_rc = -c_int::from(inp.u8() % 2);
                f.erase_rc = -c_int::from(inp.u8() % 2);
            }
        }
    }

    /// A valid record for the last templated upgrade, at an offset the input picks.
    fn crafted_record(&self, inp: &mut Input<'_>, protocol: Protocol) -> Option<Vec<u8>> {
        let limits = Limits::default();
        let mut notice = UpgradeNotice::new(&limits);
        protocol::decode(protocol, &self.last_notice, &limits, &mut notice).ok()?;
        let mut bp = Breakpoint::for_upgrade(protocol, &notice).ok()?;
        let offset = match inp.u8() % 3 {
            0 => notice.size,
            1 => u64::from(inp.u16()) % (notice.size + 1),
            _ => u64::from(inp.u32_biased()),
        };
        let mut digest = StreamDigest::new(notice.digest_kind);
        digest.update(&image()[..(offset as usize).min(image_len())]);
        let digest = inp.bool().then_some(&digest);
        let _ = bp.set_progress(offset, digest, None);
        if inp.u8() % 4 == 0 {
            let _ = bp.set_pending_reboot(if inp.bool() { "2.0.0" } else { "1.0.0" });
        }
        let mut buf = [0u8; RECORD_LEN];
        bp.encode(&mut buf);
        Some(buf.to_vec())
    }

    /// A power cut: the handle goes, a new one (maybe of another protocol) comes up on the same
    /// flash and file; or just a Deinit, after which no handle is live.
    fn restart(&mut self, inp: &mut Input<'_>) {
        if !self.handle.is_null() {
            assert_eq!(unsafe { IOT_OTA_Deinit(self.handle) }, NONE);
            self.handle = null_mut();
        }
        match inp.u8() % 4 {
            0 => {}
            1 => {
                self.protocol = protocol_of(inp.u8());
                self.handle = self.new_handle();
            }
            _ => self.handle = self.new_handle(),
        }
    }

    /// Init with what cannot be an MQTT handle must fail; Deinit of what is not a handle too.
    fn init_and_deinit(&mut self, inp: &mut Input<'_>, before: c_int) {
        let (pk, dn) = (Self::c_string(inp), Self::c_string(inp));
        let ch = match inp.u8() % 3 {
            0 => null_mut(),
            1 => self.foreign.as_mut_ptr() as *mut c_void,
            _ => self.handle,
        };
        let h = match inp.u8() % 2 {
            0 => unsafe { IOT_OTA_Init(Self::ptr(&pk), Self::ptr(&dn), ch) },
            _ => {
                let protocol = inp.i32_biased();
                unsafe { IOT_OTA_InitWithProtocol(Self::ptr(&pk), Self::ptr(&dn), ch, protocol) }
            }
        };
        assert!(h.is_null(), "Init on something that is not an MQTT handle");
        let foreign = match inp.u8() % 2 {
            0 => null_mut(),
            _ => self.foreign.as_mut_ptr() as *mut c_void,
        };
        assert_eq!(unsafe { IOT_OTA_Deinit(foreign) }, INVALID_PARAM);
        assert_eq!(self.last_error(), before);
    }

    /// The session's state agrees with itself after every call.
    fn check_session(&self) {
        let Some(s) = self.session() else {
            return;
        };
        let h = self.handle;
        let (fetching, finished) = (IOT_OTA_IsFetching(h), IOT_OTA_IsFetchFinish(h));
        let state = s.state();
        assert_eq!(fetching == 1, state == OtaState::Downloading);
        assert_eq!(finished == 1, state == OtaState::Fetched);
        assert!(
            s.fetched_size() <= s.file_size(),
            "fetched past the announced size"
        );
        let mut v = [FILL; 4 + GUARD];
        let rc = unsafe { IOT_OTA_Ioctl(h, IOT_OTAG_STATE, v.as_mut_ptr() as *mut c_void, 4) };
        assert_eq!(rc, NONE);
        assert!((1..=3).contains(&u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
        assert!(v[4..].iter().all(|&b| b == FILL));
    }
}

/// The documented answers to a version argument on the live handle.
fn check_version_rc(v: &Option<CString>, rc: c_int) {
    let Some(v) = v else {
        assert_eq!(rc, INVALID_PARAM, "NULL version accepted");
        return;
    };
    match std::str::from_utf8(v.as_bytes()) {
        Err(_) => assert_eq!(rc, INVALID_PARAM, "non-UTF-8 version accepted"),
        Ok("") => assert_eq!(rc, INVALID_PARAM, "empty version accepted"),
        Ok(s) if s.len() >= OTA_VERSION_LEN_MAX => assert_eq!(rc, STR_TOO_LONG),
        Ok(_) => {}
    }
}

/// `s` as a JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A URL literal: already escaped text (with `\/`) is kept as it is.
fn quoted_url(url: &str) -> String {
    if url.contains('\\') {
        format!("\"{url}\"")
    } else {
        js(url)
    }
}
