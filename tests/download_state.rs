//! What a download's state lives as long as: a new upgrade starts with none of the last one's
//! (offset, digest, retries, the failure already reported, what was said once), while Tencent's
//! `start_download` goes on with the same download (digest, retries) in a new cycle.

mod common;
use common::recorder::{payloads, Recorder, Sent};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota::error::{Error, FetchError};
use ota::fetch::{Chunk, FirmwareSource, MemorySource};
use ota::ota::Once;
use ota::retry::RetryPolicy;
use ota::{OtaConfig, OtaSession, Protocol};
use ota_cloud::cloud::Firmware;

const URL: &str = "http://h/2.0.0.bin";
const NEXT_URL: &str = "http://h/3.0.0.bin";

fn image(len: usize, seed: u8) -> &'static [u8] {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    Box::leak(v.into_boxed_slice())
}

/// Serves each URL's image in reads of 300 bytes; its next opens can be made to fail.
struct Source {
    images: [(&'static str, &'static [u8]); 2],
    image: MemorySource,
    open_errors: Arc<Mutex<VecDeque<FetchError>>>,
    opens: Arc<Mutex<Vec<u64>>>,
}

impl FirmwareSource for Source {
    fn open(&mut self, url: &str, offset: u64) -> Result<(), FetchError> {
        self.opens.lock().unwrap().push(offset);
        if let Some(e) = self.open_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        let (_, img) = self.images.iter().find(|(u, _)| *u == url).unwrap();
        self.image = MemorySource::new(img);
        self.image.chunk = 300;
        self.image.open(url, offset)
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Chunk, FetchError> {
        self.image.read(buf, timeout)
    }

    fn close(&mut self) {
        self.image.close();
    }
}

struct Rig {
    s: OtaSession,
    sent: Sent,
    open_errors: Arc<Mutex<VecDeque<FetchError>>>,
    opens: Arc<Mutex<Vec<u64>>>,
}

/// A session whose source serves `img` at [`URL`] and `next` at [`NEXT_URL`], and whose
/// downloads retry within milliseconds.
fn rig(protocol: Protocol, img: &'static [u8], next: &'static [u8]) -> Rig {
    let sent: Sent = Arc::default();
    let open_errors = Arc::new(Mutex::new(VecDeque::new()));
    let opens = Arc::new(Mutex::new(Vec::new()));
    let config = OtaConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            stall_timeout: Duration::from_secs(5),
        },
        ..OtaConfig::for_protocol(protocol)
    };
    let source = Source {
        images: [(URL, img), (NEXT_URL, next)],
        image: MemorySource::new(img),
        open_errors: open_errors.clone(),
        opens: opens.clone(),
    };
    let s = OtaSession::new(
        "pk",
        "dn",
        config,
        Box::new(Recorder(sent.clone())),
        Box::new(source),
    )
    .unwrap();
    Rig {
        s,
        sent,
        open_errors,
        opens,
    }
}

impl Rig {
    fn announce(&self, msg: &str) {
        self.s
            .handle_message(self.s.downstream_topic(), msg.as_bytes())
            .unwrap();
    }

    fn fetch(&self) -> Result<Vec<u8>, Error> {
        let mut buf = [0u8; 700];
        let n = self.s.fetch_yield(&mut buf, Duration::from_secs(1))?;
        Ok(buf[..n].to_vec())
    }

    fn fetch_rest(&self) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.s.is_fetch_finished() {
            out.extend(self.fetch().unwrap());
        }
        out
    }

    fn failures(&self) -> usize {
        payloads(&self.sent)
            .iter()
            .filter(|p| p.contains(r#""step":"-"#) || p.contains("fail"))
            .count()
    }
}

/// The first download: one failed open (a retry), 300 bytes, then the caller gives up twice
/// (one failure report, the second dropped and said so once).
fn first_download_fails(r: &Rig) {
    r.open_errors.lock().unwrap().push_back(FetchError::Connect);
    assert_eq!(r.fetch().unwrap().len(), 300);
    assert_eq!(r.s.retries(), 1);
    assert_eq!(r.s.fetched_size(), 300);
    r.s.report_progress(-1, Some("cancelled")).unwrap();
    r.s.report_progress(-1, Some("cancelled again")).unwrap();
    assert_eq!(r.failures(), 1, "{:?}", payloads(&r.sent));
    assert!(!r.s.first_in_upgrade(Once::DroppedReport), "already said");
    assert!(r.s.is_fetch_finished());
}

#[test]
fn a_new_upgrade_starts_with_none_of_the_last_downloads_state() {
    let (first, second) = (image(1000, 1), image(1000, 2));
    let r = rig(Protocol::Aliyun, first, second);
    r.announce(&ota_cloud::aliyun::upgrade_message(
        &Firmware::new("2.0.0", URL, first),
        1,
    ));
    first_download_fails(&r);

    r.announce(&ota_cloud::aliyun::upgrade_message(
        &Firmware::new("3.0.0", NEXT_URL, second),
        2,
    ));
    assert!(
        r.s.is_fetching(),
        "the end was seen: the next upgrade starts"
    );
    assert_eq!(r.s.fetched_size(), 0);
    assert_eq!(r.s.retries(), 0);
    assert!(
        r.s.first_in_upgrade(Once::DroppedReport),
        "said once per upgrade"
    );
    // Its failure is not reported yet: progress goes out again.
    r.s.report_progress(10, None).unwrap();
    assert!(payloads(&r.sent).last().unwrap().contains(r#""step":"10""#));
    assert_eq!(r.fetch_rest(), second, "from byte 0");
    assert!(
        r.s.check_firmware().unwrap(),
        "digested from its first byte"
    );
    assert_eq!(r.opens.lock().unwrap().as_slice(), [0, 0, 0]);
}

#[test]
fn start_download_goes_on_with_the_same_download_in_a_new_cycle() {
    let img = image(1000, 3);
    let r = rig(Protocol::Tencent, img, img);
    r.announce(&ota_cloud::tencent::update_message(&Firmware::new(
        "2.0.0", URL, img,
    )));
    first_download_fails(&r);

    // The firmware kept the 300 bytes: the download resumes at 300 with the digest it had.
    r.s.start_download(300, img.len() as u64).unwrap();
    assert!(r.s.is_fetching());
    assert_eq!(r.s.retries(), 1, "the same download's retries");
    assert!(
        !r.s.first_in_upgrade(Once::DroppedReport),
        "the same upgrade"
    );
    // A new cycle: its failure is not reported yet.
    r.s.report_progress(10, None).unwrap();
    let rest = r.fetch_rest();
    assert_eq!(rest, img[300..]);
    assert!(
        r.s.check_firmware().unwrap(),
        "the digest covers all 1000 bytes"
    );
    assert_eq!(r.opens.lock().unwrap().as_slice(), [0, 0, 300]);
}
