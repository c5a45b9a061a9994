//! Retrying the worker's own database calls.

use std::future::Future;
use std::time::Duration;

use catbird_core::Error;
use tokio_util::sync::CancellationToken;

use crate::backoff::{BackoffStrategy, FullJitter};

/// Attempts per bookkeeping call.
const ATTEMPTS: u32 = 5;

/// Runs `call` up to 5 times while it fails with a transient error (a lost
/// connection, an exhausted pool, a serialization failure), waiting a
/// full-jitter delay of 100 ms to 10 s between attempts. Stops at once when
/// `stop` fires and returns the last error.
pub(crate) async fn with_retries<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let backoff = FullJitter::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut retry = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_transient() || retry + 1 >= ATTEMPTS => return Err(error),
            Err(error) => {
                let delay = backoff.delay(retry);
                tracing::warn!(%error, attempt = retry + 1, ?delay, "could not {what}; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Err(error),
                }
                retry += 1;
            }
        }
    }
}
