//! Flows with handlers: the steps a worker executes.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::Executor;
use catbird_core::flow::{FlowDef, StepDef, StepKind, StepRunInfo, get_flow_step};
use catbird_core::{Error, JsonText, PollOpts, sql};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::fanout::{GeneratorFn, ReducerFn};
use crate::options::{HandlerOpts, ON_FAIL_BACKOFF};
use crate::task::HandlerResult;

/// The arguments of a step handler: the flow input, the signal input when the
/// step waits for one, and the outputs of its completed dependencies.
///
/// For an item of a mapper step the mapped element takes the place of what
/// was mapped: of the flow input for a mapper over the input, of the source
/// dependency's output for a mapper over a step's output.
#[derive(Debug, Clone)]
pub struct StepArgs {
    pub(crate) step: String,
    pub(crate) input: Value,
    pub(crate) signal: Option<Value>,
    pub(crate) dependencies: Map<String, Value>,
    pub(crate) item: Option<Value>,
}

impl StepArgs {
    /// Decodes the item of a map or generator item handler; an error for
    /// a step run that is not an item.
    pub fn item<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let item = self.item.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("step \"{}\" is not running an item", self.step))
        })?;
        T::deserialize(item).map_err(|error| decode_error("its item", &self.step, error))
    }

    /// Decodes the flow input.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.input)
            .map_err(|error| decode_error("the flow input", &self.step, error))
    }

    /// Decodes the signal input; an error when the step received none.
    pub fn signal<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let signal = self.signal.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("step \"{}\" received no signal input", self.step))
        })?;
        T::deserialize(signal).map_err(|error| decode_error("the signal input", &self.step, error))
    }

    /// Decodes the output of a required dependency; an error ("missing
    /// required dependency") when it did not complete.
    pub fn dependency<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let output = self.dependencies.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "step \"{}\" is missing required dependency \"{name}\": it did not complete",
                self.step
            ))
        })?;
        T::deserialize(output)
            .map_err(|error| decode_error(&format!("the output of \"{name}\""), &self.step, error))
    }

    /// Decodes the output of an optional dependency: `None` when it was
    /// skipped.
    pub fn optional_dependency<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        self.dependencies
            .get(name)
            .map(|output| {
                T::deserialize(output).map_err(|error| {
                    decode_error(&format!("the output of \"{name}\""), &self.step, error)
                })
            })
            .transpose()
    }
}

fn decode_error(what: &str, step: &str, error: serde_json::Error) -> Error {
    Error::InvalidArgument(format!("step \"{step}\" could not decode {what}: {error}"))
}

