//! The delivery state of one MQTT 3.1.1 client: packet identifiers, the QoS 1 and 2 publishes
//! sent and not yet acknowledged (sent again after a reconnection), both directions of the QoS 2
//! handshake, and the keep-alive ping waiting for its answer.
//!
//! It encodes what it sends, so a publish waiting for its acknowledgement is kept once, in its
//! slot, and written from there. Its memory is fixed when the client is made: one slot per
//! publish in flight and a short list of QoS 2 packet ids received (rumqttc's `MqttState`, which
//! this replaces, kept a bit for each of the 65 535 ids, 8 KB, and a copy of every message it
//! delivered).

use bytes::BytesMut;
use rumqttc::{Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, Request};

use crate::error::MqttError;

/// QoS 2 packet ids received whose PUBREL has not come yet: a publish repeated with one of them
/// is acknowledged again but not delivered twice. Brokers hold 10-20 messages in flight to a
/// client (Mosquitto's `max_inflight_messages` is 20); past this many the oldest id is forgotten
/// and only exactly-once for it weakens (a repeat would be delivered again).
const RECEIVED_QOS2: usize = 20;

/// One place for a message sent and not yet acknowledged.
enum Slot {
    Free,
    /// A QoS 1 publish waiting for its PUBACK, or a QoS 2 one waiting for its PUBREC.
    Publish {
        sent: u64,
        publish: Publish,
    },
    /// A QoS 2 publish whose PUBREC came: its PUBREL waits for the PUBCOMP.
    Release {
        sent: u64,
        pkid: u16,
    },
}

impl Slot {
    fn pkid(&self) -> Option<u16> {
        match self {
            Slot::Free => None,
            Slot::Publish { publish, .. } => Some(publish.pkid),
            Slot::Release { pkid, .. } => Some(*pkid),
        }
    }

    fn sent(&self) -> Option<u64> {
        match self {
            Slot::Free => None,
            Slot::Publish { sent, .. } | Slot::Release { sent, .. } => Some(*sent),
        }
    }
}

/// What an arrived packet asks of the client, besides the answer [`Flow::receive`] encoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Hand it to the handlers (a message, an acknowledgement the firmware hears of).
    Deliver,
    /// Nothing more: an answer to a ping, a QoS 2 step, a message already delivered, or an
    /// acknowledgement of nothing in flight.
    Done,
}

pub(super) struct Flow {
    slots: Vec<Slot>,
    /// The last packet id given out (ids run 1..=65535, skipping those in flight).
    last_id: u16,
    /// Sequence of sends, so that what is sent again after a reconnection keeps its order.
    sends: u64,
    /// QoS 2 ids received and answered with PUBREC, waiting for PUBREL (0: free).
    received: [u16; RECEIVED_QOS2],
    /// Where the next received id goes (the oldest when all are taken).
    received_next: usize,
    /// A PINGREQ went out and its PINGRESP has not come.
    awaiting_pong: bool,
}

impl Flow {
    /// A state for `in_flight` unacknowledged publishes at most (allocated here, once).
    pub(super) fn new(in_flight: usize) -> Flow {
        Flow {
            slots: (0..in_flight.max(1)).map(|_| Slot::Free).collect(),
            last_id: 0,
            sends: 0,
            received: [0; RECEIVED_QOS2],
            received_next: 0,
            awaiting_pong: false,
        }
    }

