//! The task and worker SQL functions called directly, with named arguments,
//! as a program in another language would call them.

use std::time::Duration;

use catbird_tests::{TestDb, wait_for};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::{Client, Row};

use crate::helpers::{notification_payload, session_with_messages, wait_for_lock_wait};
use crate::task_support::DEADLINE;

/// Returns the SQLSTATE of a failed statement.
fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|code| code.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

async fn run_id(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .get(0)
}

async fn run_row(client: &Client, task: &str, id: i64) -> Row {
    client
        .query_one(
            "SELECT * FROM cb_get_task_run(name => $1, id => $2)",
            &[&task, &id],
        )
        .await
        .unwrap_or_else(|error| panic!("run {id} of {task}: {error}"))
}

async fn claim(client: &Client, task: &str, quantity: i32, hide_for: i32) -> Vec<(i64, i32)> {
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

async fn complete(client: &Client, task: &str, id: i64, attempt: i32, output: Value) -> bool {
    client
        .query_one(
            "SELECT cb_complete_task(name => $1, id => $2, attempt => $3, output => $4)",
            &[&task, &id, &attempt, &output],
        )
        .await
        .unwrap_or_else(|error| panic!("complete run {id}: {error}"))
        .get(0)
}

async fn fail(
    client: &Client,
    task: &str,
    id: i64,
    attempt: i32,
    message: &str,
    retry_delay: Option<i32>,
) -> Option<String> {
    client
        .query_one(
            "SELECT cb_fail_task(name => $1, id => $2, attempt => $3, error_message => $4, \
             retry_delay => $5)",
            &[&task, &id, &attempt, &message, &retry_delay],
        )
        .await
        .unwrap_or_else(|error| panic!("fail run {id}: {error}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_create_and_run_task() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;

    client
        .execute(
            "SELECT cb_create_task(name => 'job', description => 'a job', condition => NULL, \
             retention_period => 1000, has_on_fail => true)",
            &[],
        )
        .await?;
    client
        .execute(
            "SELECT cb_create_task(name => 'job', description => 'again')",
            &[],
        )
        .await?;
    let task = client
        .query_one(
            "SELECT description, retention_period, has_on_fail FROM cb_tasks WHERE name = 'job'",
            &[],
        )
        .await?;
    assert_eq!(task.get::<_, Option<String>>(0).as_deref(), Some("again"));
    assert_eq!(
        task.get::<_, i64>(1),
        0,
        "a re-created task without retention has none"
    );
    assert!(
        task.get::<_, bool>(2),
        "an absent on-fail flag keeps the stored one"
    );

    let keyed = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '{\"a\": 1}', concurrency_key => 'k', \
         headers => '{\"h\": 1}', visible_at => NULL, expires_at => NULL, priority => 5)",
    )
    .await;
    let again = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '{\"a\": 2}', concurrency_key => 'k')",
    )
    .await;
    assert_eq!(again, keyed);
    let row = run_row(&client, "job", keyed).await;
    assert_eq!(row.get::<_, Value>("input"), json!({"a": 1}));
    assert_eq!(
        row.get::<_, Option<Value>>("headers"),
        Some(json!({"h": 1}))
    );
    assert_eq!(row.get::<_, i32>("priority"), 5);
    assert_eq!(row.get::<_, String>("status"), "queued");
    assert_eq!(row.get::<_, i32>("attempts"), 0);

    let null_input = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => 'null', headers => 'null')",
    )
    .await;
    let row = run_row(&client, "job", null_input).await;
    assert_eq!(row.get::<_, Value>("input"), Value::Null);
    assert_eq!(row.get::<_, Option<Value>>("headers"), None);

    let ids: Vec<i64> = client
        .query(
            "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['1', '2', '3']::jsonb[], \
             concurrency_keys => ARRAY[NULL, 'k', 'fresh'], \
             headers => ARRAY['{\"n\": 1}', NULL, NULL]::jsonb[], priority => 1)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        ids[1], keyed,
        "a key held by an active run returns that run"
    );
    assert!(ids[0] < ids[2], "{ids:?}");
    let first = run_row(&client, "job", ids[0]).await;
    assert_eq!(
        first.get::<_, Option<Value>>("headers"),
        Some(json!({"n": 1}))
    );
    assert_eq!(first.get::<_, i32>("priority"), 1);

    let unkeyed: Vec<i64> = client
        .query(
            "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['10', '11', '12']::jsonb[])",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(unkeyed.len(), 3);
    assert!(
        unkeyed.windows(2).all(|pair| pair[0] < pair[1]),
        "{unkeyed:?}"
    );
    let row = run_row(&client, "job", unkeyed[2]).await;
    assert_eq!(row.get::<_, Value>("input"), json!(12));

    let deleted: bool = client
        .query_one("SELECT cb_delete_task(name => 'job')", &[])
        .await?
        .get(0);
    assert!(deleted);
    let again: bool = client
        .query_one("SELECT cb_delete_task(name => 'job')", &[])
        .await?
        .get(0);
    assert!(!again);
    let table: Option<String> = client
        .query_one("SELECT to_regclass('cb_t_job')::text", &[])
        .await?
        .get(0);
    assert_eq!(table, None, "deleting a task drops its runs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_claim_complete_fail_and_release() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let low = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '\"low\"')",
    )
    .await;
    let high = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '\"high\"', priority => 5)",
    )
    .await;
    let last = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '\"last\"')",
    )
    .await;

    assert_eq!(
        claim(&client, "job", 2, 60_000).await,
        [(high, 1), (low, 1)]
    );
    assert_eq!(claim(&client, "job", 5, 60_000).await, [(last, 1)]);
    assert!(claim(&client, "job", 5, 60_000).await.is_empty());
    let row = run_row(&client, "job", high).await;
    assert_eq!(row.get::<_, String>("status"), "started");
    let visible_at: DateTime<Utc> = row.get("visible_at");
    let started_at: DateTime<Utc> = row.get("started_at");
    assert!(
        visible_at >= started_at + Duration::from_secs(59),
        "{visible_at} {started_at}"
    );

    let unclaimed = run_id(&client, "SELECT cb_run_task(name => 'job', input => '0')").await;
    let hidden: Vec<i64> = client
        .query(
            "SELECT * FROM cb_hide_tasks(name => 'job', ids => $1, hide_for => 1000)",
            &[&vec![last, high, low, unclaimed, 999_999]],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(hidden, [low, high, last], "only started runs, ascending");

    assert!(!complete(&client, "job", high, 2, json!("wrong attempt")).await);
    assert!(complete(&client, "job", high, 1, json!({"ok": true})).await);
    assert!(!complete(&client, "job", high, 1, json!("twice")).await);
    let row = run_row(&client, "job", high).await;
    assert_eq!(row.get::<_, String>("status"), "completed");
    assert_eq!(
        row.get::<_, Option<Value>>("output"),
        Some(json!({"ok": true}))
    );
    assert!(
        row.get::<_, Option<DateTime<Utc>>>("completed_at")
            .is_some()
    );

    let null_output: bool = client
        .query_one(
            "SELECT cb_complete_task(name => 'job', id => $1, attempt => 1, output => NULL)",
            &[&last],
        )
        .await?
        .get(0);
    assert!(null_output);
    let row = run_row(&client, "job", last).await;
    assert_eq!(
        row.get::<_, Option<Value>>("output"),
        Some(Value::Null),
        "a completed run always has an output"
    );

    let retry = fail(&client, "job", low, 1, "first try", Some(0)).await;
    assert_eq!(retry.as_deref(), Some("started"));
    let row = run_row(&client, "job", low).await;
    assert_eq!(
        row.get::<_, Option<String>>("error_message").as_deref(),
        Some("first try")
    );
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(low, 2)]);
    assert_eq!(fail(&client, "job", low, 1, "stale", None).await, None);
    assert_eq!(
        fail(&client, "job", low, 2, "", None).await.as_deref(),
        Some("failed")
    );
    let row = run_row(&client, "job", low).await;
    let message: Option<String> = row.get("error_message");
    assert!(
        message
            .as_deref()
            .is_some_and(|message| !message.is_empty()),
        "{message:?}"
    );
    assert!(row.get::<_, Option<DateTime<Utc>>>("failed_at").is_some());
    assert_eq!(row.get::<_, Option<String>>("on_fail_status"), None);
    assert_eq!(fail(&client, "job", low, 2, "again", None).await, None);

    let release = |id: i64, attempt: i32, delay: i32| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT cb_release_task(name => 'job', id => $1, attempt => $2, delay => $3)",
                    &[&id, &attempt, &delay],
                )
                .await
                .expect("release")
                .get::<_, bool>(0)
        }
    };
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(unclaimed, 1)]);
    assert!(release(unclaimed, 1, 0).await);
    let row = run_row(&client, "job", unclaimed).await;
    assert_eq!(row.get::<_, String>("status"), "queued");
    assert_eq!(row.get::<_, i32>("attempts"), 0);
    assert!(
        !release(unclaimed, 1, 0).await,
        "a queued run holds no claim"
    );
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(unclaimed, 1)]);
    assert_eq!(
        fail(&client, "job", unclaimed, 1, "retry", Some(0))
            .await
            .as_deref(),
        Some("started")
    );
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(unclaimed, 2)]);
    assert!(release(unclaimed, 2, 60_000).await);
    let row = run_row(&client, "job", unclaimed).await;
    assert_eq!(
        row.get::<_, String>("status"),
        "started",
        "a retried run stays started"
    );
    assert_eq!(row.get::<_, i32>("attempts"), 1);
    assert!(
        claim(&client, "job", 1, 60_000).await.is_empty(),
        "released with a delay"
    );

    let delayed = run_id(&client, "SELECT cb_run_task(name => 'job', input => '1')").await;
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(delayed, 1)]);
    assert_eq!(
        fail(&client, "job", delayed, 1, "later", Some(60_000))
            .await
            .as_deref(),
        Some("started")
    );
    assert!(
        claim(&client, "job", 1, 60_000).await.is_empty(),
        "the retry waits"
    );

    let missing = client
        .query(
            "SELECT * FROM cb_get_task_run(name => 'job', id => 999999)",
            &[],
        )
        .await?;
    assert!(missing.is_empty());
    let listed: Vec<i64> = client
        .query(
            "SELECT id FROM cb_list_task_runs(name => 'job', quantity => 2)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(listed, [delayed, unclaimed]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_stale_attempt_cannot_finish_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'late_finisher')", &[])
        .await?;
    let id = run_id(
        &client,
        "SELECT cb_run_task(name => 'late_finisher', input => '{}')",
    )
    .await;
    assert_eq!(claim(&client, "late_finisher", 1, 50).await, [(id, 1)]);
    let reclaimed = wait_for("the lease of attempt 1 to pass", DEADLINE, || async {
        let claimed = claim(&client, "late_finisher", 1, 60_000).await;
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!(reclaimed, [(id, 2)]);

    assert!(!complete(&client, "late_finisher", id, 1, json!("A")).await);
    assert_eq!(
        fail(&client, "late_finisher", id, 1, "late", None).await,
        None
    );
    let row = run_row(&client, "late_finisher", id).await;
    assert_eq!(row.get::<_, String>("status"), "started");

    assert!(complete(&client, "late_finisher", id, 2, json!("B")).await);
    let finished = run_row(&client, "late_finisher", id).await;
    let completed_at: Option<DateTime<Utc>> = finished.get("completed_at");
    assert!(!complete(&client, "late_finisher", id, 1, json!("A")).await);
    assert!(!complete(&client, "late_finisher", id, 2, json!("C")).await);
    assert_eq!(
        fail(&client, "late_finisher", id, 2, "late", None).await,
        None
    );
    let canceled: bool = client
        .query_one(
            "SELECT cb_cancel_task(name => 'late_finisher', id => $1, reason => 'too late')",
            &[&id],
        )
        .await?
        .get(0);
    assert!(canceled, "cancel reports that the run exists");

    let row = run_row(&client, "late_finisher", id).await;
    assert_eq!(row.get::<_, String>("status"), "completed");
    assert_eq!(row.get::<_, Option<Value>>("output"), Some(json!("B")));
    assert_eq!(
        row.get::<_, Option<DateTime<Utc>>>("completed_at"),
        completed_at
    );
    assert_eq!(row.get::<_, Option<String>>("cancel_reason"), None);
    assert_eq!(row.get::<_, Option<DateTime<Utc>>>("canceled_at"), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cancel_task() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let cancel = |id: i64, reason: Option<&'static str>| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT cb_cancel_task(name => 'job', id => $1, reason => $2)",
                    &[&id, &reason],
                )
                .await
                .expect("cancel")
                .get::<_, bool>(0)
        }
    };

    let queued = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '1', concurrency_key => 'k')",
    )
    .await;
    assert!(cancel(queued, Some("not needed")).await);
    let row = run_row(&client, "job", queued).await;
    assert_eq!(row.get::<_, String>("status"), "canceled");
    assert_eq!(
        row.get::<_, Option<String>>("cancel_reason").as_deref(),
        Some("not needed")
    );
    assert!(row.get::<_, Option<DateTime<Utc>>>("canceled_at").is_some());
    assert!(
        row.get::<_, Option<DateTime<Utc>>>("cancel_requested_at")
            .is_some()
    );
    let next = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '2', concurrency_key => 'k')",
    )
    .await;
    assert_ne!(next, queued, "a canceled run frees its key");

    assert_eq!(claim(&client, "job", 1, 60_000).await, [(next, 1)]);
    assert!(cancel(next, Some("")).await);
    let row = run_row(&client, "job", next).await;
    assert_eq!(row.get::<_, String>("status"), "canceled");
    assert_eq!(
        row.get::<_, Option<String>>("cancel_reason"),
        None,
        "an empty reason is none"
    );
    assert!(!complete(&client, "job", next, 1, json!("late")).await);
    assert_eq!(fail(&client, "job", next, 1, "late", Some(0)).await, None);
    assert!(claim(&client, "job", 1, 60_000).await.is_empty());

    assert!(!cancel(999_999, None).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_on_fail_functions() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute(
            "SELECT cb_create_task(name => 'job', has_on_fail => true)",
            &[],
        )
        .await?;
    client
        .execute("SELECT cb_create_task(name => 'plain')", &[])
        .await?;
    let claim_on_fail = |task: &'static str, hide_for: i32| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT * FROM cb_claim_task_on_fail(name => $1, quantity => 10, hide_for => $2)",
                    &[&task, &hide_for],
                )
                .await
                .expect("claim on-fail work")
        }
    };

    let id = run_id(
        &client,
        "SELECT cb_run_task(name => 'job', input => '{\"n\": 1}', concurrency_key => 'key')",
    )
    .await;
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(id, 1)]);
    assert_eq!(
        fail(&client, "job", id, 1, "broken", None).await.as_deref(),
        Some("failed")
    );
    let row = run_row(&client, "job", id).await;
    assert_eq!(
        row.get::<_, Option<String>>("on_fail_status").as_deref(),
        Some("queued")
    );

    let claimed = claim_on_fail("job", 60_000).await;
    assert_eq!(claimed.len(), 1);
    let work = &claimed[0];
    assert_eq!(work.get::<_, i64>("id"), id);
    assert_eq!(work.get::<_, Value>("input"), json!({"n": 1}));
    assert_eq!(
        work.get::<_, Option<String>>("error_message").as_deref(),
        Some("broken")
    );
    assert_eq!(work.get::<_, i32>("attempts"), 1);
    assert_eq!(work.get::<_, i32>("on_fail_attempts"), 1);
    assert_eq!(
        work.get::<_, DateTime<Utc>>("started_at"),
        row.get::<_, DateTime<Utc>>("started_at")
    );
    assert_eq!(
        work.get::<_, Option<DateTime<Utc>>>("failed_at"),
        row.get::<_, Option<DateTime<Utc>>>("failed_at")
    );
    assert_eq!(
        work.get::<_, Option<String>>("concurrency_key").as_deref(),
        Some("key")
    );
    assert!(
        claim_on_fail("job", 60_000).await.is_empty(),
        "the on-fail work is leased"
    );

    let failed_on_fail: bool = client
        .query_one(
            "SELECT cb_fail_task_on_fail(name => 'job', id => $1, on_fail_attempt => 1, \
             error_message => 'mail down', retry_delay => 0)",
            &[&id],
        )
        .await?
        .get(0);
    assert!(failed_on_fail);
    let row = run_row(&client, "job", id).await;
    assert_eq!(
        row.get::<_, Option<String>>("on_fail_status").as_deref(),
        Some("failed")
    );
    assert_eq!(
        row.get::<_, Option<String>>("on_fail_error").as_deref(),
        Some("mail down")
    );
    assert_eq!(row.get::<_, String>("status"), "failed");

    let retried = claim_on_fail("job", 60_000).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].get::<_, i32>("on_fail_attempts"), 2);
    let complete_on_fail = |attempt: i32| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT cb_complete_task_on_fail(name => 'job', id => $1, on_fail_attempt => $2)",
                    &[&id, &attempt],
                )
                .await
                .expect("complete on-fail work")
                .get::<_, bool>(0)
        }
    };
    assert!(!complete_on_fail(1).await, "a stale on-fail attempt");
    assert!(complete_on_fail(2).await);
    assert!(!complete_on_fail(2).await);
    let row = run_row(&client, "job", id).await;
    assert_eq!(
        row.get::<_, Option<String>>("on_fail_status").as_deref(),
        Some("completed")
    );
    assert_eq!(row.get::<_, Option<String>>("on_fail_error"), None);
    assert_eq!(row.get::<_, i32>("on_fail_attempts"), 2);
    assert!(claim_on_fail("job", 60_000).await.is_empty());

    let crashed = run_id(&client, "SELECT cb_run_task(name => 'job', input => '2')").await;
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(crashed, 1)]);
    fail(&client, "job", crashed, 1, "broken", None).await;
    assert_eq!(claim_on_fail("job", 50).await.len(), 1);
    let again = wait_for("the on-fail lease to pass", DEADLINE, || async {
        let claimed = claim_on_fail("job", 60_000).await;
        claimed
            .first()
            .map(|row| row.get::<_, i32>("on_fail_attempts"))
    })
    .await;
    assert_eq!(
        again, 2,
        "on-fail work whose attempt vanished is claimed again"
    );
    let given_up: bool = client
        .query_one(
            "SELECT cb_fail_task_on_fail(name => 'job', id => $1, on_fail_attempt => 2, \
             error_message => 'still down')",
            &[&crashed],
        )
        .await?
        .get(0);
    assert!(given_up);
    let row = run_row(&client, "job", crashed).await;
    assert_eq!(
        row.get::<_, Option<String>>("on_fail_status").as_deref(),
        Some("failed")
    );
    assert!(
        claim_on_fail("job", 60_000).await.is_empty(),
        "given-up work is never claimed"
    );

    let plain = run_id(&client, "SELECT cb_run_task(name => 'plain', input => '3')").await;
    assert_eq!(claim(&client, "plain", 1, 60_000).await, [(plain, 1)]);
    fail(&client, "plain", plain, 1, "broken", None).await;
    let row = run_row(&client, "plain", plain).await;
    assert_eq!(row.get::<_, Option<String>>("on_fail_status"), None);
    assert!(claim_on_fail("plain", 60_000).await.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_wait_task_output() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let id = run_id(&client, "SELECT cb_run_task(name => 'job', input => '7')").await;

    let timed_out = client
        .query(
            "SELECT * FROM cb_wait_task_output(name => 'job', id => $1, poll_for => 100, \
             poll_interval => 20)",
            &[&id],
        )
        .await?;
    assert!(timed_out.is_empty(), "a run still queued gives no row");

    let waiter = db.connect().await;
    let wait = tokio::spawn(async move {
        waiter
            .query(
                "SELECT * FROM cb_wait_task_output(name => 'job', id => $1, poll_for => 10000, \
                 poll_interval => 20)",
                &[&id],
            )
            .await
    });
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(id, 1)]);
    assert!(complete(&client, "job", id, 1, json!(14)).await);
    let rows = wait.await??;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>("status"), "completed");
    assert_eq!(rows[0].get::<_, Option<Value>>("output"), Some(json!(14)));

    let canceled = run_id(&client, "SELECT cb_run_task(name => 'job', input => '8')").await;
    client
        .execute(
            "SELECT cb_cancel_task(name => 'job', id => $1, reason => 'stop')",
            &[&canceled],
        )
        .await?;
    let rows = client
        .query(
            "SELECT status, cancel_reason FROM cb_wait_task_output(name => 'job', id => $1)",
            &[&canceled],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "canceled");
    assert_eq!(rows[0].get::<_, Option<String>>(1).as_deref(), Some("stop"));

    let unknown = client
        .query(
            "SELECT * FROM cb_wait_task_output(name => 'job', id => 999999)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&unknown), "CB003");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_worker_functions() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let id = uuid::Uuid::new_v4();

    client
        .execute(
            "SELECT cb_worker_started(id => $1, task_handlers => ARRAY['beta', 'alpha'], \
             step_handlers => '[]')",
            &[&id],
        )
        .await?;
    let info = client
        .query_one(
            "SELECT id, task_handlers, step_handlers, started_at, last_heartbeat_at \
             FROM cb_worker_info",
            &[],
        )
        .await?;
    assert_eq!(info.get::<_, uuid::Uuid>(0), id);
    assert_eq!(info.get::<_, Vec<String>>(1), ["alpha", "beta"]);
    assert_eq!(info.get::<_, Value>(2), json!([]));
    let first_beat: DateTime<Utc> = info.get(4);

    let beat = |id: uuid::Uuid| {
        let client = &client;
        async move {
            client
                .query_one("SELECT cb_worker_heartbeat(id => $1)", &[&id])
                .await
                .expect("heartbeat")
                .get::<_, bool>(0)
        }
    };
    assert!(beat(id).await);
    let last_beat: DateTime<Utc> = client
        .query_one("SELECT last_heartbeat_at FROM cb_worker_info", &[])
        .await?
        .get(0);
    assert!(last_beat >= first_beat);

    client
        .execute(
            "SELECT cb_worker_started(id => $1, task_handlers => NULL)",
            &[&id],
        )
        .await?;
    let rows = client
        .query("SELECT task_handlers FROM cb_worker_info", &[])
        .await?;
    assert_eq!(rows.len(), 1, "registering again updates the one row");
    assert!(rows[0].get::<_, Vec<String>>(0).is_empty());

    let stop = |id: uuid::Uuid| {
        let client = &client;
        async move {
            client
                .query_one("SELECT cb_worker_stopped(id => $1)", &[&id])
                .await
                .expect("stop")
                .get::<_, bool>(0)
        }
    };
    assert!(stop(id).await);
    assert!(!stop(id).await);
    assert!(!beat(id).await, "a removed worker must register again");
    assert!(
        client
            .query("SELECT * FROM cb_worker_info", &[])
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_functions_send_wake_ups() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute(
            "SELECT cb_create_task(name => 'job', has_on_fail => true)",
            &[],
        )
        .await?;
    let channel: String = client
        .query_one("SELECT cb_wake_channel()", &[])
        .await?
        .get(0);

    let (listener, mut payloads) = session_with_messages(&db, notification_payload).await;
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    let mut next_payload = async || {
        tokio::time::timeout(DEADLINE, payloads.recv())
            .await
            .expect("a wake-up within the deadline")
            .expect("the listener is connected")
    };

    // Each wake-up for work visible now consumes the request for it, as a
    // worker's loop makes one each time it runs out of work.
    let request = async |kind: &str| {
        client
            .execute(
                "SELECT cb_request_wake(kind => $1, name => 'job')",
                &[&kind],
            )
            .await
            .expect("request a wake-up");
    };
    request("t").await;
    let id = run_id(&client, "SELECT cb_run_task(name => 'job', input => '1')").await;
    assert_eq!(next_payload().await, "t|job|");

    // A run for later notifies without a request.
    let visible_at = Utc::now() + Duration::from_secs(60);
    client
        .execute(
            "SELECT cb_run_task(name => 'job', input => '2', visible_at => $1)",
            &[&visible_at],
        )
        .await?;
    let delayed = next_payload().await;
    let epoch: f64 = delayed
        .strip_prefix("t|job|")
        .unwrap_or_else(|| panic!("unexpected payload {delayed}"))
        .parse()?;
    let expected = visible_at.timestamp_micros() as f64 / 1e6;
    assert!((epoch - expected).abs() < 0.001, "{epoch} != {expected}");

    assert_eq!(claim(&client, "job", 1, 60_000).await, [(id, 1)]);
    assert!(
        client
            .query_one("SELECT cb_cancel_task(name => 'job', id => $1)", &[&id],)
            .await?
            .get::<_, bool>(0)
    );
    assert_eq!(next_payload().await, format!("tx|job|{id}"));

    request("t").await;
    let failing = run_id(&client, "SELECT cb_run_task(name => 'job', input => '3')").await;
    assert_eq!(next_payload().await, "t|job|");
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(failing, 1)]);
    request("tf").await;
    fail(&client, "job", failing, 1, "broken", None).await;
    assert_eq!(next_payload().await, "tf|job|");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_have_catbird_sqlstates() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let not_defined = [
        "SELECT cb_run_task(name => 'missing', input => '1')",
        "SELECT * FROM cb_run_task(name => 'missing', inputs => ARRAY['1']::jsonb[])",
        "SELECT * FROM cb_claim_tasks(name => 'missing', quantity => 1, hide_for => 1000)",
        "SELECT * FROM cb_hide_tasks(name => 'missing', ids => ARRAY[1]::bigint[], hide_for => 1000)",
        "SELECT cb_release_task(name => 'missing', id => 1, attempt => 1, delay => 0)",
        "SELECT cb_complete_task(name => 'missing', id => 1, attempt => 1, output => '1')",
        "SELECT cb_fail_task(name => 'missing', id => 1, attempt => 1, error_message => 'x')",
        "SELECT cb_cancel_task(name => 'missing', id => 1)",
        "SELECT * FROM cb_claim_task_on_fail(name => 'missing', quantity => 1, hide_for => 1000)",
        "SELECT cb_complete_task_on_fail(name => 'missing', id => 1, on_fail_attempt => 1)",
        "SELECT cb_fail_task_on_fail(name => 'missing', id => 1, on_fail_attempt => 1, error_message => 'x')",
        "SELECT * FROM cb_get_task_run(name => 'missing', id => 1)",
        "SELECT * FROM cb_list_task_runs(name => 'missing')",
        "SELECT * FROM cb_wait_task_output(name => 'missing', id => 1)",
    ];
    for sql in not_defined {
        let error = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&error), "CB001", "{sql}");
    }
    let error = client
        .query("SELECT cb_run_task(name => 'missing', input => '1')", &[])
        .await
        .unwrap_err();
    let message = error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_default();
    assert_eq!(message, "catbird: task \"missing\" is not defined");

    let too_long = format!("SELECT cb_create_task(name => '{}')", "a".repeat(59));
    let invalid = [
        "SELECT cb_create_task(name => 'Job')",
        "SELECT cb_create_task(name => 'send-email')",
        "SELECT cb_create_task(name => '')",
        too_long.as_str(),
        "SELECT cb_create_task(name => 'input')",
        "SELECT cb_create_task(name => 'other', retention_period => -1)",
        "SELECT cb_run_task(name => 'Job', input => '1')",
        "SELECT cb_run_task(name => 'job', input => NULL)",
        "SELECT cb_run_task(name => 'job', input => '1', headers => '[1]')",
        "SELECT cb_run_task(name => 'job', input => '1', headers => '\"text\"')",
        "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['1', '2']::jsonb[], concurrency_keys => ARRAY['a'])",
        "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['1', '2']::jsonb[], headers => ARRAY['{}']::jsonb[])",
        "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['1', NULL]::jsonb[])",
        "SELECT * FROM cb_run_task(name => 'job', inputs => ARRAY['1']::jsonb[], headers => ARRAY['[1]']::jsonb[])",
        "SELECT * FROM cb_claim_tasks(name => 'job', quantity => 0, hide_for => 1000)",
        "SELECT * FROM cb_claim_tasks(name => 'job', quantity => 1, hide_for => 0)",
        "SELECT * FROM cb_hide_tasks(name => 'job', ids => ARRAY[1]::bigint[], hide_for => 0)",
        "SELECT cb_release_task(name => 'job', id => 1, attempt => 1, delay => -1)",
        "SELECT cb_fail_task(name => 'job', id => 1, attempt => 1, error_message => 'x', retry_delay => -1)",
        "SELECT * FROM cb_claim_task_on_fail(name => 'job', quantity => 0, hide_for => 1000)",
        "SELECT cb_fail_task_on_fail(name => 'job', id => 1, on_fail_attempt => 1, error_message => 'x', retry_delay => -1)",
        "SELECT * FROM cb_list_task_runs(name => 'job', quantity => 0)",
        "SELECT * FROM cb_wait_task_output(name => 'job', id => 1, poll_for => 0)",
        "SELECT * FROM cb_wait_task_output(name => 'job', id => 1, poll_for => 100, poll_interval => 100)",
    ];
    for sql in invalid {
        let error = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&error), "CB002", "{sql}");
    }
    let runs: i64 = client
        .query_one("SELECT count(*) FROM cb_t_job", &[])
        .await?
        .get(0);
    assert_eq!(runs, 0, "rejected calls store nothing");
    let tasks: i64 = client
        .query_one("SELECT count(*) FROM cb_tasks", &[])
        .await?
        .get(0);
    assert_eq!(tasks, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_statement_prepares() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    for sql in catbird_core::sql::ALL {
        if let Err(error) = client.prepare(sql).await {
            panic!("{sql}: {error}");
        }
    }
    Ok(())
}

