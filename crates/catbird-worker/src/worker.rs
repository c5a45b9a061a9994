//! [`Worker`]: the process that claims and executes runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::task::{Task, create_task};
use catbird_core::{Error, Executor, sql};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::{BackoffStrategy, FullJitter};
use crate::flow::Flow;
use crate::retry::with_retries;
use crate::task::{IntoTaskHandler, TaskHandler, definition_problem};
use crate::vacuum::Vacuums;
use crate::wake::{self, Registry};
use crate::{flow_loop, task_loop};

/// How long in-flight handlers may finish after shutdown when no timeout is
/// set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a claimed run stays hidden from other workers. The worker extends
/// the lease of every run it holds well before it ends.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);

/// How often a worker records its heartbeat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How often a worker's heartbeat runs garbage collection at most. Every
/// worker collects, so with several workers passes come more often.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// Errors that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A handler or definition is misconfigured; nothing was started.
    #[error("catbird: {0}")]
    InvalidConfiguration(String),
    /// The database could not be reached or rejected a definition.
    #[error(transparent)]
    Database(#[from] Error),
}

/// Settings shared by every loop of one worker.
pub(crate) struct Shared {
    pub(crate) id: Uuid,
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) registry: Arc<Registry>,
    /// Fires when the worker stops claiming new work.
    pub(crate) shutdown: CancellationToken,
    /// Fires when in-flight handlers must stop: after the grace period.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) lease: Duration,
    /// Claimed runs per task, for lease renewal.
    pub(crate) in_flight: Mutex<HashMap<String, HashSet<i64>>>,
    /// Claimed step runs per flow, for lease renewal.
    pub(crate) steps_in_flight: Mutex<HashMap<String, HashSet<i64>>>,
    /// Map items held, per flow.
    pub(crate) items_in_flight: Mutex<HashMap<String, HashSet<i64>>>,
    /// Vacuums of the tables this worker churns.
    pub(crate) vacuums: Vacuums,
}

impl Shared {
    pub(crate) fn hold_many(&self, task: &str, ids: impl IntoIterator<Item = i64>) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match in_flight.get_mut(task) {
            Some(held) => held.extend(ids),
            None => {
                in_flight.insert(task.to_owned(), ids.into_iter().collect());
            }
        }
    }

    pub(crate) fn forget_many(&self, task: &str, ids: &[i64]) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = in_flight.get_mut(task) {
            for id in ids {
                held.remove(id);
            }
        }
    }

    pub(crate) fn forget(&self, task: &str, id: i64) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ids) = in_flight.get_mut(task) {
            ids.remove(&id);
        }
    }

    pub(crate) fn hold_step(&self, flow: &str, id: i64) {
        let mut in_flight = self
            .steps_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.entry(flow.to_owned()).or_default().insert(id);
    }

    pub(crate) fn forget_step(&self, flow: &str, id: i64) {
        let mut in_flight = self
            .steps_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ids) = in_flight.get_mut(flow) {
            ids.remove(&id);
        }
    }

    pub(crate) fn hold_item(&self, flow: &str, id: i64) {
        let mut in_flight = self
            .items_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.entry(flow.to_owned()).or_default().insert(id);
    }

    pub(crate) fn forget_item(&self, flow: &str, id: i64) {
        let mut in_flight = self
            .items_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ids) = in_flight.get_mut(flow) {
            ids.remove(&id);
        }
    }

    pub(crate) fn lease_ms(&self) -> i32 {
        i32::try_from(self.lease.as_millis()).unwrap_or(i32::MAX)
    }
}

/// A worker: registers its tasks, claims their runs and executes them.
///
/// ```no_run
/// use catbird_worker::{TaskContext, TaskHandler, Worker};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(pool: deadpool_postgres::Pool) -> Result<(), catbird_worker::WorkerError> {
/// let double = TaskHandler::new("double", |n: i64, _ctx: TaskContext| async move { Ok::<_, anyhow::Error>(n * 2) });
///
/// let shutdown = CancellationToken::new();
/// Worker::new(pool)
///     .listen_url("postgres://postgres@127.0.0.1:5432/app")
///     .task(double)
///     .start(shutdown)
///     .await
/// # }
/// ```
pub struct Worker {
    id: Uuid,
    pool: deadpool_postgres::Pool,
    listen_config: Option<Result<tokio_postgres::Config, String>>,
    tasks: Vec<TaskHandler>,
    definitions: Vec<Task>,
    flows: Vec<Flow>,
    shutdown_timeout: Option<Duration>,
    lease: Duration,
    heartbeat_interval: Duration,
    vacuum: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field(
                "tasks",
                &self.tasks.iter().map(TaskHandler::name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker using `pool` for its database calls. Give it a connection
    /// string with [`Worker::listen_url`] (or a config with
    /// [`Worker::listen_config`]) so it can hold a `LISTEN` connection and
    /// start runs as soon as they are created; without one it finds new work
    /// by polling every 2 s.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Worker {
            id: Uuid::new_v4(),
            pool,
            listen_config: None,
            tasks: Vec::new(),
            definitions: Vec::new(),
            flows: Vec::new(),
            shutdown_timeout: None,
            lease: DEFAULT_LEASE,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            vacuum: true,
        }
    }

