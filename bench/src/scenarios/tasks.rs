//! `tasks`: bulk enqueue, draining a backlog with one worker process,
//! processing at steady state, the worker's peak memory, and single-call
//! enqueue from concurrent producers.

use std::time::{Duration, Instant};

use catbird_core::task::{RunTaskOpts, RunTasksOpts, Task, create_task, run_task, run_tasks};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::CLIENTS;
use crate::child::WorkerProcess;
use crate::report::{Ceiling, Figure, TASKS_PROCESSING};
use crate::window::{Loops, measure_counter};
use crate::{Bench, probe};

/// Runs per bulk enqueue call.
const ENQUEUE_CHUNK: usize = 1_000;

/// Runs executed at the same time by the worker.
const CONCURRENCY: usize = 16;

/// During the steady-state window the feeder enqueues another chunk
/// whenever fewer runs than this are queued or started. It estimates that
/// number from ids, as the newest id it enqueued minus the oldest unfinished
/// id: counting the unfinished runs every few milliseconds took a sizeable
/// share of the two cores away from the worker and the database.
const STEADY_BACKLOG: u64 = 10_000;

/// How long the feeder waits before it looks at a full backlog again. The
/// worker finishes a few hundred runs in that time, a small part of the
/// backlog. Each look walks the dead entries at the head of the claim
/// index, as a claim does: every 5 ms, the looks took 4 to 8 % of a core.
const FEED_PAUSE: Duration = Duration::from_millis(20);

/// How long the worker may take to drain the backlog before the scenario
/// fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

const TASK: &str = "bench_noop";
const ENQUEUE_TASK: &str = "bench_enqueue";

/// Runs the phases in order. The steady-state phase is left out of
/// `--quick`.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let total = if bench.quick { 2_000 } else { 20_000 };
    create_task(&bench.pool, &Task::define(TASK)).await?;
    let inputs: Vec<serde_json::Value> = (0..ENQUEUE_CHUNK).map(|i| json!({ "i": i })).collect();
    let mut figures = Vec::new();

    let started = Instant::now();
    for _ in 0..total / ENQUEUE_CHUNK {
        run_tasks(&bench.pool, TASK, &inputs, RunTasksOpts::default()).await?;
    }
    let enqueue_rate = total as f64 / started.elapsed().as_secs_f64();
    figures.push(
        Figure::new(
            "tasks",
            "bulk enqueue (1,000 per call)",
            enqueue_rate,
            "runs/s",
            json!({ "runs": total, "runs_per_call": ENQUEUE_CHUNK }),
        )
        .against(Ceiling::Batch),
    );

    let worker_parameters = json!({
        "runs": total,
        "concurrency": CONCURRENCY,
        "batch_size": 64,
        "worker": "child process",
    });
    let started = Instant::now();
    let worker = WorkerProcess::spawn(&bench.url, TASK, CONCURRENCY)?;
    while probe::unfinished_task_runs(&bench.pool, TASK).await? > 0 {
        anyhow::ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "the worker did not drain {total} runs in {} s",
            DRAIN_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let process_seconds = started.elapsed().as_secs_f64();
    let completed = probe::completed_task_runs(&bench.pool, TASK).await?;
    anyhow::ensure!(
        completed == total as u64,
        "{completed} of {total} runs completed; the others failed"
    );
    figures.push(
        Figure::new(
            "tasks",
            TASKS_PROCESSING,
            total as f64 / process_seconds,
            "runs/s",
            worker_parameters.clone(),
        )
        .against(Ceiling::Batch),
    );

    if !bench.quick {
        figures.extend(steady_state(bench, &inputs).await?);
    }

    let peak_kib = worker.peak_rss_kib()?;
    worker.stop().await?;
    figures.push(Figure::new(
        "tasks",
        "worker peak RSS (VmHWM)",
        peak_kib as f64 / 1024.0,
        "MiB",
        worker_parameters,
    ));

    figures.push(single_enqueue(bench).await?.against(Ceiling::Single));
    Ok(figures)
}

/// Keeps the worker busy by enqueueing chunks whenever the backlog runs
/// low, and measures the completions the database shows over the window.
/// Dead rows from the churn build up under stock autovacuum, so a window of
/// a minute shows a rate the first seconds do not.
async fn steady_state(bench: &Bench, inputs: &[serde_json::Value]) -> anyhow::Result<Vec<Figure>> {
    let stop = CancellationToken::new();
    let feeder = {
        let pool = bench.pool.clone();
        let stop = stop.clone();
        let inputs = inputs.to_vec();
        tokio::spawn(async move {
            let mut newest = 0;
            while !stop.is_cancelled() {
                let oldest = probe::oldest_unfinished_task_run(&pool, TASK).await?;
                let unfinished = oldest.map_or(0, |oldest| newest - oldest + 1);
                if unfinished < STEADY_BACKLOG as i64 {
                    let handles = run_tasks(&pool, TASK, &inputs, RunTasksOpts::default()).await?;
                    newest = handles.last().map_or(newest, |handle| handle.id());
                } else {
                    tokio::time::sleep(FEED_PAUSE).await;
                }
            }
            anyhow::Ok(())
        })
    };

    let rate = measure_counter(bench.warmup, bench.window, || {
        probe::completed_task_runs(&bench.pool, TASK)
    })
    .await;
    stop.cancel();
    feeder.await??;
    let rate = rate?;

    let parameters = json!({
        "concurrency": CONCURRENCY,
        "batch_size": 64,
        "window_seconds": bench.window.as_secs_f64(),
        "backlog": STEADY_BACKLOG,
        "feed": "1,000 runs per call while fewer than the backlog are unfinished",
    });
    Ok(vec![
        Figure::new(
            "tasks",
            "processing at steady state",
            rate.per_second,
            "runs/s",
            parameters.clone(),
        )
        .against(Ceiling::Batch),
        Figure::new(
            "tasks",
            "processing at steady state, last fifth",
            rate.last_fifth_per_second,
            "runs/s",
            parameters,
        )
        .against(Ceiling::Batch),
    ])
}

/// Measures `run_task` calls, one run each, from concurrent producers with
/// no worker running.
async fn single_enqueue(bench: &Bench) -> anyhow::Result<Figure> {
    create_task(&bench.pool, &Task::define(ENQUEUE_TASK)).await?;
    let pool = bench.pool.clone();
    let loops = Loops::start(CLIENTS, move |producer, handle| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            let mut sequence = 0u64;
            while !handle.stopped() {
                let input = json!({ "producer": producer, "sequence": sequence });
                run_task(&client, ENQUEUE_TASK, &input, RunTaskOpts::default()).await?;
                sequence += 1;
                handle.add(1);
            }
            Ok(())
        }
    });
    let rate = loops.measure(bench.warmup, bench.window).await?;
    Ok(Figure::new(
        "tasks",
        "single enqueue, 8 producers",
        rate.per_second,
        "runs/s",
        json!({ "producers": CLIENTS, "window_seconds": bench.window.as_secs_f64() }),
    ))
}
