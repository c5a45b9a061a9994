//! Queue lifecycle and message operations through the Rust client.

use std::collections::HashMap;
use std::time::Duration;

use catbird_core::queue::{self, CreateQueueOpts, Message, SendManyOpts, SendOpts};
use catbird_core::{Client, Error, NameRule, PollOpts};
use catbird_tests::{TestDb, wait_for};
use chrono::TimeDelta;
use serde_json::{Map, Value, json};

use crate::helpers::{RecordingExecutor, db_now, db_with_queue, depth, session_with_messages};

/// A lease long enough that no message comes back during a test.
const LEASE: Duration = Duration::from_secs(30);

fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|message| message.id).collect()
}

fn bodies(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|message| message.body.clone())
        .collect()
}

fn headers(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("headers must be an object, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// Queue lifecycle

#[tokio::test]
async fn create_queue_stores_description_and_expiry() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let before = db_now(&db.pool).await;
    let expires_at = before + TimeDelta::days(1);

    client
        .create_queue(
            "orders",
            CreateQueueOpts::default()
                .description("customer orders")
                .expires_at(expires_at),
        )
        .await?;

    let info = client.get_queue("orders").await?;
    assert_eq!(info.name, "orders");
    assert_eq!(info.description.as_deref(), Some("customer orders"));
    assert_eq!(info.expires_at, Some(expires_at));
    assert!(info.created_at >= before - TimeDelta::seconds(1));
    assert!(info.created_at <= db_now(&db.pool).await);
    Ok(())
}

#[tokio::test]
async fn create_queue_twice_keeps_first_settings() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let first_expiry = db_now(&db.pool).await + TimeDelta::days(1);

    client
        .create_queue(
            "orders",
            CreateQueueOpts::default()
                .description("first")
                .expires_at(first_expiry),
        )
        .await?;
    let id = client
        .send("orders", &json!("kept"), SendOpts::default())
        .await?;
    client
        .create_queue(
            "orders",
            CreateQueueOpts::default()
                .description("second")
                .expires_at(first_expiry + TimeDelta::days(1)),
        )
        .await?;

    let info = client.get_queue("orders").await?;
    assert_eq!(info.description.as_deref(), Some("first"));
    assert_eq!(info.expires_at, Some(first_expiry));
    assert_eq!(client.list_queues().await?.len(), 1);
    let messages = client.read("orders", 10, LEASE).await?;
    assert_eq!(
        ids(&messages),
        vec![id],
        "creating again keeps the messages"
    );
    Ok(())
}

#[tokio::test]
async fn create_queue_without_options_stores_nulls() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());

    client
        .create_queue("plain", CreateQueueOpts::default())
        .await?;
    client
        .create_queue("blank", CreateQueueOpts::default().description(""))
        .await?;

    let plain = client.get_queue("plain").await?;
    assert_eq!(plain.description, None);
    assert_eq!(plain.expires_at, None);
    let blank = client.get_queue("blank").await?;
    assert_eq!(blank.description, None, "an empty description means none");
    Ok(())
}

#[tokio::test]
async fn create_queue_rejects_expiry_in_past() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let past = db_now(&db.pool).await - TimeDelta::seconds(1);

    let result = client
        .create_queue("late", CreateQueueOpts::default().expires_at(past))
        .await;

    match result {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("expires_at"), "{message}");
            assert!(message.contains("late"), "{message}");
        }
        other => panic!("expected an invalid argument, got {other:?}"),
    }
    assert!(client.get_queue("late").await.unwrap_err().is_not_found());
    Ok(())
}

#[tokio::test]
async fn delete_queue_reports_whether_queue_existed() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("doomed").await;
    client
        .send("doomed", &json!(1), SendOpts::default())
        .await?;

    let first = client.delete_queue("doomed").await?;
    let second = client.delete_queue("doomed").await?;
    let never_created = client.delete_queue("never_created").await?;

    assert!(first);
    assert!(!second);
    assert!(!never_created);
    assert!(client.get_queue("doomed").await.unwrap_err().is_not_found());
    let messages_left: i64 = db
        .pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM cb_messages", &[])
        .await?
        .get(0);
    assert_eq!(messages_left, 0, "deleting a queue deletes its messages");
    Ok(())
}

#[tokio::test]
async fn one_connection_follows_queue_recreation() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    // One pooled connection keeps its prepared statements across the
    // deletion and the new creation of the queue.
    let conn = db.pool.get().await?;
    queue::create_queue(&conn, "phoenix", CreateQueueOpts::default()).await?;
    queue::send(&conn, "phoenix", &json!("old"), SendOpts::default()).await?;
    assert_eq!(queue::read(&conn, "phoenix", 10, LEASE).await?.len(), 1);

    queue::delete_queue(&conn, "phoenix").await?;
    assert_queue_not_defined(
        "phoenix",
        "send",
        queue::send(&conn, "phoenix", &json!("lost"), SendOpts::default()).await,
    );
    assert_queue_not_defined(
        "phoenix",
        "read",
        queue::read(&conn, "phoenix", 10, LEASE).await,
    );
    assert_queue_not_defined(
        "phoenix",
        "delete",
        queue::delete(&conn, "phoenix", 1).await,
    );

    queue::create_queue(&conn, "phoenix", CreateQueueOpts::default()).await?;
    let id = queue::send(&conn, "phoenix", &json!("new"), SendOpts::default()).await?;
    let messages = queue::read(&conn, "phoenix", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(messages[0].body, json!("new"));
    assert!(queue::delete(&conn, "phoenix", id).await?);
    Ok(())
}

