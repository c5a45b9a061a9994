//! Workers: start-up validation, registration and heartbeats, leases across
//! several workers, a worker process that dies, shutdown, wake-ups and lost
//! connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catbird_core::Client;
use catbird_core::task::{RunStatus, RunTaskOpts, RunTasksOpts, Task};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{HandlerOpts, TaskContext, TaskHandler, Worker, WorkerError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::task_support::{
    DEADLINE, Log, echo, output_of, start, wait_for_len, wait_for_request, wait_status,
};

/// The environment variable that carries the database URL to the child
/// worker process of `killed_worker_run_is_recovered`.
const CHILD_DB_URL: &str = "CATBIRD_TEST_CHILD_WORKER_DB_URL";

/// The lease of the child worker process: short, so the run it leaves
/// behind is claimed again soon after it is killed.
const CHILD_LEASE: Duration = Duration::from_secs(1);

/// A handler that returns at once.
fn noop(name: &str) -> TaskHandler {
    TaskHandler::new(name, |_: Value, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(())
    })
}

/// Starts `worker` and returns the message of its configuration error.
async fn start_error(worker: Worker) -> String {
    match worker.start(CancellationToken::new()).await {
        Err(error @ WorkerError::InvalidConfiguration(_)) => error.to_string(),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(()) => panic!("expected a configuration error, the worker ran"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_handler_options_abort_start() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let second = Duration::from_secs(1);
    let cases = [
        (
            noop("bad").concurrency(0),
            "catbird: task \"bad\" has invalid handler options: concurrency must be greater than zero",
        ),
        (
            noop("bad").batch_size(0),
            "catbird: task \"bad\" has invalid handler options: batch size must be greater than zero",
        ),
        (
            noop("bad").backoff(2 * second, second),
            "catbird: task \"bad\" has invalid handler options: backoff maximum delay (1s) must be \
             greater than minimum delay (2s)",
        ),
        (
            noop("bad").backoff(second, second),
            "catbird: task \"bad\" has invalid handler options: backoff maximum delay (1s) must be \
             greater than minimum delay (1s)",
        ),
        (
            noop("bad").circuit_breaker(0, second),
            "catbird: task \"bad\" has invalid handler options: circuit breaker failure threshold must \
             be greater than zero",
        ),
        (
            noop("bad").circuit_breaker(1, Duration::ZERO),
            "catbird: task \"bad\" has invalid handler options: circuit breaker open timeout must be \
             greater than zero",
        ),
        (
            noop("bad").on_fail(
                |_: Value, _| async move { Ok::<_, anyhow::Error>(()) },
                Some(HandlerOpts::default().concurrency(0)),
            ),
            "catbird: task \"bad\" has invalid on-fail options: concurrency must be greater than zero",
        ),
    ];
    for (handler, expected) in cases {
        // A valid handler before the invalid one: nothing of it may be
        // created either.
        let worker = Worker::new(db.pool.clone())
            .task(noop("good"))
            .task(handler);
        assert_eq!(start_error(worker).await, expected);
    }

    let no_retries = noop("lenient").max_retries(0).backoff(2 * second, second);
    assert!(
        no_retries.options().validate().is_ok(),
        "without retries the backoff is not checked"
    );
    assert!(
        client.list_tasks().await?.is_empty(),
        "no definition was created"
    );
    assert!(
        client.list_workers().await?.is_empty(),
        "no worker registered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_worker_settings_abort_start() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());

    let twice = Worker::new(db.pool.clone())
        .task(noop("dup"))
        .task(noop("dup"));
    assert_eq!(
        start_error(twice).await,
        "catbird: task \"dup\" has two handlers in one worker"
    );
    assert_eq!(
        start_error(Worker::new(db.pool.clone()).task(noop("Bad-Name"))).await,
        "catbird: invalid task name \"Bad-Name\": may only contain a-z, 0-9 and _"
    );
    assert_eq!(
        start_error(Worker::new(db.pool.clone()).task(noop("input"))).await,
        "catbird: invalid task name \"input\": is reserved"
    );
    assert_eq!(
        start_error(Worker::new(db.pool.clone()).define_task(Task::define("no-dash"))).await,
        "catbird: invalid task name \"no-dash\": may only contain a-z, 0-9 and _"
    );
    let short_lease = start_error(
        Worker::new(db.pool.clone())
            .task(noop("ok"))
            .lease(Duration::from_millis(5)),
    )
    .await;
    assert!(short_lease.contains("lease"), "{short_lease}");
    let bad_url = start_error(
        Worker::new(db.pool.clone())
            .task(noop("ok"))
            .listen_url("not a connection string ="),
    )
    .await;
    assert!(bad_url.contains("listen"), "{bad_url}");

    assert!(client.list_tasks().await?.is_empty());
    assert!(client.list_workers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workers_shows_handler_names() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first = Worker::new(db.pool.clone())
        .task(noop("beta"))
        .define_task(Task::define("gamma"))
        .task(noop("alpha"));
    let first = start(&db, first).await;
    let second = start(&db, Worker::new(db.pool.clone()).task(noop("alpha"))).await;

    let workers = client.list_workers().await?;
    assert_eq!(workers.len(), 2);
    let first_info = workers
        .iter()
        .find(|worker| worker.id == first.id)
        .expect("the first worker is listed");
    assert_eq!(first_info.task_handlers, ["alpha", "beta"]);
    assert_eq!(first_info.step_handlers, json!([]));
    assert!(first_info.started_at <= first_info.last_heartbeat_at);
    let second_info = workers
        .iter()
        .find(|worker| worker.id == second.id)
        .expect("the second worker is listed");
    assert_eq!(second_info.task_handlers, ["alpha"]);

    let first_id = first.id;
    first.stop().await;
    let remaining: Vec<_> = client.list_workers().await?.iter().map(|w| w.id).collect();
    assert_eq!(
        remaining,
        [second.id],
        "a stopped worker removes its registration"
    );
    assert_ne!(first_id, second.id);
    second.stop().await;
    assert!(client.list_workers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_registers_again_after_row_deleted() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = Worker::new(db.pool.clone())
        .heartbeat_interval(Duration::from_millis(100))
        .task(noop("beat"));
    let worker = start(&db, worker).await;
    let registered = client.list_workers().await?[0].clone();
    wait_for("a heartbeat", DEADLINE, || async {
        let workers = client.list_workers().await.ok()?;
        let worker = workers.first()?;
        (worker.last_heartbeat_at > registered.last_heartbeat_at).then_some(())
    })
    .await;

    let admin = db.connect().await;
    let deleted = admin.execute("DELETE FROM cb_workers", &[]).await?;
    assert_eq!(deleted, 1);
    let again = wait_for("the worker to register again", DEADLINE, || async {
        client.list_workers().await.ok()?.into_iter().next()
    })
    .await;

    assert_eq!(again.id, worker.id);
    assert_eq!(again.task_handlers, ["beat"]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_each_run_once() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let executions: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let handler = || {
        let executions = executions.clone();
        TaskHandler::new("count", move |_: Value, ctx: TaskContext| {
            let executions = executions.clone();
            async move {
                *executions
                    .lock()
                    .expect("the executions lock")
                    .entry(ctx.task_run_id())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, anyhow::Error>(())
            }
        })
        .batch_size(16)
    };
    let lease = Duration::from_secs(1);
    let first = start(
        &db,
        Worker::new(db.pool.clone()).lease(lease).task(handler()),
    )
    .await;
    let second = start(
        &db,
        Worker::new(db.pool.clone()).lease(lease).task(handler()),
    )
    .await;

    let inputs: Vec<i64> = (0..200).collect();
    let handles = client
        .run_tasks("count", &inputs, RunTasksOpts::default())
        .await?;
    let last = handles.last().expect("200 runs").id();
    for handle in &handles {
        wait_status(&client, "count", handle.id(), RunStatus::Completed).await;
    }

    let executions = executions.lock().expect("the executions lock").clone();
    assert_eq!(executions.len(), 200, "every run was executed");
    let repeated: Vec<_> = executions
        .iter()
        .filter(|(_, count)| **count != 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "runs executed more than once: {repeated:?}"
    );
    assert_eq!(client.get_task_run("count", last).await?.attempts, 1);
    first.stop().await;
    second.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_live_handler_keeps_its_lease() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Log::new();
    let handler = || {
        let calls = calls.clone();
        TaskHandler::new("slow", move |_: Value, ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.push(ctx.attempt());
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Ok::<_, anyhow::Error>("done")
            }
        })
    };
    let lease = Duration::from_secs(1);
    let first = start(
        &db,
        Worker::new(db.pool.clone()).lease(lease).task(handler()),
    )
    .await;
    let second = start(
        &db,
        Worker::new(db.pool.clone()).lease(lease).task(handler()),
    )
    .await;

    let handle = client.run_task("slow", &1, RunTaskOpts::default()).await?;
    assert_eq!(
        output_of(&client, "slow", handle.id()).await?,
        json!("done")
    );

    assert_eq!(
        calls.snapshot(),
        [1],
        "the run lasted longer than the lease"
    );
    assert_eq!(handle.get().await?.attempts, 1);
    first.stop().await;
    second.stop().await;
    Ok(())
}

/// A child process that is killed when this value is dropped, so a failing
/// test leaves no worker process behind.
struct ChildProcess(std::process::Child);

impl ChildProcess {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A handler that records each attempt in the `probe` table, then blocks
/// on the first attempt and completes the later ones.
fn probing(name: &str) -> TaskHandler {
    TaskHandler::new(name, |_: Value, ctx: TaskContext| async move {
        let connection = ctx.pool().get().await?;
        connection
            .execute(
                "INSERT INTO probe (run_id, attempt) VALUES ($1, $2)",
                &[&ctx.task_run_id(), &ctx.attempt()],
            )
            .await?;
        if ctx.attempt() == 1 {
            ctx.cancelled().await;
            anyhow::bail!("the first attempt was stopped");
        }
        Ok("recovered")
    })
}

/// Runs a worker for the `probed` task in this process until it is killed.
/// Started by `killed_worker_run_is_recovered`. Without its environment
/// variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of killed_worker_run_is_recovered, not a test of its own"]
async fn child_worker_process() {
    let Ok(url) = std::env::var(CHILD_DB_URL) else {
        return;
    };
    let pool = catbird_core::pool_from_url(&url, 4).expect("a pool for the child worker");
    Worker::new(pool)
        .listen_url(&url)
        .lease(CHILD_LEASE)
        .task(probing("probed"))
        .start(CancellationToken::new())
        .await
        .expect("the child worker runs until it is killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_run_is_recovered() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let admin = db.connect().await;
    admin
        .batch_execute("CREATE TABLE probe (run_id bigint NOT NULL, attempt integer NOT NULL)")
        .await?;
    client.create_task(&Task::define("probed")).await?;
    let handle = client
        .run_task("probed", &1, RunTaskOpts::default())
        .await?;

    let child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "worker_lifecycle::child_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DB_URL, db.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut child = ChildProcess(child);
    let started = wait_for("the child worker to start the run", DEADLINE, || async {
        let row = admin
            .query_opt(
                "SELECT attempt FROM probe WHERE run_id = $1",
                &[&handle.id()],
            )
            .await
            .ok()??;
        Some(row.get::<_, i32>(0))
    })
    .await;
    assert_eq!(started, 1);
    child.kill()?;

    let worker = Worker::new(db.pool.clone())
        .lease(CHILD_LEASE)
        .task(probing("probed"));
    let worker = start(&db, worker).await;
    assert_eq!(
        output_of(&client, "probed", handle.id()).await?,
        json!("recovered")
    );

    let run = handle.get().await?;
    assert_eq!(run.attempts, 2);
    let attempts: Vec<i32> = admin
        .query(
            "SELECT attempt FROM probe WHERE run_id = $1 ORDER BY attempt",
            &[&handle.id()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(attempts, [1, 2]);
    worker.stop().await;
    Ok(())
}

/// A handler that records its start, waits for its token or for `gate`,
/// and records how it ended.
fn gated(name: &str, gate: &CancellationToken, events: &Log<String>) -> TaskHandler {
    let gate = gate.clone();
    let events = events.clone();
    TaskHandler::new(name, move |label: String, ctx: TaskContext| {
        let gate = gate.clone();
        let events = events.clone();
        async move {
            events.push(format!("{label} started"));
            tokio::select! {
                () = gate.cancelled() => {
                    events.push(format!("{label} finished"));
                    Ok(label)
                }
                () = ctx.cancelled() => {
                    events.push(format!("{label} stopped"));
                    Err(anyhow::anyhow!("{label} was stopped"))
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_grace_cancels_handler() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let gate = CancellationToken::new();
    let events = Log::new();
    let worker = Worker::new(db.pool.clone())
        .shutdown_timeout(Duration::ZERO)
        .task(gated("drain", &gate, &events));
    let worker = start(&db, worker).await;

    let handle = client
        .run_task("drain", &"only", RunTaskOpts::default())
        .await?;
    wait_for_len(&events, 1).await;
    let stopping = Instant::now();
    worker.shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker.handle).await???;
    let stopped_after = stopping.elapsed();

    assert_eq!(events.snapshot(), ["only started", "only stopped"]);
    assert!(
        stopped_after < Duration::from_secs(3),
        "start returned {stopped_after:?} after the shutdown signal"
    );
    let run = handle.get().await?;
    assert_eq!(
        run.status,
        RunStatus::Queued,
        "the interrupted run is given back"
    );
    assert_eq!(run.attempts, 0);

    let next = start(&db, Worker::new(db.pool.clone()).task(echo("drain"))).await;
    assert_eq!(
        output_of(&client, "drain", handle.id()).await?,
        json!("only")
    );
    next.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_expiry_cancels_handler() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let gate = CancellationToken::new();
    let events = Log::new();
    let grace = Duration::from_millis(300);
    let worker = Worker::new(db.pool.clone())
        .shutdown_timeout(grace)
        .task(gated("drain", &gate, &events).max_retries(2));
    let worker = start(&db, worker).await;

    let handle = client
        .run_task("drain", &"slow", RunTaskOpts::default())
        .await?;
    wait_for_len(&events, 1).await;
    let stopping = Instant::now();
    worker.shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker.handle).await???;
    let stopped_after = stopping.elapsed();

    assert_eq!(events.snapshot(), ["slow started", "slow stopped"]);
    assert!(
        stopped_after >= grace,
        "start returned {stopped_after:?} after the shutdown signal, within the grace period"
    );
    let run = handle.get().await?;
    assert_eq!(
        run.status,
        RunStatus::Queued,
        "the interrupted run is given back"
    );
    assert_eq!(run.attempts, 0);

    let next = start(&db, Worker::new(db.pool.clone()).task(echo("drain"))).await;
    assert_eq!(
        output_of(&client, "drain", handle.id()).await?,
        json!("slow")
    );
    assert_eq!(handle.get().await?.attempts, 1);
    next.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_grace_lets_handlers_finish() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let gate = CancellationToken::new();
    let events = Log::new();
    let worker = Worker::new(db.pool.clone())
        .shutdown_timeout(Duration::from_secs(10))
        .task(gated("drain", &gate, &events));
    let worker = start(&db, worker).await;

    let in_flight = client
        .run_tasks("drain", &["a", "b", "c"], RunTasksOpts::default())
        .await?;
    wait_for_len(&events, 3).await;
    let stopping = Instant::now();
    worker.shutdown.cancel();
    let later = client
        .run_tasks("drain", &["d", "e", "f", "g", "h"], RunTasksOpts::default())
        .await?;
    gate.cancel();
    tokio::time::timeout(DEADLINE, worker.handle).await???;
    let stopped_after = stopping.elapsed();

    assert!(
        stopped_after < Duration::from_secs(8),
        "start returned {stopped_after:?} after the shutdown signal, near the end of the grace period"
    );
    for handle in &in_flight {
        let run = handle.get().await?;
        assert_eq!(run.status, RunStatus::Completed, "run {}", run.input);
        assert_eq!(run.attempts, 1, "run {}", run.input);
    }
    for handle in &later {
        let run = handle.get().await?;
        assert_eq!(run.status, RunStatus::Queued, "run {}", run.input);
        assert_eq!(run.attempts, 0, "run {}", run.input);
    }
    let mut seen = events.snapshot();
    seen.sort();
    assert_eq!(
        seen,
        [
            "a finished",
            "a started",
            "b finished",
            "b started",
            "c finished",
            "c started"
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_unstarted_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("drain")).await?;
    let handles = client
        .run_tasks("drain", &["a", "b", "c", "d", "e"], RunTasksOpts::default())
        .await?;
    let gate = CancellationToken::new();
    let events = Log::new();
    let worker = Worker::new(db.pool.clone())
        .shutdown_timeout(Duration::from_secs(10))
        .task(gated("drain", &gate, &events).concurrency(1).batch_size(10));
    let worker = start(&db, worker).await;

    wait_for_len(&events, 1).await;
    for handle in &handles[1..] {
        let run = handle.get().await?;
        assert_eq!(
            run.status,
            RunStatus::Started,
            "run {} is claimed ahead",
            run.input
        );
    }
    worker.shutdown.cancel();
    for handle in &handles[1..] {
        let run = wait_status(&client, "drain", handle.id(), RunStatus::Queued).await;
        assert_eq!(run.attempts, 0, "run {}", run.input);
    }
    assert_eq!(
        events.snapshot(),
        ["a started"],
        "the first run is still running"
    );
    gate.cancel();
    tokio::time::timeout(DEADLINE, worker.handle).await???;

    assert_eq!(handles[0].get().await?.status, RunStatus::Completed);
    let started = client
        .list_task_runs("drain")
        .await?
        .into_iter()
        .filter(|run| run.status == RunStatus::Started)
        .count();
    assert_eq!(started, 0, "no run stays started after shutdown");
    Ok(())
}

/// Runs two tasks one after the other, the second right after the first
/// completed, and returns how long the second waited to start (database
/// clock). A worker that only polled would start it about 2 s late, because
/// it went idle just after claiming the first.
async fn second_run_wait(client: &Client) -> anyhow::Result<Duration> {
    let first = client.run_task("echo", &1, RunTaskOpts::default()).await?;
    wait_status(client, "echo", first.id(), RunStatus::Completed).await;
    let second = client.run_task("echo", &2, RunTaskOpts::default()).await?;
    let run = wait_status(client, "echo", second.id(), RunStatus::Completed).await;
    Ok((run.started_at - run.created_at).to_std()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_run_wakes_idle_worker() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;

    for _ in 0..3 {
        let waited = second_run_wait(&client).await?;
        assert!(
            waited < Duration::from_millis(1500),
            "a new run waited {waited:?} for an idle worker"
        );
    }
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_run_keeps_worker_wakeable() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;
    wait_for_request(client.pool(), "echo", Duration::from_millis(200)).await;

    // The worker hears of a run for later, and still of a run for now.
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    client
        .run_task("echo", &0, RunTaskOpts::default().visible_at(later))
        .await?;
    wait_for_request(client.pool(), "echo", Duration::ZERO).await;

    let now = client.run_task("echo", &1, RunTaskOpts::default()).await?;
    let run = wait_status(&client, "echo", now.id(), RunStatus::Completed).await;
    let waited = (run.started_at - run.created_at).to_std()?;
    assert!(
        waited < Duration::from_millis(1500),
        "a run waited {waited:?} for a worker that heard of a later run"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_after_backends_terminated() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = Worker::new(db.pool.clone())
        .heartbeat_interval(Duration::from_millis(200))
        .task(echo("echo"));
    let worker = start(&db, worker).await;
    let warm = client.run_task("echo", &0, RunTaskOpts::default()).await?;
    wait_status(&client, "echo", warm.id(), RunStatus::Completed).await;

    let admin = db.connect().await;
    let terminated: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(terminated >= 2, "terminated {terminated} backends");
    let terminated_at = admin
        .query_one("SELECT now()", &[])
        .await?
        .get::<_, chrono::DateTime<chrono::Utc>>(0);

    let mut handles = Vec::new();
    for i in 1..=5 {
        let handle = wait_for("a new run to be created", DEADLINE, || async {
            client
                .run_task("echo", &i, RunTaskOpts::default())
                .await
                .ok()
        })
        .await;
        handles.push(handle);
    }
    for (i, handle) in (1..=5).zip(&handles) {
        assert_eq!(output_of(&client, "echo", handle.id()).await?, json!(i));
    }
    wait_for("a heartbeat after the termination", DEADLINE, || async {
        let workers = client.list_workers().await.ok()?;
        let info = workers.iter().find(|info| info.id == worker.id)?;
        (info.last_heartbeat_at > terminated_at).then_some(())
    })
    .await;
    wait_for(
        "the wake-up connection to listen again",
        DEADLINE,
        || async {
            let listening: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN %'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (listening > 0).then_some(())
        },
    )
    .await;
    let waited = second_run_wait(&client).await?;

    assert!(
        waited < Duration::from_millis(1500),
        "after reconnecting, a new run waited {waited:?} for an idle worker"
    );
    assert!(!worker.handle.is_finished(), "the worker keeps running");
    worker.stop().await;
    Ok(())
}
