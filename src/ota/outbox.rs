//! Publishing upstream messages, and holding them back while the broker is unreachable.

use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

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
    pub(super) ids: IdCounter,
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
        let id = self.ids.peek();
        let encoded =
            protocol::encode(self.protocol, &report, id, &mut self.message).map_err(|_| {
                Error::TooLong {
                    what: "upstream message",
                    len: self.message.len() + 1,
                    max: self.message.len(),
                }
            })?;
        let Some((channel, len)) = encoded else {
            return Ok(());
        };
        self.ids.take(id);
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

/// 2020-01-01T00:00:00Z in milliseconds: a wall clock before it was never set (a gateway
/// without a battery-backed RTC boots in 1970).
const CLOCK_SET_MS: u64 = 1_577_836_800_000;

/// Message ids that do not repeat when the device restarts: every message id of a device must
/// be unique (Aliyun, SagooIOT), and a counter from 1 would reuse the ids of the previous run.
///
/// Ids follow the wall clock in milliseconds: each is `max(previous + 1, now)`, so they are
/// strictly increasing within a run and a restart cannot reuse one unless the device sent more
/// than one message per millisecond on average before it. Aliyun allows 0..=4294967295, so
/// its ids are the milliseconds modulo 2^32, compared in serial-number order (RFC 1982):
/// they wrap to small numbers once every 49.7 days, still unique. While the clock reads
/// before 2020 (not set), a run starts at a random id (below the 2020 mark for 64-bit ids, so
/// never one a set clock gives) and counts up; ids follow the clock again once it is set.
/// Protocols without message ids ignore them.
pub(super) struct IdCounter {
    /// The id of the last message sent; `None` before the first.
    last: Option<u64>,
    /// Ids are counted modulo `mask + 1`.
    mask: u64,
}

impl IdCounter {
    pub(super) fn new(protocol: Protocol) -> IdCounter {
        IdCounter {
            last: None,
            mask: protocol.max_message_id(),
        }
    }

    /// The id the next message gets; [`take`](Self::take) it once the message is built.
    pub(super) fn peek(&self) -> u64 {
        self.peek_at(wall_clock_ms())
    }

    /// Records `id` (from [`peek`](Self::peek)) as used.
    pub(super) fn take(&mut self, id: u64) {
        self.last = Some(id);
    }

    /// The next id when the wall clock reads `now_ms` (`None`: not set).
    fn peek_at(&self, now_ms: Option<u64>) -> u64 {
        let now = now_ms.map(|ms| ms & self.mask);
        match (self.last, now) {
            (None, Some(now)) => now,
            // Below the 2020 mark, and within Aliyun's range.
            (None, None) => random() % self.mask.min(CLOCK_SET_MS),
            (Some(last), now) => {
                let next = last.wrapping_add(1) & self.mask;
                match now {
                    // `now` is at or after `next` in serial-number order.
                    Some(now) if now.wrapping_sub(next) & self.mask <= self.mask >> 1 => now,
                    _ => next,
                }
            }
        }
    }
}

/// Milliseconds since 1970 by the wall clock, or `None` when it reads before 2020.
fn wall_clock_ms() -> Option<u64> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis();
    u64::try_from(ms).ok().filter(|&ms| ms >= CLOCK_SET_MS)
}

/// A number that differs between runs: std seeds `RandomState` from the OS.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-06-01T00:00:00Z.
    const JUNE_2025: u64 = 1_748_736_000_000;

    fn next(ids: &mut IdCounter, now_ms: Option<u64>) -> u64 {
        let id = ids.peek_at(now_ms);
        ids.take(id);
        id
    }

    #[test]
    fn ids_follow_the_clock_and_never_go_back() {
        let mut ids = IdCounter::new(Protocol::Sagoo);
        assert_eq!(next(&mut ids, Some(JUNE_2025)), JUNE_2025);
        // Several in one millisecond, then the clock steps back (NTP): the count goes on.
        assert_eq!(next(&mut ids, Some(JUNE_2025)), JUNE_2025 + 1);
        assert_eq!(next(&mut ids, Some(JUNE_2025)), JUNE_2025 + 2);
        assert_eq!(next(&mut ids, Some(JUNE_2025 - 60_000)), JUNE_2025 + 3);
        assert_eq!(next(&mut ids, Some(JUNE_2025 + 500)), JUNE_2025 + 500);
    }

    #[test]
    fn a_peeked_id_is_not_used_up_until_taken() {
        let mut ids = IdCounter::new(Protocol::Sagoo);
        ids.take(JUNE_2025);
        assert_eq!(ids.peek_at(Some(JUNE_2025)), JUNE_2025 + 1);
        assert_eq!(ids.peek_at(Some(JUNE_2025)), JUNE_2025 + 1);
    }

    #[test]
    fn aliyun_ids_stay_within_32_bits_and_wrap_with_the_clock() {
        let mut ids = IdCounter::new(Protocol::Aliyun);
        let first = next(&mut ids, Some(JUNE_2025));
        assert_eq!(first, JUNE_2025 % (1 << 32));
        assert_eq!(next(&mut ids, Some(JUNE_2025)), first + 1);
        // The clock's last millisecond before a multiple of 2^32, then the next ones.
        let edge = (JUNE_2025 | u32::MAX as u64) + 1;
        let mut ids = IdCounter::new(Protocol::Aliyun);
        assert_eq!(next(&mut ids, Some(edge - 1)), u32::MAX as u64);
        assert_eq!(next(&mut ids, Some(edge - 1)), 0, "wraps, within the range");
        assert_eq!(next(&mut ids, Some(edge)), 1);
        assert_eq!(
            next(&mut ids, Some(edge + 10)),
            10,
            "follows the clock again"
        );
    }

    #[test]
    fn an_unset_clock_starts_at_a_random_id_below_the_2020_mark() {
        let mut a = IdCounter::new(Protocol::Sagoo);
        let b = IdCounter::new(Protocol::Sagoo);
        let first = next(&mut a, None);
        assert!(first < CLOCK_SET_MS);
        assert_ne!(first, b.peek_at(None), "two runs start apart");
        assert_eq!(next(&mut a, None), first + 1);
        // The clock gets set (NTP): ids follow it from then on.
        assert_eq!(next(&mut a, Some(JUNE_2025)), JUNE_2025);
        let aliyun = IdCounter::new(Protocol::Aliyun);
        assert!(aliyun.peek_at(None) <= u32::MAX as u64);
    }
}
