//! Wake-ups: one `LISTEN` connection per worker, fanned out to claim loops.
//!
//! The SQL functions notify the channel `cb_wake_channel()` with payloads
//! `<kind>|<name>|<rest>`. For work kinds (`t` task runs, `tf` task on-fail
//! work) `<rest>` is the work's visibility time in Unix seconds, empty for
//! "now"; the matching loop is woken at once or at that time. `tx` carries a
//! canceled run's id, whose handler is told to stop. Notifications are hints:
//! loops also poll, so a lost notification only delays work.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use catbird_core::{Executor, sql};

/// How long the listener waits before reconnecting.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How close two timed wake-ups of one loop may be before the later one is
/// folded into the earlier timer's successor: a wake-up at most this much
/// after a pending one is dropped, and the loop wakes at the pending time
/// and then polls on its own schedule.
const TIMER_COALESCE: Duration = Duration::from_millis(5);

/// How long a loop waits before it looks for work again after a request
/// found a sender with unannounced work still open. Each such request in a
/// row doubles it, up to [`PENDING_POLL_MAX`].
const PENDING_POLL_FIRST: Duration = Duration::from_millis(20);

/// The maximum wait between two polls of a loop while a sender with
/// unannounced work is open.
const PENDING_POLL_MAX: Duration = Duration::from_secs(1);

/// Wakes one claim loop, now or at a time.
#[derive(Debug, Default)]
pub(crate) struct LoopWaker {
    notify: Notify,
    /// How many wake-ups the loop got, so a claim can tell whether one came
    /// while it ran (see [`LoopWaker::wakes`]).
    wakes: AtomicU64,
    /// The pending timed wake-ups.
    pending: Mutex<BTreeSet<Instant>>,
    /// How many notifications for the loop's work the worker heard, plus
    /// one per lost listen connection. Each of them means the database's
    /// wake-up request for this work may be gone.
    heard: AtomicU64,
    /// The loop's wake-up request in `cb_wake_requests`.
    request: Mutex<RequestState>,
}

/// Whether a loop's wake-up request is stored or being stored.
#[derive(Debug, Default)]
struct RequestState {
    /// The `heard` count when the last request was stored. The request is
    /// valid while the count is unchanged.
    stored_at: Option<u64>,
    /// Whether a request statement is running.
    in_flight: bool,
    /// No request starts before this time: the last one found a sender with
    /// unannounced work still open, and the loop polls until it is gone.
    retry_at: Option<Instant>,
    /// How many requests in a row found such a sender.
    pending_streak: u32,
}

/// The result of a request statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestOutcome {
    /// The request is stored and no sender with unannounced work is open.
    Stored,
    /// The request is stored, but a sender with unannounced work is open.
    Pending,
    /// The statement failed.
    Failed,
}

impl LoopWaker {
    fn lock_request(&self) -> std::sync::MutexGuard<'_, RequestState> {
        self.request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that the loop's wake-up request may have been consumed. The
    /// loop may then request again at once: a notification means a sender
    /// found the last request, and without a new one the next sends would
    /// stay silent until the retry time.
    fn forget_request(&self) {
        let mut state = self.lock_request();
        self.heard.fetch_add(1, Ordering::AcqRel);
        state.retry_at = None;
        state.pending_streak = 0;
    }

    /// Returns whether the database contains this loop's wake-up request, so
    /// that new work notifies the worker.
    pub(crate) fn has_request(&self) -> bool {
        self.lock_request().stored_at == Some(self.heard.load(Ordering::Acquire))
    }

    /// Starts a request unless a valid one exists, one is being stored, or
    /// the retry time has not come. Returns the `heard` count to hand to
    /// [`LoopWaker::end_request`].
    fn begin_request(&self) -> Option<u64> {
        let mut state = self.lock_request();
        let heard = self.heard.load(Ordering::Acquire);
        let waiting = state.retry_at.is_some_and(|at| Instant::now() < at);
        if state.in_flight || waiting || state.stored_at == Some(heard) {
            return None;
        }
        state.in_flight = true;
        Some(heard)
    }

