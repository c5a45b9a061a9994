//! Queues: named mailboxes of JSON messages.
//!
//! A reader takes messages with [`read`], which hides them for a lease
//! (`hide_for`); deleting a message acknowledges it, and a message that is not
//! deleted before its lease ends becomes readable again with its delivery
//! count raised. Reads return the highest priority first and the oldest first
//! within a priority, never return an expired message, and skip messages that
//! a concurrent reader holds locked.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::Error;
use crate::executor::Executor;
use crate::names::validate_name;
use crate::payload::{JsonText, check_batch_lengths, check_text};
use crate::poll::PollOpts;
use crate::query::Query;
use crate::sql;

mod reader;

pub use reader::Reader;

/// A queue as stored in `cb_queues`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// The description given at creation.
    pub description: Option<String>,
    /// When the queue was created.
    pub created_at: DateTime<Utc>,
    /// When garbage collection may delete the queue.
    pub expires_at: Option<DateTime<Utc>>,
}

impl QueueInfo {
    fn from_row(row: &Row) -> Self {
        QueueInfo {
            name: row.get("name"),
            description: row.get("description"),
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
        }
    }
}

/// Options of [`create_queue`].
#[derive(Debug, Clone, Default)]
pub struct CreateQueueOpts {
    /// A description shown by the dashboard and `get_queue`.
    pub description: Option<String>,
    /// When garbage collection may delete the queue with its messages. Must be
    /// later than the creation time.
    pub expires_at: Option<DateTime<Utc>>,
}

impl CreateQueueOpts {
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the queue's expiry.
    pub fn expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }
}

/// One stored message, as a read returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// The message id: strictly increasing within a queue, with gaps.
    pub id: i64,
    /// The deduplication key the message was sent with.
    pub concurrency_key: Option<String>,
    /// The topic the message was sent or published with.
    pub topic: Option<String>,
    /// The message body.
    pub body: Value,
    /// The headers the message was sent with.
    pub headers: Option<Map<String, Value>>,
    /// Higher priorities are read first.
    pub priority: i32,
    /// How many times the message has been read, this read included.
    pub deliveries: i32,
    /// When the message was sent.
    pub created_at: DateTime<Utc>,
    /// When the message becomes readable again: after a read, the end of the
    /// reader's lease.
    pub visible_at: DateTime<Utc>,
    /// When the message expires; an expired message is never read.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Message {
    fn from_row(row: &Row) -> Self {
        let headers: Option<Value> = row.get("headers");
        Message {
            id: row.get("id"),
            concurrency_key: row.get("concurrency_key"),
            topic: row.get("topic"),
            body: row.get("body"),
            headers: match headers {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            },
            priority: row.get("priority"),
            deliveries: row.get("deliveries"),
            created_at: row.get("created_at"),
            visible_at: row.get("visible_at"),
            expires_at: row.get("expires_at"),
        }
    }

    /// Decodes the body into `T`.
    pub fn body_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.body).map_err(|source| Error::json_decode("message body", source))
    }
}

/// Options of [`send`].
///
/// `visible_at` and `expires_at` are absolute times from the caller's clock;
/// every other time comparison uses the database clock.
#[derive(Debug, Clone, Default)]
pub struct SendOpts {
    /// A free-form topic stored with the message.
    pub topic: Option<String>,
    /// While a stored, unexpired message of the queue holds this key, sending
    /// another message with it stores nothing and returns the stored
    /// message's id. An empty key means no key.
    pub concurrency_key: Option<String>,
    /// Headers stored with the message.
    pub headers: Option<Map<String, Value>>,
    /// The message is not readable before this time (default: now).
    pub visible_at: Option<DateTime<Utc>>,
    /// The message is never read at or after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Higher priorities are read first (default 0; negative values allowed).
    pub priority: Option<i32>,
}

impl SendOpts {
    /// Sets the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the deduplication key.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: Map<String, Value>) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Delays the message until `visible_at`.
    pub fn visible_at(mut self, visible_at: DateTime<Utc>) -> Self {
        self.visible_at = Some(visible_at);
        self
    }

