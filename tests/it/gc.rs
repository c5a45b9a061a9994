//! Garbage collection, purging and clearing.

use std::time::Duration;

use catbird_core::queue::{CreateQueueOpts, SendOpts};
use catbird_core::task::{RunStatus, RunTaskOpts, Task};
use catbird_core::{Client, Executor};
use catbird_tests::TestDb;
use chrono::Utc;
use serde_json::json;

#[tokio::test]
async fn gc_deletes_expired_messages_and_queues() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_queue("exp_q", CreateQueueOpts::default())
        .await?;
    let now = Utc::now();
    let long = client
        .send(
            "exp_q",
            &json!({"k": "long"}),
            SendOpts::default().expires_at(now + chrono::Duration::minutes(10)),
        )
        .await?;
    client
        .send(
            "exp_q",
            &json!({"k": "short"}),
            SendOpts::default().expires_at(now - chrono::Duration::seconds(1)),
        )
        .await?;
    let none = client
        .send("exp_q", &json!({"k": "none"}), SendOpts::default())
        .await?;
    client
        .create_queue(
            "tmp_q",
            CreateQueueOpts::default().expires_at(now + chrono::Duration::milliseconds(300)),
        )
        .await?;
    db.pool.query_rows("UPDATE cb_queues SET expires_at = now() - interval '1 second', created_at = now() - interval '1 hour' WHERE name = 'tmp_q'", &[]).await?;

    let report = client.gc().await?;

    assert_eq!(report.expired_messages_deleted, 1);
    assert_eq!(report.expired_queues_deleted, 1);
    let left: Vec<i64> = client
        .read("exp_q", 10, Duration::from_secs(1))
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, vec![long, none]);
    let error = client
        .send("tmp_q", &1, SendOpts::default())
        .await
        .unwrap_err();
    assert!(error.is_not_defined(), "{error}");
    Ok(())
}

#[tokio::test]
async fn retention_deletes_only_finished_runs_by_finishing_time() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_task(&Task::define("long").retention_period(Duration::from_secs(7 * 24 * 3600)))
        .await?;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            client
                .run_task("long", &json!({}), RunTaskOpts::default())
                .await?
                .id(),
        );
    }
    // started 10 days ago; queued 10 days ago and visible later; completed a
    // day ago; completed, failed and canceled 8 days ago.
    let setup = [
        "UPDATE cb_t_long SET status = 'started', attempts = 1, created_at = now() - interval '10 days' WHERE id = $1",
        "UPDATE cb_t_long SET created_at = now() - interval '10 days', visible_at = now() + interval '1 day' WHERE id = $1",
        "UPDATE cb_t_long SET status = 'completed', output = '1', created_at = now() - interval '10 days', completed_at = now() - interval '1 day' WHERE id = $1",
        "UPDATE cb_t_long SET status = 'completed', output = '1', completed_at = now() - interval '8 days' WHERE id = $1",
        "UPDATE cb_t_long SET status = 'failed', error_message = 'x', failed_at = now() - interval '8 days' WHERE id = $1",
        "UPDATE cb_t_long SET status = 'canceled', canceled_at = now() - interval '8 days' WHERE id = $1",
    ];
    for (statement, id) in setup.iter().zip(&ids) {
        db.pool.query_rows(statement, &[id]).await?;
    }

    let report = client.gc().await?;

    assert_eq!(report.task_runs_purged, 3);
    for kept in &ids[..3] {
        assert!(
            client.get_task_run("long", *kept).await.is_ok(),
            "run {kept} was kept"
        );
    }
    for deleted in &ids[3..] {
        assert!(
            client
                .get_task_run("long", *deleted)
                .await
                .unwrap_err()
                .is_not_found(),
            "run {deleted} was purged"
        );
    }
    Ok(())
}

#[tokio::test]
async fn gc_expires_unclaimed_runs_past_their_expiry() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("late")).await?;
    let run = client
        .run_task(
            "late",
            &json!({}),
            RunTaskOpts::default().expires_at(Utc::now() - chrono::Duration::seconds(1)),
        )
        .await?;

    let report = client.gc().await?;

    assert_eq!(report.expired_task_runs, 1);
    assert_eq!(run.get().await?.status, RunStatus::Expired);
    let error = run.wait_for_output().await.unwrap_err();
    assert!(matches!(error, catbird_core::Error::RunExpired), "{error}");
    Ok(())
}

#[tokio::test]
async fn purge_and_clear_count_deleted_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_task(&Task::define("p")).await?;
    let done = client.run_task("p", &1, RunTaskOpts::default()).await?;
    client.run_task("p", &2, RunTaskOpts::default()).await?;
    client.cancel_task_run("p", done.id(), None).await?;

    assert_eq!(client.purge_task_runs("p", Duration::ZERO).await?, 1);
    assert_eq!(client.clear_task_runs("p").await?, 1);
    assert_eq!(client.purge_task_runs("missing", Duration::ZERO).await?, 0);
    assert_eq!(client.clear_flow_runs("missing").await?, 0);
    Ok(())
}
