//! Cancellation of flow runs: from the client while steps run, and from a
//! step handler.

use std::sync::Arc;
use std::time::Duration;

use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{BackoffStrategy, Flow, HandlerOpts, StepArgs, StepContext, Worker};
use serde_json::json;

use crate::flow_helpers::{
    DEADLINE, Events, output_of, start, step, step_run, unfinished_steps, wait_run_status,
};

/// Builds a flow where `work` runs until its token fires (recording "work
/// stopped") or, when `ignore_token` is set, until the test records
/// "release", and `after` depends on it.
fn cancel_flow(events: &Events, ignore_token: bool) -> Flow {
    let recorded = events.clone();
    let work = step(
        StepDef::new("work"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("work started");
                if ignore_token {
                    events.wait_for("release").await;
                    events.record("work returned");
                    return Ok("finished anyway");
                }
                tokio::select! {
                    () = ctx.cancelled() => events.record("work stopped"),
                    () = tokio::time::sleep(Duration::from_secs(20)) => events.record("work timed out"),
                }
                Ok("stopped")
            }
        },
    );
    let recorded = events.clone();
    let after = step(
        StepDef::new("after").depends_on("work"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("after started");
                Ok("after")
            }
        },
    );
    Flow::new("cancelable").step(work).step(after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_step_then_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = cancel_flow(&events, false);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("cancelable", &json!({}), RunFlowOpts::default())
        .await?;
    events.wait_for("work started").await;
    let canceled = run.cancel(Some("op")).await?;
    let right_after = run.get().await?.status;
    let after_step = step_run(&client, "cancelable", run.id(), "after").await;
    let info = wait_run_status(&client, "cancelable", run.id(), RunStatus::Canceled).await;
    let work = step_run(&client, "cancelable", run.id(), "work").await;
    let error = output_of(&client, &run).await.unwrap_err();

    assert!(canceled);
    assert!(
        matches!(right_after, RunStatus::Canceling | RunStatus::Canceled),
        "{right_after}"
    );
    assert_eq!(after_step.status, StepStatus::Canceled);
    assert!(events.contains("work stopped"));
    assert_eq!(work.status, StepStatus::Canceled);
    assert!(work.canceled_at.is_some());
    assert_eq!(info.cancel_reason.as_deref(), Some("op"));
    assert!(info.cancel_requested_at.is_some());
    assert!(info.canceled_at >= info.cancel_requested_at);
    assert_eq!(info.output, None);
    assert_eq!(info.completed_at, None);
    assert_eq!(
        unfinished_steps(&client, "cancelable", run.id()).await,
        Vec::<String>::new()
    );
    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "op"),
        "{error:?}"
    );
    assert!(!events.contains("after started"));

    let again = run.cancel(Some("other")).await?;
    let unchanged = run.get().await?;
    assert!(again);
    assert_eq!(unchanged, info);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ignoring_its_token_still_ends_canceled() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = cancel_flow(&events, true);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let keyed = || RunFlowOpts::default().concurrency_key("job-1");

    let run = client.run_flow("cancelable", &json!({}), keyed()).await?;
    events.wait_for("work started").await;
    assert!(run.cancel(Some("op")).await?);
    let canceling = run.get().await?;
    assert!(run.cancel(Some("second reason")).await?);
    let after_second_cancel = run.get().await?;
    let replacement = client.run_flow("cancelable", &json!({}), keyed()).await?;
    replacement.cancel(None).await?;

    events.record("release");
    events.wait_for("work returned").await;
    let info = wait_run_status(&client, "cancelable", run.id(), RunStatus::Canceled).await;
    let work = step_run(&client, "cancelable", run.id(), "work").await;

    assert_eq!(canceling.status, RunStatus::Canceling);
    assert_eq!(canceling.canceled_at, None);
    assert_eq!(after_second_cancel, canceling);
    assert_ne!(replacement.id(), run.id());
    assert_eq!(work.status, StepStatus::Canceled);
    assert_eq!(work.output, None);
    assert_eq!(info.cancel_reason.as_deref(), Some("op"));
    assert_eq!(info.output, None);
    assert_eq!(info.completed_at, None);
    assert!(!events.contains("after started"));
    assert_eq!(
        unfinished_steps(&client, "cancelable", run.id()).await,
        Vec::<String>::new()
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_completed_run_changes_nothing() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let only = step(
        StepDef::new("only"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(7) },
    );
    let flow = Flow::new("quick").step(only);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("quick", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    let before = run.get().await?;
    let canceled = run.cancel(Some("too late")).await?;
    let after = run.get().await?;

    assert_eq!(output, json!(7));
    assert!(canceled);
    assert_eq!(after, before);
    assert_eq!(after.status, RunStatus::Completed);
    assert_eq!(after.cancel_reason, None);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_unknown_run_returns_false() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(&FlowDef::new("known").step(StepDef::new("a")))
        .await?;

    let unknown_id = client.cancel_flow_run("known", 123_456, None).await?;
    let unknown_flow = client.cancel_flow_run("absent", 1, None).await.unwrap_err();

    assert!(!unknown_id);
    assert!(unknown_flow.is_not_defined(), "{unknown_flow:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_without_running_steps_is_immediate() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(
            &FlowDef::new("idle")
                .step(StepDef::new("a"))
                .step(StepDef::new("b").depends_on("a").signal()),
        )
        .await?;
    let run = client
        .run_flow(
            "idle",
            &json!({}),
            RunFlowOpts::default().concurrency_key("k"),
        )
        .await?;

    assert!(run.cancel(None).await?);
    let info = run.get().await?;
    let steps = run.steps().await?;
    let next = client
        .run_flow(
            "idle",
            &json!({}),
            RunFlowOpts::default().concurrency_key("k"),
        )
        .await?;

    assert_eq!(info.status, RunStatus::Canceled);
    assert_eq!(info.cancel_reason, None);
    assert!(
        steps.iter().all(|s| s.status == StepStatus::Canceled),
        "{steps:?}"
    );
    assert_ne!(next.id(), run.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_cancels_its_own_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let check = step(
        StepDef::new("check"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                ctx.cancel(Some("out of stock")).await?;
                if ctx.is_cancelled() {
                    events.record("token fired");
                }
                Ok("ignored")
            }
        },
    );
    let recorded = events.clone();
    let ship = step(
        StepDef::new("ship").depends_on("check"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("ship started");
                Ok("shipped")
            }
        },
    );
    let flow = Flow::new("self_cancel").step(check).step(ship);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("self_cancel", &json!({}), RunFlowOpts::default())
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();
    let info = run.get().await?;
    let check = step_run(&client, "self_cancel", run.id(), "check").await;
    let ship = step_run(&client, "self_cancel", run.id(), "ship").await;

    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "out of stock"),
        "{error:?}"
    );
    assert_eq!(info.status, RunStatus::Canceled);
    assert!(events.contains("token fired"));
    assert_eq!(check.status, StepStatus::Canceled);
    assert_eq!(check.output, None);
    assert_eq!(ship.status, StepStatus::Canceled);
    assert!(!events.contains("ship started"));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_run_finishes_when_worker_stops() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let stubborn = step(
        StepDef::new("stubborn"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("stubborn started");
                std::future::pending::<()>().await;
                Ok("never")
            }
        },
    );
    let flow = Flow::new("stubborn").step(stubborn);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("stubborn", &json!({}), RunFlowOpts::default())
        .await?;
    events.wait_for("stubborn started").await;
    run.cancel(Some("shutting down")).await?;
    let canceling = run.get().await?.status;
    // The worker aborts the handler soon after its grace period, although
    // the token already fired, and gives the step back. The step must not
    // stay claimable in a canceling run.
    tokio::time::timeout(DEADLINE, worker.stop())
        .await
        .expect("the worker stops soon after its grace period");
    let info = wait_run_status(&client, "stubborn", run.id(), RunStatus::Canceled).await;
    let stubborn = step_run(&client, "stubborn", run.id(), "stubborn").await;

    assert_eq!(canceling, RunStatus::Canceling);
    assert_eq!(info.cancel_reason.as_deref(), Some("shutting down"));
    assert_eq!(stubborn.status, StepStatus::Canceled);
    Ok(())
}

