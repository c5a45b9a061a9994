//! The claim loops of one task handler: runs, and on-fail work.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use catbird_core::{Executor, JsonText, sql};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{BackoffStrategy, FullJitter};
use crate::breaker::CircuitBreakerStrategy;
use crate::options::HandlerOpts;
use crate::retry::with_retries;
use crate::task::{CallFn, OnFailFn, TaskContext, TaskFailure, TaskHandler};
use crate::worker::Shared;

/// How long an idle run loop waits for a wake-up before it polls again.
pub(crate) const IDLE_POLL: Duration = Duration::from_secs(2);

/// How long an idle on-fail loop waits before it polls again.
pub(crate) const IDLE_POLL_ON_FAIL: Duration = Duration::from_millis(500);

/// How long a handler may keep running after its cancellation token fired
/// at the end of the shutdown grace period, before it is aborted.
const ABORT_AFTER_HARD_STOP: Duration = Duration::from_secs(1);

struct RunHandler {
    name: Arc<str>,
    call: CallFn,
    opts: HandlerOpts,
    backoff: Arc<dyn BackoffStrategy>,
    breaker: Option<Arc<dyn CircuitBreakerStrategy>>,
}

struct OnFailHandler {
    name: Arc<str>,
    call: OnFailFn,
    opts: HandlerOpts,
    backoff: Arc<dyn BackoffStrategy>,
}

/// A run as `cb_claim_tasks` returns it.
struct ClaimedRun {
    id: i64,
    input: Value,
    headers: Option<Map<String, Value>>,
    attempt: i32,
    /// Whether the run waited for an execution slot after its claim, so it
    /// may have been canceled in the meantime.
    waited: bool,
}

/// Starts the loops of `handler`: one for runs, one for on-fail work when
/// the handler has an on-fail function.
pub(crate) fn spawn(shared: &Arc<Shared>, handler: TaskHandler, loops: &mut JoinSet<()>) {
    let name: Arc<str> = Arc::from(handler.definition.name.as_str());
    let run_handler = Arc::new(RunHandler {
        name: name.clone(),
        call: handler.call,
        backoff: handler.opts.build_backoff(),
        breaker: handler.opts.build_breaker(),
        opts: handler.opts,
    });
    // Register the waker now, before the listener connects.
    shared.registry.waker("t", &name);
    loops.spawn(run_loop(shared.clone(), run_handler));

    if let Some(on_fail) = handler.on_fail {
        shared.registry.waker("tf", &name);
        let on_fail = Arc::new(OnFailHandler {
            name,
            call: on_fail.call,
            backoff: on_fail.opts.build_backoff(),
            opts: on_fail.opts,
        });
        loops.spawn(on_fail_loop(shared.clone(), on_fail));
    }
}

/// Waits for a wake-up, the fallback delay or shutdown. Returns false on
/// shutdown.
pub(crate) async fn idle(shared: &Shared, kind: &str, name: &str, fallback: Duration) -> bool {
    let waker = shared.registry.waker(kind, name);
    tokio::select! {
        () = waker.woken() => true,
        () = tokio::time::sleep(fallback) => true,
        () = shared.shutdown.cancelled() => false,
    }
}

/// Waits after a failed poll, longer with each consecutive failure. Returns
/// false on shutdown.
pub(crate) async fn pause_after_error(shared: &Shared, failures: u32) -> bool {
    let delay = FullJitter::new(Duration::from_millis(250), Duration::from_secs(5))
        .delay(failures.saturating_sub(1));
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shared.shutdown.cancelled() => false,
    }
}

