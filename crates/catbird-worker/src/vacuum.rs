//! Vacuuming of the tables a worker churns.
//!
//! Every claim and completion of a run leaves a dead row version and dead
//! index entries behind. Those entries gather at the head of the claim
//! index, where every claim starts to scan, and autovacuum's launcher visits
//! a database at most once per `autovacuum_naptime` (a minute by default).
//! Over that minute a busy task's claims slow down severalfold. A worker
//! therefore vacuums a table itself once it has finished enough runs in it:
//! the `VACUUM` removes the dead entries and the emptied index pages, and
//! claims are fast again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How many runs a worker finishes in a table before it vacuums it.
const MIN_CHANGES: u64 = 5_000;

/// The shortest time between two vacuums of one table by one worker.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// A vacuum waits at least this many times its previous duration after it,
/// so vacuuming takes at most about 5 % of the time of one connection.
const COST_FACTOR: u32 = 20;

/// The vacuums of one worker.
pub(crate) struct Vacuums {
    enabled: bool,
    /// Fires once the worker stops: running vacuums are cancelled and no
    /// new one starts.
    stop: CancellationToken,
    state: Arc<Mutex<HashMap<String, TableState>>>,
    running: Mutex<JoinSet<()>>,
}

/// The vacuum state of one table in one worker.
struct TableState {
    /// Runs finished since the last vacuum started.
    changes: u64,
    /// When the last vacuum ended, or when the worker first wrote here.
    last_end: Instant,
    /// How long the last vacuum took.
    last_cost: Duration,
    /// A vacuum of this table is running.
    busy: bool,
    /// Whether the worker's role may vacuum the table, `None` until checked.
    allowed: Option<bool>,
}

/// Returns whether a table is due for a vacuum.
fn due(changes: u64, since_last: Duration, last_cost: Duration) -> bool {
    changes >= MIN_CHANGES && since_last >= MIN_INTERVAL.max(last_cost * COST_FACTOR)
}

/// Quotes a table name as an SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Asks whether the current role may vacuum `table`: its owner, a member
/// of the owner's role, the database owner or a superuser.
const MAY_VACUUM: &str = "\
SELECT coalesce(pg_has_role(c.relowner, 'USAGE'), false)
    OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
    OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_class c WHERE c.oid = to_regclass($1)";

impl Vacuums {
    /// Creates the vacuums of a worker. With `enabled` false,
    /// [`Vacuums::record`] does nothing.
    pub(crate) fn new(enabled: bool) -> Self {
        Vacuums {
            enabled,
            stop: CancellationToken::new(),
            state: Arc::new(Mutex::new(HashMap::new())),
            running: Mutex::new(JoinSet::new()),
        }
    }

    /// Counts `changes` runs finished in `table` and starts a vacuum of it
    /// in the background when it is due. It does not wait for the vacuum.
    pub(crate) fn record(&self, pool: &deadpool_postgres::Pool, table: &str, changes: usize) {
        if !self.enabled || changes == 0 || self.stop.is_cancelled() {
            return;
        }
        let start = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let entry = state.entry(table.to_owned()).or_insert(TableState {
                changes: 0,
                last_end: now,
                last_cost: Duration::ZERO,
                busy: false,
                allowed: None,
            });
            entry.changes += changes as u64;
            let start = !entry.busy
                && entry.allowed != Some(false)
                && due(entry.changes, now - entry.last_end, entry.last_cost);
            if start {
                entry.busy = true;
                entry.changes = 0;
            }
            start.then_some(entry.allowed)
        };
        let Some(allowed) = start else {
            return;
        };
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while running.try_join_next().is_some() {}
        running.spawn(vacuum_and_record(
            self.state.clone(),
            pool.clone(),
            table.to_owned(),
            allowed,
            self.stop.clone(),
        ));
    }

    /// Starts no more vacuums, cancels the running ones and waits for them
    /// to end.
    pub(crate) async fn finish(&self) {
        self.stop.cancel();
        let mut running = std::mem::take(
            &mut *self
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        while running.join_next().await.is_some() {}
    }
}

/// Vacuums `table` and records the outcome and its duration in `state`.
async fn vacuum_and_record(
    state: Arc<Mutex<HashMap<String, TableState>>>,
    pool: deadpool_postgres::Pool,
    table: String,
    allowed: Option<bool>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let outcome = vacuum(&pool, &table, allowed, &stop).await;
    let cost = started.elapsed();

    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(entry) = state.get_mut(&table) else {
        return;
    };
    entry.busy = false;
    entry.last_end = Instant::now();
    entry.last_cost = cost;
    match outcome {
        Ok(Outcome::Vacuumed) => {
            entry.allowed = Some(true);
            tracing::debug!(table = %table, elapsed_ms = cost.as_millis(), "vacuumed a busy table");
        }
        Ok(Outcome::NotAllowed) => {
            entry.allowed = Some(false);
            tracing::info!(table = %table,
                "the worker's role may not vacuum this table; autovacuum alone cleans it up");
        }
        Ok(Outcome::Cancelled(reason)) => {
            entry.allowed = Some(true);
            tracing::info!(table = %table, reason, elapsed_ms = cost.as_millis(),
                "cancelled the vacuum of a busy table");
        }
        Err(error) => {
            tracing::warn!(table = %table, %error, "could not vacuum a busy table");
        }
    }
}

