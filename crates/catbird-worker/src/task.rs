//! Task handlers: typed functions that execute task runs.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use catbird_core::task::Task;
use catbird_core::{Error, JsonText};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::options::HandlerOpts;

/// The context of a running task handler: its run, a database pool for its
/// own transactions, and its cancellation token.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) task: Arc<str>,
    pub(crate) run_id: i64,
    pub(crate) attempt: i32,
    pub(crate) headers: Option<Map<String, Value>>,
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) cancel: CancellationToken,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.task)
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The id of the run being executed.
    pub fn task_run_id(&self) -> i64 {
        self.run_id
    }

    /// The attempt number, 1 for the first execution.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// The headers the run was created with (read-only).
    pub fn headers(&self) -> Option<&Map<String, Value>> {
        self.headers.as_ref()
    }

    /// The worker's pool. Take a connection and open a transaction to make
    /// your writes and catbird calls (sends, new runs) commit together.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// A token that fires when the handler should stop: at the timeout, when
    /// the run is canceled, and when the worker shuts down after its grace
    /// period.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Completes when the handler should stop (see
    /// [`TaskContext::cancellation_token`]).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the handler should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels the current run and fires this handler's cancellation token.
    /// Whatever the handler returns afterwards is discarded, and waiters get
    /// [`Error::RunCanceled`] with `reason`.
    pub async fn cancel(&self, reason: Option<&str>) -> Result<(), Error> {
        catbird_core::task::cancel_task_run(&self.pool, &self.task, self.run_id, reason).await?;
        self.cancel.cancel();
        Ok(())
    }
}

/// Cancels the run of the handler holding `ctx` (see [`TaskContext::cancel`]).
pub async fn cancel(ctx: &TaskContext, reason: &str) -> Result<(), Error> {
    ctx.cancel(Some(reason)).await
}

/// What an on-fail handler learns about the run that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskFailure {
    /// The task's name.
    pub task_name: String,
    /// The failed run's id.
    pub task_run_id: i64,
    /// The error of the run's last attempt.
    pub error_message: String,
    /// How many attempts the run had.
    pub attempts: i32,
    /// The number of this on-fail attempt, 1 for the first.
    pub on_fail_attempts: i32,
    /// When the run's last attempt started.
    pub started_at: DateTime<Utc>,
    /// When the run failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// The run's concurrency key.
    pub concurrency_key: Option<String>,
}

pub(crate) type HandlerResult = Result<JsonText, anyhow::Error>;
pub(crate) type CallFn =
    Arc<dyn Fn(Value, TaskContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;
pub(crate) type OnFailFn =
    Arc<dyn Fn(Value, TaskFailure) -> BoxFuture<'static, Result<(), anyhow::Error>> + Send + Sync>;

pub(crate) struct OnFail {
    pub(crate) call: OnFailFn,
    pub(crate) opts: HandlerOpts,
}

/// A task definition with the function that executes its runs.
///
/// ```
/// use std::time::Duration;
/// use catbird_worker::{TaskContext, TaskHandler};
///
/// let handler = TaskHandler::new("double", |input: i64, _ctx: TaskContext| async move {
///     Ok::<_, anyhow::Error>(input * 2)
/// })
/// .description("doubles a number")
/// .timeout(Duration::from_secs(5))
/// .max_retries(3);
/// assert_eq!(handler.name(), "double");
/// ```
pub struct TaskHandler {
    pub(crate) definition: Task,
    pub(crate) opts: HandlerOpts,
    pub(crate) call: CallFn,
    pub(crate) on_fail: Option<OnFail>,
    /// Misuse found while building, reported when the worker starts.
    pub(crate) problems: Vec<String>,
}

impl fmt::Debug for TaskHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandler")
            .field("definition", &self.definition)
            .field("opts", &self.opts)
            .field("on_fail", &self.on_fail.is_some())
            .finish_non_exhaustive()
    }
}

impl TaskHandler {
    /// A handler for task `name`. The function receives the decoded input
    /// and the run's context, and returns the output or an error. A decoding
    /// failure of the input is a failed attempt.
    pub fn new<I, O, E, F, Fut>(name: impl Into<String>, function: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
        F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let function = Arc::new(function);
        let call: CallFn = Arc::new(move |input: Value, ctx: TaskContext| {
            let function = function.clone();
            Box::pin(async move {
                let input: I = serde_json::from_value(input)
                    .map_err(|error| anyhow::anyhow!("could not decode the task input: {error}"))?;
                let output = function(input, ctx).await.map_err(Into::into)?;
                Ok(JsonText::encode("task output", &output)?)
            })
        });
        TaskHandler {
            definition: Task::define(name),
            opts: HandlerOpts::default(),
            call,
            on_fail: None,
            problems: Vec::new(),
        }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The definition the worker creates at start.
    pub fn definition(&self) -> &Task {
        &self.definition
    }

    /// The handler's options.
    pub fn options(&self) -> &HandlerOpts {
        &self.opts
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.definition.description = Some(description.into());
        self
    }

    /// Sets the condition over `input.*`; runs whose condition is false are
    /// skipped without calling the handler.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.definition.condition = Some(condition.into());
        self
    }

