//! `cb`: the catbird command line.
//!
//! ```text
//! cb [--conn URL] migrate up
//! cb [--conn URL] migrate status
//! cb [--conn URL] migrate down --to N
//! ```
//!
//! The connection string comes from `--conn` or the `CB_CONN` environment
//! variable.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// The catbird command line: schema migrations, and more as catbird grows.
#[derive(Debug, Parser)]
#[command(name = "cb", version, arg_required_else_help = true)]
struct Cli {
    /// PostgreSQL connection string, e.g. postgres://postgres@127.0.0.1:5432/app.
    #[arg(long, global = true, env = "CB_CONN", hide_env_values = true)]
    conn: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply, revert or list catbird schema versions.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// Apply every pending schema version.
    Up,
    /// Revert schema versions down to version N (0 removes every catbird object and its data).
    Down {
        /// The version to keep; every newer applied version is reverted.
        #[arg(long)]
        to: i32,
    },
    /// List every known schema version as applied or pending.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The server's NOTICEs (a table that exists already) are not news.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { action } => migrate(cli.conn.as_deref(), action).await,
    }
}

async fn connect(conn: Option<&str>) -> Result<tokio_postgres::Client> {
    let Some(conn) = conn.filter(|conn| !conn.is_empty()) else {
        bail!("connection string required (--conn or $CB_CONN)");
    };
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .context("could not connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::error!(%error, "database connection closed");
        }
    });
    Ok(client)
}

async fn migrate(conn: Option<&str>, action: MigrateAction) -> Result<()> {
    let mut client = connect(conn).await?;
    match action {
        MigrateAction::Up => {
            let applied = catbird_sql::migrate_up(&mut client).await?;
            report("applied", &applied);
        }
        MigrateAction::Down { to } => {
            let reverted = catbird_sql::migrate_down_to(&mut client, to).await?;
            report("reverted", &reverted);
        }
        MigrateAction::Status => {
            println!("{:<8} {:<8} MIGRATION", "VERSION", "STATUS");
            for row in catbird_sql::status(&mut client).await? {
                println!(
                    "{:<8} {:<8} {:04}_{}",
                    row.version, row.state, row.version, row.name
                );
            }
        }
    }
    Ok(())
}

fn report(verb: &str, versions: &[i32]) {
    if versions.is_empty() {
        println!("nothing to do: the schema is already at the requested version");
    } else {
        let list: Vec<String> = versions.iter().map(i32::to_string).collect();
        println!("{verb} schema version(s) {}", list.join(", "));
    }
}
