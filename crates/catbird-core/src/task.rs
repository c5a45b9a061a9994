//! Tasks: named units of work, and their runs.
//!
//! A task definition ([`Task`]) is a name with an optional description,
//! condition and retention period. It needs no handler code: a web process
//! can create a task and run it while workers elsewhere implement it. Each
//! [`run_task`] creates a run, which a worker claims, executes and completes
//! or fails; [`TaskHandle::wait_for_output`] waits for the result.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::client::Client;
use crate::error::Error;
use crate::executor::Executor;
use crate::names::validate_name;
use crate::payload::{JsonText, check_batch_lengths, check_text};
use crate::poll::PollOpts;
use crate::query::Query;
use crate::sql;

/// A task definition: what [`create_task`] stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    /// The task's name: 1 to 58 characters of `a-z`, `0-9` and `_`, not
    /// `input`.
    pub name: String,
    /// A description shown by the dashboard and [`get_task`].
    pub description: Option<String>,
    /// A condition over the run input (`input.priority gte 5`); a run whose
    /// condition is false is created skipped and never runs.
    pub condition: Option<String>,
    /// How long finished runs are kept before garbage collection deletes
    /// them; `None` keeps them forever.
    pub retention_period: Option<Duration>,
    /// Whether workers run an on-fail handler for this task. Workers set it
    /// when they register the task; only then do failed runs queue on-fail
    /// work. `false` leaves the stored flag as it is, so a process that only
    /// enqueues never turns off a worker's on-fail handling.
    pub has_on_fail: bool,
}

impl Task {
    /// A definition named `name`.
    pub fn define(name: impl Into<String>) -> Self {
        Task {
            name: name.into(),
            ..Task::default()
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the condition.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    /// Sets the retention period of finished runs.
    pub fn retention_period(mut self, retention: Duration) -> Self {
        self.retention_period = Some(retention);
        self
    }

    /// Checks the name and condition without touching the database.
    pub fn validate(&self) -> Result<(), Error> {
        validate_task_name(&self.name)?;
        check_text("description", self.description.as_deref())?;
        check_text("condition", self.condition.as_deref())?;
        if let Some(condition) = self.condition.as_deref().filter(|c| !c.trim().is_empty()) {
            let parsed = crate::condition::Condition::parse(condition)?;
            if parsed.root() != "input" {
                return Err(Error::InvalidArgument(format!(
                    "invalid condition \"{condition}\" of task \"{}\": a task condition can only read input.*",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Checks a task name: the naming rule, and `input` is reserved.
pub fn validate_task_name(name: &str) -> Result<(), Error> {
    validate_name("task", name)?;
    if name == "input" {
        return Err(Error::InvalidName {
            kind: "task",
            name: name.to_owned(),
            rule: crate::NameRule::Reserved,
        });
    }
    Ok(())
}

/// A stored task definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// The task's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its condition, as written.
    pub condition: Option<String>,
    /// How long finished runs are kept; zero keeps them forever.
    pub retention_period: Duration,
    /// When the task was first created.
    pub created_at: DateTime<Utc>,
}

impl TaskInfo {
    fn from_row(row: &Row) -> Self {
        let retention_ms: i64 = row.get("retention_period");
        TaskInfo {
            name: row.get("name"),
            description: row.get("description"),
            condition: row.get("condition"),
            retention_period: Duration::from_millis(u64::try_from(retention_ms).unwrap_or(0)),
            created_at: row.get("created_at"),
        }
    }
}

/// The status of a task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, never claimed.
    Queued,
    /// Claimed at least once; also while it waits for a retry.
    Started,
    /// Finished with an output.
    Completed,
    /// Failed for good: its last attempt failed and no retry is left.
    Failed,
    /// Never ran: the task's condition was false for its input.
    Skipped,
    /// Flow runs only: cancellation requested, in-flight work draining.
    Canceling,
    /// Canceled before it finished.
    Canceled,
    /// Its expiry passed before it finished.
    Expired,
}

impl RunStatus {
    /// The status as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Started => "started",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::Canceling => "canceling",
            RunStatus::Canceled => "canceled",
            RunStatus::Expired => "expired",
        }
    }

    /// Whether the run has finished: completed, failed, skipped, canceled or
    /// expired.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Failed
                | RunStatus::Skipped
                | RunStatus::Canceled
                | RunStatus::Expired
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "queued" => RunStatus::Queued,
            "started" => RunStatus::Started,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "skipped" => RunStatus::Skipped,
            "canceling" => RunStatus::Canceling,
            "canceled" => RunStatus::Canceled,
            "expired" => RunStatus::Expired,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown run status \"{other}\""
                )));
            }
        })
    }
}

