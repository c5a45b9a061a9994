//! Flow runs executed by a worker: activation, outputs, run options and
//! large graphs.

use std::time::Duration;

use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error, PollOpts};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, StepArgs, StepContext, Worker};
use serde_json::{Map, Value, json};

use crate::flow_helpers::{DEADLINE, Events, output_of, start, step, step_run, wait_step_status};
use crate::helpers::db_now;

fn double_add() -> Flow {
    let double = step(
        StepDef::new("double"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? * 2) },
    );
    let add = step(
        StepDef::new("add").depends_on("double"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.dependency::<i64>("double")? + 1) },
    );
    Flow::new("double_add").step(double).step(add)
}

/// Waits in a handler until `other` has been recorded, so two handlers that
/// each wait for the other can only both return when they overlapped.
async fn wait_in_handler(events: &Events, other: &str) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    while !events.contains(other) {
        if started.elapsed() > DEADLINE {
            anyhow::bail!("\"{other}\" never happened while this handler ran");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_flow_passes_outputs_along() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_flow(double_add().definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(double_add())).await;

    let run = client
        .run_flow("double_add", &10, RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    assert_eq!(output, json!(21));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_fails_the_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let boom = step(
        StepDef::new("boom"),
        |_: StepArgs, _ctx: StepContext| async move { Err::<(), _>(anyhow::anyhow!("boom")) },
    );
    let flow = Flow::new("failing").step(boom);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("failing", &json!({}), RunFlowOpts::default())
        .await?;
    let error = output_of(&client, &run).await.unwrap_err();
    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "boom"),
        "{error}"
    );
    assert_eq!(run.get().await?.failed_step_name.as_deref(), Some("boom"));

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_steps_are_queued_when_the_run_starts() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(
            &FlowDef::new("roots")
                .step(StepDef::new("left"))
                .step(StepDef::new("right"))
                .step(StepDef::new("join").depends_on("left").depends_on("right")),
        )
        .await?;

    let run = client
        .run_flow("roots", &json!({}), RunFlowOpts::default())
        .await?;
    let info = run.get().await?;
    let left = step_run(&client, "roots", run.id(), "left").await;
    let right = step_run(&client, "roots", run.id(), "right").await;
    let join = step_run(&client, "roots", run.id(), "join").await;

    assert_eq!(info.status, RunStatus::Started);
    assert_eq!(left.status, StepStatus::Queued);
    assert_eq!(right.status, StepStatus::Queued);
    assert_eq!(join.status, StepStatus::WaitingForDependencies);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_branches_overlap_on_two_workers() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();

    // Each worker executes one branch, so the branches run in two workers.
    // Each branch handler returns only once the other branch has started.
    let branch = |name: &'static str, other: &'static str| {
        let events = events.clone();
        step(StepDef::new(name), move |_: StepArgs, _ctx: StepContext| {
            let events = events.clone();
            async move {
                events.record(format!("{name} started"));
                wait_in_handler(&events, &format!("{other} started")).await?;
                events.record(format!("{name} finished"));
                Ok(name)
            }
        })
    };
    let join_def = StepDef::new("join").depends_on("left").depends_on("right");
    let join = step(
        join_def.clone(),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(format!(
                "{}+{}",
                args.dependency::<String>("left")?,
                args.dependency::<String>("right")?
            ))
        },
    );
    let flow_a = Flow::new("branches")
        .step(branch("left", "right"))
        .step(StepDef::new("right"))
        .step(join);
    let flow_b = Flow::new("branches")
        .step(StepDef::new("left"))
        .step(branch("right", "left"))
        .step(join_def);
    client.create_flow(flow_a.definition()).await?;
    let worker_a = start(&db, Worker::new(db.pool.clone()).flow(flow_a)).await;
    let worker_b = start(&db, Worker::new(db.pool.clone()).flow(flow_b)).await;

    let run = client
        .run_flow("branches", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    let left = step_run(&client, "branches", run.id(), "left").await;
    let right = step_run(&client, "branches", run.id(), "right").await;
    let time = |event: &str| events.time_of(event).expect(event);

    assert_eq!(output, json!("left+right"));
    assert!(time("left started") < time("right finished"));
    assert!(time("right started") < time("left finished"));
    assert!(left.started_at < right.completed_at);
    assert!(right.started_at < left.completed_at);

    worker_a.stop().await;
    worker_b.stop().await;
    Ok(())
}

