//! Sockets on 127.0.0.1 for tests.

use std::net::TcpListener;

/// A port on 127.0.0.1 where nothing listens (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
