//! Firmware that yields MQTT on one thread and fetches on another: a `fetch_yield` waiting for
//! the network holds no lock the other thread needs, and what that thread does (a supersede, a
//! progress report, a state query) takes effect at once.

#[path = "common/recorder.rs"]
mod recorder;
use recorder::{payloads, Recorder, Sent};

use std::sync::Arc;
use std::time::{Duration, Instant};

use ota::error::{Error, FetchError};
use ota::fetch::{Chunk, FirmwareSource};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::Firmware;

/// A server that sends its head, then nothing: every read waits its whole timeout.
struct Silent;

impl FirmwareSource for Silent {
    fn open(&mut self, _url: &str, _offset: u64) -> Result<(), FetchError> {
        Ok(())
    }

    fn read(&mut self, _buf: &mut [u8], timeout: Duration) -> Result<Chunk, FetchError> {
        std::thread::sleep(timeout);
        Ok(Chunk::Pending)
    }

    fn close(&mut self) {}
}

fn announce(s: &OtaSession, version: &str, img: &[u8]) {
    let msg = ota_cloud::aliyun::upgrade_message(&Firmware::new(version, "http://h/f", img), 1);
    s.handle_message(s.downstream_topic(), msg.as_bytes())
        .unwrap();
}

#[test]
fn a_waiting_fetch_yield_blocks_nothing_and_sees_a_supersede() {
    let sent: Sent = Arc::default();
    let s = Arc::new(
        OtaSession::new(
            "pk",
            "dn",
            OtaConfig::for_protocol(Protocol::Aliyun),
            Box::new(Recorder(sent.clone())),
            Box::new(Silent),
        )
        .unwrap(),
    );
    let img = vec![7u8; 10_000];
    announce(&s, "2.0.0", &img);
    let fetcher = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1000];
            let t = Instant::now();
            let r = s.fetch_yield(&mut buf, Duration::from_millis(1500));
            (r, t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // The "MQTT thread": every call returns at once although the fetch waits.
    let t = Instant::now();
    assert!(s.is_fetching());
    assert_eq!(s.fetched_size(), 0);
    s.report_progress(5, None).unwrap();
    announce(&s, "3.0.0", &[8u8; 10_000]);
    assert!(s.is_fetch_finished(), "the supersede took effect at once");
    let quick = t.elapsed();
    assert!(
        quick < Duration::from_millis(500),
        "the other thread waited {quick:?} for the fetching one"
    );
    let (r, took) = fetcher.join().unwrap();
    assert_eq!(r, Err(Error::Fetch(FetchError::Superseded)));
    assert!(took < Duration::from_secs(3), "{took:?}");
    let sent = payloads(&sent);
    assert!(
        sent.iter()
            .any(|m| m.contains("superseded by the upgrade to 3.0.0")),
        "{sent:?}"
    );
}
