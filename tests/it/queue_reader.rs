//! The Reader loop: acknowledging, redelivering, shutting down, and keeping
//! the leases of the messages it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catbird_core::queue::{Message, Reader, SendManyOpts, SendOpts};
use catbird_core::{CancellationToken, Error, Executor, NameRule, Params, PollOpts};
use catbird_tests::wait_for;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::helpers::{RecordingExecutor, db_with_queue, depth};

/// Polling that notices new messages quickly and stops waiting soon.
fn fast_poll() -> PollOpts {
    PollOpts::default()
        .poll_for(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(10))
}

/// Stops a running reader and returns what `run` returned.
async fn stop(
    shutdown: CancellationToken,
    reader: tokio::task::JoinHandle<Result<(), Error>>,
) -> Result<(), Error> {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the reader stops within 10 s after shutdown")
        .expect("the reader task does not panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_deletes_handled_messages() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &["a", "b", "c"], SendManyOpts::default())
        .await?;
    let handled = Arc::new(Mutex::new(Vec::new()));

    let shutdown = CancellationToken::new();
    let seen = Arc::clone(&handled);
    let reader = Reader::new(db.pool.clone(), "jobs", move |message: Message| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push((message.id, message.body));
            Ok::<(), String>(())
        }
    })
    .poll(fast_poll())
    .hide_for(Duration::from_secs(30));
    let running = tokio::spawn(reader.run(shutdown.clone()));

    wait_for("the queue to empty", Duration::from_secs(10), || async {
        (depth(&db.pool, "jobs").await == 0).then_some(())
    })
    .await;
    stop(shutdown, running).await?;

    let handled = handled.lock().unwrap().clone();
    let expected: Vec<_> = sent
        .iter()
        .copied()
        .zip([json!("a"), json!("b"), json!("c")])
        .collect();
    assert_eq!(handled, expected, "handled once each, in read order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handler_leaves_message_for_redelivery() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let id = client
        .send("jobs", &json!("retry me"), SendOpts::default())
        .await?;
    let lease = Duration::from_millis(300);
    let attempts = Arc::new(Mutex::new(Vec::new()));

    let shutdown = CancellationToken::new();
    let seen = Arc::clone(&attempts);
    let reader = Reader::new(db.pool.clone(), "jobs", move |message: Message| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(message.clone());
            if message.deliveries == 1 {
                Err("first delivery fails".to_owned())
            } else {
                Ok(())
            }
        }
    })
    .poll(fast_poll())
    .hide_for(lease);
    let running = tokio::spawn(reader.run(shutdown.clone()));

    wait_for(
        "the retried message to be deleted",
        Duration::from_secs(10),
        || async { (depth(&db.pool, "jobs").await == 0).then_some(()) },
    )
    .await;
    stop(shutdown, running).await?;

    let attempts = attempts.lock().unwrap().clone();
    let deliveries: Vec<i32> = attempts.iter().map(|message| message.deliveries).collect();
    assert_eq!(deliveries, [1, 2]);
    assert!(attempts.iter().all(|message| message.id == id));
    let lease = chrono::TimeDelta::from_std(lease)?;
    let second_read_at = attempts[1].visible_at - lease;
    assert!(
        second_read_at >= attempts[0].visible_at,
        "redelivered at {second_read_at}, before the first lease ended at {}",
        attempts[0].visible_at
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_stops_cleanly_on_shutdown() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("jobs").await;
    let shutdown = CancellationToken::new();
    // The default poll waits 5 s; shutdown must not wait for it.
    let reader = Reader::new(db.pool.clone(), "jobs", |_message: Message| async {
        Ok::<(), String>(())
    });
    let running = tokio::spawn(reader.run(shutdown.clone()));

    let result = stop(shutdown, running).await;

    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_keeps_going_after_failed_reads() -> anyhow::Result<()> {
    let db = catbird_tests::TestDb::new().await;
    let client = catbird_core::Client::new(db.pool.clone());
    let handled = Arc::new(Mutex::new(Vec::new()));

    // The queue does not exist yet, so the reader's first reads fail.
    let executor = Arc::new(RecordingExecutor::new(db.pool.clone()));
    let shutdown = CancellationToken::new();
    let seen = Arc::clone(&handled);
    let reader = Reader::new(Arc::clone(&executor), "late_q", move |message: Message| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push(message.id);
            Ok::<(), String>(())
        }
    })
    .poll(fast_poll());
    let running = tokio::spawn(reader.run(shutdown.clone()));
    wait_for(
        "the reader's first read",
        Duration::from_secs(10),
        || async {
            executor
                .statements()
                .contains(&catbird_core::sql::READ.to_owned())
                .then_some(())
        },
    )
    .await;
    client
        .create_queue("late_q", catbird_core::queue::CreateQueueOpts::default())
        .await?;
    let id = client
        .send("late_q", &json!("after the failures"), SendOpts::default())
        .await?;

    wait_for(
        "the reader to handle the message",
        Duration::from_secs(10),
        || async { (!handled.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let result = stop(shutdown, running).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(*handled.lock().unwrap(), vec![id]);
    Ok(())
}

#[tokio::test]
async fn reader_with_cancelled_token_returns_at_once() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    client.send("jobs", &json!(1), SendOpts::default()).await?;
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let called = Arc::new(Mutex::new(0));

    let seen = Arc::clone(&called);
    let result = Reader::new(db.pool.clone(), "jobs", move |_message: Message| {
        let seen = Arc::clone(&seen);
        async move {
            *seen.lock().unwrap() += 1;
            Ok::<(), String>(())
        }
    })
    .run(shutdown)
    .await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(*called.lock().unwrap(), 0);
    assert_eq!(depth(&db.pool, "jobs").await, 1);
    Ok(())
}

#[tokio::test]
async fn reader_rejects_invalid_arguments_at_once() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("jobs").await;
    let handler = |_message: Message| async { Ok::<(), String>(()) };
    // A token that is never cancelled: only the argument check can end these.
    let shutdown = CancellationToken::new();
    let limit = Duration::from_secs(5);

    let bad_name = tokio::time::timeout(
        limit,
        Reader::new(db.pool.clone(), "Bad-Name", handler).run(shutdown.clone()),
    )
    .await?;
    let zero_quantity = tokio::time::timeout(
        limit,
        Reader::new(db.pool.clone(), "jobs", handler)
            .quantity(0)
            .run(shutdown.clone()),
    )
    .await?;
    let zero_lease = tokio::time::timeout(
        limit,
        Reader::new(db.pool.clone(), "jobs", handler)
            .hide_for(Duration::ZERO)
            .run(shutdown.clone()),
    )
    .await?;

    assert!(
        matches!(
            &bad_name,
            Err(Error::InvalidName {
                kind: "queue",
                rule: NameRule::InvalidCharacter,
                ..
            })
        ),
        "{bad_name:?}"
    );
    assert!(
        matches!(&zero_quantity, Err(Error::InvalidArgument(m)) if m.contains("quantity")),
        "{zero_quantity:?}"
    );
    assert!(
        matches!(&zero_lease, Err(Error::InvalidArgument(m)) if m.contains("hide_for")),
        "{zero_lease:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_unstarted_messages() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &[1, 2, 3], SendManyOpts::default())
        .await?;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let handled = Arc::new(Mutex::new(Vec::new()));

    let shutdown = CancellationToken::new();
    let (on_start, on_release, seen) = (
        Arc::clone(&started),
        Arc::clone(&release),
        Arc::clone(&handled),
    );
    let reader = Reader::new(db.pool.clone(), "jobs", move |message: Message| {
        let (on_start, on_release, seen) = (
            Arc::clone(&on_start),
            Arc::clone(&on_release),
            Arc::clone(&seen),
        );
        async move {
            on_start.notify_one();
            on_release.notified().await;
            seen.lock().unwrap().push(message.id);
            Ok::<(), String>(())
        }
    })
    .quantity(3)
    .poll(fast_poll())
    .hide_for(Duration::from_secs(30));
    let running = tokio::spawn(reader.run(shutdown.clone()));

    started.notified().await;
    shutdown.cancel();
    release.notify_one();
    let result = stop(shutdown, running).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(*handled.lock().unwrap(), vec![sent[0]]);
    assert_eq!(
        depth(&db.pool, "jobs").await,
        2,
        "the running message was acknowledged"
    );
    let released = client.read("jobs", 10, Duration::from_secs(30)).await?;
    let released_ids: Vec<i64> = released.iter().map(|message| message.id).collect();
    assert_eq!(
        released_ids,
        sent[1..],
        "unstarted messages are readable at once"
    );
    Ok(())
}

/// One handler execution, timed on the test's clock.
#[derive(Debug, Clone)]
struct Execution {
    reader: &'static str,
    id: i64,
    started: Instant,
    finished: Instant,
}

/// An executor that records, per message id, the result of every delete the
/// readers run, so a test can see each message acknowledged exactly once.
#[derive(Clone)]
struct DeleteRecorder {
    pool: deadpool_postgres::Pool,
    deletes: Arc<Mutex<HashMap<i64, Vec<bool>>>>,
}

impl Executor for DeleteRecorder {
    async fn query_rows(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        let rows = self.pool.query_rows(sql, params).await?;
        if sql == catbird_core::sql::DELETE {
            // Parameters are opaque `ToSql` values, but the Debug form of the
            // id parameter is the number itself.
            let id: i64 = format!("{:?}", params[1]).parse().expect("a message id");
            let deleted = rows.first().is_some_and(|row| row.get::<_, bool>(0));
            self.deletes
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(deleted);
        }
        Ok(rows)
    }
}

fn spawn_batch_reader(
    executor: DeleteRecorder,
    name: &'static str,
    executions: &Arc<Mutex<Vec<Execution>>>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let executions = Arc::clone(executions);
    let reader = Reader::new(executor, "batch_q", move |message: Message| {
        let executions = Arc::clone(&executions);
        async move {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(200)).await;
            executions.lock().unwrap().push(Execution {
                reader: name,
                id: message.id,
                started,
                finished: Instant::now(),
            });
            Ok::<(), String>(())
        }
    })
    .quantity(10)
    .hide_for(Duration::from_millis(600))
    .poll(fast_poll());
    tokio::spawn(reader.run(shutdown.clone()))
}

