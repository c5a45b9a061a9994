//! Handler options: concurrency, batching, polling while busy, timeout,
//! retries, backoff and the circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{BackoffStrategy, FullJitter};
use crate::breaker::{CircuitBreaker, CircuitBreakerStrategy};

/// The options a worker runs one handler with.
///
/// The defaults: concurrency 4, batch size 64, timeout 30 s, 2 retries,
/// full-jitter backoff from 100 ms to 2 s, no circuit breaker, and the
/// handler kind's `busy_poll` (none for tasks, 2 ms for flow steps and map
/// items).
#[derive(Clone)]
pub struct HandlerOpts {
    /// The maximum number of simultaneous executions in one worker.
    pub concurrency: usize,
    /// The maximum number of runs claimed at once; claimed runs wait for a
    /// free execution slot.
    pub batch_size: usize,
    /// How long a busy loop waits before it claims again after a claim that
    /// returned some work but less than it asked for. A loop is busy when
    /// the claim before also returned work. Zero makes it wait for a wake-up
    /// instead, as it does after any short claim when it is not busy.
    /// `None` takes the handler kind's default: zero for task handlers,
    /// which favour the latency of a run arriving alone, and
    /// [`STEP_BUSY_POLL`] for flow steps and map items, whose next work
    /// usually becomes ready while earlier work still runs. On-fail handlers
    /// ignore it, though [`HandlerOpts::validate`] still rejects a value
    /// above [`MAX_BUSY_POLL`] there.
    pub busy_poll: Option<Duration>,
    /// The deadline of one execution; zero means none. At the deadline the
    /// handler's cancellation token fires and the attempt fails.
    pub timeout: Duration,
    /// Extra attempts after the first failure.
    pub max_retries: u32,
    /// The shortest backoff cap (the cap of the first retry).
    pub backoff_min: Duration,
    /// The maximum backoff cap; zero disables backoff (1 ms delays).
    pub backoff_max: Duration,
    /// A custom backoff, used instead of full jitter between
    /// `backoff_min` and `backoff_max`.
    pub backoff_strategy: Option<Arc<dyn BackoffStrategy>>,
    /// Consecutive failures that open the built-in circuit breaker, with how
    /// long it stays open.
    pub circuit_breaker: Option<(u32, Duration)>,
    /// A custom circuit breaker, used instead of the built-in one.
    pub circuit_breaker_strategy: Option<Arc<dyn CircuitBreakerStrategy>>,
}

impl fmt::Debug for HandlerOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerOpts")
            .field("concurrency", &self.concurrency)
            .field("batch_size", &self.batch_size)
            .field("busy_poll", &self.busy_poll)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field(
                "backoff_strategy",
                &self.backoff_strategy.as_ref().map(|_| "custom"),
            )
            .field("circuit_breaker", &self.circuit_breaker)
            .field(
                "circuit_breaker_strategy",
                &self.circuit_breaker_strategy.as_ref().map(|_| "custom"),
            )
            .finish()
    }
}

impl Default for HandlerOpts {
    fn default() -> Self {
        HandlerOpts {
            concurrency: 4,
            batch_size: 64,
            busy_poll: None,
            timeout: Duration::from_secs(30),
            max_retries: 2,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_strategy: None,
            circuit_breaker: None,
            circuit_breaker_strategy: None,
        }
    }
}

/// The `busy_poll` of flow steps and map items that configure none.
///
/// Waiting for a wake-up after each short claim costs a request statement
/// and a notification per step. With a chain of no-op steps on 2 cores, that
/// cost about 40 % of the flow rate (docs/benchmarks.md).
pub const STEP_BUSY_POLL: Duration = Duration::from_millis(2);

/// The longest `busy_poll` that [`HandlerOpts::validate`] accepts.
pub const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// The default backoff of on-fail handlers that configure none.
pub(crate) const ON_FAIL_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(5));

impl HandlerOpts {
    /// The options of an on-fail handler that configures none: the defaults,
    /// with backoff from 250 ms to 5 s. Start from these to change some
    /// on-fail options and keep the others.
    pub fn on_fail_default() -> Self {
        HandlerOpts::default().backoff(ON_FAIL_BACKOFF.0, ON_FAIL_BACKOFF.1)
    }

    /// Sets the maximum number of simultaneous executions.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the number of runs claimed at once.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets how long a busy loop waits before claiming again after a short
    /// claim that returned work. Zero waits for a wake-up instead. See
    /// [`HandlerOpts::busy_poll`](HandlerOpts#structfield.busy_poll).
    pub fn busy_poll(mut self, delay: Duration) -> Self {
        self.busy_poll = Some(delay);
        self
    }

    /// Returns the capacity of a loop's queue of results waiting to be
    /// written: `concurrency + batch_size`, within what a tokio channel
    /// accepts.
    pub(crate) fn result_queue_capacity(&self) -> usize {
        self.concurrency
            .saturating_add(self.batch_size)
            .clamp(1, usize::MAX >> 3)
    }

    /// Returns the `busy_poll` in force: the one set, or `default`.
    pub(crate) fn busy_poll_or(&self, default: Duration) -> Duration {
        self.busy_poll.unwrap_or(default)
    }

    /// Sets the execution deadline; zero means none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the number of retries after the first failed attempt.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets full-jitter backoff between `min` and `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Uses a custom backoff strategy.
    pub fn backoff_strategy(mut self, strategy: Arc<dyn BackoffStrategy>) -> Self {
        self.backoff_strategy = Some(strategy);
        self
    }

