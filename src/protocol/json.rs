//! Allocation-free JSON: a validating reader over borrowed bytes and a writer into a fixed buffer.
//!
//! The engine must not allocate after init, so nothing here uses `String`, `Vec` or `Box`.
//! [`Object::parse`] validates the whole text once (grammar, UTF-8, escapes, depth, duplicate
//! keys); accessors later re-walk the validated bytes instead of building a tree.

use core::fmt;

/// Deepest nesting of objects/arrays accepted (the top-level object counts as 1).
/// cbindgen:ignore
pub const MAX_DEPTH: usize = 16;

/// Why a text was rejected or an output did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, truncated, or trailing bytes after the value.
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The same key (after unescaping) twice in one object.
    DuplicateKey,
    /// Valid JSON whose top-level value is not an object.
    NotAnObject,
    /// A bad escape sequence or an invalid `\u` (e.g. a lone surrogate).
    Escape,
    /// The output buffer is too small.
    Overflow,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonError::Syntax => "malformed JSON",
            JsonError::TooDeep => "JSON nested too deeply",
            JsonError::DuplicateKey => "duplicate key",
            JsonError::NotAnObject => "JSON value is not an object",
            JsonError::Escape => "invalid escape in JSON string",
            JsonError::Overflow => "output buffer too small",
        })
    }
}

impl std::error::Error for JsonError {}

/// A JSON object whose whole text was validated at parse time.
#[derive(Clone, Copy, Debug)]
pub struct Object<'a> {
    raw: &'a [u8],
}

impl<'a> Object<'a> {
    /// `text` must be exactly one JSON object with optional surrounding whitespace. Validates the
    /// complete text and rejects duplicate keys at every level.
    pub fn parse(text: &'a [u8]) -> Result<Object<'a>, JsonError> {
        let mut p = Parser::new(text, 0, true);
        p.ws();
        let (start, first) = (p.i, p.peek());
        p.value(0)?;
        let end = p.i;
        p.ws();
        if p.i != text.len() {
            return Err(JsonError::Syntax);
        }
        if first != Some(b'{') {
            return Err(JsonError::NotAnObject);
        }
        let raw = text.get(start..end).ok_or(JsonError::Syntax)?;
        Ok(Object { raw })
    }

    /// The value of `key` (compared after unescaping), or `None` when absent.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.members().find(|(k, _)| k.eq_str(key)).map(|(_, v)| v)
    }

    /// The members in document order.
    pub fn members(&self) -> Members<'a> {
        Members {
            raw: self.raw,
            pos: 1,
        }
    }

    /// The object's exact source bytes, `{` .. `}`.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

/// Iterator over an [`Object`]'s `(key, value)` pairs.
#[derive(Clone, Debug)]
pub struct Members<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (Str<'a>, Value<'a>);

    /// Re-walks already validated text: no duplicate checks, and any error just means "done".
    fn next(&mut self) -> Option<Self::Item> {
        let mut p = Parser::new(self.raw, self.pos, false);
        self.pos = self.raw.len(); // fused unless a member is found below
        p.ws();
        if p.eat(b',') {
            p.ws();
        }
        let ks = p.i;
        if p.peek()? != b'"' || p.string().is_err() {
            return None;
        }
        let quoted = self.raw.get(ks..p.i)?;
        p.ws();
        if !p.eat(b':') {
            return None;
        }
        p.ws();
        let vs = p.i;
        p.value(0).ok()?;
        let value = make_value(self.raw.get(vs..p.i)?)?;
        self.pos = p.i;
        Some((Str { quoted }, value))
    }
}

/// Iterator over the values of a JSON array ([`Value::elements`]).
#[derive(Clone, Debug)]
pub struct Elements<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Value<'a>;

    /// Re-walks already validated text, as [`Members`] does.
    fn next(&mut self) -> Option<Self::Item> {
        let mut p = Parser::new(self.raw, self.pos, false);
        self.pos = self.raw.len();
        p.ws();
        if p.eat(b',') {
            p.ws();
        }
        if p.peek()? == b']' {
            return None;
        }
        let vs = p.i;
        p.value(0).ok()?;
        let value = make_value(self.raw.get(vs..p.i)?)?;
        self.pos = p.i;
        Some(value)
    }
}

