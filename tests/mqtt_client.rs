//! The synchronous MQTT client against brokers that misbehave on purpose: scripted peers on
//! real 127.0.0.1 sockets that refuse, stall, stop answering pings, send oversized packets,
//! drop a publish or deliver what was never subscribed, plus the embedded broker for flow
//! control. Each test names the behaviour a device relies on.

mod common;
use common::cmqtt;
use common::mqtt_wire::{
    read_packet, read_until, CONNECT, DISCONNECT, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    SUBSCRIBE,
};
use common::wait;

use std::ffi::c_void;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ota::error::{Error, MqttError};
use ota::ffi::mqtt::{
    iotx_mqtt_event_msg_pt, iotx_mqtt_event_type_t, iotx_mqtt_topic_info_t, IOT_MQTT_Construct,
    IOT_MQTT_Destroy, IOT_MQTT_Subscribe, IOT_MQTT_Yield, IOTX_MQTT_QOS1,
};
use ota::mqtt::{MqttEvent, QoS};
use ota::ota::Uplink;
use ota::{MqttClient, MqttOptions};
use ota_cloud::broker::EmbeddedBroker;

fn write(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("peer writes");
}

fn connack(s: &mut TcpStream, code: u8) {
    write(s, &[0x20, 2, 0, code]);
}

/// A peer on a free port: accepts `connections` connections one after another and runs
/// `script` on each (with its index).
fn scripted(
    connections: usize,
    script: impl Fn(usize, TcpStream) + Send + Sync + 'static,
) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        for i in 0..connections {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            script(i, stream);
        }
    });
    (port, handle)
}

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new("127.0.0.1", port, id);
    o.request_timeout = Duration::from_secs(1);
    o
}

/// Bytes received and not yet read on this machine's IPv4 sockets connected to `port` on
/// 127.0.0.1 (the clients' ends of their connections to a broker there), from /proc/net/tcp.
fn unread_bytes_from(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, remote_port) = fields.get(2)?.split_once(':')?;
            let (_, rx_queue) = fields.get(4)?.split_once(':')?;
            (u16::from_str_radix(remote_port, 16).ok()? == port)
                .then(|| usize::from_str_radix(rx_queue, 16).ok())?
        })
        .sum()
}

/// Records the client's events.
fn events(client: &MqttClient) -> Arc<Mutex<Vec<MqttEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    client.on_event(move |e| s.lock().unwrap().push(*e));
    seen
}

/// Yields until `done` holds, for at most `limit`.
fn yield_until(client: &MqttClient, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        client.yield_for(Duration::from_millis(50)).unwrap();
        if done() {
            return true;
        }
    }
    false
}

#[test]
fn a_refused_connection_reports_the_connack_code() {
    let (port, peer) = scripted(1, |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 5);
    });
    let err = MqttClient::connect(&options(port, "refused"))
        .err()
        .expect("refused");
    assert_eq!(err, Error::Mqtt(MqttError::Refused(5)));
    peer.join().unwrap();
}

#[test]
fn a_broker_that_never_answers_connect_times_out() {
    let (port, peer) = scripted(1, |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        // Holds the connection open without a CONNACK until the client gives up.
        let _ = read_packet(&mut s);
    });
    let started = Instant::now();
    let err = MqttClient::connect(&options(port, "stalled"))
        .err()
        .expect("timed out");
    assert_eq!(err, Error::Mqtt(MqttError::Timeout));
    // The request timeout (1 s) plus the 2 s CONNACK margin, with slack for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
    peer.join().unwrap();
}

