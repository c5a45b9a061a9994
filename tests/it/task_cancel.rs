//! Cancelling task runs: queued, claimed, running and finished runs, and
//! cancellation from inside a handler.

use std::time::{Duration, Instant};

use catbird_core::task::{RunStatus, RunTaskOpts, Task};
use catbird_core::{Client, Error};
use catbird_tests::TestDb;
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::task_support::{Log, output_of, start, wait_for_len, wait_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_run_never_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("job")).await?;
    let queued = client
        .run_task("job", &"queued", RunTaskOpts::default())
        .await?;

    assert!(queued.cancel(Some("duplicate order")).await?);
    let run = queued.get().await?;
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(run.cancel_reason.as_deref(), Some("duplicate order"));
    assert_eq!(run.attempts, 0);
    let canceled_at = run.canceled_at.expect("a canceled run has canceled_at");
    let requested_at = run
        .cancel_requested_at
        .expect("a canceled run has cancel_requested_at");
    assert!(run.created_at <= requested_at, "{run:?}");
    assert!(requested_at <= canceled_at, "{run:?}");
    assert_eq!(run.completed_at, None);
    assert_eq!(run.failed_at, None);

    let seen = Log::new();
    let handler = {
        let seen = seen.clone();
        TaskHandler::new("job", move |label: String, _ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.push(label);
                Ok::<_, anyhow::Error>(())
            }
        })
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let other = client
        .run_task("job", &"other", RunTaskOpts::default())
        .await?;
    wait_status(&client, "job", other.id(), RunStatus::Completed).await;

    assert_eq!(seen.snapshot(), ["other"]);
    let error = output_of(&client, "job", queued.id()).await.unwrap_err();
    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "duplicate order"),
        "{error}"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_started_run_fires_token() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let events: Log<(String, Instant)> = Log::new();
    let handler = {
        let events = events.clone();
        TaskHandler::new("long", move |label: String, ctx: TaskContext| {
            let events = events.clone();
            async move {
                events.push((format!("{label} started"), Instant::now()));
                if label == "wait" {
                    ctx.cancelled().await;
                    events.push(("token fired".to_owned(), Instant::now()));
                }
                Ok::<_, anyhow::Error>(format!("{label} result"))
            }
        })
        .concurrency(1)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let waiting = client
        .run_task("long", &"wait", RunTaskOpts::default())
        .await?;
    wait_status(&client, "long", waiting.id(), RunStatus::Started).await;
    wait_for_len(&events, 1).await;
    let canceled_at = Instant::now();
    assert!(waiting.cancel(Some("operator stop")).await?);
    wait_for_len(&events, 2).await;
    let fired_after = events.snapshot()[1].1 - canceled_at;
    assert!(
        fired_after < Duration::from_secs(2),
        "the handler's token fired {fired_after:?} after the cancel"
    );

    // The single execution slot is free again only after the worker has
    // dealt with the canceled attempt's result.
    let next = client
        .run_task("long", &"next", RunTaskOpts::default())
        .await?;
    assert_eq!(
        output_of(&client, "long", next.id()).await?,
        json!("next result")
    );

    let run = waiting.get().await?;
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(run.output, None);
    assert_eq!(run.completed_at, None);
    assert_eq!(run.attempts, 1);
    assert_eq!(run.cancel_reason.as_deref(), Some("operator stop"));
    let labels: Vec<String> = events
        .snapshot()
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    assert_eq!(labels, ["wait started", "token fired", "next started"]);
    worker.stop().await;
    Ok(())
}

/// Starts a worker without a listen connection and waits until it has
/// registered.
async fn start_polling(
    db: &TestDb,
    worker: Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), catbird_worker::WorkerError>>,
) {
    let id = worker.id();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.start(shutdown.clone()));
    let client = Client::new(db.pool.clone());
    catbird_tests::wait_for(
        "the worker to register",
        crate::task_support::DEADLINE,
        || async {
            let workers = client.list_workers().await.ok()?;
            workers.iter().any(|worker| worker.id == id).then_some(())
        },
    )
    .await;
    (shutdown, handle)
}

/// Builds the handler of the waiting-run tests. "blocker" occupies the only
/// slot until `gate` fires, "victim" records whether its token fired
/// (waiting for it up to the deadline), and every run records its label.
fn gated_handler(gate: &CancellationToken, seen: &Log<(String, bool)>) -> TaskHandler {
    let gate = gate.clone();
    let seen = seen.clone();
    TaskHandler::new("batch", move |label: String, ctx: TaskContext| {
        let gate = gate.clone();
        let seen = seen.clone();
        async move {
            if label == "victim" {
                let fired = tokio::time::timeout(crate::task_support::DEADLINE, ctx.cancelled())
                    .await
                    .is_ok();
                seen.push((label.clone(), fired));
            } else {
                seen.push((label.clone(), false));
                if label == "blocker" {
                    gate.cancelled().await;
                }
            }
            Ok::<_, anyhow::Error>(label)
        }
    })
    .concurrency(1)
    .batch_size(10)
}

