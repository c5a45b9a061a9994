//! Early completion of a flow run from a step, and step introspection with
//! `get_step` and `wait_for_step`.

use std::time::Duration;

use catbird_core::flow::{RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error, PollOpts};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, Worker};
use serde_json::json;

use crate::flow_helpers::{DEADLINE, Events, output_of, start, step, step_run, unfinished_steps};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_completion_cancels_running_sibling() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();

    let recorded = events.clone();
    let decide = step(
        StepDef::new("decide"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.wait_for("slow started").await;
                let won = ctx
                    .complete_early(&json!({"decision": "approved early"}), "enough evidence")
                    .await?;
                events.record(format!("decide won: {won}"));
                Ok(json!("discarded"))
            }
        },
    );
    let recorded = events.clone();
    let slow = step(
        StepDef::new("slow"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("slow started");
                tokio::select! {
                    () = ctx.cancelled() => events.record("slow saw cancellation"),
                    () = tokio::time::sleep(Duration::from_secs(20)) => events.record("slow timed out"),
                }
                Ok(json!("late result"))
            }
        },
    );
    let recorded = events.clone();
    let report = step(
        StepDef::new("report")
            .depends_on("decide")
            .depends_on("slow"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("report started");
                Ok(json!("report"))
            }
        },
    );
    // No worker executes "unhandled", so it is still queued at the end.
    let flow = Flow::new("early")
        .step(decide)
        .step(slow)
        .step(report)
        .step(StepDef::new("unhandled"));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("early", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    events.wait_for("slow saw cancellation").await;
    let info = run.get().await?;
    let steps = run.steps().await?;
    let status_of = |name: &str| {
        steps
            .iter()
            .find(|s| s.step_name == name)
            .map(|s| s.status)
            .expect(name)
    };

    assert_eq!(output, json!({"decision": "approved early"}));
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.cancel_reason.as_deref(), Some("enough evidence"));
    assert!(events.contains("decide won: true"));
    assert_eq!(status_of("decide"), StepStatus::Canceled);
    assert_eq!(status_of("slow"), StepStatus::Canceled);
    assert_eq!(status_of("report"), StepStatus::Canceled);
    assert_eq!(status_of("unhandled"), StepStatus::Canceled);
    assert!(!events.contains("report started"));
    assert!(steps.iter().all(|s| s.output.is_none()), "{steps:?}");

    // The sibling's late success must not change the finished run.
    worker.stop().await;
    assert_eq!(run.get().await?, info);
    assert_eq!(
        unfinished_steps(&client, "early", run.id()).await,
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_early_completion_wins() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();

    let racer = |name: &'static str, wait_for: &'static str| {
        let events = events.clone();
        step(StepDef::new(name), move |_: StepArgs, ctx: StepContext| {
            let events = events.clone();
            async move {
                events.record(format!("{name} started"));
                events.wait_for(wait_for).await;
                let won = ctx.complete_early(&json!(name), name).await?;
                events.record(format!("{name} won: {won}"));
                Ok(json!(null))
            }
        })
    };
    // "first" completes early once "second" runs; "second" tries once
    // "first" has returned from its call.
    let flow = Flow::new("race")
        .step(racer("first", "second started"))
        .step(racer("second", "first won: true"));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("race", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    events.wait_for("second won: false").await;
    let info = run.get().await?;

    assert_eq!(output, json!("first"));
    assert_eq!(info.cancel_reason.as_deref(), Some("first"));
    assert_eq!(events.count("first won: true"), 1);
    assert_eq!(events.count("second won: true"), 0);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_observes_sibling_completion() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let work = step(
        StepDef::new("work"),
        |_: StepArgs, _ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(5)
        },
    );
    let watcher = step(
        StepDef::new("watcher"),
        |_: StepArgs, ctx: StepContext| async move {
            let poll = PollOpts::default().poll_interval(Duration::from_millis(20));
            let finished = ctx.wait_for_step("work", poll).await?;
            let reread = ctx.get_step("work").await?;
            let unknown = ctx.get_step("nope").await.unwrap_err();
            Ok(json!({
                "observed": format!("observed:{}", finished.status),
                "output": reread.output_as::<i64>()?,
                "same_run": reread.flow_run_id == ctx.flow_run_id(),
                "unknown_not_found": unknown.is_not_found(),
            }))
        },
    );
    let flow = Flow::new("watching")
        .step(work)
        .step(watcher)
        .output_priority(["watcher", "work"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("watching", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;

    assert_eq!(
        output,
        json!({
            "observed": "observed:completed",
            "output": 5,
            "same_run": true,
            "unknown_not_found": true,
        })
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_step_stops_when_run_is_canceled() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let watcher = step(
        StepDef::new("watcher"),
        move |_: StepArgs, ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("watcher started");
                let poll = PollOpts::default().poll_interval(Duration::from_millis(20));
                let result = ctx.wait_for_step("busy", poll).await;
                events.record(match result {
                    Err(Error::RunCanceled(_)) => "wait stopped by cancellation".to_owned(),
                    other => format!("wait returned {other:?}"),
                });
                Ok(json!(null))
            }
        },
    );
    // "busy" ignores its token, so it stays started while the run is
    // canceling: only the watcher's token can end the watcher's wait.
    let recorded = events.clone();
    let busy = step(
        StepDef::new("busy"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("busy started");
                events.wait_for("release").await;
                Ok(json!("busy"))
            }
        },
    );
    let flow = Flow::new("watch_cancel").step(watcher).step(busy);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("watch_cancel", &json!({}), RunFlowOpts::default())
        .await?;
    events.wait_for("watcher started").await;
    events.wait_for("busy started").await;
    run.cancel(Some("stop watching")).await?;
    let wait_result = wait_for("the watcher's wait to end", DEADLINE, || async {
        events
            .names()
            .into_iter()
            .find(|name| name.starts_with("wait "))
    })
    .await;
    let busy_while_canceling = step_run(&client, "watch_cancel", run.id(), "busy").await;
    events.record("release");
    let error = output_of(&client, &run).await.unwrap_err();
    let busy = step_run(&client, "watch_cancel", run.id(), "busy").await;

    assert_eq!(wait_result, "wait stopped by cancellation");
    assert_eq!(busy_while_canceling.status, StepStatus::Started);
    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "stop watching"),
        "{error:?}"
    );
    assert_eq!(busy.status, StepStatus::Canceled);

    worker.stop().await;
    Ok(())
}
