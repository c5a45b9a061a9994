//! Fan-out steps executed by workers: mappers over the flow input and over a
//! step's output, generators, reducers, their failures, retries,
//! cancellation and scale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::flow::{RunFlowOpts, StepDef, StepStatus};
use catbird_core::task::RunStatus;
use catbird_core::{Client, Error};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{Flow, FlowFailure, StepArgs, StepContext, StepHandler, Worker, Yielder};
use serde_json::{Value, json};

use crate::flow_helpers::{
    DEADLINE, Events, output_of, start, step, step_run, unfinished_steps, wait_run_status,
};

/// Builds a mapper over the flow input that doubles each number.
fn double_input(calls: Arc<AtomicUsize>) -> StepHandler {
    step(
        StepDef::new("double").map_input(),
        move |args: StepArgs, _ctx: StepContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(args.input::<i64>()? * 2)
            }
        },
    )
}

/// Builds a reducer that sums the item outputs of `source`.
fn sum_of(source: &str) -> StepHandler {
    StepHandler::reducer(
        StepDef::new("sum").reduce(source),
        |total: i64, item: i64| async move { Ok::<_, anyhow::Error>(total + item) },
    )
}

/// Builds a generator step yielding 0..n (n is the flow input), each item
/// doubled.
fn generate_doubles() -> StepHandler {
    StepHandler::generator(
        StepDef::new("numbers").generator(),
        |args: StepArgs, out: Yielder<i64>, _ctx: StepContext| async move {
            let n: i64 = args.input()?;
            out.send_all(0..n).await?;
            Ok::<_, anyhow::Error>(())
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item * 2) },
    )
}

