//! A worker vacuums the tables it churns (task, step and map item tables)
//! once it has finished enough runs in them, unless turned off. A vacuum
//! that cannot finish holds up neither the worker's shutdown nor a task's
//! deletion.
//!
//! A B-tree vacuum takes a cleanup lock on every leaf page of the index and
//! waits without limit for a page another session keeps pinned. An open
//! cursor over an index-only scan keeps such a pin between fetches.

use std::future::Future;
use std::time::{Duration, Instant};

use catbird_core::Client;
use catbird_core::flow::{RunFlowOpts, StepDef};
use catbird_core::task::RunTasksOpts;
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, TaskContext, TaskHandler, Worker};
use serde_json::{Value, json};

use crate::flow_helpers::{output_of, step};
use crate::task_support::{Running, start};

/// How long a test feeds work before it gives up waiting for a vacuum.
const FEED_DEADLINE: Duration = Duration::from_secs(120);

/// Returns how many manual vacuums (not autovacuum's) `table` has had.
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

/// Calls `feed` until `table` has had a manual vacuum, and returns the sum
/// of the counts `feed` returned: the runs, steps or items it finished.
async fn feed_until_vacuumed<F, Fut>(db: &TestDb, table: &str, mut feed: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    let started = Instant::now();
    let mut finished = 0;
    while manual_vacuums(db, table).await == 0 {
        assert!(
            started.elapsed() < FEED_DEADLINE,
            "no vacuum of {table} after {finished} finished in {:?}",
            started.elapsed()
        );
        finished += feed().await;
    }
    finished
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

    let finished = feed_until_vacuumed(&db, "cb_t_busy", || async {
        run_wave(&db, "busy", 1_000).await;
        1_000
    })
    .await;
    // A vacuum needs 5,000 finished runs and 2 s since the worker's first
    // write to the table.
    assert!(finished >= 5_000, "vacuumed after only {finished} runs");
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

    let items: Vec<i64> = (0..1_000).collect();
    let expected: Vec<i64> = items.iter().map(|item| item * 2).collect();
    let finished = feed_until_vacuumed(&db, "cb_m_wide", || async {
        let run = client
            .run_flow("wide", &items, RunFlowOpts::default())
            .await
            .expect("start a flow run");
        let output = output_of(&client, &run)
            .await
            .expect("the flow run completes");
        assert_eq!(output, json!(expected));
        items.len()
    })
    .await;
    assert!(finished >= 5_000, "vacuumed after only {finished} items");
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_step_table_gets_vacuumed() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let add = step(
        StepDef::new("add"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? + 1) },
    )
    .concurrency(16);
    let flow = Flow::new("short").step(add);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let pooled = db.pool.get().await?;
    let finished = feed_until_vacuumed(&db, "cb_s_short", || async {
        pooled
            .execute(
                "SELECT count(cb_run_flow(name => 'short', input => to_jsonb(i))) \
                 FROM generate_series(1, 500) AS i",
                &[],
            )
            .await
            .expect("start 500 flow runs");
        wait_for(
            "the flow runs to finish",
            Duration::from_secs(60),
            || async {
                let row = pooled
                    .query_one(
                        "SELECT count(*) FROM cb_f_short WHERE status <> 'completed'",
                        &[],
                    )
                    .await
                    .ok()?;
                (row.get::<_, i64>(0) == 0).then_some(())
            },
        )
        .await;
        500
    })
    .await;
    assert!(finished >= 5_000, "vacuumed after only {finished} steps");
    worker.stop().await;
    Ok(())
}

/// Opens a cursor over an index-only scan of the primary key of `table` and
/// fetches one row, so the session keeps a pin on one leaf page.
///
/// A vacuum removes only the versions that died before the oldest snapshot
/// of the database, here the cursor's. A transaction that was running in
/// any database when that snapshot was taken moves its horizon back, and
/// parallel tests run such transactions. So the cursor opens again until
/// its snapshot is newer than every transaction running when this call
/// began.
async fn pin_primary_key(db: &TestDb, table: &str) -> tokio_postgres::Client {
    let reader = db.connect().await;
    let marker: i64 = reader
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .expect("take a transaction id")
        .get(0);
    wait_for(
        "a snapshot newer than every other transaction",
        Duration::from_secs(60),
        || async {
            reader
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ;
                     SET LOCAL enable_seqscan = off;
                     SET LOCAL enable_bitmapscan = off;
                     DECLARE pinned CURSOR FOR SELECT id FROM {table} ORDER BY id;
                     FETCH 1 FROM pinned;"
                ))
                .await
                .expect("open the pinning cursor");
            let horizon: i64 = reader
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await
                .expect("read the snapshot's horizon")
                .get(0);
            if horizon > marker {
                return Some(());
            }
            reader
                .batch_execute("ROLLBACK")
                .await
                .expect("close the cursor");
            None
        },
    )
    .await;
    reader
}

