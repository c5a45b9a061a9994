//! Applying, reverting and inspecting catbird's schema versions.

use catbird_core::queue::{CreateQueueOpts, SendOpts};
use catbird_core::{Client, Executor};
use catbird_sql::{MigrateError, MigrationState, SCHEMA_VERSION, VERSION_TABLE};
use catbird_tests::TestDb;
use serde_json::json;

/// Lists every relation, function and type of the connection's current
/// schema. A fresh database has none, so after a full revert catbird must
/// leave none behind either.
async fn schema_objects(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT 'relation ' || c.relname FROM pg_class c
              WHERE c.relnamespace = current_schema()::regnamespace
             UNION ALL
             SELECT 'function ' || p.proname FROM pg_proc p
              WHERE p.pronamespace = current_schema()::regnamespace
             UNION ALL
             SELECT 'type ' || t.typname FROM pg_type t
              WHERE t.typnamespace = current_schema()::regnamespace
             ORDER BY 1",
            &[],
        )
        .await
        .expect("list the schema's objects");
    rows.iter().map(|row| row.get(0)).collect()
}

async fn version_table_exists(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&VERSION_TABLE])
        .await
        .expect("look up the version table")
        .get(0)
}

async fn recorded_versions(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            &format!("SELECT version FROM {VERSION_TABLE} ORDER BY version"),
            &[],
        )
        .await
        .expect("read the version table")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("look up a table")
        .get(0)
}

/// Every known version, ascending: what a full migration applies.
fn all_versions() -> Vec<i32> {
    catbird_sql::migrations()
        .iter()
        .map(|migration| migration.version)
        .collect()
}

#[tokio::test]
async fn migrate_up_applies_version_one() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    let applied = catbird_sql::migrate_up(&mut client).await?;

    assert_eq!(applied, all_versions());
    assert_eq!(Some(&SCHEMA_VERSION), all_versions().last());
    let row = client
        .query_one(
            &format!("SELECT version, name, checksum FROM {VERSION_TABLE} WHERE version = 1"),
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i32>("version"), 1);
    assert_eq!(row.get::<_, String>("name"), "queues");
    assert_eq!(
        row.get::<_, String>("checksum"),
        catbird_sql::migrations()[0].checksum()
    );
    assert!(table_exists(&client, "cb_queues").await);
    Ok(())
}

#[tokio::test]
async fn migrate_up_is_idempotent() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    let first = catbird_sql::migrate_up(&mut client).await?;
    let second = catbird_sql::migrate_up(&mut client).await?;
    let up_to_one = catbird_sql::migrate_up_to(&mut client, 1).await?;

    assert_eq!(first, all_versions());
    assert_eq!(second, Vec::<i32>::new());
    assert_eq!(up_to_one, Vec::<i32>::new());
    assert_eq!(recorded_versions(&client).await, all_versions());
    Ok(())
}

#[tokio::test]
async fn status_lists_pending_then_applied() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    let before = catbird_sql::status(&mut client).await?;
    assert_eq!(before.len(), catbird_sql::migrations().len());
    assert_eq!(before[0].version, 1);
    assert_eq!(before[0].name, "queues");
    assert_eq!(before[0].state, MigrationState::Pending);
    assert!(before[0].applied_at.is_none());
    assert!(
        !version_table_exists(&client).await,
        "reading the status must not create the version table"
    );

    catbird_sql::migrate_up(&mut client).await?;

    let after = catbird_sql::status(&mut client).await?;
    assert_eq!(after.len(), catbird_sql::migrations().len());
    assert_eq!(after[0].version, 1);
    assert_eq!(after[0].state, MigrationState::Applied);
    assert!(after[0].applied_at.is_some());
    assert_eq!(after[0].state.to_string(), "applied");
    Ok(())
}

