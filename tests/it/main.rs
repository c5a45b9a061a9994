//! Integration tests against a real PostgreSQL, linked into one binary to keep
//! build and link time down. Each test creates its own database.

mod flow_definitions;
mod flow_helpers;
mod flows;
mod helpers;
mod migrations;
mod queue_concurrency;
mod queue_reader;
mod queue_wakeups;
mod queues;
mod sql_api;
mod tasks;
