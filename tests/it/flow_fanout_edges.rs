//! Edge cases of fan-out steps: generators that outlive their run, panic or
//! time out, items across shutdown and lost leases, and runs that expire
//! with items left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catbird_core::flow::{RunFlowOpts, StepDef};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, StepHandler, Worker, Yielder};
use serde_json::{Value, json};

use crate::flow_helpers::{DEADLINE, Events, output_of, start, step, wait_run_status};
use crate::helpers::db_now;

async fn sql_rows(db: &TestDb, query: &str) -> Vec<tokio_postgres::Row> {
    let client = db.pool.get().await.expect("take a pooled connection");
    client.query(query, &[]).await.expect(query)
}

/// A generator that keeps yielding after its run was canceled sees `send`
/// fail, and the run ends canceled with no item left to claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_yielding_after_cancel() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let seen = events.clone();
    let generator = StepHandler::generator(
        StepDef::new("gen").generator(),
        move |_: StepArgs, out: Yielder<i64>, _ctx: StepContext| {
            let seen = seen.clone();
            async move {
                for n in 0..50 {
                    match out.send(n).await {
                        Ok(()) => {}
                        Err(error) => {
                            seen.record(format!("send failed: {error}"));
                            // Ignores the error and returns success.
                            return Ok::<_, anyhow::Error>(());
                        }
                    }
                    if n == 2 {
                        seen.record("yielded 2");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(())
            }
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item) },
    )
    .batch_size(1)
    .max_retries(0);
    let flow = Flow::new("gcancel").step(generator);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("gcancel", &Value::Null, RunFlowOpts::default())
        .await?;
    events.wait_for("yielded 2").await;
    client.cancel_flow_run("gcancel", run.id(), None).await?;
    wait_run_status(&client, "gcancel", run.id(), RunStatus::Canceled).await;
    let left =
        sql_rows(&db, "SELECT count(*) FROM cb_m_gcancel WHERE NOT done").await[0].get::<_, i64>(0);
    assert_eq!(left, 0);
    worker.stop().await;
    Ok(())
}

/// A panicking generator fails its run with the panic message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_panics() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let generator = StepHandler::generator(
        StepDef::new("gen").generator(),
        |_: StepArgs, out: Yielder<i64>, _ctx: StepContext| async move {
            out.send(1).await?;
            if out.spawned() < 100 {
                panic!("generator exploded");
            }
            Ok::<_, anyhow::Error>(())
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item) },
    )
    .batch_size(1)
    .max_retries(0);
    let flow = Flow::new("gpanic").step(generator);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("gpanic", &Value::Null, RunFlowOpts::default())
        .await?;
    match output_of(&client, &run).await {
        Err(Error::RunFailed(message)) => {
            assert!(message.contains("generator exploded"), "{message}")
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
    worker.stop().await;
    Ok(())
}

/// A generator that times out after yielding is retried from the start;
/// its output contains each item once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_timeout_then_retry_has_no_duplicates() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let generator = StepHandler::generator(
        StepDef::new("gen").generator(),
        |_: StepArgs, out: Yielder<i64>, ctx: StepContext| async move {
            out.send_all(0..3).await?;
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok::<_, anyhow::Error>(())
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item * 10) },
    )
    .batch_size(1)
    .timeout(Duration::from_millis(500))
    .max_retries(1)
    .backoff(Duration::from_millis(1), Duration::from_millis(10));
    let flow = Flow::new("gtime").step(generator);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("gtime", &Value::Null, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([0, 10, 20]));
    worker.stop().await;
    Ok(())
}

/// Items a worker claimed and then lost (it died) return after their lease
/// and complete on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_items_return_after_lease() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let double = step(
        StepDef::new("double").map_input(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? * 2) },
    );
    let flow = Flow::new("dead").step(double);
    client.create_flow(flow.definition()).await?;
    let run = client
        .run_flow("dead", &[1, 2, 3], RunFlowOpts::default())
        .await?;
    // A "worker" claims two items for 1 s and disappears.
    let claimed = sql_rows(
        &db,
        "SELECT id FROM cb_claim_map_tasks('dead', 'double', 2, 1000)",
    )
    .await;
    assert_eq!(claimed.len(), 2);
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    assert_eq!(output_of(&client, &run).await?, json!([2, 4, 6]));
    worker.stop().await;
    Ok(())
}

