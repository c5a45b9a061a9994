//! Retry delays.

use std::time::Duration;

use rand::Rng;

/// Chooses how long to wait before a retry.
pub trait BackoffStrategy: Send + Sync {
    /// The delay before retry number `retry`, counted from 0 for the first
    /// retry.
    fn delay(&self, retry: u32) -> Duration;
}

/// Full-jitter exponential backoff: the delay before retry `n` is uniformly
/// random in `[0, min(min_delay * 2^n, max_delay))`, raised to at least 1 ms.
/// A zero `min_delay` or `max_delay` gives 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullJitter {
    min_delay: Duration,
    max_delay: Duration,
}

const MIN_DELAY: Duration = Duration::from_millis(1);

impl FullJitter {
    /// A backoff growing from `min_delay` and capped at `max_delay`.
    pub fn new(min_delay: Duration, max_delay: Duration) -> Self {
        FullJitter {
            min_delay,
            max_delay,
        }
    }

    /// The upper bound (exclusive) of the delay before retry `retry`.
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 2u32.checked_pow(retry.min(31)).unwrap_or(u32::MAX);
        self.min_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl BackoffStrategy for FullJitter {
    fn delay(&self, retry: u32) -> Duration {
        if self.min_delay.is_zero() || self.max_delay.is_zero() {
            return MIN_DELAY;
        }
        let cap = self.cap(retry);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rand::rng().random_range(0..nanos.max(1)));
        jittered.max(MIN_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn first_retry_stays_below_min_delay() {
        let backoff = FullJitter::new(MIN, MAX);
        for _ in 0..1000 {
            assert!(backoff.delay(0) < MIN);
        }
    }

    #[test]
    fn second_retry_stays_below_twice_min_delay() {
        let backoff = FullJitter::new(MIN, MAX);
        for _ in 0..1000 {
            assert!(backoff.delay(1) < MIN * 2);
        }
    }

    #[test]
    fn late_retries_are_capped_at_max_delay() {
        let backoff = FullJitter::new(MIN, MAX);
        assert_eq!(backoff.cap(40), MAX);
        for _ in 0..1000 {
            assert!(backoff.delay(1000) < MAX);
        }
    }

    #[test]
    fn delay_is_at_least_one_millisecond() {
        let backoff = FullJitter::new(Duration::from_nanos(10), Duration::from_nanos(20));
        for _ in 0..100 {
            assert!(backoff.delay(0) >= MIN_DELAY);
        }
    }

    #[test]
    fn zero_bounds_give_one_millisecond() {
        assert_eq!(FullJitter::new(Duration::ZERO, MAX).delay(3), MIN_DELAY);
        assert_eq!(FullJitter::new(MIN, Duration::ZERO).delay(3), MIN_DELAY);
    }

    #[test]
    fn delays_spread_over_the_range() {
        let backoff = FullJitter::new(MIN, MAX);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(0)).collect();
        assert!(delays.iter().any(|d| *d < MIN / 4));
        assert!(delays.iter().any(|d| *d > MIN * 3 / 4));
    }
}
