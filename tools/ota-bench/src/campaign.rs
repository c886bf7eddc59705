//! The bench's progress on stderr: a line per phase (`ota-bench: ...`) and, on a terminal
//! unless `--quiet`, a bar of the phase's steps under it.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Campaign {
    bars: bool,
    /// The running phase's bar.
    bar: RefCell<Option<ProgressBar>>,
}

impl Campaign {
    /// With bars when `bars_wanted` and stderr is a terminal.
    pub fn new(bars_wanted: bool) -> Campaign {
        Campaign {
            bars: bars_wanted && std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
        }
    }

    /// Starts a phase of `steps` steps: its line, then its bar.
    pub fn phase(&self, what: &str, steps: usize) {
        self.finish();
        eprintln!("ota-bench: {what}");
        if self.bars {
            let bar =
                ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed:>4} {wide_msg}")
                    .expect("a valid template"),
            );
            bar.set_message(what.to_string());
            // The elapsed time moves during a long step too (a 1 GiB download, a build).
            bar.enable_steady_tick(Duration::from_millis(500));
            *self.bar.borrow_mut() = Some(bar);
        }
    }

    /// One step of the phase done.
    pub fn step(&self) {
        if let Some(bar) = &*self.bar.borrow() {
            bar.inc(1);
        }
    }

    /// A line on stderr, above the bar if there is one.
    pub fn note(&self, line: &str) {
        match &*self.bar.borrow() {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar (the table is printed after it).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