    /// Sets how long finished runs are kept.
    pub fn retention_period(mut self, retention: Duration) -> Self {
        self.definition.retention_period = Some(retention);
        self
    }

    /// Replaces all handler options.
    pub fn options_with(mut self, opts: HandlerOpts) -> Self {
        self.opts = opts;
        self
    }

    /// Sets the maximum number of simultaneous executions in one worker.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.opts.concurrency = concurrency;
        self
    }

    /// Sets the number of runs claimed at once.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.opts.batch_size = batch_size;
        self
    }

    /// Sets how long the loop waits, while busy, before it claims again after
    /// a claim that returned some runs, but fewer than it asked for. Zero
    /// waits for a wake-up instead (see
    /// [`HandlerOpts::busy_poll`](crate::HandlerOpts#structfield.busy_poll)).
    pub fn busy_poll(mut self, delay: Duration) -> Self {
        self.opts.busy_poll = Some(delay);
        self
    }

    /// Sets the execution deadline; zero means none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = timeout;
        self
    }

    /// Sets the number of retries after the first failed attempt.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.opts.max_retries = max_retries;
        self
    }

    /// Sets full-jitter backoff between `min` and `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.opts = self.opts.backoff(min, max);
        self
    }

    /// Adds the built-in circuit breaker.
    pub fn circuit_breaker(mut self, failure_threshold: u32, open_timeout: Duration) -> Self {
        self.opts = self.opts.circuit_breaker(failure_threshold, open_timeout);
        self
    }

    /// Adds an on-fail handler, called with the run's input and a
    /// [`TaskFailure`] after a run failed for good. It has its own options;
    /// `None` gives [`HandlerOpts::on_fail_default`].
    pub fn on_fail<I, E, F, Fut>(mut self, function: F, opts: Option<HandlerOpts>) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
        F: Fn(I, TaskFailure) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        if self.on_fail.is_some() {
            self.problems
                .push("an on-fail handler is attached twice".to_owned());
        }
        let function = Arc::new(function);
        let call: OnFailFn = Arc::new(move |input: Value, failure: TaskFailure| {
            let function = function.clone();
            Box::pin(async move {
                let input: I = serde_json::from_value(input)
                    .map_err(|error| anyhow::anyhow!("could not decode the task input: {error}"))?;
                function(input, failure).await.map_err(Into::into)
            })
        });
        let opts = opts.unwrap_or_else(HandlerOpts::on_fail_default);
        self.on_fail = Some(OnFail { call, opts });
        self.definition.has_on_fail = true;
        self
    }

    /// Checks the definition and options; the error names the task.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let name = &self.definition.name;
        if let Some(problem) = self.problems.first() {
            return Err(format!("task \"{name}\" is misconfigured: {problem}"));
        }
        self.definition
            .validate()
            .map_err(|error| definition_problem(&error))?;
        self.opts
            .validate()
            .map_err(|message| format!("task \"{name}\" has invalid handler options: {message}"))?;
        if let Some(on_fail) = &self.on_fail {
            on_fail.opts.validate().map_err(|message| {
                format!("task \"{name}\" has invalid on-fail options: {message}")
            })?;
        }
        Ok(())
    }
}

/// The message of an invalid definition without its `catbird: ` prefix,
/// which [`crate::WorkerError`] adds when it is displayed.
pub(crate) fn definition_problem(error: &Error) -> String {
    let message = error.to_string();
    match message.strip_prefix("catbird: ") {
        Some(problem) => problem.to_owned(),
        None => message,
    }
}

/// Converts into a [`TaskHandler`]. `#[catbird::task]` implements it for the
/// type it generates, so `Worker::task(send_email)` works.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task handler",
    label = "expected a task handler",
    note = "pass a `TaskHandler`, or an `async fn` annotated with `#[catbird::task]`"
)]
pub trait IntoTaskHandler {
    /// The handler.
    fn into_task_handler(self) -> TaskHandler;
}

impl IntoTaskHandler for TaskHandler {
    fn into_task_handler(self) -> TaskHandler {
        self
    }
}
