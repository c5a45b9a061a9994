//! The catbird client: queues (and, as they land, tasks and flows) over
//! catbird's PostgreSQL functions.
//!
//! Every state change happens inside a `cb_*` SQL function, in one database
//! transaction. This crate validates arguments, encodes payloads and calls
//! those functions; it never decides a transition itself. A web process that
//! only enqueues work depends on this crate alone, without the executor or the
//! macros.
//!
//! Every operation is a free function taking an [`Executor`]: a
//! `deadpool_postgres::Pool`, a pooled or plain client, or an open
//! transaction. Run on a transaction, a send commits or rolls back with the
//! caller's own writes. [`Client`] offers the same operations as methods over
//! a pool.
//!
//! ```no_run
//! use std::time::Duration;
//! use catbird_core::{Client, queue::{CreateQueueOpts, SendOpts}};
//!
//! # async fn example() -> Result<(), catbird_core::Error> {
//! let pool = catbird_core::pool_from_url("postgres://postgres@127.0.0.1/app", 8)?;
//! let client = Client::new(pool.clone());
//!
//! client.create_queue("emails", CreateQueueOpts::default()).await?;
//! client
//!     .send("emails", &serde_json::json!({"to": "ada@example.com"}), SendOpts::default().priority(5))
//!     .await?;
//!
//! for message in client.read("emails", 10, Duration::from_secs(30)).await? {
//!     println!("{}", message.body);
//!     client.delete("emails", message.id).await?;
//! }
//!
//! // The same send inside the caller's own transaction.
//! let mut connection = pool.get().await?;
//! let transaction = connection.transaction().await?;
//! catbird_core::queue::send(&transaction, "emails", &"hello", SendOpts::default()).await?;
//! transaction.commit().await?;
//! # Ok(())
//! # }
//! ```

mod client;
pub mod condition;
mod error;
mod executor;
pub mod flow;
pub mod gc;
mod names;
mod payload;
mod poll;
mod pool;
mod query;
pub mod queue;
pub mod sql;
pub mod task;
mod wait;
pub mod workers;

pub use client::Client;
pub use condition::{Condition, ConditionError, Operator};
pub use error::{
    Error, NO_OUTPUT_CANDIDATE, NameRule, SQLSTATE_INVALID_ARGUMENT, SQLSTATE_NOT_DEFINED,
    SQLSTATE_NOT_FOUND,
};
pub use executor::{Executor, Params};
pub use flow::{
    FlowDef, FlowHandle, FlowInfo, FlowRunInfo, MapSource, StepDef, StepKind, StepRunInfo,
    StepStatus,
};
pub use gc::{GcReport, gc};
pub use names::{MAX_NAME_LEN, validate_name};
pub use payload::{JsonText, MAX_PAYLOAD_BYTES};
pub use poll::{DEFAULT_POLL_FOR, DEFAULT_POLL_INTERVAL, PollOpts};
pub use pool::{DEFAULT_POOL_SIZE, pool_from_url};
pub use query::Query;
pub use task::{RunStatus, RunTaskOpts, Task, TaskHandle, TaskInfo, TaskRunInfo};

/// The schema migrator, re-exported.
pub use catbird_sql as schema;

/// Re-exported so users name the same versions catbird uses.
pub use deadpool_postgres;
/// Re-exported so users name the same versions catbird uses.
pub use tokio_postgres;
/// The shutdown signal readers and workers take.
pub use tokio_util::sync::CancellationToken;
