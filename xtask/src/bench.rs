//! `cargo xtask bench`: the benchmark scenarios, built in release mode.

use std::process::ExitCode;

use clap::Args as ClapArgs;

use crate::db;

/// Options of `cargo xtask bench`, passed on to the bench binary.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
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
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Benchmarks a throwaway cluster in target/bench-pg that runs with the
    /// settings initdb writes (durable commits, autovacuum on) instead of the
    /// server at CB_CONN. Stops it afterwards unless it already ran.
    #[arg(long)]
    stock_server: bool,
}

/// Ensures a server, then runs `cargo run --release -p catbird-bench` against
/// it. The bench creates and drops its own database, prints a table and
/// writes `target/bench/results.json`.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.stock_server {
        let url = db::ensure_server().await?;
        return run_bench(&args, &url);
    }
    // A cluster that already ran, for example after `cargo xtask db --stock`,
    // is left running.
    if let Some(url) = db::throwaway_running(db::ClusterKind::Stock).await? {
        return run_bench(&args, &url);
    }
    let url = db::ensure_throwaway(db::ClusterKind::Stock).await?;
    let result = run_bench(&args, &url);
    let stopped = db::stop_cluster(db::ClusterKind::Stock);
    let code = result?;
    stopped?;
    Ok(code)
}

/// Runs the bench binary against the server at `url`.
fn run_bench(args: &Args, url: &str) -> anyhow::Result<ExitCode> {
    eprintln!("benchmarking against {}", db::redact(url));

    let commit = current_commit().unwrap_or_default();

    let mut cargo = crate::cargo();
    cargo.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "catbird-bench",
        "--",
    ]);
    if args.quick {
        cargo.arg("--quick");
    }
    for scenario in &args.scenarios {
        cargo.args(["--scenario", scenario]);
    }
    if let Some(duration) = args.duration {
        cargo.args(["--duration", &duration.to_string()]);
    }
    if let Some(repeat) = args.repeat {
        cargo.args(["--repeat", &repeat.to_string()]);
    }
    let command: Vec<String> = std::env::args().skip(1).collect();
    cargo
        .env("CB_CONN", url)
        .env("CB_BENCH_COMMIT", commit)
        .env(
            "CB_BENCH_COMMAND",
            format!("cargo xtask {}", command.join(" ")),
        );
    crate::run_child(cargo)
}

/// Returns the short hash of `HEAD`, with `-dirty` appended when tracked
/// files differ from it, or `None` outside a git checkout.
fn current_commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(db::workspace_root())
            .output()
            .ok()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).filter(|output| output.status.success())?;
    let mut commit = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    // `git diff --quiet` exits with 1 when the working tree differs.
    if git(&["diff", "--quiet", "HEAD"]).is_some_and(|output| output.status.code() == Some(1)) {
        commit.push_str("-dirty");
    }
    Some(commit)
}
