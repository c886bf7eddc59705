//! A Mosquitto broker in a child process, for the tests that need a third-party broker: it
//! listens on 127.0.0.1 (plain MQTT, or TLS with a certificate of [`Pki`]), is killed and its
//! files removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use super::certs::{Leaf, Pki};
use super::wait;

/// The mosquitto binary. `None` (the caller skips its test) when it is not installed; a
/// failure instead when OTA_REQUIRE_MOSQUITTO=required (CI), so nothing skips silently there.
pub fn binary_or_skip() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/mosquitto"),
        PathBuf::from("/usr/local/sbin/mosquitto"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("mosquitto")));
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("OTA_REQUIRE_MOSQUITTO").as_deref() == Ok("required") {
            panic!("mosquitto is not installed and OTA_REQUIRE_MOSQUITTO=required");
        }
        println!(
            "skipped: mosquitto is not installed (set OTA_REQUIRE_MOSQUITTO=required to fail)"
        );
    }
    found
}

pub struct Mosquitto {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Mosquitto {
    /// Plain MQTT on 127.0.0.1:`port`.
    pub fn start(binary: &Path, port: u16) -> Mosquitto {
        Mosquitto::launch(binary, port, |_| String::new())
    }

    /// MQTT over TLS on a free port, presenting `leaf` (signed by `pki`'s CA).
    pub fn start_tls(binary: &Path, pki: &Pki, leaf: &Leaf) -> Mosquitto {
        Mosquitto::launch(binary, super::net::free_port(), |dir| {
            let file = |name: &str, text: &str| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                path.display().to_string()
            };
            format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                file("ca.pem", &pki.ca_pem),
                file("server.pem", &leaf.cert_pem),
                file("server.key", &leaf.key_pem),
            )
        })
    }

    /// Starts mosquitto with a listener on 127.0.0.1:`port` plus the configuration lines
    /// `extra` writes (given the broker's own directory); returns once it listens.
    fn launch(binary: &Path, port: u16, extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ota-mosquitto-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{}",
            extra(&dir)
        );
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let mut broker = Mosquitto { child, dir, port };
        broker.wait_listening();
        broker
    }

    /// What mosquitto logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let addr = ([127, 0, 0, 1], self.port).into();
        let listening = wait::within(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mosquitto exited with {status}:\n{}", self.log());
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(listening, "mosquitto did not listen:\n{}", self.log());
    }

    /// Kills the broker (what a crash or a power cut of its machine looks like to clients).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
