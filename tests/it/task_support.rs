//! Helpers shared by the task and worker tests: starting and stopping
//! workers, waiting on runs, and recording what handlers saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::task::{RunStatus, TaskRunInfo};
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{TaskContext, TaskHandler, Worker, WorkerError};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a run or a worker before it gives up. Far above
/// what any check needs on an idle machine, so a slow machine does not fail
/// the suite.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// A worker running in a background task of the test.
pub(crate) struct Running {
    pub(crate) id: uuid::Uuid,
    pub(crate) shutdown: CancellationToken,
    pub(crate) handle: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// Fires the shutdown signal and waits for `start` to return.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("the worker stops within the deadline")
            .expect("the worker task does not panic")
            .expect("the worker stops cleanly");
    }
}

/// Starts `worker` with a `LISTEN` connection to the test database and waits
/// until it has registered, which it does after creating its task
/// definitions and connecting its listener.
pub(crate) async fn start(db: &TestDb, worker: Worker) -> Running {
    let id = worker.id();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.listen_url(&db.url()).start(shutdown.clone()));
    let client = Client::new(db.pool.clone());
    wait_for("the worker to register", DEADLINE, || async {
        assert!(
            !handle.is_finished(),
            "the worker stopped before it registered"
        );
        let workers = client.list_workers().await.ok()?;
        workers.iter().any(|worker| worker.id == id).then_some(())
    })
    .await;
    Running {
        id,
        shutdown,
        handle,
    }
}

/// Waits until `check` returns true for run `id` of `task`, and returns the
/// run.
pub(crate) async fn wait_run(
    client: &Client,
    task: &str,
    id: i64,
    what: &str,
    check: impl Fn(&TaskRunInfo) -> bool,
) -> TaskRunInfo {
    wait_for(what, DEADLINE, || async {
        let run = client.get_task_run(task, id).await.ok()?;
        check(&run).then_some(run)
    })
    .await
}

/// Waits until run `id` of `task` has `status`, and returns the run.
pub(crate) async fn wait_status(
    client: &Client,
    task: &str,
    id: i64,
    status: RunStatus,
) -> TaskRunInfo {
    let what = format!("run {id} of task {task} to become {status}");
    wait_run(client, task, id, &what, |run| run.status == status).await
}

/// Waits for the output of a run, bounded by [`DEADLINE`].
pub(crate) async fn output_of(
    client: &Client,
    task: &str,
    id: i64,
) -> Result<serde_json::Value, Error> {
    tokio::time::timeout(DEADLINE, client.task_handle(task, id).wait_for_output())
        .await
        .expect("the run finishes within the deadline")
}

/// A list of events that handlers push to and tests read, shared across
/// threads.
pub(crate) struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Log(self.0.clone())
    }
}

impl<T: Clone> Log<T> {
    pub(crate) fn new() -> Self {
        Log(Arc::new(Mutex::new(Vec::new())))
    }

    pub(crate) fn push(&self, event: T) {
        self.0.lock().expect("the log lock").push(event);
    }

    pub(crate) fn snapshot(&self) -> Vec<T> {
        self.0.lock().expect("the log lock").clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().expect("the log lock").len()
    }
}

/// A handler for task `name` that returns its input.
pub(crate) fn echo(name: &str) -> TaskHandler {
    TaskHandler::new(name, |input: Value, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(input)
    })
}

/// Waits until `log` contains at least `count` events.
pub(crate) async fn wait_for_len<T: Clone>(log: &Log<T>, count: usize) {
    let what = format!("{count} logged events");
    wait_for(&what, DEADLINE, || async {
        (log.len() >= count).then_some(())
    })
    .await;
}

/// Waits until the database contains a wake-up request for task `name` that is
/// at least `age` old, so the claims a worker makes after storing it are over.
pub(crate) async fn wait_for_request(pool: &deadpool_postgres::Pool, name: &str, age: Duration) {
    let age = age.as_secs_f64();
    wait_for("the worker's wake-up request", DEADLINE, || async {
        let rows = pool
            .get()
            .await
            .ok()?
            .query(
                "SELECT 1 FROM cb_wake_requests WHERE kind = 't' AND name = $1 \
                 AND requested_at <= now() - make_interval(secs => $2)",
                &[&name, &age],
            )
            .await
            .ok()?;
        (!rows.is_empty()).then_some(())
    })
    .await;
}
