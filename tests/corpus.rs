//! A malformed-message corpus for each protocol's downstream topic.
//!
//! Every case is built from one valid upgrade message per platform by a structured text edit
//! (remove a key, replace a value, add or duplicate a key, truncate, wrap, replace with
//! non-JSON …) and says what the session must do with it:
//!
//! * `Rejected`: `handle_message` returns `Error::Notice(_)` (`Error::InvalidParam` for a wrong
//!   topic), `last_error()` is that same error, its text says what was wrong, and the session
//!   stays where it was: idle on a fresh session; fetching with the same offset and notice on a
//!   session that had accepted the base upgrade and fetched some bytes;
//! * `Accepted`: unknown fields and legitimate variants start the upgrade without error;
//! * `Ignored`: messages the device does not act on change nothing and record no error;
//! * `VersionRefused`: Tencent's refusal of a version report is an error, and starts nothing.
//!
//! Each protocol's test collects every deviation before failing, so one run lists them all.

mod common;
use common::recorder::{Recorder, Sent};

use std::sync::Arc;
use std::time::Duration;

use ota::error::Error;
use ota::protocol::Limits;
use ota::source::MemorySource;
use ota::{OtaConfig, OtaSession, OtaState, Protocol};

// ---------------------------------------------------------------------------------------------
// Transports

/// The announced size of every base upgrade; the in-memory server holds exactly that many bytes.
const SIZE: usize = 1000;
static IMAGE: [u8; SIZE] = [0x5a; SIZE];
/// Bytes fetched before a case runs on the fetching session.
const PREFETCH: usize = 100;

const MD5: &str = "93230c3bde425a9d7984a594ac55ea1e";
const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const URL: &str = "https://h/f.bin";
const VERSION: &str = "2.0.0";
/// The version UCloud sessions report as running before any message arrives.
const RUNNING: &str = "1.0.0";

fn session(p: &Spec) -> (OtaSession, Sent) {
    let sent: Sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(p.protocol),
        Box::new(Recorder(sent.clone())),
        Box::new(MemorySource::new(&IMAGE)),
    )
    .unwrap();
    if p.protocol == Protocol::Ucloud {
        s.report_version(RUNNING).unwrap();
    }
    (s, sent)
}

// ---------------------------------------------------------------------------------------------
// Text edits on compact JSON. Keys are addressed by name and must occur exactly once.

/// The member `"key":value` in `msg`: (start of the key, start of the value, end of the value).
fn member(msg: &str, key: &str) -> (usize, usize, usize) {
    let pat = format!("\"{key}\":");
    let hits: Vec<usize> = msg.match_indices(&pat).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "key {key:?} must occur once in {msg}");
    let start = hits[0];
    let value = start + pat.len();
    (start, value, value_end(msg.as_bytes(), value))
}

