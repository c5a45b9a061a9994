//! Tasks defined with `#[catbird::task]`: a worker executes them, and the
//! generated `run` helpers return handles typed by the task's output.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use catbird::worker::{TaskContext, TaskFailure, Worker};
use catbird::{CancellationToken, Client, RunTaskOpts};
use catbird_tests::TestDb;
use serde::{Deserialize, Serialize};

/// How long a test waits for a run before it gives up: far above what a run
/// needs on an idle machine, so a slow machine does not fail the suite.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize)]
struct Order {
    items: Vec<u32>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Total {
    sum: u32,
    count: usize,
}

/// Adds up an order.
///
/// The second paragraph is not part of the description.
#[catbird::task(name = "sum_order", concurrency = 2, max_retries = 0, timeout = "10s")]
async fn sum_order(order: Order) -> anyhow::Result<Total> {
    Ok(Total {
        sum: order.items.iter().sum(),
        count: order.items.len(),
    })
}

/// Fails its first attempt, then returns the task name and attempt number
/// from its context.
#[catbird::task(max_retries = 2, backoff(min = "10ms", max = "50ms"))]
async fn describe_run(label: String, ctx: &TaskContext) -> anyhow::Result<String> {
    if ctx.attempt() == 1 {
        anyhow::bail!("the first attempt fails");
    }
    Ok(format!(
        "{label}: task {} attempt {}",
        ctx.task(),
        ctx.attempt()
    ))
}

/// The labels and errors `record_failure` saw.
static FAILURES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

async fn record_failure(label: String, failure: TaskFailure) -> anyhow::Result<()> {
    FAILURES
        .lock()
        .unwrap()
        .push((label, failure.error_message));
    Ok(())
}

#[catbird::task(
    max_retries = 0,
    on_fail(handler = record_failure, max_retries = 1, backoff(min = "10ms", max = "50ms"))
)]
async fn always_fails(label: String) -> anyhow::Result<()> {
    anyhow::bail!("no luck for {label}")
}

/// Waits for `future`, failing the test after [`DEADLINE`].
async fn within<T>(event: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("expected {event} within {DEADLINE:?}"))
}

/// Starts a worker with `worker`'s tasks and returns its shutdown token and
/// join handle.
fn start(
    db: &TestDb,
    worker: Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), catbird::worker::WorkerError>>,
) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.listen_url(&db.url()).start(shutdown.clone()));
    (shutdown, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_helpers_return_typed_outputs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // Created up front, so runs can be created before the worker is up.
    client.create_task(&sum_order::definition()).await?;
    client.create_task(&describe_run::definition()).await?;

    let worker = Worker::new(db.pool.clone())
        .task(sum_order)
        .task(describe_run);
    let (shutdown, worker) = start(&db, worker);

    let order = Order {
        items: vec![1, 2, 3],
    };
    let handle = sum_order::run(&client, &order).await?;
    let total: Total = within("the order is summed", handle.wait_for_output()).await?;
    assert_eq!(total, Total { sum: 6, count: 3 });

    let opts = RunTaskOpts::default().priority(5);
    let handle = describe_run::run_with(&client, &"report".to_owned(), opts).await?;
    let text = within("the run is described", handle.wait_for_output()).await?;
    assert_eq!(text, "report: task describe_run attempt 2");

    let stored = client.get_task(sum_order::NAME).await?;
    assert_eq!(stored.description.as_deref(), Some("Adds up an order."));

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_handler_gets_the_failed_input() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&always_fails::definition()).await?;
    let (shutdown, worker) = start(&db, Worker::new(db.pool.clone()).task(always_fails));

    let handle = always_fails::run(&client, &"ada".to_owned()).await?;
    let error = within("the run fails", handle.wait_for_output())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no luck for ada"), "{error}");

    within("the on-fail handler completes", async {
        loop {
            let run = handle.get().await?;
            if run.on_fail_status.as_deref() == Some("completed") {
                return Ok::<_, catbird::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let failures = FAILURES.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "ada");
    assert!(failures[0].1.contains("no luck for ada"), "{failures:?}");

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}
