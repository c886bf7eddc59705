//! What `fleet` shows while the devices upgrade: on a terminal (stdout), a table with one row
//! per device redrawn at most 10 times a second; elsewhere one plain line per change of a
//! device's state (a download's percent is not a change: its first report is).

use std::io::{IsTerminal, Write};
use std::mem::discriminant;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ota_cloud::fleet::DeviceId;
use ota_cloud::Stage;

/// How often the table is redrawn at most.
const TICK: Duration = Duration::from_millis(100);

/// Rows of the table; more devices are counted in its head, the busiest shown first.
const MAX_ROWS: usize = 24;

/// A row's state is cut to this many characters, so a row fits a terminal's line (a wrapped
/// line would break the redraw).
const MAX_STATE: usize = 60;

/// Where a human-readable line goes: stdout, or stderr when stdout carries the JSON report.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn line(self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

pub struct FleetView {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    out: Out,
    ids: Vec<DeviceId>,
    stages: Mutex<Table>,
    stop: AtomicBool,
}

struct Table {
    stages: Vec<Option<Stage>>,
    dirty: bool,
    /// Lines of the table last drawn, which the next draw replaces.
    drawn: usize,
}

impl FleetView {
    /// The table when stdout is a terminal and `out` is not JSON, plain lines otherwise.
    pub fn start(ids: Vec<DeviceId>, out: Out) -> FleetView {
        let n = ids.len();
        let shared = Arc::new(Shared {
            out,
            ids,
            stages: Mutex::new(Table {
                stages: vec![None; n],
                dirty: true,
                drawn: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let ticker = (!out.json && std::io::stdout().is_terminal()).then(|| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    shared.redraw(false);
                    thread::sleep(TICK);
                }
            })
        });
        FleetView { shared, ticker }
    }

    /// A callback for [`ota_cloud::fleet::Fleet::run`].
    pub fn observer(&self) -> impl Fn(usize, Stage) + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let live = self.ticker.is_some();
        move |i, stage| shared.update(i, stage, live)
    }

    /// Draws the table a last time (it stays on the terminal).
    pub fn finish(mut self) {
        if let Some(ticker) = self.ticker.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            let _ = ticker.join();
            self.shared.redraw(true);
        }
    }
}

impl Shared {
    fn update(&self, i: usize, stage: Stage, live: bool) {
        let mut table = self.stages.lock().unwrap();
        let before = &table.stages[i];
        let changed = before.as_ref() != Some(&stage);
        let new_kind = before
            .as_ref()
            .is_none_or(|b| discriminant(b) != discriminant(&stage));
        if !live && new_kind {
            // Under the lock: lines come out in the order the states changed.
            self.out.line(&format!("fleet: {}: {stage}", self.ids[i]));
        }
        table.stages[i] = Some(stage);
        table.dirty |= changed;
    }

    fn redraw(&self, last: bool) {
        let mut table = self.stages.lock().unwrap();
        if !table.dirty && !last {
            return;
        }
        let lines = self.table_lines(&table.stages);
        let mut text = String::new();
        if table.drawn > 0 {
            // Up to the table's first line, and clear from there down.
            text.push_str(&format!("\x1b[{}A\x1b[J", table.drawn));
        }
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        table.drawn = lines.len();
        table.dirty = false;
    }

    fn table_lines(&self, stages: &[Option<Stage>]) -> Vec<String> {
        let mut count = [0usize; 4]; // waiting, busy, upgraded, failed
        for s in stages {
            count[rank(s.as_ref()).1] += 1;
        }
        let mut lines = vec![format!(
            "fleet: {} devices: {} upgraded, {} failed, {} in progress, {} waiting",
            stages.len(),
            count[2],
            count[3],
            count[1],
            count[0]
        )];
        let width = self
            .ids
            .iter()
            .map(|id| id.to_string().len())
            .max()
            .unwrap_or(0);
        let mut order: Vec<usize> = (0..stages.len()).collect();
        // The busiest first when not all fit; else in the devices' order.
        if stages.len() > MAX_ROWS {
            order.sort_by_key(|&i| rank(stages[i].as_ref()).0);
        }
        for &i in order.iter().take(MAX_ROWS) {
            let state = stages[i]
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "starting".into());
            let state: String = state.chars().take(MAX_STATE).collect();
            lines.push(format!("  {:<width$}  {state}", self.ids[i].to_string()));
        }
        if stages.len() > MAX_ROWS {
            lines.push(format!("  ... and {} more", stages.len() - MAX_ROWS));
        }
        lines
    }
}

/// Where a state sorts in the table (busy first) and which count of the head it is in.
fn rank(stage: Option<&Stage>) -> (u8, usize) {
    match stage {
        Some(Stage::Downloading(_)) | Some(Stage::Verified) => (0, 1),
        Some(Stage::Announced) => (1, 1),
        Some(Stage::Failed(_)) => (2, 3),
        None | Some(Stage::WaitingForVersion) | Some(Stage::TimedOut(_)) => (3, 0),
        Some(Stage::Upgraded) | Some(Stage::AlreadyCurrent) => (4, 2),
    }
}
