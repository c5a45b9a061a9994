//! Finding a PostgreSQL server for the other commands, and connection-string
//! helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, Config, NoTls};

mod cluster;

pub(crate) use cluster::Kind as ClusterKind;
pub(crate) use cluster::ensure_running as ensure_throwaway;
pub(crate) use cluster::running as throwaway_running;
pub(crate) use cluster::stop as stop_cluster;

/// Stops every throwaway cluster that runs, keeping their data folders.
/// Tries the stock cluster even when stopping the test cluster failed.
pub(crate) fn stop_throwaway() -> anyhow::Result<()> {
    let test = stop_cluster(ClusterKind::Test);
    let stock = stop_cluster(ClusterKind::Stock);
    test.and(stock)
}

/// The server that `cargo xtask` and the tests use when `CB_CONN` is not set.
pub(crate) const DEFAULT_CONN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long one connection attempt may take before the server counts as
/// unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns `CB_CONN`, or [`DEFAULT_CONN`] when it is unset or empty.
pub(crate) fn conn_from_env() -> String {
    std::env::var("CB_CONN")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CONN.to_owned())
}

/// Returns the URL of a PostgreSQL server that accepts connections.
///
/// Uses `CB_CONN` (or [`DEFAULT_CONN`]) when a connection there succeeds.
/// When no server accepts connections there, reuses or starts the throwaway
/// cluster in `target/xtask-pg` and returns its URL. A server that is reached
/// but rejects the connection is an error, because a throwaway cluster would
/// hide the misconfiguration.
pub(crate) async fn ensure_server() -> anyhow::Result<String> {
    let url = conn_from_env();
    let config = parse_conn(&url).context("CB_CONN is invalid")?;
    match probe(config).await {
        Ok(()) => Ok(url),
        Err(Probe::Rejected(error)) => Err(error).with_context(|| {
            format!(
                "the PostgreSQL server at {} rejected the connection; fix CB_CONN \
                 (user, password, database) or the server's pg_hba.conf",
                redact(&url)
            )
        }),
        Err(Probe::Unreachable(error)) => {
            eprintln!(
                "no PostgreSQL server accepts connections at {} ({error:#}); using a throwaway cluster",
                redact(&url)
            );
            cluster::ensure_running(ClusterKind::Test).await
        }
    }
}

/// The reason a connection attempt failed.
pub(crate) enum Probe {
    /// Nothing accepted the connection: refused, timed out or unreachable.
    Unreachable(anyhow::Error),
    /// A server was reached but the connection failed, for example because
    /// authentication failed or the database does not exist.
    Rejected(anyhow::Error),
}

/// Parses a connection string in either form tokio-postgres accepts.
pub(crate) fn parse_conn(url: &str) -> anyhow::Result<Config> {
    url.parse().with_context(|| {
        format!(
            "{} is not a valid PostgreSQL connection string; use the form \
             postgres://USER@HOST:PORT/DATABASE",
            redact(url)
        )
    })
}

/// Opens one connection with `config` and closes it again.
pub(crate) async fn probe(mut config: Config) -> Result<(), Probe> {
    config.connect_timeout(PROBE_TIMEOUT);

    let connected = tokio::time::timeout(PROBE_TIMEOUT, config.connect(NoTls)).await;
    let (client, connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) if is_unreachable(&error) => {
            return Err(Probe::Unreachable(error.into()));
        }
        Ok(Err(error)) => return Err(Probe::Rejected(error.into())),
        Err(_) => {
            return Err(Probe::Unreachable(anyhow::anyhow!(
                "no reply within {} s",
                PROBE_TIMEOUT.as_secs()
            )));
        }
    };

    // Dropping the client ends the connection future, which closes the socket.
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Returns whether `error` means that no server was reached: an I/O error such
/// as "connection refused", as opposed to an error sent by the server.
fn is_unreachable(error: &tokio_postgres::Error) -> bool {
    if error.as_db_error().is_some() {
        return false;
    }
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

/// Connects to `url` and drives the connection on a background task.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.with_context(|| {
        format!(
            "failed to connect to {}; check the URL, or run `cargo xtask db` to start a server",
            redact(url)
        )
    })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("error: the PostgreSQL connection failed: {error}");
        }
    });
    Ok(client)
}

/// Returns the workspace's root folder, the parent of this crate's folder.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Returns cargo's target folder: `CARGO_TARGET_DIR` when set, otherwise
/// `target` in the workspace root.
///
/// NOTE: a `build.target-dir` set in a cargo config file is not read, so the
/// throwaway cluster then lives in `<workspace>/target` all the same.
pub(crate) fn target_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        // Cargo resolves a relative CARGO_TARGET_DIR against its working
        // folder, which `cargo run` passes on to this process.
        Some(dir) => std::path::absolute(&dir).with_context(|| {
            format!(
                "CARGO_TARGET_DIR {} is not a usable path",
                Path::new(&dir).display()
            )
        }),
        None => Ok(workspace_root().join("target")),
    }
}