    /// Ends a request begun when `heard` was `since`. A stored request is
    /// valid unless a notification came since it began. Returns the time of
    /// the loop's next look for work after a pending one.
    fn end_request(&self, since: u64, outcome: RequestOutcome) -> Option<Instant> {
        let mut state = self.lock_request();
        state.in_flight = false;
        match outcome {
            RequestOutcome::Stored => {
                state.retry_at = None;
                state.pending_streak = 0;
                if self.heard.load(Ordering::Acquire) == since {
                    state.stored_at = Some(since);
                }
                None
            }
            RequestOutcome::Pending => {
                let delay = (PENDING_POLL_FIRST * 2u32.pow(state.pending_streak.min(6)))
                    .min(PENDING_POLL_MAX);
                state.pending_streak = state.pending_streak.saturating_add(1);
                let at = Instant::now() + delay;
                state.retry_at = Some(at);
                Some(at)
            }
            RequestOutcome::Failed => None,
        }
    }

    /// Wakes the loop now; a wake-up sent while the loop is busy is kept for
    /// its next wait.
    pub(crate) fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Returns how many wake-ups the loop got so far. A claim reads it
    /// before it starts. When the count changed by the time the claim came
    /// back short, work may have arrived after the claim's snapshot, so the
    /// loop claims again instead of waiting. The stored permit of
    /// [`LoopWaker::woken`] is not enough when two claims overlap, because
    /// the first to come back may use it up while the second still runs on
    /// an older snapshot.
    pub(crate) fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Acquire)
    }

    /// Waits for a wake-up.
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Wakes the loop at `at`. Each distinct time gets its own timer, so a
    /// later retry is not lost behind an earlier one; a time within 5 ms
    /// before a pending one is served by that timer.
    pub(crate) fn wake_at(self: &Arc<Self>, at: Instant) {
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if pending.range(at..=at + TIMER_COALESCE).next().is_some() {
                return;
            }
            pending.insert(at);
        }
        let waker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            waker
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&at);
            waker.wake();
        });
    }
}

/// The loops and running handlers a worker's notifications reach.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Whether the listen connection is up and listening.
    listening: AtomicBool,
    /// How many times the listen connection started listening.
    connections: AtomicU64,
    loops: Mutex<HashMap<String, Arc<LoopWaker>>>,
    running: Mutex<HashMap<(String, i64), CancellationToken>>,
    /// Cancellations that found no tracked handler. A claim registers its
    /// runs' tokens only after its statement returned, so a cancellation
    /// that commits right after the claim can arrive first. The claim then
    /// finds it here. This lock is taken after `running`, never before.
    canceled_untracked: Mutex<RecentIds>,
    /// Running steps per flow run: (flow, run id) -> step run id -> token.
    running_steps: Mutex<HashMap<(String, i64), HashMap<i64, CancellationToken>>>,
}

