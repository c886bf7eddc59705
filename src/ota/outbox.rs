//! Publishing upstream messages, and holding them back while the broker is unreachable.

use super::Uplink;
use crate::error::{Error, MqttError, Result};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{self, Channel, Protocol, Report, Topics};

/// Everything needed to publish one upstream message.
pub(super) struct Outbox {
    pub(super) protocol: Protocol,
    pub(super) topics: Topics,
    pub(super) uplink: Box<dyn Uplink>,
    pub(super) message: Box<[u8]>,
    pub(super) next_id: u64,
    /// Messages that could not go out while the broker was unreachable: the latest per
    /// channel, sent after the reconnection.
    pub(super) deferred: [Deferred; 3],
}

/// One held-back message.
pub(super) struct Deferred {
    buf: Box<[u8]>,
    len: Option<usize>,
}

impl Deferred {
    pub(super) fn new(size: usize) -> Deferred {
        Deferred {
            buf: vec![0u8; size].into_boxed_slice(),
            len: None,
        }
    }
}

fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::Inform => 0,
        Channel::Progress => 1,
        Channel::Request => 2,
    }
}

const CHANNELS: [Channel; 3] = [Channel::Inform, Channel::Progress, Channel::Request];

impl Outbox {
    /// Encodes and publishes `report`; a report the protocol has no message for is a no-op.
    pub(super) fn send(&mut self, report: Report<'_>) -> Result<()> {
        let encoded = protocol::encode(self.protocol, &report, self.next_id, &mut self.message)
            .map_err(|_| Error::TooLong {
                what: "upstream message",
                len: self.message.len() + 1,
                max: self.message.len(),
            })?;
        let Some((channel, len)) = encoded else {
            return Ok(());
        };
        self.next_id += 1;
        let topic = self.topics.for_channel(channel);
        match self.uplink.publish(topic, &self.message[..len]) {
            Err(Error::Mqtt(MqttError::NotConnected)) => {
                let slot = &mut self.deferred[channel_index(channel)];
                slot.buf[..len].copy_from_slice(&self.message[..len]);
                slot.len = Some(len);
                ota_log!(
                    Level::Info,
                    "broker unreachable: message kept until reconnection"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Sends what was held back while disconnected; true when a version report was among it.
    pub(super) fn flush_deferred(&mut self) -> bool {
        let mut sent_inform = false;
        for channel in CHANNELS {
            let slot = &mut self.deferred[channel_index(channel)];
            if let Some(len) = slot.len.take() {
                let topic = self.topics.for_channel(channel);
                if let Err(e) = self.uplink.publish(topic, &slot.buf[..len]) {
                    ota_log!(Level::Warning, "held-back message not sent: {e}");
                }
                sent_inform |= channel == Channel::Inform;
            }
        }
        sent_inform
    }
}
