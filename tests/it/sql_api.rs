//! The `cb_*` functions called from plain SQL with named arguments, as an
//! application without the Rust client calls them.

use std::time::Duration;

use catbird_core::{SQLSTATE_INVALID_ARGUMENT, SQLSTATE_NOT_DEFINED};
use catbird_tests::{TestDb, wait_for};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::helpers::sqlstate;

/// Creates a migrated database with queue `sql_q` and opens a plain
/// connection to it.
async fn db_with_sql_queue() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .batch_execute("SELECT cb_create_queue(name => 'sql_q')")
        .await
        .expect("create the queue from SQL");
    (db, client)
}

async fn ids_of(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Runs `sql`, which must fail, and returns the SQLSTATE and message.
async fn failure_of(client: &Client, sql: &str) -> (String, String) {
    let error = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} should fail"));
    let code = sqlstate(&error).unwrap_or("none").to_owned();
    let message = error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| error.to_string());
    (code, message)
}

#[tokio::test]
async fn sql_create_and_delete_queue() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;

    client
        .batch_execute(
            "SELECT cb_create_queue(name => 'sql_q', description => 'from sql',
                                    expires_at => now() + interval '1 day')",
        )
        .await?;
    client
        .batch_execute("SELECT cb_create_queue(name => 'sql_q', description => 'ignored')")
        .await?;
    let description: Option<String> = client
        .query_one(
            "SELECT description FROM cb_queues WHERE name = 'sql_q'",
            &[],
        )
        .await?
        .get(0);
    let first: bool = client
        .query_one("SELECT cb_delete_queue(name => 'sql_q')", &[])
        .await?
        .get(0);
    let second: bool = client
        .query_one("SELECT cb_delete_queue(name => 'sql_q')", &[])
        .await?
        .get(0);

    assert_eq!(description.as_deref(), Some("from sql"));
    assert!(first);
    assert!(!second);
    Ok(())
}

#[tokio::test]
async fn sql_send_single_returns_id() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;

    let row = client
        .query_one(
            "SELECT cb_send(queue => 'sql_q', body => '{\"a\": 1}', topic => 'sql.topic',
                            headers => '{\"h\": true}', priority => 4)",
            &[],
        )
        .await?;
    let id: i64 = row.get(0);
    let stored = client
        .query_one(
            "SELECT body, topic, headers, priority FROM cb_messages
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'sql_q') AND id = $1",
            &[&id],
        )
        .await?;

    assert_eq!(stored.get::<_, Value>("body"), json!({"a": 1}));
    assert_eq!(
        stored.get::<_, Option<String>>("topic").as_deref(),
        Some("sql.topic")
    );
    assert_eq!(
        stored.get::<_, Option<Value>>("headers"),
        Some(json!({"h": true}))
    );
    assert_eq!(stored.get::<_, i32>("priority"), 4);
    Ok(())
}

#[tokio::test]
async fn sql_send_single_deduplicates_by_key() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;

    let first = ids_of(
        &client,
        "SELECT cb_send(queue => 'sql_q', body => '1', concurrency_key => 'k')",
    )
    .await;
    let second = ids_of(
        &client,
        "SELECT cb_send(queue => 'sql_q', body => '2', concurrency_key => 'k')",
    )
    .await;

    assert_eq!(second, first);
    Ok(())
}

#[tokio::test]
async fn sql_send_treats_empty_strings_as_absent() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;

    let first = ids_of(
        &client,
        "SELECT cb_send(queue => 'sql_q', body => '1', topic => '', concurrency_key => '')",
    )
    .await;
    let second = ids_of(
        &client,
        "SELECT cb_send(queue => 'sql_q', body => '2', concurrency_key => '')",
    )
    .await;
    let batch = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['3', '4']::jsonb[],
                               topic => '', concurrency_keys => ARRAY['', ''])",
    )
    .await;

    assert_ne!(first, second, "an empty key is no key");
    assert_eq!(batch.len(), 2, "empty keys in a batch are no keys");
    let absent: i64 = client
        .query_one(
            "SELECT count(*) FROM cb_messages
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'sql_q') AND topic IS NULL AND concurrency_key IS NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(absent, 4);
    Ok(())
}