impl Registry {
    /// Whether the worker's listen connection is up, so that notifications
    /// reach its loops.
    pub(crate) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// How many times the listen connection started listening. A change
    /// means notifications may have been missed before it.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    fn set_listening(&self, listening: bool) {
        if listening {
            self.connections.fetch_add(1, Ordering::AcqRel);
        }
        self.listening.store(listening, Ordering::Release);
    }

    /// The waker of the loop for `kind` work of `name`, created on first use.
    pub(crate) fn waker(&self, kind: &str, name: &str) -> Arc<LoopWaker> {
        let mut loops = self
            .loops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loops.entry(format!("{kind}|{name}")).or_default().clone()
    }

    /// Wakes every loop, after a (re)connection when notifications may have
    /// been missed. Their wake-up requests may have been consumed by those
    /// notifications, so each loop requests again when it next waits.
    pub(crate) fn wake_all(&self) {
        let loops = self
            .loops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for waker in loops.values() {
            waker.forget_request();
            waker.wake();
        }
    }

    /// Returns how many cancellations without a tracked handler the worker
    /// heard so far. A claim reads it before its statement and passes it to
    /// [`Registry::track_claimed`].
    pub(crate) fn cancellations_heard(&self) -> u64 {
        self.canceled_untracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .count
    }

    /// Records the tokens of claimed runs of `kind`, fired when their run
    /// is canceled. A token whose cancellation arrived after the claim
    /// started (`since`, from [`Registry::cancellations_heard`]) but before
    /// this call is fired at once. Older cancellations are ignored: they
    /// cannot be for a run the claim took, and a table created again
    /// numbers its runs from 1, so an id can come back.
    pub(crate) fn track_claimed<'a>(
        &self,
        kind: &str,
        since: u64,
        claimed: impl IntoIterator<Item = (i64, &'a CancellationToken)>,
    ) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut canceled = self
            .canceled_untracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, token) in claimed {
            let key = (kind.to_owned(), id);
            if canceled.take_after(&key, since) {
                token.cancel();
            }
            running.insert(key, token.clone());
        }
    }

    /// Fires the token of a running handler, when its run turned out to be
    /// canceled without a notification reaching this worker.
    pub(crate) fn cancel_running(&self, kind: &str, id: i64) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(token) = running.get(&(kind.to_owned(), id)) {
            token.cancel();
        }
    }

    /// Forgets a handler that finished.
    pub(crate) fn untrack_running(&self, kind: &str, id: i64) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running.remove(&(kind.to_owned(), id));
    }

    /// Records the token of a running step, fired when its flow run stops.
    pub(crate) fn track_step(
        &self,
        flow: &str,
        run_id: i64,
        step_run_id: i64,
        token: CancellationToken,
    ) {
        let mut running = self
            .running_steps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running
            .entry((flow.to_owned(), run_id))
            .or_default()
            .insert(step_run_id, token);
    }

    /// Forgets a step that finished.
    pub(crate) fn untrack_step(&self, flow: &str, run_id: i64, step_run_id: i64) {
        let mut running = self
            .running_steps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (flow.to_owned(), run_id);
        if let Some(steps) = running.get_mut(&key) {
            steps.remove(&step_run_id);
            if steps.is_empty() {
                running.remove(&key);
            }
        }
    }

    /// Dispatches one notification payload.
    pub(crate) fn dispatch(&self, payload: &str) {
        let mut parts = payload.splitn(3, '|');
        let (Some(kind), Some(name), rest) =
            (parts.next(), parts.next(), parts.next().unwrap_or(""))
        else {
            return;
        };
        match kind {
            "fx" => {
                let Ok(run_id) = rest.parse::<i64>() else {
                    return;
                };
                let running = self
                    .running_steps
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(steps) = running.get(&(name.to_owned(), run_id)) {
                    tracing::debug!(
                        flow = name,
                        flow.run_id = run_id,
                        "flow run stopped; stopping its running steps"
                    );
                    for token in steps.values() {
                        token.cancel();
                    }
                }
            }
            "tx" => {
                let Ok(id) = rest.parse::<i64>() else { return };
                let running = self
                    .running
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let key = (format!("t|{name}"), id);
                if let Some(token) = running.get(&key) {
                    tracing::debug!(
                        task = name,
                        task.run_id = id,
                        "run canceled; stopping its handler"
                    );
                    token.cancel();
                } else {
                    self.canceled_untracked
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(key);
                }
            }
            _ => {
                let waker = {
                    let loops = self
                        .loops
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    loops.get(&format!("{kind}|{name}")).cloned()
                };
                let Some(waker) = waker else { return };
                if rest.is_empty() {
                    // Work for now consumed the loop's request.
                    waker.forget_request();
                    waker.wake();
                    return;
                }
                // Work for later notifies whether or not a request exists,
                // and leaves it in place.
                match visible_in(rest) {
                    Some(delay) if !delay.is_zero() => waker.wake_at(Instant::now() + delay),
                    _ => waker.wake(),
                }
            }
        }
    }
}