/// The end of one vacuum of one table.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The table was vacuumed, or skipped because another vacuum held it.
    Vacuumed,
    /// The worker's role may not vacuum the table; nothing was done.
    NotAllowed,
    /// The vacuum was cancelled: a session waited for a lock on the table,
    /// the worker stopped, or the vacuum ran past [`MAX_DURATION`].
    Cancelled(&'static str),
}

/// How often a running vacuum checks for sessions waiting on the table.
const WAITER_CHECK: Duration = Duration::from_millis(200);

/// How long a vacuum may run before the worker cancels it. A B-tree vacuum
/// waits without limit for a page another session keeps pinned, for
/// example through an open cursor.
const MAX_DURATION: Duration = Duration::from_secs(60);

/// Counts the sessions waiting for a lock on a table itself. Waits for a
/// row's lock or for the lock that extends the table also name the table in
/// `pg_locks`, but a vacuum blocks neither, and under a slow disk they come
/// and go all the time. A database copied from this one has tables with
/// the same oids, so waiters in other databases do not count.
const LOCK_WAITERS: &str = "SELECT count(*) FROM pg_locks \
     WHERE NOT granted AND locktype = 'relation' AND relation = to_regclass($1) \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Vacuums `table`, unless another vacuum is running on it.
///
/// A running vacuum gives way as autovacuum does: when a session waits for
/// a lock on the table (a `DROP TABLE` from `cb_delete_task`, say), the
/// worker cancels its vacuum, because every later statement on the table
/// would queue behind that session. It also cancels it when `stop` fires
/// or after [`MAX_DURATION`]. The cancellation goes through another pooled
/// connection with `pg_cancel_backend`, which works whatever TLS the pool
/// uses, and the vacuum's connection returns to the pool only once its
/// statement has ended.
async fn vacuum(
    pool: &deadpool_postgres::Pool,
    table: &str,
    allowed: Option<bool>,
    stop: &CancellationToken,
) -> Result<Outcome, String> {
    let client = pool.get().await.map_err(|error| error.to_string())?;
    if allowed.is_none() {
        let row = client
            .query_opt(MAY_VACUUM, &[&table])
            .await
            .map_err(|error| error.to_string())?;
        let Some(row) = row else {
            return Err("the table does not exist".to_owned());
        };
        if row.get::<_, Option<bool>>(0) != Some(true) {
            return Ok(Outcome::NotAllowed);
        }
    }

    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|error| error.to_string())?
        .get(0);
    // TRUNCATE false: truncating the table's empty tail would take an
    // exclusive lock on a table that claims and completions use all the
    // time. SKIP_LOCKED: another vacuum of the table does the same job.
    let statement = format!(
        "VACUUM (INDEX_CLEANUP ON, TRUNCATE false, SKIP_LOCKED) {}",
        quote_identifier(table)
    );

    let run = client.batch_execute(&statement);
    tokio::pin!(run);
    let deadline = tokio::time::sleep(MAX_DURATION);
    tokio::pin!(deadline);
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + WAITER_CHECK, WAITER_CHECK);
    let reason = loop {
        tokio::select! {
            result = &mut run => {
                result.map_err(|error| error.to_string())?;
                return Ok(Outcome::Vacuumed);
            }
            () = stop.cancelled() => break "the worker stopped",
            () = &mut deadline => break "the vacuum ran too long",
            _ = check.tick() => {
                if lock_waiters(pool, table).await > 0 {
                    break "a session waited for a lock on the table";
                }
            }
        }
    };

    match pool.get().await {
        Ok(other) => {
            if let Err(error) = other
                .query_one("SELECT pg_cancel_backend($1)", &[&pid])
                .await
            {
                tracing::warn!(table = %table, %error, "could not cancel a vacuum");
            }
        }
        Err(error) => tracing::warn!(table = %table, %error, "could not cancel a vacuum"),
    }
    // The statement ends with a cancellation error, or on its own if it
    // finished first.
    let _ = run.await;
    Ok(Outcome::Cancelled(reason))
}

/// Returns how many sessions wait for a lock on `table`, 0 when that cannot
/// be read.
async fn lock_waiters(pool: &deadpool_postgres::Pool, table: &str) -> i64 {
    let Ok(client) = pool.get().await else {
        return 0;
    };
    client
        .query_one(LOCK_WAITERS, &[&table])
        .await
        .map_or(0, |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_changes_are_never_due() {
        assert!(!due(
            MIN_CHANGES - 1,
            Duration::from_secs(3600),
            Duration::ZERO
        ));
    }

    #[test]
    fn vacuums_wait_the_minimum_interval() {
        assert!(!due(MIN_CHANGES, Duration::from_secs(1), Duration::ZERO));
        assert!(due(MIN_CHANGES, MIN_INTERVAL, Duration::ZERO));
    }

    #[test]
    fn slow_vacuums_space_out() {
        let cost = Duration::from_millis(500);
        assert!(!due(MIN_CHANGES * 10, Duration::from_secs(9), cost));
        assert!(due(MIN_CHANGES * 10, Duration::from_secs(10), cost));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("cb_t_send"), "\"cb_t_send\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
