//! The claim loop of a mapper's or generator's items, and the writer that
//! records their completions in batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use catbird_core::{Executor, JsonText, sql};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffStrategy;
use crate::breaker::CircuitBreakerStrategy;
use crate::flow::{StepArgs, StepCallFn, StepContext};
use crate::flow_loop::watch_run;
use crate::options::{HandlerOpts, STEP_BUSY_POLL};
use crate::retry::with_retries;
use crate::task_loop::{
    IDLE_POLL, Supervised, after_short_claim, idle_since, pause_after_error, retry_delay_ms,
    supervise,
};
use crate::worker::Shared;

/// The maximum number of item completions per statement.
const COMPLETION_BATCH: usize = 500;

/// The position of an item's element among the handler's arguments.
pub(crate) enum Mapped {
    /// In place of the flow input (a mapper over the input, a generator).
    Input,
    /// In place of the output of this dependency.
    Dependency(Arc<str>),
}

pub(crate) struct ItemLoop {
    pub(crate) flow: Arc<str>,
    pub(crate) step: Arc<str>,
    /// `<flow>.<step>`: the wake-up name.
    pub(crate) key: String,
    pub(crate) call: StepCallFn,
    pub(crate) mapped: Mapped,
    pub(crate) opts: HandlerOpts,
    pub(crate) backoff: Arc<dyn BackoffStrategy>,
    pub(crate) breaker: Option<Arc<dyn CircuitBreakerStrategy>>,
}

struct ClaimedItem {
    /// Tracked for stop notifications from the claim on, so an item whose
    /// run stops while it waits for a slot never starts.
    token: CancellationToken,
    id: i64,
    flow_run_id: i64,
    step_run_id: i64,
    index: i32,
    attempt: i32,
    item: Value,
    input: Option<Value>,
    signal: Option<Value>,
    dependencies: Map<String, Value>,
}

/// A successful item waiting to be written.
struct Completion {
    id: i64,
    attempt: i32,
    output: JsonText,
    recorded: oneshot::Sender<bool>,
}

// NOTE: running items are tracked for stop notifications beside step runs,
// under their negated id, so the two id spaces never collide.
fn stop_key(id: i64) -> i64 {
    -id
}

pub(crate) async fn item_loop_run(shared: Arc<Shared>, handler: Arc<ItemLoop>) {
    let semaphore = Arc::new(Semaphore::new(handler.opts.concurrency));
    let batch = i32::try_from(handler.opts.batch_size).unwrap_or(i32::MAX);
    // Bounded, so that completions waiting for the writer hold execution
    // slots once the writer falls behind.
    let (completions, receiver) = mpsc::channel(handler.opts.result_queue_capacity());
    let writer = tokio::spawn(write_completions(
        shared.clone(),
        handler.flow.clone(),
        receiver,
    ));
    let mut executions = JoinSet::new();
    let mut failures = 0;
    // Whether the previous claim returned work.
    let mut busy = false;
    let waker = shared.registry.waker("i", &handler.key);

    'claiming: loop {
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shared.shutdown.cancelled() => break,
        };
        while executions.try_join_next().is_some() {}
        // Claim a whole batch: the items beyond the free slots wait here,
        // leased, and start as slots free up.
        let quantity = batch.max(1);

        let lease_ms = shared.lease_ms();
        let seen = waker.wakes();
        let claimed = shared
            .pool
            .query_rows(
                sql::CLAIM_MAP_TASKS,
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
                tracing::warn!(flow = %handler.flow, step = %handler.step, %error, "could not claim map items");
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
            if idle_since(&shared, "i", &handler.key, seen, IDLE_POLL).await {
                continue;
            }
            break;
        }
        // A short claim took every visible item. After a claim that returned
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

        let items: Vec<ClaimedItem> = rows
            .iter()
            .map(|row| ClaimedItem {
                token: shared.hard_stop.child_token(),
                id: row.get("id"),
                flow_run_id: row.get("flow_run_id"),
                step_run_id: row.get("step_run_id"),
                index: row.get("item_index"),
                attempt: row.get("attempts"),
                item: row.get("item"),
                input: row.get("input"),
                signal: row.get("signal_input"),
                dependencies: match row.get::<_, Option<Value>>("dependencies") {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                },
            })
            .collect();
        for item in &items {
            shared.hold_item(&handler.flow, item.id);
            shared.registry.track_step(
                &handler.flow,
                item.flow_run_id,
                stop_key(item.id),
                item.token.clone(),
            );
        }

        let mut permit = Some(permit);
        let mut pending = items.into_iter();
        while let Some(item) = pending.next() {
            let permit = match permit.take() {
                Some(permit) => permit,
                None => tokio::select! {
                    permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = shared.shutdown.cancelled() => {
                        for unstarted in std::iter::once(item).chain(pending) {
                            shared.registry.untrack_step(&handler.flow, unstarted.flow_run_id, stop_key(unstarted.id));
                            release(&shared, &handler, unstarted.id, unstarted.attempt, 0).await;
                        }
                        break 'claiming;
                    }
                },
            };
            if item.token.is_cancelled() {
                shared
                    .registry
                    .untrack_step(&handler.flow, item.flow_run_id, stop_key(item.id));
                if shared.hard_stop.is_cancelled() {
                    release(&shared, &handler, item.id, item.attempt, 0).await;
                } else {
                    // Its run stopped while it waited: the item is finished
                    // already, and nothing is recorded.
                    shared.forget_item(&handler.flow, item.id);
                }
                drop(permit);
                continue;
            }
            executions.spawn(execute(
                shared.clone(),
                handler.clone(),
                item,
                permit,
                completions.clone(),
            ));
        }
        if short && !after_short_claim(&shared, "i", &handler.key, seen, busy_poll).await {
            break;
        }
    }

    while executions.join_next().await.is_some() {}
    drop(completions);
    let _ = writer.await;
}

