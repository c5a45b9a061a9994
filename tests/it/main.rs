//! Integration tests against a real PostgreSQL, linked into one binary to keep
//! build and link time down. Each test creates its own database.

mod conditions;
mod flow_cancel;
mod flow_conditions;
mod flow_definitions;
mod flow_early;
mod flow_failures;
mod flow_fanout;
mod flow_fanout_edges;
mod flow_helpers;
mod flow_on_fail;
mod flow_signals;
mod flow_sql_api;
mod flows;
mod gc;
mod helpers;
mod migrations;
mod queue_concurrency;
mod queue_reader;
mod queue_wakeups;
mod queues;
mod robustness;
mod sql_api;
mod step_macro;
mod step_macro_fan_out;
mod task_batching;
mod task_cancel;
mod task_macro;
mod task_on_fail;
mod task_retries;
mod task_sql_api;
mod task_support;
mod tasks;
mod vacuum;
mod wake_requests;
mod worker_lifecycle;
