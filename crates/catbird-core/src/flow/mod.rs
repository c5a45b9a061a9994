//! Flows: DAG workflows of steps.
//!
//! A flow definition ([`FlowDef`]) is a set of named steps with dependencies,
//! optional conditions and signals. [`run_flow`] starts a run. A step runs
//! once all its dependencies are resolved (completed or skipped) and, when it
//! waits for a signal, once [`signal_flow`] has delivered its input. The run completes
//! with the output of the first completed step of its output priority.
//! Definitions need no handler code: a process can create, run and inspect
//! flows that workers elsewhere implement.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::client::Client;
use crate::error::Error;
use crate::executor::Executor;
use crate::names::validate_name;
use crate::payload::{JsonText, check_text};
use crate::poll::PollOpts;
use crate::query::Query;
use crate::sql;
use crate::task::RunStatus;

mod validate;

/// One dependency of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The step depended on.
    pub name: String,
    /// The step also runs when this dependency was skipped, and receives no
    /// output for it. Required when the dependency has a condition.
    #[serde(default)]
    pub optional: bool,
    /// The step waits for this dependency but never receives its output.
    #[serde(default)]
    pub ignore_output: bool,
}

impl Dependency {
    /// A required dependency whose output the step receives.
    pub fn on(name: impl Into<String>) -> Self {
        Dependency {
            name: name.into(),
            optional: false,
            ignore_output: false,
        }
    }
}

/// The definition of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepDef {
    /// The step's name: the naming rule, unique in the flow, not `input` or
    /// `signal`.
    pub name: String,
    /// A description shown by the dashboard.
    pub description: Option<String>,
    /// Its dependencies, in the order the handler receives their outputs.
    pub depends_on: Vec<Dependency>,
    /// A condition over `input.*`, `signal.*` and its dependencies'
    /// outputs; false (or a missing field) skips the step.
    pub condition: Option<String>,
    /// The step waits for a signal input delivered by [`signal_flow`].
    pub signal: bool,
    /// The step's kind: one handler call, one call per array element, a
    /// generator of items, or a fold over items.
    pub kind: StepKind,
}

/// The kind of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StepKind {
    /// One handler call per step run.
    #[default]
    Normal,
    /// One item per element of an array. The handler runs once per item, and
    /// the step's output is the array of item outputs in element order.
    Map(MapSource),
    /// A generator function yields items while an item handler processes
    /// them; the output is the array of item outputs in yield order.
    Generator,
    /// Folds the item outputs of the named mapper or generator step, in item
    /// order, into an accumulator: the step's output.
    Reduce(String),
}

impl StepKind {
    /// The kind as stored: normal, mapper, generator or reducer.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Normal => "normal",
            StepKind::Map(_) => "mapper",
            StepKind::Generator => "generator",
            StepKind::Reduce(_) => "reducer",
        }
    }

    /// Returns whether the step fans out into items (mapper or generator).
    pub fn is_fan_out(&self) -> bool {
        matches!(self, StepKind::Map(_) | StepKind::Generator)
    }
}

/// What a mapper step maps over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapSource {
    /// The flow input, which must be a JSON array; each item handler
    /// receives its element in place of the flow input.
    Input,
    /// The output of the named dependency, which must be a JSON array; each
    /// item handler receives its element in place of that output.
    Step(String),
}

