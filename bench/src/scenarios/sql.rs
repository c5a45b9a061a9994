//! `sql`: the public SQL functions alone under `pgbench`, with no Rust
//! between the client and the functions.
//!
//! Each script in `bench/sql/` runs for a fixed time with 2 and with 8
//! clients, on objects created for that run only. pgbench reports
//! transactions (script executions) per second. A script moves 1 or 100
//! messages or runs, so the figure is that rate times the script's count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use catbird_core::Executor;
use catbird_core::queue::{CreateQueueOpts, create_queue};
use catbird_core::task::{Task, create_task};
use serde_json::json;

use crate::Bench;
use crate::report::{Ceiling, Figure};

/// Client counts each script runs with.
const CLIENTS: [usize; 2] = [2, 8];

/// One pgbench script and what it moves per execution.
struct Script {
    /// File name in `bench/sql/`.
    file: &'static str,
    text: &'static str,
    /// The object the script works on: `queue`, `task` or `flow`, which is
    /// also the name of its pgbench variable.
    object: &'static str,
    per_execution: f64,
    figure: &'static str,
    unit: &'static str,
    ceiling: Ceiling,
}

const SCRIPTS: &[Script] = &[
    Script {
        file: "message_single.sql",
        text: include_str!("../../sql/message_single.sql"),
        object: "queue",
        per_execution: 1.0,
        figure: "send, read, delete: 1 per call",
        unit: "msg/s",
        ceiling: Ceiling::Single,
    },
    Script {
        file: "message_batch.sql",
        text: include_str!("../../sql/message_batch.sql"),
        object: "queue",
        per_execution: 100.0,
        figure: "send, read, delete: 100 per call",
        unit: "msg/s",
        ceiling: Ceiling::Batch,
    },
    Script {
        file: "task_single.sql",
        text: include_str!("../../sql/task_single.sql"),
        object: "task",
        per_execution: 1.0,
        figure: "run, claim, complete: 1 per call",
        unit: "runs/s",
        ceiling: Ceiling::Single,
    },
    Script {
        file: "task_batch.sql",
        text: include_str!("../../sql/task_batch.sql"),
        object: "task",
        per_execution: 100.0,
        figure: "run, claim, complete: 100 per call",
        unit: "runs/s",
        ceiling: Ceiling::Batch,
    },
    Script {
        file: "flow_single.sql",
        text: include_str!("../../sql/flow_single.sql"),
        object: "flow",
        per_execution: 1.0,
        figure: "one-step flow: run, claim, complete",
        unit: "flow runs/s",
        ceiling: Ceiling::Single,
    },
];

/// Returns the pgbench to run: `$PGBENCH`, else the first on `PATH`, else
/// the newest under `/usr/lib/postgresql/*/bin` (Debian and Ubuntu).
pub(crate) fn find_pgbench() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PGBENCH").filter(|path| !path.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("pgbench"))
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let candidate = entry.path().join("bin/pgbench");
            candidate.is_file().then_some((version, candidate))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path).context(
        "pgbench not found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL's \
         client tools, set PGBENCH to its path, or leave out the sql scenario",
    )
}

/// Runs every script with every client count, each for half the window.
pub(crate) async fn run(bench: &Bench, pgbench: &Path, out: &Path) -> anyhow::Result<Vec<Figure>> {
    let scripts_dir = out
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("pgbench");
    std::fs::create_dir_all(&scripts_dir)
        .with_context(|| format!("create {}", scripts_dir.display()))?;
    let seconds = (bench.window / 2).as_secs().max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut figures = Vec::new();
    for script in SCRIPTS {
        let path = scripts_dir.join(script.file);
        std::fs::write(&path, script.text).with_context(|| format!("write {}", path.display()))?;
        for clients in CLIENTS {
            let stem = script.file.trim_end_matches(".sql");
            let object = format!("sql_{stem}_c{clients}");
            create_object(bench, script.object, &object).await?;
            bench.settle().await?;
            let tps = pgbench_tps(
                pgbench,
                &bench.url,
                &path,
                &format!("{}={object}", script.object),
                clients,
                clients.min(threads),
                seconds,
            )
            .await?;
            figures.push(
                Figure::new(
                    "sql",
                    format!("{}, {clients} clients", script.figure),
                    tps * script.per_execution,
                    script.unit,
                    json!({
                        "script": format!("bench/sql/{}", script.file),
                        "clients": clients,
                        "seconds": seconds,
                        "per_transaction": script.per_execution,
                        "transactions_per_second": tps,
                        "protocol": "prepared",
                    }),
                )
                .against(script.ceiling),
            );
        }
    }
    Ok(figures)
}

async fn create_object(bench: &Bench, kind: &str, name: &str) -> anyhow::Result<()> {
    match kind {
        "queue" => create_queue(&bench.pool, name, CreateQueueOpts::default()).await?,
        "task" => create_task(&bench.pool, &Task::define(name)).await?,
        "flow" => {
            bench
                .pool
                .query_rows(
                    "SELECT cb_create_flow(name => $1, steps => '[{\"name\": \"only\"}]'::jsonb)",
                    &[&name],
                )
                .await?;
        }
        other => anyhow::bail!("unknown object kind {other}"),
    }
    Ok(())
}

/// Runs pgbench and returns its transactions per second, failing when it
/// exits with an error or reports failed transactions.
async fn pgbench_tps(
    pgbench: &Path,
    url: &str,
    script: &Path,
    variable: &str,
    clients: usize,
    threads: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let run = tokio::process::Command::new(pgbench)
        .args(["--no-vacuum", "--protocol=prepared", "--file"])
        .arg(script)
        .args(["--define", variable])
        .args(["--client", &clients.to_string()])
        .args(["--jobs", &threads.to_string()])
        .args(["--time", &seconds.to_string()])
        .arg(url)
        .output();
    // pgbench stops on its own after `seconds`; this only catches a hang.
    let output = tokio::time::timeout(Duration::from_secs(seconds + 60), run)
        .await
        .with_context(|| format!("pgbench with {} did not finish", script.display()))?
        .with_context(|| format!("run {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "pgbench with {} failed ({}): {stderr}{stdout}",
        script.display(),
        output.status
    );
    let failed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    anyhow::ensure!(
        failed == 0,
        "pgbench with {} reported {failed} failed transactions: {stderr}",
        script.display()
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("pgbench printed no tps line: {stdout}"))
}
