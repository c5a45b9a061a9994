//! A worker vacuums the tables it churns: task tables and map item tables
//! once it has finished enough runs or items in them, unless turned off.

use std::time::{Duration, Instant};

use catbird_core::Client;
use catbird_core::flow::{RunFlowOpts, StepDef};
use catbird_core::task::RunTasksOpts;
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, TaskContext, TaskHandler, Worker};
use serde_json::{Value, json};

use crate::flow_helpers::{output_of, step};
use crate::task_support::start;

/// How long a test feeds work before it gives up waiting for a vacuum.
const FEED_DEADLINE: Duration = Duration::from_secs(120);

/// How many manual vacuums (not autovacuum's) `table` has had.
async fn manual_vacuums(db: &TestDb, table: &str) -> i64 {
    let client = db.pool.get().await.expect("take a pooled connection");
    client
        .query_opt(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .await
        .expect("read the table's statistics")
        .map_or(0, |row| row.get(0))
}

fn noop_task(name: &str) -> TaskHandler {
    TaskHandler::new(name, |_input: Value, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(json!(null))
    })
    .concurrency(16)
    .batch_size(64)
}

/// Enqueues `count` runs of `task` and waits until none is queued or
/// started.
async fn run_wave(db: &TestDb, task: &str, count: usize) {
    let inputs = vec![json!(null); count];
    catbird_core::task::run_tasks(&db.pool, task, &inputs, RunTasksOpts::default())
        .await
        .expect("enqueue a wave of runs");
    let pooled = db.pool.get().await.expect("take a pooled connection");
    wait_for("the wave to finish", Duration::from_secs(60), || async {
        let row = pooled
            .query_one(
                &format!("SELECT count(*) FROM cb_t_{task} WHERE status IN ('queued', 'started')"),
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_task_table_gets_vacuumed() {
    let db = TestDb::new().await;
    let worker = start(&db, Worker::new(db.pool.clone()).task(noop_task("busy"))).await;

    let started = Instant::now();
    let mut finished = 0;
    while manual_vacuums(&db, "cb_t_busy").await == 0 {
        assert!(
            started.elapsed() < FEED_DEADLINE,
            "no vacuum after {finished} runs in {:?}",
            started.elapsed()
        );
        run_wave(&db, "busy", 2_000).await;
        finished += 2_000;
    }
    // A vacuum needs 5,000 finished runs and 2 s since the worker's first
    // write to the table.
    assert!(finished >= 6_000, "vacuumed after only {finished} runs");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_off_leaves_table_alone() {
    let db = TestDb::new().await;
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .vacuum(false)
            .task(noop_task("quiet")),
    )
    .await;

    // Past both thresholds of a worker that vacuums: 5,000 runs and 2 s.
    let started = Instant::now();
    let mut finished = 0;
    while finished < 8_000 || started.elapsed() < Duration::from_secs(3) {
        run_wave(&db, "quiet", 2_000).await;
        finished += 2_000;
    }
    worker.stop().await;
    assert_eq!(manual_vacuums(&db, "cb_t_quiet").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_map_item_table_gets_vacuumed() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let double = step(
        StepDef::new("double").map_input(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? * 2) },
    )
    .concurrency(16)
    .batch_size(64);
    let flow = Flow::new("wide").step(double);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let items: Vec<i64> = (0..2_000).collect();
    let expected: Vec<i64> = items.iter().map(|item| item * 2).collect();
    let started = Instant::now();
    let mut finished = 0;
    while manual_vacuums(&db, "cb_m_wide").await == 0 {
        assert!(
            started.elapsed() < FEED_DEADLINE,
            "no vacuum after {finished} items in {:?}",
            started.elapsed()
        );
        let run = client
            .run_flow("wide", &items, RunFlowOpts::default())
            .await?;
        assert_eq!(output_of(&client, &run).await?, json!(expected));
        finished += items.len();
    }
    assert!(finished >= 6_000, "vacuumed after only {finished} items");
    worker.stop().await;
    Ok(())
}
