//! The versioned PostgreSQL schema of catbird and the migrator that applies it.
//!
//! The schema is a sequence of numbered versions. Each version is one file in
//! the workspace's `sql/` folder holding an up part and a down part, embedded
//! into this crate at build time. The migrator applies versions in order, one
//! transaction per version, and records each one in the `cb_schema_migrations`
//! table together with a checksum of its file, so a database whose history no
//! longer matches the embedded files is reported instead of silently migrated.
//! A session-level advisory lock serialises migrators, so several processes
//! that start at once all succeed and each version is applied once.
//!
//! Catbird's objects are created in the current schema (the first schema of
//! the connection's `search_path`, normally `public`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut client, connection) =
//!     tokio_postgres::connect("postgres://postgres@127.0.0.1/app", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//!
//! // Applications that embed the schema in their own migrations pin a version
//! // number rather than "latest", so upgrading the crate never changes their
//! // schema by itself.
//! catbird_sql::migrate_up_to(&mut client, 1).await?;
//!
//! for migration in catbird_sql::status(&mut client).await? {
//!     println!("{} {} {:?}", migration.version, migration.name, migration.state);
//! }
//! # Ok(())
//! # }
//! ```

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

mod migrate;

pub use migrate::{
    MigrationState, MigrationStatus, migrate_down_to, migrate_up, migrate_up_to, status,
};

/// The latest schema version this crate knows.
pub const SCHEMA_VERSION: i32 = 11;

/// The table that records applied versions. It is catbird's own, so it never
/// collides with an application's migration table.
pub const VERSION_TABLE: &str = "cb_schema_migrations";

/// One schema version: its number, a short name and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version number, starting at 1.
    pub version: i32,
    /// A short description taken from the file name.
    pub name: &'static str,
    /// The whole file, up and down parts.
    pub source: &'static str,
}

const UP_MARKER: &str = "-- migrate:up";
const DOWN_MARKER: &str = "-- migrate:down";

impl Migration {
    /// The SQL that applies this version.
    pub fn up_sql(&self) -> &'static str {
        let start = self
            .source
            .find(UP_MARKER)
            .map_or(0, |i| i + UP_MARKER.len());
        let end = self.source.find(DOWN_MARKER).unwrap_or(self.source.len());
        &self.source[start..end]
    }

    /// The SQL that reverts this version.
    pub fn down_sql(&self) -> &'static str {
        self.source
            .find(DOWN_MARKER)
            .map_or("", |i| &self.source[i + DOWN_MARKER.len()..])
    }

    /// The hex SHA-256 of the whole file, stored when the version is applied.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.source.as_bytes());
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Every known version, in order. The file names are
/// `NNNN_description.sql`; a unit test checks that this list and the folder
/// agree.
static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "queues",
        source: include_str!("../../../sql/0001_queues.sql"),
    },
    Migration {
        version: 2,
        name: "conditions",
        source: include_str!("../../../sql/0002_conditions.sql"),
    },
    Migration {
        version: 3,
        name: "tasks",
        source: include_str!("../../../sql/0003_tasks.sql"),
    },
    Migration {
        version: 4,
        name: "flows",
        source: include_str!("../../../sql/0004_flows.sql"),
    },
    Migration {
        version: 5,
        name: "gc",
        source: include_str!("../../../sql/0005_gc.sql"),
    },
    Migration {
        version: 6,
        name: "fanout",
        source: include_str!("../../../sql/0006_fanout.sql"),
    },
    Migration {
        version: 7,
        name: "task_batching",
        source: include_str!("../../../sql/0007_task_batching.sql"),
    },
    Migration {
        version: 8,
        name: "wake_requests",
        source: include_str!("../../../sql/0008_wake_requests.sql"),
    },
    Migration {
        version: 9,
        name: "shared_queue_table",
        source: include_str!("../../../sql/0009_shared_queue_table.sql"),
    },
    Migration {
        version: 10,
        name: "ordered_lease_renewal",
        source: include_str!("../../../sql/0010_ordered_lease_renewal.sql"),
    },
    Migration {
        version: 11,
        name: "read_plan_once",
        source: include_str!("../../../sql/0011_read_plan_once.sql"),
    },
];

/// Every known version, in order.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// Errors of the migrator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The requested version is not one this crate knows.
    #[error("catbird: unknown schema version {requested}: this build knows versions 0 to {latest}")]
    UnknownVersion {
        /// The version that was requested.
        requested: i32,
        /// The latest version this crate knows.
        latest: i32,
    },
    /// An applied version's recorded checksum differs from the embedded file.
    #[error(
        "catbird: schema version {version} ({name}) was applied from a different file \
         (recorded checksum {recorded}, embedded {embedded}); applied migrations must not be edited"
    )]
    ChecksumMismatch {
        /// The version whose file changed.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The checksum stored in the database.
        recorded: String,
        /// The checksum of the embedded file.
        embedded: String,
    },
    /// The database records a version newer than this crate knows.
    #[error(
        "catbird: the database is at schema version {applied}, newer than the latest version {latest} \
         this build knows; upgrade catbird"
    )]
    DatabaseNewer {
        /// The newest version recorded in the database.
        applied: i32,
        /// The latest version this crate knows.
        latest: i32,
    },
    /// Applying or reverting one version failed; that version's transaction
    /// was rolled back.
    #[error("catbird: {direction} schema version {version} ({name}) failed")]
    Step {
        /// "applying" or "reverting".
        direction: &'static str,
        /// The version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A database call of the migrator itself failed.
    #[error("catbird: migration bookkeeping failed")]
    Database(#[from] tokio_postgres::Error),
}

/// Returns the highest applied version, 0 when none is.
pub async fn current_version(client: &mut Client) -> Result<i32, MigrateError> {
    let rows = status(client).await?;
    Ok(rows
        .iter()
        .filter(|row| row.state == MigrationState::Applied)
        .map(|row| row.version)
        .max()
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_sql_folder() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql");
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .expect("sql folder is readable")
            .map(|entry| {
                entry
                    .expect("directory entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 name")
            })
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();

        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, embedded);
    }

    #[test]
    fn versions_are_consecutive_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1);
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i32);
    }

    #[test]
    fn every_version_has_up_and_down_parts() {
        for migration in MIGRATIONS {
            assert!(
                migration.source.contains(UP_MARKER),
                "version {} has no up part",
                migration.version
            );
            assert!(
                migration.source.contains(DOWN_MARKER),
                "version {} has no down part",
                migration.version
            );
            assert!(!migration.up_sql().contains(DOWN_MARKER));
            assert!(!migration.down_sql().trim().is_empty());
        }
    }

    #[test]
    fn checksum_is_hex_sha256() {
        let checksum = MIGRATIONS[0].checksum();
        assert_eq!(checksum.len(), 64);
        assert!(checksum.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
