//! The allocation-free JSON reader and writer (`ota::protocol::json`) on arbitrary text.
//!
//! Input: one byte giving an output-buffer length, then the text. The reader is compared with
//! a small independent parser (same rules: RFC 8259, UTF-8, no lone surrogates, depth 16, no
//! duplicate keys): they must agree on acceptance, on every member, value span and decoded
//! string. Every accessor runs on every value, `unescape_into` and `FixedStr::set_json` get the
//! arbitrary length, and the `Writer` writes into buffers of every interesting size, never past
//! them, producing text the reader reads back.

use ota::protocol::json::{JsonError, Object, Str, Value, Writer, MAX_DEPTH};
use ota::protocol::FixedStr;

/// Bytes after every buffer handed to the code under test; they must stay untouched.
const GUARD: usize = 16;
const FILL: u8 = 0x5A;

pub fn run(data: &[u8]) {
    let Some((&out_len, text)) = data.split_first() else {
        return;
    };
    let out_len = usize::from(out_len);
    let model = model::parse(text);
    match Object::parse(text) {
        Ok(obj) => {
            let Some(model::Node::Obj(members)) = model.as_ref().ok().map(|n| &n.node) else {
                panic!("accepted text the model rejects ({model:?})");
            };
            assert_eq!(obj.raw(), trim(text));
            walk(obj, members, text, out_len, 1);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match (&model, e) {
                (Ok(top), JsonError::NotAnObject) => {
                    assert!(!matches!(top.node, model::Node::Obj(_)))
                }
                (Ok(_), e) => panic!("rejected ({e:?}) text the model accepts"),
                (Err(()), JsonError::NotAnObject) => panic!("NotAnObject for invalid text"),
                (Err(()), _) => {}
            }
        }
    }
    check_writer(text, out_len);
}

fn trim(text: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = text.iter().position(|b| !ws(b)).unwrap_or(text.len());
    let end = text.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &text[start..end]
}

/// Checks `obj` (at nesting `depth`) against the model's members; `src` is the whole text the
/// model's spans point into.
fn walk(obj: Object<'_>, members: &[(String, model::Value)], src: &[u8], cap: usize, depth: usize) {
    assert!(depth <= MAX_DEPTH);
    assert_eq!(obj.raw().first(), Some(&b'{'));
    assert_eq!(obj.raw().last(), Some(&b'}'));
    let alone = Object::parse(obj.raw()).expect("a validated object parses on its own");
    assert_eq!(alone.members().count(), members.len());
    let mut count = 0;
    for ((k, v), (key, want)) in obj.members().zip(members) {
        count += 1;
        assert_eq!(&check_str(k, cap), key, "member key");
        let found = obj.get(key).expect("get finds every member");
        assert_eq!(found.raw(), v.raw(), "get({key:?}) found another member");
        assert_eq!(v.raw(), &src[want.span.0..want.span.1], "span of {key:?}");
        check_value(v, want, src, cap, depth);
    }
    assert_eq!(count, members.len(), "member count");
}

fn check_value(v: Value<'_>, want: &model::Value, src: &[u8], cap: usize, depth: usize) {
    let raw = v.raw();
    assert!(!raw.is_empty() && !v.kind().is_empty());
    // A value is valid JSON on its own: wrapped in an object it parses (at no greater depth).
    let mut wrapped = b"{\"v\":".to_vec();
    wrapped.extend_from_slice(raw);
    wrapped.push(b'}');
    let w = Object::parse(&wrapped).unwrap_or_else(|e| panic!("a member's value ({e})"));
    assert_eq!(w.get("v").map(|x| x.kind()), Some(v.kind()));
    assert_eq!(v.as_str().is_some(), matches!(v, Value::Str(_)));
    assert_eq!(v.as_object().is_some(), matches!(v, Value::Object(_)));
    if !matches!(v, Value::Num(_)) {
        assert!(v.as_u64().is_none() && v.as_i64().is_none());
    }
    match (v, &want.node) {
        (Value::Str(s), model::Node::Str(text)) => assert_eq!(&check_str(s, cap), text),
        (Value::Num(n), model::Node::Num) => check_number(v, n),
        (Value::Bool(b), model::Node::Bool(m)) => assert_eq!(b, *m),
        (Value::Null, model::Node::Null) => {}
        (Value::Object(o), model::Node::Obj(members)) => walk(o, members, src, cap, depth + 1),
        (Value::Array(a), model::Node::Arr) => {
            assert_eq!((a.first(), a.last()), (Some(&b'['), Some(&b']')));
        }
        (v, node) => panic!("{} where the model has {node:?}", v.kind()),
    }
}

