//! Inputs that once broke the worker or the client: NUL characters in
//! handler errors, out-of-range durations and periods, cancellation without
//! a wake-up connection, and schema mismatches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catbird_core::task::{RunStatus, RunTaskOpts, Task};
use catbird_core::{Client, Error, Executor};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{TaskContext, TaskHandler, Worker, WorkerError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::task_support::{DEADLINE, start, wait_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_handler_error_fails_the_run_once() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let nul = TaskHandler::new(
        "nul_error",
        move |_: serde_json::Value, _ctx: TaskContext| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(anyhow::anyhow!("bad byte \u{0} in input")) }
        },
    )
    .max_retries(0);
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .lease(Duration::from_secs(1))
            .task(nul),
    )
    .await;

    let run = client
        .run_task("nul_error", &json!({}), RunTaskOpts::default())
        .await?;
    let failed = wait_status(&client, "nul_error", run.id(), RunStatus::Failed).await;

    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.error_message.as_deref(),
        Some("bad byte \u{FFFD} in input")
    );
    // Well past the lease: the failure was recorded, so nothing runs again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_handler_without_listen_connection() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let stopped = Arc::new(tokio::sync::Notify::new());
    let seen = stopped.clone();
    let slow = TaskHandler::new(
        "slow_cancel",
        move |_: serde_json::Value, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                ctx.cancelled().await;
                seen.notify_one();
                Ok::<_, anyhow::Error>(())
            }
        },
    );
    client.create_task(&Task::define("slow_cancel")).await?;
    // No listen_url: the stop notification cannot arrive.
    let shutdown = CancellationToken::new();
    let worker = Worker::new(db.pool.clone())
        .lease(Duration::from_millis(600))
        .task(slow);
    let handle = tokio::spawn(worker.start(shutdown.clone()));

    let run = client
        .run_task("slow_cancel", &json!({}), RunTaskOpts::default())
        .await?;
    wait_status(&client, "slow_cancel", run.id(), RunStatus::Started).await;
    client
        .cancel_task_run("slow_cancel", run.id(), Some("stop"))
        .await?;

    tokio::time::timeout(DEADLINE, stopped.notified()).await?;
    shutdown.cancel();
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn zero_heartbeat_interval_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let result = Worker::new(db.pool.clone())
        .heartbeat_interval(Duration::ZERO)
        .start(CancellationToken::new())
        .await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, WorkerError::InvalidConfiguration(_)),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("heartbeat interval must be greater than zero"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn worker_reports_an_old_schema() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut connection = db.connect().await;
    catbird_sql::migrate_up_to(&mut connection, 3).await?;

    let error = Worker::new(db.pool.clone())
        .start(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("schema is at version 3"),
        "{error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_handler_timeout_does_not_panic() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let forever = TaskHandler::new("forever_timeout", |n: i64, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(n + 1)
    })
    .timeout(Duration::MAX);
    let worker = start(&db, Worker::new(db.pool.clone()).task(forever)).await;

    let run = client
        .run_task("forever_timeout", &1, RunTaskOpts::default())
        .await?;
    let output: i64 = tokio::time::timeout(DEADLINE, run.typed().wait_for_output()).await??;
    assert_eq!(output, 2);
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn retention_beyond_a_century_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let error = client
        .create_task(&Task::define("forever").retention_period(Duration::MAX))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("retention_period must be at most 100 years"),
        "{error}"
    );

    // GC keeps working for everyone else.
    client.gc().await?;
    let error = client
        .purge_task_runs("forever", Duration::from_secs(u64::MAX))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("older_than must be at most 100 years"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn infinite_visibility_keeps_wakeups_working() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let echo = TaskHandler::new("inf_wake", |n: i64, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(n)
    });
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo)).await;

    db.pool
        .query_rows(
            "SELECT cb_run_task(name => 'inf_wake', input => '0', visible_at => 'infinity')",
            &[],
        )
        .await?;
    let run = client
        .run_task("inf_wake", &7, RunTaskOpts::default())
        .await?;

    // Woken by the listener, the run finishes well before the 2 s polling.
    let started = tokio::time::Instant::now();
    let output: i64 = tokio::time::timeout(DEADLINE, run.typed().wait_for_output()).await??;
    assert_eq!(output, 7);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn unknown_run_from_sql_reads_cleanly() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("t")).await?;
    let error = db
        .pool
        .query_rows(
            "SELECT * FROM cb_wait_task_output(name => 't', id => 4242, poll_for => 100)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert_eq!(error.to_string(), "catbird: task run \"t/4242\" not found");
    Ok(())
}

#[tokio::test]
async fn nul_in_text_arguments_is_named() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("t")).await?;
    let error = client
        .run_task("t", &1, RunTaskOpts::default().concurrency_key("a\u{0}b"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    assert!(error.to_string().contains("concurrency key"), "{error}");
    let runs = wait_for("the list", DEADLINE, || async {
        client.list_task_runs("t").await.ok()
    })
    .await;
    assert!(runs.is_empty());
    Ok(())
}