/// Stores the wake-up request of the loop for `kind` work of `name` in the
/// background, unless a valid one exists or the worker does not listen. Once the
/// statement succeeded, the loop is woken to look for work that committed
/// before the request.
///
/// When the database reports an open transaction that sent work without a
/// notification, the request is not valid. The loop then makes no new
/// request before it looks for work again after 20 ms, doubling with each
/// such report up to 1 s. A request that fails is only logged: the
/// loop then keeps polling at its short interval and tries again when it
/// next waits.
pub(crate) fn request_wake(
    pool: &deadpool_postgres::Pool,
    registry: &Registry,
    kind: &str,
    name: &str,
) {
    if !registry.is_listening() {
        return;
    }
    let waker = registry.waker(kind, name);
    let Some(since) = waker.begin_request() else {
        return;
    };
    let pool = pool.clone();
    let (kind, name) = (kind.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let outcome = match pool.query_rows(sql::REQUEST_WAKE, &[&kind, &name]).await {
            Ok(rows) if rows.first().is_some_and(|row| row.get::<_, bool>(0)) => {
                RequestOutcome::Pending
            }
            Ok(_) => RequestOutcome::Stored,
            Err(error) => {
                tracing::debug!(kind, name, %error, "could not request a wake-up; polling instead");
                RequestOutcome::Failed
            }
        };
        let retry_at = waker.end_request(since, outcome);
        if outcome == RequestOutcome::Failed {
            return;
        }
        // A request that a notification overtook may still be stored, and
        // work that committed before it sent nothing either way.
        waker.wake();
        if let Some(at) = retry_at {
            tracing::trace!(
                kind,
                name,
                "a sender with unannounced work is open; polling"
            );
            waker.wake_at(at);
        }
    });
}

/// How many cancellations without a tracked handler a worker remembers.
/// Every worker hears every cancellation, so most of these are runs of
/// other workers; a claim needs only the ones heard while it ran.
const RECENT_CANCELS: usize = 4_096;

/// Cancellations heard for runs with no tracked handler, each numbered in
/// the order heard, forgetting the oldest first.
#[derive(Debug, Default)]
struct RecentIds {
    order: VecDeque<(String, i64)>,
    heard: HashMap<(String, i64), u64>,
    /// How many cancellations were stored so far: the number of the last.
    count: u64,
}

impl RecentIds {
    fn insert(&mut self, key: (String, i64)) {
        self.count += 1;
        if self.heard.insert(key.clone(), self.count).is_none() {
            self.order.push_back(key);
        }
        if self.order.len() > RECENT_CANCELS {
            if let Some(oldest) = self.order.pop_front() {
                self.heard.remove(&oldest);
            }
        }
    }

    /// Returns whether `key` was canceled after the `since`-th stored
    /// cancellation, and forgets it then, so it never fires twice.
    fn take_after(&mut self, key: &(String, i64), since: u64) -> bool {
        match self.heard.get(key) {
            Some(&number) if number > since => {
                self.heard.remove(key);
                self.order.retain(|kept| kept != key);
                true
            }
            _ => false,
        }
    }
}