impl StepDef {
    /// A step named `name` without dependencies.
    pub fn new(name: impl Into<String>) -> Self {
        StepDef {
            name: name.into(),
            ..StepDef::default()
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds a required dependency whose output the step receives.
    pub fn depends_on(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(Dependency::on(name));
        self
    }

    /// Adds an optional dependency: it may be skipped.
    pub fn depends_on_optional(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(Dependency {
            optional: true,
            ..Dependency::on(name)
        });
        self
    }

    /// Adds a dependency the step waits for without receiving its output.
    pub fn depends_on_ignoring_output(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(Dependency {
            ignore_output: true,
            ..Dependency::on(name)
        });
        self
    }

    /// Sets the condition.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    /// Makes the step wait for a signal.
    pub fn signal(mut self) -> Self {
        self.signal = true;
        self
    }

    /// Makes the step a mapper over the flow input: one item per element.
    pub fn map_input(mut self) -> Self {
        self.kind = StepKind::Map(MapSource::Input);
        self
    }

    /// Makes the step a mapper over the output of `source`, which becomes a
    /// dependency if it is not one yet.
    pub fn map_step_output(mut self, source: impl Into<String>) -> Self {
        let source = source.into();
        self.add_dependency(&source);
        self.kind = StepKind::Map(MapSource::Step(source));
        self
    }

    /// Makes the step a generator: its generator function yields the items.
    pub fn generator(mut self) -> Self {
        self.kind = StepKind::Generator;
        self
    }

    /// Makes the step a reducer of the items of the mapper or generator
    /// `source`, which becomes a dependency if it is not one yet.
    pub fn reduce(mut self, source: impl Into<String>) -> Self {
        let source = source.into();
        self.add_dependency(&source);
        self.kind = StepKind::Reduce(source);
        self
    }

    fn add_dependency(&mut self, name: &str) {
        if !self
            .depends_on
            .iter()
            .any(|dependency| dependency.name == name)
        {
            self.depends_on.push(Dependency::on(name));
        }
    }

    fn to_json(&self) -> Value {
        let mut step = json!({
            "name": self.name,
            "description": self.description,
            "depends_on": self.depends_on,
            "condition": self.condition,
            "signal": self.signal,
            "kind": self.kind.as_str(),
        });
        match &self.kind {
            StepKind::Map(MapSource::Input) => step["map_input"] = Value::Bool(true),
            StepKind::Map(MapSource::Step(source)) => step["map_source"] = json!(source),
            StepKind::Reduce(source) => step["reduce_source"] = json!(source),
            StepKind::Normal | StepKind::Generator => {}
        }
        step
    }
}

/// A flow definition: what [`create_flow`] stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowDef {
    /// The flow's name.
    pub name: String,
    /// A description shown by the dashboard.
    pub description: Option<String>,
    /// The steps, in definition order.
    pub steps: Vec<StepDef>,
    /// The steps whose output becomes the flow's output, first completed
    /// first. `None`: the steps no other step depends on, in definition
    /// order.
    pub output_priority: Option<Vec<String>>,
    /// How long finished runs are kept; `None` keeps them forever.
    pub retention_period: Option<Duration>,
    /// Whether workers run an on-fail handler for the flow.
    pub has_on_fail: bool,
}

impl FlowDef {
    /// A flow named `name` without steps.
    pub fn new(name: impl Into<String>) -> Self {
        FlowDef {
            name: name.into(),
            ..FlowDef::default()
        }
    }

    /// Adds a step.
    pub fn step(mut self, step: StepDef) -> Self {
        self.steps.push(step);
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the output priority.
    pub fn output_priority<S: Into<String>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.output_priority = Some(steps.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the retention period of finished runs.
    pub fn retention_period(mut self, retention: Duration) -> Self {
        self.retention_period = Some(retention);
        self
    }

    /// Checks the definition without touching the database: names, unknown,
    /// repeated and cyclic dependencies, conditions and what they read, and
    /// the output priority. The error names the flow and the step.
    pub fn validate(&self) -> Result<(), Error> {
        validate::validate(self)
    }

    /// The step list in the JSON shape `cb_create_flow` takes.
    pub fn steps_json(&self) -> Value {
        Value::Array(self.steps.iter().map(StepDef::to_json).collect())
    }
}

/// A stored flow definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowInfo {
    /// The flow's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its steps, in definition order.
    pub steps: Vec<StepInfo>,
    /// The effective output priority.
    pub output_priority: Vec<String>,
    /// How long finished runs are kept; zero keeps them forever.
    pub retention_period: Duration,
    /// When the flow was created.
    pub created_at: DateTime<Utc>,
}

/// One step of a stored flow definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepInfo {
    /// The step's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// normal, mapper, generator or reducer.
    pub kind: String,
    /// A mapper's source: `input` for the flow input, else a step name.
    pub map_source: Option<String>,
    /// A reducer's source step.
    pub reduce_source: Option<String>,
    /// Whether it waits for a signal.
    pub signal: bool,
    /// Its dependencies' names, in declaration order.
    pub depends_on: Vec<String>,
}

/// The status of a step run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// At least one dependency is unresolved.
    WaitingForDependencies,
    /// Dependencies are resolved; the signal has not arrived.
    WaitingForSignal,
    /// Ready, not yet claimed.
    Queued,
    /// Claimed at least once, also while it waits for a retry.
    Started,
    /// A fan-out step waiting for its items.
    WaitingForMapTasks,
    /// Finished with an output.
    Completed,
    /// Failed for good.
    Failed,
    /// Never ran: its condition was false.
    Skipped,
    /// Canceled before it finished.
    Canceled,
}

