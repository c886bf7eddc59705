//! EmbeddedBroker: a real rumqttc round trip through it.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ota_cloud::EmbeddedBroker;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

#[test]
fn publish_subscribe_round_trip() {
    let broker = EmbeddedBroker::start().unwrap();
    assert_ne!(broker.port(), 0);
    let timeout = Duration::from_secs(10);

    let connect = |id: &str| {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 10);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for event in connection.iter() {
                let Ok(Event::Incoming(packet)) = event else {
                    if event.is_err() {
                        return;
                    }
                    continue;
                };
                if tx.send(packet).is_err() {
                    return;
                }
            }
        });
        (client, rx)
    };
    let (sub, sub_rx) = connect("sub");
    sub.subscribe("t/round-trip", QoS::AtLeastOnce).unwrap();
    loop {
        if let Packet::SubAck(_) = sub_rx.recv_timeout(timeout).unwrap() {
            break;
        }
    }
    let (publisher, _pub_rx) = connect("pub");
    // 300 KiB: the broker must accept payloads of at least 256 KiB.
    let payload = vec![7u8; 300 * 1024];
    publisher
        .publish("t/round-trip", QoS::AtLeastOnce, false, payload.clone())
        .unwrap();
    loop {
        if let Packet::Publish(p) = sub_rx.recv_timeout(timeout).unwrap() {
            assert_eq!(p.topic, "t/round-trip");
            assert_eq!(p.payload.len(), payload.len());
            break;
        }
    }
}

/// Tencent's topics start with `$`: they must be routed (rumqttd refused them), while a filter
/// starting with a wildcard must not match them.
#[test]
fn dollar_topics_are_routed() {
    let broker = EmbeddedBroker::start().unwrap();
    let timeout = Duration::from_secs(10);
    let connect = |id: &str| {
        let (client, mut connection) =
            Client::new(MqttOptions::new(id, "127.0.0.1", broker.port()), 10);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        (client, rx)
    };
    let (sub, sub_rx) = connect("dollar-sub");
    sub.subscribe_many([
        rumqttc::SubscribeFilter::new("$ota/+/pid/dn".into(), QoS::AtLeastOnce),
        rumqttc::SubscribeFilter::new("#".into(), QoS::AtMostOnce),
    ])
    .unwrap();
    loop {
        if let Packet::SubAck(ack) = sub_rx.recv_timeout(timeout).unwrap() {
            assert_eq!(ack.return_codes.len(), 2);
            break;
        }
    }
    let (publisher, _rx) = connect("dollar-pub");
    publisher
        .publish("$ota/report/pid/dn", QoS::AtLeastOnce, false, b"d".to_vec())
        .unwrap();
    publisher
        .publish("plain/topic", QoS::AtLeastOnce, false, b"p".to_vec())
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Packet::Publish(p) = sub_rx.recv_timeout(timeout).unwrap() {
            got.push((p.topic, p.qos));
        }
    }
    // Once each: `#` does not match the `$` topic, so no duplicate at QoS 0.
    assert_eq!(
        got,
        [
            ("$ota/report/pid/dn".to_string(), QoS::AtLeastOnce),
            ("plain/topic".to_string(), QoS::AtMostOnce),
        ]
    );
    assert!(sub_rx
        .recv_timeout(Duration::from_millis(300))
        .map_or(true, |p| !matches!(p, Packet::Publish(_))));
}

/// A retained message reaches a later subscriber; a last will is published when a client
/// vanishes without DISCONNECT.
#[test]
fn retained_messages_and_last_will() {
    let broker = EmbeddedBroker::start().unwrap();
    let timeout = Duration::from_secs(10);
    let (publisher, mut conn) =
        Client::new(MqttOptions::new("ret-pub", "127.0.0.1", broker.port()), 10);
    thread::spawn(move || {
        for e in conn.iter() {
            if e.is_err() {
                return;
            }
        }
    });
    publisher
        .publish("ret/t", QoS::AtLeastOnce, true, b"kept".to_vec())
        .unwrap();
    thread::sleep(Duration::from_millis(200));

    let mut options = MqttOptions::new("ret-sub", "127.0.0.1", broker.port());
    options.set_last_will(rumqttc::LastWill::new(
        "will/t",
        "gone",
        QoS::AtMostOnce,
        false,
    ));
    let (sub, mut connection) = Client::new(options, 10);
    let (tx, rx) = mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::spawn(move || {
        for event in connection.iter() {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                return; // drops the connection without DISCONNECT
            }
            if let Ok(Event::Incoming(Packet::Publish(p))) = event {
                let _ = tx.send((p.topic, p.retain, p.payload.to_vec()));
            }
        }
    });
    sub.subscribe("ret/t", QoS::AtLeastOnce).unwrap();
    assert_eq!(
        rx.recv_timeout(timeout).unwrap(),
        ("ret/t".to_string(), true, b"kept".to_vec())
    );

    let (watcher, mut wconn) = Client::new(
        MqttOptions::new("ret-watch", "127.0.0.1", broker.port()),
        10,
    );
    let (wtx, wrx) = mpsc::channel();
    thread::spawn(move || {
        for event in wconn.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = wtx.send(p.topic);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = wtx.send("suback".into());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    watcher.subscribe("will/t", QoS::AtMostOnce).unwrap();
    assert_eq!(wrx.recv_timeout(timeout).unwrap(), "suback");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // Wake the subscriber's event loop so it notices `stop` and drops the socket.
    publisher
        .publish("ret/t", QoS::AtMostOnce, false, b"x".to_vec())
        .unwrap();
    drop(sub);
    assert_eq!(wrx.recv_timeout(timeout).unwrap(), "will/t");
}
