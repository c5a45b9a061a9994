//! Polling durations shared by `read_poll` and the waiting helpers.

use std::time::Duration;

/// The default time a poll waits before it returns empty.
pub const DEFAULT_POLL_FOR: Duration = Duration::from_secs(5);

/// The default time between two checks of a poll.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

const MIN_POLL_DURATION: Duration = Duration::from_millis(1);

/// How long a poll waits and how often it checks.
///
/// A zero value takes the default (5 s and 200 ms). Each value is at least
/// 1 ms, and an interval not shorter than the wait becomes half the wait, so
/// every combination is usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOpts {
    /// How long to wait for a result before returning empty.
    pub poll_for: Duration,
    /// How long to wait between two checks.
    pub poll_interval: Duration,
}

impl PollOpts {
    /// Sets how long to wait for a result.
    pub fn poll_for(mut self, poll_for: Duration) -> Self {
        self.poll_for = poll_for;
        self
    }

    /// Sets the time between two checks.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Applies the defaults and bounds described on the type.
    pub fn normalized(self) -> PollOpts {
        let poll_for = if self.poll_for.is_zero() {
            DEFAULT_POLL_FOR
        } else {
            self.poll_for
        }
        .max(MIN_POLL_DURATION);
        let mut poll_interval = if self.poll_interval.is_zero() {
            DEFAULT_POLL_INTERVAL
        } else {
            self.poll_interval
        }
        .max(MIN_POLL_DURATION);
        if poll_interval >= poll_for {
            poll_interval = (poll_for / 2).max(MIN_POLL_DURATION);
        }
        PollOpts {
            poll_for,
            poll_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_take_defaults() {
        let opts = PollOpts::default().normalized();
        assert_eq!(opts.poll_for, DEFAULT_POLL_FOR);
        assert_eq!(opts.poll_interval, DEFAULT_POLL_INTERVAL);
    }

    #[test]
    fn interval_not_shorter_than_wait_becomes_half_the_wait() {
        let opts = PollOpts::default()
            .poll_for(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(300))
            .normalized();
        assert_eq!(opts.poll_interval, Duration::from_millis(50));
    }

    #[test]
    fn values_are_at_least_one_millisecond() {
        let opts = PollOpts::default()
            .poll_for(Duration::from_micros(10))
            .poll_interval(Duration::from_micros(1))
            .normalized();
        assert_eq!(opts.poll_for, Duration::from_millis(1));
        assert_eq!(opts.poll_interval, Duration::from_millis(1));
    }

    #[test]
    fn explicit_values_are_kept() {
        let opts = PollOpts::default()
            .poll_for(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(50))
            .normalized();
        assert_eq!(
            opts,
            PollOpts {
                poll_for: Duration::from_secs(2),
                poll_interval: Duration::from_millis(50)
            }
        );
    }
}