async fn visible_count(pool: &deadpool_postgres::Pool, queue: &str) -> i64 {
    pool.get()
        .await
        .expect("pooled connection")
        .query_one(
            "SELECT count(*) FROM cb_messages
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = $1)
               AND visible_at <= clock_timestamp()",
            &[&queue],
        )
        .await
        .expect("count visible messages")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_overlap_on_one_message() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("batch_q").await;
    let bodies: Vec<_> = (0..10).map(|i| json!({"i": i})).collect();
    let sent = client
        .send_many("batch_q", &bodies, SendManyOpts::default())
        .await?;
    let executions = Arc::new(Mutex::new(Vec::new()));
    let recorder = DeleteRecorder {
        pool: db.pool.clone(),
        deletes: Arc::new(Mutex::new(HashMap::new())),
    };

    // The first reader takes all 10 messages with a 600 ms lease and needs
    // 200 ms per message, so most of its batch waits longer than the lease.
    let shutdown = CancellationToken::new();
    let first = spawn_batch_reader(recorder.clone(), "first", &executions, &shutdown);
    wait_for(
        "the first reader to take the batch",
        Duration::from_secs(10),
        || async { (visible_count(&db.pool, "batch_q").await == 0).then_some(()) },
    )
    .await;
    let second = spawn_batch_reader(recorder.clone(), "second", &executions, &shutdown);

    wait_for(
        "every message to be handled",
        Duration::from_secs(20),
        || async { (depth(&db.pool, "batch_q").await == 0).then_some(()) },
    )
    .await;
    stop(shutdown.clone(), first).await?;
    stop(shutdown, second).await?;

    let executions = executions.lock().unwrap().clone();
    let mut by_id: HashMap<i64, Vec<Execution>> = HashMap::new();
    for execution in &executions {
        by_id
            .entry(execution.id)
            .or_default()
            .push(execution.clone());
    }
    let mut handled: Vec<i64> = by_id.keys().copied().collect();
    handled.sort_unstable();
    assert_eq!(handled, sent, "every message is handled");
    for (id, runs) in &by_id {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let overlap = a.started < b.finished && b.started < a.finished;
                assert!(!overlap, "message {id} ran twice at once: {a:?} and {b:?}");
            }
        }
    }
    for (id, runs) in &by_id {
        assert_eq!(
            runs.len(),
            1,
            "message {id} was handled more than once: {runs:?}"
        );
    }
    let by_second = executions
        .iter()
        .filter(|execution| execution.reader == "second")
        .count();
    assert!(
        by_second > 0,
        "the second reader should take over the messages whose lease ran out"
    );
    let deletes = recorder.deletes.lock().unwrap().clone();
    for id in &sent {
        assert_eq!(
            deletes.get(id),
            Some(&vec![true]),
            "the readers' deletes of message {id}"
        );
        assert!(
            !client.delete("batch_q", *id).await?,
            "message {id} is gone"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_extends_lease_of_waiting_message() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("lease_q").await;
    let sent = client
        .send_many("lease_q", &["quick", "slow"], SendManyOpts::default())
        .await?;
    let lease = Duration::from_secs(1);
    let slow_started = Arc::new(Notify::new());
    let slow_finished = CancellationToken::new();

    // The first message takes a little less than half the lease, so the
    // second one starts without an extension of its lease, then runs longer
    // than the whole lease.
    let shutdown = CancellationToken::new();
    let (on_start, on_finish) = (Arc::clone(&slow_started), slow_finished.clone());
    let reader = Reader::new(db.pool.clone(), "lease_q", move |message: Message| {
        let (on_start, on_finish) = (Arc::clone(&on_start), on_finish.clone());
        async move {
            if message.body == json!("quick") {
                tokio::time::sleep(Duration::from_millis(450)).await;
            } else {
                on_start.notify_one();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                on_finish.cancel();
            }
            Ok::<(), String>(())
        }
    })
    .quantity(2)
    .hide_for(lease)
    .poll(fast_poll());
    let running = tokio::spawn(reader.run(shutdown.clone()));

    slow_started.notified().await;
    let connection = db.pool.get().await?;
    let mut least_remaining = f64::MAX;
    while !slow_finished.is_cancelled() {
        let row = connection
            .query_opt(
                "SELECT extract(epoch FROM visible_at - clock_timestamp())::float8
                   FROM cb_messages
                  WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'lease_q') AND id = $1",
                &[&sent[1]],
            )
            .await?;
        let Some(row) = row else { break };
        least_remaining = least_remaining.min(row.get(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop(shutdown, running).await?;

    // Extensions come every half lease, so at least a quarter of the lease
    // is always left while the handler runs.
    assert!(
        least_remaining >= lease.as_secs_f64() / 4.0,
        "the running message's lease fell to {least_remaining:.3} s"
    );
    assert_eq!(depth(&db.pool, "lease_q").await, 0);
    Ok(())
}