fn order_flow(events: &Events) -> Flow {
    let recorder = |name: &'static str| {
        let events = events.clone();
        move |event: &str| events.record(format!("{name} {event}"))
    };

    let record = recorder("validate");
    let validate = step(
        StepDef::new("validate"),
        move |args: StepArgs, _ctx: StepContext| {
            let record = record.clone();
            async move {
                record("started");
                let order: Value = args.input()?;
                record("finished");
                Ok(json!({"order_id": order["id"], "amount": order["amount"]}))
            }
        },
    );

    let record = recorder("charge");
    let charge = step(
        StepDef::new("charge").depends_on("validate"),
        move |args: StepArgs, _ctx: StepContext| {
            let record = record.clone();
            async move {
                record("started");
                let order: Value = args.dependency("validate")?;
                record("finished");
                Ok(json!({"charged": order["amount"]}))
            }
        },
    );

    let record = recorder("check_inventory");
    let check_inventory = step(
        StepDef::new("check_inventory").depends_on("validate"),
        move |args: StepArgs, _ctx: StepContext| {
            let record = record.clone();
            async move {
                record("started");
                let order: Value = args.dependency("validate")?;
                // Finishing later than charge makes ship wait for this branch.
                tokio::time::sleep(Duration::from_millis(150)).await;
                record("finished");
                Ok(json!({"in_stock": true, "order_id": order["order_id"]}))
            }
        },
    );

    let record = recorder("ship");
    let ship = step(
        StepDef::new("ship")
            .depends_on("charge")
            .depends_on("check_inventory"),
        move |args: StepArgs, _ctx: StepContext| {
            let record = record.clone();
            async move {
                record("started");
                let charge: Value = args.dependency("charge")?;
                let stock: Value = args.dependency("check_inventory")?;
                Ok(json!({
                    "shipped": stock["order_id"],
                    "charged": charge["charged"],
                    "in_stock": stock["in_stock"],
                }))
            }
        },
    );

    Flow::new("order_processing")
        .step(validate)
        .step(charge)
        .step(check_inventory)
        .step(ship)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_diamond_passes_outputs_by_name() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let flow = order_flow(&events);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow(
            "order_processing",
            &json!({"id": 42, "amount": 99.5}),
            RunFlowOpts::default(),
        )
        .await?;
    let output = output_of(&client, &run).await?;
    let steps = client
        .get_flow_run_steps("order_processing", run.id())
        .await?;
    let names: Vec<&str> = steps.iter().map(|s| s.step_name.as_str()).collect();
    let time = |event: &str| events.time_of(event).expect(event);

    assert_eq!(
        output,
        json!({"shipped": 42, "charged": 99.5, "in_stock": true})
    );
    assert_eq!(names, ["validate", "charge", "check_inventory", "ship"]);
    assert!(steps.iter().all(|s| s.status == StepStatus::Completed));
    assert!(steps.iter().all(|s| s.attempts == 1));
    assert!(time("validate finished") < time("charge started"));
    assert!(time("validate finished") < time("check_inventory started"));
    assert!(time("charge finished") < time("ship started"));
    assert!(time("check_inventory finished") < time("ship started"));
    assert!(steps[3].started_at >= steps[1].completed_at);
    assert!(steps[3].started_at >= steps[2].completed_at);
    assert_eq!(events.count("ship started"), 1);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_priority_takes_first_listed_completed_step() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let high = step(
        StepDef::new("high"),
        |_: StepArgs, _ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(105)
        },
    );
    let low = step(
        StepDef::new("low"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(5) },
    );
    let middle = step(
        StepDef::new("middle"),
        |_: StepArgs, _ctx: StepContext| async move { Ok("middle") },
    );
    let last = step(
        StepDef::new("last").depends_on("middle"),
        |_: StepArgs, _ctx: StepContext| async move { Ok("last") },
    );
    // "low" finishes first but is listed after "high"; a step that others
    // depend on may be listed too.
    let ranked = Flow::new("ranked")
        .step(low)
        .step(high)
        .output_priority(["high", "low"]);
    let inner = Flow::new("inner")
        .step(middle)
        .step(last)
        .output_priority(["middle", "last"]);
    client.create_flow(ranked.definition()).await?;
    client.create_flow(inner.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(ranked).flow(inner)).await;

    let ranked_run = client
        .run_flow("ranked", &json!({}), RunFlowOpts::default())
        .await?;
    let inner_run = client
        .run_flow("inner", &json!({}), RunFlowOpts::default())
        .await?;

    assert_eq!(output_of(&client, &ranked_run).await?, json!(105));
    assert_eq!(output_of(&client, &inner_run).await?, json!("middle"));
    assert_eq!(
        client.get_flow("ranked").await?.output_priority,
        ["high", "low"]
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_output_follows_definition_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // "first" returns only once "second" has completed.
    let first = step(
        StepDef::new("first"),
        |_: StepArgs, ctx: StepContext| async move {
            let poll = PollOpts::default().poll_interval(Duration::from_millis(10));
            let second = ctx.wait_for_step("second", poll).await?;
            anyhow::ensure!(second.is_completed(), "second ended {}", second.status);
            Ok(11)
        },
    );
    let second = step(
        StepDef::new("second"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(22) },
    );
    let flow = Flow::new("finals").step(first).step(second);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("finals", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    let first_run = step_run(&client, "finals", run.id(), "first").await;
    let second_run = step_run(&client, "finals", run.id(), "second").await;

    assert_eq!(output, json!(11));
    assert!(second_run.completed_at < first_run.completed_at);
    assert_eq!(
        client.get_flow("finals").await?.output_priority,
        ["first", "second"]
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_key_returns_the_started_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let approve = step(
        StepDef::new("approve").signal(),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<Value>()?) },
    );
    let flow = Flow::new("keyed").step(approve);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let keyed = || RunFlowOpts::default().concurrency_key("order-1");

    let first = client.run_flow("keyed", &json!(1), keyed()).await?;
    let duplicate = client.run_flow("keyed", &json!(2), keyed()).await?;
    let other_key = client
        .run_flow(
            "keyed",
            &json!(3),
            RunFlowOpts::default().concurrency_key("order-2"),
        )
        .await?;
    assert_eq!(duplicate.id(), first.id());
    assert_ne!(other_key.id(), first.id());
    assert_eq!(first.get().await?.input, json!(1));
    assert_eq!(
        first.get().await?.concurrency_key.as_deref(),
        Some("order-1")
    );

    first.signal("approve", &json!("ok")).await?;
    assert_eq!(output_of(&client, &first).await?, json!(1));
    let after = client.run_flow("keyed", &json!(4), keyed()).await?;

    assert_ne!(after.id(), first.id());
    assert_eq!(after.get().await?.input, json!(4));
    assert_eq!(after.get().await?.status, RunStatus::Started);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visible_at_delays_the_first_steps() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first = step(
        StepDef::new("first"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(1) },
    );
    let second = step(
        StepDef::new("second").depends_on("first"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.dependency::<i64>("first")? + 1) },
    );
    let flow = Flow::new("delayed").step(first).step(second);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let visible_at = db_now(&db.pool).await + chrono::Duration::milliseconds(1500);
    let run = client
        .run_flow(
            "delayed",
            &json!({}),
            RunFlowOpts::default().visible_at(visible_at),
        )
        .await?;
    let before = step_run(&client, "delayed", run.id(), "first").await;
    let status_before = run.get().await?.status;
    let output = output_of(&client, &run).await?;
    let after = step_run(&client, "delayed", run.id(), "first").await;

    assert_eq!(status_before, RunStatus::Started);
    assert_eq!(before.status, StepStatus::Queued);
    assert_eq!(before.attempts, 0);
    assert_eq!(output, json!(2));
    let started_at = after.started_at.expect("the first step started");
    assert!(started_at >= visible_at, "{started_at} < {visible_at}");

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_priority_is_inherited_by_steps() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(
            &FlowDef::new("ranked")
                .step(StepDef::new("a"))
                .step(StepDef::new("b").depends_on("a")),
        )
        .await?;

    let run = client
        .run_flow("ranked", &json!({}), RunFlowOpts::default().priority(7))
        .await?;
    let plain = client
        .run_flow("ranked", &json!({}), RunFlowOpts::default())
        .await?;
    let steps = client.get_flow_run_steps("ranked", run.id()).await?;
    let plain_steps = client.get_flow_run_steps("ranked", plain.id()).await?;

    assert_eq!(run.get().await?.priority, 7);
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s.priority == 7), "{steps:?}");
    assert!(
        plain_steps.iter().all(|s| s.priority == 0),
        "{plain_steps:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(&FlowDef::new("traced").step(StepDef::new("a")))
        .await?;
    let mut headers = Map::new();
    headers.insert("trace_id".to_owned(), json!("abc-123"));
    headers.insert("attempt".to_owned(), json!(2));

    let run = client
        .run_flow(
            "traced",
            &json!({}),
            RunFlowOpts::default().headers(headers.clone()),
        )
        .await?;
    let plain = client
        .run_flow("traced", &json!({}), RunFlowOpts::default())
        .await?;
    let listed = client.list_flow_runs("traced").await?;

    assert_eq!(run.get().await?.headers, Some(headers.clone()));
    assert_eq!(plain.get().await?.headers, None);
    assert_eq!(listed[1].headers, Some(headers));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_character_in_input_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(&FlowDef::new("strict").step(StepDef::new("a")))
        .await?;

    let error = client
        .run_flow(
            "strict",
            &json!({"name": "a\u{0}b"}),
            RunFlowOpts::default(),
        )
        .await
        .unwrap_err();

    assert!(matches!(error, Error::InvalidPayload { .. }), "{error:?}");
    assert_eq!(client.list_flow_runs("strict").await?.len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_step_chain_completes() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let mut flow = Flow::new("chain").step(step(
        StepDef::new("s0"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(vec![args.input::<i64>()?]) },
    ));
    for i in 1..50 {
        let previous = format!("s{}", i - 1);
        flow = flow.step(step(
            StepDef::new(format!("s{i}")).depends_on(previous.clone()),
            move |args: StepArgs, _ctx: StepContext| {
                let previous = previous.clone();
                async move {
                    let mut seen: Vec<i64> = args.dependency(&previous)?;
                    seen.push(seen[seen.len() - 1] + 1);
                    Ok(seen)
                }
            },
        ));
    }
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("chain", &100, RunFlowOpts::default())
        .await?;
    let output: Vec<i64> = serde_json::from_value(output_of(&client, &run).await?)?;
    let expected: Vec<i64> = (100..150).collect();

    assert_eq!(output, expected);
    assert_eq!(client.get_flow("chain").await?.output_priority, ["s49"]);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_wide_fan_in_completes() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let mut flow = Flow::new("fan_in");
    let mut join = StepDef::new("join");
    for i in 0..50_i64 {
        flow = flow.step(step(
            StepDef::new(format!("b{i}")),
            move |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()? + i) },
        ));
        join = join.depends_on(format!("b{i}"));
    }
    flow = flow.step(step(join, |args: StepArgs, _ctx: StepContext| async move {
        let mut outputs = Vec::new();
        for i in 0..50 {
            outputs.push(args.dependency::<i64>(&format!("b{i}"))?);
        }
        Ok(outputs)
    }));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("fan_in", &1000, RunFlowOpts::default())
        .await?;
    let output: Vec<i64> = serde_json::from_value(output_of(&client, &run).await?)?;
    let expected: Vec<i64> = (1000..1050).collect();
    let join_run = step_run(&client, "fan_in", run.id(), "join").await;

    assert_eq!(output, expected);
    assert_eq!(join_run.attempts, 1);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_dependency_is_awaited_but_not_passed() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let slow = step(
        StepDef::new("slow"),
        |_: StepArgs, _ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(json!({"large": "payload"}))
        },
    );
    let fast = step(
        StepDef::new("fast"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(1) },
    );
    let after = step(
        StepDef::new("after")
            .depends_on("fast")
            .depends_on_ignoring_output("slow"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(json!({
                "fast": args.dependency::<i64>("fast")?,
                "slow": args.optional_dependency::<Value>("slow")?,
                "slow_as_required": args.dependency::<Value>("slow").is_ok(),
            }))
        },
    );
    let flow = Flow::new("ignoring").step(slow).step(fast).step(after);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("ignoring", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    let slow_run = step_run(&client, "ignoring", run.id(), "slow").await;
    let after_run = step_run(&client, "ignoring", run.id(), "after").await;

    assert_eq!(
        output,
        json!({"fast": 1, "slow": null, "slow_as_required": false})
    );
    assert_eq!(slow_run.status, StepStatus::Completed);
    assert!(after_run.started_at >= slow_run.completed_at);
    assert_eq!(
        client.get_flow("ignoring").await?.steps[2].depends_on,
        ["fast", "slow"]
    );

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_status_moves_to_started_while_running() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let recorded = events.clone();
    let hold = step(
        StepDef::new("hold"),
        move |_: StepArgs, _ctx: StepContext| {
            let events = recorded.clone();
            async move {
                events.record("hold started");
                wait_in_handler(&events, "release").await?;
                Ok("held")
            }
        },
    );
    let flow = Flow::new("holding").step(hold);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("holding", &json!({}), RunFlowOpts::default())
        .await?;
    events.wait_for("hold started").await;
    let running = wait_step_status(&client, "holding", run.id(), "hold", StepStatus::Started).await;
    events.record("release");
    let output = output_of(&client, &run).await?;
    let done = wait_for("the run's completion time", DEADLINE, || async {
        run.get()
            .await
            .ok()
            .filter(|info| info.completed_at.is_some())
    })
    .await;

    assert_eq!(running.attempts, 1);
    assert!(running.started_at.is_some());
    assert_eq!(output, json!("held"));
    assert_eq!(done.status, RunStatus::Completed);
    assert!(done.completed_at >= running.started_at);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_step_output_completes_the_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first = step(
        StepDef::new("first"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(()) },
    );
    let second = step(
        StepDef::new("second").depends_on("first"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(json!({"first": args.dependency::<Value>("first")?}))
        },
    );
    let flow = Flow::new("nulls")
        .step(first)
        .step(second)
        .output_priority(["first", "second"]);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("nulls", &json!({}), RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await?;
    let second = step_run(&client, "nulls", run.id(), "second").await;

    assert_eq!(output, Value::Null);
    assert_eq!(run.get().await?.status, RunStatus::Completed);
    assert_eq!(second.output, Some(json!({"first": null})));

    worker.stop().await;
    Ok(())
}