/// The context of a running step handler: its run, a pool for its own
/// transactions, its cancellation token, and the flow-level helpers.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) flow: Arc<str>,
    pub(crate) step: Arc<str>,
    pub(crate) flow_run_id: i64,
    pub(crate) step_run_id: i64,
    pub(crate) attempt: i32,
    pub(crate) item_index: Option<i32>,
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) cancel: CancellationToken,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("flow", &self.flow)
            .field("step", &self.step)
            .field("flow_run_id", &self.flow_run_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// The flow's name.
    pub fn flow(&self) -> &str {
        &self.flow
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The id of the flow run.
    pub fn flow_run_id(&self) -> i64 {
        self.flow_run_id
    }

    /// The id of this step run.
    pub fn step_run_id(&self) -> i64 {
        self.step_run_id
    }

    /// The attempt number, 1 for the first execution.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// The index of the item being handled (its position in the mapped
    /// array, or in yield order), or `None` outside an item handler.
    pub fn item_index(&self) -> Option<i32> {
        self.item_index
    }

    /// The worker's pool, for the handler's own transactions.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// A token that fires when the step should stop: at its timeout, when
    /// its run is canceled, fails or completes early, and when the worker
    /// shuts down after its grace period.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Completes when the step should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the step should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels the whole flow run and fires this handler's token; the step
    /// ends canceled, and the run once nothing else runs.
    pub async fn cancel(&self, reason: Option<&str>) -> Result<(), Error> {
        catbird_core::flow::cancel_flow_run(&self.pool, &self.flow, self.flow_run_id, reason)
            .await?;
        self.cancel.cancel();
        Ok(())
    }

    /// Completes the flow run now with `output`: every unfinished step is
    /// canceled and running steps get a stop request, this one included.
    /// Returns whether this call won: false when the run had already
    /// finished (another early completion, a failure, a cancellation).
    /// Whatever the handler returns afterwards is discarded.
    pub async fn complete_early<T: Serialize + ?Sized>(
        &self,
        output: &T,
        reason: &str,
    ) -> Result<bool, Error> {
        let output = JsonText::encode("early output", output)?;
        let reason = Some(reason).filter(|reason| !reason.is_empty());
        let won = self
            .pool
            .query_opt_row(
                sql::COMPLETE_FLOW_EARLY,
                &[&&*self.flow, &self.flow_run_id, &output, &reason],
            )
            .await?
            .is_some_and(|row| row.get::<_, bool>(0));
        self.cancel.cancel();
        Ok(won)
    }

    /// Reads another step of the same flow run.
    pub async fn get_step(&self, name: &str) -> Result<StepRunInfo, Error> {
        get_flow_step(&self.pool, &self.flow, self.flow_run_id, name).await
    }

    /// Waits until another step of the same run has finished (completed,
    /// failed, skipped or canceled), checking every `poll.poll_interval`, and
    /// returns it. Stops with [`Error::RunCanceled`] when this handler's token
    /// fires first.
    pub async fn wait_for_step(&self, name: &str, poll: PollOpts) -> Result<StepRunInfo, Error> {
        let poll = poll.normalized();
        loop {
            let step = self.get_step(name).await?;
            if step.is_done() {
                return Ok(step);
            }
            tokio::select! {
                () = tokio::time::sleep(poll.poll_interval) => {}
                () = self.cancel.cancelled() => return Err(Error::RunCanceled(None)),
            }
        }
    }
}

/// Cancels the flow run of the step holding `ctx` (see
/// [`StepContext::cancel`]).
pub async fn cancel_flow(ctx: &StepContext, reason: &str) -> Result<(), Error> {
    ctx.cancel(Some(reason)).await
}

/// Completes the flow run of the step holding `ctx` early (see
/// [`StepContext::complete_early`]).
pub async fn complete_early<T: Serialize + ?Sized>(
    ctx: &StepContext,
    output: &T,
    reason: &str,
) -> Result<bool, Error> {
    ctx.complete_early(output, reason).await
}

pub(crate) type StepCallFn =
    Arc<dyn Fn(StepArgs, StepContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// A step definition with, optionally, the function that executes it.
///
/// A normal step and a mapper step take one function ([`StepHandler::new`]);
/// for a mapper it runs once per item. Generator and reducer steps have
/// their own constructors, [`StepHandler::generator`] and
/// [`StepHandler::reducer`].
pub struct StepHandler {
    pub(crate) definition: StepDef,
    pub(crate) opts: HandlerOpts,
    /// The step's handler; for a mapper or generator, the item handler.
    pub(crate) call: Option<StepCallFn>,
    pub(crate) generator: Option<GeneratorFn>,
    pub(crate) reducer: Option<ReducerFn>,
}

impl fmt::Debug for StepHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepHandler")
            .field("definition", &self.definition)
            .field("opts", &self.opts)
            .field("has_handler", &self.has_handler())
            .finish()
    }
}

