//! `idle`: the load an idle worker with 20 task handlers puts on the
//! database.
//!
//! The count is the growth of `xact_commit + xact_rollback` in
//! `pg_stat_database` for the bench database over the window, minus the
//! measuring connection's own transaction. Each autocommit statement is one
//! transaction, so for a worker that sends single statements this is its
//! statement count.
//!
//! NOTE: PostgreSQL 15 publishes a backend's counters up to about a second
//! after its transactions end (longer for a backend that then stays idle),
//! and an autovacuum worker visiting the database adds its own transactions.
//! The figure is therefore an estimate, good to about one transaction per
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

const COUNT_TRANSACTIONS: &str = "SELECT (xact_commit + xact_rollback)::bigint \
     FROM pg_stat_database WHERE datname = current_database()";

/// Starts an idle worker, lets it settle and counts its transactions.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let (settle, window) = if bench.quick {
        (Duration::from_secs(2), Duration::from_secs(2))
    } else {
        (Duration::from_secs(5), Duration::from_secs(20))
    };
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
    let last = names.last().expect("at least one handler");
    while get_task(&bench.pool, last).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
