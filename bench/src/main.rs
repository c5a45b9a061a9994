//! The scenarios behind `cargo xtask bench`.
//!
//! Each run creates a fresh database on the server named by `--url` (or
//! `CB_CONN`), applies the schema, runs the chosen scenarios, and drops the
//! database. With `--repeat N` it does that N times, each on its own fresh
//! database, and reports the median of every figure. It prints a table and
//! writes the figures as JSON. Build it in release mode; `cargo xtask bench`
//! does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod child;
mod probe;
mod report;
mod scenarios;
mod window;

use report::Figure;

/// Benchmarks of catbird against a real PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "catbird-bench")]
struct Args {
    /// Server connection string; a fresh database is created on it and dropped.
    #[arg(
        long,
        env = "CB_CONN",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    url: String,
    /// A smoke run with tiny counts and 2-second windows, under a minute.
    #[arg(long)]
    quick: bool,
    /// Runs only this scenario (repeatable): ceiling, queue, tasks, latency,
    /// flows, map, idle, sql.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Length in seconds of each steady-state window (default 60, or 2 with
    /// --quick). Each pgbench run of the sql scenario lasts half of it.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Runs the chosen scenarios this many times, each on a fresh database,
    /// and reports the median of each figure.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a worker with one no-op task handler, or the map scenario's
    /// flow, until standard input closes. The tasks and map scenarios start
    /// it as a child process to measure the worker's peak memory on its own.
    #[command(hide = true)]
    Worker(child::WorkerArgs),
}

/// The scenarios in the order a full run executes them.
const SCENARIOS: &[&str] = &[
    "ceiling", "queue", "tasks", "latency", "flows", "map", "idle", "sql",
];

/// Server settings that are on in a stock installation and change the
/// figures when turned `off`.
const STOCK_SWITCHES: &[&str] = &[
    "autovacuum",
    "fsync",
    "full_page_writes",
    "synchronous_commit",
];

/// The database and settings every scenario runs with.
pub(crate) struct Bench {
    /// The URL of the fresh bench database.
    pub(crate) url: String,
    /// A pool on the bench database, for the scenarios' own calls.
    pub(crate) pool: catbird_core::deadpool_postgres::Pool,
    /// Whether this is a `--quick` smoke run.
    pub(crate) quick: bool,
    /// Length of each steady-state measurement window.
    pub(crate) window: Duration,
    /// Time a steady-state workload runs before its window opens.
    pub(crate) warmup: Duration,
}

impl Bench {
    /// Vacuums the bench database, so that a workload starts without the
    /// dead rows of the one before it. Autovacuum would otherwise clean them
    /// up during the next window, at that workload's expense.
    pub(crate) async fn settle(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        client
            .batch_execute("VACUUM")
            .await
            .context("vacuum the bench database between workloads")?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Worker(worker)) = &args.command {
        return child::serve(worker).await;
    }

    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    for scenario in &args.scenarios {
        anyhow::ensure!(
            SCENARIOS.contains(&scenario.as_str()),
            "unknown scenario \"{scenario}\"; expected one of {}",
            SCENARIOS.join(", ")
        );
    }
    let chosen: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        SCENARIOS
            .iter()
            .copied()
            .filter(|name| args.scenarios.iter().any(|chosen| chosen == name))
            .collect()
    };
    // Find pgbench before anything runs, so a missing one fails at once.
    let pgbench = if chosen.contains(&"sql") {
        Some(scenarios::sql::find_pgbench()?)
    } else {
        None
    };
    let window = Duration::from_secs(args.duration.unwrap_or(if args.quick { 2 } else { 60 }));
    anyhow::ensure!(!window.is_zero(), "--duration must be at least 1 second");

    let admin = connect(&args.url).await?;
    let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let server_settings = report::server_settings(&admin).await?;
    eprintln!(
        "server settings: {}",
        server_settings
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (name, value) in &server_settings {
        if STOCK_SWITCHES.contains(&name.as_str()) && value == "off" {
            eprintln!(
                "note: {name} is {value} on this server, and on in a stock installation; \
                 `cargo xtask bench --stock-server` benchmarks a cluster with initdb's settings"
            );
        }
    }
    let load_before = report::load_average();
    let mut runs = Vec::new();
    for repeat in 0..args.repeat {
        if args.repeat > 1 {
            eprintln!("run {} of {}", repeat + 1, args.repeat);
        }
        let database = format!("cb_bench_{}_{repeat}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .context("create the bench database")?;
        let result = run_once(&args, &database, window, &chosen, pgbench.as_deref()).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await
            .context("drop the bench database")?;
        let mut figures = result?;
        report::add_ceiling_ratios(&mut figures);
        report::add_map_to_tasks_ratio(&mut figures);
        runs.push(figures);
    }

    let summary = report::summarize(&runs);
    report::print_table(&summary, args.repeat);
    let settings = report::Settings {
        quick: args.quick,
        window,
        repeat: args.repeat,
        server_version,
        server_settings,
        load_before,
        load_after: report::load_average(),
    };
    report::write_json(&args.out, &summary, &settings)?;
    Ok(())
}

/// Applies the schema to the fresh database and runs the chosen scenarios
/// on it.
async fn run_once(
    args: &Args,
    database: &str,
    window: Duration,
    chosen: &[&str],
    pgbench: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Figure>> {
    let url = with_database(&args.url, database);
    let pool = catbird_core::pool_from_url(&url, 24)?;
    let mut connection = pool.get().await?;
    catbird_sql::migrate_up(&mut connection).await?;
    drop(connection);

    let bench = Bench {
        url,
        pool,
        quick: args.quick,
        window,
        warmup: if args.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        },
    };
    let mut figures = Vec::new();
    for scenario in chosen {
        eprintln!("running scenario {scenario}...");
        let started = std::time::Instant::now();
        bench.settle().await?;
        let mut found = match *scenario {
            "ceiling" => scenarios::ceiling::run(&bench).await?,
            "queue" => scenarios::queue::run(&bench).await?,
            "tasks" => scenarios::tasks::run(&bench).await?,
            "latency" => scenarios::latency::run(&bench).await?,
            "flows" => scenarios::flows::run(&bench).await?,
            "map" => scenarios::map::run(&bench).await?,
            "idle" => scenarios::idle::run(&bench).await?,
            "sql" => {
                let pgbench = pgbench.context("pgbench was not looked up")?;
                scenarios::sql::run(&bench, pgbench, &args.out).await?
            }
            other => anyhow::bail!("unknown scenario {other}"),
        };
        eprintln!(
            "scenario {scenario} took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        figures.append(&mut found);
    }
    Ok(figures)
}

/// Opens a plain connection and drives it on a background task.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| "connect to PostgreSQL; start one with `cargo xtask db`".to_owned())?;
    tokio::spawn(connection);
    Ok(client)
}

/// Replaces the database name of a `postgres://` URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Returns the `p`-th percentile (0-100) of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "b"),
            "postgres://u@h:1/b"
        );
        assert_eq!(with_database("postgres://u@h:1", "b"), "postgres://u@h:1/b");
        assert_eq!(
            with_database("postgres://u@h/x?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
    }

    #[test]
    fn percentile_of_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
    }
}
