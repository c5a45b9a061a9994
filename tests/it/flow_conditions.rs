//! Conditions on steps: skipped steps, optional dependencies and output
//! selection when some steps are skipped.

use catbird_core::flow::{RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error, NO_OUTPUT_CANDIDATE};
use catbird_tests::TestDb;
use catbird_worker::{Flow, FlowFailure, StepArgs, StepContext, Worker};
use serde_json::{Value, json};

use crate::flow_helpers::{Events, output_of, start, step, step_run, wait_on_fail_status};

/// Builds a step that records its name when it runs and returns `output`.
fn recording_step(
    events: &Events,
    definition: StepDef,
    output: Value,
) -> catbird_worker::StepHandler {
    let events = events.clone();
    let name = definition.name.clone();
    step(definition, move |_: StepArgs, _ctx: StepContext| {
        let events = events.clone();
        let name = name.clone();
        let output = output.clone();
        async move {
            events.record(name);
            Ok(output)
        }
    })
}

/// Builds a step that returns the flow input unchanged.
fn echo_step(definition: StepDef) -> catbird_worker::StepHandler {
    step(definition, |args: StepArgs, _ctx: StepContext| async move {
        Ok(args.input::<Value>()?)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_or_escalation_by_score() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = Flow::new("review")
        .step(echo_step(StepDef::new("validate")))
        .step(recording_step(
            &events,
            StepDef::new("approve")
                .depends_on("validate")
                .condition("validate.score gte 80"),
            json!("approved"),
        ))
        .step(recording_step(
            &events,
            StepDef::new("escalate")
                .depends_on("validate")
                .condition("validate.score lt 80"),
            json!("escalated"),
        ))
        .output_priority(["approve", "escalate"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let high = client
        .run_flow("review", &json!({"score": 90}), RunFlowOpts::default())
        .await?;
    let high_output = output_of(&client, &high).await?;
    let low = client
        .run_flow("review", &json!({"score": 10}), RunFlowOpts::default())
        .await?;
    let low_output = output_of(&client, &low).await?;
    let high_escalate = step_run(&client, "review", high.id(), "escalate").await;
    let low_approve = step_run(&client, "review", low.id(), "approve").await;

    assert_eq!(high_output, json!("approved"));
    assert_eq!(low_output, json!("escalated"));
    assert_eq!(high_escalate.status, StepStatus::Skipped);
    assert_eq!(high_escalate.attempts, 0);
    assert!(high_escalate.skipped_at.is_some());
    assert_eq!(low_approve.status, StepStatus::Skipped);
    assert_eq!(events.names(), ["approve", "escalate"]);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_branches_on_negated_conditions() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let check_fraud = step(
        StepDef::new("check_fraud"),
        |args: StepArgs, _ctx: StepContext| async move {
            let amount: i64 = args.input::<Value>()?["amount"].as_i64().unwrap_or(0);
            Ok(json!({"flagged": amount > 1000}))
        },
    );
    let flow = Flow::new("payment")
        .step(check_fraud)
        .step(recording_step(
            &events,
            StepDef::new("charge")
                .depends_on("check_fraud")
                .condition("not check_fraud.flagged eq true"),
            json!("charged"),
        ))
        .step(recording_step(
            &events,
            StepDef::new("hold")
                .depends_on("check_fraud")
                .condition("check_fraud.flagged eq true"),
            json!("held for review"),
        ))
        .output_priority(["charge", "hold"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let small = client
        .run_flow("payment", &json!({"amount": 50}), RunFlowOpts::default())
        .await?;
    let small_output = output_of(&client, &small).await?;
    let large = client
        .run_flow("payment", &json!({"amount": 5000}), RunFlowOpts::default())
        .await?;
    let large_output = output_of(&client, &large).await?;

    assert_eq!(small_output, json!("charged"));
    assert_eq!(
        step_run(&client, "payment", small.id(), "hold")
            .await
            .status,
        StepStatus::Skipped
    );
    assert_eq!(large_output, json!("held for review"));
    assert_eq!(
        step_run(&client, "payment", large.id(), "charge")
            .await
            .status,
        StepStatus::Skipped
    );
    assert_eq!(events.names(), ["charge", "hold"]);

    worker.stop().await;
    Ok(())
}

/// Builds the routing flow: `approve` and `escalate` are alternatives, `finish`
/// joins them as optional dependencies and `audit` follows `finish`.
fn route_flow(events: &Events) -> Flow {
    let recorded = events.clone();
    let finish = step(
        StepDef::new("finish")
            .depends_on_optional("approve")
            .depends_on_optional("escalate"),
        move |args: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("finish");
                Ok(json!({
                    "approve": args.optional_dependency::<String>("approve")?,
                    "escalate": args.optional_dependency::<String>("escalate")?,
                }))
            }
        },
    );
    Flow::new("route")
        .step(echo_step(StepDef::new("validate")))
        .step(recording_step(
            events,
            StepDef::new("approve")
                .depends_on("validate")
                .condition("validate.score gte 80"),
            json!("approved"),
        ))
        .step(recording_step(
            events,
            StepDef::new("escalate")
                .depends_on("validate")
                .condition("validate.score lt 80"),
            json!("escalated"),
        ))
        .step(finish)
        .step(recording_step(
            events,
            StepDef::new("audit").depends_on("finish"),
            json!("logged"),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_runs_after_a_skipped_branch() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = route_flow(&events);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let cases = [
        (
            json!({"score": 90}),
            StepStatus::Completed,
            StepStatus::Skipped,
            json!({"approve": "approved", "escalate": null}),
        ),
        (
            json!({"score": 10}),
            StepStatus::Skipped,
            StepStatus::Completed,
            json!({"approve": null, "escalate": "escalated"}),
        ),
        (
            json!({}),
            StepStatus::Skipped,
            StepStatus::Skipped,
            json!({"approve": null, "escalate": null}),
        ),
    ];
    for (input, approve_status, escalate_status, finish_output) in cases {
        let finish_calls = events.count("finish");
        let run = client
            .run_flow("route", &input, RunFlowOpts::default())
            .await?;
        let output = output_of(&client, &run).await?;
        let approve = step_run(&client, "route", run.id(), "approve").await;
        let escalate = step_run(&client, "route", run.id(), "escalate").await;
        let finish = step_run(&client, "route", run.id(), "finish").await;
        let audit = step_run(&client, "route", run.id(), "audit").await;

        assert_eq!(output, json!("logged"), "{input}");
        assert_eq!(run.get().await?.status, RunStatus::Completed, "{input}");
        assert_eq!(approve.status, approve_status, "{input}");
        assert_eq!(escalate.status, escalate_status, "{input}");
        assert_eq!(finish.output, Some(finish_output), "{input}");
        assert_eq!(finish.attempts, 1, "{input}");
        assert_eq!(events.count("finish"), finish_calls + 1, "{input}");
        assert_eq!(audit.status, StepStatus::Completed, "{input}");
    }

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ne_on_a_missing_field_runs_the_step() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = Flow::new("missing_field")
        .step(echo_step(StepDef::new("step1")))
        .step(recording_step(
            &events,
            StepDef::new("step2")
                .depends_on("step1")
                .condition("step1.optional_field ne value"),
            json!("ran"),
        ));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow(
            "missing_field",
            &json!({"other": 1}),
            RunFlowOpts::default(),
        )
        .await?;
    let output = output_of(&client, &run).await?;

    assert_eq!(output, json!("ran"));
    assert_eq!(events.names(), ["step2"]);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_comparison_skips_the_step() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = Flow::new("nested")
        .step(echo_step(StepDef::new("step1")))
        .step(recording_step(
            &events,
            StepDef::new("adult")
                .depends_on("step1")
                .condition("step1.data.user.age gte 18"),
            json!("adult"),
        ))
        .step(recording_step(
            &events,
            StepDef::new("always"),
            json!("always"),
        ))
        .output_priority(["adult", "always"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow(
            "nested",
            &json!({"data": {"user": {"age": 15}}}),
            RunFlowOpts::default(),
        )
        .await?;
    let output = output_of(&client, &run).await?;
    let adult = step_run(&client, "nested", run.id(), "adult").await;

    assert_eq!(output, json!("always"));
    assert_eq!(adult.status, StepStatus::Skipped);
    assert!(!events.contains("adult"));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_of_skipped_step_receives_none() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let consumer = step(
        StepDef::new("consumer").depends_on_optional("maybe"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(match args.optional_dependency::<String>("maybe")? {
                Some(value) => format!("present:{value}"),
                None => "absent".to_owned(),
            })
        },
    );
    let flow = Flow::new("optional")
        .step(recording_step(
            &events,
            StepDef::new("maybe").condition("input.enabled eq true"),
            json!("one"),
        ))
        .step(consumer);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let disabled = client
        .run_flow(
            "optional",
            &json!({"enabled": false}),
            RunFlowOpts::default(),
        )
        .await?;
    let disabled_output = output_of(&client, &disabled).await?;
    let skipped = step_run(&client, "optional", disabled.id(), "maybe").await;
    let enabled = client
        .run_flow(
            "optional",
            &json!({"enabled": true}),
            RunFlowOpts::default(),
        )
        .await?;
    let enabled_output = output_of(&client, &enabled).await?;

    assert_eq!(disabled_output, json!("absent"));
    assert_eq!(skipped.status, StepStatus::Skipped);
    assert_eq!(skipped.output, None);
    assert_eq!(enabled_output, json!("present:one"));
    assert_eq!(events.names(), ["maybe"]);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_cascade_through_conditional_dependents() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = Flow::new("cascade")
        .step(recording_step(
            &events,
            StepDef::new("first").condition("input.go eq true"),
            json!({"ok": true}),
        ))
        .step(recording_step(
            &events,
            StepDef::new("second")
                .depends_on_optional("first")
                .condition("first.ok eq true"),
            json!("second"),
        ))
        .step(recording_step(
            &events,
            StepDef::new("third").depends_on_optional("second"),
            json!("third"),
        ));
    client.create_flow(flow.definition()).await?;

    // The skips happen when the run is created, before any worker exists.
    let run = client
        .run_flow("cascade", &json!({"go": false}), RunFlowOpts::default())
        .await?;
    let first = step_run(&client, "cascade", run.id(), "first").await;
    let second = step_run(&client, "cascade", run.id(), "second").await;
    let third = step_run(&client, "cascade", run.id(), "third").await;
    assert_eq!(first.status, StepStatus::Skipped);
    assert_eq!(second.status, StepStatus::Skipped);
    assert_eq!(third.status, StepStatus::Queued);

    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let output = output_of(&client, &run).await?;
    assert_eq!(output, json!("third"));
    assert_eq!(events.names(), ["third"]);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_condition_can_skip_the_step() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let record = step(
        StepDef::new("record").depends_on_optional("approve"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(args
                .optional_dependency::<String>("approve")?
                .unwrap_or_else(|| "rejected".to_owned()))
        },
    );
    let flow = Flow::new("signal_gate")
        .step(recording_step(
            &events,
            StepDef::new("approve")
                .signal()
                .condition("signal.approved eq true"),
            json!("approved"),
        ))
        .step(record);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("signal_gate", &json!({}), RunFlowOpts::default())
        .await?;
    run.signal("approve", &json!({"approved": false})).await?;
    let output = output_of(&client, &run).await?;
    let approve = step_run(&client, "signal_gate", run.id(), "approve").await;

    assert_eq!(output, json!("rejected"));
    assert_eq!(approve.status, StepStatus::Skipped);
    assert_eq!(approve.signal_input, Some(json!({"approved": false})));
    assert!(!events.contains("approve"));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_output_candidates_skipped_fails_the_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let flow = Flow::new("no_candidate")
        .step(recording_step(
            &events,
            StepDef::new("maybe").condition("input.go eq true"),
            json!("went"),
        ))
        .on_fail(
            move |_: Value, failure: FlowFailure| {
                let events = recorded.clone();
                async move {
                    let input = match failure.failed_step_input_as::<Value>() {
                        Err(Error::NoFailedStepInput) => "no input".to_owned(),
                        other => format!("{other:?}"),
                    };
                    events.record(format!(
                        "on-fail step=\"{}\" input={input}",
                        failure.failed_step_name
                    ));
                    Ok::<_, anyhow::Error>(())
                }
            },
            None,
        );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow(
            "no_candidate",
            &json!({"go": false}),
            RunFlowOpts::default(),
        )
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();
    wait_on_fail_status(&db, "no_candidate", run.id(), "completed").await;

    assert!(error.is_no_output_candidate(), "{error:?}");
    assert!(
        matches!(&error, Error::RunFailed(message) if message == NO_OUTPUT_CANDIDATE),
        "{error:?}"
    );
    assert_eq!(run.get().await?.failed_step_name, None);
    assert_eq!(events.names(), ["on-fail step=\"\" input=no input"]);

    worker.stop().await;
    Ok(())
}