/// Returns `url` with its password replaced by `***`, for messages.
///
/// Handles both forms tokio-postgres accepts: `postgres://user:password@host/db`
/// and `key=value` pairs with a `password=` key.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = split_scheme(url) else {
        return redact_key_value(url);
    };

    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The user info ends at the last `@`; a password follows the first `:`.
    let user_info_end = authority.rfind('@');
    let password_start = user_info_end.and_then(|at| authority[..at].find(':'));
    match (password_start, user_info_end) {
        (Some(colon), Some(at)) => format!("{scheme}{}:***{}", &authority[..colon], &rest[at..]),
        _ => url.to_owned(),
    }
}

fn redact_key_value(conn: &str) -> String {
    const KEY: &str = "password";

    let mut redacted = String::with_capacity(conn.len());
    let mut copied_up_to = 0;
    while let Some(found) = find_key(&conn[copied_up_to..], KEY) {
        let mut cursor = copied_up_to + found + KEY.len();
        cursor = skip_whitespace(conn, cursor);
        if !conn[cursor..].starts_with('=') {
            redacted.push_str(&conn[copied_up_to..cursor]);
            copied_up_to = cursor;
            continue;
        }
        cursor = skip_whitespace(conn, cursor + 1);

        redacted.push_str(&conn[copied_up_to..cursor]);
        redacted.push_str("***");
        copied_up_to = cursor + value_len(&conn[cursor..]);
    }
    redacted.push_str(&conn[copied_up_to..]);
    redacted
}

fn skip_whitespace(text: &str, from: usize) -> usize {
    let rest = &text[from..];
    from + (rest.len() - rest.trim_start().len())
}

/// Finds `key` at the start of `text` or after whitespace.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(key) {
        let index = from + found;
        let at_word_start = text[..index]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        if at_word_start {
            return Some(index);
        }
        from = index + key.len();
    }
    None
}

/// Returns the length of a `key=value` value: a single-quoted string with
/// backslash escapes, or a run of non-whitespace characters.
fn value_len(value: &str) -> usize {
    let Some(quoted) = value.strip_prefix('\'') else {
        return value.find(char::is_whitespace).unwrap_or(value.len());
    };
    let mut escaped = false;
    for (index, character) in quoted.char_indices() {
        match character {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => return index + 2,
            _ => {}
        }
    }
    value.len()
}

/// Returns `url` pointing at database `name` on the same server, keeping the
/// user, password and parameters.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = split_scheme(url) else {
        // In key=value form the last occurrence of a key wins.
        return format!("{} dbname={name}", url.trim_end());
    };

    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after_authority) = rest.split_at(authority_end);
    let query = after_authority
        .find('?')
        .map_or("", |index| &after_authority[index..]);
    format!("{scheme}{authority}/{name}{query}")
}

/// Splits `postgres://` or `postgresql://` from the rest of a URL.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find(|scheme| url.starts_with(scheme))
        .map(|scheme| url.split_at(scheme.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_with_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db.local:5432/app?sslmode=disable"),
            "postgres://app:***@db.local:5432/app?sslmode=disable"
        );
    }

    #[test]
    fn redact_url_without_password() {
        assert_eq!(redact(DEFAULT_CONN), DEFAULT_CONN);
        assert_eq!(
            redact("postgresql://127.0.0.1/app"),
            "postgresql://127.0.0.1/app"
        );
    }

    #[test]
    fn redact_key_value_password() {
        assert_eq!(
            redact("host=127.0.0.1 user=app password=s3cret dbname=app"),
            "host=127.0.0.1 user=app password=*** dbname=app"
        );
        assert_eq!(
            redact("password = 'a b\\' c' host=x"),
            "password = *** host=x"
        );
        assert_eq!(redact("host=x passwordless=1"), "host=x passwordless=1");
    }

    #[test]
    fn with_database_replaces_path() {
        assert_eq!(
            with_database(DEFAULT_CONN, "catbird_demo"),
            "postgres://postgres@127.0.0.1:5432/catbird_demo"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/old?sslmode=disable", "new"),
            "postgres://u:p@h:1/new?sslmode=disable"
        );
    }

    #[test]
    fn with_database_adds_missing_path() {
        assert_eq!(with_database("postgresql://h", "new"), "postgresql://h/new");
        assert_eq!(
            with_database("postgres://h?connect_timeout=3", "new"),
            "postgres://h/new?connect_timeout=3"
        );
    }

    #[test]
    fn with_database_key_value_form() {
        let url = with_database("host=127.0.0.1 dbname=postgres ", "new");
        assert_eq!(url, "host=127.0.0.1 dbname=postgres dbname=new");
        let config: Config = url.parse().expect("valid key=value string");
        assert_eq!(config.get_dbname(), Some("new"));
    }
}
