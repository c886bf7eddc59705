//! The uplink of a session under test: records what it publishes (topic, text).
//!
//! Message ids follow the wall clock, so the recorded text carries, in place of the real id,
//! the message's place among the recorded messages with an id (1, 2, …): tests can spell out
//! whole messages. tests/message_ids.rs checks the real ids.

use std::sync::{Arc, Mutex};

pub type Sent = Arc<Mutex<Vec<(String, String)>>>;

pub struct Recorder(pub Sent);

impl ota::ota::Uplink for Recorder {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        let text = String::from_utf8_lossy(payload).into_owned();
        let mut sent = self.0.lock().unwrap();
        let place = 1 + sent.iter().filter(|(_, t)| has_id(t)).count();
        let text = with_id(&text, place).unwrap_or(text);
        sent.push((topic.to_string(), text));
        Ok(())
    }
}

fn has_id(text: &str) -> bool {
    text.starts_with(r#"{"id":"#)
}

/// `text` with its leading `{"id":N` or `{"id":"N"` set to `id`; `None` when it has none.
fn with_id(text: &str, id: usize) -> Option<String> {
    let rest = text.strip_prefix(r#"{"id":"#)?;
    let quote = if rest.starts_with('"') { "\"" } else { "" };
    let digits = rest[quote.len()..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let after = &rest[quote.len() + digits..];
    (digits > 0 && after.starts_with(quote)).then(|| format!(r#"{{"id":{quote}{id}{after}"#))
}

/// The published payloads, in order.
pub fn payloads(sent: &Sent) -> Vec<String> {
    sent.lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect()
}

/// Whether `text` is a failure report of Aliyun or SagooIOT (a negative step).
pub fn is_failure_report(text: &str) -> bool {
    text.contains(r#""step":"-"#)
}

/// The failure reports among the published payloads, in order.
pub fn failure_reports(sent: &Sent) -> Vec<String> {
    payloads(sent)
        .into_iter()
        .filter(|p| is_failure_report(p))
        .collect()
}