impl StepStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::WaitingForDependencies => "waiting_for_dependencies",
            StepStatus::WaitingForSignal => "waiting_for_signal",
            StepStatus::Queued => "queued",
            StepStatus::Started => "started",
            StepStatus::WaitingForMapTasks => "waiting_for_map_tasks",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Canceled => "canceled",
        }
    }

    /// Whether the step finished: completed, failed, skipped or canceled.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepStatus::Completed | StepStatus::Failed | StepStatus::Skipped | StepStatus::Canceled
        )
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StepStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "waiting_for_dependencies" => StepStatus::WaitingForDependencies,
            "waiting_for_signal" => StepStatus::WaitingForSignal,
            "queued" => StepStatus::Queued,
            "started" => StepStatus::Started,
            "waiting_for_map_tasks" => StepStatus::WaitingForMapTasks,
            "completed" => StepStatus::Completed,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "canceled" => StepStatus::Canceled,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown step status \"{other}\""
                )));
            }
        })
    }
}

/// One flow run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRunInfo {
    /// The run id.
    pub id: i64,
    /// The deduplication key it was created with.
    pub concurrency_key: Option<String>,
    /// The flow input.
    pub input: Value,
    /// The headers it was created with.
    pub headers: Option<Map<String, Value>>,
    /// Its priority, inherited by every step.
    pub priority: i32,
    /// started, canceling, completed, failed, canceled or expired.
    pub status: RunStatus,
    /// The output of a completed run.
    pub output: Option<Value>,
    /// The error that failed the run.
    pub error_message: Option<String>,
    /// The reason given when it was canceled (or completed early).
    pub cancel_reason: Option<String>,
    /// The step whose failure failed the run.
    pub failed_step_name: Option<String>,
    /// When the run was created.
    pub started_at: DateTime<Utc>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// When it was canceled.
    pub canceled_at: Option<DateTime<Utc>>,
    /// When cancellation was requested.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When it expired.
    pub expired_at: Option<DateTime<Utc>>,
    /// When it stops being claimable.
    pub expires_at: Option<DateTime<Utc>>,
}

impl FlowRunInfo {
    fn from_row(row: &Row) -> Result<Self, Error> {
        let headers: Option<Value> = row.get("headers");
        let status: String = row.get("status");
        Ok(FlowRunInfo {
            id: row.get("id"),
            concurrency_key: row.get("concurrency_key"),
            input: row.get("input"),
            headers: match headers {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            },
            priority: row.get("priority"),
            status: status.parse()?,
            output: row.get("output"),
            error_message: row.get("error_message"),
            cancel_reason: row.get("cancel_reason"),
            failed_step_name: row.get("failed_step_name"),
            started_at: row.get("started_at"),
            completed_at: row.get("completed_at"),
            failed_at: row.get("failed_at"),
            canceled_at: row.get("canceled_at"),
            cancel_requested_at: row.get("cancel_requested_at"),
            expired_at: row.get("expired_at"),
            expires_at: row.get("expires_at"),
        })
    }

    /// Whether the run has finished: completed, failed, canceled or expired.
    pub fn is_done(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled | RunStatus::Expired
        )
    }

    /// Whether the run completed.
    pub fn is_completed(&self) -> bool {
        self.status == RunStatus::Completed
    }

    /// Decodes the output of a completed run; other statuses give the error
    /// [`FlowHandle::wait_for_output`] would give.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self.status {
            RunStatus::Completed => {
                let output = self.output.clone().unwrap_or(Value::Null);
                T::deserialize(output).map_err(|source| Error::json_decode("flow output", source))
            }
            RunStatus::Failed => Err(Error::RunFailed(
                self.error_message.clone().unwrap_or_default(),
            )),
            RunStatus::Canceled => Err(Error::RunCanceled(self.cancel_reason.clone())),
            RunStatus::Expired => Err(Error::RunExpired),
            status => Err(Error::RunNotCompleted(status)),
        }
    }
}

