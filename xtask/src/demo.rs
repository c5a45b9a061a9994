//! `cargo xtask demo`: the quickstart example against its own database.

use std::process::ExitCode;

use anyhow::Context;

use crate::db;

/// The database the quickstart runs in, created on first use.
const DEMO_DATABASE: &str = "catbird_demo";

/// The SQLSTATE of "database already exists".
const DUPLICATE_DATABASE: &str = "42P04";

/// Creates the demo database on the server that [`db::ensure_server`]
/// returns, unless it exists, and runs `cargo run -p quickstart` with
/// `CB_CONN` pointing at it. Returns the example's exit code.
pub(crate) async fn run() -> anyhow::Result<ExitCode> {
    let server_url = db::ensure_server().await?;
    create_database(&server_url).await?;

    let demo_url = db::with_database(&server_url, DEMO_DATABASE);
    eprintln!(
        "running the quickstart with CB_CONN={}",
        db::redact(&demo_url)
    );
    let mut cargo = crate::cargo();
    cargo
        .args(["run", "--quiet", "--package", "quickstart"])
        .env("CB_CONN", &demo_url);
    crate::run_child(cargo)
}

async fn create_database(server_url: &str) -> anyhow::Result<()> {
    let client = db::connect(server_url).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&DEMO_DATABASE],
        )
        .await
        .context("failed to list the server's databases")?
        .is_some();
    if exists {
        return Ok(());
    }

    // CREATE DATABASE cannot take bind parameters, so the name is formatted in.
    // It is a constant that needs no quoting.
    let created = client
        .batch_execute(&format!("CREATE DATABASE {DEMO_DATABASE}"))
        .await;
    match created {
        Ok(()) => {
            eprintln!("created the database {DEMO_DATABASE}");
            Ok(())
        }
        // Another process created it since the check above.
        Err(error)
            if error
                .code()
                .is_some_and(|code| code.code() == DUPLICATE_DATABASE) =>
        {
            Ok(())
        }
        Err(error) => Err(error).with_context(|| {
            format!(
                "failed to create the database {DEMO_DATABASE} on {}",
                db::redact(server_url)
            )
        }),
    }
}