    /// Sets the message's expiry.
    pub fn expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// Options of [`send_many`]. Topic, visibility, expiry and priority apply to
/// every message; keys and headers, when given, have one entry per body.
#[derive(Debug, Clone, Default)]
pub struct SendManyOpts {
    /// A topic stored with every message.
    pub topic: Option<String>,
    /// One deduplication key per body; `None` or an empty string is no key.
    pub concurrency_keys: Option<Vec<Option<String>>>,
    /// One set of headers per body; `None` stores no headers.
    pub headers: Option<Vec<Option<Map<String, Value>>>>,
    /// The messages are not readable before this time (default: now).
    pub visible_at: Option<DateTime<Utc>>,
    /// The messages are never read at or after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Higher priorities are read first (default 0).
    pub priority: Option<i32>,
}

impl SendManyOpts {
    /// Sets the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets one deduplication key per body.
    pub fn concurrency_keys<K: Into<String>>(
        mut self,
        keys: impl IntoIterator<Item = Option<K>>,
    ) -> Self {
        self.concurrency_keys = Some(keys.into_iter().map(|key| key.map(Into::into)).collect());
        self
    }

    /// Sets one set of headers per body.
    pub fn headers(mut self, headers: Vec<Option<Map<String, Value>>>) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Delays the messages until `visible_at`.
    pub fn visible_at(mut self, visible_at: DateTime<Utc>) -> Self {
        self.visible_at = Some(visible_at);
        self
    }

    /// Sets the messages' expiry.
    pub fn expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// Converts a duration to the whole milliseconds the SQL functions take.
/// `at_least_one` rejects durations that round down to 0 ms.
pub(crate) fn duration_ms(
    what: &str,
    duration: Duration,
    at_least_one: bool,
) -> Result<i32, Error> {
    let millis = duration.as_millis();
    if at_least_one && millis == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} must be at least 1 millisecond, got {duration:?}"
        )));
    }
    i32::try_from(millis).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what} must be at most {} milliseconds, got {duration:?}",
            i32::MAX
        ))
    })
}

fn check_quantity(quantity: usize) -> Result<i32, Error> {
    if quantity == 0 {
        return Err(Error::InvalidArgument(
            "quantity must be greater than 0, got 0".to_owned(),
        ));
    }
    i32::try_from(quantity).map_err(|_| {
        Error::InvalidArgument(format!(
            "quantity must be at most {}, got {quantity}",
            i32::MAX
        ))
    })
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|value| !value.is_empty()).cloned()
}

fn headers_json(headers: &Option<Map<String, Value>>) -> Result<Option<JsonText>, Error> {
    headers
        .as_ref()
        .map(|headers| JsonText::encode("headers", headers))
        .transpose()
}

/// Creates a queue. Creating a queue that exists is a no-op that keeps the
/// existing description and expiry.
pub async fn create_queue(
    executor: &impl Executor,
    name: &str,
    opts: CreateQueueOpts,
) -> Result<(), Error> {
    validate_name("queue", name)?;
    check_text("description", opts.description.as_deref())?;
    executor
        .query_rows(
            sql::CREATE_QUEUE,
            &[&name, &opts.expires_at, &opts.description],
        )
        .await?;
    Ok(())
}

/// Deletes a queue with all its messages. Returns whether the queue existed.
pub async fn delete_queue(executor: &impl Executor, name: &str) -> Result<bool, Error> {
    validate_name("queue", name)?;
    let row = executor.query_opt_row(sql::DELETE_QUEUE, &[&name]).await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// Returns one queue, or [`Error::NotFound`].
pub async fn get_queue(executor: &impl Executor, name: &str) -> Result<QueueInfo, Error> {
    validate_name("queue", name)?;
    match executor.query_opt_row(sql::GET_QUEUE, &[&name]).await? {
        Some(row) => Ok(QueueInfo::from_row(&row)),
        None => Err(Error::NotFound {
            kind: "queue",
            name: name.to_owned(),
        }),
    }
}

/// Returns every queue, ordered by name.
pub async fn list_queues(executor: &impl Executor) -> Result<Vec<QueueInfo>, Error> {
    let rows = executor.query_rows(sql::LIST_QUEUES, &[]).await?;
    Ok(rows.iter().map(QueueInfo::from_row).collect())
}

/// Builds the statement [`send`] runs, without running it. Its one row holds
/// the message id in column 0.
pub fn send_query<T: Serialize + ?Sized>(
    queue: &str,
    body: &T,
    opts: SendOpts,
) -> Result<Query, Error> {
    validate_name("queue", queue)?;
    check_text("topic", opts.topic.as_deref())?;
    check_text("concurrency key", opts.concurrency_key.as_deref())?;
    let body = JsonText::encode("message body", body)?;
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(queue.to_owned()),
        Box::new(body),
        Box::new(non_empty(&opts.topic)),
        Box::new(non_empty(&opts.concurrency_key)),
        Box::new(headers_json(&opts.headers)?),
        Box::new(opts.visible_at),
        Box::new(opts.expires_at),
        Box::new(opts.priority),
    ];
    Ok(Query::new(sql::SEND, params))
}