/// One JSON value borrowed from validated text.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// A string, still escaped.
    Str(Str<'a>),
    /// The number's source text (validated against the JSON number grammar).
    Num(&'a [u8]),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A nested object, validated with the whole text.
    Object(Object<'a>),
    /// Raw source including the brackets.
    Array(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The string, or `None` for any other type.
    pub fn as_str(&self) -> Option<Str<'a>> {
        match self {
            Value::Str(s) => Some(*s),
            _ => None,
        }
    }

    /// The object, or `None` for any other type.
    pub fn as_object(&self) -> Option<Object<'a>> {
        match self {
            Value::Object(o) => Some(*o),
            _ => None,
        }
    }

    /// The array's values in document order, or `None` for any other type.
    pub fn elements(&self) -> Option<Elements<'a>> {
        match self {
            Value::Array(raw) => Some(Elements { raw, pos: 1 }),
            _ => None,
        }
    }

    /// Only plain digits (no sign, fraction, exponent; no leading zeros except "0") fitting `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.integer(false).and_then(|v| u64::try_from(v).ok())
    }

    /// Like [`Value::as_u64`] but allows a leading '-' and must fit `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.integer(true).and_then(|v| i64::try_from(v).ok())
    }

    /// i128 holds both the u64 and the i64 range, so one parser serves both.
    fn integer(&self, signed: bool) -> Option<i128> {
        let Value::Num(n) = self else { return None };
        let (neg, digits) = match n.split_first() {
            Some((b'-', rest)) if signed => (true, rest),
            _ => (false, *n),
        };
        // "0" or a non-zero first digit; 20 digits already exceed u64::MAX, so i128 cannot overflow.
        let shape = matches!(digits, [b'0'] | [b'1'..=b'9', ..]) && digits.len() <= 20;
        if !shape || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = digits.iter().fold(0, |v, d| v * 10 + i128::from(d - b'0'));
        Some(if neg { -v } else { v })
    }

    /// Exact source bytes of the value (strings including their quotes).
    pub fn raw(&self) -> &'a [u8] {
        match self {
            Value::Str(s) => s.quoted,
            Value::Num(n) | Value::Array(n) => n,
            Value::Bool(true) => b"true",
            Value::Bool(false) => b"false",
            Value::Null => b"null",
            Value::Object(o) => o.raw,
        }
    }

    /// The JSON type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Num(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
            Value::Object(_) => "object",
            Value::Array(_) => "array",
        }
    }
}

fn make_value(raw: &[u8]) -> Option<Value<'_>> {
    Some(match *raw.first()? {
        b'"' => Value::Str(Str { quoted: raw }),
        b'{' => Value::Object(Object { raw }),
        b'[' => Value::Array(raw),
        b't' => Value::Bool(true),
        b'f' => Value::Bool(false),
        b'n' => Value::Null,
        _ => Value::Num(raw),
    })
}

/// A JSON string as it appears in the source, escapes not yet decoded.
#[derive(Clone, Copy, Debug)]
pub struct Str<'a> {
    /// Source bytes including the quotes (validated: UTF-8, escapes, no raw controls).
    quoted: &'a [u8],
}

impl<'a> Str<'a> {
    /// The bytes between the quotes.
    pub fn raw(&self) -> &'a [u8] {
        let end = self.quoted.len().saturating_sub(1);
        self.quoted.get(1..end).unwrap_or(&[])
    }

    /// The text itself when it holds no escapes (saves callers a copy).
    pub fn as_plain(&self) -> Option<&'a str> {
        let raw = self.raw();
        if raw.contains(&b'\\') {
            return None;
        }
        core::str::from_utf8(raw).ok()
    }

    /// Decodes escapes into `out` and returns the decoded length. `Overflow` when it does not fit
    /// (`out` may be partially written), `Escape` for a lone surrogate.
    pub fn unescape_into(&self, out: &mut [u8]) -> Result<usize, JsonError> {
        let mut n = 0;
        for c in self.decode() {
            let mut tmp = [0u8; 4];
            let bytes = c?.encode_utf8(&mut tmp).as_bytes();
            let dst = out.get_mut(n..n + bytes.len()).ok_or(JsonError::Overflow)?;
            dst.copy_from_slice(bytes);
            n += bytes.len();
        }
        Ok(n)
    }

    /// Length in bytes after unescaping.
    pub fn decoded_len(&self) -> usize {
        self.chars().map(char::len_utf8).sum()
    }

    /// Compares with `s` after unescaping.
    pub fn eq_str(&self, s: &str) -> bool {
        match self.as_plain() {
            Some(p) => p == s,
            None => self.chars().eq(s.chars()),
        }
    }

    /// The decoded characters.
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        self.decode().map_while(Result::ok)
    }

    fn decode(&self) -> Decode<'a> {
        let rest = core::str::from_utf8(self.raw()).unwrap_or("");
        Decode { rest }
    }
}

/// Decodes string contents char by char. Escapes are ASCII, so skipping one stays on a char
/// boundary.
struct Decode<'a> {
    rest: &'a str,
}

impl Iterator for Decode<'_> {
    type Item = Result<char, JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut it = self.rest.chars();
        let c = it.next()?;
        if c != '\\' {
            self.rest = it.as_str();
            return Some(Ok(c));
        }
        let r = decode_escape(it.as_str().as_bytes());
        let used = r.map_or(self.rest.len(), |(_, used)| 1 + used);
        self.rest = self.rest.get(used..).unwrap_or("");
        Some(r.map(|(c, _)| c))
    }
}

/// Decodes one escape; `s` starts right after the backslash. Returns the char and the number of
/// bytes used from `s`.
fn decode_escape(s: &[u8]) -> Result<(char, usize), JsonError> {
    let c = match s.first().ok_or(JsonError::Syntax)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hi = hex4(s.get(1..5)).ok_or(JsonError::Escape)?;
            let (cp, used) = if (0xD800..0xDC00).contains(&hi) {
                // A high surrogate is only valid as the first half of a `\uD8xx\uDCxx` pair.
                let lo = match s.get(5..7) {
                    Some(b"\\u") => hex4(s.get(7..11)).ok_or(JsonError::Escape)?,
                    _ => return Err(JsonError::Escape),
                };
                if !(0xDC00..0xE000).contains(&lo) {
                    return Err(JsonError::Escape);
                }
                (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 11)
            } else {
                (hi, 5)
            };
            // from_u32 rejects a lone low surrogate.
            return char::from_u32(cp)
                .map(|c| (c, used))
                .ok_or(JsonError::Escape);
        }
        _ => return Err(JsonError::Escape),
    };
    Ok((c, 1))
}

