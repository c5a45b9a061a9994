//! On-fail handlers: called after a run failed for good, with their own
//! retries.

use std::time::Duration;

use catbird_core::Client;
use catbird_core::task::{RunStatus, RunTaskOpts, Task, TaskRunInfo};
use catbird_tests::TestDb;
use catbird_worker::Worker;
use catbird_worker::{HandlerOpts, TaskContext, TaskFailure, TaskHandler};
use serde_json::{Value, json};

use crate::task_support::{Log, start, wait_run, wait_status};

/// A handler for task `name` that fails every attempt with "attempt N
/// failed", or waits for its token when the input is "wait".
fn failing(name: &str, max_retries: u32) -> TaskHandler {
    TaskHandler::new(name, |input: Value, ctx: TaskContext| async move {
        if input == json!("wait") {
            ctx.cancelled().await;
            return Ok(());
        }
        Err(anyhow::anyhow!("attempt {} failed", ctx.attempt()))
    })
    .max_retries(max_retries)
    .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// On-fail options with short retry delays.
fn on_fail_opts(max_retries: u32) -> Option<HandlerOpts> {
    Some(
        HandlerOpts::default()
            .max_retries(max_retries)
            .backoff(Duration::from_millis(1), Duration::from_millis(5)),
    )
}

async fn wait_on_fail(client: &Client, task: &str, id: i64, status: &str) -> TaskRunInfo {
    let what = format!("on-fail work of run {id} to become {status}");
    wait_run(client, task, id, &what, |run| {
        run.on_fail_status.as_deref() == Some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_receives_failure_once() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls: Log<(Value, TaskFailure)> = Log::new();
    let handler = {
        let calls = calls.clone();
        failing("charge", 1).on_fail(
            move |input: Value, failure: TaskFailure| {
                let calls = calls.clone();
                async move {
                    calls.push((input, failure));
                    Ok::<_, anyhow::Error>(())
                }
            },
            on_fail_opts(2),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let input = json!({"order": 5});

    let handle = client
        .run_task(
            "charge",
            &input,
            RunTaskOpts::default().concurrency_key("order-5"),
        )
        .await?;
    let run = wait_on_fail(&client, "charge", handle.id(), "completed").await;

    assert_eq!(
        run.status,
        RunStatus::Failed,
        "on-fail work leaves the run failed"
    );
    assert_eq!(run.on_fail_attempts, 1);
    assert_eq!(run.on_fail_error, None);
    let calls = calls.snapshot();
    assert_eq!(calls.len(), 1);
    let (seen_input, failure) = &calls[0];
    assert_eq!(seen_input, &input);
    assert_eq!(failure.task_name, "charge");
    assert_eq!(failure.task_run_id, handle.id());
    assert_eq!(failure.error_message, "attempt 2 failed");
    assert_eq!(failure.attempts, 2);
    assert_eq!(failure.on_fail_attempts, 1);
    assert_eq!(failure.started_at, run.started_at);
    assert_eq!(failure.failed_at, run.failed_at);
    assert!(failure.failed_at.is_some());
    assert_eq!(failure.concurrency_key.as_deref(), Some("order-5"));
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_retries_after_error() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let attempts = Log::new();
    let handler = {
        let attempts = attempts.clone();
        failing("notify", 0).on_fail(
            move |_: Value, failure: TaskFailure| {
                let attempts = attempts.clone();
                async move {
                    attempts.push(failure.on_fail_attempts);
                    if failure.on_fail_attempts == 1 {
                        anyhow::bail!("mail server down");
                    }
                    Ok(())
                }
            },
            on_fail_opts(1),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("notify", &1, RunTaskOpts::default())
        .await?;
    let run = wait_on_fail(&client, "notify", handle.id(), "completed").await;

    assert_eq!(attempts.snapshot(), [1, 2]);
    assert_eq!(run.on_fail_attempts, 2);
    assert_eq!(run.on_fail_error, None);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_gives_up_without_retries() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let attempts = Log::new();
    let handler = {
        let attempts = attempts.clone();
        failing("notify", 0).on_fail(
            move |_: Value, failure: TaskFailure| {
                let attempts = attempts.clone();
                async move {
                    attempts.push(failure.on_fail_attempts);
                    Err::<(), _>(anyhow::anyhow!("mail server down"))
                }
            },
            on_fail_opts(0),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("notify", &1, RunTaskOpts::default())
        .await?;
    let run = wait_on_fail(&client, "notify", handle.id(), "failed").await;
    // A later run's on-fail work completing shows the loop went on
    // claiming after giving up on the first.
    let later = client
        .run_task("notify", &2, RunTaskOpts::default())
        .await?;
    wait_on_fail(&client, "notify", later.id(), "failed").await;

    assert_eq!(run.on_fail_attempts, 1);
    assert_eq!(run.on_fail_error.as_deref(), Some("mail server down"));
    assert_eq!(attempts.snapshot(), [1, 1]);
    assert_eq!(handle.get().await?.on_fail_attempts, 1);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_not_called_for_canceled_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let failed_ids = Log::new();
    let handler = {
        let failed_ids = failed_ids.clone();
        failing("job", 0).on_fail(
            move |_: Value, failure: TaskFailure| {
                let failed_ids = failed_ids.clone();
                async move {
                    failed_ids.push(failure.task_run_id);
                    Ok::<_, anyhow::Error>(())
                }
            },
            on_fail_opts(0),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let running = client
        .run_task("job", &"wait", RunTaskOpts::default())
        .await?;
    wait_status(&client, "job", running.id(), RunStatus::Started).await;
    assert!(running.cancel(Some("stop")).await?);
    client.create_task(&Task::define("job")).await?;
    let queued = client
        .run_task("job", &"wait", RunTaskOpts::default())
        .await?;
    assert!(queued.cancel(None).await?);
    let failing_run = client
        .run_task("job", &"fail", RunTaskOpts::default())
        .await?;
    wait_on_fail(&client, "job", failing_run.id(), "completed").await;

    assert_eq!(failed_ids.snapshot(), [failing_run.id()]);
    for handle in [&running, &queued] {
        let run = handle.get().await?;
        assert_eq!(run.status, RunStatus::Canceled);
        assert_eq!(run.on_fail_status, None, "run {}", run.id);
        assert_eq!(run.on_fail_attempts, 0, "run {}", run.id);
    }
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_panic_is_a_failed_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let attempts = Log::new();
    let handler = {
        let attempts = attempts.clone();
        failing("fragile", 0).on_fail(
            move |_: Value, failure: TaskFailure| {
                let attempts = attempts.clone();
                async move {
                    attempts.push(failure.on_fail_attempts);
                    if failure.on_fail_attempts <= 2 {
                        panic!("on-fail exploded");
                    }
                    Ok::<_, anyhow::Error>(())
                }
            },
            on_fail_opts(1),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let handle = client
        .run_task("fragile", &1, RunTaskOpts::default())
        .await?;
    let run = wait_run(
        &client,
        "fragile",
        handle.id(),
        "the second on-fail attempt to fail",
        |run| run.on_fail_attempts == 2 && run.on_fail_status.as_deref() == Some("failed"),
    )
    .await;

    assert_eq!(attempts.snapshot(), [1, 2]);
    assert_eq!(run.on_fail_attempts, 2);
    let error = run.on_fail_error.unwrap_or_default();
    assert!(error.contains("panic"), "{error}");
    assert!(error.contains("on-fail exploded"), "{error}");
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_survives_recreated_definition() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let failed_ids = Log::new();
    let handler = {
        let failed_ids = failed_ids.clone();
        failing("charge", 0).on_fail(
            move |_: Value, failure: TaskFailure| {
                let failed_ids = failed_ids.clone();
                async move {
                    failed_ids.push(failure.task_run_id);
                    Ok::<_, anyhow::Error>(())
                }
            },
            on_fail_opts(0),
        )
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    // A process that only enqueues registers the definition without any
    // on-fail handler.
    client
        .create_task(&Task::define("charge").description("charges a card"))
        .await?;
    let handle = client
        .run_task("charge", &1, RunTaskOpts::default())
        .await?;
    wait_status(&client, "charge", handle.id(), RunStatus::Failed).await;
    let run = wait_on_fail(&client, "charge", handle.id(), "completed").await;

    assert_eq!(run.on_fail_attempts, 1);
    assert_eq!(failed_ids.snapshot(), [handle.id()]);
    worker.stop().await;
    Ok(())
}
