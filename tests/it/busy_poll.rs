//! Polling while busy. A loop whose last two claims returned work, the
//! second less than it asked for, claims again after its busy poll instead
//! of waiting for a wake-up. Once a claim finds nothing, it goes idle and
//! stores a wake-up request.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catbird_core::Client;
use catbird_core::flow::{RunFlowOpts, StepDef};
use catbird_core::task::RunTaskOpts;
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, TaskContext, TaskHandler, Worker};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::flow_helpers::{DEADLINE, Events, output_of, start, step};

/// How long the loops under test wait after a short claim. Long enough for
/// the test to create more work inside the pause, far below the 2 s poll of
/// a loop that waits for a wake-up without a listen connection.
const BUSY_POLL: Duration = Duration::from_millis(500);

/// Builds a flow whose only step records `<input>` when it starts, then waits
/// until `gate` has a permit.
fn gated_flow(events: &Events, gate: &Arc<Semaphore>, busy_poll: Duration) -> Flow {
    let (events, gate) = (events.clone(), gate.clone());
    let only = step(
        StepDef::new("only"),
        move |args: StepArgs, _ctx: StepContext| {
            let (events, gate) = (events.clone(), gate.clone());
            async move {
                let input: i64 = args.input()?;
                events.record(input.to_string());
                drop(gate.acquire().await?);
                Ok(input)
            }
        },
    )
    .concurrency(4)
    .busy_poll(busy_poll);
    Flow::new("gated").step(only)
}

/// Builds a task handler that records `<input>` when it starts, then waits until
/// `gate` has a permit.
fn gated_task(events: &Events, gate: &Arc<Semaphore>, busy_poll: Duration) -> TaskHandler {
    let (events, gate) = (events.clone(), gate.clone());
    TaskHandler::new("gated", move |input: i64, _ctx: TaskContext| {
        let (events, gate) = (events.clone(), gate.clone());
        async move {
            events.record(input.to_string());
            drop(gate.acquire().await?);
            Ok::<_, anyhow::Error>(input)
        }
    })
    .concurrency(4)
    .busy_poll(busy_poll)
}

/// Starts `worker` without a listen connection, so that no wake-up reaches
/// it and an idle loop only polls. Returns once it has registered.
async fn start_unlistening(
    db: &TestDb,
    worker: Worker,
) -> (
    CancellationToken,
    JoinHandle<Result<(), catbird_worker::WorkerError>>,
) {
    let id = worker.id();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(
        worker
            .shutdown_timeout(Duration::from_millis(200))
            .start(shutdown.clone()),
    );
    let client = Client::new(db.pool.clone());
    wait_for("the worker to register", DEADLINE, || async {
        let workers = client.list_workers().await.ok()?;
        workers.iter().any(|info| info.id == id).then_some(())
    })
    .await;
    (shutdown, handle)
}

/// Waits until a wake-up request of `kind` and `name` is stored.
async fn wait_for_request(db: &TestDb, kind: &str, name: &str) {
    wait_for("the loop's wake-up request", DEADLINE, || async {
        let session = db.pool.get().await.ok()?;
        let row = session
            .query_opt(
                "SELECT 1 FROM cb_wake_requests WHERE kind = $1 AND name = $2",
                &[&kind, &name],
            )
            .await
            .ok()?;
        row.map(|_| ())
    })
    .await;
}

/// Returns how long after `created` the event `event` was recorded.
async fn started_after(events: &Events, event: &str, created: Instant) -> Duration {
    events.wait_for(event).await;
    events.time_of(event).expect("recorded") - created
}

/// Creates items 1, 2 and 3 with `create`, each once the previous one
/// started, then releases `gate` and stops `worker`, which must not listen.
/// Item 2 must wait for the idle poll, because one claim with work does not
/// make the loop busy. Item 3 must start within the busy poll.
async fn check_busy_poll<F, Fut>(
    events: &Events,
    gate: &Semaphore,
    worker: (
        CancellationToken,
        JoinHandle<Result<(), catbird_worker::WorkerError>>,
    ),
    create: F,
) -> anyhow::Result<()>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = Result<(), catbird_core::Error>>,
{
    // The idle loop finds item 1 with its poll and claims it alone.
    create(1).await?;
    events.wait_for("1").await;
    let first = Instant::now();
    create(2).await?;
    let idle_wait = started_after(events, "2", first).await;
    // Nothing announces item 3: only the busy poll finds it early.
    let created = Instant::now();
    create(3).await?;
    let waited = started_after(events, "3", created).await;

    gate.add_permits(1_000);
    let (shutdown, handle) = worker;
    shutdown.cancel();
    handle.await??;
    assert!(
        idle_wait > BUSY_POLL * 2,
        "after one claim with work the loop was not busy yet, but item 2 \
         waited only {idle_wait:?} (busy poll {BUSY_POLL:?}, idle poll 2 s)"
    );
    assert!(
        waited < BUSY_POLL * 3,
        "item 3, created while its loop was busy, waited {waited:?} \
         (busy poll {BUSY_POLL:?}, idle poll 2 s)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_step_loop_claims_unannounced_steps() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (events, gate) = (Events::default(), Arc::new(Semaphore::new(0)));
    let flow = gated_flow(&events, &gate, BUSY_POLL);
    client.create_flow(flow.definition()).await?;
    let worker = start_unlistening(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    check_busy_poll(&events, &gate, worker, |input| {
        let client = client.clone();
        async move {
            client
                .run_flow("gated", &input, RunFlowOpts::default())
                .await?;
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_task_loop_claims_unannounced_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (events, gate) = (Events::default(), Arc::new(Semaphore::new(0)));
    let handler = gated_task(&events, &gate, BUSY_POLL);
    let worker = start_unlistening(&db, Worker::new(db.pool.clone()).task(handler)).await;
    check_busy_poll(&events, &gate, worker, |input| {
        let client = client.clone();
        async move {
            client
                .run_task("gated", &input, RunTaskOpts::default())
                .await?;
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loops_go_idle_after_a_burst() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (events, gate) = (Events::default(), Arc::new(Semaphore::new(1_000)));
    let flow = gated_flow(&events, &gate, Duration::from_millis(20));
    client.create_flow(flow.definition()).await?;
    let worker = start(
        &db,
        Worker::new(db.pool.clone()).flow(flow).task(gated_task(
            &events,
            &gate,
            Duration::from_millis(20),
        )),
    )
    .await;

    let mut flows = Vec::new();
    for input in 0..20 {
        flows.push(
            client
                .run_flow("gated", &input, RunFlowOpts::default())
                .await?,
        );
        client
            .run_task("gated", &(100 + input), RunTaskOpts::default())
            .await?;
    }
    for run in &flows {
        output_of(&client, run).await?;
    }
    // Once a claim finds nothing, each loop waits for a wake-up again.
    wait_for_request(&db, "s", "gated.only").await;
    wait_for_request(&db, "t", "gated").await;

    // A run created now is announced and starts long before the idle
    // loops' fallback poll.
    let created = Instant::now();
    let late = client
        .run_flow("gated", &50, RunFlowOpts::default())
        .await?;
    let output: Value = output_of(&client, &late).await?;
    assert_eq!(output, Value::from(50));
    let waited = started_after(&events, "50", created).await;
    client
        .run_task("gated", &150, RunTaskOpts::default())
        .await?;
    events.wait_for("150").await;
    worker.stop().await;
    assert!(
        waited < Duration::from_millis(500),
        "a step announced to an idle loop waited {waited:?} (idle poll 2 s)"
    );
    Ok(())
}
