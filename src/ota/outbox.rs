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
    /// Messages that could not go out: while the broker was unreachable, the latest per
    /// channel, sent after the reconnection (or before the next message on its channel); and
    /// progress reports that found the MQTT request queue full (a fast download outruns their
    /// acknowledgements), sent before the next progress report or at the next `fetch_yield`.
    pub(super) deferred: [Deferred; 3],
    /// Whether holding a report for a full queue was logged since the queue last took one.
    pub(super) full_logged: bool,
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
        let is_progress = matches!(report, Report::Progress { .. });
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
        // What is held for this channel goes first, so the platform hears it in order (the
        // other channels' wait for the reconnection, `flush_deferred`).
        self.flush(channel);
        let topic = self.topics.for_channel(channel);
        let slot = &mut self.deferred[channel_index(channel)];
        match self.uplink.publish(topic, &self.message[..len]) {
            Ok(()) => {
                // A message held for this channel (still there: the queue is full or the
                // broker away) is older than the one just queued.
                slot.len = None;
                self.full_logged = false;
                Ok(())
            }
            Err(Error::Mqtt(MqttError::NotConnected)) => {
                slot.buf[..len].copy_from_slice(&self.message[..len]);
                slot.len = Some(len);
                ota_log!(
                    Level::Info,
                    "broker unreachable: message kept until reconnection"
                );
                Ok(())
            }
            // A progress report is superseded by the next: the latest is kept, not refused (a
            // failure or success report is refused: the caller must know it did not go).
            Err(Error::Mqtt(MqttError::QueueFull)) if is_progress => {
                slot.buf[..len].copy_from_slice(&self.message[..len]);
                slot.len = Some(len);
                if !std::mem::replace(&mut self.full_logged, true) {
                    ota_log!(
                        Level::Info,
                        "MQTT request queue full: the latest progress report is kept and sent \
                         when the queue has room"
                    );
                }
                Ok(())
            }
            other => other,
        }
    }

    /// After a reconnection: sends what was held back (while disconnected, or for a full
    /// queue) and can go now; what still cannot stays held. True when a version report was
    /// sent.
    pub(super) fn flush_deferred(&mut self) -> bool {
        let mut sent_inform = false;
        for channel in CHANNELS {
            sent_inform |= self.flush(channel) && channel == Channel::Inform;
        }
        sent_inform
    }

    /// Sends the message held for `channel`, if any and if it can go now; true when it went.
    pub(super) fn flush(&mut self, channel: Channel) -> bool {
        let slot = &mut self.deferred[channel_index(channel)];
        let Some(len) = slot.len else {
            return false;
        };
        let topic = self.topics.for_channel(channel);
        match self.uplink.publish(topic, &slot.buf[..len]) {
            Ok(()) => {
                slot.len = None;
                true
            }
            Err(Error::Mqtt(MqttError::NotConnected | MqttError::QueueFull)) => false,
            Err(e) => {
                slot.len = None;
                ota_log!(Level::Warning, "held-back message not sent: {e}");
                false
            }
        }
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
    use crate::protocol::{Limits, UpgradeNotice};
    use std::sync::{Arc, Mutex};

    /// An MQTT request queue of `room` places, emptied by the test.
    struct Queue {
        room: usize,
        sent: Vec<String>,
    }

    struct QueueUplink(Arc<Mutex<Queue>>);

    impl Uplink for QueueUplink {
        fn publish(&mut self, _topic: &str, payload: &[u8]) -> Result<()> {
            let mut q = self.0.lock().unwrap();
            if q.sent.len() >= q.room {
                return Err(Error::Mqtt(MqttError::QueueFull));
            }
            q.sent.push(String::from_utf8_lossy(payload).into_owned());
            Ok(())
        }
    }

    fn outbox(queue: &Arc<Mutex<Queue>>) -> Outbox {
        let limits = Limits::default();
        Outbox {
            protocol: Protocol::Aliyun,
            topics: Topics::new(Protocol::Aliyun, "pk", "dn"),
            uplink: Box::new(QueueUplink(queue.clone())),
            message: vec![0; limits.message].into_boxed_slice(),
            ids: IdCounter::new(Protocol::Aliyun),
            deferred: [0; 3].map(|_| Deferred::new(limits.message)),
            full_logged: false,
        }
    }

    #[test]
    fn progress_reports_that_find_the_queue_full_are_held_latest_first_out_before_the_next() {
        let queue = Arc::new(Mutex::new(Queue {
            room: 1,
            sent: Vec::new(),
        }));
        let mut out = outbox(&queue);
        let notice = UpgradeNotice::new(&Limits::default());
        let progress = |percent| Report::Progress {
            percent,
            desc: "",
            notice: &notice,
        };
        assert!(out.send(progress(10)).is_ok());
        // The queue is full: 20 is held, then replaced by 30; neither is an error.
        assert!(out.send(progress(20)).is_ok());
        assert!(out.send(progress(30)).is_ok());
        // A version report finding the queue full is refused as before.
        let version = Report::Version {
            version: "2.0.0",
            module: None,
        };
        assert!(matches!(
            out.send(version),
            Err(Error::Mqtt(MqttError::QueueFull))
        ));
        // The queue drains: the held 30 goes out before the next message.
        queue.lock().unwrap().room = 3;
        assert!(out.send(progress(40)).is_ok());
        let sent = queue.lock().unwrap().sent.clone();
        let steps: Vec<bool> = ["\"10\"", "\"30\"", "\"40\""]
            .iter()
            .zip(&sent)
            .map(|(step, m)| m.contains(step))
            .collect();
        assert_eq!((sent.len(), steps), (3, vec![true; 3]), "{sent:?}");
        // Nothing is held any more.
        assert!(!out.flush_deferred() && out.deferred.iter().all(|d| d.len.is_none()));
    }

    /// An uplink whose broker is away while `away` holds.
    struct Broker {
        away: bool,
        sent: Vec<String>,
    }

    struct BrokerUplink(Arc<Mutex<Broker>>);

    impl Uplink for BrokerUplink {
        fn publish(&mut self, _topic: &str, payload: &[u8]) -> Result<()> {
            let mut b = self.0.lock().unwrap();
            if b.away {
                return Err(Error::Mqtt(MqttError::NotConnected));
            }
            b.sent.push(String::from_utf8_lossy(payload).into_owned());
            Ok(())
        }
    }

    #[test]
    fn a_version_report_held_while_the_broker_is_away_waits_for_the_reconnection() {
        let broker = Arc::new(Mutex::new(Broker {
            away: true,
            sent: Vec::new(),
        }));
        let queue = Arc::new(Mutex::new(Queue {
            room: 0,
            sent: Vec::new(),
        }));
        let mut out = outbox(&queue);
        out.uplink = Box::new(BrokerUplink(broker.clone()));
        let notice = UpgradeNotice::new(&Limits::default());
        let version = Report::Version {
            version: "1.0.0",
            module: None,
        };
        assert!(out.send(version).is_ok(), "held, not refused");
        // The broker is back; a progress report and FetchYield's flush of progress come before
        // the reconnection's hook: the version report stays held for it.
        broker.lock().unwrap().away = false;
        let progress = Report::Progress {
            percent: 50,
            desc: "",
            notice: &notice,
        };
        assert!(out.send(progress).is_ok());
        assert!(!out.flush(Channel::Progress));
        let sent = broker.lock().unwrap().sent.clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(sent[0].contains("\"50\""), "{sent:?}");
        // The hook sends it (and says so: no second version report).
        assert!(out.flush_deferred());
        let sent = broker.lock().unwrap().sent.clone();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[1].contains("1.0.0"), "{sent:?}");
        assert!(!out.flush_deferred(), "nothing held any more");
    }

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