    /// Publishes (and releases) sent and not yet acknowledged.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s, Slot::Free))
            .count()
    }

    /// Whether one more QoS 1 or 2 publish may be sent now.
    pub(super) fn has_room(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Free))
    }

    fn in_use(&self, id: u16) -> bool {
        self.slots.iter().any(|s| s.pkid() == Some(id))
    }

    /// A packet id no message in flight has.
    fn next_id(&mut self) -> u16 {
        loop {
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            if !self.in_use(self.last_id) {
                return self.last_id;
            }
        }
    }

    /// The first free slot; none free is the caller's error (it checks [`Flow::has_room`]).
    fn free_slot(&self) -> Result<usize, MqttError> {
        let free = self.slots.iter().position(|s| matches!(s, Slot::Free));
        free.ok_or(MqttError::Protocol)
    }

    fn stamp(&mut self) -> u64 {
        self.sends += 1;
        self.sends
    }

    /// Encodes `request` after what `tx` holds, giving it a packet id where it needs one and
    /// keeping a QoS 1/2 publish (or a PUBREL) until it is acknowledged.
    pub(super) fn send(
        &mut self,
        request: Request,
        tx: &mut BytesMut,
        max_packet: usize,
    ) -> Result<(), MqttError> {
        match request {
            Request::Publish(mut publish) => {
                if publish.qos == QoS::AtMostOnce {
                    return write_publish(&publish, tx, max_packet);
                }
                let at = self.free_slot()?;
                // A publish sent again after a reconnection keeps its id, unless a newer
                // message has it meanwhile.
                if publish.pkid == 0 || self.in_use(publish.pkid) {
                    publish.pkid = self.next_id();
                }
                write_publish(&publish, tx, max_packet)?;
                let sent = self.stamp();
                self.slots[at] = Slot::Publish { sent, publish };
                Ok(())
            }
            Request::PubRel(rel) => {
                let at = self.free_slot()?;
                write(&Packet::PubRel(PubRel::new(rel.pkid)), tx, max_packet)?;
                let sent = self.stamp();
                self.slots[at] = Slot::Release {
                    sent,
                    pkid: rel.pkid,
                };
                Ok(())
            }
            Request::Subscribe(mut s) => {
                s.pkid = self.next_id();
                write(&Packet::Subscribe(s), tx, max_packet)
            }
            Request::Unsubscribe(mut u) => {
                u.pkid = self.next_id();
                write(&Packet::Unsubscribe(u), tx, max_packet)
            }
            Request::Disconnect(_) => write(&Packet::Disconnect, tx, max_packet),
            Request::PingReq(_) => self.ping(tx, max_packet),
            // Acknowledgements are answers to arrivals, written by `receive`.
            _ => Err(MqttError::Protocol),
        }
    }

    /// Encodes a PINGREQ; the previous one still unanswered means the broker is gone.
    pub(super) fn ping(&mut self, tx: &mut BytesMut, max_packet: usize) -> Result<(), MqttError> {
        if self.awaiting_pong {
            return Err(MqttError::Timeout);
        }
        write(&Packet::PingReq, tx, max_packet)?;
        self.awaiting_pong = true;
        Ok(())
    }

    /// Takes in an arrived packet: encodes its answer after what `tx` holds (PUBACK, PUBREC,
    /// PUBREL, PUBCOMP), frees what it acknowledges, and says whether to deliver it. A packet a
    /// broker never sends a client is a protocol error.
    pub(super) fn receive(
        &mut self,
        packet: &Packet,
        tx: &mut BytesMut,
        max_packet: usize,
    ) -> Result<Arrival, MqttError> {
        match packet {
            Packet::PingResp => {
                self.awaiting_pong = false;
                Ok(Arrival::Done)
            }
            Packet::Publish(p) => match p.qos {
                QoS::AtMostOnce => Ok(Arrival::Deliver),
                _ if p.pkid == 0 => Err(MqttError::Protocol),
                QoS::AtLeastOnce => {
                    write(&Packet::PubAck(PubAck::new(p.pkid)), tx, max_packet)?;
                    Ok(Arrival::Deliver)
                }
                QoS::ExactlyOnce => {
                    write(&Packet::PubRec(PubRec::new(p.pkid)), tx, max_packet)?;
                    if self.received.contains(&p.pkid) {
                        return Ok(Arrival::Done);
                    }
                    self.received[self.received_next] = p.pkid;
                    self.received_next = (self.received_next + 1) % RECEIVED_QOS2;
                    Ok(Arrival::Deliver)
                }
            },
            Packet::PubRel(rel) => {
                // Answered whether or not the id is known (MQTT 3.1.1, 4.3.3): a PUBREL sent
                // again after a reconnection must still end the broker's handshake.
                if let Some(id) = self.received.iter_mut().find(|id| **id == rel.pkid) {
                    *id = 0;
                }
                write(&Packet::PubComp(PubComp::new(rel.pkid)), tx, max_packet)?;
                Ok(Arrival::Done)
            }
            Packet::PubAck(ack) => Ok(self.acknowledged(
                ack.pkid,
                |s| matches!(s, Slot::Publish { publish, .. } if publish.qos == QoS::AtLeastOnce),
            )),
            Packet::PubRec(rec) => {
                let pkid = rec.pkid;
                let at = self.slots.iter().position(|s| {
                    matches!(s, Slot::Publish { publish, .. }
                        if publish.pkid == pkid && publish.qos == QoS::ExactlyOnce)
                });
                if let Some(i) = at {
                    write(&Packet::PubRel(PubRel::new(pkid)), tx, max_packet)?;
                    let sent = self.slots[i].sent().unwrap_or(0);
                    self.slots[i] = Slot::Release { sent, pkid };
                } else if self
                    .slots
                    .iter()
                    .any(|s| matches!(s, Slot::Release { pkid: p, .. } if *p == pkid))
                {
                    // The PUBREC came again: so does the PUBREL.
                    write(&Packet::PubRel(PubRel::new(pkid)), tx, max_packet)?;
                }
                Ok(Arrival::Done)
            }
            Packet::PubComp(comp) => {
                self.acknowledged(comp.pkid, |s| matches!(s, Slot::Release { .. }));
                Ok(Arrival::Done)
            }
            Packet::SubAck(_) | Packet::UnsubAck(_) => Ok(Arrival::Deliver),
            _ => Err(MqttError::Protocol),
        }
    }

    /// Frees the slot of `pkid` if `expected` says it is what the acknowledgement ends; an
    /// acknowledgement of nothing in flight (a duplicate, or one for another session) is
    /// dropped.
    fn acknowledged(&mut self, pkid: u16, expected: impl Fn(&Slot) -> bool) -> Arrival {
        match self
            .slots
            .iter_mut()
            .find(|s| s.pkid() == Some(pkid) && expected(s))
        {
            Some(slot) => {
                *slot = Slot::Free;
                Arrival::Deliver
            }
            None => Arrival::Done,
        }
    }

    /// The connection is gone. Hands over what must be sent again on the next one, newest
    /// first (so pushing each to the front of a queue leaves them in the order they were first
    /// sent): publishes with DUP set and their ids, PUBRELs. With a clean session the broker
    /// forgets the QoS 2 messages it sent, so the ids received are forgotten too.
    pub(super) fn lost(&mut self, clean_session: bool, mut again: impl FnMut(Request)) {
        self.awaiting_pong = false;
        if clean_session {
            self.received = [0; RECEIVED_QOS2];
        }
        while let Some(i) = (0..self.slots.len())
            .filter(|&i| self.slots[i].sent().is_some())
            .max_by_key(|&i| self.slots[i].sent())
        {
            match std::mem::replace(&mut self.slots[i], Slot::Free) {
                Slot::Publish { mut publish, .. } => {
                    publish.dup = true;
                    again(Request::Publish(publish));
                }
                Slot::Release { pkid, .. } => again(Request::PubRel(PubRel::new(pkid))),
                Slot::Free => {}
            }
        }
    }
}