#[tokio::test]
async fn recreated_queue_starts_empty() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("reborn").await;
    client
        .send(
            "reborn",
            &json!(1),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;

    client.delete_queue("reborn").await?;
    client
        .create_queue("reborn", CreateQueueOpts::default())
        .await?;

    assert!(client.read("reborn", 10, LEASE).await?.is_empty());
    let id = client
        .send(
            "reborn",
            &json!(2),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;
    let messages = client.read("reborn", 10, LEASE).await?;
    assert_eq!(
        ids(&messages),
        vec![id],
        "the old message's key is gone too"
    );
    Ok(())
}

/// Publishes the session's statistics counters, then runs `query` on a
/// fresh statistics snapshot and returns its row.
async fn flushed_statistics(conn: &tokio_postgres::Client, query: &str) -> tokio_postgres::Row {
    conn.batch_execute("SELECT pg_stat_force_next_flush(); SELECT pg_stat_clear_snapshot()")
        .await
        .expect("flush the statistics");
    conn.query_one(query, &[])
        .await
        .expect("read the statistics")
}

/// Waits until some session waits for an advisory lock.
async fn wait_for_lock_waiter(pool: &deadpool_postgres::Pool, condition: &str) {
    let watcher = pool.get().await.expect("pooled connection");
    wait_for(condition, Duration::from_secs(10), || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .expect("read pg_locks")
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_waits_for_deletion_in_progress() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("phoenix").await;
    let mut deleter = db.pool.get().await?;
    let deleting = deleter.transaction().await?;
    assert!(queue::delete_queue(&deleting, "phoenix").await?);

    let creating = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .create_queue("phoenix", CreateQueueOpts::default())
                .await
        }
    });
    wait_for_lock_waiter(&db.pool, "the creation to wait for the deletion").await;
    deleting.commit().await?;
    creating.await??;

    let id = client
        .send("phoenix", &json!(1), SendOpts::default())
        .await?;
    assert_eq!(ids(&client.read("phoenix", 10, LEASE).await?), vec![id]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_waits_for_read_then_send() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("busy").await;
    client
        .send("busy", &json!("first"), SendOpts::default())
        .await?;
    let mut worker = db.pool.get().await?;
    let open = worker.transaction().await?;
    let read = queue::read(&open, "busy", 1, LEASE).await?;

    let deleting = tokio::spawn({
        let client = client.clone();
        async move { client.delete_queue("busy").await }
    });
    wait_for_lock_waiter(&db.pool, "the deletion to wait for the reader").await;
    // The reader holds the row and sends a follow-up: it must not deadlock
    // with the deletion that waits for it.
    queue::delete(&open, "busy", read[0].id).await?;
    queue::send(&open, "busy", &json!("follow-up"), SendOpts::default()).await?;
    open.commit().await?;

    assert!(deleting.await??, "the queue existed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_messages_of_deleted_queues() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("orphaned").await;
    let mut sender = db.pool.get().await?;
    let open = sender.transaction().await?;
    queue::send(&open, "orphaned", &json!(1), SendOpts::default()).await?;

    // A repeatable read deletion waits for the sender but cannot see the
    // message it commits.
    let deleting = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            let mut deleter = pool.get().await?;
            let tx = deleter
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let existed = queue::delete_queue(&tx, "orphaned").await?;
            tx.commit().await?;
            anyhow::Ok(existed)
        }
    });
    wait_for_lock_waiter(&db.pool, "the deletion to wait for the sender").await;
    open.commit().await?;
    assert!(deleting.await??);
    let collector = db.pool.get().await?;

    let deleted: i32 = collector
        .query_one("SELECT expired_messages_deleted FROM cb_gc()", &[])
        .await?
        .get(0);

    assert_eq!(deleted, 1);
    let left: i64 = collector
        .query_one("SELECT count(*) FROM cb_messages", &[])
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_waits_whatever_search_path() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("pathed").await;
    let mut sender = db.pool.get().await?;
    sender
        .batch_execute("CREATE SCHEMA IF NOT EXISTS elsewhere; SET search_path = elsewhere, public")
        .await?;
    let open = sender.transaction().await?;
    queue::send(&open, "pathed", &json!(1), SendOpts::default()).await?;

    let deleting = tokio::spawn({
        let client = client.clone();
        async move { client.delete_queue("pathed").await }
    });
    wait_for_lock_waiter(&db.pool, "the deletion to wait for the sender").await;
    open.commit().await?;
    sender.batch_execute("RESET search_path").await?;

    assert!(deleting.await??);
    let left: i64 = sender
        .query_one("SELECT count(*) FROM cb_messages", &[])
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test]
async fn gc_stays_fast_after_growth() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("swollen").await;
    // The first passes run on a table with a few expired messages, in the
    // session that runs the last one after the table grew. After five
    // passes PL/pgSQL may keep a generic plan.
    let collector = db.pool.get().await?;
    for _ in 0..8 {
        let expires_at = db_now(&db.pool).await;
        client
            .send(
                "swollen",
                &json!(0),
                SendOpts::default().expires_at(expires_at + TimeDelta::milliseconds(1)),
            )
            .await?;
        wait_for("the message to expire", Duration::from_secs(10), || async {
            (db_now(&db.pool).await > expires_at + TimeDelta::milliseconds(1)).then_some(())
        })
        .await;
        collector.batch_execute("SELECT cb_gc()").await?;
    }
    client
        .send_many("swollen", &vec![json!(0); 40_000], SendManyOpts::default())
        .await?;
    let expires_at = db_now(&db.pool).await + TimeDelta::milliseconds(50);
    client
        .send_many(
            "swollen",
            &vec![json!(0); 20_000],
            SendManyOpts::default().expires_at(expires_at),
        )
        .await?;
    wait_for(
        "the messages to expire",
        Duration::from_secs(10),
        || async { (db_now(&db.pool).await > expires_at).then_some(()) },
    )
    .await;

    // A plan that compares every row with every expired row's address
    // takes several seconds here, and the timeout turns that into an error.
    collector
        .batch_execute("SET statement_timeout = '2s'")
        .await?;
    let deleted: i32 = collector
        .query_one("SELECT expired_messages_deleted FROM cb_gc()", &[])
        .await?
        .get(0);
    collector.batch_execute("RESET statement_timeout").await?;

    assert_eq!(deleted, 20_000);
    Ok(())
}

#[tokio::test]
async fn gc_skips_locked_expired_messages() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("stale").await;
    let expires_at = db_now(&db.pool).await + TimeDelta::milliseconds(50);
    let id = client
        .send(
            "stale",
            &json!(1),
            SendOpts::default().expires_at(expires_at),
        )
        .await?;
    wait_for("the message to expire", Duration::from_secs(10), || async {
        (db_now(&db.pool).await > expires_at).then_some(())
    })
    .await;
    let mut holder = db.pool.get().await?;
    let open = holder.transaction().await?;
    assert!(queue::hide(&open, "stale", id, LEASE).await?);

    // A collection pass that waited for the lock would hit the timeout.
    let collector = db.pool.get().await?;
    collector
        .batch_execute("SET statement_timeout = '5s'")
        .await?;
    let skipped: i32 = collector
        .query_one("SELECT expired_messages_deleted FROM cb_gc()", &[])
        .await?
        .get(0);
    open.commit().await?;
    let deleted: i32 = collector
        .query_one("SELECT expired_messages_deleted FROM cb_gc()", &[])
        .await?
        .get(0);
    collector.batch_execute("RESET statement_timeout").await?;

    assert_eq!(skipped, 0, "the locked message was left for later");
    assert_eq!(deleted, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deletion_waits_for_open_sends() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("busy").await;
    let mut sender = db.pool.get().await?;
    let open = sender.transaction().await?;
    queue::send(&open, "busy", &json!("in flight"), SendOpts::default()).await?;

    let deleting = tokio::spawn({
        let client = client.clone();
        async move { client.delete_queue("busy").await }
    });
    wait_for_lock_waiter(&db.pool, "the deletion to wait for the open send").await;
    let watcher = db.pool.get().await?;
    assert!(!deleting.is_finished());
    open.commit().await?;

    assert!(deleting.await??, "the queue existed");
    let left: i64 = watcher
        .query_one("SELECT count(*) FROM cb_messages", &[])
        .await?
        .get(0);
    assert_eq!(left, 0, "the committed send's message went with its queue");
    Ok(())
}

#[tokio::test]
async fn old_snapshot_cannot_send_to_deleted_queue() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("gone").await;
    let mut sender = db.pool.get().await?;
    let open = sender
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    // The first statement fixes the snapshot, which still shows the queue.
    open.query_one("SELECT count(*) FROM cb_queues", &[])
        .await?;
    assert!(client.delete_queue("gone").await?);

    let error = queue::send(&open, "gone", &json!("late"), SendOpts::default())
        .await
        .unwrap_err();

    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
        "{error:?}"
    );
    drop(open);
    let stored: i64 = db
        .pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM cb_messages", &[])
        .await?
        .get(0);
    assert_eq!(stored, 0);
    Ok(())
}

/// Sends, reads, hides and deletes on queue `planned` through every message
/// function, single and batch forms, and returns the messages read.
async fn call_every_queue_function(
    conn: &tokio_postgres::Client,
    key: &str,
) -> Result<Vec<Message>, Error> {
    let id = queue::send(conn, "planned", &json!(1), SendOpts::default()).await?;
    let keyed = SendOpts::default().concurrency_key(key);
    queue::send(conn, "planned", &json!(1), keyed).await?;
    let many = queue::send_many(
        conn,
        "planned",
        &[json!(1), json!(2)],
        SendManyOpts::default(),
    )
    .await?;
    let read = queue::read(conn, "planned", 10, LEASE).await?;
    queue::hide(conn, "planned", id, Duration::ZERO).await?;
    queue::hide_many(conn, "planned", &many, Duration::ZERO).await?;
    queue::delete(conn, "planned", id).await?;
    queue::delete_many(conn, "planned", &many).await?;
    Ok(read)
}

