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
//! later. The transactions of earlier scenarios would then land in the
//! window, so the scenario first closes the bench pool's connections (a
//! backend publishes its counters when it exits) and never uses a pooled
//! connection before the window.
//!
//! NOTE: the worker's own counters reach the window up to one poll interval
//! late, and an autovacuum worker visiting the database adds its own
//! transactions, so the figure is an estimate to about one statement per
//! second over a 20 s window.

use std::time::Duration;

use catbird_core::task::get_task;
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Bench;
use crate::report::Figure;

/// Task handlers of the idle worker.
const HANDLERS: usize = 20;

/// Time between the worker's start and the window. The worker's start-up
/// statements (task definitions, registration, first claims) are published
/// at the next statement on the same connection a second or two later, and
/// a 2 s settle left them in the window (42 statements/s in place of 11).
const SETTLE: Duration = Duration::from_secs(5);

const COUNT_TRANSACTIONS: &str = "SELECT (xact_commit + xact_rollback)::bigint \
     FROM pg_stat_database WHERE datname = current_database()";

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
    let per_second = measured?;

    Ok(vec![Figure::new(
        "idle",
        "idle worker, 20 task handlers",
        per_second,
        "statements/s",
        json!({
            "handlers": HANDLERS,
            "settle_seconds": settle.as_secs_f64(),
            "window_seconds": window.as_secs_f64(),
            "counted": "xact_commit + xact_rollback of the bench database",
        }),
    )])
}

async fn measure(
    bench: &Bench,
    names: &[String],
    settle: Duration,
    window: Duration,
) -> anyhow::Result<f64> {
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
    let before: i64 = connection.query_one(COUNT_TRANSACTIONS, &[]).await?.get(0);
    let opened = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let after: i64 = connection.query_one(COUNT_TRANSACTIONS, &[]).await?.get(0);
    let seconds = opened.elapsed().as_secs_f64();
    // The first count is a transaction of its own that the second includes.
    let worker_transactions = (after - before - 1).max(0);
    Ok(worker_transactions as f64 / seconds)
}