/// `as_u64` / `as_i64` against std's parsers (valid JSON numbers have no '+' and no leading
/// zeros, where std and JSON differ).
fn check_number(v: Value<'_>, raw: &[u8]) {
    let s = std::str::from_utf8(raw).expect("numbers are ASCII");
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let plain = digits(s);
    let negative = s.strip_prefix('-').is_some_and(digits);
    let u = if plain { s.parse::<u64>().ok() } else { None };
    let i = if plain || negative {
        s.parse::<i64>().ok()
    } else {
        None
    };
    assert_eq!(v.as_u64(), u, "as_u64({s})");
    assert_eq!(v.as_i64(), i, "as_i64({s})");
}

/// Every way to read a string; returns its decoded text.
fn check_str(s: Str<'_>, cap: usize) -> String {
    let n = s.decoded_len();
    let mut full = vec![0u8; n];
    assert_eq!(s.unescape_into(&mut full), Ok(n), "decoded_len disagrees");
    let text = String::from_utf8(full).expect("decoded text is UTF-8");
    assert_eq!(s.chars().collect::<String>(), text);
    assert!(s.eq_str(&text));
    assert_eq!(s.as_plain().is_some(), !s.raw().contains(&b'\\'));
    if let Some(plain) = s.as_plain() {
        assert_eq!(plain, text);
    }
    let mut buf = vec![FILL; cap + GUARD];
    match s.unescape_into(&mut buf[..cap]) {
        Ok(m) => {
            assert!(n <= cap && m == n);
            assert_eq!(&buf[..m], text.as_bytes());
        }
        Err(e) => assert!(
            e == JsonError::Overflow && n > cap,
            "{e:?} for {n} into {cap}"
        ),
    }
    assert!(
        buf[cap..].iter().all(|&b| b == FILL),
        "unescape_into overran"
    );
    let mut fixed = FixedStr::with_capacity(cap);
    match fixed.set_json(s) {
        Ok(()) => assert_eq!(fixed.as_str(), text),
        Err(_) => assert!(
            n > cap && fixed.is_empty(),
            "set_json refused {n} into {cap}"
        ),
    }
    round_trip(&text, cap);
    text
}

/// The writer's string escapes read back as the same text.
fn round_trip(text: &str, cap: usize) {
    let mut buf = vec![0u8; text.len() * 12 + 32];
    let mut w = Writer::new(&mut buf);
    w.raw("{\"k\":").string(text).raw(",\"t\":");
    let len = w.string_truncated(text, cap).raw("}").finish();
    let len = len.expect("room for the escaped text");
    let o = Object::parse(&buf[..len]).expect("the writer's output parses");
    assert!(o
        .get("k")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.eq_str(text)));
    let cut: String = text.chars().take(cap).collect();
    assert!(o
        .get("t")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.eq_str(&cut)));
}

/// The writer's output into buffers of every interesting size: a prefix of what fits, never a
/// byte past the buffer, `Overflow` exactly when it does not fit.
fn check_writer(text: &[u8], cap: usize) {
    let s = String::from_utf8_lossy(text);
    let emit = |w: &mut Writer<'_>| -> Result<usize, JsonError> {
        w.raw("{\"s\":")
            .string(&s)
            .raw(",\"t\":")
            .string_truncated(&s, cap);
        w.raw(",\"n\":").u64(text.len() as u64);
        w.raw(",\"i\":").i64(-(cap as i64) - 1);
        w.raw(",\"r\":").raw_bytes(b"[1,{}]").raw("}").finish()
    };
    let mut big = vec![0u8; s.len() * 12 + 128];
    let need = emit(&mut Writer::new(&mut big)).expect("room for everything");
    let o = Object::parse(&big[..need]).expect("the writer's output parses");
    assert!(o
        .get("s")
        .and_then(|v| v.as_str())
        .is_some_and(|v| v.eq_str(&s)));
    assert_eq!(o.get("n").and_then(|v| v.as_u64()), Some(text.len() as u64));
    assert_eq!(o.get("i").and_then(|v| v.as_i64()), Some(-(cap as i64) - 1));
    for size in [cap, need.saturating_sub(1), need, cap % (need + 1), 0] {
        let mut buf = vec![FILL; size + GUARD];
        let mut w = Writer::new(&mut buf[..size]);
        let r = emit(&mut w);
        let len = w.len();
        assert!(len <= size);
        assert_eq!(w.written(), &big[..len], "written() is not a prefix");
        assert_eq!(w.is_empty(), len == 0);
        let want = if size >= need {
            Ok(need)
        } else {
            Err(JsonError::Overflow)
        };
        assert_eq!(r, want, "{size}-byte buffer");
        assert!(buf[size..].iter().all(|&b| b == FILL), "the writer overran");
    }
}

/// An independent reference parser: slow and allocating, written from RFC 8259 and the rules
/// in `json.rs`'s docs (UTF-8 text, escapes with surrogate pairs only, depth ≤ 16 counting
/// arrays, no duplicate keys after unescaping), never from its code.
mod model {
    use super::MAX_DEPTH;

    #[derive(Debug)]
    pub enum Node {
        Null,
        Bool(bool),
        Num,
        Str(String),
        Arr,
        Obj(Vec<(String, Value)>),
    }

