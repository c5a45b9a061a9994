//! The claim loops of a flow: one per step with a handler, and one for
//! on-fail work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::flow::{MapSource, StepKind};
use catbird_core::{Executor, JsonText, sql};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffStrategy;
use crate::breaker::CircuitBreakerStrategy;
use crate::fanout::{GeneratorFn, ItemPages, ItemSink, ReducerFn};
use crate::flow::{Flow, FlowFailure, FlowOnFailFn, StepArgs, StepCallFn, StepContext};
use crate::item_loop::{ItemLoop, Mapped, item_loop_run};
use crate::options::{HandlerOpts, STEP_BUSY_POLL};
use crate::retry::with_retries;
use crate::task_loop::{
    IDLE_POLL, IDLE_POLL_ON_FAIL, Supervised, after_short_claim, idle_since, pause_after_error,
    retry_delay_ms, supervise,
};
use crate::worker::Shared;

/// How often a running step checks that its flow run is still started, in
/// case the stop notification was missed.
const STOP_CHECK: Duration = Duration::from_secs(5);

/// What a step loop runs for each claimed step run.
enum StepExec {
    /// A normal step's handler.
    Handler(StepCallFn),
    /// A generator function; its items go to the step's item loop.
    Generator(GeneratorFn),
    /// A fold over the items of `source`.
    Reducer { source: Arc<str>, reduce: ReducerFn },
}

struct StepLoop {
    flow: Arc<str>,
    step: Arc<str>,
    /// `<flow>.<step>`: the wake-up name and the lease-renewal key.
    key: String,
    exec: StepExec,
    opts: HandlerOpts,
    backoff: Arc<dyn BackoffStrategy>,
    breaker: Option<Arc<dyn CircuitBreakerStrategy>>,
}

struct ClaimedStep {
    id: i64,
    flow_run_id: i64,
    attempt: i32,
    input: Value,
    signal: Option<Value>,
    dependencies: Map<String, Value>,
}

/// Starts the loops of a flow's steps that have handlers, and of its on-fail
/// handler.
pub(crate) fn spawn(shared: &Arc<Shared>, flow: Flow, loops: &mut JoinSet<()>) {
    let flow_name: Arc<str> = Arc::from(flow.definition.name.as_str());
    for step in flow.steps {
        let key = format!("{flow_name}.{}", step.definition.name);
        let step_name: Arc<str> = Arc::from(step.definition.name.as_str());
        let (exec, items) = match (
            step.definition.kind,
            step.call,
            step.generator,
            step.reducer,
        ) {
            (StepKind::Normal, Some(call), _, _) => (Some(StepExec::Handler(call)), None),
            (StepKind::Map(source), Some(call), _, _) => {
                let mapped = match source {
                    MapSource::Input => Mapped::Input,
                    MapSource::Step(source) => Mapped::Dependency(Arc::from(source.as_str())),
                };
                (None, Some((call, mapped)))
            }
            (StepKind::Generator, Some(call), Some(generator), _) => (
                Some(StepExec::Generator(generator)),
                Some((call, Mapped::Input)),
            ),
            (StepKind::Reduce(source), _, _, Some(reduce)) => (
                Some(StepExec::Reducer {
                    source: Arc::from(source.as_str()),
                    reduce,
                }),
                None,
            ),
            _ => (None, None),
        };
        if let Some((call, mapped)) = items {
            shared.registry.waker("i", &key);
            let item_loop = Arc::new(ItemLoop {
                flow: flow_name.clone(),
                step: step_name.clone(),
                key: key.clone(),
                call,
                mapped,
                backoff: step.opts.build_backoff(),
                breaker: step.opts.build_breaker(),
                opts: step.opts.clone(),
            });
            loops.spawn(item_loop_run(shared.clone(), item_loop));
        }
        if let Some(exec) = exec {
            shared.registry.waker("s", &key);
            let step_loop = Arc::new(StepLoop {
                flow: flow_name.clone(),
                step: step_name,
                key,
                exec,
                backoff: step.opts.build_backoff(),
                breaker: step.opts.build_breaker(),
                opts: step.opts,
            });
            loops.spawn(step_loop_run(shared.clone(), step_loop));
        }
    }
    if let Some(on_fail) = flow.on_fail {
        shared.registry.waker("ff", &flow_name);
        loops.spawn(on_fail_loop(
            shared.clone(),
            flow_name,
            on_fail.call,
            on_fail.opts,
        ));
    }
}

