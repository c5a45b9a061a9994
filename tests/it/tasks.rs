//! Task runs executed by a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catbird_core::task::{RunStatus, RunTaskOpts};
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{TaskContext, TaskHandler, Worker};
use tokio_util::sync::CancellationToken;

struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), catbird_worker::WorkerError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("worker task")
            .expect("worker stops cleanly");
    }
}

fn start(db: &TestDb, worker: Worker) -> Running {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.listen_url(&db.url()).start(shutdown.clone()));
    Running { shutdown, handle }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_completes_a_run_with_typed_output() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let double = TaskHandler::new("double", |n: i64, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(n * 2)
    });
    let worker = start(&db, Worker::new(db.pool.clone()).task(double));

    let handle = wait_for("the task definition", Duration::from_secs(10), || async {
        client
            .run_task("double", &21, RunTaskOpts::default())
            .await
            .ok()
    })
    .await;
    let output: i64 =
        tokio::time::timeout(Duration::from_secs(10), handle.typed().wait_for_output()).await??;
    assert_eq!(output, 42);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_retries_then_fails_with_last_error() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flaky = TaskHandler::new("flaky", move |_: serde_json::Value, ctx: TaskContext| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(anyhow::anyhow!("attempt {} failed", ctx.attempt()))
        }
    })
    .max_retries(2)
    .backoff(Duration::from_millis(1), Duration::from_millis(20));
    let worker = start(&db, Worker::new(db.pool.clone()).task(flaky));

    let handle = wait_for("the task definition", Duration::from_secs(10), || async {
        client
            .run_task("flaky", &serde_json::json!({}), RunTaskOpts::default())
            .await
            .ok()
    })
    .await;
    let error = tokio::time::timeout(Duration::from_secs(10), handle.wait_for_output())
        .await?
        .unwrap_err();
    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "attempt 3 failed"),
        "{error}"
    );
    let run = handle.get().await?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    worker.stop().await;
    Ok(())
}