    /// The worker's id, a random UUID.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Sets the connection the worker listens for wake-ups on.
    pub fn listen_config(mut self, config: tokio_postgres::Config) -> Self {
        self.listen_config = Some(Ok(config));
        self
    }

    /// Sets the connection string the worker listens for wake-ups on. An
    /// invalid string is reported by [`Worker::start`].
    pub fn listen_url(mut self, url: &str) -> Self {
        self.listen_config = Some(
            url.parse()
                .map_err(|error| format!("invalid listen connection string: {error}")),
        );
        self
    }

    /// Adds a task handler. The worker creates or updates the task's
    /// definition when it starts.
    pub fn task(mut self, handler: impl IntoTaskHandler) -> Self {
        self.tasks.push(handler.into_task_handler());
        self
    }

    /// Adds a flow. The worker creates its definition when it starts and
    /// executes the steps that have handlers.
    pub fn flow(mut self, flow: Flow) -> Self {
        self.flows.push(flow);
        self
    }

    /// Adds a task definition without a handler: it is created at start,
    /// and nothing is claimed for it.
    pub fn define_task(mut self, task: Task) -> Self {
        self.definitions.push(task);
        self
    }

    /// Sets how long in-flight handlers may finish after shutdown before their
    /// cancellation token fires (default 5 s). Zero gives no grace period.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// Sets the lease of claimed runs (default 10 minutes). The worker renews
    /// leases every third of the lease, at most every 30 s; a run held by a
    /// worker that died is claimed again once its lease has passed.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the heartbeat interval (default 10 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets whether the worker vacuums the tables it churns (default on).
    ///
    /// Each claim and completion leaves dead index entries where the next
    /// claim starts to scan, and autovacuum visits a database at most once
    /// per `autovacuum_naptime`. So a worker that has finished at least
    /// 5,000 runs, steps or map items in one table since its last vacuum
    /// of it runs `VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED)` on that table in
    /// the background: at most every 2 s, and no sooner than 20 times the
    /// previous vacuum's duration after it. A worker whose role may not
    /// vacuum a table (PostgreSQL requires its owner, the database owner
    /// or a superuser) leaves it to autovacuum. Turn this off when your own
    /// maintenance vacuums the tables.
    pub fn vacuum(mut self, enabled: bool) -> Self {
        self.vacuum = enabled;
        self
    }

    fn validate(&self) -> Result<(), WorkerError> {
        let mut names = HashSet::new();
        for handler in &self.tasks {
            handler
                .validate()
                .map_err(WorkerError::InvalidConfiguration)?;
            if !names.insert(handler.name().to_owned()) {
                return Err(WorkerError::InvalidConfiguration(format!(
                    "task \"{}\" has two handlers in one worker",
                    handler.name()
                )));
            }
        }
        for definition in &self.definitions {
            definition
                .validate()
                .map_err(|error| WorkerError::InvalidConfiguration(definition_problem(&error)))?;
        }
        let mut flow_names = HashSet::new();
        for flow in &self.flows {
            flow.validate().map_err(WorkerError::InvalidConfiguration)?;
            if !flow_names.insert(flow.name().to_owned()) {
                return Err(WorkerError::InvalidConfiguration(format!(
                    "flow \"{}\" is added twice to one worker",
                    flow.name()
                )));
            }
        }
        if self.lease < Duration::from_millis(10) {
            return Err(WorkerError::InvalidConfiguration(format!(
                "lease must be at least 10 ms, got {:?}",
                self.lease
            )));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(WorkerError::InvalidConfiguration(
                "heartbeat interval must be greater than zero".to_owned(),
            ));
        }
        if let Some(Err(message)) = &self.listen_config {
            return Err(WorkerError::InvalidConfiguration(message.clone()));
        }
        Ok(())
    }

