//! Project automation, run as `cargo xtask <command>`.
//!
//! - `cargo xtask db` finds a PostgreSQL server or starts a throwaway one and
//!   prints its URL.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod db;

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
        /// Stop the throwaway cluster started by an earlier `cargo xtask db`.
        #[arg(long)]
        stop: bool,
    },
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
            Command::Db { stop: true } => db::stop_throwaway().map(|()| ExitCode::SUCCESS),
            Command::Db { stop: false } => db::ensure_server().await.map(|url| {
                println!("{url}");
                ExitCode::SUCCESS
            }),
        }
    });

    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}
