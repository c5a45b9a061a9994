//! Failed attempts: retries, timeouts, panics, undecodable input and the
//! circuit breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catbird_core::task::{RunStatus, RunTaskOpts, Task};
use catbird_core::{Client, Error};
use catbird_tests::TestDb;
use catbird_worker::{
    BackoffStrategy, CircuitBreaker, CircuitBreakerStrategy, HandlerOpts, TaskContext, TaskHandler,
    Worker,
};
use serde_json::{Value, json};

use crate::task_support::{Log, output_of, start, wait_for_len, wait_status};

/// A backoff that always waits the same time, so a test can rely on a retry
/// still being pending.
struct FixedBackoff(Duration);

impl BackoffStrategy for FixedBackoff {
    fn delay(&self, _retry: u32) -> Duration {
        self.0
    }
}

/// The built-in breaker, counting the calls it refuses.
struct CountingBreaker {
    inner: CircuitBreaker,
    refusals: AtomicUsize,
}

impl CountingBreaker {
    fn new(failure_threshold: u32, open_timeout: Duration) -> Self {
        CountingBreaker {
            inner: CircuitBreaker::new(failure_threshold, open_timeout),
            refusals: AtomicUsize::new(0),
        }
    }
}

impl CircuitBreakerStrategy for CountingBreaker {
    fn acquire(&self) -> Result<(), Duration> {
        let result = self.inner.acquire();
        if result.is_err() {
            self.refusals.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn record_success(&self) {
        self.inner.record_success();
    }

    fn record_failure(&self) {
        self.inner.record_failure();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_run_completes_on_third_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let attempts = Log::new();
    let handler = {
        let attempts = attempts.clone();
        TaskHandler::new("flaky", move |_: Value, ctx: TaskContext| {
            let attempts = attempts.clone();
            async move {
                attempts.push(ctx.attempt());
                if ctx.attempt() < 3 {
                    anyhow::bail!("attempt {} failed", ctx.attempt());
                }
                Ok("done")
            }
        })
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client.run_task("flaky", &1, RunTaskOpts::default()).await?;
    assert_eq!(
        output_of(&client, "flaky", handle.id()).await?,
        json!("done")
    );

    let run = handle.get().await?;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts, 3);
    assert_eq!(attempts.snapshot(), [1, 2, 3]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retries_fails_after_one_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Log::new();
    let handler = {
        let calls = calls.clone();
        TaskHandler::new("once", move |_: Value, ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.push(ctx.attempt());
                Err::<(), _>(anyhow::anyhow!("refused"))
            }
        })
        .max_retries(0)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client.run_task("once", &1, RunTaskOpts::default()).await?;
    let run = wait_status(&client, "once", handle.id(), RunStatus::Failed).await;

    assert_eq!(run.attempts, 1);
    assert_eq!(run.error_message.as_deref(), Some("refused"));
    assert_eq!(calls.snapshot(), [1]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_error_message_is_replaced() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let handler = TaskHandler::new("silent", |_: Value, _ctx: TaskContext| async move {
        Err::<(), _>(anyhow::anyhow!(""))
    })
    .max_retries(0);
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("silent", &1, RunTaskOpts::default())
        .await?;
    let run = wait_status(&client, "silent", handle.id(), RunStatus::Failed).await;

    let message = run
        .error_message
        .expect("a failed run has an error message");
    assert!(!message.is_empty());
    worker.stop().await;
    Ok(())
}

/// Records when its attempt stopped, after a cleanup that takes a while,
/// whether the attempt returned or was dropped.
struct RecordEndOnDrop {
    attempt: i32,
    ends: Log<(i32, Instant)>,
}

impl Drop for RecordEndOnDrop {
    fn drop(&mut self) {
        // Synchronous cleanup, such as flushing a file, that delays the end
        // of the attempt.
        std::thread::sleep(Duration::from_millis(150));
        self.ends.push((self.attempt, Instant::now()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_attempt_stops_before_retry() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let starts: Log<(i32, Instant)> = Log::new();
    let ends: Log<(i32, Instant)> = Log::new();
    let handler = || {
        let starts = starts.clone();
        let ends = ends.clone();
        TaskHandler::new("t_to", move |_: Value, ctx: TaskContext| {
            let starts = starts.clone();
            let ends = ends.clone();
            async move {
                starts.push((ctx.attempt(), Instant::now()));
                let _end = RecordEndOnDrop {
                    attempt: ctx.attempt(),
                    ends,
                };
                while !ctx.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err::<(), _>(anyhow::anyhow!("stopped at the deadline"))
            }
        })
        .timeout(Duration::from_millis(500))
        .max_retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(100))
    };
    let first = start(&db, Worker::new(db.pool.clone()).task(handler())).await;
    let second = start(&db, Worker::new(db.pool.clone()).task(handler())).await;

    let handle = client.run_task("t_to", &1, RunTaskOpts::default()).await?;
    let run = wait_status(&client, "t_to", handle.id(), RunStatus::Failed).await;
    wait_for_len(&ends, 2).await;

    assert_eq!(run.attempts, 2);
    assert!(
        run.error_message
            .as_deref()
            .is_some_and(|message| message.contains("timed out")),
        "{:?}",
        run.error_message
    );
    let starts = starts.snapshot();
    let ends = ends.snapshot();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0].0, 1);
    assert_eq!(starts[1].0, 2);
    assert_eq!(ends[0].0, 1);
    assert!(
        starts[1].1 >= ends[0].1,
        "attempt 2 started {:?} before attempt 1 stopped",
        ends[0].1 - starts[1].1
    );
    first.stop().await;
    second.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_handler_that_ignores_token() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let finished = finished.clone();
        TaskHandler::new("stubborn", move |_: Value, _ctx: TaskContext| {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, anyhow::Error>("late")
            }
        })
        .timeout(Duration::from_millis(300))
        .max_retries(0)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("stubborn", &1, RunTaskOpts::default())
        .await?;
    let error = output_of(&client, "stubborn", handle.id())
        .await
        .unwrap_err();

    assert!(
        matches!(error, Error::RunFailed(ref message) if message.contains("timed out")),
        "{error}"
    );
    assert_eq!(handle.get().await?.attempts, 1);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_failed_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let handler = TaskHandler::new("panicky", |n: i64, _ctx: TaskContext| async move {
        if n > 0 {
            panic!("boom {n}");
        }
        Ok::<_, anyhow::Error>(n)
    })
    .max_retries(1)
    .backoff(Duration::from_millis(1), Duration::from_millis(5));
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("panicky", &42, RunTaskOpts::default())
        .await?;
    let error = output_of(&client, "panicky", handle.id())
        .await
        .unwrap_err();
    let Error::RunFailed(message) = error else {
        panic!("expected a failed run, got {error}");
    };
    assert!(message.contains("panic"), "{message}");
    assert!(message.contains("boom 42"), "{message}");
    assert_eq!(handle.get().await?.attempts, 2);

    let healthy = client
        .run_task("panicky", &0, RunTaskOpts::default())
        .await?;
    assert_eq!(output_of(&client, "panicky", healthy.id()).await?, json!(0));
    worker.stop().await;
    Ok(())
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    quantity: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_input_is_a_failed_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        TaskHandler::new("orders", move |order: Order, _ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, anyhow::Error>(order.quantity)
            }
        })
        .max_retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("orders", &"not an order", RunTaskOpts::default())
        .await?;
    let error = output_of(&client, "orders", handle.id()).await.unwrap_err();

    assert!(
        matches!(error, Error::RunFailed(ref message) if message.contains("decode")),
        "{error}"
    );
    assert_eq!(handle.get().await?.attempts, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_delays_retry() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls: Log<Instant> = Log::new();
    let handler = {
        let calls = calls.clone();
        TaskHandler::new("guarded", move |_: Value, ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.push(Instant::now());
                if ctx.attempt() == 1 {
                    anyhow::bail!("first call fails");
                }
                Ok("recovered")
            }
        })
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .circuit_breaker(1, Duration::from_millis(300))
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("guarded", &1, RunTaskOpts::default())
        .await?;
    assert_eq!(
        output_of(&client, "guarded", handle.id()).await?,
        json!("recovered")
    );

    let calls = calls.snapshot();
    assert_eq!(calls.len(), 2);
    let gap = calls[1] - calls[0];
    assert!(
        gap >= Duration::from_millis(250),
        "the second call came {gap:?} after the first, while the breaker was open"
    );
    assert_eq!(
        handle.get().await?.attempts,
        2,
        "calls refused by the breaker are not attempts"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_refusal_keeps_attempt_count() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let breaker = Arc::new(CountingBreaker::new(1, Duration::from_millis(300)));
    let handler = TaskHandler::new("guarded", |fail: bool, _ctx: TaskContext| async move {
        if fail {
            anyhow::bail!("asked to fail");
        }
        Ok("ok")
    })
    .options_with(
        HandlerOpts::default()
            .max_retries(0)
            .circuit_breaker_strategy(breaker.clone()),
    );
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let failing = client
        .run_task("guarded", &true, RunTaskOpts::default())
        .await?;
    wait_status(&client, "guarded", failing.id(), RunStatus::Failed).await;
    let refused = client
        .run_task("guarded", &false, RunTaskOpts::default())
        .await?;
    assert_eq!(
        output_of(&client, "guarded", refused.id()).await?,
        json!("ok")
    );

    assert!(
        breaker.refusals.load(Ordering::SeqCst) >= 1,
        "the open breaker refused the second run at least once"
    );
    assert_eq!(refused.get().await?.attempts, 1);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_keyed_run_holds_its_key() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let handler = TaskHandler::new("acct", |account: i64, ctx: TaskContext| async move {
        if account == 9 && ctx.attempt() == 1 {
            anyhow::bail!("account 9 is busy");
        }
        Ok(account)
    })
    .options_with(
        HandlerOpts::default()
            .max_retries(3)
            .batch_size(64)
            .backoff_strategy(Arc::new(FixedBackoff(Duration::from_secs(2)))),
    );
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let key = |account: i64| RunTaskOpts::default().concurrency_key(format!("acct-{account}"));

    let keyed = client.run_task("acct", &9, key(9)).await?;
    let waiting = crate::task_support::wait_run(
        &client,
        "acct",
        keyed.id(),
        "the first attempt to fail",
        |run| run.error_message.is_some(),
    )
    .await;
    assert_eq!(waiting.status, RunStatus::Started);
    let again = client.run_task("acct", &9, key(9)).await?;
    assert_eq!(
        again.id(),
        keyed.id(),
        "a run waiting for its retry holds its key"
    );

    let mut others = Vec::new();
    for account in 100..200 {
        others.push(client.run_task("acct", &account, key(account)).await?);
    }
    for (account, handle) in (100..200).zip(&others) {
        assert_eq!(
            output_of(&client, "acct", handle.id()).await?,
            json!(account)
        );
    }
    assert_eq!(output_of(&client, "acct", keyed.id()).await?, json!(9));
    assert_eq!(keyed.get().await?.attempts, 2);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_claimed_by_any_worker() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("shared")).await?;
    let workers_seen: Log<(i32, &'static str)> = Log::new();
    let handler = |label: &'static str| {
        let workers_seen = workers_seen.clone();
        TaskHandler::new("shared", move |_: Value, ctx: TaskContext| {
            let workers_seen = workers_seen.clone();
            async move {
                workers_seen.push((ctx.attempt(), label));
                if ctx.attempt() == 1 {
                    anyhow::bail!("first attempt fails");
                }
                Ok(label)
            }
        })
        .options_with(
            HandlerOpts::default()
                .max_retries(1)
                .backoff_strategy(Arc::new(FixedBackoff(Duration::from_millis(300)))),
        )
    };
    let first = start(&db, Worker::new(db.pool.clone()).task(handler("first"))).await;

    let handle = client
        .run_task("shared", &1, RunTaskOpts::default())
        .await?;
    crate::task_support::wait_run(
        &client,
        "shared",
        handle.id(),
        "the first attempt to fail",
        |run| run.error_message.is_some(),
    )
    .await;
    first.stop().await;
    let second = start(&db, Worker::new(db.pool.clone()).task(handler("second"))).await;

    assert_eq!(
        output_of(&client, "shared", handle.id()).await?,
        json!("second")
    );
    assert_eq!(workers_seen.snapshot(), [(1, "first"), (2, "second")]);
    second.stop().await;
    Ok(())
}