fn write(packet: &Packet, tx: &mut BytesMut, max_packet: usize) -> Result<(), MqttError> {
    packet
        .write(tx, max_packet)
        .map(drop)
        .map_err(|_| MqttError::TooLarge)
}

fn write_publish(p: &Publish, tx: &mut BytesMut, max_packet: usize) -> Result<(), MqttError> {
    if p.size() > max_packet {
        return Err(MqttError::TooLarge);
    }
    p.write(tx).map(drop).map_err(|_| MqttError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Subscribe, Unsubscribe};

    const MAX: usize = 1024;

    fn publish(qos: QoS, payload: &[u8]) -> Request {
        Request::Publish(Publish::new("t/x", qos, payload.to_vec()))
    }

    /// The packets `tx` holds, decoded (and `tx` emptied).
    fn sent(tx: &mut BytesMut) -> Vec<Packet> {
        let mut out = Vec::new();
        while !tx.is_empty() {
            out.push(Packet::read(tx, MAX).expect("a whole packet"));
        }
        out
    }

    /// The packet ids of what `tx` holds (publishes, subscriptions, releases), `tx` emptied.
    fn ids(tx: &mut BytesMut) -> Vec<u16> {
        sent(tx)
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.pkid,
                Packet::Subscribe(s) => s.pkid,
                Packet::Unsubscribe(u) => u.pkid,
                Packet::PubRel(r) => r.pkid,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn incoming_publish(qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
        let mut p = Publish::new("d/x", qos, payload.to_vec());
        p.pkid = pkid;
        Packet::Publish(p)
    }

    #[test]
    fn qos1_publishes_take_ids_and_free_their_slot_at_the_puback() {
        let mut f = Flow::new(2);
        let mut tx = BytesMut::new();
        f.send(publish(QoS::AtLeastOnce, b"a"), &mut tx, MAX)
            .unwrap();
        f.send(publish(QoS::AtLeastOnce, b"b"), &mut tx, MAX)
            .unwrap();
        assert!(!f.has_room());
        assert_eq!(f.in_flight(), 2);
        assert_eq!(ids(&mut tx), [1, 2]);
        // A QoS 0 publish needs no slot.
        f.send(publish(QoS::AtMostOnce, b"c"), &mut tx, MAX)
            .unwrap();
        assert_eq!(
            f.send(publish(QoS::AtLeastOnce, b"d"), &mut tx, MAX),
            Err(MqttError::Protocol),
            "no room: the caller must wait"
        );
        let ack = Packet::PubAck(PubAck::new(2));
        assert_eq!(f.receive(&ack, &mut tx, MAX), Ok(Arrival::Deliver));
        assert_eq!(f.in_flight(), 1);
        // The same PUBACK again acknowledges nothing.
        assert_eq!(f.receive(&ack, &mut tx, MAX), Ok(Arrival::Done));
        tx.clear();
        f.send(publish(QoS::AtLeastOnce, b"e"), &mut tx, MAX)
            .unwrap();
        assert_eq!(ids(&mut tx), [3], "ids go on, skipping none in use");
    }

    #[test]
    fn ids_skip_those_in_flight_and_wrap_past_65535() {
        let mut f = Flow::new(2);
        let mut tx = BytesMut::new();
        f.last_id = u16::MAX - 1;
        f.send(publish(QoS::AtLeastOnce, b"a"), &mut tx, MAX)
            .unwrap();
        // The subscription after it takes 1 (0 is no id); with the counter set back, the
        // unsubscription skips 65535, still in flight.
        f.send(
            Request::Subscribe(Subscribe::new("s/#", QoS::AtLeastOnce)),
            &mut tx,
            MAX,
        )
        .unwrap();
        f.last_id = u16::MAX - 1;
        f.send(Request::Unsubscribe(Unsubscribe::new("s/#")), &mut tx, MAX)
            .unwrap();
        assert_eq!(ids(&mut tx), [u16::MAX, 1, 1]);
    }

    #[test]
    fn qos2_out_goes_publish_pubrec_pubrel_pubcomp() {
        let mut f = Flow::new(4);
        let mut tx = BytesMut::new();
        f.send(publish(QoS::ExactlyOnce, b"x"), &mut tx, MAX)
            .unwrap();
        tx.clear();
        let rec = Packet::PubRec(PubRec::new(1));
        assert_eq!(f.receive(&rec, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(sent(&mut tx), [Packet::PubRel(PubRel::new(1))]);
        assert_eq!(f.in_flight(), 1, "the release waits for its PUBCOMP");
        // A PUBREC repeated is answered again; a PUBACK does not end a QoS 2 exchange.
        assert_eq!(f.receive(&rec, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(sent(&mut tx), [Packet::PubRel(PubRel::new(1))]);
        let ack = Packet::PubAck(PubAck::new(1));
        assert_eq!(f.receive(&ack, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(f.in_flight(), 1);
        let comp = Packet::PubComp(PubComp::new(1));
        assert_eq!(f.receive(&comp, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(f.in_flight(), 0);
        assert!(sent(&mut tx).is_empty());
    }

    #[test]
    fn a_qos2_message_repeated_before_its_pubrel_is_delivered_once() {
        let mut f = Flow::new(1);
        let mut tx = BytesMut::new();
        let msg = incoming_publish(QoS::ExactlyOnce, 9, b"two");
        assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(Arrival::Deliver));
        assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(
            sent(&mut tx),
            [
                Packet::PubRec(PubRec::new(9)),
                Packet::PubRec(PubRec::new(9))
            ]
        );
        let rel = Packet::PubRel(PubRel::new(9));
        assert_eq!(f.receive(&rel, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(sent(&mut tx), [Packet::PubComp(PubComp::new(9))]);
        // After the PUBREL the id is free: a new message with it is delivered.
        assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(Arrival::Deliver));
        // A PUBREL of an id never seen is still answered.
        tx.clear();
        let stray = Packet::PubRel(PubRel::new(77));
        assert_eq!(f.receive(&stray, &mut tx, MAX), Ok(Arrival::Done));
        assert_eq!(sent(&mut tx), [Packet::PubComp(PubComp::new(77))]);
    }

    #[test]
    fn qos1_messages_are_acknowledged_and_bad_arrivals_refused() {
        let mut f = Flow::new(1);
        let mut tx = BytesMut::new();
        let msg = incoming_publish(QoS::AtLeastOnce, 7, b"one");
        assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(Arrival::Deliver));
        assert_eq!(sent(&mut tx), [Packet::PubAck(PubAck::new(7))]);
        let no_id = incoming_publish(QoS::AtLeastOnce, 0, b"bad");
        assert_eq!(f.receive(&no_id, &mut tx, MAX), Err(MqttError::Protocol));
        assert_eq!(
            f.receive(&Packet::PingReq, &mut tx, MAX),
            Err(MqttError::Protocol),
            "a broker never pings a client"
        );
        assert!(sent(&mut tx).is_empty());
    }

    #[test]
    fn an_unanswered_ping_ends_the_connection_at_the_next_one() {
        let mut f = Flow::new(1);
        let mut tx = BytesMut::new();
        f.ping(&mut tx, MAX).unwrap();
        assert_eq!(
            f.receive(&Packet::PingResp, &mut tx, MAX),
            Ok(Arrival::Done)
        );
        f.ping(&mut tx, MAX).unwrap();
        assert_eq!(f.ping(&mut tx, MAX), Err(MqttError::Timeout));
        assert_eq!(sent(&mut tx), [Packet::PingReq, Packet::PingReq]);
        // A new connection starts with no ping outstanding.
        f.lost(true, |_| {});
        f.ping(&mut tx, MAX).unwrap();
    }

    #[test]
    fn after_a_loss_what_was_in_flight_goes_again_in_its_first_order_with_dup() {
        let mut f = Flow::new(4);
        let mut tx = BytesMut::new();
        for p in [b"a", b"b", b"c"] {
            f.send(publish(QoS::ExactlyOnce, p), &mut tx, MAX).unwrap();
        }
        // The first is acknowledged, the second reached PUBREL.
        f.receive(&Packet::PubRec(PubRec::new(1)), &mut tx, MAX)
            .unwrap();
        f.receive(&Packet::PubComp(PubComp::new(1)), &mut tx, MAX)
            .unwrap();
        f.receive(&Packet::PubRec(PubRec::new(2)), &mut tx, MAX)
            .unwrap();
        f.send(publish(QoS::AtLeastOnce, b"d"), &mut tx, MAX)
            .unwrap();
        let mut queue = std::collections::VecDeque::new();
        f.lost(true, |r| queue.push_front(r));
        assert_eq!(f.in_flight(), 0);
        let again: Vec<String> = queue
            .iter()
            .map(|r| match r {
                Request::Publish(p) => {
                    assert!(p.dup, "DUP on a publish sent again");
                    format!("publish {} {:?}", p.pkid, p.payload)
                }
                Request::PubRel(r) => format!("pubrel {}", r.pkid),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(again, ["pubrel 2", "publish 3 b\"c\"", "publish 4 b\"d\""]);
        // Sent again, they keep their ids.
        tx.clear();
        for r in queue {
            f.send(r, &mut tx, MAX).unwrap();
        }
        let ids: Vec<String> = sent(&mut tx)
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => format!("publish {} dup {}", p.pkid, p.dup),
                Packet::PubRel(r) => format!("pubrel {}", r.pkid),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            ["pubrel 2", "publish 3 dup true", "publish 4 dup true"]
        );
        assert_eq!(f.in_flight(), 3);
    }

    #[test]
    fn a_persistent_session_remembers_the_qos2_ids_received_across_a_loss() {
        let mut tx = BytesMut::new();
        let msg = incoming_publish(QoS::ExactlyOnce, 5, b"x");
        for (clean, after) in [(false, Arrival::Done), (true, Arrival::Deliver)] {
            let mut f = Flow::new(1);
            assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(Arrival::Deliver));
            f.lost(clean, |_| {});
            assert_eq!(f.receive(&msg, &mut tx, MAX), Ok(after), "clean {clean}");
        }
    }

    #[test]
    fn a_packet_over_the_limit_is_refused_and_not_kept() {
        let mut f = Flow::new(1);
        let mut tx = BytesMut::new();
        let big = publish(QoS::AtLeastOnce, &[0u8; 200]);
        assert_eq!(f.send(big, &mut tx, 100), Err(MqttError::TooLarge));
        assert_eq!(f.in_flight(), 0);
        assert!(tx.is_empty());
    }
}
