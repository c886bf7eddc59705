//! Breakpoint storage from C (extension): flash callbacks for an RTOS, or a file path on Linux.
//!
//! Only translation lives here: the C callback table as a [`BreakpointStore`], and the argument
//! checks of the `IOT_OTA_SetBreakpoint*` / `IOT_OTA_SetSaveInterval` entry points.

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::error::Error;
use crate::resume::{BreakpointStore, FileStore, SavePolicy, StoreError};

/// Bytes of a breakpoint record: what a firmware's store must hold.
pub const OTA_BREAKPOINT_RECORD_LEN: usize = 824;
const _: () = assert!(OTA_BREAKPOINT_RECORD_LEN == crate::resume::RECORD_LEN);

/// Bytes of the longest breakpoint record once IOT_OTA_SetDeltaSource is set: a delta patch's
/// record carries the patch applier's state (its 4 KiB heatshrink window, the image checks'
/// and the new image digest's states) after the 824 bytes, so the patch resumes after a power loss. A store for delta
/// upgrades must hold this many bytes.
pub const OTA_BREAKPOINT_DELTA_RECORD_LEN: usize = 5440;
const _: () = assert!(OTA_BREAKPOINT_DELTA_RECORD_LEN == crate::resume::DELTA_RECORD_LEN);

/// Reads the stored breakpoint record into `buf` (at most `buf_len` bytes).
/// Returns the number of bytes read, 0 when nothing is stored, < 0 on error.
#[allow(non_camel_case_types)]
pub type ota_bp_load_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, buf_len: u32) -> c_int>;

/// Replaces the stored breakpoint record with `len` bytes at `buf` (at most
/// OTA_BREAKPOINT_RECORD_LEN bytes, or OTA_BREAKPOINT_DELTA_RECORD_LEN with a delta source;
/// erase-then-write of one flash sector, or two, is typical). Returns 0, or < 0 on error.
/// A write cut by power loss is tolerated: the record carries a CRC and is then ignored.
#[allow(non_camel_case_types)]
pub type ota_bp_save_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: u32) -> c_int>;

/// Removes the stored breakpoint record (nothing stored is not an error). Returns 0, or < 0.
#[allow(non_camel_case_types)]
pub type ota_bp_erase_fn = Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>;

/// Where the SDK keeps its breakpoint record (resume after power loss): three callbacks and the
/// `ctx` passed to each. The SDK copies the table; `ctx` must stay valid until IOT_OTA_Deinit.
/// The callbacks run on the thread that calls the OTA functions, never concurrently for one
/// handle, and must not call back into the SDK.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ota_breakpoint_store_t {
    /// Reads the record back: when an upgrade is accepted, and at the first
    /// IOT_OTA_ReportVersion (to complete an upgrade after the reboot). Not NULL.
    pub load: ota_bp_load_fn,
    /// Writes the record: when a download starts, during it at the save interval, and when the
    /// image verified (the version to boot). Not NULL.
    pub save: ota_bp_save_fn,
    /// Removes the record: when it names another upgrade, or the upgrade succeeded, failed or
    /// was superseded. Not NULL.
    pub erase: ota_bp_erase_fn,
    /// Passed as the first argument of every callback, never read by the SDK; may be NULL.
    pub ctx: *mut c_void,
}

/// A [`BreakpointStore`] over the C callback table.
pub struct CallbackStore {
    load: unsafe extern "C" fn(*mut c_void, *mut u8, u32) -> c_int,
    save: unsafe extern "C" fn(*mut c_void, *const u8, u32) -> c_int,
    erase: unsafe extern "C" fn(*mut c_void) -> c_int,
    ctx: *mut c_void,
}

// The header's contract: `ctx` may be used from whichever thread calls the OTA functions, and
// the engine's lock serialises the calls.
unsafe impl Send for CallbackStore {}

impl CallbackStore {
    /// Takes a copy of the table; `None` when a callback is NULL.
    pub fn new(table: &ota_breakpoint_store_t) -> Option<CallbackStore> {
        Some(CallbackStore {
            load: table.load?,
            save: table.save?,
            erase: table.erase?,
            ctx: table.ctx,
        })
    }
}

fn status(rc: c_int) -> Result<(), StoreError> {
    if rc < 0 {
        Err(StoreError::Callback(rc))
    } else {
        Ok(())
    }
}

impl BreakpointStore for CallbackStore {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let rc = unsafe { (self.load)(self.ctx, buf.as_mut_ptr(), len) };
        status(rc)?;
        if rc as u32 > len {
            return Err(StoreError::Overrun(rc));
        }
        Ok(rc as usize)
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len()).map_err(|_| StoreError::TooLarge {
            len: bytes.len(),
            max: u32::MAX as usize,
        })?;
        status(unsafe { (self.save)(self.ctx, bytes.as_ptr(), len) })
    }

    fn erase(&mut self) -> Result<(), StoreError> {
        status(unsafe { (self.erase)(self.ctx) })
    }
}

/// For `IOT_OTA_SetBreakpointStore`: copies and checks the caller's table.
///
/// # Safety
/// `store` is NULL or points to a readable `ota_breakpoint_store_t`.
pub(crate) unsafe fn callback_store(
    store: *const ota_breakpoint_store_t,
) -> Result<CallbackStore, Error> {
    if store.is_null() {
        return Err(Error::InvalidParam("store is NULL"));
    }
    // SAFETY: non-NULL, and per the contract readable.
    let table = unsafe { &*store };
    CallbackStore::new(table).ok_or(Error::InvalidParam("a store callback is NULL"))
}

