//! Failures: a failing branch of a diamond, retries before the failure, and
//! a worker killed while it runs a step.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use catbird_core::flow::{RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, FlowFailure, StepArgs, StepContext, Worker};
use serde_json::{Value, json};

use crate::flow_helpers::{
    Events, output_of, start, step, step_run, unfinished_steps, wait_on_fail_status,
    wait_step_status,
};

/// Builds the diamond s1 -> s3 -> s5 and s2 -> s4 -> s5, where s3 always fails
/// (after `retries` retries) once s4 is running, and s4 runs until its token
/// fires.
fn failing_diamond(events: &Events, retries: u32) -> Flow {
    let recording = |definition: StepDef| {
        let events = events.clone();
        let name = definition.name.clone();
        step(definition, move |_: StepArgs, _ctx: StepContext| {
            let events = events.clone();
            let name = name.clone();
            async move {
                events.record(format!("{name} started"));
                Ok(name)
            }
        })
    };
    let recorded = events.clone();
    let s3 = step(
        StepDef::new("s3").depends_on("s1"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("s3 started");
                events.wait_for("s4 started").await;
                Err::<Value, _>(anyhow::anyhow!("s3 exploded on attempt {}", ctx.attempt()))
            }
        },
    )
    .max_retries(retries);
    let recorded = events.clone();
    let s4 = step(
        StepDef::new("s4").depends_on("s2"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("s4 started");
                tokio::select! {
                    () = ctx.cancelled() => events.record("s4 stopped"),
                    () = tokio::time::sleep(Duration::from_secs(20)) => {}
                }
                Ok("s4")
            }
        },
    );
    let recorded = events.clone();
    Flow::new("diamond")
        .step(recording(StepDef::new("s1")))
        .step(recording(StepDef::new("s2")))
        .step(s3)
        .step(s4)
        .step(recording(
            StepDef::new("s5").depends_on("s3").depends_on("s4"),
        ))
        .on_fail(
            move |_: Value, failure: FlowFailure| {
                let events = recorded.clone();
                async move {
                    events.record(format!("on-fail for {}", failure.failed_step_name));
                    Ok::<_, anyhow::Error>(())
                }
            },
            None,
        )
}