    /// Adds the built-in circuit breaker.
    pub fn circuit_breaker(mut self, failure_threshold: u32, open_timeout: Duration) -> Self {
        self.circuit_breaker = Some((failure_threshold, open_timeout));
        self
    }

    /// Uses a custom circuit breaker.
    pub fn circuit_breaker_strategy(mut self, strategy: Arc<dyn CircuitBreakerStrategy>) -> Self {
        self.circuit_breaker_strategy = Some(strategy);
        self
    }

    /// Checks the options. The error message names the option and the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("concurrency must be greater than zero".to_owned());
        }
        if self.batch_size == 0 {
            return Err("batch size must be greater than zero".to_owned());
        }
        if let Some(delay) = self.busy_poll {
            if delay > MAX_BUSY_POLL {
                return Err(format!(
                    "busy poll ({delay:?}) must be at most {MAX_BUSY_POLL:?}"
                ));
            }
        }
        // Without retries the backoff is never used, so it is not checked.
        if self.max_retries > 0
            && self.backoff_strategy.is_none()
            && !self.backoff_max.is_zero()
            && self.backoff_max <= self.backoff_min
        {
            return Err(format!(
                "backoff maximum delay ({:?}) must be greater than minimum delay ({:?})",
                self.backoff_max, self.backoff_min
            ));
        }
        if let Some((threshold, open_timeout)) = self.circuit_breaker {
            if threshold == 0 {
                return Err(
                    "circuit breaker failure threshold must be greater than zero".to_owned(),
                );
            }
            if open_timeout.is_zero() {
                return Err("circuit breaker open timeout must be greater than zero".to_owned());
            }
        }
        Ok(())
    }

    pub(crate) fn build_backoff(&self) -> Arc<dyn BackoffStrategy> {
        match &self.backoff_strategy {
            Some(strategy) => strategy.clone(),
            None => Arc::new(FullJitter::new(self.backoff_min, self.backoff_max)),
        }
    }

    pub(crate) fn build_breaker(&self) -> Option<Arc<dyn CircuitBreakerStrategy>> {
        match (&self.circuit_breaker_strategy, self.circuit_breaker) {
            (Some(strategy), _) => Some(strategy.clone()),
            (None, Some((threshold, open_timeout))) => {
                Some(Arc::new(CircuitBreaker::new(threshold, open_timeout)))
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        HandlerOpts::default().validate().unwrap();
    }

    #[test]
    fn on_fail_default_backs_off_longer() {
        let opts = HandlerOpts::on_fail_default();
        assert_eq!(opts.backoff_min, Duration::from_millis(250));
        assert_eq!(opts.backoff_max, Duration::from_secs(5));
        assert_eq!(opts.max_retries, HandlerOpts::default().max_retries);
        opts.validate().unwrap();
    }

    #[test]
    fn zero_concurrency_is_rejected() {
        let error = HandlerOpts::default()
            .concurrency(0)
            .validate()
            .unwrap_err();
        assert_eq!(error, "concurrency must be greater than zero");
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let error = HandlerOpts::default().batch_size(0).validate().unwrap_err();
        assert_eq!(error, "batch size must be greater than zero");
    }

    #[test]
    fn busy_poll_defaults_to_handler_kind() {
        let opts = HandlerOpts::default();
        assert_eq!(opts.busy_poll_or(STEP_BUSY_POLL), STEP_BUSY_POLL);
        assert_eq!(opts.busy_poll_or(Duration::ZERO), Duration::ZERO);
        let set = opts.busy_poll(Duration::ZERO);
        assert_eq!(set.busy_poll_or(STEP_BUSY_POLL), Duration::ZERO);
        set.validate().unwrap();
    }

    #[test]
    fn huge_sizes_fit_result_queue() {
        let opts = HandlerOpts::default()
            .concurrency(usize::MAX)
            .batch_size(usize::MAX);
        assert_eq!(opts.result_queue_capacity(), usize::MAX >> 3);
        assert_eq!(HandlerOpts::default().result_queue_capacity(), 4 + 64);
    }

    #[test]
    fn long_busy_poll_is_rejected() {
        let error = HandlerOpts::default()
            .busy_poll(Duration::from_millis(1500))
            .validate()
            .unwrap_err();
        assert_eq!(error, "busy poll (1.5s) must be at most 1s");
        HandlerOpts::default()
            .busy_poll(MAX_BUSY_POLL)
            .validate()
            .unwrap();
    }

    #[test]
    fn backoff_max_not_above_min_is_rejected() {
        let opts = HandlerOpts::default().backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert!(
            opts.validate()
                .unwrap_err()
                .contains("backoff maximum delay")
        );
    }

    #[test]
    fn backoff_is_not_checked_without_retries() {
        let opts = HandlerOpts::default()
            .max_retries(0)
            .backoff(Duration::from_secs(2), Duration::from_secs(1));
        opts.validate().unwrap();
    }

    #[test]
    fn zero_backoff_max_is_allowed() {
        HandlerOpts::default()
            .backoff(Duration::from_secs(2), Duration::ZERO)
            .validate()
            .unwrap();
    }

    #[test]
    fn breaker_needs_threshold_and_timeout() {
        let error = HandlerOpts::default()
            .circuit_breaker(0, Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(
            error,
            "circuit breaker failure threshold must be greater than zero"
        );
        let error = HandlerOpts::default()
            .circuit_breaker(1, Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(
            error,
            "circuit breaker open timeout must be greater than zero"
        );
    }
}
