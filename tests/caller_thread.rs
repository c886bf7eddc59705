//! Downloads run on the caller's thread and leave no socket behind: this process counts its
//! threads (`/proc/self/task`) and its sockets (`/proc/self/fd` links to `socket:`) before,
//! during and after whole downloads (HTTP and HTTPS) and 20 stalled ones.
//!
//! No test harness (`harness = false`): the harness would run tests on threads of its own.
//! The firmware servers run in child processes (this binary, started with `serve`), so every
//! thread and socket counted here is the device side's.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::source::{Chunk, FirmwareSource, HttpConfig, HttpSource};
use ota_cloud::http::{Faults, FirmwareServer};

const SIZE: usize = 300_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(&args[2..]);
        return;
    }
    ota::log::set_level(ota::log::Level::Error);
    let started = Instant::now();
    let image = ota_cloud::generate_firmware(SIZE);
    let pki = common::certs::pki();
    let dir = std::env::temp_dir().join(format!("ota-caller-thread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &pki.server.cert_pem).unwrap();
    std::fs::write(&key, &pki.server.key_pem).unwrap();
    let plain = Server::start(&["0"]);
    let tls = Server::start(&["0", cert.to_str().unwrap(), key.to_str().unwrap()]);
    // Every response stops for a minute after its head.
    let stalling = Server::start(&["60000"]);
    let config = HttpConfig {
        ca_pem: Some(Arc::from(pki.ca_pem.as_bytes())),
        ..HttpConfig::default()
    };

    let threads_before = threads();
    let sockets_before = sockets();
    assert_eq!(threads_before, 1, "this process runs on one thread");
    let mut src = HttpSource::new(config).unwrap();
    for server in [&plain, &tls] {
        let (bytes, threads_during, sockets_during) = download(&mut src, &server.url);
        assert!(bytes == image, "{}: {} bytes", server.url, bytes.len());
        assert_eq!(threads_during, 1, "{}: a thread was created", server.url);
        assert_eq!(sockets_during, sockets_before + 1, "{}", server.url);
        assert_eq!(
            sockets(),
            sockets_before,
            "{}: the socket was left open",
            server.url
        );
    }
    println!(
        "whole downloads (http, https): threads {threads_before} before, 1 during, {} after",
        threads()
    );

    let mut most_sockets = 0;
    for stall in 0..20 {
        src.open(&stalling.url, 0).unwrap();
        let mut buf = [0u8; 4096];
        let mut opened = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !opened {
            assert!(Instant::now() < deadline, "stall {stall}: no head");
            opened = matches!(
                src.read(&mut buf, Duration::from_millis(200)),
                Ok(Chunk::Opened(_))
            );
        }
        let t = Instant::now();
        assert_eq!(
            src.read(&mut buf, Duration::from_millis(30)),
            Ok(Chunk::Pending)
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(threads(), 1, "stall {stall}: a thread was created");
        most_sockets = most_sockets.max(sockets());
        src.close();
        assert_eq!(
            sockets(),
            sockets_before,
            "stall {stall}: the socket stayed open"
        );
    }
    assert_eq!(most_sockets, sockets_before + 1);
    drop(src);
    assert_eq!((threads(), sockets()), (threads_before, sockets_before));
    println!(
        "20 stalls: sockets {sockets_before} before, at most {most_sockets} during, {} after; threads 1 throughout",
        sockets()
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("test result: ok. caller_thread in {:?}", started.elapsed());
}

/// Downloads `url` from byte 0: the bytes, and the most threads and sockets seen meanwhile.
fn download(src: &mut HttpSource, url: &str) -> (Vec<u8>, usize, usize) {
    src.open(url, 0).unwrap();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 5000];
    let (mut most_threads, mut most_sockets) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{url}: the download did not end");
        match src.read(&mut buf, Duration::from_millis(500)) {
            Ok(Chunk::Data(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Chunk::End) => break,
            Ok(_) => {}
            Err(e) => panic!("{url}: {e}"),
        }
        most_threads = most_threads.max(threads());
        most_sockets = most_sockets.max(sockets());
    }
    (bytes, most_threads, most_sockets)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A firmware server in a child process of this binary; it ends when its stdin closes.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().strip_prefix("URL ").unwrap().to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `serve STALL_MS [CERT KEY]`: prints `URL …`, serves until stdin closes.
fn serve(args: &[String]) {
    let faults = Faults {
        stall_ms: args[0].parse().unwrap(),
        ..Faults::default()
    };
    let image = ota_cloud::generate_firmware(SIZE);
    let server = match args.get(1..3) {
        Some([cert, key]) => FirmwareServer::start_tls(
            image,
            faults,
            &std::fs::read(cert).unwrap(),
            &std::fs::read(key).unwrap(),
        ),
        _ => FirmwareServer::start_with(image, faults),
    }
    .unwrap();
    println!("URL {}", server.url());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
