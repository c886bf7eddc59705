//! The socket and the clock of a download: the one seam an RTOS port fills (as iotkit's
//! `HAL_TCP_Establish` / `HAL_TCP_Write` / `HAL_TCP_Read` and `HAL_UptimeMs` do there).
//!
//! Everything is non-blocking: [`Net::connect`] only starts a connection, [`Net::send`] and
//! [`Net::recv`] return [`io::ErrorKind::WouldBlock`] instead of waiting, and the only wait is
//! [`Net::wait`], bounded by a deadline on the clock of [`Net::now`]. The download
//! ([`HttpSource`](crate::source::HttpSource)) is driven through these on the caller's thread.
//!
//! [`PosixNet`] is the implementation for Linux and other POSIX systems: `socket(2)` with
//! `O_NONBLOCK`, `poll(2)`, and std's resolver for names. Name resolution is the one step that
//! may block: std calls `getaddrinfo`, which is bounded by the resolver's own `timeout` and
//! `attempts` (`/etc/resolv.conf`; glibc's defaults are 5 s × 2 per server); an IP address
//! in the URL is never looked up. An RTOS port provides its own [`Net::resolve`] (lwIP's
//! `netconn_gethostbyname` with its DNS timeout, say).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// What [`Net::wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Bytes to receive, the peer's close, or an error.
    Read,
    /// Room to send, a finished connect, or an error.
    Write,
}

/// Non-blocking sockets and a monotonic clock.
pub trait Net: Send {
    /// An open socket; dropping it closes it at once.
    type Socket: Send;