/// Counts the rows of a flow's item table by status.
async fn item_statuses(db: &TestDb, flow: &str) -> HashMap<String, i64> {
    let client = db.pool.get().await.expect("take a pooled connection");
    client
        .query(
            &format!("SELECT status, count(*) FROM cb_m_{flow} GROUP BY status"),
            &[],
        )
        .await
        .expect("count the items")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_input_keeps_element_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    // Later elements finish first, so completion order differs from
    // element order.
    let double = step(
        StepDef::new("double").map_input(),
        |args: StepArgs, _ctx: StepContext| async move {
            let n: u64 = args.input()?;
            tokio::time::sleep(Duration::from_millis(60 - 20 * n)).await;
            Ok(n * 2)
        },
    )
    .concurrency(3);
    let flow = Flow::new("dbl").step(double);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("dbl", &[1, 2, 3], RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([2, 4, 6]));
    let double = step_run(&client, "dbl", run.id(), "double").await;
    assert_eq!(double.status, StepStatus::Completed);
    assert_eq!(double.output, Some(json!([2, 4, 6])));

    let info = client.get_flow("dbl").await?;
    assert_eq!(info.steps[0].kind, "mapper");
    assert_eq!(info.steps[0].map_source.as_deref(), Some("input"));
    drop(calls);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_empty_array_completes_at_once() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let dbl = Flow::new("dbl").step(double_input(calls.clone()));
    let dbl_sum = Flow::new("dbl_sum")
        .step(double_input(calls.clone()))
        .step(sum_of("double"));
    let numbers = step(
        StepDef::new("numbers"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(Vec::<i64>::new()) },
    );
    let mapped = step(
        StepDef::new("double").map_step_output("numbers"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.dependency::<i64>("numbers")? * 2) },
    );
    let count = step(
        StepDef::new("count").depends_on("double"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok(args.dependency::<Vec<i64>>("double")?.len())
        },
    );
    let num_map = Flow::new("num_map").step(numbers).step(mapped).step(count);
    for flow in [&dbl, &dbl_sum, &num_map] {
        client.create_flow(flow.definition()).await?;
    }
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .flow(dbl)
            .flow(dbl_sum)
            .flow(num_map),
    )
    .await;

    let empty: [i64; 0] = [];
    let run = client
        .run_flow("dbl", &empty, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([]));
    let run = client
        .run_flow("dbl_sum", &empty, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(0));
    let run = client
        .run_flow("num_map", &Value::Null, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(0));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_non_array_source_fails_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let flow = Flow::new("mapf").step(double_input(calls.clone()));
    client.create_flow(flow.definition()).await?;

    // No worker is needed: the run fails when the step activates.
    for (input, kind) in [(Value::Null, "null"), (json!({"not": "array"}), "object")] {
        let run = client
            .run_flow("mapf", &input, RunFlowOpts::default())
            .await?;
        let failed = wait_run_status(&client, "mapf", run.id(), RunStatus::Failed).await;
        let message = failed.error_message.unwrap_or_default();
        assert!(
            message.contains("map source for step \"double\" must be a JSON array")
                && message.contains(kind),
            "{message}"
        );
        assert!(unfinished_steps(&client, "mapf", run.id()).await.is_empty());
        match run.wait_for_output_on(&client, Default::default()).await {
            Err(Error::RunFailed(text)) => assert!(text.contains("JSON array"), "{text}"),
            other => panic!("expected a failed run, got {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_step_output_passes_element() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let users = step(
        StepDef::new("users"),
        |_: StepArgs, _ctx: StepContext| async move { Ok(json!([{"name": "ada"}, {"name": "alan"}])) },
    );
    let greeting = step(
        StepDef::new("greeting"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(format!("{},", args.input::<String>()?)) },
    );
    let greet = step(
        StepDef::new("greet")
            .depends_on("greeting")
            .map_step_output("users"),
        |args: StepArgs, ctx: StepContext| async move {
            let user: Value = args.dependency("users")?;
            let item: Value = args.item()?;
            assert_eq!(user, item);
            Ok(format!(
                "{} {} #{}",
                args.dependency::<String>("greeting")?,
                user["name"].as_str().unwrap_or_default(),
                ctx.item_index().unwrap_or(-1)
            ))
        },
    );
    let flow = Flow::new("greetings")
        .step(users)
        .step(greeting)
        .step(greet);
    client.create_flow(flow.definition()).await?;
    let info = client.get_flow("greetings").await?;
    assert_eq!(info.steps[2].depends_on, ["greeting", "users"]);
    assert_eq!(info.steps[2].map_source.as_deref(), Some("users"));
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("greetings", "hello", RunFlowOpts::default())
        .await?;
    assert_eq!(
        output_of(&client, &run).await?,
        json!(["hello, ada #0", "hello, alan #1"])
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_item_succeeds_on_retry() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let seen = events.clone();
    let double = step(
        StepDef::new("double").map_input(),
        move |args: StepArgs, ctx: StepContext| {
            let seen = seen.clone();
            async move {
                let n: i64 = args.input()?;
                seen.record(format!("{n}@{}", ctx.attempt()));
                if n == 2 && ctx.attempt() == 1 {
                    anyhow::bail!("flaky item {n}");
                }
                Ok(n * 2)
            }
        },
    )
    .max_retries(2);
    let flow = Flow::new("flaky").step(double);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("flaky", &[1, 2, 3], RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([2, 4, 6]));
    assert_eq!(events.count("2@1"), 1);
    assert_eq!(events.count("2@2"), 1);
    assert_eq!(events.count("1@1") + events.count("3@1"), 2);
    assert_eq!(events.names().len(), 4, "{:?}", events.names());
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_item_out_of_retries_fails_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let failures: Arc<Mutex<Vec<Value>>> = Arc::default();
    let double = step(
        StepDef::new("double").map_input(),
        |args: StepArgs, _ctx: StepContext| async move {
            let item: Value = args.input()?;
            if item["id"] == 10 {
                anyhow::bail!("item {} is broken", item["id"]);
            }
            // The others wait, so they are still running or queued when the
            // broken item fails.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(item)
        },
    )
    .max_retries(1)
    .concurrency(2);
    let recorded = failures.clone();
    let flow = Flow::new("items").step(double).on_fail(
        move |input: Value, failure: FlowFailure| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().expect("failures").push(json!({
                    "input": input,
                    "step": failure.failed_step_name,
                    "item": failure.failed_step_input_as::<Value>()?,
                    "attempts": failure.attempts,
                }));
                Ok::<_, anyhow::Error>(())
            }
        },
        None,
    );
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let input = json!([{"id": 1}, {"id": 10}, {"id": 2}, {"id": 3}]);
    let run = client
        .run_flow("items", &input, RunFlowOpts::default())
        .await?;
    match output_of(&client, &run).await {
        Err(Error::RunFailed(message)) => {
            assert!(message.contains("item 10 is broken"), "{message}")
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
    let double = step_run(&client, "items", run.id(), "double").await;
    assert_eq!(double.status, StepStatus::Failed);
    wait_for("the on-fail handler", DEADLINE, || async {
        (!failures.lock().expect("failures").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        failures.lock().expect("failures")[0],
        json!({"input": input, "step": "double", "item": {"id": 10}, "attempts": 2})
    );
    // Nothing of the run is left to claim.
    let statuses = item_statuses(&db, "items").await;
    assert!(
        !statuses.contains_key("queued") && !statuses.contains_key("started"),
        "{statuses:?}"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_items_doubled_and_reduced() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let plain = Flow::new("gen").step(generate_doubles());
    let reduced = Flow::new("gen_sum")
        .step(generate_doubles())
        .step(sum_of("numbers"));
    client.create_flow(plain.definition()).await?;
    client.create_flow(reduced.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(plain).flow(reduced)).await;

    let run = client.run_flow("gen", &5, RunFlowOpts::default()).await?;
    assert_eq!(output_of(&client, &run).await?, json!([0, 2, 4, 6, 8]));
    let run = client
        .run_flow("gen_sum", &5, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(20));
    let run = client
        .run_flow("gen_sum", &0, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(0));

    let info = client.get_flow("gen_sum").await?;
    assert_eq!(info.steps[0].kind, "generator");
    assert_eq!(info.steps[1].kind, "reducer");
    assert_eq!(info.steps[1].reduce_source.as_deref(), Some("numbers"));
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_items_run_while_yielding() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let (in_generator, in_items) = (events.clone(), events.clone());
    let generator = StepHandler::generator(
        StepDef::new("numbers")
            .depends_on("base")
            .signal()
            .generator(),
        move |args: StepArgs, out: Yielder<i64>, _ctx: StepContext| {
            let events = in_generator.clone();
            async move {
                let base: i64 = args.dependency("base")?;
                let step: i64 = args.signal()?;
                out.send(base).await?;
                // The first item is written once the batch is full (size 1),
                // and handled before the generator goes on.
                events.wait_for("handled 0").await;
                out.send(base + step).await?;
                Ok::<_, anyhow::Error>(())
            }
        },
        move |item: i64, ctx: StepContext| {
            let events = in_items.clone();
            async move {
                events.record(format!("handled {}", ctx.item_index().unwrap_or(-1)));
                Ok::<_, anyhow::Error>(item)
            }
        },
    )
    .batch_size(1);
    let base = step(
        StepDef::new("base"),
        |args: StepArgs, _ctx: StepContext| async move { Ok(args.input::<i64>()?) },
    );
    let flow = Flow::new("stream").step(base).step(generator);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("stream", &10, RunFlowOpts::default())
        .await?;
    // The signal arrives before the dependency completed, or after.
    client
        .signal_flow("stream", run.id(), "numbers", &5)
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([10, 15]));
    assert_eq!(events.names(), ["handled 0", "handled 1"]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_retry_starts_over() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let generator = StepHandler::generator(
        StepDef::new("numbers").generator(),
        move |args: StepArgs, out: Yielder<i64>, ctx: StepContext| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let stop_at: i64 = args.input()?;
                for n in 0..3 {
                    if n == stop_at && ctx.attempt() == 1 {
                        anyhow::bail!("generator stopped at {n}");
                    }
                    if n == stop_at && stop_at == 1 {
                        anyhow::bail!("generator stopped at {n}");
                    }
                    out.send(n).await?;
                }
                Ok(())
            }
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item) },
    )
    .batch_size(1)
    .max_retries(1)
    .backoff(Duration::from_millis(1), Duration::from_millis(10));
    let flow = Flow::new("gen_retry").step(generator);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    // Input 2: the first attempt yields 0 and 1, then fails; the retry
    // yields 0, 1, 2 without the earlier items doubling up.
    let run = client
        .run_flow("gen_retry", &2, RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!([0, 1, 2]));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // Input 1: every attempt fails; the run fails with the generator's error.
    let run = client
        .run_flow("gen_retry", &1, RunFlowOpts::default())
        .await?;
    match output_of(&client, &run).await {
        Err(Error::RunFailed(message)) => {
            assert!(message.contains("generator stopped at 1"), "{message}")
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
    let numbers = step_run(&client, "gen_retry", run.id(), "numbers").await;
    assert_eq!((numbers.status, numbers.attempts), (StepStatus::Failed, 2));
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reducer_retry_keeps_item_outputs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let items = Arc::new(AtomicUsize::new(0));
    let folds = Arc::new(AtomicUsize::new(0));
    let counter = folds.clone();
    let sum = StepHandler::reducer(
        StepDef::new("sum").reduce("double"),
        move |total: i64, item: i64| {
            let counter = counter.clone();
            async move {
                // The first fold fails at its third item.
                if counter.fetch_add(1, Ordering::SeqCst) == 2 {
                    anyhow::bail!("fold failed");
                }
                Ok(total + item)
            }
        },
    )
    .max_retries(1)
    .backoff(Duration::from_millis(1), Duration::from_millis(10));
    let flow = Flow::new("dbl_sum")
        .step(double_input(items.clone()))
        .step(sum);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("dbl_sum", &[1, 2, 3, 4], RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(20));
    assert_eq!(items.load(Ordering::SeqCst), 4);
    assert_eq!(folds.load(Ordering::SeqCst), 3 + 4);
    let sum = step_run(&client, "dbl_sum", run.id(), "sum").await;
    assert_eq!(sum.attempts, 2);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reducer_of_skipped_source_returns_default() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let double = step(
        StepDef::new("double")
            .map_input()
            .condition("input[0] gt 100"),
        move |args: StepArgs, _ctx: StepContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(args.input::<i64>()? * 2)
            }
        },
    );
    let flow = Flow::new("maybe").step(double).step(sum_of("double"));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("maybe", &[1, 2], RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!(0));
    let double = step_run(&client, "maybe", run.id(), "double").await;
    assert_eq!(double.status, StepStatus::Skipped);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_mapper_output_is_absent() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let after = step(
        StepDef::new("after").depends_on_ignoring_output("double"),
        |args: StepArgs, _ctx: StepContext| async move {
            // The flow input is the whole array; the mapper's output is absent.
            Ok(json!({
                "input": args.input::<Value>()?,
                "double": args.optional_dependency::<Value>("double")?,
            }))
        },
    );
    let flow = Flow::new("ignored").step(double_input(calls)).step(after);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow("ignored", &[1, 2], RunFlowOpts::default())
        .await?;
    assert_eq!(
        output_of(&client, &run).await?,
        json!({"input": [1, 2], "double": null})
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_items_shared_by_two_workers() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let seen: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let handler = |seen: Arc<Mutex<HashMap<i64, usize>>>| {
        step(
            StepDef::new("double").map_input(),
            move |args: StepArgs, _ctx: StepContext| {
                let seen = seen.clone();
                async move {
                    let n: i64 = args.input()?;
                    *seen.lock().expect("seen").entry(n).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok(n * 2)
                }
            },
        )
        .concurrency(4)
        .batch_size(8)
    };
    let first = Flow::new("shared").step(handler(seen.clone()));
    let second = Flow::new("shared").step(handler(seen.clone()));
    client.create_flow(first.definition()).await?;
    let one = start(&db, Worker::new(db.pool.clone()).flow(first)).await;
    let two = start(&db, Worker::new(db.pool.clone()).flow(second)).await;

    let input: Vec<i64> = (0..200).collect();
    let run = client
        .run_flow("shared", &input, RunFlowOpts::default())
        .await?;
    let expected: Vec<i64> = input.iter().map(|n| n * 2).collect();
    assert_eq!(output_of(&client, &run).await?, json!(expected));
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|count| *count == 1), "{seen:?}");
    one.stop().await;
    two.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_cancel_stops_items() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events = Events::default();
    let seen = events.clone();
    let slow = step(
        StepDef::new("slow").map_input(),
        move |args: StepArgs, ctx: StepContext| {
            let seen = seen.clone();
            async move {
                let n: i64 = args.input()?;
                seen.record(format!("started {n}"));
                ctx.cancelled().await;
                seen.record(format!("stopped {n}"));
                Ok(n)
            }
        },
    )
    .concurrency(2);
    let flow = Flow::new("slowmap").step(slow);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("slowmap", &[0, 1, 2, 3, 4], RunFlowOpts::default())
        .await?;
    events.wait_for("started 0").await;
    events.wait_for("started 1").await;
    client
        .cancel_flow_run("slowmap", run.id(), Some("enough"))
        .await?;
    wait_run_status(&client, "slowmap", run.id(), RunStatus::Canceled).await;
    events.wait_for("stopped 0").await;
    events.wait_for("stopped 1").await;
    let statuses = item_statuses(&db, "slowmap").await;
    assert_eq!(statuses.get("canceled"), Some(&5), "{statuses:?}");
    assert!(
        unfinished_steps(&client, "slowmap", run.id())
            .await
            .is_empty()
    );
    // The other items never started.
    assert_eq!(
        events
            .names()
            .iter()
            .filter(|e| e.starts_with("started"))
            .count(),
        2
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_early_completion_cancels_items() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let finder = step(
        StepDef::new("find").map_input(),
        |args: StepArgs, ctx: StepContext| async move {
            let n: i64 = args.input()?;
            if n == 7 {
                ctx.complete_early(&json!({"found": n}), "found it").await?;
            } else {
                ctx.cancelled().await;
            }
            Ok(n)
        },
    )
    .concurrency(3);
    let flow = Flow::new("search").step(finder);
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("search", &[1, 7, 3, 4, 5], RunFlowOpts::default())
        .await?;
    assert_eq!(output_of(&client, &run).await?, json!({"found": 7}));
    wait_for("every item to finish", DEADLINE, || async {
        let statuses = item_statuses(&db, "search").await;
        (!statuses.contains_key("queued") && !statuses.contains_key("started")).then_some(())
    })
    .await;
    let find = step_run(&client, "search", run.id(), "find").await;
    assert_eq!(find.status, StepStatus::Canceled);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_ten_thousand_items_in_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let flow = Flow::new("big").step(double_input(calls.clone()).concurrency(32).batch_size(256));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let input: Vec<i64> = (0..10_000).collect();
    let run = client
        .run_flow("big", &input, RunFlowOpts::default())
        .await?;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        run.wait_for_output_on(&client, Default::default()),
    )
    .await??;
    let output: Vec<i64> = serde_json::from_value(output)?;
    assert_eq!(output.len(), 10_000);
    assert!(
        output
            .iter()
            .enumerate()
            .all(|(i, out)| *out == 2 * i as i64)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 10_000);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reducer_over_many_items_writes_small_rows() -> anyhow::Result<()> {
    const ITEMS: i64 = 100_000;
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let generator = StepHandler::generator(
        StepDef::new("numbers").generator(),
        |args: StepArgs, out: Yielder<i64>, _ctx: StepContext| async move {
            out.send_all(0..args.input::<i64>()?).await?;
            Ok::<_, anyhow::Error>(())
        },
        |item: i64, _ctx: StepContext| async move { Ok::<_, anyhow::Error>(item) },
    )
    .concurrency(64)
    .batch_size(1_000);
    let flow = Flow::new("huge").step(generator).step(sum_of("numbers"));
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("huge", &ITEMS, RunFlowOpts::default())
        .await?;
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        run.wait_for_output_on(&client, Default::default()),
    )
    .await??;
    assert_eq!(output, json!(ITEMS * (ITEMS - 1) / 2));

    // No row holds the item outputs together: not the step runs, not the
    // flow run, not an item.
    let conn = db.pool.get().await?;
    for table in ["cb_f_huge", "cb_s_huge", "cb_m_huge"] {
        let largest: i32 = conn
            .query_one(
                &format!("SELECT max(pg_column_size(t.*)) FROM {table} t"),
                &[],
            )
            .await?
            .get(0);
        assert!(largest < 1_024, "{table} has a row of {largest} bytes");
    }
    worker.stop().await;
    Ok(())
}