/// Runs a blocker and a victim claimed together; cancels the victim while
/// it waits for the slot, then frees the slot. Returns what the handler saw.
async fn cancel_while_waiting(db: &TestDb, listen: bool) -> anyhow::Result<Vec<(String, bool)>> {
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("batch")).await?;
    let blocker = client
        .run_task("batch", &"blocker", RunTaskOpts::default())
        .await?;
    let victim = client
        .run_task("batch", &"victim", RunTaskOpts::default())
        .await?;
    let gate = CancellationToken::new();
    let seen = Log::new();
    let worker = Worker::new(db.pool.clone()).task(gated_handler(&gate, &seen));
    let (stop, polling) = if listen {
        (Some(start(db, worker).await), None)
    } else {
        (None, Some(start_polling(db, worker).await))
    };

    wait_for_len(&seen, 1).await;
    let claimed = victim.get().await?;
    assert_eq!(
        claimed.status,
        RunStatus::Started,
        "the second run is claimed with the first and waits for the slot"
    );
    assert!(victim.cancel(Some("not needed")).await?);
    gate.cancel();
    wait_status(&client, "batch", blocker.id(), RunStatus::Completed).await;
    let after = client
        .run_task("batch", &"after", RunTaskOpts::default())
        .await?;
    wait_status(&client, "batch", after.id(), RunStatus::Completed).await;
    assert_eq!(victim.get().await?.status, RunStatus::Canceled);

    if let Some(running) = stop {
        running.stop().await;
    }
    if let Some((shutdown, handle)) = polling {
        shutdown.cancel();
        handle.await??;
    }
    Ok(seen.snapshot())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_waiting_claimed_run_skips_it() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    // Without a listen connection the worker re-reads the status of a run
    // that waited for a slot before it starts it.
    let seen = cancel_while_waiting(&db, false).await?;
    assert_eq!(
        seen,
        [("blocker".to_owned(), false), ("after".to_owned(), false)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notified_cancel_reaches_waiting_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    // A listening worker learns of the cancellation from its notification.
    // The victim is skipped when the notification arrived before its start.
    // A start that beats the notification by a moment still has its token
    // fired, and its result is discarded either way.
    let seen = cancel_while_waiting(&db, true).await?;
    let labels: Vec<&str> = seen.iter().map(|(label, _)| label.as_str()).collect();
    assert!(
        labels == ["blocker", "after"] || labels == ["blocker", "victim", "after"],
        "{seen:?}"
    );
    for (label, fired) in &seen {
        assert_eq!(*fired, label == "victim", "{label} token");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_finished_run_changes_nothing() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let handler = TaskHandler::new("finish", |fail: bool, _ctx: TaskContext| async move {
        if fail {
            anyhow::bail!("failed on purpose");
        }
        Ok("done")
    })
    .max_retries(0);
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let completed = client
        .run_task("finish", &false, RunTaskOpts::default())
        .await?;
    let failed = client
        .run_task("finish", &true, RunTaskOpts::default())
        .await?;
    wait_status(&client, "finish", completed.id(), RunStatus::Completed).await;
    wait_status(&client, "finish", failed.id(), RunStatus::Failed).await;

    for handle in [&completed, &failed] {
        let before = handle.get().await?;
        assert!(handle.cancel(Some("too late")).await?, "run {}", before.id);
        assert_eq!(handle.get().await?, before, "run {}", before.id);
    }
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_unknown_run_returns_false() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("job")).await?;

    assert!(!client.cancel_task_run("job", 999_999, None).await?);
    let error = client
        .cancel_task_run("missing", 1, None)
        .await
        .unwrap_err();
    assert!(error.is_not_defined(), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_cancel_keeps_first_reason() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("job")).await?;
    let handle = client.run_task("job", &1, RunTaskOpts::default()).await?;

    assert!(handle.cancel(Some("first")).await?);
    let first = handle.get().await?;
    assert!(handle.cancel(Some("second")).await?);
    let second = handle.get().await?;

    assert_eq!(second.cancel_reason.as_deref(), Some("first"));
    assert_eq!(second.canceled_at, first.canceled_at);
    assert_eq!(second, first);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_run_frees_its_key() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("job")).await?;
    let keyed = || RunTaskOpts::default().concurrency_key("only-one");

    let first = client.run_task("job", &1, keyed()).await?;
    assert!(first.cancel(None).await?);
    let second = client.run_task("job", &2, keyed()).await?;

    assert_ne!(second.id(), first.id());
    assert_eq!(second.get().await?.status, RunStatus::Queued);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_handler_gives_reason() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let seen: Log<(Value, bool)> = Log::new();
    let handler = {
        let seen = seen.clone();
        TaskHandler::new("selfstop", move |input: Value, ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                if input == json!("stop") {
                    catbird_worker::cancel(&ctx, "input was stale").await?;
                }
                seen.push((input, ctx.is_cancelled()));
                Ok::<_, anyhow::Error>("returned anyway")
            }
        })
        .concurrency(1)
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;

    let stopped = client
        .run_task("selfstop", &"stop", RunTaskOpts::default())
        .await?;
    let error = output_of(&client, "selfstop", stopped.id())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::RunCanceled(Some(ref reason)) if reason == "input was stale"),
        "{error}"
    );
    let next = client
        .run_task("selfstop", &"next", RunTaskOpts::default())
        .await?;
    wait_status(&client, "selfstop", next.id(), RunStatus::Completed).await;

    let run = stopped.get().await?;
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(run.output, None);
    assert_eq!(run.attempts, 1);
    assert_eq!(
        seen.snapshot(),
        [(json!("stop"), true), (json!("next"), false)],
        "the token fired inside the canceling handler, and the run was not retried"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_cancel_spares_reused_id() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("job")).await?;
    let seen = Log::new();
    let handler = {
        let seen = seen.clone();
        TaskHandler::new("job", move |label: String, _ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.push(label.clone());
                Ok::<_, anyhow::Error>(label)
            }
        })
    };
    let worker = start(
        &db,
        Worker::new(db.pool.clone())
            .lease(Duration::from_secs(2))
            .task(handler),
    )
    .await;

    // Canceled while it waits to become visible: the worker hears the
    // cancellation of a run it does not hold.
    let later = client
        .run_task(
            "job",
            &"later",
            RunTaskOpts::default().visible_at(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await?;
    assert!(later.cancel(None).await?);
    // This run's wake-up follows the cancellation on the same channel.
    let marker = client
        .run_task("job", &"marker", RunTaskOpts::default())
        .await?;
    wait_status(&client, "job", marker.id(), RunStatus::Completed).await;

    // A task created again numbers its runs from 1 again.
    assert!(client.delete_task("job").await?);
    client.create_task(&Task::define("job")).await?;
    let fresh = client
        .run_task("job", &"fresh", RunTaskOpts::default())
        .await?;
    assert_eq!(fresh.id(), later.id());

    wait_status(&client, "job", fresh.id(), RunStatus::Completed).await;
    assert_eq!(seen.snapshot(), ["marker", "fresh"]);
    assert_eq!(
        fresh.get().await?.attempts,
        1,
        "the first claim of the new run executes it"
    );
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stamped_after_claim_start() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let id: i64 = client
        .query_one(
            "SELECT cb_run_task(name => 'job', input => '1'::jsonb)",
            &[],
        )
        .await?
        .get(0);

    // A claimer has locked the run's row when the cancellation starts.
    let mut claimer = db.connect().await;
    let claim = claimer.transaction().await?;
    claim
        .execute("SELECT 1 FROM cb_t_job WHERE id = $1 FOR UPDATE", &[&id])
        .await?;
    let canceler = db.connect().await;
    let canceled = tokio::spawn(async move {
        let row = canceler
            .query_one("SELECT cb_cancel_task(name => 'job', id => $1)", &[&id])
            .await?;
        anyhow::Ok(row.get::<_, bool>(0))
    });
    catbird_tests::wait_for(
        "the cancellation to wait on the run's lock",
        crate::task_support::DEADLINE,
        || async {
            let blocked: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (blocked == 1).then_some(())
        },
    )
    .await;
    let claimed = claim
        .query(
            "SELECT * FROM cb_claim_tasks(name => 'job', quantity => 1, hide_for => 60000)",
            &[],
        )
        .await?;
    assert_eq!(claimed.len(), 1);
    claim.commit().await?;
    assert!(canceled.await??);

    let row = client
        .query_one(
            "SELECT status, started_at <= cancel_requested_at, cancel_requested_at = canceled_at FROM cb_t_job WHERE id = $1",
            &[&id],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "canceled");
    assert!(row.get::<_, bool>(1), "the cancellation follows the start");
    assert!(
        row.get::<_, bool>(2),
        "request and cancellation share a time"
    );
    Ok(())
}
