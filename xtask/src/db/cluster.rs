//! Throwaway PostgreSQL clusters, started from the local PostgreSQL binaries.
//!
//! [`Kind::Test`] lives in `target/xtask-pg` and serves the other commands when
//! no server accepts connections at `CB_CONN`. [`Kind::Stock`] lives in
//! `target/bench-pg` and runs with the settings `initdb` writes, for
//! `cargo xtask bench --stock-server`. `cargo xtask db --stop` stops both.
//!
//! Each folder contains the data folder (`data`), the Unix socket folder
//! (`socket`), the server log (`postgres.log`), the TCP port of the last
//! start (`port`) and a lock file (`lock`). A later call reuses the running cluster when it still
//! accepts connections on that port. Otherwise the test cluster starts on its
//! old data folder, and the stock cluster on a new one.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::probe;

/// How long the cluster may take to accept connections after `pg_ctl start`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The system user that runs PostgreSQL when this tool runs as root, because
/// `initdb` and `postgres` exit with an error when started as root.
const SYSTEM_USER: &str = "postgres";

/// The longest Unix socket path PostgreSQL accepts, in bytes.
const MAX_SOCKET_PATH: usize = 107;

/// How many lines of the server log an error message shows.
const LOG_TAIL_LINES: usize = 20;

/// The two throwaway clusters, which differ in folder and server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The cluster for tests and scripts. It skips flushing to disk, which
    /// speeds up the many `CREATE DATABASE` calls of the tests.
    Test,
    /// The cluster for benchmarks, with every setting as `initdb` leaves it:
    /// durable commits and autovacuum on. Each start initialises a new data
    /// folder.
    Stock,
}

impl Kind {
    /// Returns the name of the cluster's folder under `target`.
    fn folder(self) -> &'static str {
        match self {
            Kind::Test => "xtask-pg",
            Kind::Stock => "bench-pg",
        }
    }

    /// Returns the `-c name=value` options beyond address, port and socket.
    fn settings(self) -> &'static str {
        match self {
            Kind::Test => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Kind::Stock => "",
        }
    }
}

/// Returns the URL of the running throwaway cluster of `kind`, starting it
/// first when it does not accept connections.
pub(crate) async fn ensure_running(kind: Kind) -> anyhow::Result<String> {
    let layout = Layout::new(kind)?;
    if let Some(url) = layout.running_url().await? {
        return Ok(url);
    }

    let tools = Tools::find()?;
    layout.prepare(&tools)?;
    let _lock = layout.lock()?;
    // Another call may have started the cluster while this one waited.
    if let Some(url) = layout.running_url().await? {
        return Ok(url);
    }
    stop_unreachable_server(&layout, &tools)?;
    if kind == Kind::Stock {
        // NOTE: settings changed with ALTER SYSTEM and databases left by an
        // interrupted bench live in the data folder, so each start of the
        // stock cluster begins from a new one.
        let data = layout.data();
        if data.exists() {
            remove_folder(&data)?;
        }
    }
    init_data_folder(&layout, &tools)?;

    let started = Instant::now();
    let port = free_port()?;
    start_server(&layout, &tools, port)?;
    let url = url_for(port);
    wait_until_ready(&url, &layout, started + START_TIMEOUT).await?;
    eprintln!(
        "started PostgreSQL {} on 127.0.0.1:{port} (log: {}); stop it with `cargo xtask db --stop`",
        tools.major_version,
        layout.log().display()
    );
    Ok(url)
}

/// Returns the URL of the throwaway cluster of `kind` when it runs and
/// accepts connections, without starting it.
pub(crate) async fn running(kind: Kind) -> anyhow::Result<Option<String>> {
    Layout::new(kind)?.running_url().await
}

/// Stops the throwaway cluster of `kind`, keeping its data folder for the
/// next start.
pub(crate) fn stop(kind: Kind) -> anyhow::Result<()> {
    let layout = Layout::new(kind)?;
    if !layout.data().join("postmaster.pid").exists() {
        eprintln!(
            "no throwaway cluster is running in {}",
            layout.root.display()
        );
        return layout.forget_port();
    }

    let tools = Tools::find()?;
    let _lock = layout.lock()?;
    if !is_running(&layout, &tools)? {
        eprintln!(
            "no throwaway cluster is running in {}",
            layout.root.display()
        );
        return layout.forget_port();
    }
    stop_server(&layout, &tools)?;
    eprintln!("stopped the throwaway cluster in {}", layout.root.display());
    layout.forget_port()
}