    /// Runs the worker until `shutdown` is cancelled, then stops.
    ///
    /// Start-up validates every handler (no database work happens when one
    /// is invalid), creates or updates the task definitions, starts the
    /// wake-up listener, the claim loops, lease renewal and heartbeats, and
    /// registers the worker. On shutdown the worker stops claiming at once,
    /// gives claimed runs it has not started back, lets running handlers
    /// finish within the shutdown timeout, then fires their cancellation
    /// tokens; runs they leave unfinished become claimable by other workers
    /// at once. Returns when everything has stopped.
    ///
    /// # Errors
    ///
    /// [`WorkerError::InvalidConfiguration`] for a misconfigured handler, and
    /// [`WorkerError::Database`] when definitions cannot be created.
    pub async fn start(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.validate()?;
        check_schema(&self.pool).await?;

        for definition in &self.definitions {
            create_task(&self.pool, definition).await?;
        }
        for handler in &self.tasks {
            create_task(&self.pool, &handler.definition).await?;
        }
        for flow in &self.flows {
            catbird_core::flow::create_flow(&self.pool, flow.definition()).await?;
        }
        let channel: String = self
            .pool
            .query_opt_row(sql::WAKE_CHANNEL, &[])
            .await?
            .map(|row| row.get(0))
            .unwrap_or_default();

        let shared = Arc::new(Shared {
            id: self.id,
            pool: self.pool.clone(),
            registry: Arc::new(Registry::default()),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            lease: self.lease,
            in_flight: Mutex::new(HashMap::new()),
            steps_in_flight: Mutex::new(HashMap::new()),
            items_in_flight: Mutex::new(HashMap::new()),
            vacuums: Vacuums::new(self.vacuum),
        });
        let task_names: Vec<String> = self
            .tasks
            .iter()
            .map(|handler| handler.name().to_owned())
            .collect();

        // Loops register their wakers before the listener connects, so the
        // listener's first wake-all reaches them.
        let mut loops = JoinSet::new();
        let mut background = JoinSet::new();
        let mut step_names: Vec<(String, String)> = self
            .flows
            .iter()
            .flat_map(|flow| {
                flow.steps
                    .iter()
                    .filter(|step| step.call.is_some())
                    .map(|step| (flow.name().to_owned(), step.name().to_owned()))
            })
            .collect();
        step_names.sort();
        let step_handlers = serde_json::Value::Array(
            step_names
                .iter()
                .map(|(flow, step)| serde_json::json!({ "flow": flow, "step": step }))
                .collect(),
        );
        for handler in self.tasks {
            task_loop::spawn(&shared, handler, &mut loops);
        }
        for flow in self.flows {
            flow_loop::spawn(&shared, flow, &mut loops);
        }

        let listener_stop = CancellationToken::new();
        if let Some(Ok(config)) = self.listen_config {
            let (connected, wait_connected) = tokio::sync::oneshot::channel();
            background.spawn(wake::listen(
                config,
                channel,
                shared.registry.clone(),
                listener_stop.clone(),
                connected,
            ));
            let _ = wait_connected.await;
        } else {
            tracing::info!(worker.id = %self.id, "no listen connection configured; the worker polls for new runs");
        }

        register(&shared, &task_names, &step_handlers).await;
        background.spawn(heartbeat(
            shared.clone(),
            task_names.clone(),
            step_handlers,
            self.heartbeat_interval,
        ));
        background.spawn(renew_leases(shared.clone()));
        tracing::info!(worker.id = %self.id, tasks = ?task_names, "worker started");

        shutdown.cancelled().await;
        tracing::info!(worker.id = %self.id, "worker stopping");
        shared.shutdown.cancel();

        let grace = self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let drained =
            tokio::time::timeout(grace, async { while loops.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(worker.id = %self.id, grace = ?grace,
                "handlers still running after the shutdown timeout; cancelling them");
            shared.hard_stop.cancel();
            while loops.join_next().await.is_some() {}
        }
        shared.hard_stop.cancel();

        listener_stop.cancel();
        background.abort_all();
        while background.join_next().await.is_some() {}
        shared.vacuums.finish().await;
        if let Err(error) = shared
            .pool
            .query_rows(sql::WORKER_STOPPED, &[&shared.id])
            .await
        {
            tracing::warn!(worker.id = %self.id, %error, "could not remove the worker's registration");
        }
        tracing::info!(worker.id = %self.id, "worker stopped");
        Ok(())
    }
}

/// Fails when the database schema is older than this build needs, so a
/// missing migration is reported once at start instead of as failing calls.
async fn check_schema(pool: &deadpool_postgres::Pool) -> Result<(), WorkerError> {
    let applied: i32 = match pool.query_opt_row(sql::APPLIED_SCHEMA_VERSION, &[]).await {
        Ok(row) => row.map_or(0, |row| row.get(0)),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
        Err(error) => return Err(error.into()),
    };
    let needed = catbird_core::schema::SCHEMA_VERSION;
    if applied < needed {
        return Err(WorkerError::InvalidConfiguration(format!(
            "the database schema is at version {applied}, but this build needs version {needed}; \
             apply it with `cb migrate up` or catbird::schema::migrate_up"
        )));
    }
    Ok(())
}

async fn register(shared: &Shared, task_names: &[String], steps: &serde_json::Value) {
    let mut sorted = task_names.to_vec();
    sorted.sort();
    let result = with_retries("register the worker", &shared.shutdown, || async {
        shared
            .pool
            .query_rows(sql::WORKER_STARTED, &[&shared.id, &sorted, steps])
            .await
    })
    .await;
    if let Err(error) = result {
        tracing::warn!(worker.id = %shared.id, %error, "could not register the worker; the next heartbeat retries");
    }
}

/// Records a heartbeat every `interval`, registering again when the row is
/// gone.
async fn heartbeat(
    shared: Arc<Shared>,
    task_names: Vec<String>,
    step_handlers: serde_json::Value,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // The first heartbeat collects garbage; later ones at most once a minute.
    let now = tokio::time::Instant::now();
    let mut last_gc = now.checked_sub(GC_INTERVAL).unwrap_or(now);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        match shared
            .pool
            .query_opt_row(sql::WORKER_HEARTBEAT, &[&shared.id])
            .await
        {
            Ok(Some(row)) if row.get::<_, bool>(0) => {
                if last_gc.elapsed() >= GC_INTERVAL {
                    last_gc = tokio::time::Instant::now();
                    match catbird_core::gc::gc(&shared.pool).await {
                        Ok(report) if report != catbird_core::GcReport::default() => {
                            tracing::info!(worker.id = %shared.id, ?report, "garbage collection")
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(worker.id = %shared.id, %error, "garbage collection failed")
                        }
                    }
                }
            }
            Ok(_) => {
                tracing::info!(worker.id = %shared.id, "worker registration was removed; registering again");
                register(&shared, &task_names, &step_handlers).await;
            }
            Err(error) => tracing::warn!(worker.id = %shared.id, %error, "heartbeat failed"),
        }
    }
}

