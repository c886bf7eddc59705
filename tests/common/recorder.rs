//! The uplink of a session under test: records what it publishes (topic, text).

use std::sync::{Arc, Mutex};

pub type Sent = Arc<Mutex<Vec<(String, String)>>>;

pub struct Recorder(pub Sent);

impl ota::ota::Uplink for Recorder {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        let text = String::from_utf8_lossy(payload).into_owned();
        self.0.lock().unwrap().push((topic.to_string(), text));
        Ok(())
    }
}

/// The published payloads, in order.
#[allow(dead_code)]
pub fn payloads(sent: &Sent) -> Vec<String> {
    sent.lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect()
}