/// Counts the vacuums of the database that wait for a page another session
/// keeps pinned.
async fn vacuums_on_pin(observer: &tokio_postgres::Client) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database()
               AND query LIKE 'VACUUM%' AND wait_event = 'BufferPin'",
            &[],
        )
        .await
        .expect("read pg_stat_activity")
        .get(0)
}

/// Starts a worker on `task`, finishes 4,000 runs, pins the primary key and
/// feeds runs until the worker's vacuum waits on the pin.
async fn vacuum_stuck_on_pin(db: &TestDb, task: &str) -> (Running, tokio_postgres::Client) {
    let worker = start(
        db,
        Worker::new(db.pool.clone())
            .shutdown_timeout(Duration::from_secs(1))
            .task(noop_task(task)),
    )
    .await;
    // These runs stay below the 5,000 a vacuum needs. Their dead versions
    // are older than the cursor's snapshot, so the vacuum can remove them.
    run_wave(db, task, 4_000).await;
    let reader = pin_primary_key(db, &format!("cb_t_{task}")).await;

    let observer = db.connect().await;
    let started = Instant::now();
    loop {
        if vacuums_on_pin(&observer).await > 0 {
            break;
        }
        assert!(
            started.elapsed() < FEED_DEADLINE,
            "the worker's vacuum never waited on the pin"
        );
        run_wave(db, task, 1_000).await;
    }
    (worker, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_stuck_vacuum() {
    let db = TestDb::new().await;
    let (worker, reader) = vacuum_stuck_on_pin(&db, "pinned").await;

    let stopping = Instant::now();
    worker.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), worker.handle).await;
    let waited = stopping.elapsed();
    drop(reader);
    assert!(
        stopped.is_ok(),
        "Worker::start had not returned {waited:?} after shutdown (shutdown timeout 1 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_yields_to_lock_waiter() {
    let db = TestDb::new().await;
    let (worker, reader) = vacuum_stuck_on_pin(&db, "doomed").await;

    // The DROP TABLE of the deletion waits for the cursor's lock as well, so
    // it finishes only once the cursor is gone. The vacuum must not wait
    // that long: every later statement on the table queues behind the DROP.
    let client = Client::new(db.pool.clone());
    let deleting = tokio::spawn(async move { client.delete_task("doomed").await });
    let observer = db.connect().await;
    wait_for(
        "the vacuum to give way",
        Duration::from_secs(20),
        || async {
            let row = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'VACUUM%' AND state = 'active'",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 0).then_some(())
        },
    )
    .await;

    drop(reader);
    let deleted = tokio::time::timeout(Duration::from_secs(20), deleting)
        .await
        .expect("the deletion finishes once the cursor is gone")
        .expect("the deletion task does not panic")
        .expect("the deletion succeeds");
    assert!(deleted);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_lock_waiter_leaves_vacuum_running() {
    let db = TestDb::new().await;
    let (worker, reader) = vacuum_stuck_on_pin(&db, "rowlocked").await;

    // One session holds a finished run's row lock and two more wait for it.
    // The second waits on a lock that `pg_locks` files under the table,
    // though the vacuum does not block it.
    let holder = db.connect().await;
    holder
        .batch_execute(
            "BEGIN;
             SELECT id FROM cb_t_rowlocked
             WHERE id = (SELECT min(id) FROM cb_t_rowlocked) FOR UPDATE",
        )
        .await
        .expect("lock a run's row");
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let waiter = db.connect().await;
        waiters.push(tokio::spawn(async move {
            waiter
                .execute(
                    "UPDATE cb_t_rowlocked SET status = status
                     WHERE id = (SELECT min(id) FROM cb_t_rowlocked)",
                    &[],
                )
                .await
        }));
    }
    let observer = db.connect().await;
    wait_for(
        "a session to wait for a row's lock",
        Duration::from_secs(20),
        || async {
            let row = observer
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'tuple'",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) > 0).then_some(())
        },
    )
    .await;

    // Nothing reports that the worker saw the waiter and kept its vacuum,
    // so give it five of its checks (200 ms apart).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        vacuums_on_pin(&observer).await > 0,
        "the vacuum gave way to a row lock's waiter"
    );

    holder
        .batch_execute("COMMIT")
        .await
        .expect("release the row");
    for waiter in waiters {
        let updated = waiter
            .await
            .expect("the waiter does not panic")
            .expect("the update succeeds");
        assert_eq!(updated, 1);
    }
    drop(reader);
    worker.stop().await;
}
