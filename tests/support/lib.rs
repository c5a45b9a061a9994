//! Fixtures for catbird's integration tests.
//!
//! [`TestDb::new`] creates a database with a unique name on the server named by
//! `CB_CONN` (default `postgres://postgres@127.0.0.1:5432/postgres`), applies
//! every catbird schema version and builds a small pool on it. Dropping the
//! `TestDb` drops the database, so tests run in parallel and leave nothing
//! behind; databases left by a test process that was killed are dropped by
//! the next test process that starts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;

/// The connection string tests use when `CB_CONN` is not set.
pub const DEFAULT_CONN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Every test database name starts with this prefix.
const DB_PREFIX: &str = "cb_test_";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static LEFTOVERS_DROPPED: OnceCell<()> = OnceCell::const_new();

/// The server connection string tests use.
pub fn server_url() -> String {
    std::env::var("CB_CONN")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_CONN.to_owned())
}

/// A migrated database of one test, dropped when this value is dropped.
pub struct TestDb {
    name: String,
    config: tokio_postgres::Config,
    /// A pool of up to 8 connections to the database.
    pub pool: Pool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    ///
    /// # Panics
    ///
    /// When the server is unreachable or the schema does not apply: a test
    /// cannot run without its database.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        let mut client = db.connect().await;
        catbird_sql::migrate_up(&mut client)
            .await
            .expect("migrate the test database");
        db
    }

    /// Creates a fresh database without applying the schema.
    pub async fn empty() -> TestDb {
        let admin = admin_config();
        LEFTOVERS_DROPPED
            .get_or_init(|| drop_leftovers(admin.clone()))
            .await;

        let name = format!(
            "{DB_PREFIX}{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let client = connect_config(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the test database");

        let mut config = admin.clone();
        config.dbname(&name);
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .expect("build the test pool");
        TestDb { name, config, pool }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection string for this database.
    pub fn url(&self) -> String {
        let mut url = server_url();
        if let Some(slash) = url.rfind('/') {
            if let Some(query) = url[slash..].find('?') {
                url.replace_range(slash + 1..slash + query, &self.name);
            } else {
                url.replace_range(slash + 1.., &self.name);
            }
        }
        url
    }

    /// A new connection outside the pool, for tests that need their own
    /// session (transactions held open, `LISTEN`, killing backends).
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect_config(&self.config).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on a future,
        // so the database is dropped from a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) = admin_config().connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "note: could not drop test database {}; the next test run drops it",
                self.name
            );
        }
    }
}

fn admin_config() -> tokio_postgres::Config {
    let url = server_url();
    url.parse()
        .unwrap_or_else(|error| panic!("CB_CONN is not a valid connection string ({error}): {url}"))
}

async fn connect_config(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let mut last_error = None;
    // The server may be starting (a restart test, or `cargo xtask db` a moment
    // ago): retry for a few seconds before giving up.
    for _ in 0..50 {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(error) => {
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!(
        "cannot connect to PostgreSQL at {}: {}; start it with `cargo xtask db` or set CB_CONN",
        server_url(),
        last_error.map(|e| e.to_string()).unwrap_or_default()
    );
}

/// Drops test databases whose creating process no longer runs. Process ids
/// only mean something on the machine that runs the server, so this only
/// happens for a server on this machine.
async fn drop_leftovers(admin: tokio_postgres::Config) {
    let local = admin.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "127.0.0.1" || name == "localhost" || name == "::1"
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if !local {
        return;
    }
    let client = connect_config(&admin).await;
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1",
            &[&format!("{DB_PREFIX}%")],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name[DB_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if std::path::Path::new("/proc").exists()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after
/// `deadline` with `what` in the message. Tests wait on conditions with this
/// instead of sleeping.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
