//! Every option at once, on a public task with a context parameter.
#![deny(warnings)]

use catbird::worker::{TaskContext, TaskFailure, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Email {
    pub to: String,
}

#[derive(Serialize, Deserialize)]
pub struct Receipt {
    pub id: String,
}

pub async fn notify(email: Email, failure: TaskFailure) -> anyhow::Result<()> {
    let _ = (email.to, failure.error_message);
    Ok(())
}

/// Sends one transactional email.
///
/// Retries on provider errors.
#[catbird::task(
    name = "send_email",
    concurrency = 5,
    batch_size = 10,
    busy_poll = "5ms",
    timeout = "30s",
    max_retries = 3,
    backoff(min = "500ms", max = "10s"),
    circuit_breaker(threshold = 5, open_timeout = "1m"),
    retention = "7d",
    condition = "input.to ne \"\"",
    on_fail(handler = notify, max_retries = 5, backoff(min = "1s", max = "1h"))
)]
pub async fn send_email(email: Email, ctx: &TaskContext) -> anyhow::Result<Receipt> {
    Ok(Receipt {
        id: format!("{}-{}", email.to, ctx.task_run_id()),
    })
}

async fn use_it(pool: catbird::deadpool_postgres::Pool) -> Result<Receipt, catbird::Error> {
    let _worker = Worker::new(pool.clone()).task(send_email);
    let client = catbird::Client::new(pool);
    let email = Email { to: "ada@example.com".into() };
    let handle = send_email::run(&client, &email).await?;
    let receipt: Receipt = handle.wait_for_output().await?;
    let options = catbird::RunTaskOpts::default().priority(1);
    let _other = send_email::run_with(&client, &email, options).await?;
    Ok(receipt)
}

fn main() {
    assert_eq!(send_email::NAME, "send_email");
    let definition = send_email::definition();
    assert_eq!(
        definition.description.as_deref(),
        Some("Sends one transactional email.")
    );
    assert!(definition.has_on_fail);
    let handler = send_email::handler();
    assert_eq!(handler.options().concurrency, 5);
    assert_eq!(
        handler.options().busy_poll,
        Some(std::time::Duration::from_millis(5))
    );
    let _ = use_it;
}