#[tokio::test]
async fn queue_functions_keep_index_plans() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("planned").await;
    // One connection calls every function more than five times while the
    // table is nearly empty, so PL/pgSQL settles on generic plans. Plans
    // chosen for an empty table would scan the whole table for each id.
    let conn = db.pool.get().await?;
    for round in 0..8 {
        let read = call_every_queue_function(&conn, &format!("k{round}")).await?;
        assert!(!read.is_empty());
    }
    client
        .send_many("planned", &vec![json!(0); 2_000], SendManyOpts::default())
        .await?;
    conn.batch_execute("ANALYZE cb_messages").await?;
    // Returns the table's sequential scans and the index entries read.
    let scans = || async {
        let row = flushed_statistics(
            &conn,
            "SELECT t.seq_scan, (SELECT sum(i.idx_tup_read)::bigint FROM pg_stat_user_indexes i
                                  WHERE i.relid = t.relid)
               FROM pg_stat_user_tables t WHERE t.relname = 'cb_messages'",
        )
        .await;
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let before = scans().await;

    for round in 0..4 {
        call_every_queue_function(&conn, &format!("again{round}")).await?;
    }

    let (seq_scans, entries_read) = scans().await;
    assert_eq!(
        seq_scans, before.0,
        "a queue function scanned the whole message table"
    );
    // Four rounds touch about a hundred entries. A plan that finds
    // messages by queue alone reads the queue's 2,000 entries per message.
    let entries_read = entries_read - before.1;
    assert!(
        entries_read < 2_000,
        "the queue functions read {entries_read} index entries"
    );
    Ok(())
}

#[tokio::test]
async fn reads_keep_one_plan_per_session() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("replanned").await;
    client
        .send_many("replanned", &vec![json!(0); 20], SendManyOpts::default())
        .await?;
    // auto_explain sends this session the plan of every statement a read
    // runs, as a notice. A plan made for one call's values shows them as
    // constants, and making it costs more than the read itself. The
    // session's one generic plan shows parameters instead.
    let (conn, mut notices) = session_with_messages(&db, |message| match message {
        tokio_postgres::AsyncMessage::Notice(notice) => Some(notice.message().to_owned()),
        _ => None,
    })
    .await;
    // The generic plan's estimated cost grows with the queue. A session
    // that JIT-compiles every plan shows whether reads would compile theirs
    // on every call once a queue is large. Servers built without JIT never
    // compile.
    conn.batch_execute(
        "LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_nested_statements = on;
         SET auto_explain.log_level = notice;
         SET jit_above_cost = 0",
    )
    .await?;
    // PL/pgSQL makes plans for the values of the first five calls.
    for _ in 0..6 {
        queue::read(&conn, "replanned", 1, LEASE).await?;
    }
    while notices.try_recv().is_ok() {}

    let read = queue::read(&conn, "replanned", 1, LEASE).await?;

    assert_eq!(read.len(), 1);
    let mut plans = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        plans.push(notice);
    }
    let plan_of = |statement: &str| {
        plans
            .iter()
            .find(|plan| plan.contains(statement))
            .unwrap_or_else(|| panic!("no plan for {statement:?} among {plans:#?}"))
    };
    let select = plan_of("v_rows := ARRAY(");
    assert!(
        select.contains("Index Scan using cb_messages_read_idx"),
        "the read's select left the read order index: {select}"
    );
    assert!(
        select.contains("queue_id = $"),
        "the read's select was planned for this call: {select}"
    );
    assert!(
        !select.contains("JIT:"),
        "the read's select was compiled: {select}"
    );
    let update = plan_of("WITH updated AS (");
    assert!(
        update.contains("ctid = ANY ($"),
        "the read's update was planned for this call: {update}"
    );
    assert!(
        !update.contains("JIT:"),
        "the read's update was compiled: {update}"
    );
    Ok(())
}

#[tokio::test]
async fn keyed_sends_skip_other_queues_expiry() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("small").await;
    client
        .create_queue("big", CreateQueueOpts::default())
        .await?;
    let keys: Vec<Option<String>> = (0..5_000).map(|n| Some(format!("k{n}"))).collect();
    client
        .send_many(
            "small",
            &vec![json!(0); keys.len()],
            SendManyOpts::default().concurrency_keys(keys),
        )
        .await?;
    // Statistics in which no message expires, then plans made from them.
    let conn = db.pool.get().await?;
    conn.batch_execute("ANALYZE cb_messages").await?;
    for round in 0..6 {
        let opts = SendOpts::default().concurrency_key(format!("warm{round}"));
        queue::send(&conn, "small", &json!(round), opts).await?;
    }
    let expires_at = db_now(&db.pool).await + TimeDelta::milliseconds(50);
    client
        .send_many(
            "big",
            &vec![json!(0); 20_000],
            SendManyOpts::default().expires_at(expires_at),
        )
        .await?;
    wait_for(
        "the messages to expire",
        Duration::from_secs(10),
        || async { (db_now(&db.pool).await > expires_at).then_some(()) },
    )
    .await;
    let entries_read = || async {
        flushed_statistics(
            &conn,
            "SELECT sum(idx_tup_read)::bigint FROM pg_stat_user_indexes
              WHERE relname = 'cb_messages'",
        )
        .await
        .get::<_, i64>(0)
    };
    let before = entries_read().await;

    for round in 0..10 {
        let opts = SendOpts::default().concurrency_key(format!("new{round}"));
        queue::send(&conn, "small", &json!(round), opts).await?;
    }

    let stepped = entries_read().await - before;
    assert!(
        stepped < 1_000,
        "ten keyed sends read {stepped} index entries"
    );
    Ok(())
}

#[tokio::test]
async fn reads_use_read_order_index() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("churned").await;
    // Statistics that show a long queue of hidden messages make a bitmap
    // scan look cheaper than the read order index, for the plans a session
    // makes for its first reads. A bitmap scan reads every index entry of
    // the queue on every read and never marks those of deleted messages
    // dead, so a busy queue's reads slow down until vacuum. An index scan in
    // read order marks them on the way.
    let sent = client
        .send_many("churned", &vec![json!(0); 3_000], SendManyOpts::default())
        .await?;
    queue::read(&db.pool, "churned", 3_000, LEASE).await?;
    let setup = db.pool.get().await?;
    setup.batch_execute("ANALYZE cb_messages").await?;
    queue::delete_many(&setup, "churned", &sent).await?;
    let last = client
        .send("churned", &json!(1), SendOpts::default())
        .await?;
    let conn = db.connect().await;
    // Rows fetched through the read index: a bitmap scan adds none.
    let fetched = || async {
        flushed_statistics(
            &conn,
            "SELECT idx_tup_fetch FROM pg_stat_user_indexes
              WHERE indexrelname = 'cb_messages_read_idx'",
        )
        .await
        .get::<_, i64>(0)
    };
    let before = fetched().await;

    let read = queue::read(&conn, "churned", 100, LEASE).await?;

    assert_eq!(ids(&read), vec![last]);
    assert!(
        fetched().await > before,
        "the read did not go through the read order index"
    );
    Ok(())
}

#[tokio::test]
async fn expired_queue_works_until_collected() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let expires_at = db_now(&db.pool).await + TimeDelta::milliseconds(200);
    client
        .create_queue("brief", CreateQueueOpts::default().expires_at(expires_at))
        .await?;

    wait_for("the queue to expire", Duration::from_secs(10), || async {
        (db_now(&db.pool).await > expires_at).then_some(())
    })
    .await;
    let id = client
        .send("brief", &json!("still works"), SendOpts::default())
        .await?;
    let messages = client.read("brief", 10, LEASE).await?;

    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(
        client.get_queue("brief").await?.expires_at,
        Some(expires_at)
    );
    Ok(())
}

#[tokio::test]
async fn get_queue_of_missing_queue_is_not_found() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());

    let error = client.get_queue("missing").await.unwrap_err();

    assert!(
        matches!(&error, Error::NotFound { kind: "queue", name } if name == "missing"),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "catbird: queue \"missing\" not found");
    Ok(())
}

#[tokio::test]
async fn list_queues_orders_by_name() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    assert!(client.list_queues().await?.is_empty());

    for name in ["charlie", "alpha", "bravo_2", "bravo_10"] {
        client
            .create_queue(name, CreateQueueOpts::default())
            .await?;
    }

    let names: Vec<String> = client
        .list_queues()
        .await?
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, ["alpha", "bravo_10", "bravo_2", "charlie"]);
    Ok(())
}