    /// Writes the addresses of `host` (a name or an IP literal without brackets) into `out`;
    /// how many. May block (see the module doc); an empty answer is an error.
    fn resolve(&mut self, host: &str, port: u16, out: &mut [SocketAddr]) -> io::Result<usize>;
    /// Starts a connection to `addr` without waiting for it: the socket becomes writable
    /// (see [`wait`](Net::wait)) when it is established or has failed, which
    /// [`finish_connect`](Net::finish_connect) then tells.
    fn connect(&mut self, addr: &SocketAddr) -> io::Result<Self::Socket>;
    /// The outcome of a connect once the socket is writable.
    fn finish_connect(&mut self, socket: &mut Self::Socket) -> io::Result<()>;
    /// Sends what fits without waiting; `WouldBlock` when nothing does.
    fn send(&mut self, socket: &mut Self::Socket, data: &[u8]) -> io::Result<usize>;
    /// Receives what has arrived without waiting; `Ok(0)` at the peer's close, `WouldBlock`
    /// when nothing is there.
    fn recv(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<usize>;
    /// Waits until `socket` is ready for `interest` or the clock reaches `deadline`; false
    /// when the deadline came first.
    fn wait(
        &mut self,
        socket: &mut Self::Socket,
        interest: Interest,
        deadline: Duration,
    ) -> io::Result<bool>;
    /// Monotonic time since an origin of the implementation's choosing.
    fn now(&self) -> Duration;
}

/// [`Net`] over POSIX sockets, `poll(2)` and [`std::time::Instant`].
#[derive(Debug)]
pub struct PosixNet {
    origin: std::time::Instant,
    receive_buffer: Option<usize>,
}

impl Default for PosixNet {
    fn default() -> Self {
        PosixNet {
            origin: std::time::Instant::now(),
            receive_buffer: None,
        }
    }
}

impl PosixNet {
    /// Sockets whose kernel receive buffer is `bytes` (`SO_RCVBUF`, set before the connect so
    /// the window scale fits it; the kernel caps it at `net.core.rmem_max` and doubles it for
    /// its bookkeeping), instead of the kernel's autotuning.
    pub fn with_receive_buffer(bytes: usize) -> PosixNet {
        PosixNet {
            receive_buffer: Some(bytes),
            ..PosixNet::default()
        }
    }
}

/// A non-blocking TCP socket of [`PosixNet`].
#[derive(Debug)]
pub struct PosixSocket(std::net::TcpStream);

impl PosixSocket {
    fn fd(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// `addr` as a `sockaddr_storage` and its length.
fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl Net for PosixNet {
    type Socket = PosixSocket;

    fn resolve(&mut self, host: &str, port: u16, out: &mut [SocketAddr]) -> io::Result<usize> {
        use std::net::ToSocketAddrs;
        let mut n = 0;
        for addr in (host, port).to_socket_addrs()? {
            if n == out.len() {
                break;
            }
            out[n] = addr;
            n += 1;
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
        }
        Ok(n)
    }

    fn connect(&mut self, addr: &SocketAddr) -> io::Result<PosixSocket> {
        use std::os::fd::FromRawFd;
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain system calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(domain, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(last_error());
            }
            // Owned from here: an early return closes it.
            let socket = PosixSocket(std::net::TcpStream::from_raw_fd(fd));
            // Not inherited by a child the firmware may start.
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            socket.0.set_nonblocking(true)?;
            #[cfg(any(target_os = "macos", target_os = "ios"))]
            {
                // No SIGPIPE on a send to a closed connection (Linux: std sends MSG_NOSIGNAL).
                let on: libc::c_int = 1;
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_NOSIGPIPE,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            if let Some(bytes) = self.receive_buffer {
                // Best effort: a kernel that refuses keeps its autotuning.
                let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let (storage, len) = sockaddr_of(addr);
            let rc = libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len);
            if rc != 0 {
                let e = last_error();
                if e.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(e);
                }
            }
            Ok(socket)
        }
    }

    fn finish_connect(&mut self, socket: &mut PosixSocket) -> io::Result<()> {
        match socket.0.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&mut self, socket: &mut PosixSocket, data: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        loop {
            match socket.0.write(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn recv(&mut self, socket: &mut PosixSocket, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        loop {
            match socket.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn wait(
        &mut self,
        socket: &mut PosixSocket,
        interest: Interest,
        deadline: Duration,
    ) -> io::Result<bool> {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        };
        loop {
            let left = deadline.saturating_sub(self.now());
            // Rounded up: a wait that ends a fraction of a millisecond early would spin.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: socket.fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                // POLLERR / POLLHUP count as ready: the next call reports them.
                return Ok(true);
            }
            if rc == 0 {
                if self.now() >= deadline {
                    return Ok(false);
                }
                continue;
            }
            let e = last_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's receive buffer of a socket (what `SO_RCVBUF` reads back: twice what was
    /// asked, for the kernel's bookkeeping).
    fn receive_buffer(s: &PosixSocket) -> usize {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid descriptor and an int-sized out buffer.
        let rc = unsafe {
            libc::getsockopt(
                s.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        v as usize
    }

    #[test]
    fn a_fixed_receive_buffer_is_set_before_the_connect_and_autotuning_is_the_default() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = 192 * 1024;
        let fixed = PosixNet::with_receive_buffer(asked).connect(&addr).unwrap();
        let auto = PosixNet::default().connect(&addr).unwrap();
        // Linux caps the request at net.core.rmem_max, then doubles it.
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        if cfg!(target_os = "linux") {
            assert_eq!(receive_buffer(&fixed), 2 * asked.min(cap));
        }
        assert_ne!(receive_buffer(&fixed), receive_buffer(&auto));
    }

    #[test]
    fn a_connect_to_a_closed_port_fails_after_the_socket_is_writable() {
        let mut net = PosixNet::default();
        // Bind then drop: the port is (almost certainly) closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut s = match net.connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                return;
            }
        };
        let deadline = net.now() + Duration::from_secs(5);
        assert!(net.wait(&mut s, Interest::Write, deadline).unwrap());
        let e = net.finish_connect(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_wait_ends_at_its_deadline() {
        let mut net = PosixNet::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = net.connect(&listener.local_addr().unwrap()).unwrap();
        let deadline = net.now() + Duration::from_secs(5);
        assert!(net.wait(&mut s, Interest::Write, deadline).unwrap());
        net.finish_connect(&mut s).unwrap();
        let start = net.now();
        let deadline = start + Duration::from_millis(100);
        assert!(!net.wait(&mut s, Interest::Read, deadline).unwrap());
        let took = net.now() - start;
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2));
        let mut buf = [0u8; 8];
        let e = net.recv(&mut s, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut addrs = [addr_zero(); 4];
        let n = net.resolve("127.0.0.1", 80, &mut addrs).unwrap();
        assert_eq!((n, addrs[0].port()), (1, 80));
    }

    fn addr_zero() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
}