#[tokio::test]
async fn sql_send_array_returns_ids_ascending() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;

    let ids = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1', '2', '3']::jsonb[],
                               concurrency_keys => ARRAY['a', NULL, 'a'],
                               headers => ARRAY[NULL, '{\"x\": 1}', NULL]::jsonb[])",
    )
    .await;
    let empty = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY[]::jsonb[])",
    )
    .await;

    assert_eq!(ids.len(), 2, "the repeated key is skipped");
    assert!(ids[0] < ids[1]);
    assert!(empty.is_empty());
    let bodies: Vec<Value> = client
        .query("SELECT body FROM cb_messages WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'sql_q') ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(bodies, [json!(1), json!(2)]);
    Ok(())
}

#[tokio::test]
async fn sql_read_returns_message_rows() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;
    let sent = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['\"low\"', '\"high\"']::jsonb[])",
    )
    .await;
    client
        .batch_execute(&format!(
            "UPDATE cb_messages SET priority = 5
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'sql_q') AND id = {}",
            sent[1]
        ))
        .await?;

    let rows = client
        .query(
            "SELECT id, body, deliveries, visible_at > clock_timestamp() AS hidden
               FROM cb_read(queue => 'sql_q', quantity => 10, hide_for => 30000)",
            &[],
        )
        .await?;
    let again = client
        .query(
            "SELECT id FROM cb_read(queue => 'sql_q', quantity => 10, hide_for => 30000)",
            &[],
        )
        .await?;

    let ids: Vec<i64> = rows.iter().map(|row| row.get("id")).collect();
    assert_eq!(ids, [sent[1], sent[0]], "priority first");
    assert_eq!(rows[0].get::<_, Value>("body"), json!("high"));
    assert_eq!(rows[0].get::<_, i32>("deliveries"), 1);
    assert!(rows[0].get::<_, bool>("hidden"));
    assert!(again.is_empty());
    Ok(())
}

#[tokio::test]
async fn sql_read_poll_returns_delayed_message() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;
    let sent = ids_of(
        &client,
        "SELECT cb_send(queue => 'sql_q', body => '1',
                        visible_at => clock_timestamp() + interval '300 milliseconds')",
    )
    .await;

    let polled = ids_of(
        &client,
        "SELECT id FROM cb_read_poll(queue => 'sql_q', quantity => 10, hide_for => 30000,
                                     poll_for => 10000, poll_interval => 20)",
    )
    .await;
    let empty = ids_of(
        &client,
        "SELECT id FROM cb_read_poll(queue => 'sql_q', quantity => 10, hide_for => 30000,
                                     poll_for => 100, poll_interval => 20)",
    )
    .await;

    assert_eq!(polled, sent);
    assert!(empty.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_read_poll_sees_later_send() -> anyhow::Result<()> {
    let (db, client) = db_with_sql_queue().await;
    let poller = db.connect().await;
    let pid: i32 = poller
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);

    let poll = tokio::spawn(async move {
        ids_of(
            &poller,
            "SELECT id FROM cb_read_poll(queue => 'sql_q', quantity => 10, hide_for => 30000,
                                         poll_for => 20000, poll_interval => 20)",
        )
        .await
    });
    wait_for("the poll to start", Duration::from_secs(10), || async {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE pid = $1 AND state = 'active' AND query LIKE '%cb_read_poll%'",
                &[&pid],
            )
            .await
            .expect("read pg_stat_activity");
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;
    let sent = ids_of(&client, "SELECT cb_send(queue => 'sql_q', body => '1')").await;

    let polled = tokio::time::timeout(Duration::from_secs(15), poll).await??;
    assert_eq!(polled, sent);
    Ok(())
}

