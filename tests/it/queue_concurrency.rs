//! Queues under concurrent readers, senders and creators.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use catbird_core::queue::{self, CreateQueueOpts, SendManyOpts, SendOpts};
use catbird_core::{Client, Error, PollOpts};
use catbird_tests::TestDb;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tokio::sync::Barrier;

use crate::helpers::{db_with_queue, depth};

const READERS: usize = 8;
const MESSAGES: i64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_receive_each_message_once() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("shared").await;
    let bodies: Vec<i64> = (0..MESSAGES).collect();
    let sent = client
        .send_many("shared", &bodies, SendManyOpts::default())
        .await?;
    let start = Arc::new(Barrier::new(READERS));

    let mut readers = Vec::new();
    for _ in 0..READERS {
        // Each reader has its own session, so the reads really run at once.
        let connection = db.connect().await;
        let start = Arc::clone(&start);
        readers.push(tokio::spawn(async move {
            start.wait().await;
            let mut received = Vec::new();
            loop {
                // The lease outlasts the test, so every read that returns a
                // message returns it inside its first lease.
                let messages =
                    queue::read(&connection, "shared", 5, Duration::from_secs(60)).await?;
                if messages.is_empty() {
                    return Ok::<_, Error>(received);
                }
                let ids: Vec<i64> = messages.iter().map(|message| message.id).collect();
                for message in &messages {
                    assert_eq!(message.deliveries, 1, "message {}", message.id);
                }
                queue::delete_many(&connection, "shared", &ids).await?;
                received.extend(ids);
            }
        }));
    }

    let mut times_received: HashMap<i64, usize> = HashMap::new();
    let mut readers_with_messages = 0;
    for reader in readers {
        let received = reader.await??;
        if !received.is_empty() {
            readers_with_messages += 1;
        }
        for id in received {
            *times_received.entry(id).or_default() += 1;
        }
    }

    let repeated: Vec<(&i64, &usize)> = times_received
        .iter()
        .filter(|(_, times)| **times > 1)
        .collect();
    assert_eq!(repeated, Vec::<(&i64, &usize)>::new(), "ids received twice");
    let mut received_ids: Vec<i64> = times_received.into_keys().collect();
    received_ids.sort_unstable();
    assert_eq!(received_ids, sent, "every message is received");
    assert_eq!(depth(&db.pool, "shared").await, 0);
    assert!(
        readers_with_messages > 1,
        "the reads should be spread over several readers"
    );
    Ok(())
}

/// One delivery as a reader saw it: the lease it got, on the database clock.
struct Delivery {
    id: i64,
    deliveries: i32,
    leased_from: DateTime<Utc>,
    leased_until: DateTime<Utc>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_waits_for_lease_to_end() -> anyhow::Result<()> {
    let (db, client) = db_with_queue("shared").await;
    let sent = client
        .send_many("shared", &[0; 40], SendManyOpts::default())
        .await?;
    let lease = Duration::from_millis(300);
    let poll = PollOpts::default()
        .poll_for(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(10));
    let start = Arc::new(Barrier::new(4));

    let mut readers = Vec::new();
    for _ in 0..4 {
        let connection = db.connect().await;
        let start = Arc::clone(&start);
        readers.push(tokio::spawn(async move {
            start.wait().await;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            // Every first delivery is left to lapse, every second one is
            // acknowledged, until the queue is empty.
            while tokio::time::Instant::now() < deadline {
                let messages = queue::read_poll(&connection, "shared", 4, lease, poll).await?;
                if messages.is_empty() {
                    if stored(&connection).await == 0 {
                        break;
                    }
                    continue;
                }
                for message in messages {
                    if message.deliveries >= 2 {
                        queue::delete(&connection, "shared", message.id).await?;
                    }
                    seen.push(Delivery {
                        id: message.id,
                        deliveries: message.deliveries,
                        leased_from: message.visible_at - TimeDelta::from_std(lease).unwrap(),
                        leased_until: message.visible_at,
                    });
                }
            }
            Ok::<_, Error>(seen)
        }));
    }

    let mut by_id: HashMap<i64, Vec<Delivery>> = HashMap::new();
    for reader in readers {
        for delivery in reader.await?? {
            by_id.entry(delivery.id).or_default().push(delivery);
        }
    }

    let mut ids: Vec<i64> = by_id.keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, sent);
    for (id, deliveries) in &mut by_id {
        deliveries.sort_by_key(|delivery| delivery.deliveries);
        let counts: Vec<i32> = deliveries.iter().map(|d| d.deliveries).collect();
        assert_eq!(counts, [1, 2], "message {id}");
        assert!(
            deliveries[1].leased_from >= deliveries[0].leased_until,
            "message {id} was read again at {} inside its lease until {}",
            deliveries[1].leased_from,
            deliveries[0].leased_until
        );
    }
    assert_eq!(depth(&db.pool, "shared").await, 0);
    Ok(())
}

