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