/// Sends one message and returns its id. When the concurrency key is held by
/// a stored, unexpired message, nothing is stored and that message's id is
/// returned.
pub async fn send<T: Serialize + ?Sized>(
    executor: &impl Executor,
    queue: &str,
    body: &T,
    opts: SendOpts,
) -> Result<i64, Error> {
    let query = send_query(queue, body, opts)?;
    let rows = query.fetch_all(executor).await?;
    Ok(rows[0].get(0))
}

/// Builds the statement [`send_many`] runs, without running it. Its rows hold
/// the inserted ids in column 0.
pub fn send_many_query<T: Serialize>(
    queue: &str,
    bodies: &[T],
    opts: SendManyOpts,
) -> Result<Query, Error> {
    validate_name("queue", queue)?;
    check_batch_lengths(
        "bodies",
        bodies.len(),
        opts.concurrency_keys.as_ref().map(Vec::len),
        opts.headers.as_ref().map(Vec::len),
    )?;

    check_text("topic", opts.topic.as_deref())?;
    for key in opts.concurrency_keys.iter().flatten() {
        check_text("concurrency key", key.as_deref())?;
    }
    let bodies = bodies
        .iter()
        .map(|body| JsonText::encode("message body", body))
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Option<Vec<Option<String>>> = opts.concurrency_keys.map(|keys| {
        keys.into_iter()
            .map(|key| key.filter(|key| !key.is_empty()))
            .collect()
    });
    let headers: Option<Vec<Option<JsonText>>> = opts
        .headers
        .map(|headers| headers.iter().map(headers_json).collect::<Result<_, _>>())
        .transpose()?;

    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(queue.to_owned()),
        Box::new(bodies),
        Box::new(non_empty(&opts.topic)),
        Box::new(keys),
        Box::new(headers),
        Box::new(opts.visible_at),
        Box::new(opts.expires_at),
        Box::new(opts.priority),
    ];
    Ok(Query::new(sql::SEND_MANY, params))
}