/// Lease renewals lock runs in id order, as batched completions do, so the
/// two never wait for each other in a cycle. The renewal here is planned
/// as a sequential scan, which visits the runs in their order on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewal_locks_runs_in_id_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute("SELECT cb_create_task(name => 'job')", &[])
        .await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(run_id(&client, "SELECT cb_run_task(name => 'job', input => '0')").await);
    }
    let (first, rest) = (ids[0], vec![ids[1], ids[2]]);
    assert_eq!(claim(&client, "job", 3, 60_000).await.len(), 3);
    // Giving the first run back and claiming it again writes its newest
    // version after the others on disk.
    let released: bool = client
        .query_one(
            "SELECT cb_release_task(name => 'job', id => $1, attempt => 1, delay => 0)",
            &[&first],
        )
        .await?
        .get(0);
    assert!(released);
    assert_eq!(claim(&client, "job", 1, 60_000).await, [(first, 1)]);

    let holder = db.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM cb_t_job WHERE id = {first} FOR UPDATE"
        ))
        .await?;
    let renewer = db.connect().await;
    renewer
        .batch_execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
        .await?;
    let renewer_pid: i32 = renewer
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let renewal = {
        let ids = ids.clone();
        tokio::spawn(async move {
            renewer
                .query(
                    "SELECT * FROM cb_hide_tasks(name => 'job', ids => $1, hide_for => 60000)",
                    &[&ids],
                )
                .await
                .map(|rows| rows.iter().map(|row| row.get(0)).collect::<Vec<i64>>())
        })
    };
    wait_for_lock_wait(
        &client,
        renewer_pid,
        "the renewal to wait for the first run's lock",
    )
    .await;

    let free: Vec<i64> = client
        .query(
            "SELECT id FROM cb_t_job WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
            &[&rest],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        free, rest,
        "the renewal locked later runs before the first one"
    );

    holder.batch_execute("COMMIT").await?;
    let renewed = tokio::time::timeout(DEADLINE, renewal).await???;
    assert_eq!(renewed, ids);
    Ok(())
}