async fn step_loop_run(shared: Arc<Shared>, handler: Arc<StepLoop>) {
    let semaphore = Arc::new(Semaphore::new(handler.opts.concurrency));
    let quantity = i32::try_from(handler.opts.batch_size).unwrap_or(i32::MAX);
    let mut executions = JoinSet::new();
    let mut failures = 0;
    // Whether the previous claim returned work.
    let mut busy = false;
    let waker = shared.registry.waker("s", &handler.key);

    'claiming: loop {
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shared.shutdown.cancelled() => break,
        };
        while executions.try_join_next().is_some() {}

        let lease_ms = shared.lease_ms();
        let seen = waker.wakes();
        let claimed = shared
            .pool
            .query_rows(
                sql::CLAIM_STEPS,
                &[&&*handler.flow, &&*handler.step, &quantity, &lease_ms],
            )
            .await;
        let rows = match claimed {
            Ok(rows) => {
                failures = 0;
                rows
            }
            Err(error) => {
                failures += 1;
                busy = false;
                tracing::warn!(flow = %handler.flow, step = %handler.step, %error, "could not claim steps");
                drop(permit);
                if pause_after_error(&shared, failures).await {
                    continue;
                }
                break;
            }
        };
        if rows.is_empty() {
            busy = false;
            drop(permit);
            if idle_since(&shared, "s", &handler.key, seen, IDLE_POLL).await {
                continue;
            }
            break;
        }
        // A short claim took every visible step. After a claim that returned
        // work too, the loop is busy and claims again after its busy poll.
        // Otherwise it waits for a wake-up rather than spend a claim that
        // finds nothing.
        let short = rows.len() < usize::try_from(quantity).unwrap_or(usize::MAX);
        let busy_poll = if busy {
            handler.opts.busy_poll_or(STEP_BUSY_POLL)
        } else {
            Duration::ZERO
        };
        busy = true;

        let steps: Vec<ClaimedStep> = rows
            .iter()
            .map(|row| {
                let dependencies: Value = row.get("dependencies");
                ClaimedStep {
                    id: row.get("id"),
                    flow_run_id: row.get("flow_run_id"),
                    attempt: row.get("attempts"),
                    input: row.get("input"),
                    signal: row.get("signal_input"),
                    dependencies: match dependencies {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    },
                }
            })
            .collect();
        for step in &steps {
            shared.hold_step(&handler.flow, step.id);
        }

        let mut permit = Some(permit);
        let mut pending = steps.into_iter();
        while let Some(step) = pending.next() {
            let permit = match permit.take() {
                Some(permit) => permit,
                None => tokio::select! {
                    permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = shared.shutdown.cancelled() => {
                        for unstarted in std::iter::once(step).chain(pending) {
                            release(&shared, &handler, unstarted.id, unstarted.attempt, 0).await;
                        }
                        break 'claiming;
                    }
                },
            };
            executions.spawn(execute(shared.clone(), handler.clone(), step, permit));
        }
        if short && !after_short_claim(&shared, "s", &handler.key, seen, busy_poll).await {
            break;
        }
    }

    while executions.join_next().await.is_some() {}
}

async fn release(shared: &Shared, handler: &StepLoop, id: i64, attempt: i32, delay_ms: i32) {
    let result = shared
        .pool
        .query_rows(
            sql::RELEASE_STEP,
            &[&&*handler.flow, &id, &attempt, &delay_ms],
        )
        .await;
    if let Err(error) = result {
        tracing::warn!(flow = %handler.flow, step = %handler.step, step.run_id = id, %error,
            "could not give back a step; it returns after its lease");
    }
    shared.forget_step(&handler.flow, id);
}

