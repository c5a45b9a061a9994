//! Helpers shared by the integration tests.

use std::sync::Mutex;

use catbird_core::{Error, Executor, Params};
use catbird_tests::TestDb;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Row};

/// Reads the database clock. Tests compare message times with it because
/// catbird decides visibility and expiry on the database clock.
pub(crate) async fn db_now(pool: &Pool) -> DateTime<Utc> {
    let client = pool.get().await.expect("take a pooled connection");
    client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .expect("read the database clock")
        .get(0)
}

/// Counts the messages stored in `queue`, whatever their visibility.
pub(crate) async fn depth(pool: &Pool, queue: &str) -> i64 {
    let client = pool.get().await.expect("take a pooled connection");
    client
        .query_one(
            "SELECT count(*) FROM cb_messages
             WHERE queue_id = (SELECT id FROM cb_queues WHERE name = $1)",
            &[&queue],
        )
        .await
        .expect("count the queue's messages")
        .get(0)
}

/// Waits until the session with backend `pid` waits for a lock, such as a
/// row lock that another transaction holds. `condition` names the wait in
/// the failure message.
pub(crate) async fn wait_for_lock_wait(
    observer: &tokio_postgres::Client,
    pid: i32,
    condition: &str,
) {
    catbird_tests::wait_for(condition, std::time::Duration::from_secs(20), || async {
        let row = observer
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;
}

/// Returns the SQLSTATE of a database error, or `None` for another error.
pub(crate) fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|code| code.code())
}

/// An executor that records every statement before running it on `inner`,
/// so a test can show that an operation failed before reaching the database.
pub(crate) struct RecordingExecutor<E> {
    inner: E,
    statements: Mutex<Vec<String>>,
}

impl<E> RecordingExecutor<E> {
    pub(crate) fn new(inner: E) -> Self {
        RecordingExecutor {
            inner,
            statements: Mutex::new(Vec::new()),
        }
    }

    /// Returns the statements run so far, in order.
    pub(crate) fn statements(&self) -> Vec<String> {
        self.statements.lock().expect("statement log").clone()
    }
}

impl<E: Executor> Executor for RecordingExecutor<E> {
    async fn query_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.statements
            .lock()
            .expect("statement log")
            .push(sql.to_owned());
        self.inner.query_rows(sql, params).await
    }
}

/// Creates a test database with one empty queue and a client on its pool.
pub(crate) async fn db_with_queue(queue: &str) -> (catbird_tests::TestDb, catbird_core::Client) {
    let db = catbird_tests::TestDb::new().await;
    let client = catbird_core::Client::new(db.pool.clone());
    client
        .create_queue(queue, catbird_core::queue::CreateQueueOpts::default())
        .await
        .expect("create the test queue");
    (db, client)
}

/// Opens a session on `db` and sends each notice or notification it
/// receives, as `pick` maps it, to the returned channel in arrival order.
/// Messages for which `pick` returns `None` are dropped.
pub(crate) async fn session_with_messages<T: Send + 'static>(
    db: &TestDb,
    pick: impl Fn(AsyncMessage) -> Option<T> + Send + 'static,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<T>) {
    let (client, mut connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("open a session");
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let Some(picked) = pick(message) {
                if sender.send(picked).is_err() {
                    break;
                }
            }
        }
    });
    (client, receiver)
}

/// Returns the payload of a notification, for [`session_with_messages`].
pub(crate) fn notification_payload(message: AsyncMessage) -> Option<String> {
    match message {
        AsyncMessage::Notification(notification) => Some(notification.payload().to_owned()),
        _ => None,
    }
}
