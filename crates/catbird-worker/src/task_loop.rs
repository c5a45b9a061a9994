//! The claim loops of one task handler: runs, and on-fail work.

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use catbird_core::{Executor, JsonText, sql};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{BackoffStrategy, FullJitter};
use crate::breaker::CircuitBreakerStrategy;
use crate::options::HandlerOpts;
use crate::retry::with_retries;
use crate::task::{CallFn, OnFailFn, TaskContext, TaskFailure, TaskHandler};
use crate::wake::{LoopWaker, request_wake};
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
    /// The registry key of this task's running handlers, `t|<task>`.
    running_key: String,
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
    /// The run's priority: the backlog starts runs in claim order.
    priority: i32,
    /// Whether the run waited for an execution slot after its claim, so it
    /// may have been canceled in the meantime.
    waited: bool,
    /// Fires when the run is canceled, from its claim on.
    token: CancellationToken,
    /// When the status was last re-read, if ever.
    checked_at: Option<Instant>,
    /// The listen connection count when the claim started, when the worker
    /// was listening then. While that connection still listens, every
    /// cancellation since the claim has reached the run's token, so the run
    /// starts without re-reading its status.
    listened_on: Option<u64>,
}

/// How long a re-read status of a waiting run stays good: a run checked
/// together with an earlier one starts without another read within this
/// time. A cancellation in that window reaches the handler through its
/// token, once the notification arrives.
const STATUS_CHECK_FRESH: Duration = Duration::from_millis(20);