#[tokio::test]
async fn queue_name_of_58_characters_works() -> anyhow::Result<()> {
    let name = "q".repeat(58);
    let (_db, client) = db_with_queue(&name).await;

    let id = client
        .send(&name, &json!("long"), SendOpts::default())
        .await?;
    let messages = client.read(&name, 1, LEASE).await?;

    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(client.get_queue(&name).await?.name, name);
    assert!(client.delete_queue(&name).await?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Send

#[tokio::test]
async fn send_returns_increasing_ids() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let first = client.send("jobs", &json!(1), SendOpts::default()).await?;
    let second = client.send("jobs", &json!(2), SendOpts::default()).await?;
    let third = client.send("jobs", &json!(3), SendOpts::default()).await?;

    assert!(first < second, "{first} < {second}");
    assert!(second < third, "{second} < {third}");
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![first, second, third]);
    Ok(())
}

#[tokio::test]
async fn sent_message_fields_round_trip() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let before_send = db_now(&db.pool).await;
    let expires_at = before_send + TimeDelta::hours(1);

    let id = client
        .send(
            "jobs",
            &json!({"to": "ada@example.com", "n": [1, 2.5, null]}),
            SendOpts::default()
                .topic("mail.welcome")
                .concurrency_key("ada")
                .headers(headers(json!({"trace": "abc"})))
                .expires_at(expires_at)
                .priority(7),
        )
        .await?;
    let before_read = db_now(&db.pool).await;
    let messages = client.read("jobs", 1, LEASE).await?;
    let after_read = db_now(&db.pool).await;

    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.id, id);
    assert_eq!(
        message.body,
        json!({"to": "ada@example.com", "n": [1, 2.5, null]})
    );
    assert_eq!(message.topic.as_deref(), Some("mail.welcome"));
    assert_eq!(message.concurrency_key.as_deref(), Some("ada"));
    assert_eq!(message.headers, Some(headers(json!({"trace": "abc"}))));
    assert_eq!(message.priority, 7);
    assert_eq!(message.deliveries, 1);
    assert_eq!(message.expires_at, Some(expires_at));
    assert!(message.created_at >= before_send - TimeDelta::seconds(1));
    assert!(message.created_at <= before_read);
    let lease = TimeDelta::from_std(LEASE)?;
    assert!(
        message.visible_at >= before_read + lease,
        "the lease starts at the read"
    );
    assert!(message.visible_at <= after_read + lease);
    Ok(())
}

#[tokio::test]
async fn message_without_options_has_defaults() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    client
        .send("jobs", &json!("plain"), SendOpts::default())
        .await?;
    client
        .send(
            "jobs",
            &json!("blank"),
            SendOpts::default().topic("").concurrency_key(""),
        )
        .await?;
    let messages = client.read("jobs", 10, LEASE).await?;

    assert_eq!(messages.len(), 2);
    for message in &messages {
        assert_eq!(message.topic, None, "{}", message.body);
        assert_eq!(message.concurrency_key, None, "{}", message.body);
        assert_eq!(message.headers, None, "{}", message.body);
        assert_eq!(message.priority, 0, "{}", message.body);
        assert_eq!(message.expires_at, None, "{}", message.body);
    }
    Ok(())
}

#[tokio::test]
async fn headers_round_trip() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = headers(json!({
        "trace_id": "4bf92f3577b34da6",
        "attempt": 3,
        "nested": {"list": [true, null, "é"]},
        "empty": {}
    }));

    client
        .send("jobs", &json!(1), SendOpts::default().headers(sent.clone()))
        .await?;
    client
        .send("jobs", &json!(2), SendOpts::default().headers(Map::new()))
        .await?;
    let messages = client.read("jobs", 10, LEASE).await?;

    assert_eq!(messages[0].headers, Some(sent));
    assert_eq!(
        messages[1].headers,
        Some(Map::new()),
        "an empty object is kept"
    );
    Ok(())
}

#[tokio::test]
async fn any_json_value_is_a_valid_body() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = [
        Value::Null,
        json!(true),
        json!(-12.5),
        json!("text"),
        json!([1, "two", null]),
        json!({}),
    ];

    for body in &sent {
        client.send("jobs", body, SendOpts::default()).await?;
    }
    let messages = client.read("jobs", 10, LEASE).await?;

    assert_eq!(bodies(&messages), sent);
    Ok(())
}

#[tokio::test]
async fn json_null_body_round_trips() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let id = client.send("jobs", &(), SendOpts::default()).await?;
    let messages = client.read("jobs", 1, LEASE).await?;

    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(messages[0].body, Value::Null);
    assert_eq!(messages[0].body_as::<Option<i32>>()?, None);
    Ok(())
}

#[tokio::test]
async fn delayed_message_is_hidden_until_visible_at() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let visible_at = db_now(&db.pool).await + TimeDelta::milliseconds(300);

    let id = client
        .send(
            "jobs",
            &json!("later"),
            SendOpts::default().visible_at(visible_at),
        )
        .await?;

    let early = client.read("jobs", 10, LEASE).await?;
    assert!(early.is_empty(), "read before visible_at: {early:?}");
    let messages = wait_for("the delayed message", Duration::from_secs(10), || async {
        let messages = client.read("jobs", 10, LEASE).await.expect("read");
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(ids(&messages), vec![id]);
    let read_at = messages[0].visible_at - TimeDelta::from_std(LEASE)?;
    assert!(
        read_at >= visible_at,
        "read at {read_at}, visible from {visible_at}"
    );
    Ok(())
}

#[tokio::test]
async fn message_past_expiry_is_never_read() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let past = db_now(&db.pool).await - TimeDelta::seconds(1);

    client
        .send(
            "jobs",
            &json!("stale"),
            SendOpts::default().expires_at(past),
        )
        .await?;
    let fresh = client
        .send("jobs", &json!("fresh"), SendOpts::default())
        .await?;

    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![fresh]);
    assert_eq!(
        depth(&db.pool, "jobs").await,
        2,
        "an expired message stays stored until garbage collection"
    );
    Ok(())
}

#[tokio::test]
async fn expired_messages_are_skipped_anywhere() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("exp_q").await;
    let now = db_now(&db.pool).await;

    // H is read first so it is in flight: its lease ends before it expires.
    let hidden_expiry = now + TimeDelta::milliseconds(600);
    let hidden = client
        .send(
            "exp_q",
            &json!({"k": "hidden"}),
            SendOpts::default().expires_at(hidden_expiry),
        )
        .await?;
    let in_flight = client.read("exp_q", 1, Duration::from_millis(300)).await?;
    assert_eq!(ids(&in_flight), vec![hidden]);

    let long = client
        .send(
            "exp_q",
            &json!({"k": "long"}),
            SendOpts::default().expires_at(now + TimeDelta::minutes(10)),
        )
        .await?;
    client
        .send(
            "exp_q",
            &json!({"k": "short"}),
            SendOpts::default().expires_at(now + TimeDelta::milliseconds(300)),
        )
        .await?;
    let none = client
        .send("exp_q", &json!({"k": "none"}), SendOpts::default())
        .await?;

    wait_for(
        "the in-flight message to expire",
        Duration::from_secs(10),
        || async { (db_now(&db.pool).await > hidden_expiry).then_some(()) },
    )
    .await;
    let messages = client.read("exp_q", 10, LEASE).await?;

    assert_eq!(ids(&messages), vec![long, none]);
    assert_eq!(
        bodies(&messages),
        vec![json!({"k": "long"}), json!({"k": "none"})]
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Priority and read order

struct PriorityCase {
    names: HashMap<i64, &'static str>,
}

/// Sends A (priority 0), B (10), C (-5), D (10 but delayed an hour) and, in
/// one transaction, E1..E5 (3).
async fn send_priority_case(db: &TestDb, client: &Client, queue: &str) -> PriorityCase {
    let mut names = HashMap::new();
    let send = |name: &'static str, opts: SendOpts| async move {
        let id = client
            .send(queue, &json!({"name": name}), opts)
            .await
            .expect("send");
        (id, name)
    };
    let (id, name) = send("A", SendOpts::default().priority(0)).await;
    names.insert(id, name);
    let (id, name) = send("B", SendOpts::default().priority(10)).await;
    names.insert(id, name);
    let (id, name) = send("C", SendOpts::default().priority(-5)).await;
    names.insert(id, name);
    let later = db_now(&db.pool).await + TimeDelta::hours(1);
    let (id, name) = send("D", SendOpts::default().priority(10).visible_at(later)).await;
    names.insert(id, name);

    let mut connection = db.pool.get().await.expect("pooled connection");
    let transaction = connection.transaction().await.expect("begin");
    let batch: Vec<Value> = (1..=5).map(|i| json!({"name": format!("E{i}")})).collect();
    let batch_ids = queue::send_many(
        &transaction,
        queue,
        &batch,
        SendManyOpts::default().priority(3),
    )
    .await
    .expect("send the batch");
    transaction.commit().await.expect("commit");
    for (id, name) in batch_ids.into_iter().zip(["E1", "E2", "E3", "E4", "E5"]) {
        names.insert(id, name);
    }
    PriorityCase { names }
}

