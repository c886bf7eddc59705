//! The download's progress bar: on stderr, only where stderr is a terminal, following the
//! firmware server's count of image bytes sent. While it is drawn, the narration
//! ([`ota_cloud::console`]) is printed above it rather than through it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ota_cloud::{console, SentMeter};

/// How often the bar reads the server's count.
const TICK: Duration = Duration::from_millis(100);

pub struct DownloadBar {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    ticker: JoinHandle<()>,
}

impl DownloadBar {
    /// Draws the bar when `wanted` and stderr is a terminal; `None` (plain lines only)
    /// otherwise.
    pub fn start(meter: SentMeter, wanted: bool) -> Option<DownloadBar> {
        if !wanted || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar =
            ProgressBar::with_draw_target(Some(meter.image_len()), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "download {bar:32} {bytes}/{total_bytes} sent, {bytes_per_sec}, {elapsed}",
            )
            .expect("a valid template"),
        );
        let above = bar.clone();
        console::set_writer(Some(Box::new(move |line| {
            above.suspend(|| println!("{line}"))
        })));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (bar, stop) = (bar.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A byte sent twice counts twice: the count may pass the image's size.
                    let sent = meter.image_bytes_sent();
                    bar.set_length(sent.max(meter.image_len()));
                    bar.set_position(sent);
                    thread::sleep(TICK);
                }
            })
        };
        Some(DownloadBar { bar, stop, ticker })
    }

    /// Removes the bar; the narration goes to stdout directly again.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.ticker.join();
        console::set_writer(None);
        self.bar.finish_and_clear();
    }
}