/// One task run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRunInfo {
    /// The run id.
    pub id: i64,
    /// The deduplication key it was created with.
    pub concurrency_key: Option<String>,
    /// The run input.
    pub input: Value,
    /// The headers it was created with.
    pub headers: Option<Map<String, Value>>,
    /// Higher priorities are claimed first.
    pub priority: i32,
    /// The status.
    pub status: RunStatus,
    /// How many times the run was claimed.
    pub attempts: i32,
    /// The output of a completed run (JSON null is an output).
    pub output: Option<Value>,
    /// The error of the last failed attempt.
    pub error_message: Option<String>,
    /// The reason given when the run was canceled.
    pub cancel_reason: Option<String>,
    /// When the run becomes claimable (for a started run: its lease end).
    pub visible_at: DateTime<Utc>,
    /// When the run expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// The creation time, then the start of the latest attempt.
    pub started_at: DateTime<Utc>,
    /// When the run completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the run failed for good.
    pub failed_at: Option<DateTime<Utc>>,
    /// When the run was skipped.
    pub skipped_at: Option<DateTime<Utc>>,
    /// When the run was canceled.
    pub canceled_at: Option<DateTime<Utc>>,
    /// When cancellation was requested.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When the run expired.
    pub expired_at: Option<DateTime<Utc>>,
    /// On-fail processing of a failed run: queued, started, completed or
    /// failed.
    pub on_fail_status: Option<String>,
    /// How many on-fail attempts were made.
    pub on_fail_attempts: i32,
    /// The error of the last failed on-fail attempt.
    pub on_fail_error: Option<String>,
}

impl TaskRunInfo {
    pub(crate) fn from_row(row: &Row) -> Result<Self, Error> {
        let headers: Option<Value> = row.get("headers");
        let status: String = row.get("status");
        Ok(TaskRunInfo {
            id: row.get("id"),
            concurrency_key: row.get("concurrency_key"),
            input: row.get("input"),
            headers: match headers {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            },
            priority: row.get("priority"),
            status: status.parse()?,
            attempts: row.get("attempts"),
            output: row.get("output"),
            error_message: row.get("error_message"),
            cancel_reason: row.get("cancel_reason"),
            visible_at: row.get("visible_at"),
            expires_at: row.get("expires_at"),
            created_at: row.get("created_at"),
            started_at: row.get("started_at"),
            completed_at: row.get("completed_at"),
            failed_at: row.get("failed_at"),
            skipped_at: row.get("skipped_at"),
            canceled_at: row.get("canceled_at"),
            cancel_requested_at: row.get("cancel_requested_at"),
            expired_at: row.get("expired_at"),
            on_fail_status: row.get("on_fail_status"),
            on_fail_attempts: row.get("on_fail_attempts"),
            on_fail_error: row.get("on_fail_error"),
        })
    }

    /// Whether the run has finished (see [`RunStatus::is_done`]).
    pub fn is_done(&self) -> bool {
        self.status.is_done()
    }

    /// Whether the run completed.
    pub fn is_completed(&self) -> bool {
        self.status == RunStatus::Completed
    }

    /// Decodes the output of a completed run. Other statuses give the error
    /// [`TaskHandle::wait_for_output`] would give, and [`Error::RunNotCompleted`]
    /// for a run that has not finished.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self.status {
            RunStatus::Completed => {
                let output = self.output.clone().unwrap_or(Value::Null);
                T::deserialize(output).map_err(|source| Error::json_decode("task output", source))
            }
            RunStatus::Failed => Err(Error::RunFailed(
                self.error_message.clone().unwrap_or_default(),
            )),
            RunStatus::Canceled => Err(Error::RunCanceled(self.cancel_reason.clone())),
            RunStatus::Skipped => Err(Error::RunSkipped),
            RunStatus::Expired => Err(Error::RunExpired),
            status => Err(Error::RunNotCompleted(status)),
        }
    }
}

/// Options of [`run_task`].
///
/// `visible_at` and `expires_at` are absolute times from the caller's clock;
/// every other time comparison uses the database clock.
#[derive(Debug, Clone, Default)]
pub struct RunTaskOpts {
    /// While a queued or started run of the task holds this key, running the
    /// task again with it creates nothing and returns that run. Finished runs
    /// free the key. An empty key means no key.
    pub concurrency_key: Option<String>,
    /// Headers stored with the run (not passed to the handler).
    pub headers: Option<Map<String, Value>>,
    /// The run is not claimed before this time (default: now).
    pub visible_at: Option<DateTime<Utc>>,
    /// The run is never claimed at or after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Higher priorities are claimed first (default 0).
    pub priority: Option<i32>,
}

