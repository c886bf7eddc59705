//! Small fixed-capacity helpers of the engine.

use crate::protocol::{FixedStr, Limits};

/// The last version reported for each module (a few modules, sized at init).
pub(super) struct RunningVersions {
    pub(super) entries: Vec<(FixedStr, FixedStr)>,
    pub(super) used: usize,
}

/// Most modules one session tracks.
const MAX_MODULES: usize = 8;

impl RunningVersions {
    pub(super) fn new(limits: &Limits) -> RunningVersions {
        let entries = (0..MAX_MODULES)
            .map(|_| {
                (
                    FixedStr::with_capacity(limits.module.max(7)),
                    FixedStr::with_capacity(limits.version),
                )
            })
            .collect();
        RunningVersions { entries, used: 0 }
    }

    pub(super) fn get(&self, module: &str) -> Option<&str> {
        self.entries[..self.used]
            .iter()
            .find(|(m, _)| m.as_str() == module)
            .map(|(_, v)| v.as_str())
    }

    /// Remembers `version` for `module`; when the table is full the oldest module is replaced.
    pub(super) fn record(&mut self, module: &str, version: &str) {
        let i = match self.entries[..self.used]
            .iter()
            .position(|(m, _)| m.as_str() == module)
        {
            Some(i) => i,
            None if self.used < self.entries.len() => {
                self.used += 1;
                self.used - 1
            }
            None => {
                self.entries.rotate_left(1);
                self.entries.len() - 1
            }
        };
        let (m, v) = &mut self.entries[i];
        if m.set(module).is_err() || v.set(version).is_err() {
            m.clear();
            v.clear();
        }
    }
}

/// What is said at most once per upgrade, so firmware that repeats a refused call in its loop
/// gets one log line, not one per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// A failure report dropped because this upgrade's failure was already reported.
    DroppedReport,
    /// `fetch_yield` called after the cycle ended.
    EndedFetch,
    /// A "fetch failed" report held while the SDK recovers.
    HeldReport,
    /// A query for the digest the upgrade did not announce (MD5 of a SHA-256 upgrade).
    OtherDigest,
    /// A 0 % report dropped (the platform's range starts at 1).
    ZeroPercent,
    /// A download over plain `http://`: what protects the image.
    PlainHttp,
    /// Another session's kept image could not be streamed: the network instead.
    LocalFallback,
}

/// The [`Once`] lines already said in this upgrade.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Quiet(u8);

impl Quiet {
    /// True the first time `what` happens in this upgrade.
    pub(super) fn first(&mut self, what: Once) -> bool {
        let bit = 1u8 << what as u8;
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

/// A failure description built at run time, on the stack (cut on a character boundary).
pub(super) struct DescText {
    buf: [u8; 256],
    len: usize,
}

impl DescText {
    pub(super) fn new() -> DescText {
        DescText {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for DescText {
    /// Text that does not fit is cut, on a character boundary.
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = text.len().min(room);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&text.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