    /// A value and its byte span in the text.
    #[derive(Debug)]
    pub struct Value {
        pub node: Node,
        pub span: (usize, usize),
    }

    pub fn parse(text: &[u8]) -> Result<Value, ()> {
        let mut p = P { s: text, i: 0 };
        p.ws();
        let v = p.value(0)?;
        p.ws();
        if p.i == text.len() {
            Ok(v)
        } else {
            Err(())
        }
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn expect(&mut self, b: u8) -> Result<(), ()> {
            if self.peek() == Some(b) {
                self.i += 1;
                Ok(())
            } else {
                Err(())
            }
        }

        /// `open` = containers around this value.
        fn value(&mut self, open: usize) -> Result<Value, ()> {
            let start = self.i;
            let node = match self.peek().ok_or(())? {
                b'{' => self.object(open)?,
                b'[' => self.array(open)?,
                b'"' => Node::Str(self.string()?),
                b't' => self.word("true", Node::Bool(true))?,
                b'f' => self.word("false", Node::Bool(false))?,
                b'n' => self.word("null", Node::Null)?,
                _ => self.number()?,
            };
            Ok(Value {
                node,
                span: (start, self.i),
            })
        }

        fn word(&mut self, w: &str, node: Node) -> Result<Node, ()> {
            if self.s[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(node)
            } else {
                Err(())
            }
        }

        fn number(&mut self) -> Result<Node, ()> {
            let int_start = self.i + usize::from(self.peek() == Some(b'-'));
            self.i = int_start;
            let digits = |p: &mut Self| {
                let from = p.i;
                while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                    p.i += 1;
                }
                p.i - from
            };
            let n = digits(self);
            if n == 0 || (n > 1 && self.s[int_start] == b'0') {
                return Err(());
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if digits(self) == 0 {
                    return Err(());
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if digits(self) == 0 {
                    return Err(());
                }
            }
            Ok(Node::Num)
        }

        fn hex4(&mut self) -> Result<u32, ()> {
            let h = self.s.get(self.i..self.i + 4).ok_or(())?;
            let h = std::str::from_utf8(h).map_err(|_| ())?;
            if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            self.i += 4;
            u32::from_str_radix(h, 16).map_err(|_| ())
        }

        fn string(&mut self) -> Result<String, ()> {
            self.i += 1;
            let mut out = String::new();
            loop {
                let rest = &self.s[self.i..];
                let b = *rest.first().ok_or(())?;
                match b {
                    b'"' => {
                        self.i += 1;
                        return Ok(out);
                    }
                    b'\\' => {
                        self.i += 1;
                        let e = self.peek().ok_or(())?;
                        self.i += 1;
                        out.push(match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => self.unicode()?,
                            _ => return Err(()),
                        });
                    }
                    0..=0x1f => return Err(()),
                    _ => {
                        // One UTF-8 character: its length from the lead byte, then validated.
                        let len = match b {
                            0x00..=0x7f => 1,
                            0xc0..=0xdf => 2,
                            0xe0..=0xef => 3,
                            0xf0..=0xf7 => 4,
                            _ => return Err(()),
                        };
                        let c = rest.get(..len).ok_or(())?;
                        let c = std::str::from_utf8(c).map_err(|_| ())?;
                        out.push_str(c);
                        self.i += len;
                    }
                }
            }
        }

        /// After `\u`: one code point, a surrogate pair being two escapes.
        fn unicode(&mut self) -> Result<char, ()> {
            let hi = self.hex4()?;
            if (0xDC00..0xE000).contains(&hi) {
                return Err(());
            }
            if !(0xD800..0xDC00).contains(&hi) {
                return char::from_u32(hi).ok_or(());
            }
            if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(());
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(());
            }
            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).ok_or(())
        }

        fn array(&mut self, open: usize) -> Result<Node, ()> {
            if open + 1 > MAX_DEPTH {
                return Err(());
            }
            self.i += 1;
            self.ws();
            if self.peek() == Some(b']') {
                self.i += 1;
                return Ok(Node::Arr);
            }
            loop {
                self.ws();
                self.value(open + 1)?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b']') => {
                        self.i += 1;
                        return Ok(Node::Arr);
                    }
                    _ => return Err(()),
                }
            }
        }

        fn object(&mut self, open: usize) -> Result<Node, ()> {
            if open + 1 > MAX_DEPTH {
                return Err(());
            }
            self.i += 1;
            let mut members: Vec<(String, Value)> = Vec::new();
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Node::Obj(members));
            }
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(());
                }
                let key = self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
                let v = self.value(open + 1)?;
                if members.iter().any(|(k, _)| *k == key) {
                    return Err(());
                }
                members.push((key, v));
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        return Ok(Node::Obj(members));
                    }
                    _ => return Err(()),
                }
            }
        }
    }
}