#[tokio::test]
async fn current_version_follows_migrations() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    assert_eq!(catbird_sql::current_version(&mut client).await?, 0);
    catbird_sql::migrate_up(&mut client).await?;
    assert_eq!(
        catbird_sql::current_version(&mut client).await?,
        SCHEMA_VERSION
    );
    catbird_sql::migrate_down_to(&mut client, 0).await?;
    assert_eq!(catbird_sql::current_version(&mut client).await?, 0);
    Ok(())
}

#[tokio::test]
async fn migrate_down_to_zero_removes_every_object() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    let empty = schema_objects(&client).await;
    assert_eq!(empty, Vec::<String>::new(), "a fresh database is empty");

    catbird_sql::migrate_up(&mut client).await?;
    let catbird = Client::new(db.pool.clone());
    catbird
        .create_queue("orders", CreateQueueOpts::default())
        .await?;
    catbird
        .create_queue("emails", CreateQueueOpts::default())
        .await?;
    catbird
        .send(
            "orders",
            &json!({"n": 1}),
            SendOpts::default().concurrency_key("k"),
        )
        .await?;
    assert!(table_exists(&client, "cb_messages").await);

    let reverted = catbird_sql::migrate_down_to(&mut client, 0).await?;

    let mut newest_first = all_versions();
    newest_first.reverse();
    assert_eq!(reverted, newest_first);
    assert_eq!(schema_objects(&client).await, Vec::<String>::new());
    assert!(!version_table_exists(&client).await);
    let status = catbird_sql::status(&mut client).await?;
    assert_eq!(status[0].state, MigrationState::Pending);
    Ok(())
}

#[tokio::test]
async fn migrate_down_on_empty_database_reverts_nothing() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    let reverted = catbird_sql::migrate_down_to(&mut client, 0).await?;

    assert_eq!(reverted, Vec::<i32>::new());
    assert_eq!(schema_objects(&client).await, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn migrate_up_after_full_revert_works() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let mut client = db.connect().await;
    let catbird = Client::new(db.pool.clone());
    catbird
        .create_queue("jobs", CreateQueueOpts::default())
        .await?;
    catbird
        .send("jobs", &json!("old"), SendOpts::default())
        .await?;

    catbird_sql::migrate_down_to(&mut client, 0).await?;
    let applied = catbird_sql::migrate_up(&mut client).await?;

    assert_eq!(applied, all_versions());
    assert_eq!(catbird.list_queues().await?, Vec::new());
    catbird
        .create_queue("jobs", CreateQueueOpts::default())
        .await?;
    let id = catbird
        .send("jobs", &json!("new"), SendOpts::default())
        .await?;
    let messages = catbird
        .read("jobs", 10, std::time::Duration::from_secs(30))
        .await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, id);
    assert_eq!(messages[0].body, json!("new"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_up_applies_version_once() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(db.connect().await);
    }

    let runs = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { catbird_sql::migrate_up(&mut client).await }));
    let mut results = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        results.push(run.await?);
    }

    let mut applied_by = 0;
    for result in results {
        let applied = result?;
        if applied == all_versions() {
            applied_by += 1;
        } else {
            assert_eq!(applied, Vec::<i32>::new());
        }
    }
    assert_eq!(applied_by, 1, "exactly one migrator applies the versions");
    let client = db.connect().await;
    assert_eq!(recorded_versions(&client).await, all_versions());
    Ok(())
}

#[tokio::test]
async fn unknown_version_is_rejected() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;

    let up = catbird_sql::migrate_up_to(&mut client, SCHEMA_VERSION + 1).await;
    let down = catbird_sql::migrate_down_to(&mut client, -1).await;

    assert!(
        matches!(
            up,
            Err(MigrateError::UnknownVersion { requested, latest })
                if requested == SCHEMA_VERSION + 1 && latest == SCHEMA_VERSION
        ),
        "{up:?}"
    );
    assert!(
        matches!(
            down,
            Err(MigrateError::UnknownVersion { requested: -1, .. })
        ),
        "{down:?}"
    );
    assert!(
        !version_table_exists(&client).await,
        "a rejected version must change nothing"
    );
    Ok(())
}

