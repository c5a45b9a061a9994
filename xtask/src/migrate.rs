//! `cargo xtask migrate`: applies, reverts or lists catbird's schema versions
//! with the migrator of the `catbird-sql` crate.

use anyhow::Context;
use catbird_sql::SCHEMA_VERSION;

use crate::db;

/// Arguments of `cargo xtask migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The database to migrate, as a PostgreSQL URL or key=value string.
    #[arg(long, env = "CB_CONN", default_value = db::DEFAULT_CONN, hide_env_values = true, global = true)]
    conn: String,

    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Apply every pending schema version, or those up to --to.
    Up {
        /// The last version to apply; defaults to the latest.
        #[arg(long, value_name = "VERSION")]
        to: Option<i32>,
    },
    /// List every known schema version and whether it is applied.
    Status,
    /// Revert applied schema versions above --to, newest first.
    Down {
        /// The version to keep; 0 removes every catbird table and its data.
        #[arg(long, value_name = "VERSION")]
        to: i32,
    },
}

/// Runs one migrate action against `--conn`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = db::connect(&args.conn).await?;
    let target = db::redact(&args.conn);

    match args.action {
        Action::Up { to } => {
            let to = to.unwrap_or(SCHEMA_VERSION);
            let applied = catbird_sql::migrate_up_to(&mut client, to)
                .await
                .with_context(|| format!("failed to migrate {target} up to version {to}"))?;
            report_applied(&applied, to);
        }
        Action::Status => {
            let rows = catbird_sql::status(&mut client)
                .await
                .with_context(|| format!("failed to read the schema versions of {target}"))?;
            println!("{:<9}{:<9}MIGRATION", "VERSION", "STATUS");
            for row in rows {
                println!(
                    "{:<9}{:<9}{}",
                    row.version,
                    row.state.to_string(),
                    migration_name(row.version, row.name)
                );
            }
        }
        Action::Down { to } => {
            let reverted = catbird_sql::migrate_down_to(&mut client, to)
                .await
                .with_context(|| format!("failed to migrate {target} down to version {to}"))?;
            report_reverted(&reverted, to);
        }
    }
    Ok(())
}

fn report_applied(versions: &[i32], target: i32) {
    if versions.is_empty() {
        println!("nothing to apply: every version up to {target} is applied");
    }
    print_versions("applied", versions);
}

fn report_reverted(versions: &[i32], target: i32) {
    if versions.is_empty() {
        println!("nothing to revert: no version above {target} is applied");
    }
    print_versions("reverted", versions);
}

fn print_versions(verb: &str, versions: &[i32]) {
    for &version in versions {
        let name = catbird_sql::migrations()
            .iter()
            .find(|migration| migration.version == version)
            .map_or("", |migration| migration.name);
        println!("{verb} {}", migration_name(version, name));
    }
}

/// Returns the migration's file name without `.sql`, such as `0001_queues`.
fn migration_name(version: i32, name: &str) -> String {
    format!("{version:04}_{name}")
}