const PRIORITY_ORDER: [&str; 8] = ["B", "E1", "E2", "E3", "E4", "E5", "A", "C"];

#[tokio::test]
async fn single_reads_follow_priority_then_age() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("prio_q").await;
    let case = send_priority_case(&db, &client, "prio_q").await;

    let mut order = Vec::new();
    loop {
        let messages = client.read("prio_q", 1, LEASE).await?;
        let Some(message) = messages.first() else {
            break;
        };
        order.push(case.names[&message.id]);
        assert!(client.delete("prio_q", message.id).await?);
    }

    assert_eq!(order, PRIORITY_ORDER);
    assert_eq!(depth(&db.pool, "prio_q").await, 1, "the delayed D is left");
    Ok(())
}

#[tokio::test]
async fn batch_read_returns_selection_order() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("prio_q").await;
    let case = send_priority_case(&db, &client, "prio_q").await;

    let messages = client.read("prio_q", 20, LEASE).await?;

    let order: Vec<&str> = messages.iter().map(|m| case.names[&m.id]).collect();
    assert_eq!(order, PRIORITY_ORDER);
    let priorities: Vec<i32> = messages.iter().map(|m| m.priority).collect();
    assert_eq!(priorities, [10, 3, 3, 3, 3, 3, 0, -5]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Read

#[tokio::test]
async fn read_rejects_invalid_quantity_and_lease() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("jobs").await;
    let executor = RecordingExecutor::new(db.pool.clone());

    let zero_quantity = queue::read(&executor, "jobs", 0, LEASE).await;
    let zero_lease = queue::read(&executor, "jobs", 1, Duration::ZERO).await;
    let sub_millisecond = queue::read(&executor, "jobs", 1, Duration::from_micros(900)).await;
    let poll_zero_quantity =
        queue::read_poll(&executor, "jobs", 0, LEASE, PollOpts::default()).await;

    assert!(
        matches!(&zero_quantity, Err(Error::InvalidArgument(m)) if m.contains("quantity must be greater than 0")),
        "{zero_quantity:?}"
    );
    assert!(
        matches!(&zero_lease, Err(Error::InvalidArgument(m)) if m.contains("hide_for")),
        "{zero_lease:?}"
    );
    assert!(
        matches!(&sub_millisecond, Err(Error::InvalidArgument(m)) if m.contains("hide_for")),
        "{sub_millisecond:?}"
    );
    assert!(
        matches!(&poll_zero_quantity, Err(Error::InvalidArgument(_))),
        "{poll_zero_quantity:?}"
    );
    assert_eq!(executor.statements(), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn read_of_empty_queue_returns_nothing() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let messages = client.read("jobs", 10, LEASE).await?;

    assert!(messages.is_empty());
    Ok(())
}

#[tokio::test]
async fn read_returns_at_most_quantity() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &[1, 2, 3, 4, 5], SendManyOpts::default())
        .await?;

    let first = client.read("jobs", 2, LEASE).await?;
    let rest = client.read("jobs", 10, LEASE).await?;

    assert_eq!(ids(&first), sent[..2]);
    assert_eq!(ids(&rest), sent[2..]);
    Ok(())
}

#[tokio::test]
async fn read_hides_message_for_lease() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    client.send("jobs", &json!(1), SendOpts::default()).await?;

    let first = client.read("jobs", 10, LEASE).await?;
    let second = client.read("jobs", 10, LEASE).await?;

    assert_eq!(first.len(), 1);
    assert!(second.is_empty(), "a leased message is not read again");
    Ok(())
}

#[tokio::test]
async fn message_returns_after_lease_ends() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let id = client.send("jobs", &json!(1), SendOpts::default()).await?;
    let lease = Duration::from_millis(200);

    let first = client.read("jobs", 1, lease).await?;
    let second = wait_for("the lease to end", Duration::from_secs(10), || async {
        let messages = client.read("jobs", 1, lease).await.expect("read");
        (!messages.is_empty()).then_some(messages)
    })
    .await;

    assert_eq!(ids(&first), vec![id]);
    assert_eq!(ids(&second), vec![id]);
    assert_eq!(first[0].deliveries, 1);
    assert_eq!(second[0].deliveries, 2);
    let second_read_at = second[0].visible_at - TimeDelta::from_std(lease)?;
    assert!(
        second_read_at >= first[0].visible_at,
        "read again at {second_read_at}, leased until {}",
        first[0].visible_at
    );
    Ok(())
}

#[tokio::test]
async fn read_counts_deliveries() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let id = client.send("jobs", &json!(1), SendOpts::default()).await?;

    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let messages = client.read("jobs", 1, LEASE).await?;
        assert_eq!(ids(&messages), vec![id]);
        deliveries.push(messages[0].deliveries);
        assert!(client.hide("jobs", id, Duration::ZERO).await?);
    }

    assert_eq!(deliveries, [1, 2, 3]);
    Ok(())
}

#[tokio::test]
async fn read_poll_returns_once_visible() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let visible_at = db_now(&db.pool).await + TimeDelta::milliseconds(300);
    let id = client
        .send(
            "jobs",
            &json!("soon"),
            SendOpts::default().visible_at(visible_at),
        )
        .await?;
    let poll = PollOpts::default()
        .poll_for(Duration::from_secs(20))
        .poll_interval(Duration::from_millis(20));

    let started = tokio::time::Instant::now();
    let messages = client.read_poll("jobs", 10, LEASE, poll).await?;

    assert_eq!(ids(&messages), vec![id]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the poll returned at its deadline instead of when the message became visible"
    );
    Ok(())
}

#[tokio::test]
async fn read_poll_returns_empty_after_poll_for() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let poll = PollOpts::default()
        .poll_for(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(20));

    let started = tokio::time::Instant::now();
    let messages = client.read_poll("jobs", 10, LEASE, poll).await?;

    assert!(messages.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "an empty poll waits for poll_for"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Hide

#[tokio::test]
async fn hide_delays_message_and_reports_existence() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let id = client.send("jobs", &json!(1), SendOpts::default()).await?;

    let hidden = client.hide("jobs", id, Duration::from_secs(3600)).await?;
    let unknown = client.hide("jobs", id + 99_999, LEASE).await?;

    assert!(hidden);
    assert!(!unknown);
    assert!(client.read("jobs", 10, LEASE).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn hide_zero_makes_message_visible_at_once() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let id = client.send("jobs", &json!(1), SendOpts::default()).await?;
    client.read("jobs", 1, LEASE).await?;
    assert!(client.read("jobs", 1, LEASE).await?.is_empty());

    assert!(client.hide("jobs", id, Duration::ZERO).await?);

    let messages = client.read("jobs", 1, LEASE).await?;
    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(messages[0].deliveries, 2);
    Ok(())
}

#[tokio::test]
async fn hide_many_returns_existing_ids_ascending() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &[1, 2, 3], SendManyOpts::default())
        .await?;

    let hidden = client
        .hide_many(
            "jobs",
            &[sent[2], sent[2] + 99_999, sent[0]],
            Duration::from_secs(3600),
        )
        .await?;

    assert_eq!(hidden, vec![sent[0], sent[2]]);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![sent[1]]);
    Ok(())
}