/// A worker stopped while items run gives them back; another worker
/// finishes the map with every output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_running_items() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let make = |calls: Arc<AtomicUsize>, slow: bool| {
        step(
            StepDef::new("double").map_input(),
            move |args: StepArgs, ctx: StepContext| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if slow {
                        ctx.cancelled().await;
                        anyhow::bail!("stopped");
                    }
                    Ok(args.input::<i64>()? * 2)
                }
            },
        )
        .concurrency(4)
    };
    let flow = Flow::new("shut").step(make(calls.clone(), true));
    client.create_flow(flow.definition()).await?;
    let first = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let input: Vec<i64> = (0..10).collect();
    let run = client
        .run_flow("shut", &input, RunFlowOpts::default())
        .await?;
    wait_for("items to start", DEADLINE, || async {
        (calls.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;
    first.stop().await;
    let second = start(
        &db,
        Worker::new(db.pool.clone()).flow(Flow::new("shut").step(make(calls.clone(), false))),
    )
    .await;
    let expected: Vec<i64> = input.iter().map(|n| n * 2).collect();
    assert_eq!(output_of(&client, &run).await?, json!(expected));
    second.stop().await;
    Ok(())
}

/// GC expiring a run leaves its items claimable-looking: they stay unfinished
/// in the claim index, and every claim of the step scans them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_run_finishes_its_items() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let double = step(
        StepDef::new("double").map_input(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? * 2) },
    );
    let flow = Flow::new("exp").step(double);
    client.create_flow(flow.definition()).await?;
    sql_rows(
        &db,
        "SELECT cb_run_flow('exp', '[1,2,3]', expires_at => clock_timestamp() + interval '200 milliseconds')",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    sql_rows(&db, "SELECT cb_gc()").await;
    let status: String = sql_rows(&db, "SELECT status FROM cb_f_exp WHERE id = 1").await[0].get(0);
    assert_eq!(status, "expired");
    let left: i64 = sql_rows(&db, "SELECT count(*) FROM cb_m_exp WHERE NOT done").await[0].get(0);
    assert_eq!(left, 0, "items of an expired run stay unfinished");
    Ok(())
}

/// Nested fan-out: a generator feeds a mapper, whose items feed a reducer,
/// whose output feeds another mapper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_fan_out() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let generator = StepHandler::generator(
        StepDef::new("gen").generator(),
        |args: StepArgs, out: Yielder<i64>, _ctx: StepContext| async move {
            out.send_all(0..args.input::<i64>()?).await?;
            Ok::<_, anyhow::Error>(())
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(vec![item; 2]) },
    )
    .batch_size(2);
    let flat = step(
        StepDef::new("pairs").map_step_output("gen"),
        |args: StepArgs, _ctx: StepContext| async move {
            let pair: Vec<i64> = args.dependency("gen")?;
            Ok(pair.iter().sum::<i64>())
        },
    );
    let total = StepHandler::reducer(
        StepDef::new("total").reduce("pairs"),
        |acc: Vec<i64>, item: i64| async move {
            let mut acc = acc;
            acc.push(item);
            Ok::<_, anyhow::Error>(acc)
        },
    );
    let again = step(
        StepDef::new("again").map_step_output("total"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.dependency::<i64>("total")? + 1) },
    );
    let flow = Flow::new("nested")
        .step(generator)
        .step(flat)
        .step(total)
        .step(again);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("nested", &4, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([1, 3, 5, 7]));
    worker.stop().await;
    Ok(())
}

/// A worker stopped while its generator runs gives the generator back; the
/// next worker starts it over and the output contains each item once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_running_generator() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let make = |slow: bool| {
        StepHandler::generator(
            StepDef::new("gen").generator(),
            move |_: StepArgs, out: Yielder<i64>, ctx: StepContext| async move {
                for n in 0..6 {
                    out.send(n).await?;
                    if slow && n == 2 {
                        ctx.cancelled().await;
                        anyhow::bail!("stopped");
                    }
                }
                Ok::<_, anyhow::Error>(())
            },
            |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item) },
        )
        .batch_size(1)
        .max_retries(0)
    };
    let flow = Flow::new("gshut").step(make(true));
    client.create_flow(flow.definition()).await?;
    let first = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("gshut", &Value::Null, RunFlowOpts::default())
        .await?;
    wait_for("three items", DEADLINE, || async {
        let n: i64 = sql_rows(&db, "SELECT count(*) FROM cb_m_gshut").await[0].get(0);
        (n >= 3).then_some(())
    })
    .await;
    first.stop().await;
    let second = start(
        &db,
        Worker::new(db.pool.clone()).flow(Flow::new("gshut").step(make(false))),
    )
    .await;
    assert_eq!(output_of(&client, &run).await?, json!([0, 1, 2, 3, 4, 5]));
    second.stop().await;
    Ok(())
}

/// A run with an item that can never be encoded (NUL in its output) fails
/// with a clear error instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_an_item_output() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let m = step(
        StepDef::new("m").map_input(),
        |args: StepArgs, _ctx: StepContext| async move {
            let s: String = args.input()?;
            Ok(format!("{s}\u{0}"))
        },
    );
    let flow = Flow::new("nul").step(m);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("nul", &["a", "b"], RunFlowOpts::default())
        .await?;
    match output_of(&client, &run).await {
        Err(Error::RunFailed(message)) => assert!(message.contains("NUL"), "{message}"),
        other => panic!("expected a failed run, got {other:?}"),
    }
    worker.stop().await;
    Ok(())
}