/// The files of one throwaway cluster.
struct Layout {
    kind: Kind,
    /// `target/xtask-pg` or `target/bench-pg`, which contains everything else.
    root: PathBuf,
}

impl Layout {
    fn new(kind: Kind) -> anyhow::Result<Layout> {
        Ok(Layout {
            kind,
            root: super::target_dir()?.join(kind.folder()),
        })
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    fn log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn port_file(&self) -> PathBuf {
        self.root.join("port")
    }

    /// Returns the URL of the cluster when it accepts connections on the
    /// recorded port.
    async fn running_url(&self) -> anyhow::Result<Option<String>> {
        let Some(port) = self.read_port() else {
            return Ok(None);
        };
        let url = url_for(port);
        if probe(super::parse_conn(&url)?).await.is_err() {
            return Ok(None);
        }
        eprintln!(
            "reusing the throwaway cluster on 127.0.0.1:{port} in {}",
            self.root.display()
        );
        Ok(Some(url))
    }

    /// Takes the lock that lets one `cargo xtask` at a time start or stop the
    /// cluster, waiting while another holds it. Closing the file releases it.
    fn lock(&self) -> anyhow::Result<fs::File> {
        let path = self.root.join("lock");
        let file = fs::File::create(&path)
            .with_context(|| format!("failed to open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {
                eprintln!("waiting for another cargo xtask to start or stop the throwaway cluster");
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("failed to lock {}", path.display()));
            }
        }
        file.lock()
            .with_context(|| format!("failed to lock {}", path.display()))?;
        Ok(file)
    }

