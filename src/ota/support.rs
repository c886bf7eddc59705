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

/// `fmt::Write` into a fixed buffer; text that does not fit is cut (on a char boundary).
pub(super) struct TextWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> TextWriter<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Self {
        TextWriter { buf, len: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl std::fmt::Write for TextWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