#[test]
fn keepalive_pings_and_a_silent_broker_ends_the_connection() {
    let pings = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let p = pings.clone();
    let (port, peer) = scripted(1, move |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        // The first PINGREQ is answered, later ones are not.
        while let Some(packet) = read_packet(&mut s) {
            if packet.kind() == PINGREQ && p.fetch_add(1, Ordering::SeqCst) == 0 {
                write(&mut s, &[0xd0, 0]);
            }
        }
        tx.send(p.load(Ordering::SeqCst)).unwrap();
    });
    let mut o = options(port, "pinger");
    o.keepalive = Duration::from_secs(1);
    let client = MqttClient::connect(&o).unwrap();
    let seen = events(&client);
    assert!(yield_until(&client, Duration::from_secs(3), || pings
        .load(Ordering::SeqCst)
        >= 2));
    assert!(
        client.is_connected(),
        "an answered PINGREQ keeps the connection"
    );
    assert!(yield_until(&client, Duration::from_secs(10), || !client.is_connected()));
    assert_eq!(seen.lock().unwrap().as_slice(), &[MqttEvent::Disconnected]);
    // The connection ended on the PINGREQ after the unanswered one was due.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        2,
        "closed when the next PINGREQ was due"
    );
    peer.join().unwrap();
}

#[test]
fn an_oversized_packet_drops_the_connection_and_the_client_comes_back() {
    let (port, peer) = scripted(2, |i, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        if i == 0 {
            // A PUBLISH announcing 10 MB: the client must give up on the header alone.
            write(&mut s, &[0x30, 0x80, 0x80, 0x80, 0x05]);
            // The client closes the connection (after what it had queued).
            while read_packet(&mut s).is_some() {}
        } else {
            // The client re-subscribes on the new connection.
            let sub = read_until(&mut s, SUBSCRIBE).expect("SUBSCRIBE again");
            write(&mut s, &[0x90, 3, sub.body[0], sub.body[1], 0]);
            let _ = read_until(&mut s, DISCONNECT);
        }
    });
    let client = MqttClient::connect(&options(port, "oversize")).unwrap();
    let seen = events(&client);
    client.subscribe("a/b", QoS::AtMostOnce, |_| {}).unwrap();
    assert!(yield_until(&client, Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&MqttEvent::Reconnected)
    }));
    let events = seen.lock().unwrap().clone();
    assert_eq!(events[0], MqttEvent::Disconnected, "{events:?}");
    assert!(yield_until(&client, Duration::from_secs(5), || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, MqttEvent::SubscribeAck { .. }))
            .count()
            == 1
    }));
    client.disconnect(Duration::from_secs(2));
    peer.join().unwrap();
}

#[test]
fn an_unacknowledged_publish_is_sent_again_after_a_reconnection() {
    let (tx, rx) = mpsc::channel();
    let (port, peer) = scripted(2, move |i, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        let publish = read_until(&mut s, PUBLISH).expect("PUBLISH");
        tx.send((i, publish.first, publish.body.clone())).unwrap();
        if i == 1 {
            // pkid follows the topic ("t/r": 2 + 3 bytes).
            write(&mut s, &[0x40, 2, publish.body[5], publish.body[6]]);
            let _ = read_until(&mut s, DISCONNECT);
        }
        // The first connection closes without a PUBACK.
    });
    let client = MqttClient::connect(&options(port, "resend")).unwrap();
    let seen = events(&client);
    client
        .publish("t/r", QoS::AtLeastOnce, false, b"progress 42")
        .unwrap();
    assert!(yield_until(&client, Duration::from_secs(10), || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, MqttEvent::PublishAck { .. }))
    }));
    let (first, second) = (rx.recv().unwrap(), rx.recv().unwrap());
    assert_eq!((first.0, second.0), (0, 1));
    assert_eq!(first.2, second.2, "the same packet id, topic and payload");
    assert!(first.2.ends_with(b"progress 42"));
    assert_eq!(first.1 & 0x06, 0x02, "QoS 1");
    assert_eq!(
        (first.1 & 0x08, second.1 & 0x08),
        (0, 0x08),
        "DUP set on the publish sent again (MQTT-3.3.1-1)"
    );
    client.disconnect(Duration::from_secs(2));
    peer.join().unwrap();
}