/// A backoff that always waits the same time.
struct FixedDelay(Duration);

impl BackoffStrategy for FixedDelay {
    fn delay(&self, _retry: u32) -> Duration {
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_retry_backoff_finishes() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let opts = HandlerOpts::default()
        .max_retries(1)
        .backoff_strategy(Arc::new(FixedDelay(Duration::from_secs(2))));
    let flaky = step(
        StepDef::new("flaky"),
        |_: StepArgs, _ctx: StepContext| async move {
            Err::<(), _>(anyhow::anyhow!("temporarily down"))
        },
    )
    .options_with(opts);
    let flow = Flow::new("backing_off").step(flaky);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("backing_off", &json!({}), RunFlowOpts::default())
        .await?;
    wait_for(
        "the first attempt to fail",
        Duration::from_secs(10),
        || async {
            let flaky = step_run(&client, "backing_off", run.id(), "flaky").await;
            flaky.error_message.is_some().then_some(())
        },
    )
    .await;
    run.cancel(Some("give up")).await?;
    let info = wait_run_status(&client, "backing_off", run.id(), RunStatus::Canceled).await;
    let flaky = step_run(&client, "backing_off", run.id(), "flaky").await;

    assert_eq!(info.cancel_reason.as_deref(), Some("give up"));
    assert_eq!(flaky.status, StepStatus::Canceled);
    assert_eq!(flaky.attempts, 1);

    worker.stop().await;
    Ok(())
}
