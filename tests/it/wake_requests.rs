//! Wake-up requests: work sent by a transaction that commits late still
//! reaches an idle worker, and requests never make a send fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use catbird_core::Client;
use catbird_core::task::{RunStatus, RunTasksOpts};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::task_support::{DEADLINE, start, wait_for_request, wait_status};

/// A handler for task `name` that waits until `gate` has permits, then
/// returns its input.
fn gated(name: &str, gate: Arc<Semaphore>) -> TaskHandler {
    TaskHandler::new(name, move |input: Value, _ctx: TaskContext| {
        let gate = gate.clone();
        async move {
            drop(gate.acquire().await?);
            Ok::<_, anyhow::Error>(input)
        }
    })
}

/// Counts the wake-up requests for task `name` visible to `session`.
async fn requests(session: &impl tokio_postgres::GenericClient, name: &str) -> i64 {
    session
        .query_one(
            "SELECT count(*) FROM cb_wake_requests WHERE kind = 't' AND name = $1",
            &[&name],
        )
        .await
        .expect("count the requests")
        .get(0)
}

/// Creates a run in a transaction while the worker is busy and commits it
/// after the worker went idle and stored a request: the worker, informed of
/// the open sender, polls and starts the run long before its fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_wakes_idle_worker() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // A short lease keeps the fallback poll short, so the test ends.
    let lease = Duration::from_secs(8);
    let gate = Arc::new(Semaphore::new(0));
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .lease(lease)
            .task(gated("gated", gate.clone()).concurrency(1).batch_size(1)),
    )
    .await;
    wait_for_request(&db.pool, "gated", Duration::from_millis(200)).await;

    // Four runs in one statement consume the request. The worker claims three
    // of them one at a time, every claim is full, so it stores no request.
    let busy = client
        .run_tasks("gated", &[1, 2, 3, 4], RunTasksOpts::default())
        .await?;
    wait_status(&client, "gated", busy[0].id(), RunStatus::Started).await;

    // Meanwhile an application creates a run in its own transaction.
    let mut sender = db.connect().await;
    let transaction = sender.transaction().await?;
    assert_eq!(
        requests(&transaction, "gated").await,
        0,
        "no request exists"
    );
    let late: i64 = transaction
        .query_one(
            "SELECT cb_run_task(name => 'gated', input => '5'::jsonb)",
            &[],
        )
        .await?
        .get(0);

    // The worker finishes its runs, stores a request and claims twice more.
    // Then the application commits.
    gate.add_permits(1_000);
    for run in &busy {
        wait_status(&client, "gated", run.id(), RunStatus::Completed).await;
    }
    wait_for_request(&db.pool, "gated", Duration::from_millis(300)).await;
    transaction.commit().await?;
    let committed = Instant::now();

    let waited = wait_for("the late run to complete", DEADLINE, || async {
        let run = client.get_task_run("gated", late).await.ok()?;
        (run.status == RunStatus::Completed).then(|| committed.elapsed())
    })
    .await;
    worker.stop().await;
    assert!(
        waited < Duration::from_millis(1500),
        "a run committed while the worker was idle and listening waited {waited:?} \
         (lease {lease:?})"
    );
    Ok(())
}

/// Sends a run of task `echo` in a REPEATABLE READ transaction after another
/// session sent one, and returns the SQLSTATE and message of the error.
async fn repeatable_read_send(
    db: &TestDb,
    request: bool,
) -> anyhow::Result<Option<(String, String)>> {
    let admin = db.connect().await;
    admin
        .batch_execute("SELECT cb_create_task(name => 'echo')")
        .await?;
    if request {
        admin
            .batch_execute("SELECT cb_request_wake(kind => 't', name => 'echo')")
            .await?;
    }

    let mut application = db.connect().await;
    let transaction = application
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    // The first read of the application takes the snapshot.
    transaction.query_one("SELECT 1", &[]).await?;

    // Another sender creates a run meanwhile (consuming the request).
    admin
        .batch_execute("SELECT cb_run_task(name => 'echo', input => '1'::jsonb)")
        .await?;

    let sent = transaction
        .query_one(
            "SELECT cb_run_task(name => 'echo', input => '2'::jsonb)",
            &[],
        )
        .await;
    Ok(match sent {
        Ok(_) => {
            transaction.commit().await?;
            None
        }
        Err(error) => {
            let db_error = error.as_db_error().expect("a database error");
            Some((
                db_error.code().code().to_owned(),
                db_error.message().to_owned(),
            ))
        }
    })
}

/// Sends in REPEATABLE READ after another send consumed the request: the
/// request table stays out of the way of such a transaction, so it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeatable_read_send_succeeds() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let failure = repeatable_read_send(&db, true).await?;
    assert_eq!(failure, None, "the send failed");
    Ok(())
}
