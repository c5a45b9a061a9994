//! Flow on-fail handlers: what they learn about the failed run, and their
//! retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::flow::{RunFlowOpts, StepDef};
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, FlowFailure, HandlerOpts, StepArgs, StepContext, Worker};
use serde_json::{Value, json};

use crate::flow_helpers::{
    DEADLINE, Events, on_fail_state, output_of, start, step, wait_on_fail_status,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_sees_the_failed_step() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();

    let load = step(
        StepDef::new("load"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(json!({"rows": 3})) },
    );
    let transform = step(
        StepDef::new("transform").depends_on("load").signal(),
        |_: StepArgs, ctx: StepContext| async move {
            Err::<Value, _>(anyhow::anyhow!("bad row at attempt {}", ctx.attempt()))
        },
    )
    .max_retries(1);
    let recorded = seen.clone();
    let flow = Flow::new("etl").step(load).step(transform).on_fail(
        move |input: Value, failure: FlowFailure| {
            let recorded = recorded.clone();
            async move {
                let unknown_output = match failure.output_as::<Value>("transform").await {
                    Err(Error::UnknownStepOutput(step)) => step,
                    other => format!("unexpected: {other:?}"),
                };
                let missing_output = match failure.output_as::<Value>("nope").await {
                    Err(Error::UnknownStepOutput(step)) => step,
                    other => format!("unexpected: {other:?}"),
                };
                let details = json!({
                    "input": input,
                    "flow_name": failure.flow_name,
                    "flow_run_id": failure.flow_run_id,
                    "failed_step_name": failure.failed_step_name,
                    "error_message": failure.error_message,
                    "attempts": failure.attempts,
                    "on_fail_attempts": failure.on_fail_attempts,
                    "concurrency_key": failure.concurrency_key,
                    "failed_step_input": failure.failed_step_input_as::<Value>()?,
                    "failed_step_signal": failure.failed_step_signal_as::<Value>()?,
                    "load_output": failure.output_as::<Value>("load").await?,
                    "load_output_again": failure.output_as::<Value>("load").await?,
                    "unknown_output": unknown_output,
                    "missing_output": missing_output,
                    "has_failed_at": failure.failed_at.is_some(),
                });
                recorded.lock().expect("seen").push(details);
                Ok::<_, anyhow::Error>(())
            }
        },
        None,
    );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow(
            "etl",
            &json!({"file": "orders.csv"}),
            RunFlowOpts::default().concurrency_key("etl-1"),
        )
        .await?;
    run.signal("transform", &json!({"approved": true})).await?;
    let error = output_of(&client, &run).await.unwrap_err();
    let state = wait_on_fail_status(&db, "etl", run.id(), "completed").await;
    let seen = seen.lock().expect("seen").clone();

    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "bad row at attempt 2"),
        "{error:?}"
    );
    assert_eq!(state, (Some("completed".to_owned()), 1, None));
    assert_eq!(
        seen,
        [json!({
            "input": {"file": "orders.csv"},
            "flow_name": "etl",
            "flow_run_id": run.id(),
            "failed_step_name": "transform",
            "error_message": "bad row at attempt 2",
            "attempts": 2,
            "on_fail_attempts": 1,
            "concurrency_key": "etl-1",
            "failed_step_input": {"file": "orders.csv"},
            "failed_step_signal": {"approved": true},
            "load_output": {"rows": 3},
            "load_output_again": {"rows": 3},
            "unknown_output": "transform",
            "missing_output": "nope",
            "has_failed_at": true,
        })]
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_handler_is_retried() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let boom = step(
        StepDef::new("boom"),
        |_: StepArgs, _ctx: StepContext| async move { Err::<Value, _>(anyhow::anyhow!("boom")) },
    );
    let recorded = events.clone();
    let opts = HandlerOpts::default()
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(20));
    let flow = Flow::new("retried").step(boom).on_fail(
        move |_: Value, failure: FlowFailure| {
            let events = recorded.clone();
            async move {
                events.record(format!("on-fail attempt {}", failure.on_fail_attempts));
                if failure.on_fail_attempts < 3 {
                    anyhow::bail!("alerting is down (attempt {})", failure.on_fail_attempts);
                }
                Ok(())
            }
        },
        Some(opts),
    );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("retried", &json!({}), RunFlowOpts::default())
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();
    let state = wait_on_fail_status(&db, "retried", run.id(), "completed").await;

    assert!(matches!(error, Error::RunFailed(_)), "{error:?}");
    assert_eq!(state, (Some("completed".to_owned()), 3, None));
    assert_eq!(
        events.names(),
        [
            "on-fail attempt 1",
            "on-fail attempt 2",
            "on-fail attempt 3"
        ]
    );
    assert_eq!(run.get().await?.status, catbird_core::RunStatus::Failed);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_gives_up_after_its_retries() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let boom = step(
        StepDef::new("boom"),
        |_: StepArgs, _ctx: StepContext| async move { Err::<Value, _>(anyhow::anyhow!("boom")) },
    );
    let recorded = events.clone();
    let opts = HandlerOpts::default()
        .max_retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(20));
    let flow = Flow::new("hopeless").step(boom).on_fail(
        move |_: Value, failure: FlowFailure| {
            let events = recorded.clone();
            async move {
                events.record(format!("on-fail attempt {}", failure.on_fail_attempts));
                Err::<(), _>(anyhow::anyhow!("still down"))
            }
        },
        Some(opts),
    );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("hopeless", &json!({}), RunFlowOpts::default())
        .await?;
    let _ = output_of(&client, &run).await;
    let state = wait_for("the on-fail handler to give up", DEADLINE, || async {
        let state = on_fail_state(&db, "hopeless", run.id()).await;
        (state.0.as_deref() == Some("failed") && state.1 == 2).then_some(state)
    })
    .await;
    // A given-up on-fail run is never claimed again: the next claims of the
    // on-fail loop (every 500 ms when idle) must find nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;

    assert_eq!(state.2.as_deref(), Some("still down"));
    assert_eq!(events.names(), ["on-fail attempt 1", "on-fail attempt 2"]);
    assert_eq!(on_fail_state(&db, "hopeless", run.id()).await.1, 2);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_is_not_queued_for_canceled_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let gate = step(
        StepDef::new("gate").signal(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.signal::<Value>()?) },
    );
    let recorded = events.clone();
    let flow = Flow::new("canceled_not_failed").step(gate).on_fail(
        move |_: Value, _failure: FlowFailure| {
            let events = recorded.clone();
            async move {
                events.record("on-fail called");
                Ok::<_, anyhow::Error>(())
            }
        },
        None,
    );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("canceled_not_failed", &json!({}), RunFlowOpts::default())
        .await?;
    run.cancel(Some("not needed")).await?;
    let error = output_of(&client, &run).await.unwrap_err();
    let state = on_fail_state(&db, "canceled_not_failed", run.id()).await;

    assert!(matches!(error, Error::RunCanceled(_)), "{error:?}");
    assert_eq!(state, (None, 0, None));
    assert!(!events.contains("on-fail called"));

    worker.stop().await;
    Ok(())
}