async fn run_loop(shared: Arc<Shared>, handler: Arc<RunHandler>) {
    let semaphore = Arc::new(Semaphore::new(handler.opts.concurrency));
    let quantity = i32::try_from(handler.opts.batch_size).unwrap_or(i32::MAX);
    let mut executions = JoinSet::new();
    let mut failures = 0;

    'claiming: loop {
        // Claim only when an execution slot is free.
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shared.shutdown.cancelled() => break,
        };
        while executions.try_join_next().is_some() {}

        let lease_ms = shared.lease_ms();
        let rows = match shared
            .pool
            .query_rows(sql::CLAIM_TASKS, &[&&*handler.name, &quantity, &lease_ms])
            .await
        {
            Ok(rows) => {
                failures = 0;
                rows
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(task = %handler.name, %error, "could not claim runs");
                drop(permit);
                if pause_after_error(&shared, failures).await {
                    continue;
                }
                break;
            }
        };
        if rows.is_empty() {
            drop(permit);
            if idle(&shared, "t", &handler.name, IDLE_POLL).await {
                continue;
            }
            break;
        }

        let runs: Vec<ClaimedRun> = rows
            .iter()
            .map(|row| {
                let headers: Option<Value> = row.get("headers");
                ClaimedRun {
                    id: row.get("id"),
                    input: row.get("input"),
                    headers: match headers {
                        Some(Value::Object(map)) => Some(map),
                        _ => None,
                    },
                    attempt: row.get("attempts"),
                    waited: false,
                }
            })
            .collect();
        for run in &runs {
            shared.hold(&handler.name, run.id);
        }
        tracing::trace!(task = %handler.name, count = runs.len(), "claimed runs");

        let mut permit = Some(permit);
        let mut pending = runs.into_iter();
        while let Some(mut run) = pending.next() {
            let free = permit
                .take()
                .or_else(|| semaphore.clone().try_acquire_owned().ok());
            let permit = match free {
                Some(permit) => permit,
                None => tokio::select! {
                    permit = semaphore.clone().acquire_owned() => {
                        run.waited = true;
                        permit.expect("the semaphore is never closed")
                    }
                    () = shared.shutdown.cancelled() => {
                        let unstarted: Vec<ClaimedRun> = std::iter::once(run).chain(pending).collect();
                        release_unstarted(&shared, &handler.name, unstarted).await;
                        break 'claiming;
                    }
                },
            };
            executions.spawn(execute(shared.clone(), handler.clone(), run, permit));
        }
    }

    while executions.join_next().await.is_some() {}
}

/// Gives claimed runs that never started back, so other workers take them at
/// once instead of after the lease.
async fn release_unstarted(shared: &Shared, task: &str, runs: Vec<ClaimedRun>) {
    for run in runs {
        let zero = 0i32;
        if let Err(error) = shared
            .pool
            .query_rows(sql::RELEASE_TASK, &[&task, &run.id, &run.attempt, &zero])
            .await
        {
            tracing::warn!(task, task.run_id = run.id, %error, "could not give back an unstarted run; it returns after its lease");
        }
        shared.forget(task, run.id);
    }
}

/// How one attempt ended.
enum Outcome {
    Succeeded(JsonText),
    Failed(String),
    /// The run was canceled while it ran; its result is discarded.
    Canceled,
    /// The worker stopped before the handler finished.
    Interrupted,
}

async fn execute(
    shared: Arc<Shared>,
    handler: Arc<RunHandler>,
    run: ClaimedRun,
    permit: OwnedSemaphorePermit,
) {
    let token = shared.hard_stop.child_token();
    let running_key = format!("t|{}", handler.name);
    shared
        .registry
        .track_running(&running_key, run.id, token.clone());

    let id = run.id;
    let attempt = run.attempt;
    let span = tracing::info_span!("task_run", task = %handler.name, task.run_id = id, attempt);
    let outcome = {
        let _entered = span.enter();
        tracing::trace!("attempt starting");
        drop(_entered);
        attempt_run(&shared, &handler, run, token).await
    };
    record(&shared, &handler, id, attempt, outcome).await;

    shared.registry.untrack_running(&running_key, id);
    shared.forget(&handler.name, id);
    drop(permit);
}

async fn attempt_run(
    shared: &Shared,
    handler: &RunHandler,
    run: ClaimedRun,
    token: CancellationToken,
) -> Outcome {
    if run.waited && canceled_while_waiting(shared, handler, run.id).await {
        tracing::debug!(task = %handler.name, task.run_id = run.id, "run was canceled before it started");
        return Outcome::Canceled;
    }

    if let Some(breaker) = &handler.breaker {
        if let Err(retry_after) = breaker.acquire() {
            let delay = i32::try_from(retry_after.as_millis().max(1)).unwrap_or(i32::MAX);
            tracing::debug!(task = %handler.name, task.run_id = run.id, ?retry_after, "circuit breaker is open; giving the run back");
            let result = shared
                .pool
                .query_rows(
                    sql::RELEASE_TASK,
                    &[&&*handler.name, &run.id, &run.attempt, &delay],
                )
                .await;
            if let Err(error) = result {
                tracing::warn!(task = %handler.name, task.run_id = run.id, %error, "could not give back a refused run; it returns after its lease");
            }
            return Outcome::Canceled;
        }
    }

    let context = TaskContext {
        task: handler.name.clone(),
        run_id: run.id,
        attempt: run.attempt,
        headers: run.headers,
        pool: shared.pool.clone(),
        cancel: token.clone(),
    };
    let timeout = handler.opts.timeout;
    let outcome = supervise(
        tokio::spawn((handler.call)(run.input, context)),
        &token,
        &shared.hard_stop,
        timeout,
    )
    .await;
    match outcome {
        Supervised::Finished(Ok(output)) => Outcome::Succeeded(output),
        Supervised::Finished(Err(message)) => Outcome::Failed(message),
        Supervised::TimedOut => Outcome::Failed(format!(
            "timed out: the handler exceeded its {timeout:?} deadline"
        )),
        Supervised::Canceled => Outcome::Canceled,
        Supervised::Interrupted => Outcome::Interrupted,
    }
}