/// One step of a flow run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRunInfo {
    /// The step run id.
    pub id: i64,
    /// The flow run it belongs to.
    pub flow_run_id: i64,
    /// The step's name.
    pub step_name: String,
    /// Its status.
    pub status: StepStatus,
    /// Its priority.
    pub priority: i32,
    /// How many times it was claimed.
    pub attempts: i32,
    /// The output of a completed step.
    pub output: Option<Value>,
    /// The error of its last failed attempt.
    pub error_message: Option<String>,
    /// The signal input, once delivered.
    pub signal_input: Option<Value>,
    /// When the step run was created (with its flow run).
    pub created_at: DateTime<Utc>,
    /// When it becomes claimable.
    pub visible_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// When it was skipped.
    pub skipped_at: Option<DateTime<Utc>>,
    /// When it was canceled.
    pub canceled_at: Option<DateTime<Utc>>,
}

impl StepRunInfo {
    pub(crate) fn from_row(row: &Row) -> Result<Self, Error> {
        let status: String = row.get("status");
        Ok(StepRunInfo {
            id: row.get("id"),
            flow_run_id: row.get("flow_run_id"),
            step_name: row.get("step_name"),
            status: status.parse()?,
            priority: row.get("priority"),
            attempts: row.get("attempts"),
            output: row.get("output"),
            error_message: row.get("error_message"),
            signal_input: row.get("signal_input"),
            created_at: row.get("created_at"),
            visible_at: row.get("visible_at"),
            started_at: row.get("started_at"),
            completed_at: row.get("completed_at"),
            failed_at: row.get("failed_at"),
            skipped_at: row.get("skipped_at"),
            canceled_at: row.get("canceled_at"),
        })
    }

    /// Whether the step finished.
    pub fn is_done(&self) -> bool {
        self.status.is_done()
    }

    /// Whether the step completed.
    pub fn is_completed(&self) -> bool {
        self.status == StepStatus::Completed
    }

    /// Decodes the output of a completed step.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self.status {
            StepStatus::Completed => T::deserialize(self.output.clone().unwrap_or(Value::Null))
                .map_err(|source| Error::json_decode("step output", source)),
            StepStatus::Failed => Err(Error::RunFailed(
                self.error_message.clone().unwrap_or_default(),
            )),
            StepStatus::Canceled => Err(Error::RunCanceled(None)),
            StepStatus::Skipped => Err(Error::RunSkipped),
            _ => Err(Error::InvalidArgument(format!(
                "step \"{}\" has not finished: current status is {}",
                self.step_name, self.status
            ))),
        }
    }
}

/// Options of [`run_flow`], as for tasks.
pub type RunFlowOpts = crate::task::RunTaskOpts;

/// A reference to one flow run, typed by the flow's output.
pub struct FlowHandle<O = Value> {
    flow: String,
    id: i64,
    client: Option<Client>,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for FlowHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowHandle")
            .field("flow", &self.flow)
            .field("id", &self.id)
            .finish()
    }
}

impl<O> Clone for FlowHandle<O> {
    fn clone(&self) -> Self {
        FlowHandle {
            flow: self.flow.clone(),
            id: self.id,
            client: self.client.clone(),
            output: PhantomData,
        }
    }
}

impl<O: DeserializeOwned> FlowHandle<O> {
    /// A handle to run `id` of `flow`.
    pub fn new(flow: impl Into<String>, id: i64) -> Self {
        FlowHandle {
            flow: flow.into(),
            id,
            client: None,
            output: PhantomData,
        }
    }

    /// The flow's name.
    pub fn flow(&self) -> &str {
        &self.flow
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
    pub fn typed<T: DeserializeOwned>(self) -> FlowHandle<T> {
        FlowHandle {
            flow: self.flow,
            id: self.id,
            client: self.client,
            output: PhantomData,
        }
    }

    fn client(&self) -> Result<&Client, Error> {
        self.client.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the handle of flow run {} has no client; call wait_for_output_on with an executor",
                self.id
            ))
        })
    }

    /// Waits until the run finishes, checking every 200 ms, and decodes its
    /// output. A failed, canceled or expired run gives [`Error::RunFailed`]
    /// (see [`Error::is_no_output_candidate`]), [`Error::RunCanceled`] or
    /// [`Error::RunExpired`].
    pub async fn wait_for_output(&self) -> Result<O, Error> {
        self.wait_for_output_on(self.client()?, PollOpts::default())
            .await
    }

    /// [`FlowHandle::wait_for_output`] on an executor.
    pub async fn wait_for_output_on(
        &self,
        executor: &impl Executor,
        poll: PollOpts,
    ) -> Result<O, Error> {
        let poll = poll.normalized();
        loop {
            match get_flow_run(executor, &self.flow, self.id).await {
                Ok(run) if run.is_done() => return run.output_as(),
                Ok(_) => {}
                // A dropped connection does not end the wait.
                Err(error) if error.is_transient() => {
                    tracing::debug!(flow = %self.flow, flow.run_id = self.id, %error, "retrying a failed wait");
                }
                Err(error) => return Err(error),
            }
            tokio::time::sleep(poll.poll_interval).await;
        }
    }

    /// Reads the run.
    pub async fn get(&self) -> Result<FlowRunInfo, Error> {
        get_flow_run(self.client()?, &self.flow, self.id).await
    }

    /// Reads the run's steps.
    pub async fn steps(&self) -> Result<Vec<StepRunInfo>, Error> {
        get_flow_run_steps(self.client()?, &self.flow, self.id).await
    }

    /// Delivers a signal (see [`signal_flow`]).
    pub async fn signal<S: Serialize + ?Sized>(&self, step: &str, input: &S) -> Result<(), Error> {
        signal_flow(self.client()?, &self.flow, self.id, step, input).await
    }

    /// Cancels the run (see [`cancel_flow_run`]).
    pub async fn cancel(&self, reason: Option<&str>) -> Result<bool, Error> {
        cancel_flow_run(self.client()?, &self.flow, self.id, reason).await
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|value| !value.is_empty()).cloned()
}

