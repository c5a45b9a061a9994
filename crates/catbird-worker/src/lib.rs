//! The catbird executor.
//!
//! This crate grows into the worker that claims and runs task and flow runs.
//! It starts with the retry delay policy the worker and its database calls
//! share: full-jitter exponential backoff.
//!
//! ```
//! use std::time::Duration;
//! use catbird_worker::backoff::{BackoffStrategy, FullJitter};
//!
//! let backoff = FullJitter::new(Duration::from_millis(100), Duration::from_secs(2));
//! // The third retry (index 2) waits a random time below min(100 ms * 2^2, 2 s).
//! let delay = backoff.delay(2);
//! assert!(delay >= Duration::from_millis(1) && delay < Duration::from_millis(400));
//! ```

pub mod backoff;

/// The catbird client, re-exported.
pub use catbird_core as core;
