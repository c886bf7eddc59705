//! The fuzz input read as a stream of decisions.

/// Reads decisions from the input; past its end every number is 0 and every slice empty, so a
/// short input is simply a short run.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Small values most of the time (what the API is usually called with), any value sometimes.
    pub fn u32_biased(&mut self) -> u32 {
        match self.u8() % 4 {
            0 => u32::MAX - u32::from(self.u8() % 4),
            1 => self.u32(),
            2 => u32::from(self.u16()),
            _ => u32::from(self.u8()),
        }
    }

    /// Like [`u32_biased`](Self::u32_biased), including negative values.
    pub fn i32_biased(&mut self) -> i32 {
        match self.u8() % 5 {
            0 => i32::MIN + i32::from(self.u8() % 2),
            1 => self.u32() as i32,
            2 => -i32::from(self.u8() % 8),
            3 => i32::MAX,
            _ => i32::from(self.u8()),
        }
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }

    /// A slice of at most `max` bytes: a length byte (u16 when `max` > 255), then the bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = if max > 255 {
            usize::from(self.u16())
        } else {
            usize::from(self.u8())
        };
        let start = self.pos.min(self.data.len());
        let n = want.min(max).min(self.data.len() - start);
        self.pos = start + n;
        &self.data[start..start + n]
    }
}