/// Creates a flow. Creating it again with the same definition is a no-op; a
/// different definition is an [`Error::InvalidArgument`] saying what differs.
pub async fn create_flow(executor: &impl Executor, flow: &FlowDef) -> Result<(), Error> {
    flow.validate()?;
    let steps = JsonText::encode("flow steps", &flow.steps_json())?;
    let retention = flow.retention_period.map(crate::gc::millis_at_least_one);
    // NULL keeps the stored flag: a process without the on-fail handler
    // must not switch off the one a worker registered.
    let has_on_fail = flow.has_on_fail.then_some(true);
    executor
        .query_rows(
            sql::CREATE_FLOW,
            &[
                &flow.name,
                &steps,
                &flow.description,
                &flow.output_priority,
                &retention,
                &has_on_fail,
            ],
        )
        .await?;
    Ok(())
}

/// Deletes a flow with all its runs. Returns whether it existed.
pub async fn delete_flow(executor: &impl Executor, name: &str) -> Result<bool, Error> {
    validate_name("flow", name)?;
    let row = executor.query_opt_row(sql::DELETE_FLOW, &[&name]).await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

fn flow_info(row: &Row, steps: Vec<StepInfo>) -> FlowInfo {
    let retention_ms: i64 = row.get("retention_period");
    FlowInfo {
        name: row.get("name"),
        description: row.get("description"),
        steps,
        output_priority: row.get("output_priority"),
        retention_period: Duration::from_millis(u64::try_from(retention_ms).unwrap_or(0)),
        created_at: row.get("created_at"),
    }
}

async fn flow_steps(executor: &impl Executor, name: &str) -> Result<Vec<StepInfo>, Error> {
    let rows = executor.query_rows(sql::GET_FLOW_STEPS, &[&name]).await?;
    Ok(rows
        .iter()
        .map(|row| StepInfo {
            name: row.get("step_name"),
            description: row.get("description"),
            kind: row.get("kind"),
            map_source: row.get("map_source"),
            reduce_source: row.get("reduce_source"),
            signal: row.get("signal"),
            depends_on: row.get("depends_on"),
        })
        .collect())
}

/// Returns one flow definition, or [`Error::NotFound`].
pub async fn get_flow(executor: &impl Executor, name: &str) -> Result<FlowInfo, Error> {
    validate_name("flow", name)?;
    let Some(row) = executor.query_opt_row(sql::GET_FLOW, &[&name]).await? else {
        return Err(Error::NotFound {
            kind: "flow",
            name: name.to_owned(),
        });
    };
    let steps = flow_steps(executor, name).await?;
    Ok(flow_info(&row, steps))
}

/// Returns every flow definition, ordered by name.
pub async fn list_flows(executor: &impl Executor) -> Result<Vec<FlowInfo>, Error> {
    let rows = executor.query_rows(sql::LIST_FLOWS, &[]).await?;
    let mut flows = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get("name");
        let steps = flow_steps(executor, &name).await?;
        flows.push(flow_info(row, steps));
    }
    Ok(flows)
}

