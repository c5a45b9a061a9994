//! `idle`: the load an idle worker with 20 task handlers puts on the
//! database.
//!
//! The count is the growth of `xact_commit + xact_rollback` in
//! `pg_stat_database` for the bench database over the window, minus the
//! measuring connection's own transaction. Each autocommit statement is one
//! transaction, so for a worker that sends single statements this is its
//! statement count.
//!
//! PostgreSQL 15 publishes a backend's counters at most once a second, and a
//! backend that goes idle right after a transaction publishes it up to 10 s
//! later (`PGSTAT_MIN_INTERVAL` and `PGSTAT_IDLE_INTERVAL` in `pgstat.c`).
//! The transactions of earlier scenarios would then land in the
//! window, so the scenario first closes the bench pool's connections (a
//! backend publishes its counters when it exits) and never uses a pooled
//! connection before the window.
//!
//! Autovacuum's transactions count too. A window in which autovacuum
//! vacuumed or analyzed a table is measured again, up to three windows, and
//! the parameters say whether the reported one had autovacuum in it.
//!
//! NOTE: the worker's own counters reach the window up to 10 s late, and
//! autovacuum's counters may be published after the window in which it
//! ran. The figure is therefore an estimate to about one statement per
//! second over a 20 s window, and a rough one over the 2 s windows of
//! `--quick`.

use std::time::Duration;

use catbird_core::task::get_task;
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Bench;
use crate::report::Figure;

/// Task handlers of the idle worker.
const HANDLERS: usize = 20;

/// Time between the worker's start and the window. The worker starts with
/// about 60 statements (task definitions, registration, a first claim and
/// a next-visible check per handler). Their backends then go idle, and
/// PostgreSQL 15 publishes an idle backend's counters up to 10 s later.
/// With a 5 s settle those statements landed in the window: the scenario
/// reported about 6.4 statements/s while the statement log showed one
/// heartbeat every 10 s.
const SETTLE: Duration = Duration::from_secs(12);

/// Windows tried at most: a window in which autovacuum ran is measured
/// again, because autovacuum's own transactions (one per table, catalogs
/// included) can outnumber the worker's.
const WINDOWS: usize = 3;

/// The transactions of the bench database, and how many times autovacuum
/// has vacuumed or analyzed one of its tables, in one transaction.
const SNAPSHOT: &str = "SELECT \
     (SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
      WHERE datname = current_database()), \
     (SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint \
      FROM pg_stat_all_tables)";

/// Starts an idle worker, lets it settle and counts its transactions.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let settle = SETTLE;
    let window = if bench.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(20)
    };
    // Close the idle connections of earlier scenarios, so their counters are
    // published now and not during the window.
    drop(bench.pool.retain(|_, _| false));
    // A pool of its own, so no other part of the bench shares its
    // connections.
    let pool = catbird_core::pool_from_url(&bench.url, 8)?;
    let names: Vec<String> = (0..HANDLERS)
        .map(|i| format!("bench_idle_{i:02}"))
        .collect();
    let mut worker = Worker::new(pool).listen_url(&bench.url);
    for name in &names {
        worker = worker.task(TaskHandler::new(
            name.as_str(),
            |_: serde_json::Value, _ctx: TaskContext| async move { Ok::<_, anyhow::Error>(()) },
        ));
    }
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.start(shutdown.clone()));

    let measured = measure(bench, &names, settle, window).await;
    shutdown.cancel();
    running.await??;
    let measured = measured?;

    Ok(vec![Figure::new(
        "idle",
        "idle worker, 20 task handlers",
        measured.per_second,
        "statements/s",
        json!({
            "handlers": HANDLERS,
            "settle_seconds": settle.as_secs_f64(),
            "window_seconds": window.as_secs_f64(),
            "windows_tried": measured.windows,
            "autovacuum_in_window": measured.autovacuum,
            "counted": "xact_commit + xact_rollback of the bench database",
        }),
    )])
}

async fn measure(
    bench: &Bench,
    names: &[String],
    settle: Duration,
    window: Duration,
) -> anyhow::Result<Measured> {
    // A connection of its own, closed before the window, waits until the
    // worker has created its tasks.
    let waiting = crate::connect(&bench.url).await?;
    let last = names.last().expect("at least one handler");
    while get_task(&waiting, last).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(waiting);
    tokio::time::sleep(settle).await;

    let connection = crate::connect(&bench.url).await?;
    let mut before = connection.query_one(SNAPSHOT, &[]).await?;
    let mut attempt = 1;
    loop {
        let opened = std::time::Instant::now();
        tokio::time::sleep(window).await;
        let after = connection.query_one(SNAPSHOT, &[]).await?;
        let seconds = opened.elapsed().as_secs_f64();

        // The snapshot that opened the window is a transaction of its own
        // that this one includes.
        let transactions = (after.get::<_, i64>(0) - before.get::<_, i64>(0) - 1).max(0);
        let autovacuum = after.get::<_, i64>(1) > before.get::<_, i64>(1);
        if !autovacuum || attempt == WINDOWS {
            return Ok(Measured {
                per_second: transactions as f64 / seconds,
                windows: attempt,
                autovacuum,
            });
        }
        before = after;
        attempt += 1;
    }
}

/// The statement rate of the last window tried.
struct Measured {
    per_second: f64,
    /// Windows tried, the last one reported.
    windows: usize,
    /// Whether autovacuum ran in the reported window.
    autovacuum: bool,
}
