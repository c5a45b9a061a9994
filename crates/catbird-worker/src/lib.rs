//! The catbird executor: workers that claim task runs and execute their
//! handlers.
//!
//! A [`Worker`] registers its task handlers, claims runs in batches with
//! `FOR UPDATE SKIP LOCKED` (highest priority first, then oldest), executes
//! them with bounded concurrency, retries failures with full-jitter backoff,
//! and renews the lease of every run it holds, so a run is never executed
//! twice while its worker lives and is claimed again soon after its worker
//! dies. One `LISTEN` connection wakes idle claim loops as soon as a run is
//! created; a polling fallback covers a lost connection.
//!
//! ```no_run
//! use std::time::Duration;
//! use catbird_worker::{TaskContext, TaskHandler, Worker};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let url = "postgres://postgres@127.0.0.1:5432/app";
//! let pool = catbird_core::pool_from_url(url, 8)?;
//!
//! let double = TaskHandler::new("double", |n: i64, _ctx: TaskContext| async move {
//!     Ok::<_, anyhow::Error>(n * 2)
//! })
//! .concurrency(8)
//! .max_retries(3)
//! .backoff(Duration::from_millis(200), Duration::from_secs(5));
//!
//! let shutdown = CancellationToken::new();
//! let worker = Worker::new(pool.clone()).listen_url(url).task(double).start(shutdown.clone());
//! let worker = tokio::spawn(worker);
//!
//! let client = catbird_core::Client::new(pool);
//! let run = client.run_task("double", &21, Default::default()).await?;
//! let output: i64 = run.typed().wait_for_output().await?;
//! assert_eq!(output, 42);
//!
//! shutdown.cancel();
//! worker.await??;
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod breaker;
mod fanout;
mod flow;
mod flow_loop;
mod item_loop;
mod options;
mod retry;
mod task;
mod task_loop;
mod vacuum;
mod wake;
mod worker;

pub use backoff::{BackoffStrategy, FullJitter};
pub use breaker::{CircuitBreaker, CircuitBreakerStrategy};
pub use fanout::Yielder;
pub use flow::{
    Flow, FlowFailure, IntoStepHandler, StepArgs, StepContext, StepHandler, StepToken, cancel_flow,
    complete_early,
};
pub use options::{HandlerOpts, MAX_BUSY_POLL, STEP_BUSY_POLL};
pub use task::{IntoTaskHandler, TaskContext, TaskFailure, TaskHandler, cancel};
pub use worker::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEASE, DEFAULT_SHUTDOWN_TIMEOUT, GC_INTERVAL, Worker,
    WorkerError,
};

/// The catbird client, re-exported.
pub use catbird_core as core;