/// Builds the statement [`run_flow`] runs, without running it. Its one row
/// holds the run id in column 0.
pub fn run_flow_query<I: Serialize + ?Sized>(
    name: &str,
    input: &I,
    opts: RunFlowOpts,
) -> Result<Query, Error> {
    validate_name("flow", name)?;
    check_text("concurrency key", opts.concurrency_key.as_deref())?;
    let input = JsonText::encode("flow input", input)?;
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
    Ok(Query::new(sql::RUN_FLOW, params))
}

/// Starts a run of flow `name` and returns its handle. While a started run
/// holds the concurrency key, nothing is created and the handle points at
/// that run.
pub async fn run_flow<I: Serialize + ?Sized>(
    executor: &impl Executor,
    name: &str,
    input: &I,
    opts: RunFlowOpts,
) -> Result<FlowHandle, Error> {
    let query = run_flow_query(name, input, opts)?;
    let rows = query.fetch_all(executor).await?;
    Ok(FlowHandle::new(name, rows[0].get(0)))
}

/// Delivers `input` to `step` of a run that waits for it. Fails with
/// [`Error::SignalNotDelivered`], changing nothing, when the run is not
/// started, the step does not exist or wait for a signal, already has one,
/// or has already started.
pub async fn signal_flow<S: Serialize + ?Sized>(
    executor: &impl Executor,
    flow: &str,
    run_id: i64,
    step: &str,
    input: &S,
) -> Result<(), Error> {
    validate_name("flow", flow)?;
    let input = JsonText::encode("signal input", input)?;
    let row = executor
        .query_opt_row(sql::SIGNAL_FLOW, &[&flow, &run_id, &step, &input])
        .await?;
    if row.is_some_and(|row| row.get::<_, bool>(0)) {
        Ok(())
    } else {
        Err(Error::SignalNotDelivered {
            flow: flow.to_owned(),
            run_id,
            step: step.to_owned(),
        })
    }
}

/// Cancels a started run: steps not running are canceled at once, running
/// steps are told to stop, and the run becomes canceled when they have. A
/// canceling or finished run is left as it is. Returns whether the run
/// exists.
pub async fn cancel_flow_run(
    executor: &impl Executor,
    flow: &str,
    id: i64,
    reason: Option<&str>,
) -> Result<bool, Error> {
    validate_name("flow", flow)?;
    check_text("cancel reason", reason)?;
    let row = executor
        .query_opt_row(sql::CANCEL_FLOW, &[&flow, &id, &reason])
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// Returns one flow run. Unknown flow: [`Error::NotDefined`]; unknown id:
/// [`Error::NotFound`].
pub async fn get_flow_run(
    executor: &impl Executor,
    flow: &str,
    id: i64,
) -> Result<FlowRunInfo, Error> {
    validate_name("flow", flow)?;
    match executor
        .query_opt_row(sql::GET_FLOW_RUN, &[&flow, &id])
        .await?
    {
        Some(row) => FlowRunInfo::from_row(&row),
        None => Err(Error::NotFound {
            kind: "flow run",
            name: format!("{flow}/{id}"),
        }),
    }
}

/// Returns the 20 most recent runs of a flow, newest first.
pub async fn list_flow_runs(
    executor: &impl Executor,
    flow: &str,
) -> Result<Vec<FlowRunInfo>, Error> {
    validate_name("flow", flow)?;
    let rows = executor
        .query_rows(sql::LIST_FLOW_RUNS, &[&flow, &20i32])
        .await?;
    rows.iter().map(FlowRunInfo::from_row).collect()
}

/// Returns every step of a flow run, in definition order.
pub async fn get_flow_run_steps(
    executor: &impl Executor,
    flow: &str,
    id: i64,
) -> Result<Vec<StepRunInfo>, Error> {
    validate_name("flow", flow)?;
    let rows = executor
        .query_rows(sql::GET_FLOW_RUN_STEPS, &[&flow, &id])
        .await?;
    rows.iter().map(StepRunInfo::from_row).collect()
}

/// Returns one step of a flow run.
pub async fn get_flow_step(
    executor: &impl Executor,
    flow: &str,
    run_id: i64,
    step: &str,
) -> Result<StepRunInfo, Error> {
    validate_name("flow", flow)?;
    match executor
        .query_opt_row(sql::GET_FLOW_STEP, &[&flow, &run_id, &step])
        .await?
    {
        Some(row) => StepRunInfo::from_row(&row),
        None => Err(Error::NotFound {
            kind: "step run",
            name: format!("{flow}/{run_id}/{step}"),
        }),
    }
}
