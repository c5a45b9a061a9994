//! Counts read from catbird's tables, to tell when runs have finished.
//!
//! NOTE: these queries read the per-task and per-flow tables (`cb_t_<task>`,
//! `cb_f_<flow>`, `cb_s_<flow>`) directly, because the SQL API has no count
//! function. They must follow any change to where runs are stored.

use catbird_core::Executor;
use catbird_core::deadpool_postgres::Pool;

/// Counts the completed runs of a task.
pub(crate) async fn completed_task_runs(pool: &Pool, task: &str) -> anyhow::Result<u64> {
    count(
        pool,
        &format!("SELECT count(*) FROM cb_t_{task} WHERE status = 'completed'"),
    )
    .await
}

/// Counts the runs of a task that are queued or started, through the
/// partial claim index, so the count stays cheap while the table grows.
pub(crate) async fn unfinished_task_runs(pool: &Pool, task: &str) -> anyhow::Result<u64> {
    count(
        pool,
        &format!("SELECT count(*) FROM cb_t_{task} WHERE status IN ('queued', 'started')"),
    )
    .await
}

/// Returns the id of the oldest queued or started run of a task, with one
/// probe of the claim index.
pub(crate) async fn oldest_unfinished_task_run(
    pool: &Pool,
    task: &str,
) -> anyhow::Result<Option<i64>> {
    let row = pool
        .query_opt_row(
            &format!(
                "SELECT id FROM cb_t_{task} WHERE status IN ('queued', 'started') \
                 ORDER BY priority DESC, id LIMIT 1"
            ),
            &[],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Counts the completed runs of a flow.
pub(crate) async fn completed_flow_runs(pool: &Pool, flow: &str) -> anyhow::Result<u64> {
    count(
        pool,
        &format!("SELECT count(*) FROM cb_f_{flow} WHERE status = 'completed'"),
    )
    .await
}

/// Counts the started runs of a flow.
pub(crate) async fn unfinished_flow_runs(pool: &Pool, flow: &str) -> anyhow::Result<u64> {
    count(
        pool,
        &format!("SELECT count(*) FROM cb_f_{flow} WHERE status = 'started'"),
    )
    .await
}

async fn count(pool: &Pool, sql: &str) -> anyhow::Result<u64> {
    let rows = pool.query_rows(sql, &[]).await?;
    let count: i64 = rows[0].get(0);
    Ok(u64::try_from(count)?)
}
