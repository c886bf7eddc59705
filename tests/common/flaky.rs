//! An uplink that records like [`Recorder`](super::recorder::Recorder) and fails every publish
//! (as a full MQTT request queue does) while its switch is on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ota::error::{Error, MqttError};

use super::recorder::{Recorder, Sent};

/// What a publish returns while the uplink is down.
pub const QUEUE_FULL: Error = Error::Mqtt(MqttError::QueueFull);

pub struct Flaky {
    rec: Recorder,
    down: Arc<AtomicBool>,
}

impl Flaky {
    /// The uplink, and its switch (true: publishes fail).
    pub fn new(sent: Sent) -> (Flaky, Arc<AtomicBool>) {
        let down = Arc::new(AtomicBool::new(false));
        let uplink = Flaky {
            rec: Recorder(sent),
            down: down.clone(),
        };
        (uplink, down)
    }
}

impl ota::ota::Uplink for Flaky {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> ota::error::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(QUEUE_FULL);
        }
        self.rec.publish(topic, payload)
    }
}