#[tokio::test]
async fn sql_hide_single_and_array() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;
    let sent = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1', '2', '3']::jsonb[])",
    )
    .await;

    let single: bool = client
        .query_one(
            "SELECT cb_hide(queue => 'sql_q', id => $1, hide_for => 3600000)",
            &[&sent[0]],
        )
        .await?
        .get(0);
    let missing: bool = client
        .query_one(
            "SELECT cb_hide(queue => 'sql_q', id => $1, hide_for => 0)",
            &[&(sent[2] + 99_999)],
        )
        .await?
        .get(0);
    let many: Vec<i64> = client
        .query(
            "SELECT * FROM cb_hide(queue => 'sql_q', ids => $1, hide_for => 3600000)",
            &[&vec![sent[2], sent[2] + 99_999, sent[1]]],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();

    assert!(single);
    assert!(!missing);
    assert_eq!(many, [sent[1], sent[2]]);
    let readable = ids_of(
        &client,
        "SELECT id FROM cb_read(queue => 'sql_q', quantity => 10, hide_for => 1000)",
    )
    .await;
    assert!(readable.is_empty());
    Ok(())
}

#[tokio::test]
async fn sql_delete_single_and_array() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;
    let sent = ids_of(
        &client,
        "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1', '2', '3']::jsonb[])",
    )
    .await;

    let single: bool = client
        .query_one("SELECT cb_delete(queue => 'sql_q', id => $1)", &[&sent[0]])
        .await?
        .get(0);
    let again: bool = client
        .query_one("SELECT cb_delete(queue => 'sql_q', id => $1)", &[&sent[0]])
        .await?
        .get(0);
    let many: Vec<i64> = client
        .query(
            "SELECT * FROM cb_delete(queue => 'sql_q', ids => $1)",
            &[&vec![sent[2], sent[0], sent[1]]],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();

    assert!(single);
    assert!(!again);
    assert_eq!(many, [sent[1], sent[2]]);
    Ok(())
}

#[tokio::test]
async fn sql_invalid_arguments_raise_cb002() -> anyhow::Result<()> {
    let (_db, client) = db_with_sql_queue().await;
    let too_long = "q".repeat(59);
    let cases = [
        (
            "SELECT cb_create_queue(name => 'Upper')".to_owned(),
            "invalid queue name \"Upper\": may only contain a-z, 0-9 and _",
        ),
        (
            "SELECT cb_create_queue(name => 'with-hyphen')".to_owned(),
            "may only contain a-z, 0-9 and _",
        ),
        (
            format!("SELECT cb_create_queue(name => '{too_long}')"),
            "too long, maximum 58 characters",
        ),
        (
            "SELECT cb_create_queue(name => '')".to_owned(),
            "must not be empty",
        ),
        (
            "SELECT cb_send(queue => 'Bad', body => '1')".to_owned(),
            "invalid queue name \"Bad\"",
        ),
        (
            "SELECT cb_create_queue(name => 'late', expires_at => now() - interval '1 second')"
                .to_owned(),
            "must be later than the creation time",
        ),
        (
            "SELECT * FROM cb_read(queue => 'sql_q', quantity => 0, hide_for => 1000)".to_owned(),
            "quantity must be greater than 0",
        ),
        (
            "SELECT * FROM cb_read(queue => 'sql_q', quantity => 1, hide_for => 0)".to_owned(),
            "hide_for must be greater than 0",
        ),
        (
            "SELECT cb_hide(queue => 'sql_q', id => 1, hide_for => -1)".to_owned(),
            "hide_for must not be negative",
        ),
        (
            "SELECT * FROM cb_hide(queue => 'sql_q', ids => ARRAY[1]::bigint[], hide_for => -1)"
                .to_owned(),
            "hide_for must not be negative",
        ),
        (
            "SELECT * FROM cb_read_poll(queue => 'sql_q', quantity => 1, hide_for => 1000,
                                        poll_for => 100, poll_interval => 100)"
                .to_owned(),
            "poll_interval (100 ms) must be less than poll_for (100 ms)",
        ),
        (
            "SELECT * FROM cb_read_poll(queue => 'sql_q', quantity => 1, hide_for => 1000,
                                        poll_for => 0)"
                .to_owned(),
            "poll_for must be greater than 0",
        ),
        (
            "SELECT cb_send(queue => 'sql_q', body => '1', headers => '[1, 2]')".to_owned(),
            "headers must be a JSON object, got a JSON array",
        ),
        (
            "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1']::jsonb[],
                                   headers => ARRAY['\"text\"']::jsonb[])"
                .to_owned(),
            "headers must be JSON objects",
        ),
        (
            "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1', '2']::jsonb[],
                                   concurrency_keys => ARRAY['a'])"
                .to_owned(),
            "concurrency_keys length must match bodies length (1 keys, 2 bodies)",
        ),
        (
            "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1']::jsonb[],
                                   headers => ARRAY[NULL, NULL]::jsonb[])"
                .to_owned(),
            "headers length must match bodies length (2 headers, 1 bodies)",
        ),
        (
            "SELECT cb_send(queue => 'sql_q', body => NULL)".to_owned(),
            "must not be SQL NULL",
        ),
        (
            "SELECT * FROM cb_send(queue => 'sql_q', bodies => ARRAY['1', NULL]::jsonb[])"
                .to_owned(),
            "message body 2 must not be SQL NULL",
        ),
    ];

    for (sql, expected) in &cases {
        let (code, message) = failure_of(&client, sql).await;
        assert_eq!(code, SQLSTATE_INVALID_ARGUMENT, "{sql}: {message}");
        assert!(
            message.starts_with("catbird: "),
            "{sql}: messages start with the library name: {message}"
        );
        assert!(message.contains(expected), "{sql}: {message}");
    }
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM cb_messages WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'sql_q')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(stored, 0, "no rejected call stored a message");
    Ok(())
}