#[tokio::test]
async fn hide_many_zero_releases_leased_messages() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &[1, 2], SendManyOpts::default())
        .await?;
    client.read("jobs", 10, LEASE).await?;

    let released = client.hide_many("jobs", &sent, Duration::ZERO).await?;
    let unknown_only = client.hide_many("jobs", &[sent[1] + 99_999], LEASE).await?;

    assert_eq!(released, sent);
    assert!(unknown_only.is_empty());
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), sent);
    Ok(())
}

// ---------------------------------------------------------------------------
// Delete

#[tokio::test]
async fn delete_reports_whether_message_existed() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let id = client.send("jobs", &json!(1), SendOpts::default()).await?;

    let first = client.delete("jobs", id).await?;
    let second = client.delete("jobs", id).await?;

    assert!(first);
    assert!(!second);
    assert_eq!(depth(&db.pool, "jobs").await, 0);
    assert!(client.read("jobs", 10, LEASE).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn delete_many_returns_deleted_ids_ascending() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent = client
        .send_many("jobs", &[1, 2, 3], SendManyOpts::default())
        .await?;

    let deleted = client
        .delete_many("jobs", &[sent[2], sent[2] + 99_999, sent[0]])
        .await?;
    let again = client.delete_many("jobs", &[sent[0], sent[2]]).await?;

    assert_eq!(deleted, vec![sent[0], sent[2]]);
    assert!(again.is_empty());
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![sent[1]]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Send many

#[tokio::test]
async fn send_many_keeps_body_order() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let sent_bodies = [
        json!("first"),
        json!({"second": 2}),
        json!(null),
        json!([4]),
    ];

    let sent = client
        .send_many("jobs", &sent_bodies, SendManyOpts::default())
        .await?;

    assert_eq!(sent.len(), 4);
    assert!(sent.windows(2).all(|pair| pair[0] < pair[1]), "{sent:?}");
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), sent);
    assert_eq!(bodies(&messages), sent_bodies);
    Ok(())
}

#[tokio::test]
async fn send_many_of_empty_list_sends_nothing() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;

    let sent = client
        .send_many::<Value>("jobs", &[], SendManyOpts::default())
        .await?;
    let with_keys = client
        .send_many::<Value>(
            "jobs",
            &[],
            SendManyOpts::default().concurrency_keys(Vec::<Option<String>>::new()),
        )
        .await?;

    assert!(sent.is_empty());
    assert!(with_keys.is_empty());
    assert_eq!(depth(&db.pool, "jobs").await, 0);
    Ok(())
}

#[tokio::test]
async fn send_many_applies_shared_and_per_body_options() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let now = db_now(&db.pool).await;
    let visible_at = now - TimeDelta::seconds(1);
    let expires_at = now + TimeDelta::hours(1);

    client
        .send_many(
            "jobs",
            &[1, 2],
            SendManyOpts::default()
                .topic("batch.topic")
                .priority(-2)
                .visible_at(visible_at)
                .expires_at(expires_at)
                .concurrency_keys([Some("one"), None])
                .headers(vec![Some(headers(json!({"h": 1}))), None]),
        )
        .await?;
    let messages = client.read("jobs", 10, LEASE).await?;

    assert_eq!(messages.len(), 2);
    for message in &messages {
        assert_eq!(message.topic.as_deref(), Some("batch.topic"));
        assert_eq!(message.priority, -2);
        assert_eq!(message.expires_at, Some(expires_at));
    }
    assert_eq!(messages[0].concurrency_key.as_deref(), Some("one"));
    assert_eq!(messages[1].concurrency_key, None);
    assert_eq!(messages[0].headers, Some(headers(json!({"h": 1}))));
    assert_eq!(messages[1].headers, None);
    Ok(())
}

#[tokio::test]
async fn send_many_rejects_key_count_mismatch() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("jobs").await;
    let executor = RecordingExecutor::new(db.pool.clone());

    let result = queue::send_many(
        &executor,
        "jobs",
        &[1, 2, 3],
        SendManyOpts::default().concurrency_keys([Some("a"), Some("b")]),
    )
    .await;

    assert!(
        matches!(&result, Err(Error::InvalidArgument(m))
            if m == "concurrency_keys length must match bodies length (2 keys, 3 bodies)"),
        "{result:?}"
    );
    assert_eq!(executor.statements(), Vec::<String>::new());
    assert_eq!(depth(&db.pool, "jobs").await, 0);
    Ok(())
}

#[tokio::test]
async fn send_many_rejects_header_count_mismatch() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("jobs").await;
    let executor = RecordingExecutor::new(db.pool.clone());

    let result = queue::send_many(
        &executor,
        "jobs",
        &[1, 2],
        SendManyOpts::default().headers(vec![None, None, None]),
    )
    .await;

    assert!(
        matches!(&result, Err(Error::InvalidArgument(m))
            if m == "headers length must match bodies length (3 headers, 2 bodies)"),
        "{result:?}"
    );
    assert_eq!(executor.statements(), Vec::<String>::new());
    assert_eq!(depth(&db.pool, "jobs").await, 0);
    Ok(())
}

#[tokio::test]
async fn send_many_skips_repeated_keys_in_batch() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let sent = client
        .send_many(
            "jobs",
            &["first k", "second k", "no key", "first j", "second j"],
            SendManyOpts::default().concurrency_keys([
                Some("k"),
                Some("k"),
                None,
                Some("j"),
                Some("j"),
            ]),
        )
        .await?;

    assert_eq!(sent.len(), 3);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), sent);
    assert_eq!(
        bodies(&messages),
        [json!("first k"), json!("no key"), json!("first j")]
    );
    Ok(())
}

#[tokio::test]
async fn send_many_skips_keys_held_by_stored_messages() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let held = client
        .send(
            "jobs",
            &json!("stored"),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;

    let sent = client
        .send_many(
            "jobs",
            &["duplicate", "new"],
            SendManyOpts::default().concurrency_keys([Some("k"), Some("j")]),
        )
        .await?;

    assert_eq!(sent.len(), 1);
    assert!(sent[0] > held);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![held, sent[0]]);
    assert_eq!(bodies(&messages), [json!("stored"), json!("new")]);
    Ok(())
}

#[tokio::test]
async fn send_many_treats_empty_keys_as_no_key() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let sent = client
        .send_many(
            "jobs",
            &[1, 2, 3],
            SendManyOpts::default().concurrency_keys([Some(""), Some(""), None]),
        )
        .await?;

    assert_eq!(sent.len(), 3);
    let messages = client.read("jobs", 10, LEASE).await?;
    let keys: Vec<Option<String>> = messages
        .iter()
        .map(|message| message.concurrency_key.clone())
        .collect();
    assert_eq!(keys, [None, None, None]);
    Ok(())
}

#[tokio::test]
async fn send_many_replaces_expired_key_holder() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let past = db_now(&db.pool).await - TimeDelta::seconds(1);
    let expired = client
        .send(
            "jobs",
            &json!("expired"),
            SendOpts::default().concurrency_key("k").expires_at(past),
        )
        .await?;

    let sent = client
        .send_many(
            "jobs",
            &["replacement"],
            SendManyOpts::default().concurrency_keys([Some("k")]),
        )
        .await?;

    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0], expired);
    assert_eq!(
        depth(&db.pool, "jobs").await,
        1,
        "the expired holder is gone"
    );
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(bodies(&messages), [json!("replacement")]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Concurrency-key deduplication

#[tokio::test]
async fn duplicate_key_send_changes_nothing() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let held = client
        .send(
            "jobs",
            &json!("original"),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;

    let later = db_now(&db.pool).await + TimeDelta::hours(1);
    let duplicate = client
        .send(
            "jobs",
            &json!("duplicate"),
            SendOpts::default()
                .concurrency_key("k")
                .priority(9)
                .topic("other")
                .visible_at(later),
        )
        .await?;

    assert_eq!(duplicate, held);
    assert_eq!(depth(&db.pool, "jobs").await, 1);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(
        ids(&messages),
        vec![held],
        "the stored message stays visible"
    );
    assert_eq!(messages[0].body, json!("original"));
    assert_eq!(messages[0].priority, 0);
    assert_eq!(messages[0].topic, None);
    Ok(())
}

#[tokio::test]
async fn leased_message_keeps_its_key() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs_q").await;
    let m1 = client
        .send(
            "jobs_q",
            &json!({"i": 1}),
            SendOpts::default().concurrency_key("acct-9"),
        )
        .await?;
    let first = client.read("jobs_q", 1, LEASE).await?;
    assert_eq!(ids(&first), vec![m1]);

    let m2 = client
        .send(
            "jobs_q",
            &json!({"i": 2}),
            SendOpts::default().concurrency_key("acct-9"),
        )
        .await?;
    let m3 = client
        .send(
            "jobs_q",
            &json!({"i": 3}),
            SendOpts::default().concurrency_key("acct-10"),
        )
        .await?;
    let m4 = client
        .send("jobs_q", &json!({"i": 4}), SendOpts::default())
        .await?;
    let batch = client.read("jobs_q", 10, LEASE).await?;
    let released = client.hide("jobs_q", m1, Duration::ZERO).await?;
    let after_release = client.read("jobs_q", 10, LEASE).await?;

    assert_eq!(m2, m1, "a leased message still holds its key");
    assert_eq!(ids(&batch), vec![m3, m4]);
    assert!(released);
    assert_eq!(ids(&after_release), vec![m1]);
    assert_eq!(after_release[0].body, json!({"i": 1}));
    Ok(())
}