impl StepHandler {
    /// A step with a handler. The function receives the step's arguments
    /// (decode them with [`StepArgs::input`], [`StepArgs::dependency`], ...)
    /// and its context, and returns the output or an error.
    pub fn new<O, E, F, Fut>(definition: StepDef, function: F) -> Self
    where
        O: Serialize + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
        F: Fn(StepArgs, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let function = Arc::new(function);
        let call: StepCallFn = Arc::new(move |args: StepArgs, ctx: StepContext| {
            let function = function.clone();
            Box::pin(async move {
                let output = function(args, ctx).await.map_err(Into::into)?;
                Ok(JsonText::encode("step output", &output)?)
            })
        });
        StepHandler {
            definition,
            opts: HandlerOpts::default(),
            call: Some(call),
            generator: None,
            reducer: None,
        }
    }

    /// A step this worker does not execute: part of the definition, run by
    /// another worker.
    pub fn definition_only(definition: StepDef) -> Self {
        StepHandler {
            definition,
            opts: HandlerOpts::default(),
            call: None,
            generator: None,
            reducer: None,
        }
    }

    /// Whether this worker executes the step.
    pub(crate) fn has_handler(&self) -> bool {
        self.call.is_some() || self.generator.is_some() || self.reducer.is_some()
    }

    /// Checks that the functions given match the step's kind.
    pub(crate) fn check_shape(&self) -> Result<(), String> {
        if !self.has_handler() {
            return Ok(());
        }
        let kind = &self.definition.kind;
        let expected = match kind {
            StepKind::Normal | StepKind::Map(_) => {
                self.call.is_some() && self.generator.is_none() && self.reducer.is_none()
            }
            StepKind::Generator => self.call.is_some() && self.generator.is_some(),
            StepKind::Reduce(_) => self.reducer.is_some() && self.call.is_none(),
        };
        if expected {
            return Ok(());
        }
        let given = if self.generator.is_some() {
            "a generator"
        } else if self.reducer.is_some() {
            "a reducer"
        } else {
            "a step handler"
        };
        Err(format!(
            "step \"{}\" is a {} step but was given {given}; use {}",
            self.definition.name,
            kind.as_str(),
            match kind {
                StepKind::Normal | StepKind::Map(_) => "StepHandler::new",
                StepKind::Generator => "StepHandler::generator",
                StepKind::Reduce(_) => "StepHandler::reducer",
            }
        ))
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The step's definition.
    pub fn definition(&self) -> &StepDef {
        &self.definition
    }

    /// The handler's options.
    pub fn options(&self) -> &HandlerOpts {
        &self.opts
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

    /// Sets the maximum number of step runs claimed at once.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.opts.batch_size = batch_size;
        self
    }

    /// Sets how long the loop waits, while busy, before it claims again after
    /// a claim that returned some step runs, but fewer than it asked for.
    /// Zero waits for a wake-up instead (see
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
}

/// Converts into a [`StepHandler`]. `#[catbird::step]` implements it for the
/// type it generates, so `Flow::step(validate)` works.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step handler",
    label = "expected a step handler",
    note = "pass a `StepHandler`, a `StepDef`, or an `async fn` annotated with `#[catbird::step]`"
)]
pub trait IntoStepHandler {
    /// The handler.
    fn into_step_handler(self) -> StepHandler;
}

impl IntoStepHandler for StepHandler {
    fn into_step_handler(self) -> StepHandler {
        self
    }
}

impl IntoStepHandler for StepDef {
    fn into_step_handler(self) -> StepHandler {
        StepHandler::definition_only(self)
    }
}

/// The argument of the function that `#[catbird::step]` generates next to
/// a step's struct, under the step function's name.
///
/// Parameters are named after the steps they depend on, and a local binding
/// cannot shadow a unit struct, so the step's struct has braces and lives in
/// the type namespace only. In the value namespace the step's name is a
/// function `fn(StepToken) -> Step`, which a binding can shadow, and which
/// `Flow::step` takes through the impl below.
#[doc(hidden)]
#[derive(Debug)]
pub struct StepToken(());

