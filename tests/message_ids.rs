//! Message ids are unique for a device across restarts: a device that restarts mid-upgrade
//! must not send the ids of its previous run again (SagooIOT and Aliyun want every message id
//! of a device unique). Two sessions one after the other play the run before and after a
//! restart, on an in-memory uplink that keeps the real ids; the platform simulator's checker
//! must accept every message.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ota::source::MemorySource;
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::md5_hex;

const IMAGE: &[u8] = &[7u8; 100];

/// Records what a session publishes, as it was sent.
struct Uplink(Arc<Mutex<Vec<(String, String)>>>);

impl ota::ota::Uplink for Uplink {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        let text = String::from_utf8(payload.to_vec()).expect("JSON text");
        self.0.lock().unwrap().push((topic.to_string(), text));
        Ok(())
    }
}

fn notice(protocol: Protocol) -> String {
    let (size, md5) = (IMAGE.len(), md5_hex(IMAGE));
    match protocol {
        Protocol::Aliyun => format!(
            r#"{{"code":"1000","data":{{"size":{size},"version":"2.0.0","url":"http://h/f","md5":"{md5}"}},"id":1,"message":"success"}}"#
        ),
        Protocol::Sagoo => format!(
            r#"{{"code":"200","data":{{"size":{size},"version":"2.0.0","url":"http://h/f","sign":"{md5}","signMethod":"MD5"}},"id":1626969597470,"message":"success"}}"#
        ),
        other => unreachable!("{other:?} sends no message ids"),
    }
}

/// One run of the device: reports its version, gets an upgrade and reports progress in a
/// burst (several messages within a millisecond); returns what it sent.
fn run(protocol: Protocol) -> Vec<(String, String)> {
    let sent = Arc::default();
    let s = OtaSession::new(
        "pk",
        "dn",
        OtaConfig::for_protocol(protocol),
        Box::new(Uplink(Arc::clone(&sent))),
        Box::new(MemorySource::new(IMAGE)),
    )
    .unwrap();
    s.report_version("1.0.0").unwrap();
    s.handle_message(s.downstream_topic(), notice(protocol).as_bytes())
        .unwrap();
    for percent in [1, 10, 20, 30, 40, 50] {
        s.report_progress(percent, None).unwrap();
    }
    drop(s);
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 7, "{sent:?}");
    sent
}

/// The message's id: a JSON number (Aliyun) or a string of digits (SagooIOT).
fn id_of(protocol: Protocol, text: &str) -> u64 {
    let rest = text.strip_prefix(r#"{"id":"#).expect(text);
    let quote = if protocol == Protocol::Sagoo {
        "\""
    } else {
        ""
    };
    let rest = rest.strip_prefix(quote).expect(text);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(rest[digits.len()..].starts_with(quote), "{text}");
    digits.parse().expect(text)
}

/// The platform simulator's checker accepts the message (for Aliyun: an id within 0..=2^32-1).
fn assert_accepted(protocol: Protocol, topic: &str, text: &str) {
    let checked = match protocol {
        Protocol::Aliyun => ota_cloud::aliyun::parse(
            &ota_cloud::aliyun::Topics::new("pk", "dn"),
            topic,
            text.as_bytes(),
        ),
        _ => ota_cloud::sagoo::parse(
            &ota_cloud::sagoo::Topics::new("pk", "dn"),
            topic,
            text.as_bytes(),
        ),
    };
    assert!(
        matches!(checked, Ok(Some(_))),
        "{topic} {text}: {checked:?}"
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ids_survive_a_restart(protocol: Protocol) -> (Vec<u64>, Vec<u64>) {
    let before = run(protocol);
    // The restart's downtime, the condition under test (not a synchronisation): a restart takes
    // seconds; 20 ms is more than the burst ran ahead of the clock.
    thread::sleep(Duration::from_millis(20));
    let after = run(protocol);
    let ids = |sent: &[(String, String)]| -> Vec<u64> {
        sent.iter()
            .map(|(topic, text)| {
                assert_accepted(protocol, topic, text);
                id_of(protocol, text)
            })
            .collect()
    };
    let (before, after) = (ids(&before), ids(&after));
    for run in [&before, &after] {
        assert!(
            run.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing within a run: {run:?}"
        );
    }
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "no id of the run before the restart comes again: {before:?} then {after:?}"
    );
    (before, after)
}

#[test]
fn sagoo_ids_are_millisecond_timestamps_unique_across_a_restart() {
    let start = now_ms();
    let (before, after) = ids_survive_a_restart(Protocol::Sagoo);
    assert!(before[0] >= start, "the first id is the clock: {before:?}");
    // Like the platform's own ids: 13 digits.
    assert!(
        after.iter().all(|id| id.to_string().len() == 13),
        "{after:?}"
    );
    assert!(after[0] > *before.last().unwrap());
}

#[test]
fn aliyun_ids_are_unique_across_a_restart_and_within_32_bits() {
    let start = now_ms() % (1 << 32);
    let (before, after) = ids_survive_a_restart(Protocol::Aliyun);
    // The milliseconds modulo 2^32 (a test crossing the wrap, once in 49.7 days, sees it).
    let elapsed = before[0].wrapping_sub(start) % (1 << 32);
    assert!(
        elapsed < 60_000,
        "the first id is the clock: {start} then {before:?}"
    );
    assert!(after.iter().chain(&before).all(|&id| id <= u32::MAX as u64));
}
