//! Exponential backoff with jitter for download retries; no allocation, no global state.

use std::time::Duration;

/// How often and how patiently a broken download is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries in a row without progress before the download fails (0: never retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each further attempt.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// A download that delivers nothing for this long is reconnected (so is one that gave a
    /// FetchYield nothing for that call's whole timeout: the next call reconnects).
    pub stall_timeout: Duration,
}

/// Most reconnections in a row a [`RetryPolicy`] may allow (a thousand backoffs of up to
/// `max_delay` each is already most of a day of trying).
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;

impl RetryPolicy {
    /// Whether the policy is within bounds: [`crate::error::Error::InvalidParam`] when
    /// `max_attempts` is above [`MAX_ATTEMPTS_LIMIT`].
    pub fn check(&self) -> crate::error::Result<()> {
        if self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(crate::error::Error::InvalidParam("max_attempts above 1000"));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(20),
        }
    }
}

/// The retry state of one download.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    /// Attempts since the last progress.
    attempts: u32,
    /// Retries over the whole download (for reporting).
    total: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh state for `policy`, its jitter seeded from the clock (no attempts yet).
    pub fn new(policy: RetryPolicy) -> Backoff {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = now ^ (&policy as *const RetryPolicy as u64).rotate_left(32);
        Backoff {
            policy,
            attempts: 0,
            total: 0,
            rng: seed | 1,
        }
    }

    /// The policy this state follows.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Progress was made: the next failure starts from the base delay again.
    pub fn progressed(&mut self) {
        self.attempts = 0;
    }

    /// Retries in a row without progress so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Retries over the whole download.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The delay before the next attempt, or `None` when the limit is reached. The delay is
    /// drawn uniformly from [d/2, d] where d doubles per attempt up to `max_delay` ("equal
    /// jitter"), so devices that lost the same server do not come back in lockstep.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts {
            return None;
        }
        let exp = self.attempts.min(20);
        self.attempts += 1;
        self.total += 1;
        let full = self
            .policy
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_delay);
        let half = full / 2;
        let jitter = half.as_nanos() as u64;
        let r = if jitter == 0 {
            0
        } else {
            self.random() % (jitter + 1)
        };
        Some(half + Duration::from_nanos(r))
    }

    fn random(&mut self) -> u64 {
        // xorshift64: enough to spread retries, not for anything secret.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds_and_stop_at_the_limit() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        let mut b = Backoff::new(policy);
        let expected_full = [100u64, 200, 400, 500, 500];
        for full in expected_full {
            let d = b.next_delay().unwrap().as_millis() as u64;
            assert!(
                d >= full / 2 && d <= full,
                "{d} not in [{}, {full}]",
                full / 2
            );
        }
        assert_eq!(b.next_delay(), None);
        assert_eq!(b.total(), 5);
        b.progressed();
        assert!(b.next_delay().unwrap() <= Duration::from_millis(100));
        assert_eq!(b.total(), 6);
    }

    #[test]
    fn zero_attempts_never_retries() {
        let mut b = Backoff::new(RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        });
        assert_eq!(b.next_delay(), None);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(RetryPolicy {
            max_attempts: 1000,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        });
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay().unwrap()).collect();
        let distinct = delays
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
        assert!(distinct > 40, "only {distinct} distinct delays");
    }
}
