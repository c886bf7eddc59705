//! The MQTT client (`ota::MqttClient`) against a broker that accepts the connection and then
//! sends arbitrary bytes, over a real socket on 127.0.0.1.
//!
//! Input: the bytes the broker sends after its CONNACK; then it closes its side. The client
//! subscribes to everything at QoS 2 and queues a QoS 1 publish first, so acknowledgements of
//! every kind are in play. What must hold: no panic, `yield_for` never fails, every delivered
//! message is within the maximum packet size, and the client notices the end of the stream
//! (a protocol error or the closed socket) within a few seconds instead of spinning or hanging.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ota::mqtt::QoS;
use ota::{MqttClient, MqttOptions};

/// The client's maximum packet size here: small, so the fuzzer reaches the limit.
const MAX_PACKET: usize = 2048;

pub fn run(data: &[u8]) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    let script = data.to_vec();
    let broker = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the client connects");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("socket option");
        let mut buf = [0u8; 1024];
        // The CONNECT comes first and alone.
        let _ = s.read(&mut buf);
        let _ = s.write_all(&[0x20, 2, 0, 0]);
        let _ = s.write_all(&script);
        let _ = s.shutdown(Shutdown::Write);
        // Takes whatever the client answers until it closes.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });

    let mut options = MqttOptions::new("127.0.0.1", port, "fuzz");
    options.request_timeout = Duration::from_secs(2);
    options.max_packet_size = MAX_PACKET;
    let client = MqttClient::connect(&options).expect("the scripted broker accepts");
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    client
        .subscribe("#", QoS::ExactlyOnce, move |m| {
            assert!(m.topic.len() + m.payload.len() <= MAX_PACKET);
            count.fetch_add(1, Ordering::Relaxed);
        })
        .expect("subscribe");
    client
        .publish("fuzz/up", QoS::AtLeastOnce, false, b"hello")
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the client did not notice the end of the stream"
        );
        client
            .yield_for(Duration::ZERO)
            .expect("yield_for outside a handler never fails");
    }
    // Closes the socket, which ends the broker thread.
    drop(client);
    broker.join().expect("the broker thread");
}