async fn stored(connection: &tokio_postgres::Client) -> i64 {
    connection
        .query_one(
            "SELECT count(*) FROM cb_messages
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = 'shared')",
            &[],
        )
        .await
        .expect("count the messages")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_keyed_senders_store_one_message() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("keyed").await;
    let client = Client::new(catbird_core::pool_from_url(&db.url(), 16)?);
    let senders = 50;
    let start = Arc::new(Barrier::new(senders));

    let mut tasks = Vec::new();
    for i in 0..senders {
        let client = client.clone();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            client
                .send(
                    "keyed",
                    &json!({"sender": i}),
                    SendOpts::default().concurrency_key("the-key"),
                )
                .await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??);
    }

    assert_eq!(depth(&db.pool, "keyed").await, 1);
    let stored = client.read("keyed", 10, Duration::from_secs(30)).await?;
    assert_eq!(stored.len(), 1);
    let stored_id = stored[0].id;
    let other_ids: Vec<i64> = ids.into_iter().filter(|id| *id != stored_id).collect();
    assert_eq!(
        other_ids,
        Vec::<i64>::new(),
        "every sender gets the stored id"
    );
    client.pool().close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_store_each_key_once() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("keyed").await;
    let client = Client::new(catbird_core::pool_from_url(&db.url(), 8)?);
    let batches = 8;
    let keys: Vec<String> = (0..20).map(|i| format!("key-{i}")).collect();
    let start = Arc::new(Barrier::new(batches));

    let mut tasks = Vec::new();
    for batch in 0..batches {
        let client = client.clone();
        let keys = keys.clone();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let bodies: Vec<_> = keys
                .iter()
                .map(|key| json!({"key": key, "batch": batch}))
                .collect();
            start.wait().await;
            client
                .send_many(
                    "keyed",
                    &bodies,
                    SendManyOpts::default().concurrency_keys(keys.into_iter().map(Some)),
                )
                .await
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await??.len();
    }

    assert_eq!(inserted, keys.len());
    let messages = client.read("keyed", 100, Duration::from_secs(30)).await?;
    let mut stored_keys: Vec<String> = messages
        .iter()
        .filter_map(|message| message.concurrency_key.clone())
        .collect();
    stored_keys.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(stored_keys, expected);
    client.pool().close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opposite_key_orders_do_not_deadlock() -> anyhow::Result<()> {
    let (db, _client) = db_with_queue("keyed").await;
    let client = Client::new(catbird_core::pool_from_url(&db.url(), 8)?);
    let batches = 8;
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    let start = Arc::new(Barrier::new(batches));

    // Half the batches list the keys backwards. Without a common locking
    // order, two batches each insert a key the other one then waits for.
    let mut tasks = Vec::new();
    for batch in 0..batches {
        let client = client.clone();
        let mut keys = keys.clone();
        if batch % 2 == 1 {
            keys.reverse();
        }
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let bodies = vec![json!({"batch": batch}); keys.len()];
            start.wait().await;
            client
                .send_many(
                    "keyed",
                    &bodies,
                    SendManyOpts::default().concurrency_keys(keys.into_iter().map(Some)),
                )
                .await
        }));
    }
    let mut inserted = 0;
    for (batch, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok(ids) => inserted += ids.len(),
            Err(error) => panic!("batch {batch} failed: {error}"),
        }
    }

    assert_eq!(inserted, keys.len());
    assert_eq!(depth(&db.pool, "keyed").await, keys.len() as i64);
    client.pool().close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_queue_succeeds() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let creators = 8;
    let start = Arc::new(Barrier::new(creators));

    let mut tasks = Vec::new();
    for i in 0..creators {
        let connection = db.connect().await;
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            queue::create_queue(
                &connection,
                "contested",
                CreateQueueOpts::default().description(format!("creator {i}")),
            )
            .await
        }));
    }
    for task in tasks {
        task.await??;
    }

    let client = Client::new(db.pool.clone());
    let names: Vec<String> = client
        .list_queues()
        .await?
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, ["contested"]);
    let id = client
        .send("contested", &json!(1), SendOpts::default())
        .await?;
    assert!(id > 0);
    Ok(())
}
