//! Wake-up notifications that sends issue on the installation's channel,
//! only for queues a listener asked about with `cb_request_wake`.

use std::time::Duration;

use catbird_core::queue::{self, CreateQueueOpts, SendManyOpts, SendOpts};
use catbird_tests::TestDb;
use chrono::TimeDelta;
use serde_json::json;
use tokio::sync::mpsc;

use crate::helpers::{db_now, db_with_queue, notification_payload, session_with_messages};

/// A session listening on the wake-up channel, and the payloads it receives.
struct Listener {
    client: tokio_postgres::Client,
    payloads: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    async fn start(db: &TestDb) -> Listener {
        let (client, payloads) = session_with_messages(db, notification_payload).await;
        let channel: String = client
            .query_one("SELECT cb_wake_channel()", &[])
            .await
            .expect("read the wake-up channel")
            .get(0);
        assert_eq!(channel, "cb_wake_public");
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .expect("listen");
        Listener { client, payloads }
    }

    /// Asks for a notification about the next message of `queue`.
    async fn request(&self, queue: &str) {
        self.client
            .execute("SELECT cb_request_wake(kind => 'q', name => $1)", &[&queue])
            .await
            .expect("request a wake-up");
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.payloads.recv())
            .await
            .expect("a wake-up within 10 s")
            .expect("the listener is running")
    }
}

#[tokio::test]
async fn send_notifies_a_requesting_listener() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;

    client
        .send("wake_q", &json!(1), SendOpts::default())
        .await?;

    assert_eq!(listener.next().await, "q|wake_q|");
    Ok(())
}

#[tokio::test]
async fn send_many_notifies_once() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    client
        .create_queue("marker", CreateQueueOpts::default())
        .await?;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;
    listener.request("marker").await;

    client
        .send_many("wake_q", &[1, 2, 3], SendManyOpts::default())
        .await?;
    client
        .send("marker", &json!(1), SendOpts::default())
        .await?;

    assert_eq!(listener.next().await, "q|wake_q|");
    assert_eq!(
        listener.next().await,
        "q|marker|",
        "the batch sends a single wake-up"
    );
    Ok(())
}

#[tokio::test]
async fn delayed_send_always_notifies_its_time() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    let mut listener = Listener::start(&db).await;
    let visible_at = db_now(&db.pool).await + TimeDelta::minutes(5);
    let expected = visible_at.timestamp_micros() as f64 / 1e6;

    // A message for later is announced with no request, and twice in a row:
    // only the hint gives a reader the time to look for it.
    for body in 1..=2 {
        client
            .send(
                "wake_q",
                &json!(body),
                SendOpts::default().visible_at(visible_at),
            )
            .await?;
        let payload = listener.next().await;
        let epoch = payload
            .strip_prefix("q|wake_q|")
            .unwrap_or_else(|| panic!("unexpected payload {payload}"));
        let seconds: f64 = epoch.parse()?;
        assert!(
            (seconds - expected).abs() < 1e-3,
            "payload time {seconds}, visible at {expected}"
        );
    }

    listener.request("wake_q").await;
    client
        .send(
            "wake_q",
            &json!(3),
            SendOpts::default().visible_at(visible_at),
        )
        .await?;
    listener.next().await;
    client
        .send("wake_q", &json!(4), SendOpts::default())
        .await?;
    assert_eq!(
        listener.next().await,
        "q|wake_q|",
        "the message for later left the request standing"
    );
    Ok(())
}

#[tokio::test]
async fn rolled_back_send_notifies_nobody() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    client
        .create_queue("marker", CreateQueueOpts::default())
        .await?;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;
    listener.request("marker").await;

    let mut connection = db.pool.get().await?;
    let transaction = connection.transaction().await?;
    queue::send(&transaction, "wake_q", &json!(1), SendOpts::default()).await?;
    transaction.rollback().await?;
    client
        .send("marker", &json!(1), SendOpts::default())
        .await?;
    client
        .send("wake_q", &json!(2), SendOpts::default())
        .await?;

    assert_eq!(
        listener.next().await,
        "q|marker|",
        "the first wake-up comes from the committed send"
    );
    assert_eq!(
        listener.next().await,
        "q|wake_q|",
        "the rollback gave the request back"
    );
    Ok(())
}

#[tokio::test]
async fn deduplicated_send_notifies_nobody() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    client
        .create_queue("marker", CreateQueueOpts::default())
        .await?;
    client
        .send(
            "wake_q",
            &json!(1),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;
    listener.request("marker").await;

    client
        .send(
            "wake_q",
            &json!(2),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;
    client
        .send("marker", &json!(1), SendOpts::default())
        .await?;

    assert_eq!(listener.next().await, "q|marker|");
    Ok(())
}

#[tokio::test]
async fn send_without_request_notifies_nobody() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    client
        .create_queue("marker", CreateQueueOpts::default())
        .await?;
    let mut listener = Listener::start(&db).await;
    listener.request("marker").await;

    client
        .send("wake_q", &json!(1), SendOpts::default())
        .await?;
    client
        .send("marker", &json!(1), SendOpts::default())
        .await?;

    assert_eq!(listener.next().await, "q|marker|");
    Ok(())
}

#[tokio::test]
async fn first_send_consumes_the_request() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    client
        .create_queue("marker", CreateQueueOpts::default())
        .await?;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;

    for body in 1..=3 {
        client
            .send("wake_q", &json!(body), SendOpts::default())
            .await?;
    }
    listener.request("marker").await;
    client
        .send("marker", &json!(1), SendOpts::default())
        .await?;
    listener.request("wake_q").await;
    client
        .send("wake_q", &json!(4), SendOpts::default())
        .await?;

    assert_eq!(listener.next().await, "q|wake_q|");
    assert_eq!(
        listener.next().await,
        "q|marker|",
        "the second and third sends stay silent"
    );
    assert_eq!(
        listener.next().await,
        "q|wake_q|",
        "a new request brings the next wake-up"
    );
    Ok(())
}

#[tokio::test]
async fn open_consumer_neither_blocks_nor_silences() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("wake_q").await;
    let mut listener = Listener::start(&db).await;
    listener.request("wake_q").await;

    let mut connection = db.pool.get().await?;
    let transaction = connection.transaction().await?;
    queue::send(&transaction, "wake_q", &json!(1), SendOpts::default()).await?;
    // The open transaction locks the request it consumes. Another send
    // neither waits for it nor stays silent, since it may roll back.
    tokio::time::timeout(
        Duration::from_secs(10),
        client.send("wake_q", &json!(2), SendOpts::default()),
    )
    .await
    .expect("the send does not wait for the open transaction")?;
    assert_eq!(listener.next().await, "q|wake_q|");
    transaction.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn request_rejects_bad_kind_and_name() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("wake_q").await;
    let connection = db.pool.get().await?;
    for (kind, name, expected) in [
        ("job", "wake_q", "invalid wake-up kind \"job\""),
        ("q", "", "invalid wake-up name \"\""),
    ] {
        let error = connection
            .execute(
                "SELECT cb_request_wake(kind => $1, name => $2)",
                &[&kind, &name],
            )
            .await
            .expect_err("the request is rejected");
        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(db_error.code().code(), "CB002");
        assert!(
            db_error.message().contains(expected),
            "{}",
            db_error.message()
        );
    }
    Ok(())
}