#[test]
fn incoming_qos1_and_qos2_messages_are_acknowledged_and_delivered_once() {
    let (port, peer) = scripted(1, |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        // QoS 1, packet id 7, topic "d/x", payload "one".
        write(
            &mut s,
            &[0x32, 10, 0, 3, b'd', b'/', b'x', 0, 7, b'o', b'n', b'e'],
        );
        let ack = read_until(&mut s, PUBACK).expect("PUBACK");
        assert_eq!(ack.body, [0, 7]);
        // QoS 2, packet id 9, payload "two"; then PUBREL.
        write(
            &mut s,
            &[0x34, 10, 0, 3, b'd', b'/', b'x', 0, 9, b't', b'w', b'o'],
        );
        let rec = read_until(&mut s, PUBREC).expect("PUBREC");
        assert_eq!(rec.body, [0, 9]);
        write(&mut s, &[0x62, 2, 0, 9]);
        let comp = read_until(&mut s, PUBCOMP).expect("PUBCOMP");
        assert_eq!(comp.body, [0, 9]);
        let _ = read_until(&mut s, DISCONNECT);
    });
    let client = MqttClient::connect(&options(port, "acks")).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    client
        .subscribe("d/#", QoS::ExactlyOnce, move |m| {
            g.lock()
                .unwrap()
                .push((m.payload.to_vec(), m.qos, m.packet_id));
        })
        .unwrap();
    assert!(yield_until(&client, Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .len()
        == 2));
    // Let the PUBREL/PUBCOMP exchange finish before leaving.
    client.yield_for(Duration::from_millis(200)).unwrap();
    assert_eq!(
        got.lock().unwrap().as_slice(),
        &[
            (b"one".to_vec(), QoS::AtLeastOnce, 7),
            (b"two".to_vec(), QoS::ExactlyOnce, 9)
        ]
    );
    client.disconnect(Duration::from_secs(2));
    peer.join().unwrap();
}

#[test]
fn disconnect_sends_disconnect_and_raises_no_event() {
    let (tx, rx) = mpsc::channel();
    let (port, peer) = scripted(1, move |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        let mut kinds = Vec::new();
        while let Some(p) = read_packet(&mut s) {
            kinds.push(p.kind());
        }
        tx.send(kinds).unwrap();
    });
    let client = MqttClient::connect(&options(port, "bye")).unwrap();
    let seen = events(&client);
    client
        .publish("t/q", QoS::AtMostOnce, false, b"last")
        .unwrap();
    client.disconnect(Duration::from_secs(2));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        [PUBLISH, DISCONNECT],
        "what was queued goes out before DISCONNECT, then the socket closes"
    );
    assert!(!client.is_connected());
    client.yield_for(Duration::from_millis(100)).unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    peer.join().unwrap();
}