/// Checks whether a run that waited for an execution slot is still
/// started. A failed check counts as "not canceled": the attempt then runs,
/// and its result is discarded if the run was canceled after all.
async fn canceled_while_waiting(shared: &Shared, handler: &RunHandler, id: i64) -> bool {
    match shared
        .pool
        .query_opt_row(sql::TASK_RUN_STATUS, &[&&*handler.name, &id])
        .await
    {
        Ok(Some(row)) => row.get::<_, String>(0) != "started",
        Ok(None) => true,
        Err(error) => {
            tracing::warn!(task = %handler.name, task.run_id = id, %error,
                "could not check whether a waiting run was canceled; starting it");
            false
        }
    }
}

/// How a supervised handler future ended.
pub(crate) enum Supervised<T> {
    /// It returned (or panicked, which is reported as an error message).
    Finished(Result<T, String>),
    /// It reached its deadline and was aborted.
    TimedOut,
    /// Its token fired (the run was canceled) and it then ended.
    Canceled,
    /// The worker's grace period ended and it was aborted.
    Interrupted,
}

/// Waits for a spawned handler: enforces the deadline (firing the token and
/// aborting the task), catches panics, and after the worker's grace period
/// ends aborts a handler that ignores its token.
pub(crate) async fn supervise<T: Send + 'static>(
    mut handle: tokio::task::JoinHandle<Result<T, anyhow::Error>>,
    token: &CancellationToken,
    hard_stop: &CancellationToken,
    timeout: Duration,
) -> Supervised<T> {
    // A deadline too far away to represent is no deadline.
    let deadline = (!timeout.is_zero())
        .then(|| Instant::now().checked_add(timeout))
        .flatten();
    let mut abort_at: Option<Instant> = None;
    let mut token_seen = false;
    loop {
        tokio::select! {
            joined = &mut handle => {
                let finished = match joined {
                    Ok(Ok(output)) => Ok(output),
                    Ok(Err(error)) => Err(storable_message(format!("{error:#}"))),
                    Err(error) if error.is_panic() => {
                        Err(storable_message(format!("panic: {}", panic_message(error.into_panic()))))
                    }
                    Err(_) => Err("the handler was aborted".to_owned()),
                };
                if hard_stop.is_cancelled() && finished.is_err() {
                    return Supervised::Interrupted;
                }
                if token_seen && !hard_stop.is_cancelled() {
                    return Supervised::Canceled;
                }
                return Supervised::Finished(finished);
            }
            () = sleep_until_opt(deadline) => {
                token.cancel();
                stop_handler(handle).await;
                return Supervised::TimedOut;
            }
            () = token.cancelled(), if !token_seen => {
                token_seen = true;
                if hard_stop.is_cancelled() {
                    abort_at = Some(Instant::now() + ABORT_AFTER_HARD_STOP);
                }
            }
            // A token that fired earlier (the run was canceled) leaves the
            // branch above disabled, so the grace period's end is seen here.
            () = hard_stop.cancelled(), if token_seen && abort_at.is_none() => {
                abort_at = Some(Instant::now() + ABORT_AFTER_HARD_STOP);
            }
            () = sleep_until_opt(abort_at) => {
                stop_handler(handle).await;
                return Supervised::Interrupted;
            }
        }
    }
}

