//! Sockets on 127.0.0.1 for tests: free ports, and what a firmware server has seen.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use ota_cloud::http::FirmwareServer;

/// A port on 127.0.0.1 where nothing listens (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The connections `server` accepted before this call, once it has counted every one of them:
/// a probe connection, queued behind them, is made and ended, and its close by the server is
/// awaited; the probe itself is not counted. Makes "no (further) connection" checkable without
/// waiting for a fixed time.
pub fn settled_connections(server: &FirmwareServer) -> u64 {
    let mut probe = TcpStream::connect(("127.0.0.1", server.port())).expect("probe connects");
    probe.shutdown(Shutdown::Write).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server counts a connection before reading from it, then closes one that ends before
    // its request (TLS: before its ClientHello): end of stream, or a reset.
    let mut buf = [0u8; 256];
    loop {
        match probe.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the probe connection: {e}"),
        }
    }
    server.connections() - 1
}