/// Starts the loops of `handler`: one for runs, one for on-fail work when
/// the handler has an on-fail function.
pub(crate) fn spawn(shared: &Arc<Shared>, handler: TaskHandler, loops: &mut JoinSet<()>) {
    let name: Arc<str> = Arc::from(handler.definition.name.as_str());
    let run_handler = Arc::new(RunHandler {
        running_key: format!("t|{name}"),
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

/// Waits until a wake-up newer than the count `seen` (read from the loop's
/// waker before its last claim started), the fallback delay or shutdown.
/// Returns false on shutdown. Wake-ups that the claim's snapshot already
/// covered are ignored, so a claim that took the announced work is not
/// followed by one that finds nothing. A wake-up that came while the claim
/// ran ends the wait at once, because its work may postdate the snapshot.
pub(crate) async fn idle_since(
    shared: &Shared,
    kind: &str,
    name: &str,
    seen: u64,
    fallback: Duration,
) -> bool {
    let waker = shared.registry.waker(kind, name);
    request_wake(&shared.pool, &shared.registry, kind, name);
    let deadline = Instant::now() + fallback;
    loop {
        if waker.wakes() != seen {
            return true;
        }
        tokio::select! {
            () = waker.woken() => {}
            () = tokio::time::sleep_until(deadline) => return true,
            () = shared.shutdown.cancelled() => return false,
        }
    }
}

/// Waits after a short claim: `busy_poll` unless it is zero (see
/// [`HandlerOpts::busy_poll`](crate::HandlerOpts#structfield.busy_poll)),
/// else until a wake-up (see [`idle_since`]). Returns false on shutdown.
pub(crate) async fn after_short_claim(
    shared: &Shared,
    kind: &str,
    name: &str,
    seen: u64,
    busy_poll: Duration,
) -> bool {
    if busy_poll.is_zero() {
        idle_since(shared, kind, name, seen, IDLE_POLL).await
    } else {
        tokio::select! {
            () = tokio::time::sleep(busy_poll) => true,
            () = shared.shutdown.cancelled() => false,
        }
    }
}

/// How long an idle run loop waits before it polls without a wake-up.
///
/// Without a healthy listen connection, or before the loop's wake-up request
/// is stored, that is [`IDLE_POLL`]. While the worker listens and the
/// request is valid, every new, retried or released run notifies it, and
/// `next_visible` (from `cb_next_task_visible_in`) says when the next known
/// run becomes visible. The poll then only catches
/// runs that become claimable silently after that check, when the lease of
/// a worker that died runs out, so it comes once per lease (between
/// `IDLE_POLL` and [`LISTENING_POLL`]), less up to 10 % jitter so that the
/// loops of one worker spread their polls. Losing the listen connection
/// wakes every loop, which then polls at `IDLE_POLL` again.
fn idle_wait(shared: &Shared, waker: &LoopWaker, next_visible: Option<Duration>) -> Duration {
    if !shared.registry.is_listening() || !waker.has_request() {
        return IDLE_POLL;
    }
    let base = shared.lease.clamp(IDLE_POLL, LISTENING_POLL);
    let poll = base - base.mul_f64(rand::random::<f64>() / 10.0);
    next_visible.map_or(poll, |delay| delay.min(poll))
}

/// The longest fallback poll of an idle run loop while the worker listens.
const LISTENING_POLL: Duration = Duration::from_secs(60);

/// Asks when the next run of the loop's task becomes visible. `None` when no
/// run is waiting, or when the question failed (the fallback poll covers
/// that).
async fn next_visible_in(shared: &Shared, task: &str) -> Option<Duration> {
    match shared
        .pool
        .query_opt_row(sql::NEXT_TASK_VISIBLE_IN, &[&task])
        .await
    {
        Ok(row) => row
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        Err(error) => {
            tracing::debug!(task, %error, "could not read when the next run becomes visible");
            None
        }
    }
}

/// Waits after a failed poll, longer with each consecutive failure. Returns
/// false on shutdown.
pub(crate) async fn pause_after_error(shared: &Shared, failures: u32) -> bool {
    let delay = error_pause(failures);
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shared.shutdown.cancelled() => false,
    }
}

/// Runs at most this many results through one completion or failure
/// statement.
const MAX_RESULTS_PER_WRITE: usize = 1_000;

/// The claim loop of one task handler.
///
/// It keeps up to `concurrency + 2 * batch_size` runs in the worker: the
/// executing ones plus a backlog claimed ahead, so claims overlap the
/// executions. A claim asks for at most `batch_size` runs. While claims come
/// back full, two run at once (`SKIP LOCKED` keeps them apart), because a
/// claim's cost hardly depends on its size. When a claim returns fewer runs
/// than it asked for, the task has no more visible work and the loop waits
/// for a wake-up before it claims again, or only for the handler's busy
/// poll when it has one and the claim before also returned runs. Results go
/// to the recorder task,
/// which writes them in batches.
async fn run_loop(shared: Arc<Shared>, handler: Arc<RunHandler>) {
    let concurrency = handler.opts.concurrency;
    let batch_size = handler.opts.batch_size.max(1);
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let (results, results_receiver) = mpsc::channel(handler.opts.result_queue_capacity());
    let recorder = tokio::spawn(record_loop(
        shared.clone(),
        handler.clone(),
        results_receiver,
    ));
    let mut executions = JoinSet::new();
    let mut backlog: VecDeque<ClaimedRun> = VecDeque::new();
    // Each claim comes back with the waker's count from before it started.
    let mut claims: JoinSet<(u64, ClaimResult)> = JoinSet::new();
    // Runs asked for by the claims in flight.
    let mut claiming = 0;
    let mut last_claim_full = false;
    // Whether the last claim returned runs.
    let mut last_claim_had_runs = false;
    let max_held = concurrency + 2 * batch_size;
    // When set, no claim starts before this time, or before a wake-up when
    // `wake_ends_wait` is also set.
    let mut wait_until: Option<Instant> = None;
    let mut wake_ends_wait = false;
    // The waker's count when the current wait began: only a newer wake-up
    // ends it, so a permit stored by one the last claim already served
    // does not cost a claim that finds nothing.
    let mut wait_seen = 0;
    let mut failures = 0;
    // The listen connection count at the last cb_next_task_visible_in call.
    let mut checked_for_connection: Option<u64> = None;
    // When the next run known to the loop becomes visible.
    let mut next_visible_at: Option<Instant> = None;
    let waker = shared.registry.waker("t", &handler.name);

    loop {
        while executions.try_join_next().is_some() {}
        if wait_until.is_some_and(|at| at <= Instant::now()) {
            wait_until = None;
        }

        let running = concurrency - semaphore.available_permits();
        let held = backlog.len() + running + claiming;
        let room = max_held.saturating_sub(held);
        // A first claim takes whatever fits; a second one in parallel only
        // while claims come back full, only for a whole batch, and never
        // with a single slot, whose runs must start in claim order.
        let start_claim = match claims.len() {
            0 => room > 0,
            1 => last_claim_full && room >= batch_size && concurrency > 1,
            _ => false,
        };
        if start_claim && wait_until.is_none() {
            let quantity = room.min(batch_size);
            claiming += quantity;
            let wakes = waker.wakes();
            let claim = claim_runs(shared.clone(), handler.clone(), quantity);
            claims.spawn(async move { (wakes, claim.await) });
        }

        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            Some(joined) = claims.join_next() => {
                let (wakes_before, claimed) = match joined {
                    Ok(joined) => joined,
                    Err(error) => {
                        // The quantity of a claim that panicked is unknown;
                        // none is in flight once the set is empty.
                        tracing::error!(task = %handler.name, %error, "a claim ended unexpectedly");
                        if claims.is_empty() {
                            claiming = 0;
                        }
                        (0, Err((0, catbird_core::Error::InvalidArgument(format!("the claim ended unexpectedly: {error}")))))
                    }
                };
                match claimed {
                    Ok((quantity, runs)) => {
                        failures = 0;
                        claiming -= quantity;
                        last_claim_full = runs.len() == quantity;
                        // A wake-up since the claim started may be for a run
                        // its snapshot missed: claim again rather than wait.
                        // After two claims with runs in a row the loop is
                        // busy: it claims again after its busy poll, with
                        // no wake-up request.
                        let busy = last_claim_had_runs && !runs.is_empty();
                        last_claim_had_runs = !runs.is_empty();
                        let busy_poll = handler.opts.busy_poll_or(Duration::ZERO);
                        if busy && runs.len() < quantity && !busy_poll.is_zero() {
                            wait_until = Some(Instant::now() + busy_poll);
                            wake_ends_wait = false;
                        } else if runs.len() < quantity && waker.wakes() == wakes_before {
                            request_wake(&shared.pool, &shared.registry, "t", &handler.name);
                            let connections = shared.registry.connections();
                            if shared.registry.is_listening() && checked_for_connection != Some(connections) {
                                checked_for_connection = Some(connections);
                                // A run visible now was locked by another
                                // claimer: look again after the short poll.
                                next_visible_at = next_visible_in(&shared, &handler.name)
                                    .await
                                    .map(|delay| Instant::now() + if delay.is_zero() { IDLE_POLL } else { delay });
                            }
                            let now = Instant::now();
                            let next_visible = next_visible_at
                                .filter(|at| *at > now)
                                .map(|at| at - now);
                            wait_until = Some(now + idle_wait(&shared, &waker, next_visible));
                            wake_ends_wait = true;
                            wait_seen = wakes_before;
                        }
                        // Runs beyond the free slots wait in the backlog,
                        // where a cancellation may overtake them.
                        let free = semaphore.available_permits().saturating_sub(backlog.len());
                        backlog.extend(runs.into_iter().enumerate().map(|(index, mut run)| {
                            run.waited = index >= free;
                            run
                        }));
                        // Two claims in parallel may return out of order:
                        // keep the backlog in claim order.
                        backlog
                            .make_contiguous()
                            .sort_by_key(|run| (std::cmp::Reverse(run.priority), run.id));
                    }
                    Err((quantity, error)) => {
                        failures += 1;
                        claiming -= quantity;
                        last_claim_full = false;
                        last_claim_had_runs = false;
                        tracing::warn!(task = %handler.name, %error, "could not claim runs");
                        wait_until = Some(Instant::now() + error_pause(failures));
                        wake_ends_wait = false;
                    }
                }
            }
            permit = semaphore.clone().acquire_owned(), if !backlog.is_empty() => {
                let permit = permit.expect("the semaphore is never closed");
                let mut run = backlog.pop_front().expect("guarded by the branch condition");
                if needs_status_check(&shared, &run) {
                    check_waiting_runs(&shared, &handler, &mut run, &mut backlog).await;
                }
                executions.spawn(execute(shared.clone(), handler.clone(), run, permit, results.clone()));
            }
            () = waker.woken(), if wait_until.is_some() && wake_ends_wait => {
                if waker.wakes() != wait_seen {
                    wait_until = None;
                }
            }
            () = sleep_until_opt(wait_until), if wait_until.is_some() => {
                wait_until = None;
            }
        }
    }

    // Shutdown: claims in flight still finish, so their runs are given back
    // with the rest of the backlog.
    while let Some(joined) = claims.join_next().await {
        if let Ok((_, Ok((_, runs)))) = joined {
            backlog.extend(runs);
        }
    }
    release_unstarted(&shared, &handler.name, backlog.into_iter().collect()).await;
    while executions.join_next().await.is_some() {}
    drop(results);
    if let Err(error) = recorder.await {
        tracing::error!(task = %handler.name, %error, "the result recorder of a task stopped unexpectedly");
    }
}

/// The quantity a claim asked for, with the runs it got or its error.
type ClaimResult = Result<(usize, Vec<ClaimedRun>), (usize, catbird_core::Error)>;

/// Claims up to `quantity` runs and returns the quantity asked for with the
/// runs. The claimed runs are held for lease renewal and get a cancellation
/// token at once, so a cancellation that arrives before they start reaches
/// them.
async fn claim_runs(shared: Arc<Shared>, handler: Arc<RunHandler>, quantity: usize) -> ClaimResult {
    let lease_ms = shared.lease_ms();
    let asked = i32::try_from(quantity).unwrap_or(i32::MAX);
    let listened_on = shared
        .registry
        .is_listening()
        .then(|| shared.registry.connections());
    let cancellations_before = shared.registry.cancellations_heard();
    let rows = shared
        .pool
        .query_rows(sql::CLAIM_TASKS, &[&&*handler.name, &asked, &lease_ms])
        .await
        .map_err(|error| (quantity, error))?;
    let runs: Vec<ClaimedRun> = rows
        .iter()
        .map(|row| {
            let headers: Option<Value> = row.get("headers");
            ClaimedRun {
                id: row.get("id"),
                priority: row.get("priority"),
                input: row.get("input"),
                headers: match headers {
                    Some(Value::Object(map)) => Some(map),
                    _ => None,
                },
                attempt: row.get("attempts"),
                waited: false,
                token: shared.hard_stop.child_token(),
                checked_at: None,
                listened_on,
            }
        })
        .collect();
    shared.hold_many(&handler.name, runs.iter().map(|run| run.id));
    shared.registry.track_claimed(
        &handler.running_key,
        cancellations_before,
        runs.iter().map(|run| (run.id, &run.token)),
    );
    tracing::trace!(task = %handler.name, count = runs.len(), "claimed runs");
    Ok((quantity, runs))
}

/// How long a loop waits after its `failures`-th consecutive failed poll.
pub(crate) fn error_pause(failures: u32) -> Duration {
    FullJitter::new(Duration::from_millis(250), Duration::from_secs(5))
        .delay(failures.saturating_sub(1))
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
        shared
            .registry
            .untrack_running(&format!("t|{task}"), run.id);
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

/// A result waiting to be written by the recorder.
struct Finished {
    id: i64,
    attempt: i32,
    result: FinishedResult,
}

enum FinishedResult {
    Succeeded(JsonText),
    /// A failed attempt, with the retry delay in milliseconds, `None` when
    /// no retry is left.
    Failed {
        message: String,
        retry_delay: Option<i32>,
    },
}

async fn execute(
    shared: Arc<Shared>,
    handler: Arc<RunHandler>,
    run: ClaimedRun,
    permit: OwnedSemaphorePermit,
    results: mpsc::Sender<Finished>,
) {
    let id = run.id;
    let attempt = run.attempt;
    let span = tracing::info_span!("task_run", task = %handler.name, task.run_id = id, attempt);
    let outcome = {
        let _entered = span.enter();
        tracing::trace!("attempt starting");
        drop(_entered);
        attempt_run(&shared, &handler, run).await
    };
    shared.registry.untrack_running(&handler.running_key, id);

    let result = match outcome {
        Outcome::Succeeded(output) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_success();
            }
            FinishedResult::Succeeded(output)
        }
        Outcome::Failed(message) => {
            if let Some(breaker) = &handler.breaker {
                breaker.record_failure();
            }
            let retry_delay = retry_delay_ms(attempt, handler.opts.max_retries, &*handler.backoff);
            FinishedResult::Failed {
                message,
                retry_delay,
            }
        }
        Outcome::Canceled => {
            tracing::debug!(task = %handler.name, task.run_id = id, attempt,
                "run was canceled; its result is discarded");
            shared.forget(&handler.name, id);
            return;
        }
        Outcome::Interrupted => {
            release_interrupted(&shared, &handler.name, id, attempt).await;
            shared.forget(&handler.name, id);
            return;
        }
    };
    // The slot is free once the result is queued: the recorder writes it,
    // and the run stays held (its lease renewed) until then.
    drop(permit);
    if results
        .send(Finished {
            id,
            attempt,
            result,
        })
        .await
        .is_err()
    {
        tracing::error!(task = %handler.name, task.run_id = id, attempt,
            "the result recorder stopped; the run is retried after its lease");
        shared.forget(&handler.name, id);
    }
}