enum StepOutcome {
    Succeeded(JsonText),
    Failed(String),
    Stopped,
    Refused(i32),
    Interrupted,
}

async fn execute(
    shared: Arc<Shared>,
    handler: Arc<StepLoop>,
    step: ClaimedStep,
    permit: OwnedSemaphorePermit,
) {
    let token = shared.hard_stop.child_token();
    let (id, run_id, attempt) = (step.id, step.flow_run_id, step.attempt);
    shared
        .registry
        .track_step(&handler.flow, run_id, id, token.clone());

    let watcher = tokio::spawn(watch_run(
        shared.clone(),
        handler.flow.clone(),
        run_id,
        token.clone(),
    ));
    let outcome = attempt_step(&shared, &handler, step, token).await;
    watcher.abort();
    record(&shared, &handler, id, attempt, outcome).await;

    shared.registry.untrack_step(&handler.flow, run_id, id);
    shared.forget_step(&handler.flow, id);
    drop(permit);
}

/// Runs a generator attempt: resets the items of earlier attempts, runs the
/// generator, then writes the items still buffered.
fn run_generator(
    generate: GeneratorFn,
    sink: ItemSink,
    args: StepArgs,
    context: StepContext,
) -> futures_util::future::BoxFuture<'static, crate::task::HandlerResult> {
    Box::pin(async move {
        let started = context
            .pool
            .query_opt_row(
                sql::START_GENERATOR_STEP,
                &[&&*context.flow, &context.step_run_id, &context.attempt],
            )
            .await?
            .is_some_and(|row| row.get::<_, bool>(0));
        if !started {
            anyhow::bail!("the generator's step run was claimed again or its run stopped");
        }
        generate(args, sink.clone(), context).await?;
        sink.flush().await?;
        Ok(JsonText::encode("generator result", &Value::Null)?)
    })
}

/// Fires `token` when the flow run is no longer started. The stop
/// notification normally does that first; this covers a missed one.
pub(crate) async fn watch_run(
    shared: Arc<Shared>,
    flow: Arc<str>,
    run_id: i64,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(STOP_CHECK) => {}
            () = token.cancelled() => return,
        }
        if let Ok(Some(row)) = shared
            .pool
            .query_opt_row(sql::FLOW_RUN_STATUS, &[&&*flow, &run_id])
            .await
        {
            if row.get::<_, String>(0) != "started" {
                token.cancel();
                return;
            }
        }
    }
}

async fn attempt_step(
    shared: &Shared,
    handler: &StepLoop,
    step: ClaimedStep,
    token: CancellationToken,
) -> StepOutcome {
    if let Some(breaker) = &handler.breaker {
        if let Err(retry_after) = breaker.acquire() {
            return StepOutcome::Refused(
                i32::try_from(retry_after.as_millis().max(1)).unwrap_or(i32::MAX),
            );
        }
    }
    let args = StepArgs {
        step: handler.step.to_string(),
        input: step.input,
        signal: step.signal,
        dependencies: step.dependencies,
        item: None,
    };
    let context = StepContext {
        flow: handler.flow.clone(),
        step: handler.step.clone(),
        flow_run_id: step.flow_run_id,
        step_run_id: step.id,
        attempt: step.attempt,
        item_index: None,
        pool: shared.pool.clone(),
        cancel: token.clone(),
    };
    let timeout = handler.opts.timeout;
    let running = match &handler.exec {
        StepExec::Handler(call) => call(args, context),
        StepExec::Generator(generate) => {
            let sink = ItemSink::new(
                shared.pool.clone(),
                handler.flow.clone(),
                step.id,
                step.attempt,
                handler.opts.batch_size,
                token.clone(),
            );
            run_generator(generate.clone(), sink, args, context)
        }
        StepExec::Reducer { source, reduce } => {
            let pages = ItemPages {
                pool: shared.pool.clone(),
                flow: handler.flow.clone(),
                flow_run_id: step.flow_run_id,
                source: source.clone(),
                after: -1,
                done: false,
            };
            reduce(pages, context)
        }
    };
    match supervise(tokio::spawn(running), &token, &shared.hard_stop, timeout).await {
        Supervised::Finished(Ok(output)) => StepOutcome::Succeeded(output),
        Supervised::Finished(Err(message)) => StepOutcome::Failed(message),
        Supervised::TimedOut => StepOutcome::Failed(format!(
            "timed out: the handler exceeded its {timeout:?} deadline"
        )),
        Supervised::Canceled => StepOutcome::Stopped,
        Supervised::Interrupted => StepOutcome::Interrupted,
    }
}

