//! The compressions a detools patch may name in its first byte.

/// The compressions detools defines, by their number in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// 0: the stream is stored as is.
    None,
    /// 1: LZMA ("alone" format).
    Lzma,
    /// 2: detools' own run-length encoding.
    Crle,
    /// 3: bzip2.
    Bz2,
    /// 4: heatshrink (LZSS), its window and lookahead in the byte after the header.
    Heatshrink,
    /// 5: Zstandard.
    Zstd,
    /// 6: LZ4.
    Lz4,
}

impl Compression {
    /// The compression of header number `code`, if detools defines one.
    pub fn from_code(code: u8) -> Option<Compression> {
        Some(match code {
            0 => Compression::None,
            1 => Compression::Lzma,
            2 => Compression::Crle,
            3 => Compression::Bz2,
            4 => Compression::Heatshrink,
            5 => Compression::Zstd,
            6 => Compression::Lz4,
            _ => return None,
        })
    }

    /// Its number in the header.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Its name on detools' command line (`--compression`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lzma => "lzma",
            Compression::Crle => "crle",
            Compression::Bz2 => "bz2",
            Compression::Heatshrink => "heatshrink",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    /// Whether [`PatchApplier`](super::PatchApplier) decodes it.
    pub fn is_supported(self) -> bool {
        matches!(self, Compression::None | Compression::Heatshrink)
    }
}

impl core::fmt::Display for Compression {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
