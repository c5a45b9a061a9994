//! The batched result functions, waiter notifications and the next-visible
//! query of task runs, called as SQL; and a client's wait woken by a
//! completion.

use std::time::Duration;

use catbird_core::task::{RunTaskOpts, Task};
use catbird_core::{CancellationToken, Client, PollOpts};
use catbird_tests::{TestDb, wait_for};
use catbird_worker::{TaskContext, TaskHandler, Worker};
use serde_json::{Value, json};

use crate::helpers::{notification_payload, session_with_messages};
use crate::task_support::{DEADLINE, start};

async fn claim(
    client: &tokio_postgres::Client,
    task: &str,
    quantity: i32,
    hide_for: i32,
) -> Vec<(i64, i32)> {
    client
        .query(
            "SELECT * FROM cb_claim_tasks(name => $1, quantity => $2, hide_for => $3)",
            &[&task, &quantity, &hide_for],
        )
        .await
        .unwrap_or_else(|error| panic!("claim {task}: {error}"))
        .iter()
        .map(|row| (row.get("id"), row.get("attempts")))
        .collect()
}

async fn status_of(
    client: &tokio_postgres::Client,
    task: &str,
    id: i64,
) -> (String, Option<Value>, Option<String>) {
    let row = client
        .query_one(
            "SELECT * FROM cb_get_task_run(name => $1, id => $2)",
            &[&task, &id],
        )
        .await
        .unwrap_or_else(|error| panic!("run {id} of {task}: {error}"));
    (
        row.get("status"),
        row.get("output"),
        row.get("error_message"),
    )
}

async fn run_ids(client: &tokio_postgres::Client, task: &str, count: usize) -> Vec<i64> {
    let inputs: Vec<Value> = (0..count).map(|i| json!(i)).collect();
    client
        .query(
            "SELECT * FROM cb_run_task(name => $1, inputs => $2)",
            &[&task, &inputs],
        )
        .await
        .unwrap_or_else(|error| panic!("run {task}: {error}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_tasks_is_fenced_by_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'batch')", &[])
        .await?;
    let ids = run_ids(&client, "batch", 3).await;
    assert_eq!(
        claim(&client, "batch", 3, 60_000).await,
        [(ids[0], 1), (ids[1], 1), (ids[2], 1)]
    );

    let completed: Vec<i64> = client
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'batch', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[2], ids[0], ids[1], 999], &vec![1, 1, 2, 1], &vec![Some(json!("c")), None, Some(json!("b")), Some(json!("x"))]],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        completed,
        [ids[0], ids[2]],
        "only current attempts complete, ascending"
    );

    assert_eq!(
        status_of(&client, "batch", ids[0]).await,
        ("completed".to_owned(), Some(Value::Null), None)
    );
    assert_eq!(
        status_of(&client, "batch", ids[1]).await,
        ("started".to_owned(), None, None)
    );
    assert_eq!(
        status_of(&client, "batch", ids[2]).await,
        ("completed".to_owned(), Some(json!("c")), None)
    );

    let again: Vec<i64> = client
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'batch', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[0]], &vec![1], &vec![Some(json!("late"))]],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(again.is_empty(), "a completed run is not completed again");
    assert_eq!(
        status_of(&client, "batch", ids[0]).await.1,
        Some(Value::Null)
    );

    let mismatch = client
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'batch', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[1]], &Vec::<i32>::new(), &vec![Some(json!(1))]],
        )
        .await
        .expect_err("arrays of different lengths are rejected");
    assert_eq!(mismatch.code().map(|code| code.code()), Some("CB002"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_tasks_retries_fails_and_fences() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute(
            "SELECT cb_create_task(name => 'flaky', has_on_fail => true)",
            &[],
        )
        .await?;
    let ids = run_ids(&client, "flaky", 3).await;
    claim(&client, "flaky", 3, 60_000).await;

    let rows = client
        .query(
            "SELECT * FROM cb_fail_tasks(name => 'flaky', ids => $1, attempts => $2, error_messages => $3, retry_delays => $4)",
            &[&vec![ids[0], ids[1], ids[2]], &vec![1, 1, 7], &vec!["retry me", "", "stale"], &vec![Some(60_000), None, None]],
        )
        .await?;
    let changed: Vec<(i64, String)> = rows
        .iter()
        .map(|row| (row.get("id"), row.get("status")))
        .collect();
    assert_eq!(
        changed,
        [
            (ids[0], "started".to_owned()),
            (ids[1], "failed".to_owned())
        ]
    );

    assert_eq!(
        status_of(&client, "flaky", ids[0]).await,
        ("started".to_owned(), None, Some("retry me".to_owned()))
    );
    assert_eq!(
        status_of(&client, "flaky", ids[1]).await,
        (
            "failed".to_owned(),
            None,
            Some("handler failed without an error message".to_owned())
        )
    );
    assert_eq!(
        status_of(&client, "flaky", ids[2]).await,
        ("started".to_owned(), None, None)
    );
    assert!(
        claim(&client, "flaky", 3, 60_000).await.is_empty(),
        "the retry waits for its delay"
    );

    let on_fail: Vec<i64> = client
        .query("SELECT id FROM cb_claim_task_on_fail(name => 'flaky', quantity => 10, hide_for => 60000)", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(on_fail, [ids[1]], "a final failure queues on-fail work");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_notifies_only_waited_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'watched')", &[])
        .await?;
    let channel: String = client
        .query_one("SELECT cb_wake_channel()", &[])
        .await?
        .get(0);
    let (listener, mut payloads) = session_with_messages(&db, notification_payload).await;
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;

    let ids = run_ids(&client, "watched", 3).await;
    claim(&client, "watched", 3, 60_000).await;
    client
        .execute(
            "SELECT cb_wait_task_run(task => 'watched', run_id => $1)",
            &[&ids[1]],
        )
        .await?;
    client
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'watched', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[0], ids[1]], &vec![1, 1], &vec![Some(json!(0)), Some(json!(1))]],
        )
        .await?;
    client
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'watched', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[2]], &vec![1], &vec![Some(json!(2))]],
        )
        .await?;
    // A marker statement after the completions: every notification they
    // sent arrives before it.
    client
        .execute("SELECT pg_notify($1, 'marker')", &[&channel])
        .await?;

    let mut received = Vec::new();
    loop {
        let payload = tokio::time::timeout(DEADLINE, payloads.recv())
            .await
            .expect("a notification within the deadline")
            .expect("the listener is connected");
        if payload == "marker" {
            break;
        }
        received.push(payload);
    }
    assert_eq!(
        received,
        [format!("td|watched|{}", ids[1])],
        "creating runs no worker asked about notifies nobody"
    );
    let waiters: i64 = client
        .query_one("SELECT count(*) FROM cb_task_waiters", &[])
        .await?
        .get(0);
    assert_eq!(waiters, 0, "the notified waiter registration is removed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_keeps_queued_run_claimable() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'watched')", &[])
        .await?;
    let ids = run_ids(&client, "watched", 1).await;

    // The registration's transaction stays open while a worker claims, so
    // any row lock it took would still be held.
    let mut waiter = db.connect().await;
    let registration = waiter.transaction().await?;
    registration
        .execute(
            "SELECT cb_wait_task_run(task => 'watched', run_id => $1)",
            &[&ids[0]],
        )
        .await?;
    let claimed = claim(&client, "watched", 1, 60_000).await;
    registration.commit().await?;
    assert_eq!(
        claimed,
        [(ids[0], 1)],
        "a claim does not skip a queued run because someone waits for it"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_waits_for_pending_completion() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'watched')", &[])
        .await?;
    let ids = run_ids(&client, "watched", 1).await;
    claim(&client, "watched", 1, 60_000).await;

    // A completion in progress keeps the run locked until it commits. A
    // waiter registering meanwhile returns only after that commit, so its
    // next read returns the output.
    let mut worker = db.connect().await;
    let completion = worker.transaction().await?;
    completion
        .query(
            "SELECT * FROM cb_complete_tasks(name => 'watched', ids => $1, attempts => $2, outputs => $3)",
            &[&vec![ids[0]], &vec![1], &vec![Some(json!("done"))]],
        )
        .await?;
    let waiter = db.connect().await;
    let id = ids[0];
    let registered = tokio::spawn(async move {
        waiter
            .execute(
                "SELECT cb_wait_task_run(task => 'watched', run_id => $1)",
                &[&id],
            )
            .await?;
        anyhow::Ok(status_of(&waiter, "watched", id).await)
    });
    // The registration is blocked on the run's row lock.
    wait_for("the registration to wait on the run's lock", DEADLINE, || async {
        let blocked: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (blocked == 1).then_some(())
    })
    .await;
    assert!(!registered.is_finished());
    completion.commit().await?;
    let (status, output, _) = registered.await??;
    assert_eq!(status, "completed");
    assert_eq!(output, Some(json!("done")));
    Ok(())
}