async fn record(shared: &Shared, handler: &StepLoop, id: i64, attempt: i32, outcome: StepOutcome) {
    let (flow, step) = (&*handler.flow, &*handler.step);
    let never = CancellationToken::new();
    match outcome {
        StepOutcome::Succeeded(output) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_success();
            }
            let result = with_retries("complete a step", &never, || async {
                if matches!(handler.exec, StepExec::Generator(_)) {
                    shared
                        .pool
                        .query_rows(sql::COMPLETE_GENERATOR_STEP, &[&flow, &id, &attempt])
                        .await
                } else {
                    shared
                        .pool
                        .query_rows(sql::COMPLETE_STEP, &[&flow, &id, &attempt, &output])
                        .await
                }
            })
            .await;
            match result {
                Ok(rows) if rows.first().is_some_and(|row| row.get::<_, bool>(0)) => {
                    shared
                        .vacuums
                        .record(&shared.pool, &format!("cb_s_{flow}"), 1);
                    tracing::debug!(flow, step, step.run_id = id, attempt, "step completed");
                }
                Ok(_) => tracing::debug!(
                    flow,
                    step,
                    step.run_id = id,
                    attempt,
                    "the flow run stopped or the step was claimed again; its result is discarded"
                ),
                Err(error) => tracing::error!(flow, step, step.run_id = id, %error,
                    "could not record a step completion; the step is retried after its lease"),
            }
        }
        StepOutcome::Failed(message) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_failure();
            }
            let delay = retry_delay_ms(attempt, handler.opts.max_retries, &*handler.backoff);
            let result = with_retries("record a failed step attempt", &never, || async {
                shared
                    .pool
                    .query_rows(sql::FAIL_STEP, &[&flow, &id, &attempt, &message, &delay])
                    .await
            })
            .await;
            match (result, delay) {
                (Ok(_), Some(delay)) => {
                    tracing::warn!(flow, step, step.run_id = id, attempt, error = %message,
                    retry_in_ms = delay, "step attempt failed; retrying")
                }
                (Ok(_), None) => {
                    tracing::error!(flow, step, step.run_id = id, attempt, error = %message,
                    "step failed; failing its flow run")
                }
                (Err(error), _) => tracing::error!(flow, step, step.run_id = id, %error,
                    "could not record a failed step attempt"),
            }
        }
        StepOutcome::Stopped => {
            let result = shared
                .pool
                .query_rows(sql::CANCEL_STEP_RUN, &[&flow, &id, &attempt])
                .await;
            if let Err(error) = result {
                tracing::warn!(flow, step, step.run_id = id, %error, "could not mark a stopped step canceled");
            }
        }
        StepOutcome::Refused(delay) => {
            tracing::debug!(
                flow,
                step,
                step.run_id = id,
                delay_ms = delay,
                "circuit breaker is open; giving the step back"
            );
            release(shared, handler, id, attempt, delay).await;
        }
        StepOutcome::Interrupted => release(shared, handler, id, attempt, 0).await,
    }
}

