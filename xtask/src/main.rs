//! Project automation, run as `cargo xtask <command>`.
//!
//! - `cargo xtask db` finds a PostgreSQL server or starts a throwaway one and
//!   prints its URL.
//! - `cargo xtask test` runs the whole test suite against that server.
//! - `cargo xtask demo` runs the quickstart example against a demo database.
//! - `cargo xtask migrate` applies, reverts or lists catbird's schema versions.
//! - `cargo xtask bench` runs the benchmark scenarios in release mode.

use std::process::{Command as Process, ExitCode, ExitStatus};

use clap::{Parser, Subcommand};

mod bench;
mod db;
mod demo;
mod migrate;
mod test;

/// Project automation for catbird-rs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Find a PostgreSQL server, or start a throwaway one, and print its URL.
    ///
    /// Tries CB_CONN (default postgres://postgres@127.0.0.1:5432/postgres)
    /// first. When no server accepts connections there, starts a cluster from the
    /// local PostgreSQL binaries in target/xtask-pg and prints its URL instead.
    Db {
        /// Stop the throwaway clusters of `cargo xtask db` and `cargo xtask bench --stock-server`.
        #[arg(long, conflicts_with = "stock")]
        stop: bool,
        /// Start the benchmark cluster in target/bench-pg instead, with the
        /// settings initdb writes, and print its URL.
        #[arg(long)]
        stock: bool,
    },
    /// Run every test and doc test of the workspace against a PostgreSQL server.
    Test(test::Args),
    /// Run the quickstart example against the `catbird_demo` database.
    Demo,
    /// Apply, revert or list catbird's schema versions.
    Migrate(migrate::Args),
    /// Run the benchmark suite (release build) on a fresh database; print a table and write target/bench/results.json.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    let result = runtime.block_on(async {
        match cli.command {
            Command::Db { stop: true, .. } => db::stop_throwaway().map(|()| ExitCode::SUCCESS),
            Command::Db { stop: false, stock } => {
                let url = if stock {
                    db::ensure_throwaway(db::ClusterKind::Stock).await
                } else {
                    db::ensure_server().await
                };
                url.map(|url| {
                    println!("{url}");
                    ExitCode::SUCCESS
                })
            }
            Command::Test(args) => test::run(args).await,
            Command::Demo => demo::run().await,
            Command::Migrate(args) => migrate::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(args).await,
        }
    });

    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

/// Runs `command` with inherited standard streams and returns its exit code,
/// so `cargo xtask` fails exactly when the child fails.
fn run_child(mut command: Process) -> anyhow::Result<ExitCode> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command
        .status()
        .map_err(|error| anyhow::anyhow!("failed to run `{program}`: {error}"))?;
    Ok(exit_code(status))
}

/// Converts a child's exit status into this process's exit code. A child
/// killed by a signal maps to 128 + the signal number, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from);
    }

    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).map_or(ExitCode::FAILURE, ExitCode::from);
        }
    }
    ExitCode::FAILURE
}

/// Returns the cargo that runs this tool, so children use the same toolchain.
fn cargo() -> Process {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Process::new(cargo);
    command.current_dir(db::workspace_root());
    command
}