#[tokio::test]
async fn deleting_message_frees_its_key() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    let first = client
        .send("jobs", &json!(1), SendOpts::default().concurrency_key("k"))
        .await?;

    assert!(client.delete("jobs", first).await?);
    let second = client
        .send("jobs", &json!(2), SendOpts::default().concurrency_key("k"))
        .await?;

    assert_ne!(second, first);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![second]);
    assert_eq!(messages[0].body, json!(2));
    Ok(())
}

#[tokio::test]
async fn expired_message_gives_up_its_key() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let expires_at = db_now(&db.pool).await + TimeDelta::milliseconds(300);
    let holder = client
        .send(
            "jobs",
            &json!("holder"),
            SendOpts::default()
                .concurrency_key("k")
                .expires_at(expires_at),
        )
        .await?;

    let before_expiry = client
        .send(
            "jobs",
            &json!("early"),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;
    wait_for(
        "the key holder to expire",
        Duration::from_secs(10),
        || async { (db_now(&db.pool).await > expires_at).then_some(()) },
    )
    .await;
    let after_expiry = client
        .send(
            "jobs",
            &json!("late"),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;

    assert_eq!(before_expiry, holder);
    assert_ne!(after_expiry, holder);
    assert_eq!(
        depth(&db.pool, "jobs").await,
        1,
        "the expired holder was replaced"
    );
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![after_expiry]);
    assert_eq!(messages[0].body, json!("late"));
    Ok(())
}

#[tokio::test]
async fn keys_are_per_queue() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("first").await;
    client
        .create_queue("second", CreateQueueOpts::default())
        .await?;

    client
        .send("first", &json!(1), SendOpts::default().concurrency_key("k"))
        .await?;
    client
        .send(
            "second",
            &json!(2),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;

    assert_eq!(bodies(&client.read("first", 10, LEASE).await?), [json!(1)]);
    assert_eq!(bodies(&client.read("second", 10, LEASE).await?), [json!(2)]);
    Ok(())
}

#[tokio::test]
async fn messages_without_key_never_conflict() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;

    let first = client.send("jobs", &json!(1), SendOpts::default()).await?;
    let second = client.send("jobs", &json!(1), SendOpts::default()).await?;
    let empty_a = client
        .send("jobs", &json!(1), SendOpts::default().concurrency_key(""))
        .await?;
    let empty_b = client
        .send("jobs", &json!(1), SendOpts::default().concurrency_key(""))
        .await?;

    assert_ne!(first, second);
    assert_ne!(empty_a, empty_b);
    assert_eq!(client.read("jobs", 10, LEASE).await?.len(), 4);
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors

fn assert_not_defined<T: std::fmt::Debug>(operation: &str, result: Result<T, Error>) {
    assert_queue_not_defined("missing", operation, result);
}

fn assert_queue_not_defined<T: std::fmt::Debug>(
    queue: &str,
    operation: &str,
    result: Result<T, Error>,
) {
    match result {
        Err(Error::NotDefined(message)) => assert_eq!(
            message,
            format!("queue \"{queue}\" is not defined"),
            "{operation}: the message should name the queue"
        ),
        other => panic!("{operation}: expected a not-defined error, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_queue_is_not_defined() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let poll = PollOpts::default().poll_for(Duration::from_millis(100));

    assert_not_defined(
        "send",
        client.send("missing", &json!(1), SendOpts::default()).await,
    );
    assert_not_defined(
        "send_many",
        client
            .send_many("missing", &[1], SendManyOpts::default())
            .await,
    );
    assert_not_defined("read", client.read("missing", 1, LEASE).await);
    assert_not_defined(
        "read_poll",
        client.read_poll("missing", 1, LEASE, poll).await,
    );
    assert_not_defined("hide", client.hide("missing", 1, LEASE).await);
    assert_not_defined("hide_many", client.hide_many("missing", &[1], LEASE).await);
    assert_not_defined("delete", client.delete("missing", 1).await);
    assert_not_defined("delete_many", client.delete_many("missing", &[1]).await);
    assert!(
        client
            .send("missing", &json!(1), SendOpts::default())
            .await
            .unwrap_err()
            .is_not_defined()
    );
    Ok(())
}

async fn run_every_operation(
    executor: &impl catbird_core::Executor,
    name: &str,
) -> Vec<(&'static str, Error)> {
    let poll = PollOpts::default().poll_for(Duration::from_millis(100));
    vec![
        (
            "create_queue",
            queue::create_queue(executor, name, CreateQueueOpts::default())
                .await
                .unwrap_err(),
        ),
        (
            "delete_queue",
            queue::delete_queue(executor, name).await.unwrap_err(),
        ),
        (
            "get_queue",
            queue::get_queue(executor, name).await.unwrap_err(),
        ),
        (
            "send",
            queue::send(executor, name, &json!(1), SendOpts::default())
                .await
                .unwrap_err(),
        ),
        (
            "send_many",
            queue::send_many(executor, name, &[1], SendManyOpts::default())
                .await
                .unwrap_err(),
        ),
        (
            "read",
            queue::read(executor, name, 1, LEASE).await.unwrap_err(),
        ),
        (
            "read_poll",
            queue::read_poll(executor, name, 1, LEASE, poll)
                .await
                .unwrap_err(),
        ),
        (
            "hide",
            queue::hide(executor, name, 1, LEASE).await.unwrap_err(),
        ),
        (
            "hide_many",
            queue::hide_many(executor, name, &[1], LEASE)
                .await
                .unwrap_err(),
        ),
        (
            "delete",
            queue::delete(executor, name, 1).await.unwrap_err(),
        ),
        (
            "delete_many",
            queue::delete_many(executor, name, &[1]).await.unwrap_err(),
        ),
    ]
}

#[tokio::test]
async fn invalid_queue_names_are_rejected_before_sql() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let executor = RecordingExecutor::new(db.pool.clone());
    let too_long = "q".repeat(59);
    let cases = [
        ("Jobs", NameRule::InvalidCharacter),
        ("send-email", NameRule::InvalidCharacter),
        (too_long.as_str(), NameRule::TooLong),
        ("", NameRule::Empty),
    ];

    for (name, expected_rule) in cases {
        for (operation, error) in run_every_operation(&executor, name).await {
            match &error {
                Error::InvalidName {
                    kind: "queue",
                    name: rejected,
                    rule,
                } => {
                    assert_eq!(rejected, name, "{operation}");
                    assert_eq!(*rule, expected_rule, "{operation} with {name:?}");
                }
                other => {
                    panic!("{operation} with {name:?}: expected an invalid name, got {other:?}")
                }
            }
            assert!(error.is_invalid_input(), "{operation}");
        }
    }

    assert_eq!(executor.statements(), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn invalid_name_error_names_value_and_rule() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());

    let error = client
        .create_queue("my-queue", CreateQueueOpts::default())
        .await
        .unwrap_err();

    assert_eq!(
        error.to_string(),
        "catbird: invalid queue name \"my-queue\": may only contain a-z, 0-9 and _"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Payloads

#[tokio::test]
async fn nul_character_in_body_is_rejected() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("nul_q").await;

    let error = client
        .send("nul_q", &json!({"s": "a\u{0}b"}), SendOpts::default())
        .await
        .unwrap_err();

    match &error {
        Error::InvalidPayload { what, reason } => {
            assert_eq!(*what, "message body");
            assert!(reason.contains("NUL"), "{reason}");
        }
        other => panic!("expected an invalid payload, got {other:?}"),
    }
    assert!(error.to_string().contains("message body"), "{error}");
    assert_eq!(depth(&db.pool, "nul_q").await, 0);
    let id = client
        .send("nul_q", &json!({"ok": 1}), SendOpts::default())
        .await?;
    let messages = client.read("nul_q", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(messages[0].body, json!({"ok": 1}));
    Ok(())
}

#[tokio::test]
async fn nul_in_batch_or_headers_is_rejected() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("nul_q").await;

    let batch = client
        .send_many(
            "nul_q",
            &[json!("fine"), json!({"k\u{0}": 1})],
            SendManyOpts::default(),
        )
        .await;
    let header = client
        .send(
            "nul_q",
            &json!("fine"),
            SendOpts::default().headers(headers(json!({"h": "x\u{0}"}))),
        )
        .await;

    assert!(
        matches!(
            &batch,
            Err(Error::InvalidPayload {
                what: "message body",
                ..
            })
        ),
        "{batch:?}"
    );
    assert!(
        matches!(
            &header,
            Err(Error::InvalidPayload {
                what: "headers",
                ..
            })
        ),
        "{header:?}"
    );
    assert_eq!(
        depth(&db.pool, "nul_q").await,
        0,
        "nothing of the batch is stored"
    );
    Ok(())
}

#[tokio::test]
async fn escaped_backslash_u0000_text_round_trips() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("jobs").await;
    // A backslash followed by the five characters u0000: no NUL in it.
    let text = "\\u0000";

    client
        .send("jobs", &json!(text), SendOpts::default())
        .await?;
    let messages = client.read("jobs", 1, LEASE).await?;

    assert_eq!(messages[0].body, json!(text));
    Ok(())
}

#[tokio::test]
async fn large_and_multibyte_bodies_round_trip() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("big_q").await;
    let cases = [
        ("7 KB", "a".repeat(7 * 1024)),
        ("8 KB", "b".repeat(8 * 1024)),
        ("100 KB", "c".repeat(100 * 1024)),
        ("10 MiB", "d".repeat(10 * 1024 * 1024)),
        ("4,000 × é", "é".repeat(4_000)),
    ];
    let connection = db.pool.get().await?;

    for (label, text) in &cases {
        let id = client.send("big_q", text, SendOpts::default()).await?;
        let messages = client.read("big_q", 1, LEASE).await?;
        assert_eq!(ids(&messages), vec![id], "{label}");
        let Value::String(read) = &messages[0].body else {
            panic!("{label}: the body came back as {}", messages[0].body);
        };
        assert!(
            read == text,
            "{label}: read {} bytes that differ from the {} bytes sent",
            read.len(),
            text.len()
        );
        let stored_bytes: i32 = connection
            .query_one(
                "SELECT octet_length(body #>> '{}') FROM cb_messages
                 WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'big_q') AND id = $1",
                &[&id],
            )
            .await?
            .get(0);
        assert_eq!(stored_bytes as usize, text.len(), "{label}");
        assert!(client.delete("big_q", id).await?, "{label}");
    }
    assert_eq!(cases[4].1.len(), 8_000, "é is two bytes in UTF-8");
    Ok(())
}