async fn on_fail_loop(shared: Arc<Shared>, flow: Arc<str>, call: FlowOnFailFn, opts: HandlerOpts) {
    let semaphore = Arc::new(Semaphore::new(opts.concurrency));
    let batch = i32::try_from(opts.batch_size).unwrap_or(i32::MAX);
    let backoff = opts.build_backoff();
    let mut executions = JoinSet::new();
    let mut failures = 0;

    loop {
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shared.shutdown.cancelled() => break,
        };
        drop(permit);
        let quantity = i32::try_from(semaphore.available_permits())
            .unwrap_or(1)
            .clamp(1, batch);
        while executions.try_join_next().is_some() {}

        let lease_ms = shared.lease_ms();
        let seen = shared.registry.waker("ff", &flow).wakes();
        let rows = match shared
            .pool
            .query_rows(sql::CLAIM_FLOW_ON_FAIL, &[&&*flow, &quantity, &lease_ms])
            .await
        {
            Ok(rows) => {
                failures = 0;
                rows
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(flow = %flow, %error, "could not claim flow on-fail work");
                if pause_after_error(&shared, failures).await {
                    continue;
                }
                break;
            }
        };
        if rows.is_empty() {
            if idle_since(&shared, "ff", &flow, seen, IDLE_POLL_ON_FAIL).await {
                continue;
            }
            break;
        }

        for row in rows {
            let failure = FlowFailure {
                flow_name: flow.to_string(),
                flow_run_id: row.get("id"),
                failed_step_name: row
                    .get::<_, Option<String>>("failed_step_name")
                    .unwrap_or_default(),
                error_message: row
                    .get::<_, Option<String>>("error_message")
                    .unwrap_or_default(),
                attempts: row
                    .get::<_, Option<i32>>("failed_step_attempts")
                    .unwrap_or(0),
                on_fail_attempts: row.get("on_fail_attempts"),
                started_at: row.get("started_at"),
                failed_at: row.get("failed_at"),
                concurrency_key: row.get("concurrency_key"),
                failed_step_input: row.get("failed_step_input"),
                failed_step_signal: row.get("failed_step_signal"),
                pool: shared.pool.clone(),
                outputs: Arc::new(Mutex::new(HashMap::new())),
            };
            let input: Value = row.get("input");
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let shared = shared.clone();
            let call = call.clone();
            let flow = flow.clone();
            let backoff = backoff.clone();
            let opts = opts.clone();
            executions.spawn(async move {
                let id = failure.flow_run_id;
                let attempt = failure.on_fail_attempts;
                let token = shared.hard_stop.child_token();
                let running = (call)(input, failure);
                let spawned = tokio::spawn(async move { running.await.map(|()| Value::Null) });
                let error = match supervise(spawned, &token, &shared.hard_stop, opts.timeout).await {
                    Supervised::Finished(Ok(_)) => None,
                    Supervised::Finished(Err(message)) => Some(message),
                    Supervised::TimedOut => Some(format!("timed out: the on-fail handler exceeded its {:?} deadline", opts.timeout)),
                    Supervised::Canceled | Supervised::Interrupted => {
                        drop(permit);
                        return;
                    }
                };
                let never = CancellationToken::new();
                let flow = &*flow;
                let result = match error {
                    None => with_retries("complete flow on-fail work", &never, || async {
                        shared.pool.query_rows(sql::COMPLETE_FLOW_ON_FAIL, &[&flow, &id, &attempt]).await
                    })
                    .await
                    .map(|_| ()),
                    Some(message) => {
                        let delay = retry_delay_ms(attempt, opts.max_retries, &*backoff);
                        tracing::warn!(flow, flow.run_id = id, on_fail_attempt = attempt, error = %message,
                            retrying = delay.is_some(), "flow on-fail handler failed");
                        with_retries("record a failed flow on-fail attempt", &never, || async {
                            shared.pool.query_rows(sql::FAIL_FLOW_ON_FAIL, &[&flow, &id, &attempt, &message, &delay]).await
                        })
                        .await
                        .map(|_| ())
                    }
                };
                if let Err(error) = result {
                    tracing::error!(flow, flow.run_id = id, %error, "could not record flow on-fail work");
                }
                drop(permit);
            });
        }
    }

    while executions.join_next().await.is_some() {}
}
