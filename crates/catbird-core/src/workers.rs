//! Registered workers.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::executor::Executor;
use crate::sql;

/// A registered worker process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// The worker's id, a random UUID chosen at start.
    pub id: uuid::Uuid,
    /// The tasks it has handlers for, sorted by name.
    pub task_handlers: Vec<String>,
    /// The flow steps it has handlers for, as `{"flow": ..., "step": ...}`.
    pub step_handlers: Value,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
}

/// Returns every registered worker, latest heartbeat first.
pub async fn list_workers(executor: &impl Executor) -> Result<Vec<WorkerInfo>, Error> {
    let rows = executor.query_rows(sql::LIST_WORKERS, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| WorkerInfo {
            id: row.get("id"),
            task_handlers: row.get("task_handlers"),
            step_handlers: row.get("step_handlers"),
            started_at: row.get("started_at"),
            last_heartbeat_at: row.get("last_heartbeat_at"),
        })
        .collect())
}
