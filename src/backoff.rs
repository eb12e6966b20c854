//! Retry delays and jitter, for every loop that waits before trying again. Random numbers
//! come from `fastrand` (seeded from the OS per thread), which is all jitter needs.

use std::time::Duration;

/// Exponential backoff with jitter: each delay doubles from `first` up to `max`, with up
/// to half of it added at random so that many pods do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, attempts: 0 }
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jittered_exponential(self.first, self.max, self.attempts);
        self.attempts += 1;
        delay
    }

    /// A try succeeded: the next failure starts again from `first`.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// The delay before try `n + 1` (n from 0): `first` doubled `n` times, at most `max`, with
/// up to half of that added at random.
pub fn jittered_exponential(first: Duration, max: Duration, n: u32) -> Duration {
    let base = first.saturating_mul(1 << n.min(16)).min(max);
    base + base.mul_f64(fastrand::f64() / 2.0)
}

/// `base` moved by up to `spread` of itself either way (`spread` 0.2: ±20%).
pub fn jitter(base: Duration, spread: f64) -> Duration {
    base.mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_half_added() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for base in [100, 200, 400, 800, 1000, 1000] {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(delay >= base && delay <= base + base / 2, "{delay:?} for {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(150));
        let jittered = jitter(Duration::from_secs(10), 0.2);
        assert!(jittered >= Duration::from_secs(8) && jittered <= Duration::from_secs(12));
    }
}
