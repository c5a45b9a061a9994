//! Integration tests against a real PostgreSQL, linked into one binary to keep
//! build and link time down. Each test creates its own database.

mod migrations;
mod queue_concurrency;
mod queue_reader;
mod queues;
mod sql_api;
mod task_macro;