#[tokio::test]
async fn tampered_checksum_is_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let mut client = db.connect().await;
    client
        .execute(
            &format!("UPDATE {VERSION_TABLE} SET checksum = 'tampered' WHERE version = 1"),
            &[],
        )
        .await?;

    let up = catbird_sql::migrate_up(&mut client).await;
    let down = catbird_sql::migrate_down_to(&mut client, 0).await;

    match up {
        Err(MigrateError::ChecksumMismatch {
            version,
            name,
            recorded,
            embedded,
        }) => {
            assert_eq!(version, 1);
            assert_eq!(name, "queues");
            assert_eq!(recorded, "tampered");
            assert_eq!(embedded, catbird_sql::migrations()[0].checksum());
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(
        matches!(down, Err(MigrateError::ChecksumMismatch { version: 1, .. })),
        "{down:?}"
    );
    assert!(
        table_exists(&client, "cb_queues").await,
        "a refused revert must leave the schema in place"
    );
    Ok(())
}

#[tokio::test]
async fn newer_database_is_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let mut client = db.connect().await;
    client
        .execute(
            &format!(
                "INSERT INTO {VERSION_TABLE} (version, name, checksum) VALUES ($1, 'future', 'x')"
            ),
            &[&(SCHEMA_VERSION + 1)],
        )
        .await?;

    let result = catbird_sql::migrate_up(&mut client).await;

    assert!(
        matches!(
            result,
            Err(MigrateError::DatabaseNewer { applied, latest })
                if applied == SCHEMA_VERSION + 1 && latest == SCHEMA_VERSION
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn failed_version_rolls_back() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    // A table of the application that happens to use catbird's name makes
    // version 1 fail halfway through.
    client
        .batch_execute("CREATE TABLE cb_queues (anything integer)")
        .await?;

    let result = catbird_sql::migrate_up(&mut client).await;

    assert!(
        matches!(
            result,
            Err(MigrateError::Step {
                direction: "applying",
                version: 1,
                ..
            })
        ),
        "{result:?}"
    );
    let functions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        functions, 0,
        "the failed version's functions were rolled back"
    );
    assert_eq!(recorded_versions(&client).await, Vec::<i32>::new());

    client.batch_execute("DROP TABLE cb_queues").await?;
    // Another session can migrate, so the failed run released the lock.
    let mut other = db.connect().await;
    let applied = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        catbird_sql::migrate_up(&mut other),
    )
    .await??;
    assert_eq!(applied, all_versions());
    Ok(())
}

#[tokio::test]
async fn migrated_database_runs_client_statements() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    catbird_sql::migrate_up_to(&mut client, 1).await?;

    let rows = client
        .query_rows(catbird_core::sql::LIST_QUEUES, &[])
        .await?;

    assert!(rows.is_empty());
    Ok(())
}