// NOTE: because of this impl, a plain `async fn` passed to `Flow::step`
// reports that its signature is not `fn(StepToken) -> _` (E0631), not the
// note of `IntoStepHandler`. rustc reports a function's signature mismatch
// before it looks at `#[diagnostic::do_not_recommend]`, so that attribute
// does not help here. The docs of `#[catbird::step]` explain the message.
impl<F, S> IntoStepHandler for F
where
    F: FnOnce(StepToken) -> S,
    S: IntoStepHandler,
{
    fn into_step_handler(self) -> StepHandler {
        self(StepToken(())).into_step_handler()
    }
}

/// The failure a flow on-fail handler receives: the run that failed and why.
#[derive(Clone)]
pub struct FlowFailure {
    /// The flow's name.
    pub flow_name: String,
    /// The failed run's id.
    pub flow_run_id: i64,
    /// The step whose failure failed the run; empty when the run failed
    /// because no step of its output priority completed.
    pub failed_step_name: String,
    /// The error that failed the run.
    pub error_message: String,
    /// The failed step's attempts.
    pub attempts: i32,
    /// The number of this on-fail attempt, 1 for the first.
    pub on_fail_attempts: i32,
    /// When the run was created.
    pub started_at: DateTime<Utc>,
    /// When it failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// The run's concurrency key.
    pub concurrency_key: Option<String>,
    pub(crate) failed_step_input: Option<Value>,
    pub(crate) failed_step_signal: Option<Value>,
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) outputs: Arc<Mutex<std::collections::HashMap<String, Value>>>,
}

impl fmt::Debug for FlowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowFailure")
            .field("flow_name", &self.flow_name)
            .field("flow_run_id", &self.flow_run_id)
            .field("failed_step_name", &self.failed_step_name)
            .field("error_message", &self.error_message)
            .field("attempts", &self.attempts)
            .field("on_fail_attempts", &self.on_fail_attempts)
            .finish_non_exhaustive()
    }
}

impl FlowFailure {
    /// Decodes the failed step's input (the flow input).
    pub fn failed_step_input_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let input = self
            .failed_step_input
            .as_ref()
            .ok_or(Error::NoFailedStepInput)?;
        T::deserialize(input).map_err(|error| {
            Error::InvalidArgument(format!("could not decode the failed step input: {error}"))
        })
    }

    /// Decodes the failed step's signal input.
    pub fn failed_step_signal_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let signal = self
            .failed_step_signal
            .as_ref()
            .ok_or(Error::NoFailedStepSignal)?;
        T::deserialize(signal).map_err(|error| {
            Error::InvalidArgument(format!("could not decode the failed step signal: {error}"))
        })
    }

    /// Loads (once per handler call) and decodes the output of a step that
    /// completed in the failed run; [`Error::UnknownStepOutput`] otherwise.
    pub async fn output_as<T: DeserializeOwned>(&self, step: &str) -> Result<T, Error> {
        let cached = self
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(step)
            .cloned();
        let output = match cached {
            Some(output) => output,
            None => {
                let run = get_flow_step(&self.pool, &self.flow_name, self.flow_run_id, step)
                    .await
                    .map_err(|_| Error::UnknownStepOutput(step.to_owned()))?;
                if !run.is_completed() {
                    return Err(Error::UnknownStepOutput(step.to_owned()));
                }
                let output = run.output.unwrap_or(Value::Null);
                self.outputs
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(step.to_owned(), output.clone());
                output
            }
        };
        T::deserialize(output).map_err(|error| {
            Error::InvalidArgument(format!(
                "could not decode the output of \"{step}\": {error}"
            ))
        })
    }
}

pub(crate) type FlowOnFailFn =
    Arc<dyn Fn(Value, FlowFailure) -> BoxFuture<'static, Result<(), anyhow::Error>> + Send + Sync>;

pub(crate) struct FlowOnFail {
    pub(crate) call: FlowOnFailFn,
    pub(crate) opts: HandlerOpts,
}