/// The ids held per flow, for lease renewal.
fn held_ids(held: &Mutex<HashMap<String, HashSet<i64>>>) -> Vec<(String, Vec<i64>)> {
    let in_flight = held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    in_flight
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(flow, ids)| (flow.clone(), ids.iter().copied().collect()))
        .collect()
}

/// Extends the lease of every run the worker holds, until the worker aborts
/// it once every loop has ended. It goes on past the hard stop, because
/// results that handlers returned may still wait for their write then.
async fn renew_leases(shared: Arc<Shared>) {
    let period = (shared.lease / 3)
        .min(Duration::from_secs(30))
        .max(Duration::from_millis(5));
    let backoff = FullJitter::new(Duration::from_millis(100), period);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let held: Vec<(String, Vec<i64>)> = {
            let in_flight = shared
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            in_flight
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(task, ids)| (task.clone(), ids.iter().copied().collect()))
                .collect()
        };
        let held_steps = held_ids(&shared.steps_in_flight);
        let held_items = held_ids(&shared.items_in_flight);
        let renewals = held
            .into_iter()
            .map(|(name, ids)| (sql::HIDE_TASKS, name, ids))
            .chain(
                held_steps
                    .into_iter()
                    .map(|(name, ids)| (sql::HIDE_STEPS, name, ids)),
            )
            .chain(
                held_items
                    .into_iter()
                    .map(|(name, ids)| (sql::HIDE_MAP_TASKS, name, ids)),
            );
        for (statement, name, ids) in renewals {
            let lease_ms = shared.lease_ms();
            match shared
                .pool
                .query_rows(statement, &[&name, &ids, &lease_ms])
                .await
            {
                Ok(rows) if statement == sql::HIDE_TASKS => {
                    // A run whose lease could not be extended is no longer
                    // started: it was canceled or expired. This reaches the
                    // handler even when the stop notification did not.
                    let extended: HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
                    for id in ids.iter().filter(|id| !extended.contains(id)) {
                        shared.registry.cancel_running(&format!("t|{name}"), *id);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(worker.id = %shared.id, name, count = ids.len(), %error,
                        "could not extend leases; retrying soon");
                    tokio::time::sleep(backoff.delay(0)).await;
                }
            }
        }
    }
}
