//! The scenarios behind `cargo xtask bench`.
//!
//! Each run creates a fresh database on the server named by `--url` (or
//! `CB_CONN`), applies the schema, runs the chosen scenarios, prints a table,
//! writes the figures as JSON, and drops the database. Build it in release
//! mode; `cargo xtask bench` does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

mod scenarios;

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
    /// A smoke run with small counts, under a minute.
    #[arg(long)]
    quick: bool,
    /// Runs only this scenario (repeatable): tasks, latency, flows.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) scenario: &'static str,
    pub(crate) figure: &'static str,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) parameters: serde_json::Value,
}

/// What every scenario gets.
pub(crate) struct Bench {
    pub(crate) url: String,
    pub(crate) pool: catbird_core::deadpool_postgres::Pool,
    pub(crate) quick: bool,
}

const SCENARIOS: &[&str] = &["tasks", "latency", "flows"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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

    let database = format!("cb_bench_{}", std::process::id());
    let admin = connect(&args.url).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .context("create the bench database")?;
    let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let url = with_database(&args.url, &database);

    let result = run(&args, &url, &chosen).await;

    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .context("drop the bench database")?;
    let figures = result?;

    print_table(&figures);
    write_json(&args, &figures, &server_version)?;
    Ok(())
}

async fn run(args: &Args, url: &str, chosen: &[&str]) -> anyhow::Result<Vec<Figure>> {
    let pool = catbird_core::pool_from_url(url, 24)?;
    let mut connection = pool.get().await?;
    catbird_sql::migrate_up(&mut connection).await?;
    drop(connection);

    let bench = Bench {
        url: url.to_owned(),
        pool,
        quick: args.quick,
    };
    let mut figures = Vec::new();
    for scenario in chosen {
        eprintln!("running scenario {scenario}...");
        let mut found = match *scenario {
            "tasks" => scenarios::tasks(&bench).await?,
            "latency" => scenarios::latency(&bench).await?,
            "flows" => scenarios::flows(&bench).await?,
            other => anyhow::bail!("unknown scenario {other}"),
        };
        figures.append(&mut found);
    }
    Ok(figures)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
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

fn print_table(figures: &[Figure]) {
    println!("{:<10} {:<44} {:>14} UNIT", "SCENARIO", "FIGURE", "VALUE");
    for figure in figures {
        println!(
            "{:<10} {:<44} {:>14.2} {}",
            figure.scenario, figure.figure, figure.value, figure.unit
        );
    }
}

fn write_json(args: &Args, figures: &[Figure], server_version: &str) -> anyhow::Result<()> {
    let machine = serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model(),
        "memory_kib": memory_kib(),
    });
    let report = serde_json::json!({
        "quick": args.quick,
        "postgres_version": server_version,
        "commit": std::env::var("CB_BENCH_COMMIT").unwrap_or_default(),
        "machine": machine,
        "figures": figures,
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_default()
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
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