/// For `IOT_OTA_SetBreakpointFile`: a file store at `path` (any bytes but NUL on Unix).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
pub(crate) unsafe fn file_store(path: *const c_char) -> Result<FileStore, Error> {
    if path.is_null() {
        return Err(Error::InvalidParam("path is NULL"));
    }
    // SAFETY: non-NULL, and per the contract NUL-terminated.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() || bytes.ends_with(b"/") {
        return Err(Error::InvalidParam("path is empty or names a directory"));
    }
    #[cfg(unix)]
    let path =
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path = std::path::Path::new(
        std::str::from_utf8(bytes).map_err(|_| Error::InvalidParam("path is not UTF-8"))?,
    );
    Ok(FileStore::new(path))
}

/// For `IOT_OTA_SetSaveInterval`: `bytes` and `percent` (0..=100), 0 disabling each; both 0
/// disables saving.
pub(crate) fn save_policy(bytes: u32, percent: u32) -> Result<SavePolicy, Error> {
    if percent > 100 {
        return Err(Error::InvalidParam("percent above 100"));
    }
    Ok(SavePolicy {
        every_bytes: bytes as u64,
        every_percent: percent as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::{Breakpoint, LoadError, RecordError, RECORD_LEN};

    /// A "flash sector" behind the C callbacks.
    struct Flash {
        bytes: [u8; 1024],
        len: usize,
        fail: bool,
        overrun: bool,
    }

    unsafe extern "C" fn load(ctx: *mut c_void, buf: *mut u8, buf_len: u32) -> c_int {
        // SAFETY (in the three callbacks): ctx is the test's Flash; buf holds buf_len (or len)
        // bytes, as the store promises.
        let f = unsafe { &mut *(ctx as *mut Flash) };
        if f.fail {
            return -5;
        }
        if f.overrun {
            return buf_len as c_int + 1;
        }
        let n = f.len.min(buf_len as usize);
        unsafe { std::ptr::copy_nonoverlapping(f.bytes.as_ptr(), buf, n) };
        n as c_int
    }

    unsafe extern "C" fn save(ctx: *mut c_void, buf: *const u8, len: u32) -> c_int {
        let f = unsafe { &mut *(ctx as *mut Flash) };
        if f.fail {
            return -7;
        }
        unsafe { std::ptr::copy_nonoverlapping(buf, f.bytes.as_mut_ptr(), len as usize) };
        f.len = len as usize;
        0
    }

    unsafe extern "C" fn erase(ctx: *mut c_void) -> c_int {
        let f = unsafe { &mut *(ctx as *mut Flash) };
        f.len = 0;
        0
    }

    fn record() -> Breakpoint {
        let mut n = crate::protocol::UpgradeNotice::new(&Default::default());
        n.version.set("1.2.3").unwrap();
        n.size = 4096;
        Breakpoint::for_upgrade(crate::protocol::Protocol::Tencent, &n).unwrap()
    }

    #[test]
    fn callbacks_save_load_erase_and_errors() {
        let mut flash = Flash {
            bytes: [0; 1024],
            len: 0,
            fail: false,
            overrun: false,
        };
        let table = ota_breakpoint_store_t {
            load: Some(load),
            save: Some(save),
            erase: Some(erase),
            ctx: &mut flash as *mut Flash as *mut c_void,
        };
        let mut store = unsafe { callback_store(&table) }.unwrap();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Missing))
        );
        let bp = record();
        bp.save(&mut store).unwrap();
        assert_eq!(Breakpoint::load(&mut store).unwrap(), bp);
        store.erase().unwrap();
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Record(RecordError::Missing))
        );

        let ctx = table.ctx as *mut Flash;
        unsafe { (*ctx).fail = true };
        assert_eq!(bp.save(&mut store), Err(StoreError::Callback(-7)));
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Store(StoreError::Callback(-5)))
        );
        unsafe {
            (*ctx).fail = false;
            (*ctx).overrun = true;
        }
        assert_eq!(
            Breakpoint::load(&mut store),
            Err(LoadError::Store(StoreError::Overrun(RECORD_LEN as i32 + 2)))
        );
    }

    #[test]
    fn argument_checks() {
        assert!(matches!(
            unsafe { callback_store(std::ptr::null()) },
            Err(Error::InvalidParam(_))
        ));
        let table = ota_breakpoint_store_t {
            load: Some(load),
            save: None,
            erase: Some(erase),
            ctx: std::ptr::null_mut(),
        };
        assert!(unsafe { callback_store(&table) }.is_err());
        assert!(unsafe { file_store(std::ptr::null()) }.is_err());
        assert!(unsafe { file_store(c"".as_ptr()) }.is_err());
        assert!(unsafe { file_store(c"/tmp/".as_ptr()) }.is_err());
        let fs = unsafe { file_store(c"/var/lib/ota/bp.bin".as_ptr()) }.unwrap();
        assert_eq!(
            fs.tmp_path(),
            std::path::Path::new("/var/lib/ota/bp.bin.tmp")
        );
        assert!(save_policy(0, 101).is_err());
        assert_eq!(
            save_policy(4096, 5).unwrap(),
            SavePolicy {
                every_bytes: 4096,
                every_percent: 5
            }
        );
        assert!(!save_policy(0, 0).unwrap().is_enabled());
    }
}
