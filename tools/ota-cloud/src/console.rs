//! Where the simulator's narration goes (the `cloud: ...` and `demo: ...` lines, the device's
//! echoed output): stdout, a line at a time, unless a front end installs its own writer. The
//! `ota-cloud` binary does while it draws a progress bar on the terminal, to print each line
//! above the bar instead of through it.

use std::sync::RwLock;

/// Takes one line of narration (without its newline).
pub type Writer = Box<dyn Fn(&str) + Send + Sync>;

static WRITER: RwLock<Option<Writer>> = RwLock::new(None);

/// Prints one line of narration: on stdout, or through the installed writer.
pub fn say(line: &str) {
    match WRITER.read() {
        Ok(w) if w.is_some() => (w.as_ref().expect("checked"))(line),
        _ => println!("{line}"),
    }
}

/// Sends the narration to `writer` from now on; `None` returns it to stdout.
pub fn set_writer(writer: Option<Writer>) {
    if let Ok(mut w) = WRITER.write() {
        *w = writer;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_writer_takes_the_lines_until_it_is_removed() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        super::set_writer(Some(Box::new(move |line| {
            sink.lock().unwrap().push(line.to_string())
        })));
        super::say("console test: one");
        super::set_writer(None);
        super::say("console test: two (on stdout)");
        let got = got.lock().unwrap();
        // Other tests of this binary may narrate meanwhile: only ours are checked.
        let ours: Vec<_> = got
            .iter()
            .filter(|l| l.starts_with("console test"))
            .collect();
        assert_eq!(ours, ["console test: one"]);
    }
}
