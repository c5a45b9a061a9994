//! Signals: steps that wait for an external input as well as for their
//! dependencies.

use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef, StepStatus};
use catbird_core::{Client, Error};
use catbird_tests::TestDb;
use catbird_worker::{Flow, StepArgs, StepContext, Worker};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::flow_helpers::{Events, output_of, start, step, step_run, wait_step_status};

/// The signal input of the approval steps below.
#[derive(Debug, Deserialize)]
struct Approval {
    approved_by: String,
    approved: bool,
}

/// Builds a flow where `approve` needs both `prepare` and a signal. `prepare` runs
/// until the test records "release".
fn approval_flow(events: &Events) -> Flow {
    let recorded = events.clone();
    let prepare = step(
        StepDef::new("prepare"),
        move |args: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("prepare started");
                events.wait_for("release").await;
                Ok(json!({"order": args.input::<Value>()?["order"]}))
            }
        },
    );
    let recorded = events.clone();
    let approve = step(
        StepDef::new("approve").depends_on("prepare").signal(),
        move |args: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("approve started");
                let approval: Approval = args.signal()?;
                let prepared: Value = args.dependency("prepare")?;
                Ok(json!({
                    "order": prepared["order"],
                    "approved_by": approval.approved_by,
                    "approved": approval.approved,
                }))
            }
        },
    );
    Flow::new("approval").step(prepare).step(approve)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_step_waits_for_dependencies_and_signal() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = approval_flow(&events);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("approval", &json!({"order": 9}), RunFlowOpts::default())
        .await?;
    events.wait_for("prepare started").await;
    let while_preparing = step_run(&client, "approval", run.id(), "approve").await;
    events.record("release");
    let waiting = wait_step_status(
        &client,
        "approval",
        run.id(),
        "approve",
        StepStatus::WaitingForSignal,
    )
    .await;
    let started_before_signal = events.contains("approve started");
    run.signal("approve", &json!({"approved_by": "ann", "approved": true}))
        .await?;
    let output = output_of(&client, &run).await?;
    let approve = step_run(&client, "approval", run.id(), "approve").await;

    assert_eq!(while_preparing.status, StepStatus::WaitingForDependencies);
    assert_eq!(waiting.attempts, 0);
    assert!(!started_before_signal);
    assert_eq!(
        output,
        json!({"order": 9, "approved_by": "ann", "approved": true})
    );
    assert_eq!(
        approve.signal_input,
        Some(json!({"approved_by": "ann", "approved": true}))
    );
    assert_eq!(events.count("approve started"), 1);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_before_dependencies_is_kept() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = approval_flow(&events);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("approval", &json!({"order": 3}), RunFlowOpts::default())
        .await?;
    events.wait_for("prepare started").await;
    run.signal("approve", &json!({"approved_by": "bob", "approved": false}))
        .await?;
    let after_signal = step_run(&client, "approval", run.id(), "approve").await;
    let started_early = events.contains("approve started");
    events.record("release");
    let output = output_of(&client, &run).await?;

    assert_eq!(after_signal.status, StepStatus::WaitingForDependencies);
    assert_eq!(
        after_signal.signal_input,
        Some(json!({"approved_by": "bob", "approved": false}))
    );
    assert!(!started_early);
    assert_eq!(
        output,
        json!({"order": 3, "approved_by": "bob", "approved": false})
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_only_first_step_starts_after_delivery() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let gate = step(
        StepDef::new("gate").signal(),
        move |args: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("gate started");
                let signal: Value = args.signal()?;
                let input: Value = args.input()?;
                Ok(json!({"input": input, "signal": signal}))
            }
        },
    );
    let flow = Flow::new("gated").step(gate);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("gated", &json!("in"), RunFlowOpts::default())
        .await?;
    let before = step_run(&client, "gated", run.id(), "gate").await;
    let started_before = events.contains("gate started");
    run.signal("gate", &json!({"go": true})).await?;
    let output = output_of(&client, &run).await?;

    assert_eq!(before.status, StepStatus::WaitingForSignal);
    assert!(!started_before);
    assert_eq!(output, json!({"input": "in", "signal": {"go": true}}));
    assert_eq!(events.count("gate started"), 1);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_signals_are_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(
            &FlowDef::new("signals")
                .step(StepDef::new("plain"))
                .step(StepDef::new("gate").depends_on("plain").signal()),
        )
        .await?;
    let run = client
        .run_flow("signals", &json!({}), RunFlowOpts::default())
        .await?;
    let canceled = client
        .run_flow("signals", &json!({}), RunFlowOpts::default())
        .await?;
    canceled.cancel(None).await?;

    run.signal("gate", &json!("first")).await?;
    let cases = [
        ("second delivery", run.id(), "gate"),
        ("unknown step", run.id(), "nope"),
        ("step without a signal", run.id(), "plain"),
        ("canceled run", canceled.id(), "gate"),
        ("unknown run", 999_999, "gate"),
    ];
    for (case, run_id, step_name) in cases {
        let error = client
            .signal_flow("signals", run_id, step_name, &json!("second"))
            .await
            .expect_err(case);
        assert!(
            matches!(&error, Error::SignalNotDelivered { flow, run_id: id, step }
                if flow == "signals" && *id == run_id && step == step_name),
            "{case}: {error:?}"
        );
    }
    let gate = step_run(&client, "signals", run.id(), "gate").await;
    assert_eq!(gate.signal_input, Some(json!("first")));

    let error = client
        .signal_flow("absent", run.id(), "gate", &json!(1))
        .await
        .unwrap_err();
    assert!(error.is_not_defined(), "{error:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_to_finished_run_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first = step(
        StepDef::new("first"),
        |_: StepArgs, _ctx: StepContext| async move { Ok("done") },
    );
    let late = step(
        StepDef::new("late").signal(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.signal::<Value>()?) },
    );
    let flow = Flow::new("finished")
        .step(first)
        .step(late)
        .output_priority(["late", "first"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("finished", &json!({}), RunFlowOpts::default())
        .await?;
    run.signal("late", &json!(5)).await?;
    let output = output_of(&client, &run).await?;
    let error = run.signal("late", &json!(6)).await.unwrap_err();
    let error_first = run.signal("first", &json!(6)).await.unwrap_err();

    assert_eq!(output, json!(5));
    assert!(
        matches!(error, Error::SignalNotDelivered { .. }),
        "{error:?}"
    );
    assert!(
        matches!(error_first, Error::SignalNotDelivered { .. }),
        "{error_first:?}"
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_without_signal_cannot_read_one() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let plain = step(
        StepDef::new("plain"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(args
                .signal::<Value>()
                .map_err(|error| error.to_string())
                .unwrap_err())
        },
    );
    let flow = Flow::new("unsignaled").step(plain);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("unsignaled", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;

    assert_eq!(
        output,
        json!("catbird: step \"plain\" received no signal input")
    );

    worker.stop().await;
    Ok(())
}
