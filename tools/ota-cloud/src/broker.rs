//! An embedded MQTT broker (rumqttd) on 127.0.0.1, so a demo or a test needs no external broker.
//!
//! rumqttd 0.20 has no shutdown API: `Broker::start` blocks forever in its own thread. An
//! [`EmbeddedBroker`] therefore lives until the process exits; dropping the handle does not stop
//! it. Each test that starts one simply leaks a listening thread, which is harmless.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest MQTT payload the broker accepts. Firmware messages are small, but a generous limit
/// keeps the broker from being the reason a protocol experiment fails.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// A running broker; see the module docs for its lifetime.
#[derive(Debug)]
pub struct EmbeddedBroker {
    port: u16,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> io::Result<EmbeddedBroker> {
        // Picking a port by binding :0 and releasing it is racy (another process may grab it
        // before rumqttd binds); a few attempts make a collision practically irrelevant.
        let mut last_err = None;
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match Self::start_on(port) {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("broker did not start")))
    }

    /// Starts a broker on `127.0.0.1:port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> io::Result<EmbeddedBroker> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut broker = Broker::new(config(addr));
        let handle = thread::Builder::new()
            .name(format!("rumqttd-{port}"))
            .spawn(move || {
                // Only returns on error (e.g. the port is taken); the thread then ends.
                if let Err(e) = broker.start() {
                    eprintln!("broker: {e}");
                }
            })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(EmbeddedBroker { port });
            }
            if handle.is_finished() {
                return Err(io::Error::other(format!(
                    "broker failed to listen on {addr}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("broker did not accept connections on {addr} within 5 s"),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
}

/// rumqttd's configuration, built in code rather than read from a TOML file.
fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "v4-1".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // Clients may subscribe to topics nobody has published on yet.
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            // Segment size must exceed the payload limit or large messages cannot be stored.
            max_segment_size: 16 * MAX_PAYLOAD,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4-1".to_string(), server)])),
        ..Default::default()
    }
}
