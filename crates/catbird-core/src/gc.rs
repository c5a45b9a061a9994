//! Garbage collection, purging and clearing of runs.

use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::executor::Executor;
use crate::names::validate_name;
use crate::sql;

/// What one garbage collection pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Queues whose expiry passed, deleted with their messages.
    pub expired_queues_deleted: i32,
    /// Messages whose expiry passed, deleted.
    pub expired_messages_deleted: i32,
    /// Queued or started task runs whose expiry passed, now expired.
    pub expired_task_runs: i32,
    /// Started or canceling flow runs whose expiry passed, now expired.
    pub expired_flow_runs: i32,
    /// Workers without a heartbeat for more than 5 minutes, deleted.
    pub stale_workers_deleted: i32,
    /// Finished task runs older than their task's retention, deleted.
    pub task_runs_purged: i32,
    /// Finished flow runs older than their flow's retention, deleted with
    /// their steps.
    pub flow_runs_purged: i32,
}

/// Runs one garbage collection pass. Workers run one at most once a minute
/// from their heartbeat; call it yourself to collect without workers.
/// Runs that are not finished are never deleted.
pub async fn gc(executor: &impl Executor) -> Result<GcReport, Error> {
    let rows = executor.query_rows(sql::GC, &[]).await?;
    let row = &rows[0];
    Ok(GcReport {
        expired_queues_deleted: row.get("expired_queues_deleted"),
        expired_messages_deleted: row.get("expired_messages_deleted"),
        expired_task_runs: row.get("expired_task_runs"),
        expired_flow_runs: row.get("expired_flow_runs"),
        stale_workers_deleted: row.get("stale_workers_deleted"),
        task_runs_purged: row.get("task_runs_purged"),
        flow_runs_purged: row.get("flow_runs_purged"),
    })
}

/// Converts a duration to whole milliseconds, rounding a positive duration
/// below 1 ms up to 1 ms so it never means "no limit".
pub(crate) fn millis_at_least_one(duration: Duration) -> i64 {
    let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    if millis == 0 && !duration.is_zero() {
        1
    } else {
        millis
    }
}

/// Deletes the finished runs of a task that finished more than `older_than`
/// ago, whatever its retention (zero deletes every finished run). Returns how
/// many were deleted; 0 for a task that does not exist.
pub async fn purge_task_runs(
    executor: &impl Executor,
    task: &str,
    older_than: Duration,
) -> Result<i32, Error> {
    validate_name("task", task)?;
    let older_than = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let rows = executor
        .query_rows(sql::PURGE_TASK_RUNS, &[&task, &older_than])
        .await?;
    Ok(rows[0].get(0))
}

/// Deletes the finished runs of a flow, with their steps, that finished more
/// than `older_than` ago. Returns how many were deleted.
pub async fn purge_flow_runs(
    executor: &impl Executor,
    flow: &str,
    older_than: Duration,
) -> Result<i32, Error> {
    validate_name("flow", flow)?;
    let older_than = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let rows = executor
        .query_rows(sql::PURGE_FLOW_RUNS, &[&flow, &older_than])
        .await?;
    Ok(rows[0].get(0))
}

/// Deletes every run of a task, whatever its status: work in flight is
/// lost. Returns how many were deleted.
pub async fn clear_task_runs(executor: &impl Executor, task: &str) -> Result<i32, Error> {
    validate_name("task", task)?;
    let rows = executor.query_rows(sql::CLEAR_TASK_RUNS, &[&task]).await?;
    Ok(rows[0].get(0))
}

/// Deletes every run of a flow, with their steps, whatever their status.
/// Returns how many were deleted.
pub async fn clear_flow_runs(executor: &impl Executor, flow: &str) -> Result<i32, Error> {
    validate_name("flow", flow)?;
    let rows = executor.query_rows(sql::CLEAR_FLOW_RUNS, &[&flow]).await?;
    Ok(rows[0].get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_millisecond_retention_rounds_up() {
        assert_eq!(millis_at_least_one(Duration::from_nanos(1)), 1);
        assert_eq!(millis_at_least_one(Duration::ZERO), 0);
        assert_eq!(millis_at_least_one(Duration::from_millis(1500)), 1500);
    }
}