// ---------------------------------------------------------------------------
// Transactions

#[tokio::test]
async fn send_in_rolled_back_transaction_leaves_nothing() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("tx_q").await;
    let mut connection = db.pool.get().await?;
    let transaction = connection.transaction().await?;

    queue::send(&transaction, "tx_q", &json!(1), SendOpts::default()).await?;
    queue::send_many(&transaction, "tx_q", &[2, 3], SendManyOpts::default()).await?;
    let inside = queue::read(&transaction, "tx_q", 10, LEASE).await?;
    transaction.rollback().await?;

    assert_eq!(inside.len(), 3, "the transaction sees its own sends");
    assert_eq!(depth(&db.pool, "tx_q").await, 0);
    assert!(client.read("tx_q", 10, LEASE).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn send_in_transaction_is_visible_after_commit() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("tx_q").await;
    let mut connection = db.pool.get().await?;
    let transaction = connection.transaction().await?;

    let id = queue::send(
        &transaction,
        "tx_q",
        &json!("committed"),
        SendOpts::default(),
    )
    .await?;
    let before_commit = client.read("tx_q", 10, LEASE).await?;
    transaction.commit().await?;
    let after_commit = client.read("tx_q", 10, LEASE).await?;

    assert!(before_commit.is_empty(), "{before_commit:?}");
    assert_eq!(ids(&after_commit), vec![id]);
    Ok(())
}

#[tokio::test]
async fn send_queries_run_on_transaction() -> anyhow::Result<()> {
    let (_db, client) = db_with_queue("tx_q").await;
    let pool = client.pool().clone();
    let mut connection = pool.get().await?;
    let transaction = connection.transaction().await?;

    let single = queue::send_query("tx_q", &json!("one"), SendOpts::default().priority(1))?;
    let many = queue::send_many_query("tx_q", &["two", "three"], SendManyOpts::default())?;
    let single_rows = single.fetch_all(&transaction).await?;
    let many_rows = many.fetch_all(&transaction).await?;
    transaction.commit().await?;

    let single_id: i64 = single_rows[0].get(0);
    let many_ids: Vec<i64> = many_rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(many_ids.len(), 2);
    let messages = client.read("tx_q", 10, LEASE).await?;
    let mut expected = vec![single_id];
    expected.extend(&many_ids);
    assert_eq!(ids(&messages), expected);
    assert_eq!(
        bodies(&messages),
        [json!("one"), json!("two"), json!("three")]
    );
    Ok(())
}

#[tokio::test]
async fn send_query_params_run_on_plain_client() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    let plain = db.connect().await;
    let query = queue::send_query("jobs", &json!({"via": "params"}), SendOpts::default())?;

    let row = plain.query_one(query.sql(), &query.params()).await?;

    let id: i64 = row.get(0);
    let messages = client.read("jobs", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![id]);
    Ok(())
}

#[tokio::test]
async fn read_in_rolled_back_transaction_leaves_message_unread() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("tx_q").await;
    let id = client.send("tx_q", &json!(1), SendOpts::default()).await?;
    let mut connection = db.pool.get().await?;
    let transaction = connection.transaction().await?;

    let inside = queue::read(&transaction, "tx_q", 10, LEASE).await?;
    assert!(queue::delete(&transaction, "tx_q", id).await?);
    transaction.rollback().await?;

    assert_eq!(ids(&inside), vec![id]);
    let messages = client.read("tx_q", 10, LEASE).await?;
    assert_eq!(ids(&messages), vec![id]);
    assert_eq!(
        messages[0].deliveries, 1,
        "the rolled-back read did not count"
    );
    Ok(())
}

#[tokio::test]
async fn database_error_shows_server_message() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("jobs").await;
    // Dropping the message table behind catbird's back makes the send fail
    // inside PostgreSQL with an error catbird does not map to a kind.
    db.pool
        .get()
        .await?
        .batch_execute("DROP TABLE cb_messages")
        .await?;

    let error = client
        .send("jobs", &json!(1), SendOpts::default())
        .await
        .unwrap_err();

    assert!(matches!(error, Error::Database(_)), "{error:?}");
    assert_eq!(
        error.code(),
        Some(&catbird_core::tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
    let text = error.to_string();
    assert!(
        text.contains("relation \"cb_messages\" does not exist"),
        "the message should carry the server's text: {text}"
    );
    assert!(
        text.contains("42P01"),
        "the message should carry the SQLSTATE: {text}"
    );
    Ok(())
}