async fn release_interrupted(shared: &Shared, name: &str, id: i64, attempt: i32) {
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

async fn attempt_run(shared: &Shared, handler: &RunHandler, run: ClaimedRun) -> Outcome {
    let token = run.token;
    if shared.hard_stop.is_cancelled() {
        return Outcome::Interrupted;
    }
    if token.is_cancelled() {
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

/// Returns whether a run about to start must have its status re-read. That
/// is so when it waited for an execution slot (it may have been canceled
/// meanwhile), the worker has not listened on one connection since its
/// claim (a cancellation notification may have been missed), and no read of
/// the last 20 ms covered it.
fn needs_status_check(shared: &Shared, run: &ClaimedRun) -> bool {
    let notified =
        shared.registry.is_listening() && run.listened_on == Some(shared.registry.connections());
    run.waited
        && !notified
        && !run.token.is_cancelled()
        && run
            .checked_at
            .is_none_or(|checked_at| checked_at.elapsed() >= STATUS_CHECK_FRESH)
}

/// Re-reads, with one statement, whether `run` and the runs waiting in the
/// backlog are still started, and fires the token of each one that is not,
/// so it is skipped when it starts. A failed read counts as "not canceled":
/// the attempts then run, and a result of a canceled run is discarded.
async fn check_waiting_runs(
    shared: &Shared,
    handler: &RunHandler,
    run: &mut ClaimedRun,
    backlog: &mut VecDeque<ClaimedRun>,
) {
    let ids: Vec<i64> = std::iter::once(run.id)
        .chain(
            backlog
                .iter()
                .filter(|waiting| waiting.waited)
                .map(|waiting| waiting.id),
        )
        .collect();
    match shared
        .pool
        .query_rows(sql::STARTED_TASK_RUNS, &[&&*handler.name, &ids])
        .await
    {
        Ok(rows) => {
            let started: HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
            let now = Instant::now();
            for checked in
                std::iter::once(run).chain(backlog.iter_mut().filter(|waiting| waiting.waited))
            {
                checked.checked_at = Some(now);
                if !started.contains(&checked.id) {
                    tracing::debug!(task = %handler.name, task.run_id = checked.id, "run was canceled before it started");
                    checked.token.cancel();
                }
            }
        }
        Err(error) => {
            tracing::warn!(task = %handler.name, count = ids.len(), %error,
                "could not check whether waiting runs were canceled; starting them");
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

/// Writes the results of one handler's attempts: everything that arrived
/// while the previous writes ran goes into the next one, so under load one
/// commit records many runs, and an idle handler's result is written at
/// once. Up to [`WRITES_IN_FLIGHT`] writes run at once. A result counts only
/// once its statement has committed; until then the run stays held and its
/// lease renewed.
async fn record_loop(
    shared: Arc<Shared>,
    handler: Arc<RunHandler>,
    mut results: mpsc::Receiver<Finished>,
) {
    let mut writes = JoinSet::new();
    loop {
        if writes.len() >= WRITES_IN_FLIGHT {
            writes.join_next().await;
        }
        let mut batch = Vec::new();
        if results.recv_many(&mut batch, MAX_RESULTS_PER_WRITE).await == 0 {
            break;
        }
        writes.spawn(write_results(shared.clone(), handler.clone(), batch));
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
}

/// How many result writes of one handler run at once.
const WRITES_IN_FLIGHT: usize = 2;

async fn write_results(shared: Arc<Shared>, handler: Arc<RunHandler>, batch: Vec<Finished>) {
    let (succeeded, failed): (Vec<Finished>, Vec<Finished>) = batch
        .into_iter()
        .partition(|finished| matches!(finished.result, FinishedResult::Succeeded(_)));
    if !succeeded.is_empty() {
        write_completions(&shared, &handler, succeeded).await;
    }
    if !failed.is_empty() {
        write_failures(&shared, &handler, failed).await;
    }
}

async fn write_completions(shared: &Shared, handler: &RunHandler, finished: Vec<Finished>) {
    let name = &*handler.name;
    let mut ids = Vec::with_capacity(finished.len());
    let mut attempts = Vec::with_capacity(finished.len());
    let mut outputs = Vec::with_capacity(finished.len());
    for item in finished {
        if let FinishedResult::Succeeded(output) = item.result {
            ids.push(item.id);
            attempts.push(item.attempt);
            outputs.push(output);
        }
    }
    // Bookkeeping must land even during shutdown; only an unreachable
    // database ends its retries.
    let never = CancellationToken::new();
    let result = with_retries("complete runs", &never, || async {
        shared
            .pool
            .query_rows(sql::COMPLETE_TASKS, &[&name, &ids, &attempts, &outputs])
            .await
    })
    .await;
    match result {
        Ok(rows) => {
            shared
                .vacuums
                .record(&shared.pool, &format!("cb_t_{name}"), rows.len());
            let completed: HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
            for (id, attempt) in ids.iter().zip(&attempts) {
                if completed.contains(id) {
                    tracing::debug!(task = name, task.run_id = id, attempt, "run completed");
                } else {
                    tracing::debug!(
                        task = name,
                        task.run_id = id,
                        attempt,
                        "run was canceled, expired or claimed again; its result is discarded"
                    );
                }
            }
        }
        Err(error) => {
            tracing::error!(task = name, count = ids.len(), first_run_id = ids.first(), %error,
            "could not record completions; the runs are retried after their lease")
        }
    }
    shared.forget_many(name, &ids);
}

async fn write_failures(shared: &Shared, handler: &RunHandler, finished: Vec<Finished>) {
    let name = &*handler.name;
    let mut ids = Vec::with_capacity(finished.len());
    let mut attempts = Vec::with_capacity(finished.len());
    let mut messages = Vec::with_capacity(finished.len());
    let mut delays = Vec::with_capacity(finished.len());
    for item in finished {
        if let FinishedResult::Failed {
            message,
            retry_delay,
        } = item.result
        {
            ids.push(item.id);
            attempts.push(item.attempt);
            messages.push(message);
            delays.push(retry_delay);
        }
    }
    let never = CancellationToken::new();
    let result = with_retries("record failed attempts", &never, || async {
        shared
            .pool
            .query_rows(
                sql::FAIL_TASKS,
                &[&name, &ids, &attempts, &messages, &delays],
            )
            .await
    })
    .await;
    match result {
        Ok(rows) => {
            shared
                .vacuums
                .record(&shared.pool, &format!("cb_t_{name}"), rows.len());
            let waker = shared.registry.waker("t", name);
            for (((id, attempt), message), delay) in
                ids.iter().zip(&attempts).zip(&messages).zip(&delays)
            {
                match delay {
                    Some(delay) => {
                        tracing::warn!(task = name, task.run_id = id, attempt, error = %message,
                            retry_in_ms = delay, "attempt failed; retrying");
                        // The statement notifies only the earliest retry
                        // time; this loop wakes for each of its own.
                        let delay = Duration::from_millis(u64::try_from(*delay).unwrap_or(0));
                        waker.wake_at(Instant::now() + delay);
                    }
                    None => {
                        tracing::error!(task = name, task.run_id = id, attempt, error = %message,
                        "run failed")
                    }
                }
            }
        }
        Err(error) => {
            tracing::error!(task = name, count = ids.len(), first_run_id = ids.first(), %error,
            "could not record failed attempts; the runs are retried after their lease")
        }
    }
    shared.forget_many(name, &ids);
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
        let seen = shared.registry.waker("tf", &handler.name).wakes();
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
            if idle_since(&shared, "tf", &handler.name, seen, IDLE_POLL_ON_FAIL).await {
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
