//! `latency`: an idle worker receiving single runs at a steady rate.
//!
//! The first phase measures the time from the creating call's return (its
//! commit) to the handler's start, with one clock in one process. The second
//! phase creates runs at the same rate and measures the time from the
//! creating call's return to the return of `wait_for_output` from a client
//! with a listen connection, which the completion wakes: the delay a caller
//! waiting for a result gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catbird_core::task::{RunTaskOpts, get_task, run_task};
use catbird_core::{Client, PollOpts};
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::report::Figure;
use crate::{Bench, percentile};

/// Runs created per second.
const RATE: u32 = 200;

const TASK: &str = "bench_latency";

/// How long the scenario waits for the last runs after the arrivals stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Measures both phases against one worker.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let seconds = if bench.quick { 2 } else { 20 };
    let total = RATE * seconds;

    let starts: Arc<Mutex<HashMap<u32, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let recorded = starts.clone();
    let handler = TaskHandler::new(TASK, move |sequence: u32, _ctx: TaskContext| {
        let now = Instant::now();
        recorded.lock().expect("latency map").insert(sequence, now);
        async move { Ok::<_, anyhow::Error>(()) }
    })
    .concurrency(16);
    let shutdown = CancellationToken::new();
    let worker = Worker::new(bench.pool.clone())
        .listen_url(&bench.url)
        .task(handler);
    let running = tokio::spawn(worker.start(shutdown.clone()));
    // Let the worker create the task and start listening.
    while get_task(&bench.pool, TASK).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let handler_start = handler_start(bench, total, &starts).await;
    let output = match &handler_start {
        Ok(_) => wait_for_output(bench, total).await,
        Err(_) => Ok(Vec::new()),
    };
    shutdown.cancel();
    running.await??;
    let handler_start = handler_start?;
    let output = output?;

    let parameters = json!({ "rate_per_second": RATE, "seconds": seconds, "runs": total });
    let figure = |name: &str, value: Duration, parameters: &serde_json::Value| {
        Figure::new(
            "latency",
            name,
            value.as_secs_f64() * 1000.0,
            "ms",
            parameters.clone(),
        )
    };
    let poll_interval = PollOpts::default().normalized().poll_interval;
    let output_parameters = json!({
        "rate_per_second": RATE,
        "seconds": seconds,
        "runs": total,
        "poll_interval_ms": poll_interval.as_millis(),
    });
    Ok(vec![
        figure(
            "commit to handler start, p50",
            percentile(&handler_start, 50.0),
            &parameters,
        ),
        figure(
            "commit to handler start, p90",
            percentile(&handler_start, 90.0),
            &parameters,
        ),
        figure(
            "commit to handler start, p99",
            percentile(&handler_start, 99.0),
            &parameters,
        ),
        figure(
            "commit to handler start, max",
            percentile(&handler_start, 100.0),
            &parameters,
        ),
        figure(
            "commit to wait_for_output, p50",
            percentile(&output, 50.0),
            &output_parameters,
        ),
        figure(
            "commit to wait_for_output, p99",
            percentile(&output, 99.0),
            &output_parameters,
        ),
    ])
}

/// Creates `total` runs at [`RATE`] and returns the sorted delays from each
/// creating call's return to its handler's start.
async fn handler_start(
    bench: &Bench,
    total: u32,
    starts: &Mutex<HashMap<u32, Instant>>,
) -> anyhow::Result<Vec<Duration>> {
    let mut committed: HashMap<u32, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = bench.pool.get().await?;
    for sequence in 0..total {
        ticker.tick().await;
        run_task(&client, TASK, &sequence, RunTaskOpts::default()).await?;
        committed.insert(sequence, Instant::now());
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while starts.lock().expect("latency map").len() < total as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every run started within {} s",
            SETTLE_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let starts = starts.lock().expect("latency map");
    let mut samples: Vec<Duration> = committed
        .iter()
        .map(|(sequence, commit)| starts[sequence].saturating_duration_since(*commit))
        .collect();
    samples.sort();
    Ok(samples)
}

/// Creates `total` runs at [`RATE`], waits for each with `wait_for_output`
/// on a client that listens, and returns the sorted delays from each
/// creating call's return to the wait's return.
async fn wait_for_output(bench: &Bench, total: u32) -> anyhow::Result<Vec<Duration>> {
    let mut waits = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = Client::new(bench.pool.clone()).listen_url(&bench.url)?;
    // The sequence numbers go on from the first phase, so every input is new.
    for sequence in total..2 * total {
        ticker.tick().await;
        let handle = client
            .run_task(TASK, &sequence, RunTaskOpts::default())
            .await?;
        let committed = Instant::now();
        waits.spawn(async move {
            let wait = handle.wait_for_output_with(PollOpts::default());
            tokio::time::timeout(SETTLE_TIMEOUT, wait)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("a run did not finish within {} s", SETTLE_TIMEOUT.as_secs())
                })??;
            anyhow::Ok(committed.elapsed())
        });
    }
    drop(client);

    let mut samples = Vec::with_capacity(total as usize);
    while let Some(joined) = waits.join_next().await {
        samples.push(joined??);
    }
    samples.sort();
    Ok(samples)
}
