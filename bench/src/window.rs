//! Steady-state measurement. Client loops run until stopped and add the jobs
//! they finish to a shared counter. The rate is taken over a window that
//! opens after a warm-up.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A set of client loops sharing one counter of finished jobs.
pub(crate) struct Loops {
    done: Arc<AtomicU64>,
    stop_token: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// The shared counter and stop signal, as one client loop uses them.
#[derive(Clone)]
pub(crate) struct LoopHandle {
    done: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl LoopHandle {
    /// Whether the loop should stop.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Counts `jobs` finished jobs.
    pub(crate) fn add(&self, jobs: u64) {
        self.done.fetch_add(jobs, Ordering::Relaxed);
    }
}

/// The rate measured over one window.
pub(crate) struct Rate {
    /// Jobs finished per second over the whole window.
    pub(crate) per_second: f64,
    /// Jobs finished per second over the last fifth of the window, which
    /// shows whether the rate decays as dead rows build up.
    pub(crate) last_fifth_per_second: f64,
}

impl Loops {
    /// Starts `clients` loops; loop `i` runs `body(i, handle)`.
    pub(crate) fn start<F, Fut>(clients: usize, body: F) -> Self
    where
        F: Fn(usize, LoopHandle) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let done = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for client in 0..clients {
            let handle = LoopHandle {
                done: done.clone(),
                stop: stop.clone(),
            };
            tasks.spawn(body(client, handle));
        }
        Loops {
            done,
            stop_token: stop,
            tasks,
        }
    }

    /// Waits `warmup`, measures the rate over `window`, then stops the loops
    /// and waits for them. Fails when a loop failed.
    pub(crate) async fn measure(
        mut self,
        warmup: Duration,
        window: Duration,
    ) -> anyhow::Result<Rate> {
        let done = self.done.clone();
        let rate = measure_counter(warmup, window, || {
            let done = done.clone();
            async move { Ok(done.load(Ordering::Relaxed)) }
        });
        // A loop that fails early ends the measurement with its error.
        let rate = tokio::select! {
            rate = rate => rate,
            Some(joined) = self.tasks.join_next() => {
                joined??;
                anyhow::bail!("a client loop stopped before the window closed");
            }
        };
        self.stop().await?;
        rate
    }

    /// Stops the loops and waits for them. Fails when a loop failed.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_token.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            joined??;
        }
        Ok(())
    }
}

/// Waits `warmup`, then reads `count` when the window opens, when its last
/// fifth starts and when it closes, and returns the rates.
pub(crate) async fn measure_counter<C, Fut>(
    warmup: Duration,
    window: Duration,
    count: C,
) -> anyhow::Result<Rate>
where
    C: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    tokio::time::sleep(warmup).await;
    let opened = Instant::now();
    let at_open = count().await?;
    tokio::time::sleep(window.mul_f64(0.8)).await;
    let fifth_started = Instant::now();
    let at_fifth = count().await?;
    tokio::time::sleep_until((opened + window).into()).await;
    let at_close = count().await?;
    let closed = Instant::now();

    let per_second = (at_close - at_open) as f64 / (closed - opened).as_secs_f64();
    let last_fifth_per_second =
        (at_close - at_fifth) as f64 / (closed - fifth_started).as_secs_f64();
    Ok(Rate {
        per_second,
        last_fifth_per_second,
    })
}
