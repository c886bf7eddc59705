//! Bounded waits for an event: tests wait for what they need to have happened, not for a fixed
//! time. Only a check that something does not happen needs a window of time, and it ends as
//! soon as the thing happens.

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

/// Whether `happened` stayed false for the whole `window` (false as soon as it turns true): for
/// checks that something does not happen, which need a window of time.
pub fn never_within(window: Duration, happened: impl FnMut() -> bool) -> bool {
    !within(window, happened)
}
