//! `map`: items through one mapper step over the flow input, executed by one
//! worker, in a child process, with a no-op item handler; and that worker's
//! peak memory.
//!
//! Flow runs of 10,000 items each start one after another until the window
//! has passed. The rate is all their items divided by the time from the
//! first run's start to the last run's completion, as the database shows
//! it.

use std::time::{Duration, Instant};

use catbird_core::flow::{RunFlowOpts, StepDef, create_flow, run_flow};
use catbird_worker::{Flow, StepArgs, StepContext, StepHandler};
use serde_json::json;

use crate::child::WorkerProcess;
use crate::report::{Ceiling, Figure, MAP_ITEMS};
use crate::{Bench, probe};

const FLOW: &str = "bench_map";

/// Items executed at the same time.
const CONCURRENCY: usize = 16;

/// How long one flow run may take before the scenario fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// The scenario's flow: one mapper over the flow input with a no-op item
/// handler. The child worker builds it too.
pub(crate) fn flow(name: &str, concurrency: usize) -> Flow {
    Flow::new(name).step(
        StepHandler::new(
            StepDef::new("double").map_input(),
            |_: StepArgs, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(1) },
        )
        .concurrency(concurrency),
    )
}

/// Measures items per second through the mapper, and the worker's peak
/// memory.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let items = if bench.quick { 1_000 } else { 10_000 };
    create_flow(&bench.pool, flow(FLOW, CONCURRENCY).definition()).await?;
    let worker = WorkerProcess::spawn_map(&bench.url, FLOW, CONCURRENCY)?;
    let measured = measure(bench, items).await;
    let peak_kib = worker.peak_rss_kib();
    worker.stop().await?;
    let (runs, seconds) = measured?;
    let peak_kib = peak_kib?;

    Ok(vec![
        Figure::new(
            "map",
            "worker peak RSS (VmHWM)",
            peak_kib as f64 / 1024.0,
            "MiB",
            json!({"items_per_run": items, "concurrency": CONCURRENCY}),
        ),
        Figure::new(
            "map",
            MAP_ITEMS,
            (runs * items) as f64 / seconds,
            "items/s",
            json!({
                "items_per_run": items,
                "runs": runs,
                "seconds": seconds,
                "concurrency": CONCURRENCY,
                "batch_size": 64,
            }),
        )
        .against(Ceiling::Batch),
    ])
}

/// Starts runs one after another until the window has passed and returns
/// how many ran and how long they took in seconds.
async fn measure(bench: &Bench, items: u64) -> anyhow::Result<(u64, f64)> {
    let input: Vec<u64> = (0..items).collect();
    let started = Instant::now();
    let mut runs = 0;
    while runs == 0 || started.elapsed() < bench.window {
        let run_started = Instant::now();
        run_flow(&bench.pool, FLOW, &input, RunFlowOpts::default()).await?;
        runs += 1;
        loop {
            // Count the unfinished runs first: a run that is neither
            // unfinished then nor completed after has failed.
            let unfinished = probe::unfinished_flow_runs(&bench.pool, FLOW).await?;
            if probe::completed_flow_runs(&bench.pool, FLOW).await? >= runs {
                break;
            }
            anyhow::ensure!(
                unfinished > 0,
                "a flow run of {items} items ended without completing"
            );
            anyhow::ensure!(
                run_started.elapsed() < RUN_TIMEOUT,
                "a flow run of {items} items did not complete in {} s",
                RUN_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((runs, started.elapsed().as_secs_f64()))
}