fn hex4(s: Option<&[u8]>) -> Option<u32> {
    s?.iter()
        .try_fold(0, |v, &b| Some(v * 16 + char::from(b).to_digit(16)?))
}

/// Recursive-descent validator; `dups` enables duplicate-key checks (off when re-walking text
/// that was already validated).
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    dups: bool,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8], i: usize, dups: bool) -> Self {
        Parser { s, i, dups }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    fn eat_while(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.i - start
    }

    fn ws(&mut self) {
        self.eat_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    }

    /// `depth` = number of containers already open around this value.
    fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'{') => self.container(depth, b'}'),
            Some(b'[') => self.container(depth, b']'),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(JsonError::Syntax),
        }
    }

    /// An object (`close` = '}') or array (']'); the cursor is on the opening bracket.
    fn container(&mut self, depth: usize, close: u8) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let (start, object) = (self.i, close == b'}');
        self.i += 1;
        self.ws();
        if !self.eat(close) {
            loop {
                self.ws();
                if object {
                    if self.peek() != Some(b'"') {
                        return Err(JsonError::Syntax);
                    }
                    self.string()?;
                    self.ws();
                    if !self.eat(b':') {
                        return Err(JsonError::Syntax);
                    }
                    self.ws();
                }
                self.value(depth + 1)?;
                self.ws();
                if self.eat(close) {
                    break;
                }
                if !self.eat(b',') {
                    return Err(JsonError::Syntax);
                }
            }
        }
        if object && self.dups {
            let raw = self.s.get(start..self.i).ok_or(JsonError::Syntax)?;
            check_duplicates(Object { raw })?;
        }
        Ok(())
    }

    fn string(&mut self) -> Result<(), JsonError> {
        self.i += 1;
        let start = self.i;
        loop {
            let b = self.peek().ok_or(JsonError::Syntax)?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => self.i += decode_escape(self.s.get(self.i..).unwrap_or(&[]))?.1,
                0..=0x1f => return Err(JsonError::Syntax),
                _ => {}
            }
        }
        // Escapes are ASCII, so valid raw bytes mean the decoded text is valid UTF-8 too.
        let body = self.s.get(start..self.i - 1).ok_or(JsonError::Syntax)?;
        core::str::from_utf8(body).map_err(|_| JsonError::Syntax)?;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.s.get(self.i..self.i + word.len()) != Some(word) {
            return Err(JsonError::Syntax);
        }
        self.i += word.len();
        Ok(())
    }

    fn digits(&mut self) -> Result<(), JsonError> {
        match self.eat_while(|b| b.is_ascii_digit()) {
            0 => Err(JsonError::Syntax),
            _ => Ok(()),
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; what may follow is the caller's job.
    fn number(&mut self) -> Result<(), JsonError> {
        self.eat(b'-');
        if !self.eat(b'0') {
            if !matches!(self.peek(), Some(b'1'..=b'9')) {
                return Err(JsonError::Syntax);
            }
            self.digits()?;
        }
        if self.eat(b'.') {
            self.digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            self.digits()?;
        }
        Ok(())
    }
}

/// O(n^2) over one object's keys: messages are small and this needs no storage.
fn check_duplicates(obj: Object<'_>) -> Result<(), JsonError> {
    for (i, (a, _)) in obj.members().enumerate() {
        for (b, _) in obj.members().skip(i + 1) {
            let same = match (a.as_plain(), b.as_plain()) {
                (Some(x), Some(y)) => x == y,
                _ => a.chars().eq(b.chars()),
            };
            if same {
                return Err(JsonError::DuplicateKey);
            }
        }
    }
    Ok(())
}

/// Writes JSON into a caller's fixed buffer. Once anything does not fit, the writer remembers the
/// overflow and [`Writer::finish`] returns `Err(Overflow)`; nothing is ever written past the buffer.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl<'b> Writer<'b> {
    /// A writer that fills `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Writer {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Appends all of `b` or nothing; after an overflow everything is refused (sticky).
    fn put(&mut self, b: &[u8]) {
        if self.overflow {
            return;
        }
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    /// Verbatim text.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.put(s.as_bytes());
        self
    }

    /// Verbatim bytes (e.g. an embedded object).
    pub fn raw_bytes(&mut self, s: &[u8]) -> &mut Self {
        self.put(s);
        self
    }

    /// A quoted, escaped string: `"` `\` and control chars; everything else (UTF-8) verbatim.
    pub fn string(&mut self, s: &str) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.put(b"\"");
        let b = s.as_bytes();
        let mut run = 0; // start of the pending unescaped run, copied in one go
        for (i, &c) in b.iter().enumerate() {
            let esc = match c {
                b'"' | b'\\' => c,
                b'\n' => b'n',
                b'\r' => b'r',
                b'\t' => b't',
                0x08 => b'b',
                0x0c => b'f',
                0..=0x1f => b'u',
                _ => continue,
            };
            self.put(b.get(run..i).unwrap_or(&[]));
            run = i + 1;
            self.put(&[b'\\', esc]);
            if esc == b'u' {
                let lo = HEX[usize::from(c & 15)];
                self.put(&[b'0', b'0', b'0' + (c >> 4), lo]); // c < 0x20: high digit is 0 or 1
            }
        }
        self.put(b.get(run..).unwrap_or(&[]));
        self.put(b"\"");
        self
    }

    /// A quoted, escaped string of at most `max_chars` Unicode chars (cut on a char boundary).
    pub fn string_truncated(&mut self, s: &str, max_chars: usize) -> &mut Self {
        let cut = s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i);
        self.string(s.get(..cut).unwrap_or(s))
    }

    /// Decimal, without `format!` (which would need a `fmt::Write` target anyway).
    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(tmp.get(i..).unwrap_or(&[]));
        self
    }

    /// Decimal with a leading `-` when negative.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.put(b"-");
        }
        self.u64(v.unsigned_abs())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Bytes written, or `Overflow` if anything did not fit.
    pub fn finish(&self) -> Result<usize, JsonError> {
        if self.overflow {
            Err(JsonError::Overflow)
        } else {
            Ok(self.len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JsonError::*;
    use super::*;

    const ALIYUN: &[u8] = br#"{"code":"1000","data":{"size":432945,"version":"2.0.0","url":"https://h/f?a=1&b=%3D","md5":"93230c3bde425a9d7984a594ac55ea1e"},"id":1507707025,"message":"success"}"#;
    const TENCENT: &[u8] = br#"{"file_size":708482,"md5sum":"36eb5951179db14a631463a37a9322a2","type":"update_firmware","url":"https://x","version":"0.2"}"#;
    const SAGOO: &[u8] = br#"{"code":"1000","data":{"size":100,"version":"1.1","url":"http://s/f","md5":"ab","module":"default","extData":{"key1":"value1","_package_udi":"{\"ota_notice\":\"x\"}"}},"id":"7","message":"success"}"#;
    const UCLOUD: &[u8] = br#"{"Method":"notify","Payload":{"Version":"1.0","CurrentVersion":"0.1","Module":"module_a","URL":"http://x","MD5":"aa30","Size":1024,"TaskID":"1"}}"#;

    fn err(s: &str) -> JsonError {
        Object::parse(s.as_bytes()).unwrap_err()
    }

    /// Parses `{"v":<inner>}` (built with the Writer) and applies `f` to the value of "v".
    fn with_v<R>(inner: &str, f: impl FnOnce(Value<'_>) -> R) -> Result<R, JsonError> {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let n = w.raw("{\"v\":").raw(inner).raw("}").finish();
        Ok(f(Object::parse(&buf[..n.unwrap()])?.get("v").unwrap()))
    }

    #[test]
    fn array_elements_in_order() {
        let text = br#"{"a":[ {"n":"x","k":[1,2]} , "s",3,[],null ],"e":[ ],"o":{}}"#;
        let o = Object::parse(text).unwrap();
        let kinds: Vec<&str> = o
            .get("a")
            .unwrap()
            .elements()
            .unwrap()
            .map(|v| v.kind())
            .collect();
        assert_eq!(kinds, ["object", "string", "number", "array", "null"]);
        let first = o.get("a").unwrap().elements().unwrap().next().unwrap();
        assert!(first
            .as_object()
            .unwrap()
            .get("n")
            .unwrap()
            .as_str()
            .unwrap()
            .eq_str("x"));
        assert_eq!(o.get("e").unwrap().elements().unwrap().count(), 0);
        assert!(o.get("o").unwrap().elements().is_none());
    }

    fn sub<'a>(o: Object<'a>, key: &str) -> Object<'a> {
        o.get(key).unwrap().as_object().unwrap()
    }

    /// Unescapes string member `key` into `buf`, checking that `decoded_len` agrees.
    fn text<'b>(o: Object<'_>, key: &str, buf: &'b mut [u8]) -> &'b str {
        let s = o.get(key).unwrap().as_str().unwrap();
        let n = s.unescape_into(buf).unwrap();
        assert_eq!(n, s.decoded_len());
        core::str::from_utf8(&buf[..n]).unwrap()
    }

    #[test]
    fn aliyun_notification() {
        let (o, b) = (Object::parse(ALIYUN).unwrap(), &mut [0u8; 64]);
        assert_eq!(text(o, "code", b), "1000");
        assert_eq!(o.get("id").unwrap().as_u64(), Some(1507707025));
        assert_eq!(text(o, "message", b), "success");
        let d = sub(o, "data");
        assert_eq!(d.get("size").unwrap().as_u64(), Some(432945));
        assert_eq!(text(d, "version", b), "2.0.0");
        assert_eq!(text(d, "url", b), "https://h/f?a=1&b=%3D");
        assert_eq!(text(d, "md5", b), "93230c3bde425a9d7984a594ac55ea1e");
    }

    #[test]
    fn tencent_notification() {
        let (o, b) = (Object::parse(TENCENT).unwrap(), &mut [0u8; 64]);
        assert_eq!(o.get("file_size").unwrap().as_u64(), Some(708482));
        assert_eq!(text(o, "md5sum", b), "36eb5951179db14a631463a37a9322a2");
        assert_eq!(text(o, "type", b), "update_firmware");
        assert_eq!(text(o, "url", b), "https://x");
        assert_eq!(text(o, "version", b), "0.2");
    }

    #[test]
    fn sagoo_ext_data() {
        let (o, b) = (Object::parse(SAGOO).unwrap(), &mut [0u8; 64]);
        let ext = sub(sub(o, "data"), "extData");
        let want: &[u8] = br#"{"key1":"value1","_package_udi":"{\"ota_notice\":\"x\"}"}"#;
        assert_eq!(ext.raw(), want);
        assert_eq!(text(ext, "key1", b), "value1");
        let udi = text(ext, "_package_udi", b);
        assert_eq!(udi, r#"{"ota_notice":"x"}"#);
        let inner = Object::parse(udi.as_bytes()).unwrap(); // the decoded string is JSON itself
        assert_eq!(text(inner, "ota_notice", &mut [0; 8]), "x");
    }

    #[test]
    fn ucloud_notification() {
        let (o, b) = (Object::parse(UCLOUD).unwrap(), &mut [0u8; 64]);
        assert_eq!(text(o, "Method", b), "notify");
        let pl = sub(o, "Payload");
        assert_eq!(pl.get("Size").unwrap().as_u64(), Some(1024));
        assert_eq!(text(pl, "Module", b), "module_a");
        assert_eq!(text(pl, "URL", b), "http://x");
        assert_eq!(text(pl, "TaskID", b), "1");
        assert_eq!(text(pl, "CurrentVersion", b), "0.1");
    }

    #[test]
    fn escapes_decode() {
        let cases = [
            (r#""http:\/\/h""#, "http://h"),
            (r#""\"\\\b\f\n\r\t""#, "\"\\\u{8}\u{c}\n\r\t"),
            (r#""caf\u00e9""#, "café"),
            (r#""\u00E9""#, "é"),
            (r#""\ud83d\ude00!""#, "😀!"),
            (r#""h\u00e9llo 😀""#, "héllo 😀"),
        ];
        for (src, want) in cases {
            let got = with_v(src, |v| {
                let mut b = [0u8; 32];
                let n = v.as_str().unwrap().unescape_into(&mut b).unwrap();
                b[..n] == *want.as_bytes() && v.as_str().unwrap().eq_str(want)
            });
            assert_eq!(got, Ok(true), "{src}");
        }
    }

    #[test]
    fn lone_surrogates_rejected() {
        for s in r#""\ud83d" "\ude00" "\ud83dx" "\ud83d\u0041" "\udbff\ud800""#.split(' ') {
            assert_eq!(with_v(s, |_| ()), Err(Escape), "{s}");
        }
    }

    #[test]
    fn bad_escapes_rejected() {
        for s in r#""\x" "\u00g0" "\u12" "\U0041" "\'" "\u-123""#.split(' ') {
            assert_eq!(with_v(s, |_| ()), Err(Escape), "{s}");
        }
    }

    #[test]
    fn raw_utf8_in_strings() {
        let o = Object::parse("{\"v\":\"héllo 😀\"}".as_bytes()).unwrap();
        let s = o.get("v").unwrap().as_str().unwrap();
        assert_eq!(s.as_plain(), Some("héllo 😀"));
        assert_eq!((s.eq_str("héllo 😀"), s.chars().count()), (true, 7));
    }

    #[test]
    fn invalid_utf8_rejected() {
        for bad in [
            &b"\xff"[..],
            b"\xc3",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"a\x80",
        ] {
            let mut buf = [0u8; 16];
            let mut w = Writer::new(&mut buf);
            let n = w.raw("{\"v\":\"").raw_bytes(bad).raw("\"}").finish();
            assert_eq!(Object::parse(&buf[..n.unwrap()]).unwrap_err(), Syntax);
        }
    }

    #[test]
    fn control_char_in_string_rejected() {
        for c in 0u8..0x20 {
            let in_value = [b'{', b'"', b'v', b'"', b':', b'"', c, b'"', b'}'];
            let in_key = [b'{', b'"', c, b'"', b':', b'1', b'}'];
            assert_eq!(Object::parse(&in_value).unwrap_err(), Syntax);
            assert_eq!(Object::parse(&in_key).unwrap_err(), Syntax);
        }
    }

    #[test]
    fn every_truncation_fails() {
        for msg in [ALIYUN, TENCENT, SAGOO, UCLOUD] {
            for n in 0..msg.len() {
                assert!(Object::parse(&msg[..n]).is_err(), "prefix {n} parsed");
            }
            assert!(Object::parse(msg).is_ok());
        }
    }

    #[test]
    fn trailing_garbage_rejected() {
        for s in [r#"{"a":1}x"#, r#"{"a":1}{}"#, r#"{"a":1} ,"#, "{}\0", "{}}"] {
            assert_eq!(err(s), Syntax, "{s}");
        }
    }

    #[test]
    fn surrounding_whitespace_ok() {
        let o = Object::parse(b" \t\r\n{ \"a\" :\n1 , \"b\":[ 1 , 2 ] }\n ").unwrap();
        assert_eq!(o.raw(), b"{ \"a\" :\n1 , \"b\":[ 1 , 2 ] }");
        assert_eq!(o.get("a").unwrap().as_u64(), Some(1));
        assert_eq!(o.get("b").unwrap().raw(), b"[ 1 , 2 ]");
    }

    #[test]
    fn not_an_object() {
        for s in ["[1]", "\"x\"", " 5 ", "null", "[]"] {
            assert_eq!(err(s), NotAnObject, "{s}");
        }
        assert_eq!(err("[1"), Syntax);
    }

    #[test]
    fn empty_input_rejected() {
        assert_eq!(err(""), Syntax);
        assert_eq!(err("  \n"), Syntax);
        assert_eq!(err("\u{c}{}"), Syntax); // form feed is not JSON whitespace
    }

    #[test]
    fn structural_errors() {
        let bad =
            r#"{"a":1,} {"a":[1,]} {"a"1} {a:1} {"a":1"b":2} {,"a":1} {"a":} {"a":1] {'a':1}"#;
        for s in bad.split(' ').chain([r#"{"a":[1}"#, "{\"a\":1,,\"b\":2}"]) {
            assert_eq!(err(s), Syntax, "{s}");
        }
    }

    #[test]
    fn literals() {
        let o = Object::parse(br#"{"t":true,"f":false,"n":null}"#).unwrap();
        assert!(matches!(o.get("t"), Some(Value::Bool(true))));
        assert!(matches!(o.get("f"), Some(Value::Bool(false))));
        assert!(matches!(o.get("n"), Some(Value::Null)));
        for s in "tru nul truex True nulll fals".split(' ') {
            assert_eq!(with_v(s, |_| ()), Err(Syntax), "{s}");
        }
    }

    #[test]
    fn duplicate_keys_rejected() {
        let dups =
            r#"{"a":1,"b":2,"a":3} {"x":{"a":1,"a":2}} {"x":[{"k":1,"k":1}]} {"\/":1,"/":2}"#;
        for s in dups.split(' ').chain([r#"{"a":1,"\u0061":2}"#]) {
            assert_eq!(err(s), DuplicateKey, "{s}");
        }
    }

    #[test]
    fn same_key_in_different_objects_ok() {
        let o = Object::parse(br#"{"a":{"a":1},"b":{"a":2},"ab":3,"A":4}"#).unwrap();
        assert_eq!(o.members().count(), 4);
        assert_eq!(sub(o, "b").get("a").unwrap().as_u64(), Some(2));
    }

    #[test]
    fn depth_limit() {
        // `{"a":` * n, `1`, `}` * n
        let nested = |n: usize, buf: &mut [u8; 256]| {
            let mut w = Writer::new(buf);
            (0..n).for_each(|_| _ = w.raw("{\"a\":"));
            w.raw("1");
            (0..n).for_each(|_| _ = w.raw("}"));
            w.finish().unwrap()
        };
        let buf = &mut [0u8; 256];
        let n = nested(16, buf);
        let mut cur = Object::parse(&buf[..n]).unwrap();
        for _ in 0..15 {
            cur = sub(cur, "a");
        }
        assert_eq!(cur.get("a").unwrap().as_u64(), Some(1));
        let n = nested(17, buf);
        assert_eq!(Object::parse(&buf[..n]).unwrap_err(), TooDeep);
    }

    #[test]
    fn arrays_count_toward_depth() {
        assert!(Object::parse(b"{\"a\":[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}").is_ok());
        assert_eq!(err("{\"a\":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}"), TooDeep);
    }

    #[test]
    fn numbers_rejected() {
        for s in "01 1. - 1e +1 .5 1.e3 -01 1e+ 0x1 --1 1..2 00 -a 1e1.5".split(' ') {
            assert_eq!(with_v(s, |_| ()), Err(Syntax), "{s}");
        }
    }

    #[test]
    fn numbers_accepted() {
        for s in "-0.5e+3 0 -0 1E9 1e-2 123.456 0.0 1E+0 -10e007".split(' ') {
            let r = with_v(s, |v| v.raw() == s.as_bytes() && v.kind() == "number");
            assert_eq!(r, Ok(true), "{s}");
        }
    }

    #[test]
    fn as_u64_rules() {
        assert_eq!(
            with_v("18446744073709551615", |v| v.as_u64()),
            Ok(Some(u64::MAX))
        );
        assert_eq!(with_v("0", |v| v.as_u64()), Ok(Some(0)));
        for s in "18446744073709551616 \"5\" 5.0 5e0 -5 -0 123456789012345678901234 null".split(' ')
        {
            assert_eq!(with_v(s, |v| v.as_u64()), Ok(None), "{s}");
        }
    }

    #[test]
    fn as_i64_rules() {
        assert_eq!(
            with_v("-9223372036854775808", |v| v.as_i64()),
            Ok(Some(i64::MIN))
        );
        assert_eq!(
            with_v("9223372036854775807", |v| v.as_i64()),
            Ok(Some(i64::MAX))
        );
        assert_eq!(with_v("-1", |v| v.as_i64()), Ok(Some(-1)));
        assert_eq!(with_v("-0", |v| v.as_i64()), Ok(Some(0)));
        for s in "9223372036854775808 -9223372036854775809 -1.5 true \"-1\" -1e2".split(' ') {
            assert_eq!(with_v(s, |v| v.as_i64()), Ok(None), "{s}");
        }
    }

    #[test]
    fn kinds_and_raw() {
        let src = br#"{"s":"a\"b","n":-1.5,"b":true,"z":null,"o":{"x":[]},"a":[1,{"y":2}]}"#;
        let o = Object::parse(src).unwrap();
        let kinds = ["string", "number", "boolean", "null", "object", "array"];
        let raws = r#""a\"b" -1.5 true null {"x":[]} [1,{"y":2}]"#.split(' ');
        for (((_, v), k), r) in o.members().zip(kinds).zip(raws) {
            assert_eq!((v.kind(), v.raw()), (k, r.as_bytes()));
        }
        assert_eq!(o.get("s").unwrap().as_str().unwrap().raw(), br#"a\"b"#);
        assert!(matches!(o.get("a"), Some(Value::Array(a)) if a == br#"[1,{"y":2}]"#));
        assert!(o.get("a").unwrap().as_object().is_none());
        assert!(o.get("o").unwrap().as_str().is_none());
    }

    #[test]
    fn members_in_document_order() {
        let o = Object::parse(TENCENT).unwrap();
        let mut keys = o.members().map(|(k, _)| k);
        for want in ["file_size", "md5sum", "type", "url", "version"] {
            assert!(keys.next().unwrap().eq_str(want));
        }
        assert!(keys.next().is_none() && keys.next().is_none());
    }

    #[test]
    fn empty_containers() {
        let o = Object::parse(b"{ }").unwrap();
        assert_eq!((o.members().count(), o.raw()), (0, &b"{ }"[..]));
        assert!(o.get("").is_none());
        let o = Object::parse(br#"{"":{},"e":[]}"#).unwrap();
        assert_eq!(sub(o, "").raw(), b"{}");
        assert_eq!(o.get("e").unwrap().raw(), b"[]");
    }

    #[test]
    fn absent_key_is_none() {
        let o = Object::parse(ALIYUN).unwrap();
        for k in ["size", "cod", "codes", "Code", ""] {
            assert!(o.get(k).is_none(), "{k}"); // "size" is nested, not top level
        }
    }

    #[test]
    fn get_matches_escaped_keys() {
        let o = Object::parse(br#"{"k\u00e9y":1,"a\/b":2}"#).unwrap();
        assert_eq!(o.get("kéy").unwrap().as_u64(), Some(1));
        assert_eq!(o.get("a/b").unwrap().as_u64(), Some(2));
        assert!(o.get("k\\u00e9y").is_none());
    }

    #[test]
    fn str_helpers() {
        let o = Object::parse(br#"{"v":"a\u00e9\n\ud83d\ude00"}"#).unwrap();
        let s = o.get("v").unwrap().as_str().unwrap();
        assert_eq!(s.decoded_len(), 1 + 2 + 1 + 4);
        assert!(s.as_plain().is_none());
        assert!(s.eq_str("aé\n😀") && !s.eq_str("aé\n") && !s.eq_str("aé\n😀x"));
        let mut it = s.chars();
        for want in ['a', 'é', '\n', '😀'] {
            assert_eq!(it.next(), Some(want));
        }
        assert_eq!(it.next(), None);
    }

    #[test]
    fn unescape_overflow() {
        let o = Object::parse(br#"{"v":"ab\u00e9","e":""}"#).unwrap();
        let s = o.get("v").unwrap().as_str().unwrap();
        let mut exact = [0u8; 4];
        assert_eq!(s.unescape_into(&mut exact), Ok(4));
        assert_eq!(&exact, "abé".as_bytes());
        assert_eq!(s.unescape_into(&mut [0; 3]), Err(Overflow)); // 'é' would straddle the end
        assert_eq!(s.unescape_into(&mut []), Err(Overflow));
        assert_eq!(
            o.get("e").unwrap().as_str().unwrap().unescape_into(&mut []),
            Ok(0)
        );
    }

    #[test]
    fn error_display() {
        assert_eq!(Syntax.to_string(), "malformed JSON");
        assert_eq!(DuplicateKey.to_string(), "duplicate key");
        assert_eq!(Overflow.to_string(), "output buffer too small");
        for e in [TooDeep, NotAnObject, Escape] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn writer_escapes() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        w.string("\"\\\n\u{1}");
        assert_eq!(w.written(), br#""\"\\\n\u0001""#);
        let mut w = Writer::new(&mut buf);
        w.string("a\u{8}\u{c}\r\t\u{1f}\u{7f}é/");
        assert_eq!(w.written(), "\"a\\b\\f\\r\\t\\u001f\u{7f}é/\"".as_bytes());
    }

    #[test]
    fn writer_round_trip() {
        let all = "q\"b\\s\u{0}\u{1f}é😀\n";
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        w.raw("{").string("k").raw(":").string(all);
        w.raw(",\"n\":").i64(-42);
        let n = w.raw(",\"o\":").raw_bytes(br#"{"x":1}"#).raw("}").finish();
        let o = Object::parse(&buf[..n.unwrap()]).unwrap();
        assert!(o.get("k").unwrap().as_str().unwrap().eq_str(all));
        assert_eq!(o.get("n").unwrap().as_i64(), Some(-42));
        assert_eq!(sub(o, "o").raw(), br#"{"x":1}"#);
    }
    #[test]
    fn writer_overflow_never_writes_past_buffer() {
        let mut outer = [0xAAu8; 32];
        let mut w = Writer::new(&mut outer[..10]);
        w.raw("{\"abc\":").string("long value here").raw("}");
        assert_eq!(w.finish(), Err(Overflow));
        assert_eq!(w.len(), 8); // `{"abc":"` fitted, the long text did not
        w.raw("x"); // would fit, but the overflow is sticky
        assert_eq!((w.finish(), w.len()), (Err(Overflow), 8));
        assert!(outer[10..].iter().all(|&b| b == 0xAA));
        assert_eq!(&outer[..8], b"{\"abc\":\"");
    }

    #[test]
    fn writer_overflow_every_size() {
        fn emit(w: &mut Writer<'_>) -> Result<usize, JsonError> {
            w.raw("{\"a\":").string("x\ny\u{2}");
            w.raw(",\"n\":").i64(-12345).raw("}").finish()
        }
        let need = emit(&mut Writer::new(&mut [0u8; 64])).unwrap();
        for cap in 0..need {
            let mut outer = [0x55u8; 64];
            assert_eq!(emit(&mut Writer::new(&mut outer[..cap])), Err(Overflow));
            assert!(outer[cap..].iter().all(|&b| b == 0x55), "cap {cap}");
        }
        assert_eq!(emit(&mut Writer::new(&mut [0u8; 64][..need])), Ok(need));
    }

    #[test]
    fn writer_numbers() {
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        assert!(w.is_empty());
        w.u64(u64::MAX).raw(" ").u64(0).raw(" ");
        w.i64(i64::MIN).raw(" ").i64(i64::MAX).raw(" ");
        w.i64(-7).raw(" ").i64(0).raw(" ").u64(10);
        let want = "18446744073709551615 0 -9223372036854775808 9223372036854775807 -7 0 10";
        assert_eq!(w.written(), want.as_bytes());
        assert_eq!(w.finish(), Ok(want.len()));
    }

    #[test]
    fn writer_string_truncated() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        w.string_truncated("héé world", 3);
        assert_eq!(w.written(), "\"héé\"".as_bytes());
        let mut w = Writer::new(&mut buf);
        w.string_truncated("éa", 1).string_truncated("ab", 5);
        w.string_truncated("xyz", 0);
        assert_eq!(w.written(), "\"é\"\"ab\"\"\"".as_bytes());
    }

    #[test]
    fn writer_string_truncated_counts_chars_not_bytes() {
        let mut src = [0u8; 400];
        for pair in src.chunks_mut(2) {
            pair.copy_from_slice("é".as_bytes());
        }
        let (desc, mut buf) = (core::str::from_utf8(&src).unwrap(), [0u8; 512]);
        let n = Writer::new(&mut buf).string_truncated(desc, 128).finish();
        assert_eq!(n, Ok(2 + 128 * 2));
        let s = core::str::from_utf8(&buf[1..1 + 128 * 2]).unwrap();
        assert_eq!(s.chars().count(), 128);
    }

    /// Exercises every accessor on a parsed object; must never panic.
    fn walk(o: Object<'_>, out: &mut [u8]) {
        for (k, v) in o.members() {
            assert!(k.chars().count() <= k.decoded_len());
            let _ = (k.unescape_into(out), v.as_u64(), v.as_i64());
            assert!(!v.raw().is_empty() && !v.kind().is_empty());
            if let Some(s) = v.as_str() {
                let n = s.unescape_into(out).unwrap_or(0);
                assert!(core::str::from_utf8(&out[..n]).is_ok());
            }
            if let Some(inner) = v.as_object() {
                walk(inner, out);
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        const ALPHABET: &[u8] = b"{}[]\":,\\u0123456789eE+-.tfn \x00\x1f\x80\xc3\xff";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let (mut ok, mut out) = (0, [0u8; 512]);
        for round in 0..6000 {
            let src = [ALIYUN, TENCENT, SAGOO, UCLOUD][round % 4];
            let mut buf = [0u8; 320];
            buf[..src.len()].copy_from_slice(src);
            let mut len = src.len();
            for _ in 0..1 + rnd() % 4 {
                let pos = rnd() % len;
                let byte = match rnd() % 2 {
                    0 => ALPHABET[rnd() % ALPHABET.len()],
                    _ => rnd() as u8,
                };
                match rnd() % 4 {
                    0 => buf[pos] = byte,
                    1 if len > 1 => {
                        buf.copy_within(pos + 1..len, pos);
                        len -= 1;
                    }
                    2 if len < buf.len() => {
                        buf.copy_within(pos..len, pos + 1);
                        buf[pos] = byte;
                        len += 1;
                    }
                    _ => len = pos.max(1),
                }
            }
            if let Ok(o) = Object::parse(&buf[..len]) {
                ok += 1;
                assert_eq!(o.raw().first(), Some(&b'{'));
                walk(o, &mut out);
            }
        }
        assert!(ok > 0, "some mutations should stay valid");
    }
}
