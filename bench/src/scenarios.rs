//! The benchmark scenarios.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catbird_core::Executor;
use catbird_core::task::{RunTaskOpts, RunTasksOpts, Task, create_task, run_task, run_tasks};
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Bench, Figure, percentile};

/// Runs per bulk enqueue call.
const ENQUEUE_CHUNK: usize = 1_000;

/// Bulk-enqueues runs of a no-op task, then drains them with one worker of
/// concurrency 16. The processing clock starts with the worker and stops when
/// the database shows every run completed.
pub(crate) async fn tasks(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let total = if bench.quick { 2_000 } else { 20_000 };
    let concurrency = 16;
    create_task(&bench.pool, &Task::define("bench_noop")).await?;

    let inputs: Vec<serde_json::Value> = (0..ENQUEUE_CHUNK).map(|i| json!({ "i": i })).collect();
    let started = Instant::now();
    for _ in 0..total / ENQUEUE_CHUNK {
        run_tasks(&bench.pool, "bench_noop", &inputs, RunTasksOpts::default()).await?;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();

    let handler = TaskHandler::new(
        "bench_noop",
        |_: serde_json::Value, _ctx: TaskContext| async move { Ok::<_, anyhow::Error>(()) },
    )
    .concurrency(concurrency);
    let shutdown = CancellationToken::new();
    let worker = Worker::new(bench.pool.clone())
        .listen_url(&bench.url)
        .task(handler);
    let started = Instant::now();
    let running = tokio::spawn(worker.start(shutdown.clone()));
    loop {
        let rows = bench
            .pool
            .query_rows(
                "SELECT count(*) FROM cb_t_bench_noop WHERE status = 'completed'",
                &[],
            )
            .await?;
        let completed: i64 = rows[0].get(0);
        if completed >= total as i64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the worker did not drain the runs in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let process_seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await??;

    let parameters = json!({ "runs": total, "chunk": ENQUEUE_CHUNK, "concurrency": concurrency, "batch_size": 64 });
    Ok(vec![
        Figure {
            scenario: "tasks",
            figure: "bulk enqueue (1,000 per call)",
            value: total as f64 / enqueue_seconds,
            unit: "runs/s",
            parameters: parameters.clone(),
        },
        Figure {
            scenario: "tasks",
            figure: "processing, no-op handler",
            value: total as f64 / process_seconds,
            unit: "runs/s",
            parameters,
        },
    ])
}

/// Creates single runs at a steady 200 per second against an idle worker and
/// measures the time from the creating call's return (its commit) to the
/// handler's start.
pub(crate) async fn latency(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let rate = 200u32;
    let seconds = if bench.quick { 3 } else { 20 };
    let total = rate * seconds;

    let starts: Arc<Mutex<HashMap<u32, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let recorded = starts.clone();
    let handler = TaskHandler::new("bench_latency", move |sequence: u32, _ctx: TaskContext| {
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
    loop {
        if catbird_core::task::get_task(&bench.pool, "bench_latency")
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut committed: HashMap<u32, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = bench.pool.get().await?;
    for sequence in 0..total {
        ticker.tick().await;
        run_task(&client, "bench_latency", &sequence, RunTaskOpts::default()).await?;
        committed.insert(sequence, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while starts.lock().expect("latency map").len() < total as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every run started within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await??;

    let starts = starts.lock().expect("latency map");
    let mut samples: Vec<Duration> = committed
        .iter()
        .map(|(sequence, commit)| starts[sequence].saturating_duration_since(*commit))
        .collect();
    samples.sort();
    let parameters = json!({ "rate_per_second": rate, "seconds": seconds, "runs": total });
    let figure = |name: &'static str, value: Duration| Figure {
        scenario: "latency",
        figure: name,
        value: value.as_secs_f64() * 1000.0,
        unit: "ms",
        parameters: parameters.clone(),
    };
    Ok(vec![
        figure("commit to handler start, p50", percentile(&samples, 50.0)),
        figure("commit to handler start, p90", percentile(&samples, 90.0)),
        figure("commit to handler start, p99", percentile(&samples, 99.0)),
        figure("commit to handler start, max", percentile(&samples, 100.0)),
    ])
}

/// Runs many 3-step chains and 4-step diamonds with no-op steps through one
/// worker, and a plain no-op task beside them, and reports flow runs per
/// second and the cost of one step relative to one task run.
pub(crate) async fn flows(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef, run_flow};
    use catbird_worker::{Flow, StepArgs, StepContext, StepHandler};

    let runs = if bench.quick { 200 } else { 2_000 };
    let noop = |definition: StepDef| {
        StepHandler::new(definition, |_: StepArgs, _ctx: StepContext| async move {
            Ok::<_, anyhow::Error>(1)
        })
        .concurrency(16)
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
    .concurrency(16);
    let definitions: Vec<FlowDef> = vec![chain.definition().clone(), diamond.definition().clone()];
    for definition in &definitions {
        catbird_core::flow::create_flow(&bench.pool, definition).await?;
    }
    create_task(&bench.pool, &Task::define("bench_flow_task")).await?;

    let shutdown = CancellationToken::new();
    let worker = Worker::new(bench.pool.clone())
        .listen_url(&bench.url)
        .task(task)
        .flow(chain)
        .flow(diamond);
    let running = tokio::spawn(worker.start(shutdown.clone()));

    let mut figures = Vec::new();
    let mut rates = HashMap::new();
    for (name, table, steps) in [
        ("bench_flow_task", "cb_t_bench_flow_task", 1),
        ("bench_chain", "cb_f_bench_chain", 3),
        ("bench_diamond", "cb_f_bench_diamond", 4),
    ] {
        let started = Instant::now();
        for i in 0..runs {
            if name == "bench_flow_task" {
                run_task(&bench.pool, name, &i, RunTaskOpts::default()).await?;
            } else {
                run_flow(&bench.pool, name, &i, RunFlowOpts::default()).await?;
            }
        }
        loop {
            let rows = bench
                .pool
                .query_rows(
                    &format!("SELECT count(*) FROM {table} WHERE status = 'completed'"),
                    &[],
                )
                .await?;
            if rows[0].get::<_, i64>(0) >= runs as i64 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{name} did not finish in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rate = runs as f64 / started.elapsed().as_secs_f64();
        rates.insert(name, (rate, steps));
    }
    shutdown.cancel();
    running.await??;

    let task_rate = rates["bench_flow_task"].0;
    let parameters =
        json!({ "runs": runs, "concurrency_per_step": 16, "enqueue": "one call per run" });
    figures.push(Figure {
        scenario: "flows",
        figure: "task runs, one enqueue per call (baseline)",
        value: task_rate,
        unit: "runs/s",
        parameters: parameters.clone(),
    });
    for (name, label, ratio_label) in [
        (
            "bench_chain",
            "3-step chain",
            "3-step chain: one step costs (task runs)",
        ),
        (
            "bench_diamond",
            "4-step diamond",
            "4-step diamond: one step costs (task runs)",
        ),
    ] {
        let (rate, steps) = rates[name];
        figures.push(Figure {
            scenario: "flows",
            figure: label,
            value: rate,
            unit: "flow runs/s",
            parameters: parameters.clone(),
        });
        figures.push(Figure {
            scenario: "flows",
            figure: ratio_label,
            value: task_rate / (rate * steps as f64),
            unit: "x",
            parameters: parameters.clone(),
        });
    }
    Ok(figures)
}
