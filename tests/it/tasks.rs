//! Task definitions, running tasks with their options, and reading and
//! waiting on runs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catbird_core::task::{RunStatus, RunTaskOpts, RunTasksOpts, Task};
use catbird_core::{Client, Error, NameRule};
use catbird_tests::TestDb;
use catbird_worker::{TaskContext, TaskHandler, Worker};
use chrono::Utc;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::task_support::{DEADLINE, Log, echo, output_of, start, wait_status};

fn headers(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("headers must be an object, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_completes_a_run_with_typed_output() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let double = TaskHandler::new("double", |n: i64, _ctx: TaskContext| async move {
        Ok::<_, anyhow::Error>(n * 2)
    });
    let worker = start(&db, Worker::new(db.pool.clone()).task(double)).await;

    let handle = client
        .run_task("double", &21, RunTaskOpts::default())
        .await?;
    let output: i64 = tokio::time::timeout(DEADLINE, handle.typed().wait_for_output()).await??;
    assert_eq!(output, 42);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_retries_then_fails_with_last_error() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flaky = TaskHandler::new("flaky", move |_: Value, ctx: TaskContext| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(anyhow::anyhow!("attempt {} failed", ctx.attempt()))
        }
    })
    .max_retries(2)
    .backoff(Duration::from_millis(1), Duration::from_millis(20));
    let worker = start(&db, Worker::new(db.pool.clone()).task(flaky)).await;

    let handle = client
        .run_task("flaky", &json!({}), RunTaskOpts::default())
        .await?;
    let error = tokio::time::timeout(DEADLINE, handle.wait_for_output())
        .await?
        .unwrap_err();
    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "attempt 3 failed"),
        "{error}"
    );
    let run = handle.get().await?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_is_idempotent() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let report = Task::define("report")
        .description("daily report")
        .retention_period(Duration::from_secs(3600));

    client.create_task(&report).await?;
    let first = client.get_task("report").await?;
    let run = client
        .run_task("report", &1, RunTaskOpts::default())
        .await?;
    client.create_task(&report).await?;
    let second = client.get_task("report").await?;

    assert_eq!(second, first);
    assert_eq!(first.description.as_deref(), Some("daily report"));
    assert_eq!(first.retention_period, Duration::from_secs(3600));
    assert_eq!(client.list_tasks().await?.len(), 1);
    let kept = client.get_task_run("report", run.id()).await?;
    assert_eq!(kept.status, RunStatus::Queued, "runs survive re-creation");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_task_replaces_definition() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_task(
            &Task::define("report")
                .description("first")
                .condition("input.n gte 1")
                .retention_period(Duration::from_secs(60)),
        )
        .await?;
    let created_at = client.get_task("report").await?.created_at;

    client
        .create_task(
            &Task::define("report")
                .description("second")
                .condition("input.m lt 2")
                .retention_period(Duration::from_secs(120)),
        )
        .await?;
    let replaced = client.get_task("report").await?;
    assert_eq!(replaced.description.as_deref(), Some("second"));
    assert_eq!(replaced.condition.as_deref(), Some("input.m lt 2"));
    assert_eq!(replaced.retention_period, Duration::from_secs(120));
    assert_eq!(replaced.created_at, created_at);

    client.create_task(&Task::define("report")).await?;
    let cleared = client.get_task("report").await?;
    assert_eq!(cleared.description, None);
    assert_eq!(cleared.condition, None);
    assert_eq!(cleared.retention_period, Duration::ZERO);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_tasks() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    assert!(client.list_tasks().await?.is_empty());
    for name in ["zeta", "alpha", "mid_1"] {
        client.create_task(&Task::define(name)).await?;
    }

    let names: Vec<String> = client
        .list_tasks()
        .await?
        .into_iter()
        .map(|task| task.name)
        .collect();
    assert_eq!(names, ["alpha", "mid_1", "zeta"]);

    let alpha = client.get_task("alpha").await?;
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.retention_period, Duration::ZERO);

    let missing = client.get_task("missing").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_task_names_are_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let too_long = "a".repeat(59);
    let cases = [
        ("", NameRule::Empty),
        ("Report", NameRule::InvalidCharacter),
        ("send-email", NameRule::InvalidCharacter),
        ("caf\u{e9}", NameRule::InvalidCharacter),
        (too_long.as_str(), NameRule::TooLong),
        ("input", NameRule::Reserved),
    ];
    for (name, expected) in cases {
        let error = client.create_task(&Task::define(name)).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidName { kind: "task", rule, .. } if rule == expected),
            "creating task {name:?}: {error}"
        );
    }
    let error = client
        .run_task("Bad-Name", &1, RunTaskOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidName { .. }),
        "running task Bad-Name: {error}"
    );
    assert!(client.list_tasks().await?.is_empty());

    let longest = "a".repeat(58);
    client.create_task(&Task::define(longest.as_str())).await?;
    assert_eq!(client.get_task(&longest).await?.name, longest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definition_without_handler_stays_queued() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_task(&Task::define("manual").description("run by hand"))
        .await?;
    let manual = client
        .run_task("manual", &1, RunTaskOpts::default())
        .await?;
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;

    let echoed = client.run_task("echo", &2, RunTaskOpts::default()).await?;
    assert_eq!(output_of(&client, "echo", echoed.id()).await?, json!(2));

    let run = manual.get().await?;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.attempts, 0);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_define_task_creates_definition() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = Worker::new(db.pool.clone())
        .define_task(Task::define("audit").description("audit trail"))
        .task(echo("echo"));
    let worker = start(&db, worker).await;

    let audit = client.get_task("audit").await?;
    assert_eq!(audit.description.as_deref(), Some("audit trail"));
    let registered = client.list_workers().await?;
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].task_handlers, ["echo"]);

    let pending = client.run_task("audit", &1, RunTaskOpts::default()).await?;
    let echoed = client.run_task("echo", &2, RunTaskOpts::default()).await?;
    assert_eq!(output_of(&client, "echo", echoed.id()).await?, json!(2));
    assert_eq!(pending.get().await?.status, RunStatus::Queued);

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_key_returns_active_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let gate = CancellationToken::new();
    let inputs = Log::new();
    let sync_user = {
        let gate = gate.clone();
        let inputs = inputs.clone();
        TaskHandler::new("sync_user", move |input: Value, _ctx: TaskContext| {
            let gate = gate.clone();
            let inputs = inputs.clone();
            async move {
                inputs.push(input.clone());
                gate.cancelled().await;
                Ok::<_, anyhow::Error>(input)
            }
        })
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(sync_user)).await;
    let keyed = || RunTaskOpts::default().concurrency_key("user-1");

    let first = client
        .run_task("sync_user", &json!({"u": 1}), keyed())
        .await?;
    wait_status(&client, "sync_user", first.id(), RunStatus::Started).await;
    let second = client
        .run_task("sync_user", &json!({"u": 2}), keyed())
        .await?;
    assert_eq!(second.id(), first.id(), "a started run holds its key");
    for u in 0..5 {
        let again = client
            .run_task("sync_user", &json!({"u": 10 + u}), keyed())
            .await?;
        assert_eq!(again.id(), first.id());
    }
    let runs = client.list_task_runs("sync_user").await?;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].concurrency_key.as_deref(), Some("user-1"));

    gate.cancel();
    assert_eq!(
        output_of(&client, "sync_user", first.id()).await?,
        json!({"u": 1})
    );
    assert_eq!(inputs.snapshot(), [json!({"u": 1})]);

    let third = client
        .run_task("sync_user", &json!({"u": 3}), keyed())
        .await?;
    assert_ne!(third.id(), first.id(), "a completed run frees its key");
    assert_eq!(
        output_of(&client, "sync_user", third.id()).await?,
        json!({"u": 3})
    );
    assert_eq!(inputs.snapshot(), [json!({"u": 1}), json!({"u": 3})]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_key_dedup_per_task() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("one")).await?;
    client.create_task(&Task::define("two")).await?;
    let keyed = || RunTaskOpts::default().concurrency_key("k");

    let first = client.run_task("one", &1, keyed()).await?;
    let again = client.run_task("one", &2, keyed()).await?;
    let other = client.run_task("two", &3, keyed()).await?;

    assert_eq!(again.id(), first.id());
    assert_eq!(first.get().await?.input, json!(1));
    assert_eq!(client.list_task_runs("one").await?.len(), 1);
    assert_eq!(client.list_task_runs("two").await?.len(), 1);
    assert_eq!(other.get().await?.input, json!(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_concurrency_key_means_no_key() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("plain")).await?;
    let unkeyed = || RunTaskOpts::default().concurrency_key("");

    let first = client.run_task("plain", &1, unkeyed()).await?;
    let second = client.run_task("plain", &2, unkeyed()).await?;

    assert_ne!(first.id(), second.id());
    assert_eq!(first.get().await?.concurrency_key, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_key_is_freed_after_failure() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let failing = TaskHandler::new("failing", |_: Value, _ctx: TaskContext| async move {
        Err::<(), _>(anyhow::anyhow!("always fails"))
    })
    .max_retries(0);
    let worker = start(&db, Worker::new(db.pool.clone()).task(failing)).await;
    let keyed = || RunTaskOpts::default().concurrency_key("k");

    let first = client.run_task("failing", &1, keyed()).await?;
    wait_status(&client, "failing", first.id(), RunStatus::Failed).await;
    let second = client.run_task("failing", &2, keyed()).await?;

    assert_ne!(second.id(), first.id());
    assert_eq!(second.get().await?.input, json!(2));
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keyed_runs_create_one() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("dedup")).await?;

    let calls = (0..50).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .run_task("dedup", &i, RunTaskOpts::default().concurrency_key("same"))
                .await
                .map(|handle| handle.id())
        })
    });
    let mut ids = HashSet::new();
    for call in futures_util::future::join_all(calls).await {
        ids.insert(call??);
    }

    assert_eq!(ids.len(), 1, "every caller gets the one run: {ids:?}");
    assert_eq!(client.list_task_runs("dedup").await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_run_waits_for_visible_at() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;

    let visible_at = Utc::now() + Duration::from_secs(2);
    let delayed = client
        .run_task(
            "echo",
            &"later",
            RunTaskOpts::default().visible_at(visible_at),
        )
        .await?;
    let now = client
        .run_task("echo", &"now", RunTaskOpts::default())
        .await?;
    assert_eq!(output_of(&client, "echo", now.id()).await?, json!("now"));

    let waiting = delayed.get().await?;
    assert_eq!(waiting.status, RunStatus::Queued);
    assert_eq!(waiting.attempts, 0);

    assert_eq!(
        output_of(&client, "echo", delayed.id()).await?,
        json!("later")
    );
    let done = delayed.get().await?;
    assert!(
        done.started_at >= visible_at,
        "started at {} before its visibility time {visible_at}",
        done.started_at
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_with_single_slot() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("prio")).await?;
    for (label, priority) in [
        ("a", 0),
        ("b", 10),
        ("c", 5),
        ("d", -5),
        ("e", 10),
        ("f", 3),
    ] {
        client
            .run_task("prio", &label, RunTaskOpts::default().priority(priority))
            .await?;
    }

    let order = Log::new();
    let handler = {
        let order = order.clone();
        TaskHandler::new("prio", move |label: String, _ctx: TaskContext| {
            let order = order.clone();
            async move {
                order.push(label);
                Ok::<_, anyhow::Error>(())
            }
        })
        .concurrency(1)
        .batch_size(1)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    crate::task_support::wait_for_len(&order, 6).await;

    assert_eq!(order.snapshot(), ["b", "e", "c", "f", "a", "d"]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_runs_are_never_claimed() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let seen = Log::new();
    let handler = {
        let seen = seen.clone();
        TaskHandler::new("exp", move |label: String, _ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.push(label);
                Ok::<_, anyhow::Error>(())
            }
        })
    };
    client.create_task(&Task::define("exp")).await?;
    let now = Utc::now();
    let expired = client
        .run_task(
            "exp",
            &"expired",
            RunTaskOpts::default().expires_at(now - Duration::from_secs(1)),
        )
        .await?;
    let expires_hidden = client
        .run_task(
            "exp",
            &"expires_hidden",
            RunTaskOpts::default()
                .visible_at(now + Duration::from_millis(600))
                .expires_at(now + Duration::from_millis(300)),
        )
        .await?;
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let later = client
        .run_task(
            "exp",
            &"later",
            RunTaskOpts::default().visible_at(Utc::now() + Duration::from_secs(1)),
        )
        .await?;
    wait_status(&client, "exp", later.id(), RunStatus::Completed).await;

    for handle in [&expired, &expires_hidden] {
        let run = handle.get().await?;
        assert_eq!(run.status, RunStatus::Queued, "run {}", run.input);
        assert_eq!(run.attempts, 0, "run {}", run.input);
    }
    assert_eq!(seen.snapshot(), ["later"]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let seen = Log::new();
    let handler = {
        let seen = seen.clone();
        TaskHandler::new("traced", move |_: Value, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.push(ctx.headers().cloned());
                Ok::<_, anyhow::Error>(())
            }
        })
        .concurrency(1)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let sent = headers(json!({"trace_id": "abc", "hops": 2, "nested": {"a": [1, null]}}));

    let with = client
        .run_task("traced", &1, RunTaskOpts::default().headers(sent.clone()))
        .await?;
    wait_status(&client, "traced", with.id(), RunStatus::Completed).await;
    let without = client
        .run_task("traced", &2, RunTaskOpts::default())
        .await?;
    wait_status(&client, "traced", without.id(), RunStatus::Completed).await;

    assert_eq!(with.get().await?.headers, Some(sent.clone()));
    assert_eq!(without.get().await?.headers, None);
    assert_eq!(seen.snapshot(), [Some(sent), None]);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_input_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("echo")).await?;
    let nul = json!({"s": "a\u{0}b"});

    let error = client
        .run_task("echo", &nul, RunTaskOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidPayload {
                what: "task input",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("NUL"), "{error}");

    let error = client
        .run_tasks("echo", &[json!(1), nul.clone()], RunTasksOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidPayload {
                what: "task input",
                ..
            }
        ),
        "{error}"
    );

    let error = client
        .run_task(
            "echo",
            &1,
            RunTaskOpts::default().headers(headers(json!({"h": "x\u{0}"}))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidPayload {
                what: "headers",
                ..
            }
        ),
        "{error}"
    );
    assert!(client.list_task_runs("echo").await?.is_empty());

    client
        .run_task("echo", &json!({"ok": 1}), RunTaskOpts::default())
        .await?;
    assert_eq!(client.list_task_runs("echo").await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_input_completes_with_null_output() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;

    let handle = client
        .run_task("echo", &Value::Null, RunTaskOpts::default())
        .await?;
    assert_eq!(output_of(&client, "echo", handle.id()).await?, Value::Null);

    let run = handle.get().await?;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.input, Value::Null);
    assert_eq!(
        run.output,
        Some(Value::Null),
        "JSON null is a stored output"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_input_round_trips() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let worker = start(&db, Worker::new(db.pool.clone()).task(echo("echo"))).await;
    let text: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let input = json!({"data": text, "e": "\u{e9}".repeat(4000)});

    let handle = client
        .run_task("echo", &input, RunTaskOpts::default())
        .await?;
    let output = output_of(&client, "echo", handle.id()).await?;

    assert_eq!(output, input);
    assert_eq!(handle.get().await?.input, input);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tasks_returns_ids_in_input_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("bulk")).await?;
    let inputs: Vec<Value> = (0..5).map(|i| json!({"i": i})).collect();
    let per_run = vec![
        Some(headers(json!({"n": 0}))),
        None,
        Some(headers(json!({"n": 2}))),
        None,
        None,
    ];

    let handles = client
        .run_tasks(
            "bulk",
            &inputs,
            RunTasksOpts {
                headers: Some(per_run.clone()),
                priority: Some(7),
                ..RunTasksOpts::default()
            },
        )
        .await?;

    assert_eq!(handles.len(), 5);
    let ids: Vec<i64> = handles.iter().map(|handle| handle.id()).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids ascend: {ids:?}"
    );
    for ((handle, input), expected_headers) in handles.iter().zip(&inputs).zip(&per_run) {
        let run = handle.get().await?;
        assert_eq!(&run.input, input);
        assert_eq!(&run.headers, expected_headers, "run {}", run.input);
        assert_eq!(run.priority, 7);
        assert_eq!(run.status, RunStatus::Queued);
    }

    let none = client
        .run_tasks("bulk", &Vec::<Value>::new(), RunTasksOpts::default())
        .await?;
    assert!(none.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tasks_deduplicates_keys() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("bulk")).await?;
    let held = client
        .run_task("bulk", &0, RunTaskOpts::default().concurrency_key("k0"))
        .await?;

    let handles = client
        .run_tasks(
            "bulk",
            &[1, 2, 3, 4, 5],
            RunTasksOpts {
                concurrency_keys: Some(vec![
                    Some("k1".to_owned()),
                    None,
                    Some("k1".to_owned()),
                    Some("k0".to_owned()),
                    Some(String::new()),
                ]),
                ..RunTasksOpts::default()
            },
        )
        .await?;
    let ids: Vec<i64> = handles.iter().map(|handle| handle.id()).collect();

    assert_eq!(
        ids[2], ids[0],
        "a repeated key in one call points at the first run"
    );
    assert_eq!(
        ids[3],
        held.id(),
        "a key held by an earlier run points at it"
    );
    let distinct: HashSet<i64> = [ids[0], ids[1], ids[4], held.id()].into();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    assert_eq!(handles[0].get().await?.input, json!(1));
    assert_eq!(handles[4].get().await?.concurrency_key, None);
    assert_eq!(client.list_task_runs("bulk").await?.len(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tasks_rejects_mismatched_lengths() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("bulk")).await?;

    let keys = client
        .run_tasks(
            "bulk",
            &[1, 2, 3],
            RunTasksOpts {
                concurrency_keys: Some(vec![Some("a".to_owned()), None]),
                ..RunTasksOpts::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(keys, Error::InvalidArgument(_)), "{keys}");
    let headers_error = client
        .run_tasks(
            "bulk",
            &[1, 2, 3],
            RunTasksOpts {
                headers: Some(vec![None]),
                ..RunTasksOpts::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(headers_error, Error::InvalidArgument(_)),
        "{headers_error}"
    );

    assert!(client.list_task_runs("bulk").await?.is_empty());
    Ok(())
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Answer {
    value: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_output_reports_each_outcome() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let outcome = TaskHandler::new("outcome", |mode: String, ctx: TaskContext| async move {
        match mode.as_str() {
            "ok" => Ok(json!({"value": 7})),
            "wait" => {
                ctx.cancelled().await;
                Ok(json!("stopped"))
            }
            _ => Err(anyhow::anyhow!("boom")),
        }
    })
    .max_retries(0);
    let worker = start(&db, Worker::new(db.pool.clone()).task(outcome)).await;

    let ok = client
        .run_task("outcome", &"ok", RunTaskOpts::default())
        .await?;
    let answer: Answer = tokio::time::timeout(DEADLINE, ok.typed().wait_for_output()).await??;
    assert_eq!(answer, Answer { value: 7 });

    let failed = client
        .run_task("outcome", &"fail", RunTaskOpts::default())
        .await?;
    let error = output_of(&client, "outcome", failed.id())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "boom"),
        "{error}"
    );
    assert_eq!(error.to_string(), "catbird: run failed: boom");

    let waiting = client
        .run_task("outcome", &"wait", RunTaskOpts::default())
        .await?;
    let started = wait_status(&client, "outcome", waiting.id(), RunStatus::Started).await;
    let early = started.output_as::<Value>().unwrap_err();
    assert!(
        matches!(early, Error::RunNotCompleted(RunStatus::Started)),
        "{early}"
    );
    assert!(waiting.cancel(Some("no longer needed")).await?);
    let error = output_of(&client, "outcome", waiting.id())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "no longer needed"),
        "{error}"
    );
    assert_eq!(error.to_string(), "catbird: run canceled: no longer needed");

    client.create_task(&Task::define("parked")).await?;
    let parked = client
        .run_task("parked", &1, RunTaskOpts::default())
        .await?;
    assert!(parked.cancel(None).await?);
    let error = output_of(&client, "parked", parked.id()).await.unwrap_err();
    assert!(matches!(error, Error::RunCanceled(None)), "{error}");
    assert_eq!(error.to_string(), "catbird: run canceled");

    let unknown_id = output_of(&client, "outcome", 999_999).await.unwrap_err();
    assert!(unknown_id.is_not_found(), "{unknown_id}");
    let unknown_task = output_of(&client, "missing", 1).await.unwrap_err();
    assert!(unknown_task.is_not_defined(), "{unknown_task}");
    let run_unknown = client
        .run_task("missing", &1, RunTaskOpts::default())
        .await
        .unwrap_err();
    assert!(run_unknown.is_not_defined(), "{run_unknown}");
    let list_unknown = client.list_task_runs("missing").await.unwrap_err();
    assert!(list_unknown.is_not_defined(), "{list_unknown}");
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_task_run_reports_fields() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let handler = TaskHandler::new("fields", |input: Value, _ctx: TaskContext| async move {
        if input["fail"] == json!(true) {
            Err(anyhow::anyhow!("asked to fail"))
        } else {
            Ok(json!({"echo": input}))
        }
    })
    .max_retries(0);
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let expires_at = Utc::now() + Duration::from_secs(3600);
    let sent = headers(json!({"source": "test"}));

    let completed = client
        .run_task(
            "fields",
            &json!({"fail": false}),
            RunTaskOpts::default()
                .concurrency_key("c1")
                .headers(sent.clone())
                .priority(3)
                .expires_at(expires_at),
        )
        .await?;
    let run = wait_status(&client, "fields", completed.id(), RunStatus::Completed).await;
    assert_eq!(run.id, completed.id());
    assert_eq!(run.concurrency_key.as_deref(), Some("c1"));
    assert_eq!(run.input, json!({"fail": false}));
    assert_eq!(run.headers, Some(sent));
    assert_eq!(run.priority, 3);
    assert_eq!(run.attempts, 1);
    assert_eq!(run.output, Some(json!({"echo": {"fail": false}})));
    assert_eq!(run.error_message, None);
    assert_eq!(run.cancel_reason, None);
    let stored_expiry = run.expires_at.expect("the expiry is stored");
    assert!(
        (stored_expiry - expires_at).num_milliseconds().abs() < 1,
        "{stored_expiry} != {expires_at}"
    );
    let completed_at = run.completed_at.expect("a completed run has completed_at");
    assert!(run.created_at <= run.started_at, "{run:?}");
    assert!(run.started_at <= completed_at, "{run:?}");
    assert_eq!(run.failed_at, None);
    assert_eq!(run.skipped_at, None);
    assert_eq!(run.canceled_at, None);
    assert_eq!(run.cancel_requested_at, None);
    assert_eq!(run.expired_at, None);
    assert_eq!(run.on_fail_status, None);
    assert_eq!(run.on_fail_attempts, 0);
    assert!(run.is_done());
    assert!(run.is_completed());

    let failed = client
        .run_task("fields", &json!({"fail": true}), RunTaskOpts::default())
        .await?;
    let run = wait_status(&client, "fields", failed.id(), RunStatus::Failed).await;
    assert_eq!(run.error_message.as_deref(), Some("asked to fail"));
    assert_eq!(run.output, None);
    assert_eq!(run.completed_at, None);
    let failed_at = run.failed_at.expect("a failed run has failed_at");
    assert!(run.started_at <= failed_at, "{run:?}");
    assert_eq!(run.priority, 0);
    assert_eq!(run.headers, None);
    assert!(run.is_done());
    assert!(!run.is_completed());

    let missing = client.get_task_run("fields", 999_999).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let undefined = client.get_task_run("missing", 1).await.unwrap_err();
    assert!(undefined.is_not_defined(), "{undefined}");
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_task_runs_newest_first_max_20() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("many")).await?;
    assert!(client.list_task_runs("many").await?.is_empty());
    let inputs: Vec<i64> = (0..25).collect();
    let handles = client
        .run_tasks("many", &inputs, RunTasksOpts::default())
        .await?;

    let listed: Vec<i64> = client
        .list_task_runs("many")
        .await?
        .iter()
        .map(|run| run.id)
        .collect();

    let expected: Vec<i64> = handles.iter().rev().take(20).map(|h| h.id()).collect();
    assert_eq!(listed, expected);
    Ok(())
}
