//! `ceiling`: the minimal job lifecycle in plain SQL, through the same
//! driver and pool as catbird, as the reference for every other rate.
//!
//! A job is one row. Each client loop inserts jobs, claims the oldest
//! visible ones with `FOR UPDATE SKIP LOCKED` (taking a 60 s lease), and
//! completes them by deleting them: three statements, each its own
//! transaction, as in a queue that keeps no history.

use serde_json::json;

use super::CLIENTS;
use crate::Bench;
use crate::report::{CEILING_BATCH, CEILING_SINGLE, Figure};
use crate::window::Loops;

const CREATE: &str = "
CREATE TABLE bench_ceiling_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload jsonb NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT now()
)";

const INSERT_ONE: &str = "INSERT INTO bench_ceiling_jobs (payload) VALUES ($1)";

const INSERT_MANY: &str =
    "INSERT INTO bench_ceiling_jobs (payload) SELECT * FROM unnest($1::jsonb[])";

const CLAIM: &str = "
WITH next AS (
    SELECT id FROM bench_ceiling_jobs
    WHERE visible_at <= now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE bench_ceiling_jobs AS jobs
SET attempts = jobs.attempts + 1, visible_at = now() + interval '60 seconds'
FROM next
WHERE jobs.id = next.id
RETURNING jobs.id, jobs.payload";

const COMPLETE: &str = "DELETE FROM bench_ceiling_jobs WHERE id = ANY($1)";

/// Measures the lifecycle with 1 and with 100 jobs per statement.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let client = bench.pool.get().await?;
    client.batch_execute(CREATE).await?;
    drop(client);

    let mut figures = Vec::new();
    for (per_statement, name) in [(1, CEILING_SINGLE), (100, CEILING_BATCH)] {
        bench.settle().await?;
        let rate = lifecycle(bench, per_statement).await?;
        figures.push(Figure::new(
            "ceiling",
            name,
            rate,
            "jobs/s",
            json!({
                "clients": CLIENTS,
                "jobs_per_statement": per_statement,
                "window_seconds": bench.window.as_secs_f64(),
                "statements": "insert; claim (FOR UPDATE SKIP LOCKED); delete",
            }),
        ));
    }
    Ok(figures)
}

async fn lifecycle(bench: &Bench, per_statement: usize) -> anyhow::Result<f64> {
    let pool = bench.pool.clone();
    let loops = Loops::start(CLIENTS, move |_, handle| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            let insert_one = client.prepare_cached(INSERT_ONE).await?;
            let insert_many = client.prepare_cached(INSERT_MANY).await?;
            let claim = client.prepare_cached(CLAIM).await?;
            let complete = client.prepare_cached(COMPLETE).await?;
            let payloads: Vec<serde_json::Value> =
                (0..per_statement).map(|i| json!({ "i": i })).collect();
            let limit = per_statement as i64;
            while !handle.stopped() {
                if per_statement == 1 {
                    client.execute(&insert_one, &[&payloads[0]]).await?;
                } else {
                    client.execute(&insert_many, &[&payloads]).await?;
                }
                let claimed = client.query(&claim, &[&limit]).await?;
                let ids: Vec<i64> = claimed.iter().map(|row| row.get(0)).collect();
                let deleted = client.execute(&complete, &[&ids]).await?;
                handle.add(deleted);
            }
            Ok(())
        }
    });
    let rate = loops.measure(bench.warmup, bench.window).await?;
    Ok(rate.per_second)
}
