//! The quickstart: queues, a task and a flow end to end on a real
//! PostgreSQL.
//!
//! Run it with `cargo xtask demo`, which starts or finds a server and points
//! `CB_CONN` at a demo database; or set `CB_CONN` yourself and run
//! `cargo run -p quickstart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use catbird::flow::RunFlowOpts;
use catbird::queue::{CreateQueueOpts, Message, Reader, SendManyOpts, SendOpts};
use catbird::worker::{Flow, Worker};
use catbird::{CancellationToken, Client};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("CB_CONN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = catbird::pool_from_url(&url, 4)?;

    // 1. Apply the schema: one transaction per version, safe to repeat.
    let mut connection = pool
        .get()
        .await
        .context("connect to PostgreSQL (is CB_CONN right?)")?;
    let applied = catbird::schema::migrate_up(&mut connection).await?;
    drop(connection);
    println!(
        "schema: at version {} (applied now: {applied:?})",
        catbird::schema::SCHEMA_VERSION
    );

    // 2. A queue. Creating it again is a no-op; start from an empty one.
    let client = Client::new(pool.clone());
    client.delete_queue("quickstart_emails").await?;
    client
        .create_queue(
            "quickstart_emails",
            CreateQueueOpts::default().description("outgoing emails"),
        )
        .await?;
    println!("queue: created quickstart_emails");

    // 3. Send: two ordinary messages, an urgent one, and one delayed by 1.5 s.
    let email = |to: &str, subject: &str| Email {
        to: to.into(),
        subject: subject.into(),
    };
    client
        .send_many(
            "quickstart_emails",
            &[
                email("ada@example.com", "welcome"),
                email("bob@example.com", "welcome"),
            ],
            SendManyOpts::default(),
        )
        .await?;
    client
        .send(
            "quickstart_emails",
            &email("ops@example.com", "disk almost full"),
            SendOpts::default().priority(10),
        )
        .await?;
    let later = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    client
        .send(
            "quickstart_emails",
            &email("ada@example.com", "your weekly digest"),
            SendOpts::default().visible_at(later),
        )
        .await?;
    println!("send: 4 messages (priority 10 for the urgent one, one delayed by 1.5 s)");

    // 4. Read: highest priority first, then oldest first; the delayed one is
    // not visible yet. Deleting a message acknowledges it.
    let messages = client
        .read("quickstart_emails", 10, Duration::from_secs(30))
        .await?;
    for message in &messages {
        let email: Email = message.body_as()?;
        println!(
            "read: #{} priority {:>2} to {:<16} {:?} (delivery {})",
            message.id, message.priority, email.to, email.subject, message.deliveries
        );
        client.delete("quickstart_emails", message.id).await?;
    }

    // 5. A Reader loop picks up the delayed message once it becomes visible.
    let shutdown = CancellationToken::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let reader = Reader::new(pool.clone(), "quickstart_emails", {
        let shutdown = shutdown.clone();
        let handled = handled.clone();
        move |message: Message| {
            let shutdown = shutdown.clone();
            let handled = handled.clone();
            async move {
                let email: Email = message.body_as()?;
                println!(
                    "reader: #{} to {} {:?}, acknowledged",
                    message.id, email.to, email.subject
                );
                handled.fetch_add(1, Ordering::SeqCst);
                shutdown.cancel();
                Ok::<(), anyhow::Error>(())
            }
        }
    })
    .poll(catbird::PollOpts::default().poll_interval(Duration::from_millis(50)));
    tokio::time::timeout(Duration::from_secs(10), reader.run(shutdown))
        .await
        .context("the reader did not receive the delayed message within 10 s")??;

    let left = client
        .read("quickstart_emails", 10, Duration::from_secs(1))
        .await?;
    println!(
        "queue done: {} read directly, {} by the reader, {} left in the queue",
        messages.len(),
        handled.load(Ordering::SeqCst),
        left.len()
    );

    tasks_and_flows(&url, pool).await
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    to: String,
    words: usize,
}

/// Counts the words of an email subject.
#[catbird::task(max_retries = 3, timeout = "10s")]
async fn count_words(email: Email) -> anyhow::Result<Receipt> {
    let words = email.subject.split_whitespace().count();
    Ok(Receipt {
        to: email.to,
        words,
    })
}

/// Doubles the flow input.
#[catbird::step]
async fn double(n: i64) -> anyhow::Result<i64> {
    Ok(n * 2)
}

/// Adds one to the output of `double`, whose type the compiler checks.
#[catbird::step(depends_on(double))]
async fn add(_n: i64, double: i64) -> anyhow::Result<i64> {
    Ok(double + 1)
}

/// 6. A task and a two-step flow, executed by a worker in this process.
async fn tasks_and_flows(url: &str, pool: catbird::deadpool_postgres::Pool) -> anyhow::Result<()> {
    let double_add = Flow::new("quickstart_double_add").step(double).step(add);

    // Definitions live in the database; creating them here means the runs
    // below never depend on the worker having started first.
    let client = Client::new(pool.clone());
    client.create_task(&count_words::definition()).await?;
    client.create_flow(double_add.definition()).await?;

    let shutdown = CancellationToken::new();
    let worker = Worker::new(pool.clone())
        .listen_url(url)
        .task(count_words)
        .flow(double_add);
    let worker = tokio::spawn(worker.start(shutdown.clone()));

    let email = Email {
        to: "ada@example.com".into(),
        subject: "your weekly digest is ready".into(),
    };
    let run = count_words::run(&client, &email).await?;
    // The generated helper returns a handle typed by the task's output.
    let receipt = tokio::time::timeout(Duration::from_secs(10), run.wait_for_output()).await??;
    println!(
        "task: run #{} counted {} words for {}",
        run.id(),
        receipt.words,
        receipt.to
    );

    let flow_run = client
        .run_flow("quickstart_double_add", &10, RunFlowOpts::default())
        .await?;
    let output: i64 =
        tokio::time::timeout(Duration::from_secs(10), flow_run.typed().wait_for_output()).await??;
    println!("flow: double then add on 10 gave {output}");

    shutdown.cancel();
    worker.await??;
    println!("done: the worker stopped cleanly");
    Ok(())
}
