//! A worker in a child process, so its peak memory is its own.
//!
//! The bench binary starts itself with the hidden `worker` subcommand. The
//! child runs a worker with one no-op task handler, or the `map` scenario's
//! flow, until its standard input closes, then shuts the worker down and
//! exits.

use std::io::{IsTerminal, Read};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use catbird_worker::{TaskContext, TaskHandler, Worker};
use tokio_util::sync::CancellationToken;

/// Arguments of the hidden `worker` subcommand.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// URL of the bench database.
    #[arg(long)]
    url: String,
    /// The task whose runs the worker executes.
    #[arg(long)]
    task: Option<String>,
    /// The mapper flow whose items the worker executes (see the `map`
    /// scenario), in place of a task.
    #[arg(long)]
    map_flow: Option<String>,
    /// Runs executed at the same time.
    #[arg(long)]
    concurrency: usize,
}

/// Runs the child's worker until standard input closes.
pub(crate) async fn serve(args: &WorkerArgs) -> anyhow::Result<()> {
    // Warnings and errors go to the bench's standard error, so a claim or
    // completion that keeps failing shows at once, not as a stalled drain.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    // The claim loop and the executions share the pool with a little room
    // for heartbeats and completions.
    let pool = catbird_core::pool_from_url(&args.url, args.concurrency + 4)?;
    let mut worker = Worker::new(pool).listen_url(&args.url);
    if let Some(task) = &args.task {
        worker = worker.task(
            TaskHandler::new(
                task.as_str(),
                |_: serde_json::Value, _ctx: TaskContext| async move { Ok::<_, anyhow::Error>(()) },
            )
            .concurrency(args.concurrency),
        );
    }
    if let Some(flow) = &args.map_flow {
        worker = worker.flow(crate::scenarios::map::flow(flow, args.concurrency));
    }
    let shutdown = CancellationToken::new();
    let worker = worker.start(shutdown.clone());
    let running = tokio::spawn(worker);

    tokio::task::spawn_blocking(|| {
        let mut ignored = Vec::new();
        std::io::stdin().read_to_end(&mut ignored)
    })
    .await?
    .context("read standard input")?;
    shutdown.cancel();
    running.await??;
    Ok(())
}

/// A running child worker.
pub(crate) struct WorkerProcess {
    child: tokio::process::Child,
}

impl WorkerProcess {
    /// Starts a child worker for `task` on the database at `url`.
    pub(crate) fn spawn(url: &str, task: &str, concurrency: usize) -> anyhow::Result<Self> {
        Self::start(url, "--task", task, concurrency)
    }

    /// Starts a child worker for the `map` scenario's flow `flow`.
    pub(crate) fn spawn_map(url: &str, flow: &str, concurrency: usize) -> anyhow::Result<Self> {
        Self::start(url, "--map-flow", flow, concurrency)
    }

    fn start(url: &str, option: &str, name: &str, concurrency: usize) -> anyhow::Result<Self> {
        let program = std::env::current_exe().context("find the bench binary")?;
        let child = tokio::process::Command::new(program)
            .args(["worker", "--url", url, option, name])
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the child worker")?;
        Ok(WorkerProcess { child })
    }

    /// Returns the child's peak resident set size (`VmHWM`) in KiB, read
    /// from `/proc/<pid>/status` (Linux only).
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the child worker has exited")?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("{path} has no VmHWM line"))
    }

    /// Closes the child's standard input and waits for it to exit cleanly.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the child worker did not stop within 30 s")??;
        anyhow::ensure!(status.success(), "the child worker failed: {status}");
        Ok(())
    }
}
