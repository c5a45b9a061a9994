//! Applying, reverting and listing schema versions.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio_postgres::Client;

use crate::{MIGRATIONS, MigrateError, Migration, SCHEMA_VERSION, VERSION_TABLE};

/// The advisory lock key that serialises migrators: the bytes of "catbird\0"
/// read as a big-endian integer.
const MIGRATION_LOCK_KEY: i64 = 0x6361_7462_6972_6400;

/// Whether a known version is applied to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// The version is recorded in the version table.
    Applied,
    /// The version is not applied yet.
    Pending,
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
        })
    }
}

/// One row of [`status`].
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// The version number.
    pub version: i32,
    /// Its short name.
    pub name: &'static str,
    /// Applied or pending.
    pub state: MigrationState,
    /// When it was applied.
    pub applied_at: Option<SystemTime>,
}

/// Applies every pending version. Returns the versions applied by this call,
/// empty when the database was already up to date.
pub async fn migrate_up(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    migrate_up_to(client, SCHEMA_VERSION).await
}

/// Applies pending versions up to and including `target`. Returns the versions
/// applied by this call. Applying a version that is already applied is a
/// no-op, so the call is idempotent.
pub async fn migrate_up_to(client: &mut Client, target: i32) -> Result<Vec<i32>, MigrateError> {
    check_known(target)?;
    lock(client).await?;
    let result = apply_up_to(client, target).await;
    unlock(client).await?;
    result
}

/// Reverts applied versions above `target`, newest first. `0` removes every
/// catbird object, with every queue and its messages. Returns the versions
/// reverted by this call.
pub async fn migrate_down_to(client: &mut Client, target: i32) -> Result<Vec<i32>, MigrateError> {
    check_known(target)?;
    lock(client).await?;
    let result = revert_down_to(client, target).await;
    unlock(client).await?;
    result
}

/// Lists every known version with its state, ordered by version.
pub async fn status(client: &mut Client) -> Result<Vec<MigrationStatus>, MigrateError> {
    let applied = applied_versions(client).await?;
    Ok(MIGRATIONS
        .iter()
        .map(|migration| {
            let record = applied.get(&migration.version);
            MigrationStatus {
                version: migration.version,
                name: migration.name,
                state: if record.is_some() {
                    MigrationState::Applied
                } else {
                    MigrationState::Pending
                },
                applied_at: record.map(|record| record.applied_at),
            }
        })
        .collect())
}

struct AppliedRecord {
    checksum: String,
    applied_at: SystemTime,
}

fn check_known(target: i32) -> Result<(), MigrateError> {
    if (0..=SCHEMA_VERSION).contains(&target) {
        Ok(())
    } else {
        Err(MigrateError::UnknownVersion {
            requested: target,
            latest: SCHEMA_VERSION,
        })
    }
}

async fn lock(client: &Client) -> Result<(), MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    Ok(())
}

async fn unlock(client: &Client) -> Result<(), MigrateError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    Ok(())
}

async fn ensure_version_table(client: &Client) -> Result<(), MigrateError> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"
        ))
        .await?;
    Ok(())
}

/// Reads the version table; an absent table means nothing is applied.
async fn applied_versions(client: &Client) -> Result<BTreeMap<i32, AppliedRecord>, MigrateError> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&VERSION_TABLE])
        .await?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }

    let rows = client
        .query(
            &format!("SELECT version, checksum, applied_at FROM {VERSION_TABLE}"),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                AppliedRecord {
                    checksum: row.get(1),
                    applied_at: row.get(2),
                },
            )
        })
        .collect())
}

/// Checks that the recorded history matches the embedded files.
fn verify_history(applied: &BTreeMap<i32, AppliedRecord>) -> Result<(), MigrateError> {
    if let Some(&newest) = applied.keys().next_back() {
        if newest > SCHEMA_VERSION {
            return Err(MigrateError::DatabaseNewer {
                applied: newest,
                latest: SCHEMA_VERSION,
            });
        }
    }
    for migration in MIGRATIONS {
        if let Some(record) = applied.get(&migration.version) {
            let embedded = migration.checksum();
            if record.checksum != embedded {
                return Err(MigrateError::ChecksumMismatch {
                    version: migration.version,
                    name: migration.name,
                    recorded: record.checksum.clone(),
                    embedded,
                });
            }
        }
    }
    Ok(())
}

async fn apply_up_to(client: &mut Client, target: i32) -> Result<Vec<i32>, MigrateError> {
    ensure_version_table(client).await?;
    let applied = applied_versions(client).await?;
    verify_history(&applied)?;

    let mut done = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= target) {
        if applied.contains_key(&migration.version) {
            continue;
        }
        apply_one(client, migration).await?;
        done.push(migration.version);
    }
    Ok(done)
}

async fn apply_one(client: &mut Client, migration: &Migration) -> Result<(), MigrateError> {
    let step_error = |source| MigrateError::Step {
        direction: "applying",
        version: migration.version,
        name: migration.name,
        source,
    };

    let transaction = client.transaction().await?;
    transaction
        .batch_execute(migration.up_sql())
        .await
        .map_err(step_error)?;
    transaction
        .execute(
            &format!("INSERT INTO {VERSION_TABLE} (version, name, checksum) VALUES ($1, $2, $3)"),
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .await?;
    transaction.commit().await?;

    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied catbird schema version"
    );
    Ok(())
}

async fn revert_down_to(client: &mut Client, target: i32) -> Result<Vec<i32>, MigrateError> {
    let applied = applied_versions(client).await?;
    verify_history(&applied)?;

    let mut done = Vec::new();
    for migration in MIGRATIONS.iter().rev().filter(|m| m.version > target) {
        if !applied.contains_key(&migration.version) {
            continue;
        }
        revert_one(client, migration).await?;
        done.push(migration.version);
    }

    if target == 0 && applied_versions(client).await?.is_empty() {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {VERSION_TABLE}"))
            .await?;
    }
    Ok(done)
}

async fn revert_one(client: &mut Client, migration: &Migration) -> Result<(), MigrateError> {
    let step_error = |source| MigrateError::Step {
        direction: "reverting",
        version: migration.version,
        name: migration.name,
        source,
    };

    let transaction = client.transaction().await?;
    transaction
        .batch_execute(migration.down_sql())
        .await
        .map_err(step_error)?;
    transaction
        .execute(
            &format!("DELETE FROM {VERSION_TABLE} WHERE version = $1"),
            &[&migration.version],
        )
        .await?;
    transaction.commit().await?;

    tracing::info!(
        version = migration.version,
        name = migration.name,
        "reverted catbird schema version"
    );
    Ok(())
}
