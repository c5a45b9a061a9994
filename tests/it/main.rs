//! Integration tests against a real PostgreSQL, linked into one binary to keep
//! build and link time down. Each test creates its own database.

mod conditions;
mod flows;
mod gc;
mod helpers;
mod migrations;
mod queue_concurrency;
mod queue_reader;
mod queue_wakeups;
mod queues;
mod sql_api;
mod step_macro;
mod task_cancel;
mod task_macro;
mod task_on_fail;
mod task_retries;
mod task_sql_api;
mod task_support;
mod tasks;
mod worker_lifecycle;
