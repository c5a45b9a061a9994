//! catbird: a PostgreSQL-powered message queue and task/workflow engine.
//!
//! PostgreSQL is the only moving part. Queues, runs and worker state live in
//! your database, every state change is a `cb_*` SQL function, and a send made
//! on your own transaction commits or rolls back with your writes.
//!
//! This facade re-exports the client ([`catbird_core`]) at its root, the schema
//! migrator as [`schema`], and behind cargo features the executor
//! ([`worker`], feature `worker`) and the macros (feature `macros`). Both
//! features are on by default; a process that only enqueues work can turn them
//! off, or depend on `catbird-core` alone.
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `worker` | yes | [`worker`]: the executor |
//! | `macros` | yes | the `#[catbird::task]` and `#[catbird::step]` attributes |
//!
//! ```no_run
//! use std::time::Duration;
//! use catbird::{Client, CancellationToken, queue::{CreateQueueOpts, Message, Reader, SendOpts}};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let pool = catbird::pool_from_url("postgres://postgres@127.0.0.1/app", 8)?;
//!     let mut connection = pool.get().await?;
//!     catbird::schema::migrate_up(&mut connection).await?;
//!
//!     let client = Client::new(pool.clone());
//!     client.create_queue("emails", CreateQueueOpts::default()).await?;
//!     client.send("emails", &serde_json::json!({"to": "ada@example.com"}), SendOpts::default()).await?;
//!
//!     let shutdown = CancellationToken::new();
//!     Reader::new(pool, "emails", |message: Message| async move {
//!         println!("sending {}", message.body);
//!         Ok::<(), anyhow::Error>(())
//!     })
//!     .hide_for(Duration::from_secs(30))
//!     .run(shutdown)
//!     .await?;
//!     Ok(())
//! }
//! ```

pub use catbird_core::*;

#[cfg(feature = "worker")]
pub use catbird_worker as worker;

#[cfg(feature = "macros")]
#[doc(hidden)]
pub use catbird_macros as macros;

/// Compiles the README's Rust examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
