//! Bounded waits for an event: tests wait for what they need to have happened, never for a
//! fixed time.

use std::time::{Duration, Instant};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(5);

/// Whether `done` became true within `limit`.
pub fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // The polling interval of a bounded wait, not a synchronisation.
        std::thread::sleep(POLL);
    }
}

/// Returns once `done` is true; panics naming `what` when it is still false after `limit`.
pub fn until(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    assert!(within(limit, done), "{what}: not within {limit:?}");
}