async fn next_visible_in(client: &tokio_postgres::Client, task: &str) -> Option<i64> {
    client
        .query_one("SELECT cb_next_task_visible_in(name => $1)", &[&task])
        .await
        .unwrap_or_else(|error| panic!("next visible run of {task}: {error}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_visible_in_reports_delayed_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'later')", &[])
        .await?;
    assert_eq!(
        next_visible_in(&client, "later").await,
        None,
        "no run waits"
    );
    client
        .execute("SELECT cb_run_task(name => 'later', input => '1', visible_at => now() + interval '1 hour')", &[])
        .await?;
    let delay = next_visible_in(&client, "later")
        .await
        .expect("a delayed run");
    assert!((3_500_000..=3_600_000).contains(&delay), "{delay} ms");
    client
        .execute("SELECT cb_run_task(name => 'later', input => '2')", &[])
        .await?;
    assert_eq!(
        next_visible_in(&client, "later").await,
        Some(0),
        "a run is visible now"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_output_is_woken_by_completion() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone()).listen_url(&db.url())?;
    client.create_task(&Task::define("prompt")).await?;
    let gate = CancellationToken::new();
    let handler = {
        let gate = gate.clone();
        TaskHandler::new("prompt", move |n: i64, _ctx: TaskContext| {
            let gate = gate.clone();
            async move {
                gate.cancelled().await;
                Ok::<_, anyhow::Error>(n * 2)
            }
        })
    };
    let worker = start(&db, Worker::new(db.pool.clone()).task(handler)).await;
    let handle = client
        .run_task("prompt", &21, RunTaskOpts::default())
        .await?;

    // The wait re-reads the run only every hour, so it can only return in
    // time through the completion notification.
    let hourly = PollOpts::default()
        .poll_for(Duration::from_secs(7200))
        .poll_interval(Duration::from_secs(3600));
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.wait_for_output_with(hourly).await }
    });
    wait_for("the wait to register", DEADLINE, || async {
        let rows = db
            .pool
            .get()
            .await
            .ok()?
            .query(
                "SELECT 1 FROM cb_task_waiters WHERE run_id = $1",
                &[&handle.id()],
            )
            .await
            .ok()?;
        (!rows.is_empty()).then_some(())
    })
    .await;
    gate.cancel();

    let output = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the wait ends within the deadline")??;
    assert_eq!(output, json!(42));
    worker.stop().await;
    Ok(())
}