/// Sends one message per body, in body order, and returns the ids inserted,
/// ascending. Bodies whose key is held by a stored message, or repeats a key
/// of an earlier body, are skipped. An empty list sends nothing.
pub async fn send_many<T: Serialize>(
    executor: &impl Executor,
    queue: &str,
    bodies: &[T],
    opts: SendManyOpts,
) -> Result<Vec<i64>, Error> {
    let query = send_many_query(queue, bodies, opts)?;
    let rows = query.fetch_all(executor).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Reads up to `quantity` messages and hides them for `hide_for`. Returns
/// at once, empty when no message is readable.
pub async fn read(
    executor: &impl Executor,
    queue: &str,
    quantity: usize,
    hide_for: Duration,
) -> Result<Vec<Message>, Error> {
    validate_name("queue", queue)?;
    let quantity = check_quantity(quantity)?;
    let hide_for = duration_ms("hide_for", hide_for, true)?;
    let rows = executor
        .query_rows(sql::READ, &[&queue, &quantity, &hide_for])
        .await?;
    Ok(rows.iter().map(Message::from_row).collect())
}

/// Reads like [`read`], checking again every `poll.poll_interval` until at
/// least one message is readable or `poll.poll_for` has passed; then returns
/// what it read, possibly nothing. Dropping the future stops the polling.
pub async fn read_poll(
    executor: &impl Executor,
    queue: &str,
    quantity: usize,
    hide_for: Duration,
    poll: PollOpts,
) -> Result<Vec<Message>, Error> {
    let poll = poll.normalized();
    let start = tokio::time::Instant::now();
    // A wait too long to represent waits without end.
    let deadline = start
        .checked_add(poll.poll_for)
        .unwrap_or(start + Duration::from_secs(100 * 365 * 24 * 3600));
    loop {
        let messages = read(executor, queue, quantity, hide_for).await?;
        let now = tokio::time::Instant::now();
        if !messages.is_empty() || now >= deadline {
            return Ok(messages);
        }
        tokio::time::sleep(poll.poll_interval.min(deadline - now)).await;
    }
}

/// Sets a message's visibility to now + `hide_for`, whatever it was; zero
/// makes it readable at once. Returns whether the message exists.
pub async fn hide(
    executor: &impl Executor,
    queue: &str,
    id: i64,
    hide_for: Duration,
) -> Result<bool, Error> {
    validate_name("queue", queue)?;
    let hide_for = duration_ms("hide_for", hide_for, false)?;
    let row = executor
        .query_opt_row(sql::HIDE, &[&queue, &id, &hide_for])
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// [`hide`] for many messages. Returns the ids that exist, ascending.
pub async fn hide_many(
    executor: &impl Executor,
    queue: &str,
    ids: &[i64],
    hide_for: Duration,
) -> Result<Vec<i64>, Error> {
    validate_name("queue", queue)?;
    let hide_for = duration_ms("hide_for", hide_for, false)?;
    let rows = executor
        .query_rows(sql::HIDE_MANY, &[&queue, &ids, &hide_for])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes (acknowledges) a message. Returns whether it existed.
pub async fn delete(executor: &impl Executor, queue: &str, id: i64) -> Result<bool, Error> {
    validate_name("queue", queue)?;
    let row = executor.query_opt_row(sql::DELETE, &[&queue, &id]).await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

/// [`delete`] for many messages. Returns the ids deleted, ascending.
pub async fn delete_many(
    executor: &impl Executor,
    queue: &str,
    ids: &[i64],
) -> Result<Vec<i64>, Error> {
    validate_name("queue", queue)?;
    let rows = executor
        .query_rows(sql::DELETE_MANY, &[&queue, &ids])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Extends the lease of a message read with delivery count `deliveries`,
/// unless someone read it again since. Returns whether the lease was
/// extended.
pub(crate) async fn renew(
    executor: &impl Executor,
    queue: &str,
    message: &Message,
    hide_for: Duration,
) -> Result<bool, Error> {
    let hide_for = duration_ms("hide_for", hide_for, true)?;
    let row = executor
        .query_opt_row(
            sql::RENEW_MESSAGE,
            &[&queue, &message.id, &message.deliveries, &hide_for],
        )
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_millisecond_lease_is_rejected() {
        let error = duration_ms("hide_for", Duration::from_micros(500), true).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("hide_for must be at least 1 millisecond"),
            "{error}"
        );
    }

    #[test]
    fn zero_hide_is_allowed_where_it_means_now() {
        assert_eq!(duration_ms("hide_for", Duration::ZERO, false).unwrap(), 0);
    }

    #[test]
    fn oversized_duration_is_rejected() {
        assert!(duration_ms("hide_for", Duration::from_secs(u64::MAX / 4), true).is_err());
    }

    #[test]
    fn send_query_without_options_binds_nulls() {
        let query = send_query("jobs", &serde_json::json!({"a": 1}), SendOpts::default()).unwrap();
        assert!(
            query
                .sql()
                .starts_with("SELECT cb_send(queue => $1, body => $2")
        );
        let params = format!("{:?}", query);
        assert_eq!(params.matches("None").count(), 6, "{params}");
    }

    #[test]
    fn send_many_query_checks_key_count() {
        let opts = SendManyOpts::default().concurrency_keys([Some("a")]);
        let error = send_many_query("jobs", &[1, 2], opts).unwrap_err();
        assert_eq!(
            error.to_string(),
            "catbird: concurrency_keys length must match bodies length (1 keys, 2 bodies)"
        );
    }

    #[test]
    fn send_query_rejects_invalid_queue_name() {
        let error = send_query("My-Queue", &1, SendOpts::default()).unwrap_err();
        assert!(matches!(error, Error::InvalidName { kind: "queue", .. }));
    }

    #[test]
    fn zero_quantity_is_rejected() {
        assert!(check_quantity(0).is_err());
        assert_eq!(check_quantity(10).unwrap(), 10);
    }
}