/// The end of the JSON value that starts at `i`.
fn value_end(b: &[u8], mut i: usize) -> usize {
    match b[i] {
        b'"' => {
            i += 1;
            while b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i + 1
        }
        b'{' | b'[' => {
            let mut depth = 0;
            loop {
                match b[i] {
                    b'"' => {
                        i = value_end(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(b[i], b',' | b'}' | b']') {
                i += 1;
            }
            i
        }
    }
}

/// `msg` with `key`'s value replaced by the raw JSON text `value`.
fn set(msg: &str, key: &str, value: &str) -> String {
    let (_, v, end) = member(msg, key);
    format!("{}{value}{}", &msg[..v], &msg[end..])
}

/// `msg` with `key`'s string value replaced by `text` (quoted, not escaped).
fn set_str(msg: &str, key: &str, text: &str) -> String {
    set(msg, key, &format!("\"{text}\""))
}

/// `msg` without the member `key` (and its comma).
fn remove(msg: &str, key: &str) -> String {
    let (start, _, end) = member(msg, key);
    let b = msg.as_bytes();
    if b[end] == b',' {
        format!("{}{}", &msg[..start], &msg[end + 1..])
    } else if b[start - 1] == b',' {
        format!("{}{}", &msg[..start - 1], &msg[end..])
    } else {
        format!("{}{}", &msg[..start], &msg[end..])
    }
}

/// `msg` with `key` spelled `new`.
fn rename(msg: &str, key: &str, new: &str) -> String {
    let (start, v, _) = member(msg, key);
    format!("{}\"{new}\":{}", &msg[..start], &msg[v..])
}

/// `msg` with the raw member text `m` (`"k":v`) first in the object `within` (`None`: the
/// top-level object).
fn add(msg: &str, within: Option<&str>, m: &str) -> String {
    let open = match within {
        None => msg.find('{').unwrap(),
        Some(key) => {
            let (_, v, _) = member(msg, key);
            assert_eq!(&msg[v..v + 1], "{", "{key} is not an object in {msg}");
            v
        }
    };
    let sep = if &msg[open + 1..open + 2] == "}" {
        ""
    } else {
        ","
    };
    format!("{}{m}{sep}{}", &msg[..open + 1], &msg[open + 1..])
}

/// `msg` with a second `key` (value `value`) just before the first, in the same object.
fn duplicate(msg: &str, key: &str, value: &str) -> String {
    let (start, _, _) = member(msg, key);
    format!("{}\"{key}\":{value},{}", &msg[..start], &msg[start..])
}

/// The raw value text of `key`.
fn value_of<'a>(msg: &'a str, key: &str) -> &'a str {
    let (_, v, end) = member(msg, key);
    &msg[v..end]
}

/// `msg` with whitespace between every token, as the seeds print it.
fn pretty(msg: &str) -> String {
    let (mut out, mut in_str, mut esc, mut depth) = (String::new(), false, false, 0usize);
    for c in msg.chars() {
        if in_str {
            out.push(c);
            match c {
                _ if esc => esc = false,
                '\\' => esc = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '{' | '[' => {
                depth += 1;
                out.push(c);
                out.push('\n');
                out.push_str(&"    ".repeat(depth));
            }
            '}' | ']' => {
                depth -= 1;
                out.push('\n');
                out.push_str(&"    ".repeat(depth));
                out.push(c);
            }
            ',' => {
                out.push_str(",\n");
                out.push_str(&"    ".repeat(depth));
            }
            ':' => out.push_str(": "),
            '"' => {
                in_str = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    format!("\t{out}\n")
}

/// `msg` padded with an unknown top-level string member to exactly `len` bytes.
fn padded_to(msg: &str, len: usize) -> String {
    let overhead = msg.len() + "\"pad\":\"\",".len();
    assert!(len >= overhead);
    add(
        msg,
        None,
        &format!("\"pad\":\"{}\"", "p".repeat(len - overhead)),
    )
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error; the session stays in its previous state.
    Rejected,
    /// Starts the upgrade without error.
    Accepted,
    /// Changes nothing, records no error.
    Ignored,
    /// Tencent refused the version report: `Error::VersionRefused(code)`, nothing else changes.
    VersionRefused(i64),
}

struct Case {
    name: String,
    msg: Vec<u8>,
    expect: Expect,
    /// Delivered on this topic instead of the session's downstream topic.
    topic: Option<String>,
    /// Texts (any letter case) the error's message must contain.
    mentions: Vec<String>,
    /// The refusal the session must publish: topic and texts the one new message must contain.
    publishes: Option<(String, Vec<String>)>,
}

impl Case {
    fn new(name: impl Into<String>, msg: impl Into<Vec<u8>>, expect: Expect) -> Case {
        Case {
            name: name.into(),
            msg: msg.into(),
            expect,
            topic: None,
            mentions: Vec::new(),
            publishes: None,
        }
    }

    fn mentions(mut self, text: &str) -> Case {
        self.mentions.push(text.to_string());
        self
    }

    fn on_topic(mut self, topic: String) -> Case {
        self.topic = Some(topic);
        self
    }

    fn publishes(mut self, topic: &str, texts: &[&str]) -> Case {
        let texts = texts.iter().map(|t| t.to_string()).collect();
        self.publishes = Some((topic.to_string(), texts));
        self
    }
}

fn rejected(name: impl Into<String>, msg: impl Into<Vec<u8>>, mention: &str) -> Case {
    Case::new(name, msg, Expect::Rejected).mentions(mention)
}

fn accepted(name: impl Into<String>, msg: impl Into<Vec<u8>>) -> Case {
    Case::new(name, msg, Expect::Accepted)
}

fn ignored(name: impl Into<String>, msg: impl Into<Vec<u8>>) -> Case {
    Case::new(name, msg, Expect::Ignored)
}

/// What differs between the platforms' upgrade messages.
struct Spec {
    name: &'static str,
    protocol: Protocol,
    /// The valid upgrade every case is derived from (compact; keys unique).
    base: String,
    /// The object holding the upgrade's fields (`None`: the top level).
    container: Option<&'static str>,
    size: &'static str,
    version: &'static str,
    url: &'static str,
    digest: &'static str,
    /// Keys without which the upgrade must be rejected.
    required: &'static [&'static str],
    /// The same key in another letter case (which is another key).
    version_other_case: &'static str,
    /// The progress topic (refusal reports go there).
    progress_topic: &'static str,
    /// Topics on which the device must not take upgrades.
    wrong_topics: &'static [&'static str],
}

fn aliyun() -> Spec {
    Spec {
        name: "aliyun",
        protocol: Protocol::Aliyun,
        base: format!(
            r#"{{"code":"1000","data":{{"size":{SIZE},"version":"{VERSION}","url":"{URL}","md5":"{MD5}"}},"id":1,"message":"success"}}"#
        ),
        container: Some("data"),
        size: "size",
        version: "version",
        url: "url",
        digest: "md5",
        required: &["code", "data", "size", "version", "url", "md5"],
        version_other_case: "Version",
        progress_topic: "/ota/device/progress/pk/dn",
        wrong_topics: &[
            "/ota/device/upgrade/pk/other",
            "/ota/device/upgrade/other/dn",
            "/ota/device/inform/pk/dn",
        ],
    }
}

fn sagoo() -> Spec {
    Spec {
        name: "sagoo",
        protocol: Protocol::Sagoo,
        base: format!(
            r#"{{"code":"200","data":{{"size":{SIZE},"version":"{VERSION}","url":"{URL}","sign":"{MD5}","signMethod":"MD5","module":"MCU","extData":{{"key1":"value1","_package_udi":"{{\"ota_notice\":\"fix\"}}"}}}},"id":1626969597470,"message":"success"}}"#
        ),
        container: Some("data"),
        size: "size",
        version: "version",
        url: "url",
        digest: "sign",
        required: &["code", "data", "size", "version", "url", "sign"],
        version_other_case: "Version",
        progress_topic: "/ota/device/progress/pk/dn",
        wrong_topics: &[
            "/ota/device/upgrade/pk/other",
            "/ota/device/upgrade/other/dn",
            "/ota/device/progress/pk/dn",
        ],
    }
}

fn tencent() -> Spec {
    Spec {
        name: "tencent",
        protocol: Protocol::Tencent,
        base: format!(
            r#"{{"file_size":{SIZE},"md5sum":"{MD5}","type":"update_firmware","url":"{URL}","version":"{VERSION}"}}"#
        ),
        container: None,
        size: "file_size",
        version: "version",
        url: "url",
        digest: "md5sum",
        required: &["type", "file_size", "md5sum", "url", "version"],
        version_other_case: "Version",
        progress_topic: "$ota/report/pk/dn",
        wrong_topics: &[
            "$ota/update/pk/other",
            "$ota/update/other/dn",
            "$ota/report/pk/dn",
        ],
    }
}

fn ucloud() -> Spec {
    Spec {
        name: "ucloud",
        protocol: Protocol::Ucloud,
        base: format!(
            r#"{{"Method":"notify","Payload":{{"Version":"{VERSION}","CurrentVersion":"{RUNNING}","URL":"{URL}","MD5":"{MD5}","Size":{SIZE},"TaskID":"1"}}}}"#
        ),
        container: Some("Payload"),
        size: "Size",
        version: "Version",
        url: "URL",
        digest: "MD5",
        required: &[
            "Method", "Payload", "Version", "URL", "MD5", "Size", "TaskID",
        ],
        version_other_case: "version",
        progress_topic: "/$system/pk/dn/ota/upstream",
        wrong_topics: &[
            "/$system/pk/other/ota/downstream",
            "/$system/other/dn/ota/downstream",
            "/$system/pk/dn/ota/upstream",
        ],
    }
}

/// The cases every protocol shares, derived from `p.base`.
fn common_cases(p: &Spec) -> Vec<Case> {
    let b = p.base.as_str();
    let limits = Limits::default();
    let mut v = Vec::new();

    // Sanity: the base itself, and legitimate variants.
    v.push(accepted("base message", b));
    v.push(accepted("seed-style whitespace", pretty(b)));
    v.push(accepted(
        "unknown top-level field",
        add(b, None, r#""extra":{"a":[1,2.5,{"b":null}],"c":true}"#),
    ));
    if let Some(c) = p.container {
        v.push(accepted(
            format!("unknown field inside {c}"),
            add(b, Some(c), r#""vendorHint":"x","n":-3"#),
        ));
    }
    v.push(accepted(
        "payload of exactly the downstream limit",
        padded_to(b, limits.downstream),
    ));
    let url_at_limit = format!("https://h/{}", "u".repeat(limits.url - "https://h/".len()));
    v.push(accepted(
        "url of exactly the url limit",
        set_str(b, p.url, &url_at_limit),
    ));
    v.push(accepted(
        "version of exactly the version limit",
        set_str(b, p.version, &"9".repeat(limits.version)),
    ));
    v.push(accepted(
        "escaped slashes in url",
        set_str(b, p.url, r"https:\/\/h\/f.bin"),
    ));

    // Not JSON, or not one object.
    for (name, msg) in [
        ("not JSON", b"not json".to_vec()),
        ("empty payload", Vec::new()),
        ("whitespace only", b" \r\n\t".to_vec()),
        ("binary bytes", vec![0xff, 0xfe, 0x00, 0x01, 0x7b]),
        ("JSON null", b"null".to_vec()),
        ("JSON number", b"1000".to_vec()),
        ("JSON string", b"\"update_firmware\"".to_vec()),
        ("wrapped in an array", format!("[{b}]").into_bytes()),
        ("empty array", b"[]".to_vec()),
        ("single quotes", b.replace('"', "'").into_bytes()),
        ("trailing garbage", format!("{b}x").into_bytes()),
        ("two objects", format!("{b}{b}").into_bytes()),
        (
            "trailing comma",
            format!("{},}}", &b[..b.len() - 1]).into_bytes(),
        ),
        ("NUL after the object", format!("{b}\0").into_bytes()),
        (
            "comment inside",
            add(b, None, "// note\n\"x\":1").into_bytes(),
        ),
    ] {
        v.push(rejected(name, msg, "JSON"));
    }
    v.push(rejected("empty object", "{}", "missing"));

    // Truncated at several points (none is a complete object).
    let (_, url_at, _) = member(b, p.url);
    for (name, at) in [
        ("truncated after the first byte", 1),
        ("truncated at a third", b.len() / 3),
        ("truncated inside the url", url_at + 6),
        ("truncated at two thirds", 2 * b.len() / 3),
        ("truncated before the last brace", b.len() - 1),
    ] {
        v.push(rejected(name, &b[..at], "JSON"));
    }

    // Duplicate keys, with the same and with another value.
    let first_key = p.required[0];
    v.push(rejected(
        format!("duplicate {first_key} (same value)"),
        duplicate(b, first_key, value_of(b, first_key)),
        "duplicate",
    ));
    v.push(rejected(
        format!("duplicate {} (other value)", p.size),
        duplicate(b, p.size, "1"),
        "duplicate",
    ));
    v.push(rejected(
        format!("duplicate {} (same value)", p.url),
        duplicate(b, p.url, value_of(b, p.url)),
        "duplicate",
    ));
    v.push(rejected(
        "duplicate key inside an unknown field",
        add(b, None, r#""extra":{"k":1,"k":2}"#),
        "duplicate",
    ));

    // Missing keys, and a key in another letter case (which is missing the real one).
    for &key in p.required {
        v.push(rejected(format!("missing {key}"), remove(b, key), key));
    }
    v.push(rejected(
        format!("{} spelled {}", p.version, p.version_other_case),
        rename(b, p.version, p.version_other_case),
        p.version,
    ));

    // The container of the fields with the wrong type.
    if let Some(c) = p.container {
        for (what, value) in [
            ("a string", r#""{}""#),
            ("an array", "[]"),
            ("null", "null"),
            ("a number", "1"),
        ] {
            v.push(rejected(format!("{c} is {what}"), set(b, c, value), c));
        }
    }

    // Sizes: zero, negative, too large, not an integer, strings.
    for (what, value) in [
        ("0", "0"),
        ("-1", "-1"),
        ("4294967296", "4294967296"),
        ("1e3", "1e3"),
        ("1.5", "1.5"),
        ("1000.0", "1000.0"),
        ("a string \"1000\"", "\"1000\""),
        ("huge 99999999999999999999", "99999999999999999999"),
        ("-0", "-0"),
        ("null", "null"),
        ("true", "true"),
    ] {
        v.push(rejected(
            format!("{} {what}", p.size),
            set(b, p.size, value),
            "size",
        ));
    }

    // Versions: empty, wrong types, oversize, bad text.
    let ver = p.version;
    let too_long = "2".repeat(limits.version + 1);
    for (what, value) in [
        ("empty", "\"\"".to_string()),
        ("a number", "2.0".to_string()),
        ("null", "null".to_string()),
        ("an object", r#"{"v":"2.0.0"}"#.to_string()),
        ("an array", r#"["2.0.0"]"#.to_string()),
        ("one byte over the limit", format!("\"{too_long}\"")),
    ] {
        v.push(rejected(
            format!("{ver} {what}"),
            set(b, ver, &value),
            "version",
        ));
    }
    for (what, value) in [
        ("with a raw newline", "\"2.0\n0\""),
        ("with a bad escape", r#""2.0\x""#),
        ("with a lone surrogate", r#""2\ud800""#),
        ("with a truncated \\u", r#""2\u00""#),
    ] {
        v.push(rejected(
            format!("{ver} {what}"),
            set(b, ver, value),
            "JSON",
        ));
    }
    let mut bad_utf8 = set_str(b, ver, "2.0.0#").into_bytes();
    let hash = bad_utf8.iter().position(|&c| c == b'#').unwrap();
    bad_utf8[hash] = 0xff;
    v.push(rejected(
        format!("{ver} with invalid UTF-8"),
        bad_utf8,
        "JSON",
    ));

    // URLs: empty, wrong type, no scheme, another scheme, oversize.
    let url = p.url;
    let long_url = format!(
        "https://h/{}",
        "u".repeat(limits.url + 1 - "https://h/".len())
    );
    for (what, value) in [
        ("empty", "\"\"".to_string()),
        ("a number", "443".to_string()),
        ("an array", r#"["https://h/f.bin"]"#.to_string()),
        ("without a scheme", "\"h/f.bin\"".to_string()),
        ("ftp", "\"ftp://h/f.bin\"".to_string()),
        ("without a host", "\"https://\"".to_string()),
        ("one byte over the limit", format!("\"{long_url}\"")),
    ] {
        v.push(rejected(
            format!("{url} {what}"),
            set(b, url, &value),
            "url",
        ));
    }

    // Digests.
    let dig = p.digest;
    for (what, value) in [
        ("31 hex digits", format!("\"{}\"", &MD5[..31])),
        ("33 hex digits", format!("\"{MD5}0\"")),
        ("64 hex digits", format!("\"{SHA256}\"")),
        ("a non-hex digit", format!("\"{}g\"", &MD5[..31])),
        ("empty", "\"\"".to_string()),
        ("a number", "93230".to_string()),
        ("null", "null".to_string()),
        ("with spaces", format!("\" {} \"", &MD5[..30])),
    ] {
        v.push(rejected(format!("{dig} {what}"), set(b, dig, &value), dig));
    }

    // The whole payload one byte over the limit (valid otherwise).
    v.push(rejected(
        "payload one byte over the downstream limit",
        padded_to(b, limits.downstream + 1),
        &limits.downstream.to_string(),
    ));

    // Wrong topics.
    for &topic in p.wrong_topics {
        v.push(rejected(format!("on topic {topic}"), b, "topic").on_topic(topic.to_string()));
    }
    v
}

fn aliyun_cases(p: &Spec) -> Vec<Case> {
    let b = p.base.as_str();
    let mut v = common_cases(p);
    v.push(accepted(
        "module named",
        add(b, Some("data"), r#""module":"MCU""#),
    ));
    v.push(accepted(
        "without id and message",
        remove(&remove(b, "id"), "message"),
    ));
    for (what, value) in [
        ("\"1001\"", r#""1001""#),
        ("\"200\"", r#""200""#),
        ("empty", r#""""#),
        ("a number 1000", "1000"),
        ("null", "null"),
        ("\"1000 \"", r#""1000 ""#),
    ] {
        v.push(rejected(
            format!("code {what}"),
            set(b, "code", value),
            "code",
        ));
    }
    v.push(rejected(
        "module a number",
        add(b, Some("data"), r#""module":7"#),
        "module",
    ));
    v
}

fn sagoo_cases(p: &Spec) -> Vec<Case> {
    let b = p.base.as_str();
    let mut v = common_cases(p);
    v.push(accepted("signMethod Md5", set_str(b, "signMethod", "Md5")));
    v.push(accepted("signMethod md5", set_str(b, "signMethod", "md5")));
    v.push(accepted(
        "signMethod sha256 with 64 hex digits",
        set_str(&set_str(b, "signMethod", "sha256"), "sign", SHA256),
    ));
    v.push(accepted(
        "signMethod SHA256 with 64 hex digits",
        set_str(&set_str(b, "signMethod", "SHA256"), "sign", SHA256),
    ));
    v.push(accepted("module absent", remove(b, "module")));
    v.push(accepted("extData absent", remove(b, "extData")));
    v.push(accepted(
        "unknown field inside extData",
        add(b, Some("extData"), r#""key2":{"nested":[1,2]}"#),
    ));
    v.push(accepted(
        "extData with a strategy",
        add(b, Some("extData"), r#""strategy":"batch-9""#),
    ));
    for (what, value) in [
        ("\"1000\" (Aliyun's)", r#""1000""#),
        ("\"201\"", r#""201""#),
        ("a number 200", "200"),
        ("empty", r#""""#),
    ] {
        v.push(rejected(
            format!("code {what}"),
            set(b, "code", value),
            "code",
        ));
    }
    for what in ["SHA1", "CRC32", ""] {
        v.push(rejected(
            format!("signMethod {what:?}"),
            set_str(b, "signMethod", what),
            "signMethod",
        ));
    }
    v.push(rejected(
        "signMethod a number",
        set(b, "signMethod", "5"),
        "signMethod",
    ));
    v.push(rejected(
        "signMethod SHA256 with 32 hex digits",
        set_str(b, "signMethod", "SHA256"),
        "sign",
    ));
    v.push(rejected(
        "signMethod SHA256 with 63 hex digits",
        set_str(&set_str(b, "signMethod", "SHA256"), "sign", &SHA256[..63]),
        "sign",
    ));
    v.push(rejected("module a number", set(b, "module", "1"), "module"));
    v.push(rejected(
        "extData a number",
        set(b, "extData", "1"),
        "extData",
    ));
    v.push(rejected(
        "extData an array",
        set(b, "extData", "[]"),
        "extData",
    ));
    v.push(rejected(
        "extData a string that is not JSON",
        set_str(b, "extData", "k=v"),
        "extData",
    ));
    v.push(
        rejected(
            "dProtocol MQTT",
            add(b, Some("data"), r#""dProtocol":"MQTT""#),
            "dProtocol",
        )
        .publishes(p.progress_topic, &[r#""step":"-1""#, "dProtocol", "MCU"]),
    );
    v.push(
        rejected(
            "dProtocol MQTT without url",
            add(&remove(b, "url"), Some("data"), r#""dProtocol":"MQTT""#),
            "dProtocol",
        )
        .publishes(p.progress_topic, &[r#""step":"-1""#, "dProtocol"]),
    );
    v
}

fn tencent_cases(p: &Spec) -> Vec<Case> {
    let b = p.base.as_str();
    let mut v = common_cases(p);
    for (what, value) in [
        ("a number", "1"),
        ("null", "null"),
        ("an array", r#"["update_firmware"]"#),
    ] {
        v.push(rejected(
            format!("type {what}"),
            set(b, "type", value),
            "type",
        ));
    }
    for ty in ["report_progress", "report_version", "future_type", ""] {
        v.push(ignored(format!("type {ty:?}"), set_str(b, "type", ty)));
    }
    v.push(ignored(
        "another type without upgrade fields",
        r#"{"type":"remote_config","payload":{"k":1}}"#,
    ));
    let rsp = |code: i64| {
        format!(
            r#"{{"type":"report_version_rsp","result_code":{code},"result_msg":"success","version":"1.0.0"}}"#
        )
    };
    v.push(ignored("report_version_rsp result_code 0", rsp(0)));
    v.push(ignored(
        "report_version_rsp result_code 0, unknown field",
        add(&rsp(0), None, r#""trace":"abc""#),
    ));
    let rsp0 = rsp(0);
    v.push(rejected(
        "report_version_rsp without result_code",
        remove(&rsp0, "result_code"),
        "result_code",
    ));
    for (what, value) in [
        ("a string \"0\"", r#""0""#),
        ("1.5", "1.5"),
        ("null", "null"),
    ] {
        v.push(rejected(
            format!("report_version_rsp result_code {what}"),
            set(&rsp0, "result_code", value),
            "result_code",
        ));
    }
    for code in [1, -1, 404] {
        let mut c = Case::new(
            format!("report_version_rsp result_code {code}"),
            rsp(code),
            Expect::VersionRefused(code),
        );
        c.mentions.push(code.to_string());
        v.push(c);
    }
    v
}

fn ucloud_cases(p: &Spec) -> Vec<Case> {
    let b = p.base.as_str();
    let mut v = common_cases(p);
    v.push(accepted(
        "CurrentVersion absent",
        remove(b, "CurrentVersion"),
    ));
    v.push(accepted(
        "Module named",
        add(b, Some("Payload"), r#""Module":"module_a""#),
    ));
    for (what, value) in [
        ("empty", r#""""#),
        ("a number", "1"),
        ("null", "null"),
        (
            "one byte over the limit",
            &format!("\"{}\"", "7".repeat(64)),
        ),
    ] {
        v.push(rejected(
            format!("TaskID {what}"),
            set(b, "TaskID", value),
            "TaskID",
        ));
    }
    for (what, value) in [("a number", "1"), ("null", "null"), ("an object", "{}")] {
        v.push(rejected(
            format!("Method {what}"),
            set(b, "Method", value),
            "Method",
        ));
    }
    v.push(rejected(
        "CurrentVersion a number",
        set(b, "CurrentVersion", "1.0"),
        "CurrentVersion",
    ));
    v.push(
        rejected(
            "CurrentVersion is not the running version",
            set_str(&set_str(b, "CurrentVersion", "0.9.0"), "TaskID", "77"),
            "version",
        )
        .publishes(
            p.progress_topic,
            &[r#""Method":"fail""#, r#""TaskID":"77""#, "0.9.0"],
        ),
    );
    for method in [
        "report",
        "upgrading",
        "success",
        "cancel_update",
        "update_firmware",
    ] {
        v.push(ignored(
            format!("Method {method:?}"),
            set_str(b, "Method", method),
        ));
    }
    v.push(ignored(
        "Method cancel without Payload",
        r#"{"Method":"cancel"}"#,
    ));
    v
}

// ---------------------------------------------------------------------------------------------
// Running the cases

/// What a fetching session's accepted upgrade looks like.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    state: OtaState,
    fetched: u64,
    version: String,
    url: String,
    size: u64,
    task_id: String,
    last_error: Option<Error>,
}

fn snapshot(s: &OtaSession) -> Snapshot {
    let (version, url, size, task_id) = s.with_notice(|n| {
        (
            n.version.as_str().to_string(),
            n.url.as_str().to_string(),
            n.size,
            n.task_id.as_str().to_string(),
        )
    });
    Snapshot {
        state: s.state(),
        fetched: s.fetched_size(),
        version,
        url,
        size,
        task_id,
        last_error: s.last_error(),
    }
}

/// A session that accepted the base upgrade and fetched [`PREFETCH`] bytes of it.
fn fetching_session(p: &Spec) -> (OtaSession, Sent) {
    let (s, sent) = session(p);
    let topic = s.downstream_topic().to_string();
    s.handle_message(&topic, p.base.as_bytes())
        .unwrap_or_else(|e| panic!("{}: the base upgrade is refused: {e}", p.name));
    let mut buf = [0u8; PREFETCH];
    assert_eq!(s.fetch_yield(&mut buf, Duration::ZERO), Ok(PREFETCH));
    assert_eq!(s.fetched_size(), PREFETCH as u64);
    (s, sent)
}

/// Checks one run of a rejected case; returns the deviations.
fn check_rejected(
    case: &Case,
    s: &OtaSession,
    sent: &Sent,
    before: &Snapshot,
    published_before: usize,
    got: Result<(), Error>,
) -> Vec<String> {
    let mut bad = Vec::new();
    match got {
        Ok(()) => bad.push("accepted (Ok)".to_string()),
        Err(e) => {
            let kind_ok = match e {
                Error::Notice(_) => case.topic.is_none(),
                Error::InvalidParam(_) => case.topic.is_some(),
                _ => false,
            };
            if !kind_ok {
                bad.push(format!("returned {e:?}"));
            }
            if s.last_error() != Some(e) {
                bad.push(format!(
                    "last_error() is {:?}, returned {e:?}",
                    s.last_error()
                ));
            }
            let text = e.to_string();
            if text.trim().is_empty() {
                bad.push("error text is empty".to_string());
            }
            for m in &case.mentions {
                if !text.to_lowercase().contains(&m.to_lowercase()) {
                    bad.push(format!("error text {text:?} does not mention {m:?}"));
                }
            }
        }
    }
    let after = snapshot(s);
    let unchanged = Snapshot {
        last_error: after.last_error,
        ..before.clone()
    };
    if after != unchanged {
        bad.push(format!("session changed: {before:?} -> {after:?}"));
    }
    if before.state == OtaState::Idle && s.is_fetching() {
        bad.push("is_fetching() on an idle session".to_string());
    }
    if before.state == OtaState::Downloading && !s.is_fetching() {
        bad.push("is_fetching() false after the download was interrupted".to_string());
    }
    if let Some((topic, texts)) = &case.publishes {
        let sent = sent.lock().unwrap();
        let new = &sent[published_before..];
        match new {
            [(t, text)] => {
                if t != topic {
                    bad.push(format!("refusal published on {t}, expected {topic}"));
                }
                for want in texts {
                    if !text.contains(want.as_str()) {
                        bad.push(format!("refusal {text} does not contain {want}"));
                    }
                }
            }
            other => bad.push(format!("expected one refusal published, got {other:?}")),
        }
    }
    bad
}

/// Runs `case` on a fresh and (where it applies) a fetching session; returns the deviations.
fn run_case(p: &Spec, case: &Case) -> Vec<String> {
    let mut bad = Vec::new();
    let mut sessions = vec![("idle", session(p))];
    if case.expect != Expect::Accepted {
        sessions.push(("fetching", fetching_session(p)));
    }
    for (label, (s, sent)) in sessions {
        let topic = case
            .topic
            .clone()
            .unwrap_or_else(|| s.downstream_topic().to_string());
        let before = snapshot(&s);
        let published_before = sent.lock().unwrap().len();
        let got = s.handle_message(&topic, &case.msg);
        let mut problems = match case.expect {
            Expect::Rejected => check_rejected(case, &s, &sent, &before, published_before, got),
            Expect::Accepted => {
                let mut b = Vec::new();
                if let Err(e) = got {
                    b.push(format!("rejected: {e}"));
                }
                if s.state() != OtaState::Downloading || !s.is_fetching() {
                    b.push(format!("state {:?}, expected Fetching", s.state()));
                }
                if let Some(e) = s.last_error() {
                    b.push(format!("error recorded: {e:?}"));
                }
                b
            }
            Expect::Ignored => {
                let mut b = Vec::new();
                if let Err(e) = got {
                    b.push(format!("returned {e:?}, expected Ok"));
                }
                let after = snapshot(&s);
                if after != before {
                    b.push(format!("session changed: {before:?} -> {after:?}"));
                }
                if sent.lock().unwrap().len() != published_before {
                    b.push("published something".to_string());
                }
                b
            }
            Expect::VersionRefused(code) => {
                let mut b = Vec::new();
                match got {
                    Err(e @ Error::VersionRefused(c)) if c == code => {
                        if s.last_error() != Some(e) {
                            b.push(format!("last_error() is {:?}", s.last_error()));
                        }
                        let text = e.to_string();
                        for m in &case.mentions {
                            if !text.contains(m.as_str()) {
                                b.push(format!("error text {text:?} does not mention {m:?}"));
                            }
                        }
                    }
                    other => b.push(format!(
                        "returned {other:?}, expected VersionRefused({code})"
                    )),
                }
                let after = snapshot(&s);
                let unchanged = Snapshot {
                    last_error: after.last_error,
                    ..before.clone()
                };
                if after != unchanged {
                    b.push(format!("session changed: {before:?} -> {after:?}"));
                }
                b
            }
        };
        for problem in problems.drain(..) {
            bad.push(format!("[{label} session] {problem}"));
        }
    }
    bad
}

fn run_corpus(p: &Spec, cases: Vec<Case>) {
    let (mut rejected, mut accepted, mut ignored, mut refused) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {}",
            case.name
        );
        match case.expect {
            Expect::Rejected => rejected += 1,
            Expect::Accepted => accepted += 1,
            Expect::Ignored => ignored += 1,
            Expect::VersionRefused(_) => refused += 1,
        }
        for problem in run_case(p, case) {
            let shown = String::from_utf8_lossy(&case.msg);
            let shown: String = if shown.len() > 300 {
                let head: String = shown.chars().take(300).collect();
                format!("{head}… ({} bytes)", shown.len())
            } else {
                shown.into_owned()
            };
            failures.push(format!(
                "{} / {} ({:?}): {problem}\n    message: {shown}",
                p.name, case.name, case.expect
            ));
        }
    }
    let mut summary = format!("{}: {rejected} rejected, {accepted} accepted", p.name);
    if ignored > 0 {
        summary.push_str(&format!(", {ignored} ignored"));
    }
    if refused > 0 {
        summary.push_str(&format!(", {refused} version-refused"));
    }
    println!("{summary}");
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(rejected >= 30, "{}: only {rejected} rejected cases", p.name);
    assert!(
        failures.is_empty(),
        "{}: {} of {} cases deviate:\n{}",
        p.name,
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The edit helpers themselves

#[test]
fn edit_helpers() {
    let m = r#"{"a":"x,}","b":{"c":[1,{"d":2}],"e":3},"f":4}"#;
    assert_eq!(remove(m, "a"), r#"{"b":{"c":[1,{"d":2}],"e":3},"f":4}"#);
    assert_eq!(remove(m, "f"), r#"{"a":"x,}","b":{"c":[1,{"d":2}],"e":3}}"#);
    assert_eq!(remove(m, "e"), r#"{"a":"x,}","b":{"c":[1,{"d":2}]},"f":4}"#);
    assert_eq!(remove(r#"{"a":1}"#, "a"), "{}");
    assert_eq!(
        set(m, "c", "null"),
        r#"{"a":"x,}","b":{"c":null,"e":3},"f":4}"#
    );
    assert_eq!(
        add(m, Some("b"), r#""z":0"#),
        r#"{"a":"x,}","b":{"z":0,"c":[1,{"d":2}],"e":3},"f":4}"#
    );
    assert_eq!(add("{}", None, r#""z":0"#), r#"{"z":0}"#);
    assert_eq!(
        duplicate(m, "e", "5"),
        r#"{"a":"x,}","b":{"c":[1,{"d":2}],"e":5,"e":3},"f":4}"#
    );
    assert_eq!(
        rename(m, "f", "F"),
        r#"{"a":"x,}","b":{"c":[1,{"d":2}],"e":3},"F":4}"#
    );
    assert_eq!(value_of(m, "b"), r#"{"c":[1,{"d":2}],"e":3}"#);
    assert_eq!(value_of(r#"{"s":"q\"x"}"#, "s"), r#""q\"x""#);
    assert_eq!(padded_to(m, 100).len(), 100);
    let p = pretty(r#"{"a":"{,}","b":[1]}"#);
    assert_eq!(
        p.chars().filter(|c| !c.is_whitespace()).collect::<String>(),
        r#"{"a":"{,}","b":[1]}"#
    );
}

// ---------------------------------------------------------------------------------------------
// One corpus per protocol

#[test]
fn aliyun_corpus() {
    let p = aliyun();
    let cases = aliyun_cases(&p);
    run_corpus(&p, cases);
}

#[test]
fn sagoo_corpus() {
    let p = sagoo();
    let cases = sagoo_cases(&p);
    run_corpus(&p, cases);
}

#[test]
fn tencent_corpus() {
    let p = tencent();
    let cases = tencent_cases(&p);
    run_corpus(&p, cases);
}

#[test]
fn ucloud_corpus() {
    let p = ucloud();
    let cases = ucloud_cases(&p);
    run_corpus(&p, cases);
}
