//! The SDK's log: one line per event on stderr (or the firmware's `HAL_Printf`, when it defines
//! one), filtered by a process-wide level.
//!
//! Levels follow iotkit's `IOT_LogLevel` numbering so `IOT_SetLogLevel` maps one to one.

use std::sync::atomic::{AtomicU8, Ordering};

/// Log levels, iotkit numbering (`IOT_LOG_NONE` = 0 … `IOT_LOG_DEBUG` = 5).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As a filter: print nothing. Not a level to log at (such a line is never printed).
    None = 0,
    /// iotkit's `IOT_LOG_CRIT`: the SDK cannot go on (the engine itself logs nothing at it).
    Crit = 1,
    /// An operation failed (the default level prints it).
    Error = 2,
    /// Something went wrong and was recovered from, e.g. a lost connection; the default.
    Warning = 3,
    /// Milestones: connected, upgrade accepted, download done.
    Info = 4,
    /// Details for tracing a problem, e.g. each failed reconnection.
    Debug = 5,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warning as u8);
static OPEN: AtomicU8 = AtomicU8::new(1);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The current level.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => Level::None,
        1 => Level::Crit,
        2 => Level::Error,
        3 => Level::Warning,
        4 => Level::Info,
        _ => Level::Debug,
    }
}

/// Opens (true) or closes (false) the log; a closed log prints nothing whatever the level.
pub fn set_open(open: bool) {
    OPEN.store(open as u8, Ordering::Relaxed);
}

/// Whether a message of `level` would be printed now.
pub fn enabled(level: Level) -> bool {
    OPEN.load(Ordering::Relaxed) != 0 && level != Level::None && level <= self::level()
}

/// A destination tried before stderr: takes the tag, module and message, true when it took
/// the line.
pub type Sink = fn(&str, &str, std::fmt::Arguments<'_>) -> bool;

static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

/// Sends log lines to `sink` first (the C API installs the firmware's `HAL_Printf` this way the
/// first time firmware calls in); the first sink set stays.
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Writes one line; called by the macros. Formatting goes straight to the unbuffered stderr
/// handle (or a stack buffer for `HAL_Printf`), so logging does not allocate.
pub fn write(level: Level, module: &str, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let tag = match level {
        Level::None => "",
        Level::Crit => "crt",
        Level::Error => "err",
        Level::Warning => "wrn",
        Level::Info => "inf",
        Level::Debug => "dbg",
    };
    if SINK.get().is_some_and(|sink| sink(tag, module, args)) {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[{tag}] {module}: {args}");
}

/// `ota_log!(Level::Error, "what went wrong: {}", detail)`.
#[macro_export]
macro_rules! ota_log {
    ($lvl:expr, $($arg:tt)+) => {{
        let lvl = $lvl;
        if $crate::log::enabled(lvl) {
            $crate::log::write(lvl, module_path!(), format_args!($($arg)+));
        }
    }};
}