    fn read_port(&self) -> Option<u16> {
        fs::read_to_string(self.port_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn record_port(&self, port: u16) -> anyhow::Result<()> {
        let path = self.port_file();
        fs::write(&path, format!("{port}\n"))
            .with_context(|| format!("failed to write {}", path.display()))
    }

    fn forget_port(&self) -> anyhow::Result<()> {
        let path = self.port_file();
        match fs::remove_file(&path) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                Err(error).with_context(|| format!("failed to remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Creates the folders and, as root, hands them to the system user.
    fn prepare(&self, tools: &Tools) -> anyhow::Result<()> {
        let socket_dir = self.socket_dir();
        fs::create_dir_all(&socket_dir)
            .with_context(|| format!("failed to create {}", socket_dir.display()))?;
        if matches!(tools.runner, Runner::CurrentUser) {
            return Ok(());
        }

        let mut chown = Command::new("chown");
        chown.arg("-R").arg(SYSTEM_USER).arg(&self.root);
        run(chown, "chown")?;

        // `test -w` fails when any parent folder is closed to the user too.
        let writable = tools
            .command("test".as_ref(), &["-w".as_ref(), self.root.as_os_str()])?
            .stdin(Stdio::null())
            .status()
            .context("failed to run `test` as the postgres user")?;
        if !writable.success() {
            bail!(
                "the {SYSTEM_USER} user cannot write to {}, so the throwaway cluster cannot run \
                 there. PostgreSQL does not run as root, so this tool runs it as {SYSTEM_USER}, \
                 which needs access to every parent folder. Set CARGO_TARGET_DIR to a folder \
                 {SYSTEM_USER} can reach, or run `cargo xtask db` as a regular user.",
                self.root.display()
            );
        }
        Ok(())
    }
}

/// Returns the URL of the throwaway cluster on `port`.
fn url_for(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Runs `initdb` unless the data folder already contains a cluster of the same
/// major version.
fn init_data_folder(layout: &Layout, tools: &Tools) -> anyhow::Result<()> {
    let data = layout.data();
    match fs::read_to_string(data.join("PG_VERSION")) {
        Ok(version) if version.trim() == tools.major_version => return Ok(()),
        Ok(version) => {
            eprintln!(
                "{} contains a PostgreSQL {} cluster but the binaries in {} are version {}; \
                 recreating it",
                data.display(),
                version.trim(),
                tools.bin_dir.display(),
                tools.major_version
            );
            remove_folder(&data)?;
        }
        Err(_) if data.exists() => {
            eprintln!(
                "{} is not an initialised cluster; recreating it",
                data.display()
            );
            remove_folder(&data)?;
        }
        Err(_) => {}
    }

    eprintln!(
        "initialising a PostgreSQL {} cluster in {}",
        tools.major_version,
        data.display()
    );
    // The C locale exists on every system, and UTF8 encoding works with it.
    let initdb = tools.pg_tool(
        "initdb",
        &[
            "-D".as_ref(),
            data.as_os_str(),
            "--username=postgres".as_ref(),
            "--auth=trust".as_ref(),
            "--encoding=UTF8".as_ref(),
            "--locale=C".as_ref(),
            "--no-sync".as_ref(),
        ],
    )?;
    run(initdb, "initdb")?;
    Ok(())
}

fn remove_folder(path: &Path) -> anyhow::Result<()> {
    fs::remove_dir_all(path).with_context(|| {
        format!(
            "failed to remove {}; remove it by hand and run the command again",
            path.display()
        )
    })
}

/// Stops a server that runs on the data folder but does not accept connections
/// on the recorded port, for example because the port file was deleted.
fn stop_unreachable_server(layout: &Layout, tools: &Tools) -> anyhow::Result<()> {
    if !is_running(layout, tools)? {
        return Ok(());
    }

    eprintln!(
        "stopping the server on {}, which does not accept connections on its recorded port",
        layout.data().display()
    );
    stop_server(layout, tools)
}

/// Stops the server on the data folder with `pg_ctl stop -m fast`, which
/// disconnects clients and rolls back their open transactions.
fn stop_server(layout: &Layout, tools: &Tools) -> anyhow::Result<()> {
    let stop = tools.pg_tool(
        "pg_ctl",
        &[
            "-D".as_ref(),
            layout.data().as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "stop".as_ref(),
        ],
    )?;
    run(stop, "pg_ctl stop")?;
    Ok(())
}

/// Returns whether a server runs on the data folder, from `pg_ctl status`:
/// exit code 0 means running, 3 not running, 4 no usable data folder.
fn is_running(layout: &Layout, tools: &Tools) -> anyhow::Result<bool> {
    let status = tools
        .pg_tool(
            "pg_ctl",
            &["-D".as_ref(), layout.data().as_os_str(), "status".as_ref()],
        )?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("failed to run `pg_ctl status`")?;
    Ok(status.success())
}

/// Returns a TCP port on 127.0.0.1 that is free right now.
///
/// NOTE: another process can take the port between this check and the
/// server's start. The start then fails, and the log names the port.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .context("failed to find a free TCP port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn start_server(layout: &Layout, tools: &Tools, port: u16) -> anyhow::Result<()> {
    layout.record_port(port)?;

    let socket_dir = layout.socket_dir();
    let socket_path_len = socket_dir.as_os_str().len() + format!("/.s.PGSQL.{port}").len();
    // A longer socket path is rejected by the server, so Unix sockets are then
    // turned off with an empty folder list. Clients connect over TCP anyway.
    let socket_dir = if socket_path_len > MAX_SOCKET_PATH {
        String::new()
    } else {
        utf8(&socket_dir)?.to_owned()
    };

    // pg_ctl passes these options to the server through /bin/sh.
    let server_options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} {}",
        shell_quote(&socket_dir),
        layout.kind.settings()
    );
    let timeout = START_TIMEOUT.as_secs().to_string();
    let start = tools.pg_tool(
        "pg_ctl",
        &[
            "-D".as_ref(),
            layout.data().as_os_str(),
            "-l".as_ref(),
            layout.log().as_os_str(),
            "-o".as_ref(),
            server_options.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            timeout.as_ref(),
            "start".as_ref(),
        ],
    )?;
    run(start, "pg_ctl start").map_err(|error| with_log_tail(error, layout))?;
    Ok(())
}

async fn wait_until_ready(url: &str, layout: &Layout, deadline: Instant) -> anyhow::Result<()> {
    let config = super::parse_conn(url)?;
    loop {
        let error = match probe(config.clone()).await {
            Ok(()) => return Ok(()),
            Err(super::Probe::Unreachable(error) | super::Probe::Rejected(error)) => error,
        };
        if Instant::now() >= deadline {
            let error = error.context(format!(
                "the throwaway cluster did not accept connections at {url} within {} s",
                START_TIMEOUT.as_secs()
            ));
            return Err(with_log_tail(error, layout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Adds the end of the server log to `error`, with a hint to start afresh.
fn with_log_tail(error: anyhow::Error, layout: &Layout) -> anyhow::Error {
    let log = fs::read(layout.log())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    anyhow::anyhow!(
        "{error:#}\nLast lines of {}:\n{tail}\n\
         Removing {} makes the next call start from a new cluster.",
        layout.log().display(),
        layout.root.display()
    )
}

/// The PostgreSQL binaries and the user that runs them.
struct Tools {
    bin_dir: PathBuf,
    /// The major version, as written to a data folder's `PG_VERSION` file.
    major_version: String,
    runner: Runner,
}

/// The way commands run: directly, or as [`SYSTEM_USER`] when this tool runs as
/// root.
enum Runner {
    CurrentUser,
    /// `runuser -u postgres -- <command>`, from util-linux.
    RunUser(PathBuf),
    /// `su -s /bin/sh postgres -c '<command>'`, where runuser is missing.
    Su,
}

impl Tools {
    fn find() -> anyhow::Result<Tools> {
        let Some(bin_dir) = find_bin_dir() else {
            bail!(
                "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or under \
                 /usr/lib/postgresql/*/bin. Install them with `apt-get install postgresql` \
                 (Debian/Ubuntu) or `brew install postgresql@15` (macOS), or set CB_CONN to a \
                 running server."
            );
        };

        let version = Command::new(bin_dir.join("pg_ctl"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run {}/pg_ctl", bin_dir.display()))?;
        let version = String::from_utf8_lossy(&version.stdout);
        let Some(major_version) = parse_major_version(&version) else {
            bail!(
                "cannot read the PostgreSQL version from `{}/pg_ctl --version`, which printed {:?}",
                bin_dir.display(),
                version.trim()
            );
        };

        Ok(Tools {
            bin_dir,
            major_version,
            runner: Runner::for_current_user()?,
        })
    }

    /// Returns a command that runs the PostgreSQL tool `name` with `args`.
    fn pg_tool(&self, name: &str, args: &[&OsStr]) -> anyhow::Result<Command> {
        self.command(self.bin_dir.join(name).as_os_str(), args)
    }

    /// Returns a command that runs `program` with `args` as the user that
    /// owns the cluster.
    fn command(&self, program: &OsStr, args: &[&OsStr]) -> anyhow::Result<Command> {
        let mut command = match &self.runner {
            Runner::CurrentUser => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            Runner::RunUser(runuser) => {
                let mut command = Command::new(runuser);
                command
                    .args(["-u", SYSTEM_USER, "--"])
                    .arg(program)
                    .args(args);
                command
            }
            Runner::Su => {
                let mut script = String::from("exec");
                for word in std::iter::once(program).chain(args.iter().copied()) {
                    script.push(' ');
                    script.push_str(&shell_quote(utf8(Path::new(word))?));
                }
                let mut command = Command::new("su");
                command
                    .args(["-s", "/bin/sh", SYSTEM_USER, "-c"])
                    .arg(script);
                command
            }
        };
        // The postgres user may not be allowed to enter this process's working
        // folder, and PostgreSQL tools warn when they cannot change to it.
        command.current_dir("/");
        Ok(command)
    }
}

impl Runner {
    fn for_current_user() -> anyhow::Result<Runner> {
        if !is_root()? {
            return Ok(Runner::CurrentUser);
        }

        let user_exists = Command::new("id")
            .args(["-u", SYSTEM_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !user_exists {
            bail!(
                "PostgreSQL does not run as root, and no `{SYSTEM_USER}` system user exists to run \
                 it. Create one (`useradd --system {SYSTEM_USER}`) or run `cargo xtask db` as a \
                 regular user."
            );
        }

        let runuser = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]);
        Ok(runuser.map_or(Runner::Su, Runner::RunUser))
    }
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("failed to run `id -u` to find the current user")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Finds a folder with `initdb` and `pg_ctl`: the first such folder on PATH,
/// else the newest versioned installation folder.
fn find_bin_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|dir| has_server_tools(dir)) {
        return Some(dir);
    }

    // (parent folder, prefix of the version folder): Debian and Ubuntu
    // packages, then Homebrew's keg-only postgresql@N formulae.
    let installations = [
        ("/usr/lib/postgresql", ""),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
    ];
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix) in installations {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|name| name.strip_prefix(prefix)) else {
                continue;
            };
            let Some(version) = parse_version(version) else {
                continue;
            };
            let bin_dir = entry.path().join("bin");
            if has_server_tools(&bin_dir) {
                found.push((version, bin_dir));
            }
        }
    }
    found
        .into_iter()
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, dir)| dir)
}

fn has_server_tools(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.with_extension("exe").is_file()
}

/// Parses a dotted version such as `15` or `9.6`.
fn parse_version(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// Returns the major version from `pg_ctl --version` output such as
/// `pg_ctl (PostgreSQL) 15.8 (Debian 15.8-1)`: the first number from 10 on,
/// the first two numbers before (`9.6`).
fn parse_major_version(output: &str) -> Option<String> {
    let version = output
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut parts = version.split('.').map(leading_number);
    let first = parts.next()??;
    if first >= 10 {
        Some(first.to_string())
    } else {
        Some(format!("{first}.{}", parts.next()??))
    }
}

/// Parses the digits at the start of `text`, so `17devel` gives 17.
fn leading_number(text: &str) -> Option<u32> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// Quotes `word` for /bin/sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("the path {} is not valid UTF-8", path.display()))
}

/// Runs `command` to completion, failing with its output when it fails.
fn run(mut command: Command, name: &str) -> anyhow::Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {name}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        bail!(
            "{name} failed ({}):\n{}{}",
            output.status,
            stdout.trim_end(),
            stderr.trim_end()
        );
    }
    Ok(output)
}

/// Converts `&str` arguments for [`Tools::command`].
#[cfg(test)]
fn os_args<'a>(args: &'a [&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(OsStr::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_cluster_keeps_initdb_settings() {
        assert_eq!(Kind::Stock.settings(), "");
        assert!(Kind::Test.settings().contains("fsync=off"));
        assert_ne!(Kind::Stock.folder(), Kind::Test.folder());
    }

    #[test]
    fn major_version_modern() {
        assert_eq!(
            parse_major_version("pg_ctl (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(
            parse_major_version("pg_ctl (PostgreSQL) 17devel").as_deref(),
            Some("17")
        );
    }

    #[test]
    fn major_version_before_10() {
        assert_eq!(
            parse_major_version("pg_ctl (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6")
        );
    }

    #[test]
    fn major_version_unreadable() {
        assert_eq!(parse_major_version("pg_ctl 15"), None);
        assert_eq!(parse_major_version(""), None);
    }

    #[test]
    fn version_folders_order_numerically() {
        assert!(parse_version("16") > parse_version("9.6"));
        assert!(parse_version("15") > parse_version("9"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn su_command_quotes_every_word() {
        let tools = Tools {
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            major_version: "15".to_owned(),
            runner: Runner::Su,
        };
        let command = tools
            .pg_tool("pg_ctl", &os_args(&["-D", "/tmp/a b", "status"]))
            .expect("UTF-8 arguments");
        let args: Vec<&OsStr> = command.get_args().collect();
        assert_eq!(command.get_program(), "su");
        assert_eq!(
            args.last().copied(),
            Some(OsStr::new(
                "exec '/usr/lib/postgresql/15/bin/pg_ctl' '-D' '/tmp/a b' 'status'"
            ))
        );
    }
}
