//! Firmware that yields MQTT on one thread and fetches on another: a `fetch_yield` waiting for
//! the network holds no lock the other thread needs, and what that thread does (a supersede, a
//! progress report, a state query) takes effect at once.

mod common;
use common::recorder::{payloads, Recorder, Sent};

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ota::error::{DownloadError, Error};
use ota::source::{Chunk, FirmwareSource};
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::Firmware;

/// A server that sends its head, then nothing: every read waits its whole timeout. Says on
/// `waiting` when a read starts.
struct Silent {
    waiting: mpsc::Sender<()>,
}

impl FirmwareSource for Silent {
    fn open(&mut self, _url: &str, _offset: u64) -> Result<(), DownloadError> {
        Ok(())
    }

    fn read(&mut self, _buf: &mut [u8], timeout: Duration) -> Result<Chunk, DownloadError> {
        let _ = self.waiting.send(());
        // The server's silence: the fault under test, not a synchronisation.
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
    let (waiting, fetch_waits) = mpsc::channel();
    let s = Arc::new(
        OtaSession::new(
            "pk",
            "dn",
            OtaConfig::for_protocol(Protocol::Aliyun),
            Box::new(Recorder(sent.clone())),
            Box::new(Silent { waiting }),
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
    fetch_waits
        .recv_timeout(Duration::from_secs(5))
        .expect("the fetch waits for the server");
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
    assert_eq!(r, Err(Error::Download(DownloadError::Superseded)));
    assert!(took < Duration::from_secs(3), "{took:?}");
    let sent = payloads(&sent);
    assert!(
        sent.iter()
            .any(|m| m.contains("superseded by the upgrade to 3.0.0")),
        "{sent:?}"
    );
}

/// A breakpoint store that takes its time to write (a flash erase, an fsync on a slow card).
/// Says on `saving` when a write starts.
#[derive(Clone)]
struct SlowStore {
    record: Arc<std::sync::Mutex<Vec<u8>>>,
    saving: mpsc::Sender<()>,
}

impl ota::resume::BreakpointStore for SlowStore {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, ota::resume::StoreError> {
        let r = self.record.lock().unwrap();
        buf[..r.len()].copy_from_slice(&r);
        Ok(r.len())
    }
    fn save(&mut self, bytes: &[u8]) -> Result<(), ota::resume::StoreError> {
        let _ = self.saving.send(());
        // The slow write: the condition under test, not a synchronisation.
        std::thread::sleep(Duration::from_millis(800));
        *self.record.lock().unwrap() = bytes.to_vec();
        Ok(())
    }
    fn erase(&mut self) -> Result<(), ota::resume::StoreError> {
        self.record.lock().unwrap().clear();
        Ok(())
    }
}

#[test]
fn a_slow_breakpoint_write_blocks_no_other_thread() {
    let img: &'static [u8] = Box::leak(vec![3u8; 50_000].into_boxed_slice());
    let s = Arc::new(
        OtaSession::new(
            "pk",
            "dn",
            OtaConfig::for_protocol(Protocol::Tencent),
            Box::new(Recorder(Arc::default())),
            Box::new(ota::source::MemorySource::new(img)),
        )
        .unwrap(),
    );
    let (saving, saves) = mpsc::channel();
    let store = SlowStore {
        record: Arc::default(),
        saving,
    };
    s.set_breakpoint_store(Box::new(store.clone())).unwrap();
    s.set_save_policy(ota::resume::SavePolicy {
        every_bytes: 1000,
        every_percent: 0,
    });
    s.report_version("1.0.0").unwrap();
    let msg = ota_cloud::tencent::update_message(&Firmware::new("2.0.0", "http://h/f", img));
    let t = Instant::now();
    s.handle_message(s.downstream_topic(), msg.as_bytes())
        .unwrap(); // writes the fresh record: 0.8 s on this thread, the caller's own
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert_eq!(saves.try_recv(), Ok(()), "the fresh record");
    let mut buf = [0u8; 5000];
    assert_eq!(s.fetch_yield(&mut buf, Duration::ZERO), Ok(5000));
    assert!(saves.try_recv().is_err(), "nothing new to save yet");
    // The next call saves the record of those 5000 bytes first: 0.8 s, on the fetching thread.
    let fetcher = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 5000];
            s.fetch_yield(&mut buf, Duration::ZERO)
        })
    };
    saves
        .recv_timeout(Duration::from_secs(5))
        .expect("the fetching thread saves the record");
    let t = Instant::now();
    assert_eq!(s.fetched_size(), 5000, "the save comes before new bytes");
    s.report_progress(10, None).unwrap();
    assert!(s.is_fetching());
    let quick = t.elapsed();
    assert!(
        quick < Duration::from_millis(400),
        "the other thread waited {quick:?} for the record write"
    );
    assert_eq!(fetcher.join().unwrap(), Ok(5000));
    let saved = ota::resume::Breakpoint::decode(&store.record.lock().unwrap()).unwrap();
    assert_eq!(saved.offset(), 5000);
}