/// A flow definition with the handlers of its steps.
///
/// ```
/// use catbird_core::flow::StepDef;
/// use catbird_worker::{Flow, StepArgs, StepContext, StepHandler};
///
/// let double = StepHandler::new(StepDef::new("double"), |args: StepArgs, _ctx: StepContext| async move {
///     Ok::<_, anyhow::Error>(args.input::<i64>()? * 2)
/// });
/// let add = StepHandler::new(StepDef::new("add").depends_on("double"), |args: StepArgs, _ctx: StepContext| async move {
///     Ok::<_, anyhow::Error>(args.dependency::<i64>("double")? + 1)
/// });
/// let flow = Flow::new("double_add").step(double).step(add);
/// assert_eq!(flow.name(), "double_add");
/// ```
pub struct Flow {
    pub(crate) definition: FlowDef,
    pub(crate) steps: Vec<StepHandler>,
    pub(crate) on_fail: Option<FlowOnFail>,
    pub(crate) problems: Vec<String>,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field("definition", &self.definition)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Flow {
    /// A flow named `name` without steps.
    pub fn new(name: impl Into<String>) -> Self {
        Flow {
            definition: FlowDef::new(name),
            steps: Vec::new(),
            on_fail: None,
            problems: Vec::new(),
        }
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// Adds a step: a handler, or a bare [`StepDef`] another worker executes.
    pub fn step(mut self, step: impl IntoStepHandler) -> Self {
        let step = step.into_step_handler();
        self.definition.steps.push(step.definition.clone());
        self.steps.push(step);
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.definition.description = Some(description.into());
        self
    }

    /// Sets the output priority.
    pub fn output_priority<S: Into<String>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.definition.output_priority = Some(steps.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the retention period of finished runs.
    pub fn retention_period(mut self, retention: Duration) -> Self {
        self.definition.retention_period = Some(retention);
        self
    }

    /// Adds an on-fail handler, called with the flow input and a
    /// [`FlowFailure`] after a run failed. Without configured backoff it
    /// retries after 250 ms to 5 s.
    pub fn on_fail<I, E, F, Fut>(mut self, function: F, opts: Option<HandlerOpts>) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
        F: Fn(I, FlowFailure) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        if self.on_fail.is_some() {
            self.problems
                .push("an on-fail handler is attached twice".to_owned());
        }
        let function = Arc::new(function);
        let call: FlowOnFailFn = Arc::new(move |input: Value, failure: FlowFailure| {
            let function = function.clone();
            Box::pin(async move {
                let input: I = serde_json::from_value(input)
                    .map_err(|error| anyhow::anyhow!("could not decode the flow input: {error}"))?;
                function(input, failure).await.map_err(Into::into)
            })
        });
        let opts = opts.unwrap_or_else(|| {
            HandlerOpts::default().backoff(ON_FAIL_BACKOFF.0, ON_FAIL_BACKOFF.1)
        });
        self.on_fail = Some(FlowOnFail { call, opts });
        self.definition.has_on_fail = true;
        self
    }

    /// The definition the worker creates at start.
    pub fn definition(&self) -> &FlowDef {
        &self.definition
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let name = &self.definition.name;
        if let Some(problem) = self.problems.first() {
            return Err(format!("flow \"{name}\" is misconfigured: {problem}"));
        }
        self.definition
            .validate()
            .map_err(|error| error.to_string())?;
        for step in &self.steps {
            step.check_shape()
                .map_err(|message| format!("flow \"{name}\" is misconfigured: {message}"))?;
            if step.has_handler() {
                step.opts.validate().map_err(|message| {
                    format!(
                        "flow \"{name}\" step \"{}\" has invalid handler options: {message}",
                        step.name()
                    )
                })?;
            }
        }
        if let Some(on_fail) = &self.on_fail {
            on_fail.opts.validate().map_err(|message| {
                format!("flow \"{name}\" has invalid on-fail options: {message}")
            })?;
        }
        Ok(())
    }
}
