//! Helpers shared by the flow tests: starting workers, waiting for run and
//! step states, and recording what handlers saw.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catbird_core::flow::{FlowHandle, FlowRunInfo, StepDef, StepRunInfo, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error, PollOpts};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{StepArgs, StepContext, StepHandler, Worker, WorkerError};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a state it expects before it fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// A worker running in the test's runtime.
pub(crate) struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// Stops the worker and checks that it stopped without an error.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("the worker task panicked")
            .expect("the worker stops cleanly");
    }
}

/// Starts `worker` listening on the test database, with a short shutdown
/// grace period so that handlers a test leaves running do not slow it down.
/// Returns once the worker has registered, which it does after its
/// listener connected: from then on no stop notification is missed.
pub(crate) async fn start(db: &TestDb, worker: Worker) -> Running {
    let id = worker.id();
    let shutdown = CancellationToken::new();
    let worker = worker
        .listen_url(&db.url())
        .shutdown_timeout(Duration::from_millis(200));
    let handle = tokio::spawn(worker.start(shutdown.clone()));

    let client = Client::new(db.pool.clone());
    wait_for("the worker to register", DEADLINE, || async {
        assert!(!handle.is_finished(), "the worker stopped while starting");
        let workers = client.list_workers().await.ok()?;
        workers.iter().any(|info| info.id == id).then_some(())
    })
    .await;
    Running { shutdown, handle }
}

/// A step handler whose function returns `anyhow::Result`, with fast retries
/// so that tests which configure retries do not wait long.
pub(crate) fn step<O, F, Fut>(definition: StepDef, function: F) -> StepHandler
where
    O: Serialize + Send + 'static,
    F: Fn(StepArgs, StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<O>> + Send + 'static,
{
    StepHandler::new(definition, function)
        .max_retries(0)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
}

/// Waits for the run behind `handle` to finish and returns its output, or the
/// error `wait_for_output` gives. Panics after [`DEADLINE`].
pub(crate) async fn output_of(client: &Client, handle: &FlowHandle) -> Result<Value, Error> {
    let poll = PollOpts::default().poll_interval(Duration::from_millis(20));
    tokio::time::timeout(DEADLINE, handle.wait_for_output_on(client, poll))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "flow run {} of \"{}\" did not finish within {DEADLINE:?}",
                handle.id(),
                handle.flow()
            )
        })
}

/// Waits until run `id` of `flow` has `status` and returns it.
pub(crate) async fn wait_run_status(
    client: &Client,
    flow: &str,
    id: i64,
    status: RunStatus,
) -> FlowRunInfo {
    wait_for(
        &format!("run {id} of \"{flow}\" to become {status}"),
        DEADLINE,
        || async {
            client
                .get_flow_run(flow, id)
                .await
                .ok()
                .filter(|run| run.status == status)
        },
    )
    .await
}

/// Returns one step run of a flow run.
pub(crate) async fn step_run(client: &Client, flow: &str, id: i64, step: &str) -> StepRunInfo {
    client
        .get_flow_run_steps(flow, id)
        .await
        .expect("read the steps of the run")
        .into_iter()
        .find(|run| run.step_name == step)
        .unwrap_or_else(|| panic!("run {id} of \"{flow}\" has no step \"{step}\""))
}

/// Waits until `step` of run `id` has `status` and returns it.
pub(crate) async fn wait_step_status(
    client: &Client,
    flow: &str,
    id: i64,
    step: &str,
    status: StepStatus,
) -> StepRunInfo {
    wait_for(
        &format!("step \"{step}\" of run {id} to become {status}"),
        DEADLINE,
        || async {
            let run = step_run(client, flow, id, step).await;
            (run.status == status).then_some(run)
        },
    )
    .await
}

/// Returns the names of the steps of a run that are not finished.
pub(crate) async fn unfinished_steps(client: &Client, flow: &str, id: i64) -> Vec<String> {
    client
        .get_flow_run_steps(flow, id)
        .await
        .expect("read the steps of the run")
        .into_iter()
        .filter(|run| !run.is_done())
        .map(|run| format!("{} ({})", run.step_name, run.status))
        .collect()
}

/// Reads the on-fail columns of a run: status, attempts and last error.
pub(crate) async fn on_fail_state(
    db: &TestDb,
    flow: &str,
    id: i64,
) -> (Option<String>, i32, Option<String>) {
    let client = db.pool.get().await.expect("take a pooled connection");
    let row = client
        .query_one(
            "SELECT on_fail_status, on_fail_attempts, on_fail_error FROM cb_get_flow_run($1, $2)",
            &[&flow, &id],
        )
        .await
        .expect("read the on-fail state");
    (row.get(0), row.get(1), row.get(2))
}

/// Waits until the on-fail work of a run has `status` and returns the
/// on-fail columns.
pub(crate) async fn wait_on_fail_status(
    db: &TestDb,
    flow: &str,
    id: i64,
    status: &str,
) -> (Option<String>, i32, Option<String>) {
    wait_for(
        &format!("on-fail work of run {id} to become {status}"),
        DEADLINE,
        || async {
            let state = on_fail_state(db, flow, id).await;
            (state.0.as_deref() == Some(status)).then_some(state)
        },
    )
    .await
}

/// A log of handler events shared between handlers and the test.
#[derive(Clone, Default)]
pub(crate) struct Events {
    entries: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Events {
    /// Records `event` with the current time.
    pub(crate) fn record(&self, event: impl Into<String>) {
        self.entries
            .lock()
            .expect("event log")
            .push((event.into(), Instant::now()));
    }

    /// Returns the events recorded so far, in order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.entries
            .lock()
            .expect("event log")
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Returns how many times `event` was recorded.
    pub(crate) fn count(&self, event: &str) -> usize {
        self.entries
            .lock()
            .expect("event log")
            .iter()
            .filter(|(name, _)| name == event)
            .count()
    }

    /// Returns when `event` was first recorded.
    pub(crate) fn time_of(&self, event: &str) -> Option<Instant> {
        self.entries
            .lock()
            .expect("event log")
            .iter()
            .find(|(name, _)| name == event)
            .map(|(_, at)| *at)
    }

    /// Returns whether `event` was recorded.
    pub(crate) fn contains(&self, event: &str) -> bool {
        self.count(event) > 0
    }

    /// Waits until `event` has been recorded.
    pub(crate) async fn wait_for(&self, event: &str) {
        wait_for(&format!("the event \"{event}\""), DEADLINE, || async {
            self.contains(event).then_some(())
        })
        .await;
    }
}
