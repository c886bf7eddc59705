//! libota's log lines to the firmware's `HAL_Printf`, when the firmware replaced libota's weak
//! default (as iotkit's log does); to stderr otherwise. The panic guard installs this sink on
//! every entry from C, so this file depends on nothing else in `ffi/` (no import cycle with the
//! guard, which the HAL shims use).

#![allow(non_snake_case)]

use std::ffi::{c_char, c_int};
use std::fmt::{self, Write};

// Weak defaults in hal_default.c; a firmware definition of `HAL_Printf` replaces libota's.
extern "C" {
    /// Prints a `printf` format. Default: `vprintf` to stdout, then `fflush`.
    ///
    /// A firmware definition also receives libota's own log lines (one call per line, format
    /// `"%s\n"`), from any thread that calls into libota or that libota runs; it must not call
    /// back into libota.
    pub fn HAL_Printf(fmt: *const c_char, ...);

    /// 1 while `HAL_Printf` is libota's default (internal; not in the header).
    fn ota_hal_printf_is_default() -> c_int;
}

/// Longest log line handed to the firmware's `HAL_Printf`, NUL included; longer lines are cut.
const LOG_LINE_MAX: usize = 512;

/// One log line being formatted on the stack, cut at a character boundary when it is full.
struct LogLine {
    buf: [u8; LOG_LINE_MAX],
    len: usize,
}

impl Write for LogLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOG_LINE_MAX - 1 - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        // A NUL would end the C string early: shown as a space.
        for (dst, &b) in self.buf[self.len..self.len + take]
            .iter_mut()
            .zip(s.as_bytes())
        {
            *dst = if b == 0 { b' ' } else { b };
        }
        self.len += take;
        Ok(())
    }
}

/// Hands one log line to the firmware's `HAL_Printf`, if the firmware defined one; false when
/// `HAL_Printf` is libota's default (the caller writes to stderr instead).
pub(crate) fn log_to_firmware(tag: &str, module: &str, args: fmt::Arguments<'_>) -> bool {
    // SAFETY: no arguments, no preconditions.
    if unsafe { ota_hal_printf_is_default() } != 0 {
        return false;
    }
    let mut line = LogLine {
        buf: [0; LOG_LINE_MAX],
        len: 0,
    };
    let _ = write!(line, "[{tag}] {module}: {args}");
    line.buf[line.len] = 0;
    // SAFETY: "%s\n" takes one NUL-terminated string, and line.buf ends in a NUL.
    unsafe { HAL_Printf(c"%s\n".as_ptr(), line.buf.as_ptr() as *const c_char) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_printf_is_recognised() {
        // Unit tests define no HAL_Printf: the log stays on stderr.
        assert_ne!(unsafe { ota_hal_printf_is_default() }, 0);
        assert!(!log_to_firmware("err", "hal", format_args!("not sent")));
    }

    #[test]
    fn a_long_log_line_is_cut_at_a_character_boundary() {
        let mut line = LogLine {
            buf: [0; LOG_LINE_MAX],
            len: 0,
        };
        let long = "é".repeat(LOG_LINE_MAX);
        write!(line, "a\0{long}").unwrap();
        assert_eq!(line.len, LOG_LINE_MAX - 2);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(text.starts_with("a é"));
    }
}