#[tokio::test]
async fn sql_accepts_58_character_queue_name() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let name = "q".repeat(58);

    client
        .batch_execute(&format!("SELECT cb_create_queue(name => '{name}')"))
        .await?;
    let id = ids_of(
        &client,
        &format!("SELECT cb_send(queue => '{name}', body => '1')"),
    )
    .await;
    let read = ids_of(
        &client,
        &format!("SELECT id FROM cb_read(queue => '{name}', quantity => 1, hide_for => 1000)"),
    )
    .await;

    assert_eq!(read, id);
    Ok(())
}

#[tokio::test]
async fn sql_missing_queue_raises_cb001() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let cases = [
        "SELECT cb_send(queue => 'nope', body => '1')",
        "SELECT * FROM cb_send(queue => 'nope', bodies => ARRAY['1']::jsonb[])",
        "SELECT * FROM cb_read(queue => 'nope', quantity => 1, hide_for => 1000)",
        "SELECT * FROM cb_read_poll(queue => 'nope', quantity => 1, hide_for => 1000,
                                    poll_for => 100, poll_interval => 10)",
        "SELECT cb_hide(queue => 'nope', id => 1, hide_for => 0)",
        "SELECT * FROM cb_hide(queue => 'nope', ids => ARRAY[1]::bigint[], hide_for => 0)",
        "SELECT cb_delete(queue => 'nope', id => 1)",
        "SELECT * FROM cb_delete(queue => 'nope', ids => ARRAY[1]::bigint[])",
    ];

    for sql in cases {
        let (code, message) = failure_of(&client, sql).await;
        assert_eq!(code, SQLSTATE_NOT_DEFINED, "{sql}: {message}");
        assert_eq!(message, "catbird: queue \"nope\" is not defined", "{sql}");
    }
    Ok(())
}

#[tokio::test]
async fn every_client_statement_prepares() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;

    for sql in catbird_core::sql::ALL {
        let prepared = client.prepare(sql).await;
        assert!(prepared.is_ok(), "{sql}: {:?}", prepared.err());
    }
    Ok(())
}