async fn release(shared: &Shared, handler: &ItemLoop, id: i64, attempt: i32, delay_ms: i32) {
    let result = shared
        .pool
        .query_rows(
            sql::RELEASE_MAP_TASK,
            &[&&*handler.flow, &id, &attempt, &delay_ms],
        )
        .await;
    if let Err(error) = result {
        tracing::warn!(flow = %handler.flow, step = %handler.step, item.id = id, %error,
            "could not give back a map item; it returns after its lease");
    }
    shared.forget_item(&handler.flow, id);
}

async fn execute(
    shared: Arc<Shared>,
    handler: Arc<ItemLoop>,
    item: ClaimedItem,
    permit: OwnedSemaphorePermit,
    completions: mpsc::Sender<Completion>,
) {
    let mut permit = Some(permit);
    let token = item.token.clone();
    let (id, run_id, attempt) = (item.id, item.flow_run_id, item.attempt);
    let watcher = tokio::spawn(watch_run(
        shared.clone(),
        handler.flow.clone(),
        run_id,
        token.clone(),
    ));

    let outcome = attempt_item(&shared, &handler, item, token).await;
    watcher.abort();
    let (flow, step) = (&*handler.flow, &*handler.step);
    match outcome {
        Supervised::Finished(Ok(output)) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_success();
            }
            let (recorded, written) = oneshot::channel();
            let sent = completions
                .send(Completion {
                    id,
                    attempt,
                    output,
                    recorded,
                })
                .await;
            // The slot is free once the writer has the result, and the
            // lease is renewed until the completion is durable.
            drop(permit.take());
            if sent.is_ok() {
                let _ = written.await;
            }
        }
        Supervised::Finished(Err(message)) => fail(&shared, &handler, id, attempt, message).await,
        Supervised::TimedOut => {
            let message = format!(
                "timed out: the handler exceeded its {:?} deadline",
                handler.opts.timeout
            );
            fail(&shared, &handler, id, attempt, message).await;
        }
        // The run stopped: its items were canceled with it.
        Supervised::Canceled => {
            tracing::debug!(flow, step, item.id = id, "item stopped with its flow run");
        }
        Supervised::Interrupted => release(&shared, &handler, id, attempt, 0).await,
    }

    shared.registry.untrack_step(flow, run_id, stop_key(id));
    shared.forget_item(flow, id);
    drop(permit);
}

