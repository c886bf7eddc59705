//! `IOT_OpenLog`, `IOT_CloseLog`, `IOT_SetLogLevel`, `IOT_DumpMemoryStats` over [`crate::log`].

#![allow(non_snake_case, non_camel_case_types)]

use std::ffi::{c_char, c_int};

use crate::log::{self, Level};
use crate::ota_log;

/// Log levels, least to most verbose. The log functions take them as `int` so that a value
/// outside this enum is reported, not undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IOT_LogLevel {
    /// As the level set: print nothing.
    IOT_LOG_NONE = 0,
    /// An SDK bug: a panic caught at the C boundary (the call returns its failure value); the
    /// SDK logs nothing else at this level.
    IOT_LOG_CRIT = 1,
    /// An operation failed.
    IOT_LOG_ERROR = 2,
    /// Something went wrong and was recovered from, e.g. a lost connection; the default level.
    IOT_LOG_WARNING = 3,
    /// Milestones: connected, upgrade accepted, download done.
    IOT_LOG_INFO = 4,
    /// Details for tracing a problem, e.g. each failed reconnection.
    IOT_LOG_DEBUG = 5,
}

const LEVELS: [(IOT_LogLevel, Level); 6] = {
    use IOT_LogLevel::*;
    [
        (IOT_LOG_NONE, Level::None),
        (IOT_LOG_CRIT, Level::Crit),
        (IOT_LOG_ERROR, Level::Error),
        (IOT_LOG_WARNING, Level::Warning),
        (IOT_LOG_INFO, Level::Info),
        (IOT_LOG_DEBUG, Level::Debug),
    ]
};

/// The `Level` for an `IOT_LogLevel` value from C, or `None` (and one error line) when out of
/// range.
fn level_from_c(func: &str, v: c_int) -> Option<Level> {
    let found = LEVELS
        .iter()
        .find(|(c, _)| *c as c_int == v)
        .map(|&(_, l)| l);
    if found.is_none() {
        ota_log!(
            Level::Error,
            "{func}: invalid level {v}, expected IOT_LOG_NONE (0) to IOT_LOG_DEBUG (5)"
        );
    }
    found
}

/// Resident set size of this process, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page_size)
}

/// Opens the SDK log (lines go to stderr, filtered by `IOT_SetLogLevel`).
///
/// - `ident`: the program's name in iotkit; accepted for compatibility and not used. May be
///   NULL.
///
/// # Safety
/// `ident` is NULL or a NUL-terminated string (not read today).
#[no_mangle]
pub unsafe extern "C" fn IOT_OpenLog(ident: *const c_char) {
    ffi_body!(IOT_OpenLog, {
        let _ = ident;
        log::set_open(true);
    })
}

/// Closes the SDK log: nothing is printed, whatever the level, until `IOT_OpenLog`.
#[no_mangle]
pub extern "C" fn IOT_CloseLog() {
    ffi_body!(IOT_CloseLog, {
        log::set_open(false);
    })
}

/// Sets the most verbose level printed (default `IOT_LOG_WARNING`).
///
/// - `level`: an `IOT_LogLevel` value. Any other value prints one error line and leaves the
///   level unchanged.
#[no_mangle]
pub extern "C" fn IOT_SetLogLevel(level: c_int) {
    ffi_body!(IOT_SetLogLevel, {
        if let Some(l) = level_from_c("IOT_SetLogLevel", level) {
            log::set_level(l);
        }
    })
}

/// Prints the process's resident memory (from `/proc/self/statm`) as one log line at `level`,
/// if that level is enabled.
///
/// - `level`: an `IOT_LogLevel` value. Any other value prints one error line instead.
#[no_mangle]
pub extern "C" fn IOT_DumpMemoryStats(level: c_int) {
    ffi_body!(IOT_DumpMemoryStats, {
        let Some(l) = level_from_c("IOT_DumpMemoryStats", level) else {
            return;
        };
        match resident_bytes() {
            Some(b) => ota_log!(l, "memory: resident {} KiB", b / 1024),
            None => ota_log!(l, "memory: /proc/self/statm unavailable"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn every_level_maps_and_invalid_ones_are_ignored() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = log::level();
        for (c, l) in LEVELS {
            IOT_SetLogLevel(c as c_int);
            assert_eq!(log::level(), l);
            assert_eq!(c as c_int, l as c_int);
        }
        for bad in [-1, 6, c_int::MAX] {
            IOT_SetLogLevel(bad);
            assert_eq!(log::level(), Level::Debug);
        }
        log::set_level(before);
    }

    #[test]
    fn open_and_close() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        IOT_CloseLog();
        assert!(!log::enabled(Level::Crit));
        unsafe { IOT_OpenLog(std::ptr::null()) };
        assert!(log::enabled(Level::Crit));
        unsafe { IOT_OpenLog(c"firmware".as_ptr()) };
        assert!(log::enabled(Level::Crit));
    }

    #[test]
    fn memory_stats() {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        assert!(resident_bytes().unwrap() > 0);
        IOT_DumpMemoryStats(IOT_LogLevel::IOT_LOG_CRIT as c_int);
        IOT_DumpMemoryStats(IOT_LogLevel::IOT_LOG_NONE as c_int);
        IOT_DumpMemoryStats(42);
    }
}