#[test]
fn no_more_than_20_publishes_wait_for_their_acknowledgement() {
    let (tx, rx) = mpsc::channel();
    let (port, peer) = scripted(1, move |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        let mut ids = Vec::new();
        // Nothing is acknowledged until the client stops sending.
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        while let Some(p) = read_packet(&mut s) {
            assert_eq!(p.kind(), PUBLISH);
            ids.push([p.body[5], p.body[6]]);
        }
        tx.send(ids.len()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut acked = 0;
        for id in ids {
            write(&mut s, &[0x40, 2, id[0], id[1]]);
            acked += 1;
        }
        // The rest arrive once the window opens.
        let mut late = 0;
        while late < 150 - acked {
            let p = read_until(&mut s, PUBLISH).expect("PUBLISH");
            write(&mut s, &[0x40, 2, p.body[5], p.body[6]]);
            late += 1;
        }
        tx.send(late).unwrap();
        let _ = read_until(&mut s, DISCONNECT);
    });
    let client = MqttClient::connect(&options(port, "window")).unwrap();
    let acks = Arc::new(AtomicUsize::new(0));
    let a = acks.clone();
    client.on_event(move |e| {
        if matches!(e, MqttEvent::PublishAck { .. }) {
            a.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut queued = 0;
    while queued < 150 {
        match client.publish("t/w", QoS::AtLeastOnce, false, b"x") {
            Ok(()) => queued += 1,
            Err(e) => {
                assert_eq!(e, Error::Mqtt(MqttError::QueueFull));
                client.yield_for(Duration::ZERO).unwrap();
            }
        }
    }
    assert!(yield_until(&client, Duration::from_secs(10), || acks
        .load(Ordering::SeqCst)
        == 150));
    assert_eq!(rx.recv().unwrap(), 20, "the in-flight window");
    assert_eq!(rx.recv().unwrap(), 130);
    client.disconnect(Duration::from_secs(2));
    peer.join().unwrap();
}

#[test]
fn the_request_queue_is_bounded_and_drains_on_yield() {
    let broker = EmbeddedBroker::start().unwrap();
    let client = MqttClient::connect(&options(broker.port(), "queue")).unwrap();
    for i in 0..64 {
        client
            .publish("q/t", QoS::AtMostOnce, false, format!("{i}").as_bytes())
            .unwrap();
    }
    assert_eq!(
        client.publish("q/t", QoS::AtMostOnce, false, b"one too many"),
        Err(Error::Mqtt(MqttError::QueueFull))
    );
    client.yield_for(Duration::ZERO).unwrap();
    client
        .publish("q/t", QoS::AtMostOnce, false, b"room again")
        .unwrap();
}

#[test]
fn a_zero_timeout_yield_handles_at_most_64_messages() {
    let broker = EmbeddedBroker::start().unwrap();
    let device = MqttClient::connect(&options(broker.port(), "busy-device")).unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    device
        .subscribe("flood/#", QoS::AtMostOnce, move |_| {
            g.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let s = subscribed.clone();
    device.on_event(move |e| {
        if matches!(e, MqttEvent::SubscribeAck { .. }) {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert!(yield_until(&device, Duration::from_secs(5), || subscribed
        .load(Ordering::SeqCst)
        == 1));
    let cloud = MqttClient::connect(&options(broker.port(), "flooder")).unwrap();
    let mut flood_bytes = 0;
    for round in 0..4 {
        for i in 0..50 {
            let payload = format!("{round}.{i}");
            cloud
                .publish("flood/x", QoS::AtMostOnce, false, payload.as_bytes())
                .unwrap();
            // As the broker writes it: fixed header and length (2), topic length (2), topic,
            // payload.
            flood_bytes += 4 + "flood/x".len() + payload.len();
        }
        cloud.yield_for(Duration::ZERO).unwrap();
    }
    wait::until(
        "all 200 written to the device's socket",
        Duration::from_secs(5),
        || unread_bytes_from(broker.port()) >= flood_bytes,
    );
    device.yield_for(Duration::ZERO).unwrap();
    let first = got.load(Ordering::SeqCst);
    assert!((1..=64).contains(&first), "one pass handled {first}");
    let end = Instant::now() + Duration::from_secs(5);
    while got.load(Ordering::SeqCst) < 200 && Instant::now() < end {
        device.yield_for(Duration::ZERO).unwrap();
    }
    assert_eq!(got.load(Ordering::SeqCst), 200);
}

#[test]
fn a_publish_larger_than_a_packet_is_refused_before_it_is_queued() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut o = options(broker.port(), "big");
    o.max_packet_size = 1024;
    let client = MqttClient::connect(&o).unwrap();
    let mut uplink = client.uplink();
    let too_large = Err(Error::Mqtt(MqttError::TooLarge));
    // QoS 1: 2 + 3 topic bytes + 2 id bytes + payload, after a 3-byte fixed header.
    assert_eq!(
        client.publish("t/b", QoS::AtLeastOnce, false, &[0; 1015]),
        too_large
    );
    assert_eq!(uplink.publish("t/b", &[0; 1015]), too_large);
    assert_eq!(
        client.publish("t/b", QoS::AtLeastOnce, false, &[0; 1014]),
        Ok(())
    );
    assert_eq!(uplink.publish("t/b", &[0; 1014]), Ok(()));
    // QoS 0 has no packet id: two more payload bytes fit.
    assert_eq!(
        client.publish("t/b", QoS::AtMostOnce, false, &[0; 1016]),
        Ok(())
    );
    // What was queued goes out and the connection stays up.
    client.yield_for(Duration::from_millis(100)).unwrap();
    assert!(client.is_connected());
}

/// A PUBLISH of `payload` to `topic` (QoS 0 when `packet_id` is 0, else QoS 1), under 128 bytes.
fn publish_packet(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if packet_id != 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    assert!(body.len() < 128, "one length byte");
    let first = if packet_id != 0 { 0x32 } else { 0x30 };
    let mut packet = vec![first, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// What a C handler saw of each PUBLISH_RECEIVED event: topic, payload, QoS and packet id, or
/// `None` when `msg->msg` was NULL.
type SeenByC = Mutex<Vec<Option<(Vec<u8>, Vec<u8>, u8, u16)>>>;

/// An iotkit-style C handler: records PUBLISH_RECEIVED events into the [`SeenByC`] at `ctx`,
/// reading the topic and payload through the pointers it was given; ignores other events.
unsafe extern "C" fn record_received(
    ctx: *mut c_void,
    _client: *mut c_void,
    msg: iotx_mqtt_event_msg_pt,
) {
    if !matches!(
        (*msg).event_type,
        iotx_mqtt_event_type_t::IOTX_MQTT_EVENT_PUBLISH_RECEIVED
    ) {
        return;
    }
    let info = (*msg).msg as *const iotx_mqtt_topic_info_t;
    let seen = info.as_ref().map(|i| {
        let bytes = |p: *const std::ffi::c_char, n: usize| {
            std::slice::from_raw_parts(p as *const u8, n).to_vec()
        };
        (
            bytes(i.ptopic, i.topic_len as usize),
            bytes(i.payload, i.payload_len as usize),
            i.qos,
            i.packet_id,
        )
    });
    let record = &*(ctx as *const SeenByC);
    record.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
}

#[test]
fn a_message_no_subscription_matches_reaches_handle_event_with_its_topic_and_payload() {
    let (port, peer) = scripted(1, |_, mut s| {
        read_until(&mut s, CONNECT).expect("CONNECT");
        connack(&mut s, 0);
        let sub = read_until(&mut s, SUBSCRIBE).expect("SUBSCRIBE");
        write(&mut s, &[0x90, 3, sub.body[0], sub.body[1], 1]);
        // What a persistent session still holds for a filter unsubscribed since.
        write(&mut s, &publish_packet("old/topic", 5, b"left over"));
        write(&mut s, &publish_packet("dev/sub", 0, b"mine"));
        let ack = read_until(&mut s, PUBACK).expect("PUBACK of the unmatched message");
        assert_eq!(ack.body, [0, 5]);
        let _ = read_until(&mut s, DISCONNECT);
    });
    let unmatched: &'static SeenByC = Box::leak(Box::default());
    let matched: &'static SeenByC = Box::leak(Box::default());
    let subacks: &'static AtomicUsize = Box::leak(Box::default());
    let mut param = cmqtt::mqtt_param(port, c"stray", subacks);
    param.handle_event.h_fp = Some(record_received);
    param.handle_event.pcontext = unmatched as *const SeenByC as *mut c_void;
    let mut client = unsafe { IOT_MQTT_Construct(&mut param) };
    assert!(!client.is_null());
    let matched_ctx = matched as *const SeenByC as *mut c_void;
    let r = unsafe {
        IOT_MQTT_Subscribe(
            client,
            c"dev/sub".as_ptr(),
            IOTX_MQTT_QOS1,
            Some(record_received),
            matched_ctx,
        )
    };
    assert_eq!(r, 0);
    let end = Instant::now() + Duration::from_secs(5);
    while (unmatched.lock().unwrap().is_empty() || matched.lock().unwrap().is_empty())
        && Instant::now() < end
    {
        assert_eq!(unsafe { IOT_MQTT_Yield(client, 50) }, 0);
    }
    assert_eq!(
        unmatched.lock().unwrap().as_slice(),
        &[Some((b"old/topic".to_vec(), b"left over".to_vec(), 1, 5))],
        "handle_event gets the unmatched message, and only it"
    );
    assert_eq!(
        matched.lock().unwrap().as_slice(),
        &[Some((b"dev/sub".to_vec(), b"mine".to_vec(), 0, 0))]
    );
    assert_eq!(unsafe { IOT_MQTT_Destroy(&mut client) }, 0);
    peer.join().unwrap();
}