async fn attempt_item(
    shared: &Shared,
    handler: &ItemLoop,
    item: ClaimedItem,
    token: CancellationToken,
) -> Supervised<JsonText> {
    if let Some(breaker) = &handler.breaker {
        if let Err(retry_after) = breaker.acquire() {
            let delay = i32::try_from(retry_after.as_millis().max(1)).unwrap_or(i32::MAX);
            tracing::debug!(flow = %handler.flow, step = %handler.step, item.id = item.id, delay_ms = delay,
                "circuit breaker is open; giving the item back");
            release(shared, handler, item.id, item.attempt, delay).await;
            // NOTE: reported as canceled so nothing else is recorded.
            return Supervised::Canceled;
        }
    }
    let mut dependencies = item.dependencies;
    let input = match &handler.mapped {
        Mapped::Input => item.item.clone(),
        Mapped::Dependency(source) => {
            dependencies.insert(source.to_string(), item.item.clone());
            item.input.unwrap_or(Value::Null)
        }
    };
    let args = StepArgs {
        step: handler.step.to_string(),
        input,
        signal: item.signal,
        dependencies,
        item: Some(item.item),
    };
    let context = StepContext {
        flow: handler.flow.clone(),
        step: handler.step.clone(),
        flow_run_id: item.flow_run_id,
        step_run_id: item.step_run_id,
        attempt: item.attempt,
        item_index: Some(item.index),
        pool: shared.pool.clone(),
        cancel: token.clone(),
    };
    supervise(
        tokio::spawn((handler.call)(args, context)),
        &token,
        &shared.hard_stop,
        handler.opts.timeout,
    )
    .await
}

async fn fail(shared: &Shared, handler: &ItemLoop, id: i64, attempt: i32, message: String) {
    if let Some(breaker) = &handler.breaker {
        breaker.record_failure();
    }
    let (flow, step) = (&*handler.flow, &*handler.step);
    let delay = retry_delay_ms(attempt, handler.opts.max_retries, &*handler.backoff);
    let never = CancellationToken::new();
    let result = with_retries("record a failed item attempt", &never, || async {
        shared
            .pool
            .query_rows(
                sql::FAIL_MAP_TASK,
                &[&flow, &id, &attempt, &message, &delay],
            )
            .await
    })
    .await;
    match (result, delay) {
        (Ok(_), Some(delay)) => tracing::warn!(flow, step, item.id = id, attempt, error = %message,
            retry_in_ms = delay, "item attempt failed; retrying"),
        (Ok(_), None) => tracing::error!(flow, step, item.id = id, attempt, error = %message,
            "item failed; failing its step and flow run"),
        (Err(error), _) => tracing::error!(flow, step, item.id = id, %error,
            "could not record a failed item attempt"),
    }
}

/// Writes item completions: whatever has arrived while the previous
/// statement ran goes into the next one, so a busy loop writes large
/// batches and an idle one adds no delay.
async fn write_completions(
    shared: Arc<Shared>,
    flow: Arc<str>,
    mut receiver: mpsc::Receiver<Completion>,
) {
    let never = CancellationToken::new();
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, COMPLETION_BATCH).await > 0 {
        let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
        let attempts: Vec<i32> = batch.iter().map(|c| c.attempt).collect();
        let outputs: Vec<&JsonText> = batch.iter().map(|c| &c.output).collect();
        let result = with_retries("complete map items", &never, || async {
            shared
                .pool
                .query_rows(
                    sql::COMPLETE_MAP_TASKS,
                    &[&&*flow, &ids, &attempts, &outputs],
                )
                .await
        })
        .await;
        let recorded: HashSet<i64> = match result {
            Ok(rows) => {
                shared
                    .vacuums
                    .record(&shared.pool, &format!("cb_m_{flow}"), rows.len());
                rows.iter().map(|row| row.get(0)).collect()
            }
            Err(error) => {
                tracing::error!(flow = %flow, count = ids.len(), %error,
                    "could not record item completions; the items run again after their lease");
                HashSet::new()
            }
        };
        if recorded.len() < ids.len() {
            tracing::debug!(flow = %flow, count = ids.len() - recorded.len(),
                "items were claimed again or their run stopped; their results are discarded");
        }
        for completion in batch.drain(..) {
            let _ = completion.recorded.send(recorded.contains(&completion.id));
        }
    }
}