/// Aborts a handler task and waits until its future has been dropped, so
/// the attempt has really stopped (its destructors have run) before the run
/// is failed or given back and another attempt can start.
async fn stop_handler<T>(handle: tokio::task::JoinHandle<T>) {
    handle.abort();
    // The join result is the cancellation, or the value if the handler
    // finished just before the abort; the attempt's outcome is already
    // decided either way.
    let _ = handle.await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The delay before retrying a failed attempt number `attempt` (1-based), or
/// `None` when no retry is left: a run executes at most `max_retries + 1`
/// times.
pub(crate) fn retry_delay_ms(
    attempt: i32,
    max_retries: u32,
    backoff: &dyn BackoffStrategy,
) -> Option<i32> {
    let retries_left = u32::try_from(attempt).unwrap_or(u32::MAX) <= max_retries;
    retries_left.then(|| {
        let retry = u32::try_from(attempt - 1).unwrap_or(0);
        i32::try_from(backoff.delay(retry).as_millis()).unwrap_or(i32::MAX)
    })
}

/// Replaces NUL characters, which PostgreSQL text cannot store, so recording
/// the failure never fails (a failure that cannot be recorded would be run
/// again after every lease).
pub(crate) fn storable_message(message: String) -> String {
    if message.contains('\0') {
        message.replace('\0', "\u{FFFD}")
    } else {
        message
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Writes the outcome of one attempt.
async fn record(shared: &Shared, handler: &RunHandler, id: i64, attempt: i32, outcome: Outcome) {
    let name = &*handler.name;
    // Bookkeeping must land even during shutdown; only an unreachable
    // database ends its retries.
    let never = CancellationToken::new();
    match outcome {
        Outcome::Succeeded(output) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_success();
            }
            let result = with_retries("complete a run", &never, || async {
                shared
                    .pool
                    .query_rows(sql::COMPLETE_TASK, &[&name, &id, &attempt, &output])
                    .await
            })
            .await;
            match result {
                Ok(rows) if rows.first().is_some_and(|row| row.get::<_, bool>(0)) => {
                    tracing::debug!(task = name, task.run_id = id, attempt, "run completed");
                }
                Ok(_) => tracing::debug!(
                    task = name,
                    task.run_id = id,
                    attempt,
                    "run was canceled, expired or claimed again; its result is discarded"
                ),
                Err(error) => tracing::error!(task = name, task.run_id = id, attempt, %error,
                    "could not record the completion; the run is retried after its lease"),
            }
        }
        Outcome::Failed(message) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_failure();
            }
            let delay = retry_delay_ms(attempt, handler.opts.max_retries, &*handler.backoff);
            let result = with_retries("record a failed attempt", &never, || async {
                shared
                    .pool
                    .query_rows(sql::FAIL_TASK, &[&name, &id, &attempt, &message, &delay])
                    .await
            })
            .await;
            match (result, delay) {
                (Ok(_), Some(delay)) => {
                    tracing::warn!(task = name, task.run_id = id, attempt, error = %message,
                    retry_in_ms = delay, "attempt failed; retrying")
                }
                (Ok(_), None) => {
                    tracing::error!(task = name, task.run_id = id, attempt, error = %message,
                    "run failed")
                }
                (Err(error), _) => tracing::error!(task = name, task.run_id = id, attempt, %error,
                    "could not record a failed attempt; the run is retried after its lease"),
            }
        }
        Outcome::Canceled => {
            tracing::debug!(
                task = name,
                task.run_id = id,
                attempt,
                "run was canceled; its result is discarded"
            );
        }
        Outcome::Interrupted => {
            let zero = 0i32;
            if let Err(error) = shared
                .pool
                .query_rows(sql::RELEASE_TASK, &[&name, &id, &attempt, &zero])
                .await
            {
                tracing::warn!(task = name, task.run_id = id, %error,
                    "could not give back an interrupted run; it returns after its lease");
            } else {
                tracing::info!(
                    task = name,
                    task.run_id = id,
                    "worker stopped during the run; gave it back"
                );
            }
        }
    }
}

/// A failed run as `cb_claim_task_on_fail` returns it.
struct ClaimedFailure {
    input: Value,
    failure: TaskFailure,
}