/// Lists `(queue, id, deliveries, concurrency key)` of every stored message
/// through the schema version 9 table.
async fn shared_messages(
    client: &tokio_postgres::Client,
) -> Vec<(String, i64, i32, Option<String>)> {
    client
        .query(
            "SELECT q.name, m.id, m.deliveries, m.concurrency_key
               FROM cb_messages m JOIN cb_queues q ON q.id = m.queue_id
              ORDER BY q.name, m.id",
            &[],
        )
        .await
        .expect("list the shared messages")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

async fn sent_id(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect("send").get(0)
}

#[tokio::test]
async fn stored_messages_survive_the_table_merge() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    catbird_sql::migrate_up_to(&mut client, 8).await?;
    client
        .batch_execute(
            "SELECT cb_create_queue(name => 'orders');
             SELECT cb_create_queue(name => 'emails');
             SELECT cb_send(queue => 'orders', body => '1');
             SELECT cb_send(queue => 'orders', body => '2', concurrency_key => 'k');
             SELECT cb_send(queue => 'orders', body => '3');
             SELECT cb_delete(queue => 'orders', id => 3);
             SELECT * FROM cb_read(queue => 'orders', quantity => 1, hide_for => 60000);
             SELECT cb_send(queue => 'emails', body => '\"e\"');",
        )
        .await?;

    catbird_sql::migrate_up_to(&mut client, 9).await?;

    assert!(!table_exists(&client, "cb_q_orders").await);
    assert_eq!(
        shared_messages(&client).await,
        vec![
            ("emails".to_string(), 1, 0, None),
            ("orders".to_string(), 1, 1, None),
            ("orders".to_string(), 2, 0, Some("k".to_string())),
        ]
    );
    let keyed = "SELECT cb_send(queue => 'orders', body => '4', concurrency_key => 'k')";
    assert_eq!(
        sent_id(&client, keyed).await,
        2,
        "the key still deduplicates"
    );
    let after_merge = sent_id(&client, "SELECT cb_send(queue => 'orders', body => '5')").await;
    assert!(
        after_merge > 3,
        "id {after_merge} reuses an id orders handed out"
    );
    let read: Vec<i64> = client
        .query(
            "SELECT id FROM cb_read(queue => 'orders', quantity => 10, hide_for => 60000)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(read, vec![2, after_merge], "message 1 stays hidden");

    catbird_sql::migrate_down_to(&mut client, 8).await?;

    let orders: Vec<(i64, i32)> = client
        .query("SELECT id, deliveries FROM cb_q_orders ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(orders, vec![(1, 1), (2, 1), (after_merge, 1)]);
    assert_eq!(
        sent_id(&client, keyed).await,
        2,
        "the key survives the revert"
    );
    let after_revert = sent_id(&client, "SELECT cb_send(queue => 'emails', body => '6')").await;
    assert!(
        after_revert > after_merge,
        "ids keep growing after the revert"
    );
    Ok(())
}

/// Describes the schema's functions (full definitions with their settings),
/// columns, indexes and reloptions, so two states of one version compare
/// equal only when every object is the same.
async fn schema_definition(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT 'function ' || pg_get_functiondef(p.oid) FROM pg_proc p
              WHERE p.pronamespace = current_schema()::regnamespace
             UNION ALL
             SELECT format('column %s.%s %s %s', c.relname, a.attname,
                           format_type(a.atttypid, a.atttypmod), a.attnotnull)
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              WHERE c.relnamespace = current_schema()::regnamespace
                AND c.relkind IN ('r', 'v', 'c') AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'index ' || indexdef FROM pg_indexes
              WHERE schemaname = current_schema()
             UNION ALL
             SELECT format('options %s %s', c.relname, c.reloptions) FROM pg_class c
              WHERE c.relnamespace = current_schema()::regnamespace AND c.reloptions IS NOT NULL
             ORDER BY 1",
            &[],
        )
        .await
        .expect("describe the schema");
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test]
async fn each_revert_restores_the_previous_version() -> anyhow::Result<()> {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    let mut on_the_way_up = Vec::new();
    for version in all_versions() {
        catbird_sql::migrate_up_to(&mut client, version).await?;
        on_the_way_up.push(schema_definition(&client).await);
    }

    for version in all_versions().into_iter().rev().skip(1) {
        catbird_sql::migrate_down_to(&mut client, version).await?;
        let restored = schema_definition(&client).await;
        let expected = &on_the_way_up[version as usize - 1];
        let missing: Vec<_> = expected.iter().filter(|d| !restored.contains(d)).collect();
        let extra: Vec<_> = restored.iter().filter(|d| !expected.contains(d)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "reverting to version {version} differs from applying it\nmissing: {missing:#?}\nextra: {extra:#?}"
        );
    }
    Ok(())
}