/// An item yielded by a generator attempt that failed (a retry is pending)
/// still runs, and failing for good it fails the run, although the retry
/// would discard it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_generator_attempt_items_discarded() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    for statement in [
        r#"SELECT cb_create_flow('gorph', '[{"name": "g", "kind": "generator"}]')"#,
        "SELECT cb_run_flow('gorph', 'null')",
        "SELECT id FROM cb_claim_steps('gorph', 'g', 1, 60000)",
        "SELECT cb_start_generator_step('gorph', 1, 1)",
        r#"SELECT cb_spawn_generator_map_tasks('gorph', 1, 1, '["bad", "ok"]')"#,
        "SELECT cb_fail_step('gorph', 1, 1, 'generator broke', 60000)",
        "SELECT id FROM cb_claim_map_tasks('gorph', 'g', 1, 60000)",
        "SELECT cb_fail_map_task('gorph', 1, 1, 'bad item')",
    ] {
        sql_rows(&db, statement).await;
    }
    let status: String =
        sql_rows(&db, "SELECT status FROM cb_f_gorph WHERE id = 1").await[0].get(0);
    assert_eq!(status, "started", "the generator's retry is still pending");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_map_source_names_the_field() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let conn = db.pool.get().await?;
    conn.execute(
        r#"SELECT cb_create_flow('d18', '[{"name":"a"},{"name":"b"},{"name":"m","depends_on":["a","b"],"map_source":"a"}]')"#,
        &[],
    )
    .await?;
    let error = conn
        .execute(
            r#"SELECT cb_create_flow('d18', '[{"name":"a"},{"name":"b"},{"name":"m","depends_on":["a","b"],"map_source":"b"}]')"#,
            &[],
        )
        .await
        .expect_err("a different map source is a different definition");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("step \"m\" has map_source a"), "{message}");
    Ok(())
}

/// Builds a mapper over the flow input that records `item <n>` for each
/// element it starts and returns the element doubled.
fn recording_doubler(events: &Events) -> StepHandler {
    let seen = events.clone();
    step(
        StepDef::new("double").map_input(),
        move |args: StepArgs, _ctx: StepContext| {
            let seen = seen.clone();
            async move {
                let n: i64 = args.input()?;
                seen.record(format!("item {n}"));
                Ok(n * 2)
            }
        },
    )
}

/// An item's execution slot is free once its handler returned. While the
/// writer waits to record the first item, the second runs in the same
/// single slot, and both completions are recorded afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_slot_frees_before_write() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let double = recording_doubler(&events).concurrency(1).batch_size(1);
    let flow = Flow::new("slots").step(double);
    client.create_flow(flow.definition()).await?;

    // Completing items locks their run's row first, so holding that lock
    // keeps the first completion from being written.
    let run = client
        .run_flow("slots", &json!([1, 2]), RunFlowOpts::default())
        .await?;
    let mut session = db.connect().await;
    let lock = session.transaction().await?;
    lock.execute(
        "SELECT 1 FROM cb_f_slots WHERE id = $1 FOR UPDATE",
        &[&run.id()],
    )
    .await?;

    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    events.wait_for("item 1").await;
    events.wait_for("item 2").await;
    let unfinished = sql_rows(
        &db,
        "SELECT count(*) FROM cb_m_slots WHERE status <> 'completed'",
    )
    .await;
    assert_eq!(
        unfinished[0].get::<_, i64>(0),
        2,
        "no completion was written yet"
    );

    lock.commit().await?;
    assert_eq!(output_of(&client, &run).await?, json!([2, 4]));
    worker.stop().await;
    Ok(())
}

/// A worker stopping while its item writer is blocked keeps renewing the
/// leases of the items it completed, past its shutdown grace period, so no
/// other worker claims them before the write commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_write_keeps_leases_at_stop() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let double = recording_doubler(&events);
    let flow = Flow::new("stopping").step(double);
    client.create_flow(flow.definition()).await?;
    let run = client
        .run_flow("stopping", &json!([1, 2]), RunFlowOpts::default())
        .await?;
    let mut session = db.connect().await;
    let lock = session.transaction().await?;
    lock.execute(
        "SELECT 1 FROM cb_f_stopping WHERE id = $1 FOR UPDATE",
        &[&run.id()],
    )
    .await?;

    let lease = Duration::from_millis(300);
    let worker = start(&db, Worker::new(db.pool.clone()).lease(lease).flow(flow)).await;
    events.wait_for("item 1").await;
    events.wait_for("item 2").await;
    // The grace period (200 ms) ends while both completions wait for the
    // lock. Renewals must go on: the items stay hidden well past one lease
    // after the stop began.
    let stopping = tokio::spawn(worker.stop());
    let stop_began = db_now(&db.pool).await;
    let renewed_past = stop_began + chrono::Duration::milliseconds(3 * 300);
    wait_for(
        "the leases to be renewed after the stop",
        DEADLINE,
        || async {
            let rows = sql_rows(&db, "SELECT min(visible_at) FROM cb_m_stopping").await;
            let visible_at: chrono::DateTime<chrono::Utc> = rows[0].get(0);
            (visible_at > renewed_past).then_some(())
        },
    )
    .await;

    lock.commit().await?;
    stopping.await?;
    assert_eq!(output_of(&client, &run).await?, json!([2, 4]));
    assert_eq!(events.count("item 1"), 1, "item 1 ran once");
    assert_eq!(events.count("item 2"), 1, "item 2 ran once");
    Ok(())
}