async fn on_fail_loop(shared: Arc<Shared>, handler: Arc<OnFailHandler>) {
    let semaphore = Arc::new(Semaphore::new(handler.opts.concurrency));
    let quantity = i32::try_from(handler.opts.batch_size).unwrap_or(i32::MAX);
    let mut executions = JoinSet::new();
    let mut failures = 0;

    loop {
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shared.shutdown.cancelled() => break,
        };
        drop(permit);
        let available = i32::try_from(semaphore.available_permits())
            .unwrap_or(1)
            .clamp(1, quantity);
        while executions.try_join_next().is_some() {}

        let lease_ms = shared.lease_ms();
        let rows = match shared
            .pool
            .query_rows(
                sql::CLAIM_TASK_ON_FAIL,
                &[&&*handler.name, &available, &lease_ms],
            )
            .await
        {
            Ok(rows) => {
                failures = 0;
                rows
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(task = %handler.name, %error, "could not claim on-fail work");
                if pause_after_error(&shared, failures).await {
                    continue;
                }
                break;
            }
        };
        if rows.is_empty() {
            if idle(&shared, "tf", &handler.name, IDLE_POLL_ON_FAIL).await {
                continue;
            }
            break;
        }

        for row in rows {
            let started_at: DateTime<Utc> = row.get("started_at");
            let claimed = ClaimedFailure {
                input: row.get("input"),
                failure: TaskFailure {
                    task_name: handler.name.to_string(),
                    task_run_id: row.get("id"),
                    error_message: row
                        .get::<_, Option<String>>("error_message")
                        .unwrap_or_default(),
                    attempts: row.get("attempts"),
                    on_fail_attempts: row.get("on_fail_attempts"),
                    started_at,
                    failed_at: row.get("failed_at"),
                    concurrency_key: row.get("concurrency_key"),
                },
            };
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            executions.spawn(execute_on_fail(
                shared.clone(),
                handler.clone(),
                claimed,
                permit,
            ));
        }
    }

    while executions.join_next().await.is_some() {}
}

async fn execute_on_fail(
    shared: Arc<Shared>,
    handler: Arc<OnFailHandler>,
    claimed: ClaimedFailure,
    permit: OwnedSemaphorePermit,
) {
    let name = &*handler.name;
    let id = claimed.failure.task_run_id;
    let on_fail_attempt = claimed.failure.on_fail_attempts;
    let token = shared.hard_stop.child_token();
    let call = (handler.call)(claimed.input, claimed.failure);
    let spawned = tokio::spawn(async move { call.await.map(|()| Value::Null) });
    let outcome = supervise(spawned, &token, &shared.hard_stop, handler.opts.timeout).await;

    let never = CancellationToken::new();
    let error = match outcome {
        Supervised::Finished(Ok(_)) => None,
        Supervised::Finished(Err(message)) => Some(message),
        Supervised::TimedOut => Some(format!(
            "timed out: the on-fail handler exceeded its {:?} deadline",
            handler.opts.timeout
        )),
        Supervised::Canceled | Supervised::Interrupted => {
            // Left to its lease: another worker claims the on-fail work again.
            drop(permit);
            return;
        }
    };

    match error {
        None => {
            let result = with_retries("complete on-fail work", &never, || async {
                shared
                    .pool
                    .query_rows(sql::COMPLETE_TASK_ON_FAIL, &[&name, &id, &on_fail_attempt])
                    .await
            })
            .await;
            if let Err(error) = result {
                tracing::error!(task = name, task.run_id = id, %error, "could not record on-fail success");
            }
        }
        Some(message) => {
            let delay =
                retry_delay_ms(on_fail_attempt, handler.opts.max_retries, &*handler.backoff);
            let result = with_retries("record a failed on-fail attempt", &never, || async {
                shared
                    .pool
                    .query_rows(
                        sql::FAIL_TASK_ON_FAIL,
                        &[&name, &id, &on_fail_attempt, &message, &delay],
                    )
                    .await
            })
            .await;
            match result {
                Ok(_) if delay.is_some() => {
                    tracing::warn!(task = name, task.run_id = id, on_fail_attempt,
                    error = %message, "on-fail handler failed; retrying")
                }
                Ok(_) => {
                    tracing::error!(task = name, task.run_id = id, on_fail_attempt, error = %message,
                    "on-fail handler failed; giving up")
                }
                Err(error) => tracing::error!(task = name, task.run_id = id, %error,
                    "could not record a failed on-fail attempt"),
            }
        }
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::FullJitter;

    #[test]
    fn retry_delay_allows_max_retries_plus_one_executions() {
        let backoff = FullJitter::new(Duration::from_millis(10), Duration::from_millis(20));
        assert!(retry_delay_ms(1, 2, &backoff).is_some());
        assert!(retry_delay_ms(2, 2, &backoff).is_some());
        assert_eq!(retry_delay_ms(3, 2, &backoff), None);
        assert_eq!(retry_delay_ms(1, 0, &backoff), None);
    }

    #[test]
    fn storable_message_replaces_nul() {
        assert_eq!(storable_message("a\0b".to_owned()), "a\u{FFFD}b");
        assert_eq!(storable_message("plain".to_owned()), "plain");
    }
}
