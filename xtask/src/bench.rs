//! `cargo xtask bench`: the benchmark scenarios, built in release mode.

use std::process::ExitCode;

use clap::Args as ClapArgs;

use crate::db;

/// Options of `cargo xtask bench`, passed on to the bench binary.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// A smoke run with small counts, under a minute.
    #[arg(long)]
    quick: bool,
    /// Runs only this scenario (repeatable): tasks, latency, flows.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
}

/// Ensures a server, then runs `cargo run --release -p catbird-bench` against
/// it. The bench creates and drops its own database, prints a table and
/// writes `target/bench/results.json`.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = db::ensure_server().await?;
    eprintln!("benchmarking against {}", db::redact(&url));

    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(db::workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();

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
    cargo.env("CB_CONN", &url).env("CB_BENCH_COMMIT", commit);
    crate::run_child(cargo)
}
