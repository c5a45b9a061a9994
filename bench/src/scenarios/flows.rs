//! `flows`: 3-step chains and 4-step diamonds of no-op steps, and a no-op
//! task beside them as the baseline, executed by one worker.
//!
//! Producers create runs one call each and pause while a backlog of
//! unfinished runs is waiting, so the worker always has work and the
//! measured rate is the worker's. The rate is that of completions the
//! database shows over the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catbird_core::deadpool_postgres::Pool;
use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef, create_flow, run_flow};
use catbird_core::task::{RunTaskOpts, Task, create_task, run_task};
use catbird_worker::{Flow, StepArgs, StepContext, StepHandler, TaskContext, TaskHandler, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::report::{Ceiling, Figure};
use crate::window::{Loops, measure_counter};
use crate::{Bench, probe};

/// Producers creating runs, one call per run.
const PRODUCERS: usize = 4;

/// Producers pause while at least this many runs are unfinished.
const BACKLOG: u64 = 1_000;

/// Executions at the same time, per step and for the baseline task.
const CONCURRENCY: usize = 16;

/// How long the backlog of one kind may take to drain before the next.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The kind of run the producers create.
#[derive(Clone, Copy)]
enum Kind {
    Task(&'static str),
    Flow(&'static str),
}

impl Kind {
    async fn create(self, pool: &Pool, input: &serde_json::Value) -> anyhow::Result<()> {
        match self {
            Kind::Task(name) => {
                run_task(pool, name, input, RunTaskOpts::default()).await?;
            }
            Kind::Flow(name) => {
                run_flow(pool, name, input, RunFlowOpts::default()).await?;
            }
        }
        Ok(())
    }

    async fn unfinished(self, pool: &Pool) -> anyhow::Result<u64> {
        match self {
            Kind::Task(name) => probe::unfinished_task_runs(pool, name).await,
            Kind::Flow(name) => probe::unfinished_flow_runs(pool, name).await,
        }
    }

    async fn completed(self, pool: &Pool) -> anyhow::Result<u64> {
        match self {
            Kind::Task(name) => probe::completed_task_runs(pool, name).await,
            Kind::Flow(name) => probe::completed_flow_runs(pool, name).await,
        }
    }
}

/// Measures the baseline task, the chain and the diamond in turn, and the
/// cost of one flow step in task runs.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let noop = |definition: StepDef| {
        StepHandler::new(definition, |_: StepArgs, _ctx: StepContext| async move {
            Ok::<_, anyhow::Error>(1)
        })
        .concurrency(CONCURRENCY)
    };
    let chain = Flow::new("bench_chain")
        .step(noop(StepDef::new("a")))
        .step(noop(StepDef::new("b").depends_on("a")))
        .step(noop(StepDef::new("c").depends_on("b")));
    let diamond = Flow::new("bench_diamond")
        .step(noop(StepDef::new("a")))
        .step(noop(StepDef::new("b").depends_on("a")))
        .step(noop(StepDef::new("c").depends_on("a")))
        .step(noop(StepDef::new("d").depends_on("b").depends_on("c")));
    let task = TaskHandler::new(
        "bench_flow_task",
        |_: serde_json::Value, _ctx: TaskContext| async move { Ok::<_, anyhow::Error>(()) },
    )
    .concurrency(CONCURRENCY);
    let definitions: Vec<FlowDef> = vec![chain.definition().clone(), diamond.definition().clone()];
    for definition in &definitions {
        create_flow(&bench.pool, definition).await?;
    }
    create_task(&bench.pool, &Task::define("bench_flow_task")).await?;

    let shutdown = CancellationToken::new();
    let worker = Worker::new(bench.pool.clone())
        .listen_url(&bench.url)
        .task(task)
        .flow(chain)
        .flow(diamond);
    let running = tokio::spawn(worker.start(shutdown.clone()));

    let mut rates = Vec::new();
    let mut failure = None;
    for kind in [
        Kind::Task("bench_flow_task"),
        Kind::Flow("bench_chain"),
        Kind::Flow("bench_diamond"),
    ] {
        match steady(bench, kind).await {
            Ok(rate) => rates.push(rate),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    shutdown.cancel();
    running.await??;
    if let Some(error) = failure {
        return Err(error);
    }

    let parameters = json!({
        "producers": PRODUCERS,
        "backlog": BACKLOG,
        "concurrency_per_step": CONCURRENCY,
        "window_seconds": bench.window.as_secs_f64(),
        "enqueue": "one call per run",
    });
    let task_rate = rates[0];
    let mut figures = vec![
        Figure::new(
            "flows",
            "task runs, one enqueue per call (baseline)",
            task_rate,
            "runs/s",
            parameters.clone(),
        )
        .against(Ceiling::Single),
    ];
    for (rate, steps, label, ratio_label) in [
        (
            rates[1],
            3.0,
            "3-step chain",
            "3-step chain: one step costs (task runs)",
        ),
        (
            rates[2],
            4.0,
            "4-step diamond",
            "4-step diamond: one step costs (task runs)",
        ),
    ] {
        figures.push(
            Figure::new("flows", label, rate, "flow runs/s", parameters.clone())
                .against(Ceiling::Single),
        );
        figures.push(Figure::new(
            "flows",
            ratio_label,
            task_rate / (rate * steps),
            "x",
            parameters.clone(),
        ));
    }
    Ok(figures)
}

/// Feeds `kind` for the warm-up and the window, returns the completions per
/// second over the window, and waits for the backlog to drain.
async fn steady(bench: &Bench, kind: Kind) -> anyhow::Result<f64> {
    let backlog = Arc::new(AtomicU64::new(0));
    let stop_monitor = CancellationToken::new();
    let monitor = {
        let pool = bench.pool.clone();
        let backlog = backlog.clone();
        let stop = stop_monitor.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                backlog.store(kind.unfinished(&pool).await?, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };

    let pool = bench.pool.clone();
    let producer_backlog = backlog.clone();
    let producers = Loops::start(PRODUCERS, move |producer, handle| {
        let pool = pool.clone();
        let backlog = producer_backlog.clone();
        async move {
            let mut sequence = 0u64;
            while !handle.stopped() {
                if backlog.load(Ordering::Relaxed) >= BACKLOG {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let input = json!({ "producer": producer, "sequence": sequence });
                kind.create(&pool, &input).await?;
                sequence += 1;
                handle.add(1);
            }
            Ok(())
        }
    });
    let rate = measure_counter(bench.warmup, bench.window, || kind.completed(&bench.pool)).await;
    let stopped = producers.stop().await;
    stop_monitor.cancel();
    monitor.await??;
    stopped?;
    let rate = rate?;

    let started = Instant::now();
    while kind.unfinished(&bench.pool).await? > 0 {
        anyhow::ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "the backlog did not drain in {} s",
            DRAIN_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(rate.per_second)
}
