//! `cargo xtask test`: every test and doc test of the workspace against a
//! PostgreSQL server.

use std::process::ExitCode;

use crate::db;

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Arguments passed on to both `cargo test` calls, after `--`: for
    /// example a test name filter, or `-- --nocapture` for the test binaries.
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

/// Runs `cargo test --workspace --all-targets`, then, when it passes,
/// `cargo test --workspace --doc`, with `CB_CONN` set to the server that
/// [`db::ensure_server`] returns. Returns the exit code of the first run that
/// fails.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = db::ensure_server().await?;
    eprintln!("running the tests with CB_CONN={}", db::redact(&url));

    let runs: [&[&str]; 2] = [&["--workspace", "--all-targets"], &["--workspace", "--doc"]];
    for targets in runs {
        let mut cargo = crate::cargo();
        cargo
            .arg("test")
            .args(targets)
            .args(&args.cargo_test_args)
            .env("CB_CONN", &url);
        let code = crate::run_child(cargo)?;
        if code != ExitCode::SUCCESS {
            eprintln!("error: `cargo test {}` failed", targets.join(" "));
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}