/// How long until a visibility time given in Unix seconds; `None` for an
/// empty or unreadable time, which means "now".
fn visible_in(epoch: &str) -> Option<Duration> {
    let seconds: f64 = epoch.parse().ok()?;
    if !seconds.is_finite() {
        // `infinity` visibility: nothing to wake for; polling covers it.
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    // A timer further out than a day only matters if nothing else wakes the
    // loop first, and polling does every few seconds.
    Duration::try_from_secs_f64((seconds - now).clamp(0.0, MAX_TIMER.as_secs_f64())).ok()
}

/// The longest timer a wake-up sets.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Holds the worker's `LISTEN` connection until `shutdown`, reconnecting
/// after a second whenever it fails. `connected` is fired after the first
/// successful `LISTEN`, or after the first failed attempt, so the worker
/// never waits for the listener to start.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    connected: tokio::sync::oneshot::Sender<()>,
) {
    let mut connected = Some(connected);
    let mut ever_listened = false;
    while !shutdown.is_cancelled() {
        let was_waiting = connected.is_some();
        let result = listen_once(&config, &channel, &registry, &shutdown, &mut connected).await;
        // listen_once fires `connected` once its LISTEN succeeded.
        if was_waiting && connected.is_none() {
            ever_listened = true;
        }
        if registry.is_listening() {
            // Loops waiting on a long fallback poll go back to short polls.
            registry.set_listening(false);
            registry.wake_all();
        }
        if let Err(error) = result {
            if let Some(sender) = connected.take() {
                let _ = sender.send(());
            }
            if ever_listened {
                tracing::warn!(%error, "worker lost its wake-up connection; reconnecting in 1 s");
            } else {
                tracing::warn!(%error, "worker could not listen for wake-ups; polling until it can");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    registry: &Arc<Registry>,
    shutdown: &CancellationToken,
    connected: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if sender.send(notification.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    });

    let quoted = channel.replace('"', "\"\"");
    client
        .batch_execute(&format!("LISTEN \"{quoted}\""))
        .await?;
    tracing::debug!(channel, "listening for wake-ups");
    registry.set_listening(true);
    if let Some(sender) = connected.take() {
        let _ = sender.send(());
    }
    // Work may have arrived while the listener was away.
    registry.wake_all();

    let mut driver = driver;
    loop {
        tokio::select! {
            payload = notifications.recv() => match payload {
                Some(payload) => registry.dispatch(&payload),
                None => break,
            },
            finished = &mut driver => {
                return match finished {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Ok(()),
                };
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_stands_until_work_heard() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        let since = waker.begin_request().expect("no request yet");
        assert_eq!(waker.begin_request(), None, "one request at a time");
        assert_eq!(waker.end_request(since, RequestOutcome::Stored), None);
        assert!(waker.has_request());
        assert_eq!(waker.begin_request(), None, "a standing request is kept");

        registry.dispatch("t|other|");
        assert!(waker.has_request(), "other work leaves it alone");
        registry.dispatch("t|echo|");
        assert!(!waker.has_request(), "the notification consumed it");
    }

    #[test]
    fn notification_during_request_voids_it() {
        let registry = Registry::default();
        let waker = registry.waker("s", "flow.step");
        let since = waker.begin_request().expect("no request yet");
        registry.dispatch("s|flow.step|");
        waker.end_request(since, RequestOutcome::Stored);
        assert!(!waker.has_request());
        assert!(
            waker.begin_request().is_some(),
            "the loop may request again"
        );
    }

    #[test]
    fn failed_request_can_be_retried() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        let since = waker.begin_request().expect("no request yet");
        assert_eq!(waker.end_request(since, RequestOutcome::Failed), None);
        assert!(!waker.has_request());
        assert!(waker.begin_request().is_some());
    }

    #[test]
    fn pending_request_backs_off() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        let mut delays = Vec::new();
        for _ in 0..8 {
            let before = Instant::now();
            // A retry time in the future blocks the next request.
            let retry_at = waker.lock_request().retry_at;
            if let Some(at) = retry_at {
                assert_eq!(waker.begin_request(), None, "no request before its retry");
                waker.lock_request().retry_at = Some(before.min(at));
            }
            let since = waker.begin_request().expect("the retry time passed");
            let at = waker
                .end_request(since, RequestOutcome::Pending)
                .expect("a pending request sets a retry time");
            assert!(!waker.has_request(), "a pending request does not stand");
            delays.push((at - before).as_millis());
        }
        assert!(delays[0] >= 20, "{delays:?}");
        assert!(delays[0] < 40, "{delays:?}");
        assert!(
            delays.windows(2).all(|pair| pair[1] >= pair[0]),
            "{delays:?}"
        );
        assert!(*delays.last().unwrap() <= 1_000, "{delays:?}");
        assert!(*delays.last().unwrap() >= 990, "{delays:?}");

        registry.dispatch("t|echo|");
        assert_eq!(
            waker.lock_request().retry_at,
            None,
            "a notification ends the wait"
        );
        let since = waker.begin_request().expect("no retry time");
        assert_eq!(waker.end_request(since, RequestOutcome::Stored), None);
        assert!(waker.has_request(), "a stored request resets the backoff");
        assert_eq!(waker.lock_request().pending_streak, 0);
    }

    #[test]
    fn lost_connection_forgets_requests() {
        let registry = Registry::default();
        let waker = registry.waker("i", "flow.step");
        let since = waker.begin_request().expect("no request yet");
        waker.end_request(since, RequestOutcome::Stored);
        registry.wake_all();
        assert!(!waker.has_request());
    }

    #[tokio::test]
    async fn later_work_keeps_the_request() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        let since = waker.begin_request().expect("no request yet");
        waker.end_request(since, RequestOutcome::Stored);
        let before = waker.wakes();
        let in_an_hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 3600.0;
        registry.dispatch(&format!("t|echo|{in_an_hour}"));
        assert!(waker.has_request(), "work for later consumes no request");
        assert_eq!(waker.wakes(), before, "the loop sleeps until the timer");

        registry.dispatch("t|echo|Infinity");
        assert!(waker.has_request(), "an unusable time consumes no request");
        assert_eq!(waker.wakes(), before + 1, "an unusable time wakes the loop");
    }

    #[test]
    fn empty_time_means_now() {
        assert_eq!(visible_in(""), None);
        assert_eq!(visible_in("garbage"), None);
    }

    #[test]
    fn infinite_or_huge_times_set_no_panicking_timer() {
        assert_eq!(visible_in("Infinity"), None);
        assert_eq!(visible_in("inf"), None);
        assert_eq!(visible_in("NaN"), None);
        assert_eq!(visible_in("1e300"), Some(MAX_TIMER));
    }

    #[test]
    fn past_time_means_now() {
        assert_eq!(visible_in("1000.5"), Some(Duration::ZERO));
    }

    #[test]
    fn future_time_gives_the_delay() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let delay = visible_in(&format!("{}", now + 60.0)).unwrap();
        assert!(
            delay > Duration::from_secs(59) && delay <= Duration::from_secs(60),
            "{delay:?}"
        );
    }

    #[tokio::test]
    async fn dispatch_wakes_the_matching_loop() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        registry.dispatch("t|echo|");
        tokio::time::timeout(Duration::from_secs(1), waker.woken())
            .await
            .unwrap();
    }

    #[test]
    fn wakes_count_every_wake_up() {
        let registry = Registry::default();
        let waker = registry.waker("t", "echo");
        let before = waker.wakes();
        registry.dispatch("t|echo|");
        registry.dispatch("t|other|");
        registry.wake_all();
        assert_eq!(waker.wakes(), before + 2);
    }

    #[tokio::test]
    async fn dispatch_cancels_a_running_handler() {
        let registry = Registry::default();
        let token = CancellationToken::new();
        registry.track_claimed("t|echo", registry.cancellations_heard(), [(7, &token)]);
        registry.dispatch("tx|echo|8");
        assert!(!token.is_cancelled());
        registry.dispatch("tx|echo|7");
        assert!(token.is_cancelled());
    }

    #[test]
    fn cancel_during_claim_fires_token() {
        let registry = Registry::default();
        let since = registry.cancellations_heard();
        registry.dispatch("tx|echo|9");
        let token = CancellationToken::new();
        let other = CancellationToken::new();
        registry.track_claimed("t|echo", since, [(9, &token), (10, &other)]);
        assert!(token.is_cancelled());
        assert!(!other.is_cancelled());
    }

    #[test]
    fn cancel_before_claim_is_ignored() {
        // A recreated task numbers its runs from 1 again: an old
        // cancellation of run 9 must not cancel the new run 9.
        let registry = Registry::default();
        registry.dispatch("tx|echo|9");
        let since = registry.cancellations_heard();
        let token = CancellationToken::new();
        registry.track_claimed("t|echo", since, [(9, &token)]);
        assert!(!token.is_cancelled());
    }

    #[test]
    fn stored_cancel_fires_once() {
        let registry = Registry::default();
        let since = registry.cancellations_heard();
        registry.dispatch("tx|echo|9");
        let first = CancellationToken::new();
        registry.track_claimed("t|echo", since, [(9, &first)]);
        let second = CancellationToken::new();
        registry.track_claimed("t|echo", since, [(9, &second)]);
        assert!(first.is_cancelled());
        assert!(!second.is_cancelled());
    }

    #[test]
    fn recent_cancellations_are_bounded() {
        let mut recent = RecentIds::default();
        for id in 0..(RECENT_CANCELS as i64 + 10) {
            recent.insert(("t|echo".to_owned(), id));
        }
        assert_eq!(recent.order.len(), RECENT_CANCELS);
        assert_eq!(recent.heard.len(), RECENT_CANCELS);
        assert!(!recent.take_after(&("t|echo".to_owned(), 0), 0));
        assert!(recent.take_after(&("t|echo".to_owned(), RECENT_CANCELS as i64 + 9), 0));
    }
}
