//! Circuit breakers: stop calling a handler that keeps failing.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Decides whether a handler may be called, from its recent results.
///
/// The worker keeps one strategy per handler and shares it between that
/// handler's concurrent executions.
pub trait CircuitBreakerStrategy: Send + Sync {
    /// Asks to call the handler. `Err(retry_after)` refuses the call; the run
    /// is then given back, without counting an attempt, and claimed again
    /// after `retry_after`.
    fn acquire(&self) -> Result<(), Duration>;

    /// Records that an allowed call succeeded.
    fn record_success(&self);

    /// Records that an allowed call failed.
    fn record_failure(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The classic breaker. Closed, it counts consecutive failures, and a
/// success resets the count. When the count reaches the threshold it opens and
/// refuses every call for the open timeout. The first call after that is a
/// probe (half-open) while other calls are refused; the probe's success closes
/// the breaker, its failure opens it again for a full timeout.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_timeout: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive
    /// failures and stays open for `open_timeout`.
    pub fn new(failure_threshold: u32, open_timeout: Duration) -> Self {
        CircuitBreaker {
            failure_threshold,
            open_timeout,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// The number of consecutive failures that opens the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// How long the breaker stays open.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state invalid:
        // every write is a single assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl CircuitBreakerStrategy for CircuitBreaker {
    fn acquire(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen { probing: true };
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            State::HalfOpen { probing: true } => Err(self.open_timeout),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(())
            }
        }
    }

    fn record_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    fn record_failure(&self) {
        let mut state = self.lock();
        let open = State::Open {
            until: far_deadline(self.open_timeout),
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 >= self.failure_threshold => open,
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { .. } | State::Open { .. } => open,
        };
    }
}

/// Returns now + `after`, or a time a century away when that overflows.
fn far_deadline(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_failures() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
        assert!(breaker.acquire().is_ok());
        breaker.record_failure();
        assert!(breaker.acquire().is_ok());
        breaker.record_failure();
        let retry_after = breaker.acquire().unwrap_err();
        assert!(retry_after <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert!(breaker.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_allows_one_probe() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(300));
        breaker.record_failure();
        assert!(breaker.acquire().is_err());
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(
            breaker.acquire().is_ok(),
            "the first call after the timeout is the probe"
        );
        assert_eq!(breaker.acquire().unwrap_err(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(300));
        breaker.record_failure();
        tokio::time::advance(Duration::from_millis(300)).await;
        breaker.acquire().unwrap();
        breaker.record_success();
        assert!(breaker.acquire().is_ok());
        assert!(breaker.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_opens_for_a_full_timeout() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(300));
        breaker.record_failure();
        tokio::time::advance(Duration::from_millis(300)).await;
        breaker.acquire().unwrap();
        breaker.record_failure();
        assert_eq!(breaker.acquire().unwrap_err(), Duration::from_millis(300));
    }
}