async fn check_failing_diamond(retries: u32) -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = failing_diamond(&events, retries);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("diamond", &json!({"batch": 1}), RunFlowOpts::default())
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();
    let info = run.get().await?;
    let unfinished = unfinished_steps(&client, "diamond", run.id()).await;
    let s3 = step_run(&client, "diamond", run.id(), "s3").await;
    let s5 = step_run(&client, "diamond", run.id(), "s5").await;
    let on_fail = wait_on_fail_status(&db, "diamond", run.id(), "completed").await;
    let expected_error = format!("s3 exploded on attempt {}", retries + 1);

    assert!(
        matches!(error, Error::RunFailed(ref message) if *message == expected_error),
        "{error:?}"
    );
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(info.failed_step_name.as_deref(), Some("s3"));
    assert_eq!(unfinished, Vec::<String>::new());
    assert_eq!(s3.status, StepStatus::Failed);
    assert_eq!(s3.attempts, i32::try_from(retries + 1)?);
    assert_ne!(s5.status, StepStatus::Completed);
    assert_eq!(s5.attempts, 0);
    assert!(!events.contains("s5 started"));
    assert_eq!(events.count("s3 started"), usize::try_from(retries + 1)?);

    // The token of the sibling that was running when s3 failed fires.
    events.wait_for("s4 stopped").await;
    let s4 = step_run(&client, "diamond", run.id(), "s4").await;
    assert_ne!(s4.status, StepStatus::Completed);
    assert_eq!(run.get().await?, info);
    let on_fail_calls: Vec<String> = events
        .names()
        .into_iter()
        .filter(|name| name.starts_with("on-fail"))
        .collect();
    assert_eq!(on_fail_calls, ["on-fail for s3"]);
    assert_eq!(on_fail.1, 1);

    let next = client
        .run_flow("diamond", &json!({"batch": 2}), RunFlowOpts::default())
        .await?;
    assert_ne!(next.id(), run.id());
    assert_eq!(next.get().await?.status, RunStatus::Started);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_branch_fails_the_diamond() -> anyhow::Result<()> {
    check_failing_diamond(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_branch_fails_after_retries() -> anyhow::Result<()> {
    check_failing_diamond(2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_dependency_fails_the_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first = step(
        StepDef::new("first"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(1) },
    );
    let second = step(
        StepDef::new("second").depends_on("first"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.dependency::<i64>("other")?) },
    );
    let flow = Flow::new("misread").step(first).step(second);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("misread", &json!({}), RunFlowOpts::default())
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();

    assert!(
        matches!(&error, Error::RunFailed(message)
            if message.contains("step \"second\" is missing required dependency \"other\"")),
        "{error:?}"
    );

    worker.stop().await;
    Ok(())
}

/// The variable that hands the database URL to the child worker process.
const CHILD_URL: &str = "CATBIRD_FLOW_CHILD_WORKER_URL";

/// Builds the flow that the child worker and the test's own worker share:
/// `work` blocks in the child and returns its attempt number in the test's
/// worker.
fn handover_flow(block: bool) -> Flow {
    Flow::new("handover").step(step(
        StepDef::new("work"),
        move |_: StepArgs, ctx: StepContext| async move {
            if block {
                std::future::pending::<()>().await;
            }
            Ok(json!({"attempt": ctx.attempt()}))
        },
    ))
}

/// Kills the child process when dropped, so a failing test leaves none.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary again as a process that runs only
/// `child_worker_blocking_a_step`, against the test's database.
fn spawn_child_worker(db: &TestDb) -> std::io::Result<ChildGuard> {
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "flow_failures::child_worker_blocking_a_step",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env(CHILD_URL, db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(ChildGuard(child))
}

/// Runs only as the child process of `killed_worker_step_is_taken_over`: a
/// worker whose step never finishes, on the database the parent names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process started by killed_worker_step_is_taken_over"]
async fn child_worker_blocking_a_step() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let pool = catbird_core::pool_from_url(&url, 4).expect("build the child pool");
    let shutdown = catbird_worker::core::CancellationToken::new();
    let worker = Worker::new(pool)
        .listen_url(&url)
        .lease(Duration::from_secs(1))
        .flow(handover_flow(true))
        .start(shutdown.clone());
    // The parent kills this process; the timeout only bounds a lost parent.
    let _ = tokio::time::timeout(Duration::from_secs(60), worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_step_is_taken_over() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(handover_flow(false).definition())
        .await?;
    let run = client
        .run_flow("handover", &json!({}), RunFlowOpts::default())
        .await?;

    let mut child = spawn_child_worker(&db)?;
    let claimed =
        wait_step_status(&client, "handover", run.id(), "work", StepStatus::Started).await;
    child.0.kill()?;
    child.0.wait()?;

    let worker = start(&db, Worker::new(db.pool.clone()).flow(handover_flow(false))).await;
    let output = output_of(&client, &run).await?;
    let work = step_run(&client, "handover", run.id(), "work").await;

    assert_eq!(claimed.attempts, 1);
    assert_eq!(output, json!({"attempt": 2}));
    assert_eq!(work.attempts, 2);
    assert_eq!(work.status, StepStatus::Completed);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_run_starts_after_a_failed_one() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let flaky = step(
        StepDef::new("flaky"),
        |args: StepArgs, _ctx: StepContext| async move {
            let fail: bool = args.input()?;
            if fail {
                anyhow::bail!("asked to fail");
            }
            Ok("fine")
        },
    );
    let flow = Flow::new("flaky").step(flaky);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let keyed = || RunFlowOpts::default().concurrency_key("only-one");

    let failed = client.run_flow("flaky", &true, keyed()).await?;
    let failure = output_of(&client, &failed).await.unwrap_err();
    let next = client.run_flow("flaky", &false, keyed()).await?;
    let output = output_of(&client, &next).await?;

    assert!(matches!(failure, Error::RunFailed(_)), "{failure:?}");
    assert_ne!(next.id(), failed.id());
    assert_eq!(output, json!("fine"));
    wait_for("both runs listed", Duration::from_secs(1), || async {
        client
            .list_flow_runs("flaky")
            .await
            .ok()
            .filter(|runs| runs.len() == 2)
    })
    .await;

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeout_and_panic_fail_attempts() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let slow = step(
        StepDef::new("slow"),
        |_: StepArgs, ctx: StepContext| async move {
            tokio::select! {
                () = ctx.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(20)) => {}
            }
            Ok("too late")
        },
    )
    .timeout(Duration::from_millis(50));
    let panicking = step(
        StepDef::new("panicking"),
        |args: StepArgs, _ctx: StepContext| async move {
            let fail: bool = args.input()?;
            if fail {
                panic!("handler bug");
            }
            Ok("no panic")
        },
    );
    let slow_flow = Flow::new("slow").step(slow);
    let panicking_flow = Flow::new("panicking").step(panicking);
    client.create_flow(slow_flow.definition()).await?;
    client.create_flow(panicking_flow.definition()).await?;
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .flow(slow_flow)
            .flow(panicking_flow),
    )
    .await;

    let slow_run = client
        .run_flow("slow", &json!({}), RunFlowOpts::default())
        .await?;
    let panic_run = client
        .run_flow("panicking", &true, RunFlowOpts::default())
        .await?;
    let slow_error = output_of(&client, &slow_run).await.unwrap_err();
    let panic_error = output_of(&client, &panic_run).await.unwrap_err();
    let after_panic = client
        .run_flow("panicking", &false, RunFlowOpts::default())
        .await?;

    assert!(
        matches!(&slow_error, Error::RunFailed(message)
            if message == "timed out: the handler exceeded its 50ms deadline"),
        "{slow_error:?}"
    );
    assert!(
        matches!(&panic_error, Error::RunFailed(message) if message == "panic: handler bug"),
        "{panic_error:?}"
    );
    assert_eq!(output_of(&client, &after_panic).await?, json!("no panic"));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_step_keeps_its_lease() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let long_flow = |events: &Events| {
        let events = events.clone();
        Flow::new("long").step(step(
            StepDef::new("long"),
            move |_: StepArgs, ctx: StepContext| {
                let events = events.clone();
                async move {
                    events.record(format!("attempt {}", ctx.attempt()));
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    Ok("done")
                }
            },
        ))
    };
    client.create_flow(long_flow(&events).definition()).await?;
    let first = start(
        &db,
        Worker::new(db.pool.clone())
            .lease(Duration::from_millis(300))
            .flow(long_flow(&events)),
    )
    .await;
    let run = client
        .run_flow("long", &json!({}), RunFlowOpts::default())
        .await?;
    events.wait_for("attempt 1").await;
    // Once the first lease has run out, a second worker starts and claims at
    // once: only the renewal of the lease keeps the step hidden from it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = start(
        &db,
        Worker::new(db.pool.clone())
            .lease(Duration::from_millis(300))
            .flow(long_flow(&events)),
    )
    .await;

    let output = output_of(&client, &run).await?;
    let long = step_run(&client, "long", run.id(), "long").await;

    assert_eq!(output, json!("done"));
    assert_eq!(long.attempts, 1);
    assert_eq!(events.names(), ["attempt 1"]);

    first.stop().await;
    second.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_run_finishes_after_its_worker_died() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(handover_flow(false).definition())
        .await?;
    let run = client
        .run_flow("handover", &json!({}), RunFlowOpts::default())
        .await?;

    let mut child = spawn_child_worker(&db)?;
    wait_step_status(&client, "handover", run.id(), "work", StepStatus::Started).await;
    child.0.kill()?;
    child.0.wait()?;
    run.cancel(Some("worker lost")).await?;

    let worker = start(&db, Worker::new(db.pool.clone()).flow(handover_flow(false))).await;
    // Garbage collection (which workers run from their heartbeat) cancels a
    // step whose lease ran out in a canceling run, and finishes the run.
    let info = wait_for(
        "the canceling run to finish",
        Duration::from_secs(30),
        || async {
            client.gc().await.ok()?;
            let info = client.get_flow_run("handover", run.id()).await.ok()?;
            (info.status == RunStatus::Canceled).then_some(info)
        },
    )
    .await;
    let work = step_run(&client, "handover", run.id(), "work").await;

    assert_eq!(info.cancel_reason.as_deref(), Some("worker lost"));
    assert_eq!(work.status, StepStatus::Canceled);

    worker.stop().await;
    Ok(())
}