impl RunTaskOpts {
    /// Sets the deduplication key.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: Map<String, Value>) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Delays the run until `visible_at`.
    pub fn visible_at(mut self, visible_at: DateTime<Utc>) -> Self {
        self.visible_at = Some(visible_at);
        self
    }

    /// Sets the run's expiry.
    pub fn expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// How often a wait re-reads its run while the client's listen connection
/// is up, unless its poll interval is longer.
const LISTENING_RECHECK: Duration = Duration::from_secs(1);

/// A reference to one task run, typed by the task's output.
///
/// Handles returned by [`Client`] methods carry the client, so
/// [`TaskHandle::wait_for_output`] needs no argument. Handles returned by the
/// free functions (which may run on a transaction) carry none: wait with
/// [`TaskHandle::wait_for_output_on`] once the transaction has committed.
pub struct TaskHandle<O = Value> {
    task: String,
    id: i64,
    client: Option<Client>,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.task)
            .field("id", &self.id)
            .finish()
    }
}

impl<O> Clone for TaskHandle<O> {
    fn clone(&self) -> Self {
        TaskHandle {
            task: self.task.clone(),
            id: self.id,
            client: self.client.clone(),
            output: PhantomData,
        }
    }
}

impl<O: DeserializeOwned> TaskHandle<O> {
    /// A handle to run `id` of `task`.
    pub fn new(task: impl Into<String>, id: i64) -> Self {
        TaskHandle {
            task: task.into(),
            id,
            client: None,
            output: PhantomData,
        }
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The run id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Attaches a client, used by the methods without an executor argument.
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The same run, with its output decoded as `T`.
    pub fn typed<T: DeserializeOwned>(self) -> TaskHandle<T> {
        TaskHandle {
            task: self.task,
            id: self.id,
            client: self.client,
            output: PhantomData,
        }
    }

    fn client(&self) -> Result<&Client, Error> {
        self.client.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the handle of task run {} has no client; call wait_for_output_on with an executor",
                self.id
            ))
        })
    }

    /// Waits until the run finishes and decodes its output. A failed,
    /// canceled, skipped or expired run gives [`Error::RunFailed`],
    /// [`Error::RunCanceled`], [`Error::RunSkipped`] or [`Error::RunExpired`].
    /// Waits without limit: wrap it in `tokio::time::timeout` to bound it.
    ///
    /// With a client that listens ([`Client::listen_config`]) the wait ends
    /// when the result's notification arrives, and re-reads the run every
    /// second in case a notification was missed; without one it re-reads
    /// the run every 200 ms.
    pub async fn wait_for_output(&self) -> Result<O, Error> {
        self.wait_for_output_with(PollOpts::default()).await
    }

    /// [`TaskHandle::wait_for_output`], re-reading the run every
    /// `poll.poll_interval` (at least every second while the client's listen
    /// connection is up, when the interval is shorter).
    pub async fn wait_for_output_with(&self, poll: PollOpts) -> Result<O, Error> {
        let client = self.client()?;
        let Some(listener) = client.listener() else {
            return self.wait_for_output_on(client, poll).await;
        };
        let poll = poll.normalized();
        // Register locally before the database registration and the first
        // read, so a notification sent after either reaches this wait.
        let registration = listener.register(&self.task, self.id);
        if let Err(error) = client
            .query_rows(sql::WAIT_TASK_RUN, &[&self.task, &self.id])
            .await
        {
            tracing::debug!(task = %self.task, task.run_id = self.id, %error,
                "could not register for the run's completion notification; polling");
        }
        loop {
            if let Some(output) = self.check_finished(client).await? {
                return output;
            }
            let interval = if listener.is_connected() {
                poll.poll_interval.max(LISTENING_RECHECK)
            } else {
                poll.poll_interval
            };
            tokio::select! {
                () = registration.notify.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// [`TaskHandle::wait_for_output`] on an executor, checking every
    /// `poll.poll_interval`.
    pub async fn wait_for_output_on(
        &self,
        executor: &impl Executor,
        poll: PollOpts,
    ) -> Result<O, Error> {
        let poll = poll.normalized();
        loop {
            if let Some(output) = self.check_finished(executor).await? {
                return output;
            }
            tokio::time::sleep(poll.poll_interval).await;
        }
    }

    /// Reads the run: `Some` with its result when it finished, `None` while
    /// it has not, or after a transient error (a dropped connection or an
    /// exhausted pool does not end a wait, the run goes on without it).
    async fn check_finished(
        &self,
        executor: &impl Executor,
    ) -> Result<Option<Result<O, Error>>, Error> {
        match get_task_run(executor, &self.task, self.id).await {
            Ok(run) if run.is_done() => Ok(Some(run.output_as())),
            Ok(_) => Ok(None),
            Err(error) if error.is_transient() => {
                tracing::debug!(task = %self.task, task.run_id = self.id, %error, "retrying a failed wait");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Reads the run.
    pub async fn get(&self) -> Result<TaskRunInfo, Error> {
        get_task_run(self.client()?, &self.task, self.id).await
    }

    /// Cancels the run (see [`cancel_task_run`]).
    pub async fn cancel(&self, reason: Option<&str>) -> Result<bool, Error> {
        cancel_task_run(self.client()?, &self.task, self.id, reason).await
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|value| !value.is_empty()).cloned()
}

/// Creates a task definition, or replaces the description, condition and
/// retention period of an existing one. Its runs are kept, and so is its
/// on-fail flag unless `task.has_on_fail` sets it.
pub async fn create_task(executor: &impl Executor, task: &Task) -> Result<(), Error> {
    task.validate()?;
    let retention = task.retention_period.map(crate::gc::millis_at_least_one);
    // NULL keeps the stored flag (see `cb_create_task`).
    let has_on_fail = task.has_on_fail.then_some(true);
    executor
        .query_rows(
            sql::CREATE_TASK,
            &[
                &task.name,
                &task.description,
                &task.condition,
                &retention,
                &has_on_fail,
            ],
        )
        .await?;
    Ok(())
}

/// Deletes a task definition with all its runs. Returns whether it existed.
pub async fn delete_task(executor: &impl Executor, name: &str) -> Result<bool, Error> {
    validate_name("task", name)?;
    let row = executor.query_opt_row(sql::DELETE_TASK, &[&name]).await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// Returns one task definition, or [`Error::NotFound`].
pub async fn get_task(executor: &impl Executor, name: &str) -> Result<TaskInfo, Error> {
    validate_name("task", name)?;
    match executor.query_opt_row(sql::GET_TASK, &[&name]).await? {
        Some(row) => Ok(TaskInfo::from_row(&row)),
        None => Err(Error::NotFound {
            kind: "task",
            name: name.to_owned(),
        }),
    }
}

/// Returns every task definition, ordered by name.
pub async fn list_tasks(executor: &impl Executor) -> Result<Vec<TaskInfo>, Error> {
    let rows = executor.query_rows(sql::LIST_TASKS, &[]).await?;
    Ok(rows.iter().map(TaskInfo::from_row).collect())
}

/// Builds the statement [`run_task`] runs, without running it. Its one row
/// holds the run id in column 0.
pub fn run_task_query<I: Serialize + ?Sized>(
    name: &str,
    input: &I,
    opts: RunTaskOpts,
) -> Result<Query, Error> {
    validate_name("task", name)?;
    check_text("concurrency key", opts.concurrency_key.as_deref())?;
    let input = JsonText::encode("task input", input)?;
    let headers = opts
        .headers
        .as_ref()
        .map(|headers| JsonText::encode("headers", headers))
        .transpose()?;
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(name.to_owned()),
        Box::new(input),
        Box::new(non_empty(&opts.concurrency_key)),
        Box::new(headers),
        Box::new(opts.visible_at),
        Box::new(opts.expires_at),
        Box::new(opts.priority),
    ];
    Ok(Query::new(sql::RUN_TASK, params))
}

/// Creates a run of task `name` and returns its handle. When the task's
/// condition is false for `input` the run is created skipped. When a queued
/// or started run holds the concurrency key, nothing is created and the
/// handle points at that run.
pub async fn run_task<I: Serialize + ?Sized>(
    executor: &impl Executor,
    name: &str,
    input: &I,
    opts: RunTaskOpts,
) -> Result<TaskHandle, Error> {
    let query = run_task_query(name, input, opts)?;
    let rows = query.fetch_all(executor).await?;
    Ok(TaskHandle::new(name, rows[0].get(0)))
}

/// Options of [`run_tasks`]: keys and headers have one entry per input; the
/// rest apply to every run.
#[derive(Debug, Clone, Default)]
pub struct RunTasksOpts {
    /// One deduplication key per input; `None` or empty is no key.
    pub concurrency_keys: Option<Vec<Option<String>>>,
    /// One set of headers per input.
    pub headers: Option<Vec<Option<Map<String, Value>>>>,
    /// The runs are not claimed before this time.
    pub visible_at: Option<DateTime<Utc>>,
    /// The runs are never claimed at or after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Higher priorities are claimed first (default 0).
    pub priority: Option<i32>,
}

/// Builds the statement [`run_tasks`] runs, without running it. Its rows hold
/// one run id per input, in input order.
pub fn run_tasks_query<I: Serialize>(
    name: &str,
    inputs: &[I],
    opts: RunTasksOpts,
) -> Result<Query, Error> {
    validate_name("task", name)?;
    check_batch_lengths(
        "inputs",
        inputs.len(),
        opts.concurrency_keys.as_ref().map(Vec::len),
        opts.headers.as_ref().map(Vec::len),
    )?;
    let inputs = inputs
        .iter()
        .map(|input| JsonText::encode("task input", input))
        .collect::<Result<Vec<_>, _>>()?;
    let headers: Option<Vec<Option<JsonText>>> = opts
        .headers
        .map(|headers| {
            headers
                .iter()
                .map(|headers| {
                    headers
                        .as_ref()
                        .map(|h| JsonText::encode("headers", h))
                        .transpose()
                })
                .collect::<Result<_, _>>()
        })
        .transpose()?;
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(name.to_owned()),
        Box::new(inputs),
        Box::new(opts.concurrency_keys),
        Box::new(headers),
        Box::new(opts.visible_at),
        Box::new(opts.expires_at),
        Box::new(opts.priority),
    ];
    Ok(Query::new(sql::RUN_TASKS, params))
}

/// Creates one run per input in one statement and returns one handle per
/// input, in input order. A duplicate concurrency key points at the run that
/// holds it.
pub async fn run_tasks<I: Serialize>(
    executor: &impl Executor,
    name: &str,
    inputs: &[I],
    opts: RunTasksOpts,
) -> Result<Vec<TaskHandle>, Error> {
    let query = run_tasks_query(name, inputs, opts)?;
    let rows = query.fetch_all(executor).await?;
    Ok(rows
        .iter()
        .map(|row| TaskHandle::new(name, row.get(0)))
        .collect())
}

/// Returns one run. An unknown task gives [`Error::NotDefined`], an unknown
/// id [`Error::NotFound`].
pub async fn get_task_run(
    executor: &impl Executor,
    name: &str,
    id: i64,
) -> Result<TaskRunInfo, Error> {
    validate_name("task", name)?;
    match executor
        .query_opt_row(sql::GET_TASK_RUN, &[&name, &id])
        .await?
    {
        Some(row) => TaskRunInfo::from_row(&row),
        None => Err(Error::NotFound {
            kind: "task run",
            name: format!("{name}/{id}"),
        }),
    }
}

/// Returns the 20 most recently created runs of a task, newest first.
pub async fn list_task_runs(
    executor: &impl Executor,
    name: &str,
) -> Result<Vec<TaskRunInfo>, Error> {
    validate_name("task", name)?;
    let rows = executor
        .query_rows(sql::LIST_TASK_RUNS, &[&name, &20i32])
        .await?;
    rows.iter().map(TaskRunInfo::from_row).collect()
}

/// Cancels a queued or started run: it becomes canceled at once and a worker
/// running it is told to stop; its eventual result is discarded. A finished
/// run is left as it is. Returns whether the run exists. Repeating the call
/// is harmless.
pub async fn cancel_task_run(
    executor: &impl Executor,
    name: &str,
    id: i64,
    reason: Option<&str>,
) -> Result<bool, Error> {
    validate_name("task", name)?;
    check_text("cancel reason", reason)?;
    let row = executor
        .query_opt_row(sql::CANCEL_TASK, &[&name, &id, &reason])
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_a_reserved_task_name() {
        let error = validate_task_name("input").unwrap_err();
        assert_eq!(
            error.to_string(),
            "catbird: invalid task name \"input\": is reserved"
        );
    }

    #[test]
    fn status_round_trips_through_text() {
        for status in [
            RunStatus::Queued,
            RunStatus::Started,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Skipped,
            RunStatus::Canceling,
            RunStatus::Canceled,
            RunStatus::Expired,
        ] {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
    }

    #[test]
    fn done_statuses() {
        assert!(!RunStatus::Queued.is_done());
        assert!(!RunStatus::Started.is_done());
        assert!(!RunStatus::Canceling.is_done());
        assert!(RunStatus::Expired.is_done());
        assert!(RunStatus::Skipped.is_done());
    }

    #[test]
    fn run_task_query_without_options_binds_nulls() {
        let query = run_task_query("echo", &1, RunTaskOpts::default()).unwrap();
        let debug = format!("{query:?}");
        assert_eq!(debug.matches("None").count(), 5, "{debug}");
    }
}
