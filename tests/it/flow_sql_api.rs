//! The flow functions called from plain SQL with named arguments, as an
//! application without the Rust client or worker calls them.

use std::time::Duration;

use catbird_core::{SQLSTATE_INVALID_ARGUMENT, SQLSTATE_NOT_DEFINED, SQLSTATE_NOT_FOUND};
use catbird_tests::TestDb;
use serde_json::{Value, json};
use tokio_postgres::{Client, Row};

use crate::helpers::{sqlstate, wait_for_lock_wait};

/// The order flow of these tests: `notify` ignores the output of `validate`,
/// and `ship` depends on `notify` as an optional dependency.
const ORDER_STEPS: &str = r#"[
    {"name": "validate", "description": "checks the order"},
    {"name": "charge", "depends_on": ["validate"]},
    {"name": "notify", "depends_on": [{"name": "validate", "ignore_output": true}]},
    {"name": "ship", "depends_on": [{"name": "charge"}, {"name": "notify", "optional": true}]}
]"#;

/// Creates a database with the order flow and a plain connection to it.
async fn db_with_orders() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .execute(
            "SELECT cb_create_flow(name => 'orders', steps => $1::text::jsonb)",
            &[&ORDER_STEPS],
        )
        .await
        .expect("create the order flow from SQL");
    (db, client)
}

async fn one(client: &Client, sql: &str) -> Row {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

async fn rows(client: &Client, sql: &str) -> Vec<Row> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

async fn run_orders(client: &Client, input: &str) -> i64 {
    one(
        client,
        &format!("SELECT cb_run_flow(name => 'orders', input => '{input}')"),
    )
    .await
    .get(0)
}

/// Claims runs of `step` with a 30 s lease.
async fn claim(client: &Client, step: &str) -> Vec<Row> {
    rows(
        client,
        &format!(
            "SELECT * FROM cb_claim_steps(flow => 'orders', step => '{step}', quantity => 10, hide_for => 30000)"
        ),
    )
    .await
}

async fn complete(client: &Client, id: i64, attempt: i32, output: &str) -> bool {
    one(
        client,
        &format!(
            "SELECT cb_complete_step(flow => 'orders', id => {id}, attempt => {attempt}, output => '{output}')"
        ),
    )
    .await
    .get(0)
}

async fn run_status(client: &Client, id: i64) -> String {
    one(
        client,
        &format!("SELECT status FROM cb_get_flow_run(flow => 'orders', id => {id})"),
    )
    .await
    .get(0)
}

/// Returns the status of every step of a run, in definition order.
async fn step_statuses(client: &Client, id: i64) -> Vec<(String, String)> {
    rows(
        client,
        &format!(
            "SELECT step_name, status FROM cb_get_flow_run_steps(flow => 'orders', run_id => {id})"
        ),
    )
    .await
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Runs `sql`, which must fail, and returns the SQLSTATE and message.
async fn failure_of(client: &Client, sql: &str) -> (String, String) {
    let error = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} should fail"));
    let code = sqlstate(&error).unwrap_or("none").to_owned();
    let message = error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| error.to_string());
    (code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_create_flow_stores_the_graph() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    client
        .execute(
            "SELECT cb_create_flow(name => 'orders', steps => $1::text::jsonb)",
            &[&ORDER_STEPS],
        )
        .await?;

    let steps = rows(
        &client,
        "SELECT step_name, position, description, depends_on, inputs, optional, dependents
         FROM cb_flow_steps WHERE flow_name = 'orders' ORDER BY position",
    )
    .await;
    let flow = one(
        &client,
        "SELECT output_priority, retention_period, has_on_fail, description FROM cb_flows WHERE name = 'orders'",
    )
    .await;
    let row_of = |index: usize| {
        let row = &steps[index];
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, Vec<String>>(3),
            row.get::<_, Vec<String>>(4),
            row.get::<_, Vec<String>>(5),
            row.get::<_, Vec<String>>(6),
        )
    };
    let strings = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();

    assert_eq!(steps.len(), 4);
    assert_eq!(
        row_of(0),
        (
            "validate".to_owned(),
            1,
            vec![],
            vec![],
            vec![],
            strings(&["charge", "notify"])
        )
    );
    assert_eq!(
        steps[0].get::<_, Option<String>>(2).as_deref(),
        Some("checks the order")
    );
    assert_eq!(
        row_of(1),
        (
            "charge".to_owned(),
            2,
            strings(&["validate"]),
            strings(&["validate"]),
            vec![],
            strings(&["ship"])
        )
    );
    assert_eq!(
        row_of(2),
        (
            "notify".to_owned(),
            3,
            strings(&["validate"]),
            vec![],
            vec![],
            strings(&["ship"])
        )
    );
    assert_eq!(
        row_of(3),
        (
            "ship".to_owned(),
            4,
            strings(&["charge", "notify"]),
            strings(&["charge", "notify"]),
            strings(&["notify"]),
            vec![]
        )
    );
    assert_eq!(flow.get::<_, Vec<String>>(0), ["ship"]);
    assert_eq!(flow.get::<_, i64>(1), 0);
    assert!(!flow.get::<_, bool>(2));
    assert_eq!(flow.get::<_, Option<String>>(3), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_create_flow_rejects_malformed_steps() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    let cases = [
        (r#"{}"#, "steps must be a JSON array"),
        (r#"[]"#, "a flow needs at least one step"),
        (r#"["a"]"#, "each step must be a JSON object"),
        (
            r#"[{"name": "a", "retries": 3}]"#,
            "step \"a\" has an unknown field \"retries\"",
        ),
        (
            r#"[{"name": "a", "kind": "batch"}]"#,
            "step \"a\" has kind \"batch\" (expected normal, mapper, generator or reducer)",
        ),
        (
            r#"[{"name": "a", "kind": "mapper"}]"#,
            "mapper step \"a\" needs a map source",
        ),
        (
            r#"[{"name": "a", "signal": "yes"}]"#,
            "step \"a\": signal must be true or false",
        ),
        (
            r#"[{"name": "a"}, {"name": "b", "depends_on": "a"}]"#,
            "step \"b\": depends_on must be a JSON array",
        ),
        (
            r#"[{"name": "a"}, {"name": "b", "depends_on": [1]}]"#,
            "step \"b\": each dependency must be a step name or an object with \"name\"",
        ),
        (
            r#"[{"name": "a"}, {"name": "b", "depends_on": [{"optional": true}]}]"#,
            "step \"b\": a dependency has no name",
        ),
    ];
    for (steps, expected) in cases {
        let (code, message) = failure_of(
            &client,
            &format!("SELECT cb_create_flow(name => 'broken', steps => '{steps}')"),
        )
        .await;
        assert_eq!(code, SQLSTATE_INVALID_ARGUMENT, "{steps}");
        assert!(
            message.contains(expected),
            "{steps}: expected \"{expected}\" in \"{message}\""
        );
    }
    let stored: i64 = one(&client, "SELECT count(*) FROM cb_flows").await.get(0);
    assert_eq!(stored, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_run_claim_and_complete() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let run = run_orders(&client, r#"{"id": 1, "amount": 20}"#).await;

    let validate = claim(&client, "validate").await;
    let too_early = claim(&client, "charge").await;
    assert_eq!(validate.len(), 1);
    assert_eq!(too_early.len(), 0);
    let validate_id: i64 = validate[0].get("id");
    assert_eq!(validate[0].get::<_, i64>("flow_run_id"), run);
    assert_eq!(validate[0].get::<_, i32>("attempts"), 1);
    assert_eq!(
        validate[0].get::<_, Value>("input"),
        json!({"id": 1, "amount": 20})
    );
    assert_eq!(validate[0].get::<_, Value>("dependencies"), json!({}));
    assert_eq!(validate[0].get::<_, Option<Value>>("signal_input"), None);

    assert!(!complete(&client, validate_id, 2, r#"{"ok": true}"#).await);
    assert!(complete(&client, validate_id, 1, r#"{"ok": true}"#).await);
    assert!(!complete(&client, validate_id, 1, r#"{"ok": false}"#).await);

    let charge = claim(&client, "charge").await;
    let notify = claim(&client, "notify").await;
    assert_eq!(
        charge[0].get::<_, Value>("dependencies"),
        json!({"validate": {"ok": true}})
    );
    assert_eq!(notify[0].get::<_, Value>("dependencies"), json!({}));
    assert!(complete(&client, charge[0].get("id"), 1, r#"{"charged": 20}"#).await);
    assert_eq!(claim(&client, "ship").await.len(), 0);
    assert!(complete(&client, notify[0].get("id"), 1, r#""sent""#).await);

    let ship = claim(&client, "ship").await;
    assert_eq!(
        ship[0].get::<_, Value>("dependencies"),
        json!({"charge": {"charged": 20}, "notify": "sent"})
    );
    assert_eq!(run_status(&client, run).await, "started");
    assert!(complete(&client, ship[0].get("id"), 1, r#"{"shipped": true}"#).await);

    let finished = one(
        &client,
        &format!("SELECT status, output, completed_at IS NOT NULL FROM cb_get_flow_run(flow => 'orders', id => {run})"),
    )
    .await;
    assert_eq!(finished.get::<_, String>(0), "completed");
    assert_eq!(finished.get::<_, Value>(1), json!({"shipped": true}));
    assert!(finished.get::<_, bool>(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_expired_lease_fences_the_old_attempt() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    run_orders(&client, "{}").await;

    let first = rows(
        &client,
        "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'validate', quantity => 1, hide_for => 1)",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = claim(&client, "validate").await;
    let id: i64 = first[0].get("id");

    assert_eq!(second.len(), 1);
    assert_eq!(second[0].get::<_, i64>("id"), id);
    assert_eq!(second[0].get::<_, i32>("attempts"), 2);
    assert!(!complete(&client, id, 1, r#""stale""#).await);
    assert!(complete(&client, id, 2, r#""fresh""#).await);
    let output: Value = one(
        &client,
        &format!("SELECT output FROM cb_s_orders WHERE id = {id}"),
    )
    .await
    .get(0);
    assert_eq!(output, json!("fresh"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_fail_step_retries_then_fails_the_run() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let run = run_orders(&client, r#"{"id": 5}"#).await;
    let id: i64 = claim(&client, "validate").await[0].get("id");

    let retried: Option<String> = one(
        &client,
        &format!("SELECT cb_fail_step(flow => 'orders', id => {id}, attempt => 1, error_message => 'try again', retry_delay => 0)"),
    )
    .await
    .get(0);
    let again = claim(&client, "validate").await;
    let stale: Option<String> = one(
        &client,
        &format!("SELECT cb_fail_step(flow => 'orders', id => {id}, attempt => 1, error_message => 'stale')"),
    )
    .await
    .get(0);
    let failed: Option<String> = one(
        &client,
        &format!("SELECT cb_fail_step(flow => 'orders', id => {id}, attempt => 2, error_message => 'gave up')"),
    )
    .await
    .get(0);
    let after: Option<String> = one(
        &client,
        &format!("SELECT cb_fail_step(flow => 'orders', id => {id}, attempt => 2, error_message => 'late')"),
    )
    .await
    .get(0);
    let info = one(
        &client,
        &format!(
            "SELECT status, error_message, failed_step_name, failed_step_input, failed_step_attempts,
                    failed_at IS NOT NULL, on_fail_status
             FROM cb_get_flow_run(flow => 'orders', id => {run})"
        ),
    )
    .await;

    assert_eq!(retried.as_deref(), Some("started"));
    assert_eq!(again[0].get::<_, i32>("attempts"), 2);
    assert_eq!(stale, None);
    assert_eq!(failed.as_deref(), Some("failed"));
    assert_eq!(after, None);
    assert_eq!(info.get::<_, String>(0), "failed");
    assert_eq!(info.get::<_, String>(1), "gave up");
    assert_eq!(info.get::<_, String>(2), "validate");
    assert_eq!(info.get::<_, Value>(3), json!({"id": 5}));
    assert_eq!(info.get::<_, i32>(4), 2);
    assert!(info.get::<_, bool>(5));
    assert_eq!(info.get::<_, Option<String>>(6), None);
    assert_eq!(
        step_statuses(&client, run).await,
        pairs(&[
            ("validate", "failed"),
            ("charge", "failed"),
            ("notify", "failed"),
            ("ship", "failed"),
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_signal_flow_delivers_once() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .batch_execute(
            r#"SELECT cb_create_flow(name => 'approvals', steps => '[
                   {"name": "request"},
                   {"name": "approve", "depends_on": ["request"], "signal": true},
                   {"name": "gate", "signal": true}
               ]')"#,
        )
        .await?;
    let run: i64 = one(
        &client,
        "SELECT cb_run_flow(name => 'approvals', input => '{}')",
    )
    .await
    .get(0);
    let signal = |step: &str, run_id: i64| {
        format!(
            "SELECT cb_signal_flow(flow => 'approvals', run_id => {run_id}, step => '{step}', input => '{{\"ok\": true}}')"
        )
    };

    let gate_status: String = one(
        &client,
        &format!("SELECT status FROM cb_get_flow_step(flow => 'approvals', run_id => {run}, step => 'gate')"),
    )
    .await
    .get(0);
    let delivered: bool = one(&client, &signal("approve", run)).await.get(0);
    let second: bool = one(&client, &signal("approve", run)).await.get(0);
    let plain: bool = one(&client, &signal("request", run)).await.get(0);
    let unknown_step: bool = one(&client, &signal("nope", run)).await.get(0);
    let unknown_run: bool = one(&client, &signal("approve", 999_999)).await.get(0);
    let gate: bool = one(&client, &signal("gate", run)).await.get(0);
    let claimed_gate = rows(
        &client,
        "SELECT * FROM cb_claim_steps(flow => 'approvals', step => 'gate', quantity => 1, hide_for => 30000)",
    )
    .await;
    let approve_status: String = one(
        &client,
        &format!("SELECT status FROM cb_get_flow_step(flow => 'approvals', run_id => {run}, step => 'approve')"),
    )
    .await
    .get(0);

    assert_eq!(gate_status, "waiting_for_signal");
    assert!(delivered);
    assert!(!second);
    assert!(!plain);
    assert!(!unknown_step);
    assert!(!unknown_run);
    assert!(gate);
    assert_eq!(
        claimed_gate[0].get::<_, Option<Value>>("signal_input"),
        Some(json!({"ok": true}))
    );
    assert_eq!(approve_status, "waiting_for_dependencies");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cancel_flow_waits_for_running_step() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let run = run_orders(&client, "{}").await;
    let id: i64 = claim(&client, "validate").await[0].get("id");

    let canceled: bool = one(
        &client,
        &format!("SELECT cb_cancel_flow(name => 'orders', id => {run}, reason => 'stop')"),
    )
    .await
    .get(0);
    let status = run_status(&client, run).await;
    let steps = step_statuses(&client, run).await;
    let wrong_attempt: bool = one(
        &client,
        &format!("SELECT cb_cancel_step_run(flow => 'orders', id => {id}, attempt => 2)"),
    )
    .await
    .get(0);
    let stopped: bool = one(
        &client,
        &format!("SELECT cb_cancel_step_run(flow => 'orders', id => {id}, attempt => 1)"),
    )
    .await
    .get(0);
    let info = one(
        &client,
        &format!(
            "SELECT status, cancel_reason, cancel_requested_at IS NOT NULL, canceled_at IS NOT NULL
             FROM cb_get_flow_run(flow => 'orders', id => {run})"
        ),
    )
    .await;
    let again: bool = one(
        &client,
        &format!("SELECT cb_cancel_flow(name => 'orders', id => {run}, reason => 'other')"),
    )
    .await
    .get(0);
    let reason_after: Option<String> = one(
        &client,
        &format!("SELECT cancel_reason FROM cb_get_flow_run(flow => 'orders', id => {run})"),
    )
    .await
    .get(0);
    let unknown: bool = one(
        &client,
        "SELECT cb_cancel_flow(name => 'orders', id => 999999)",
    )
    .await
    .get(0);

    assert!(canceled);
    assert_eq!(status, "canceling");
    assert_eq!(
        steps,
        pairs(&[
            ("validate", "started"),
            ("charge", "canceled"),
            ("notify", "canceled"),
            ("ship", "canceled"),
        ])
    );
    assert!(!wrong_attempt);
    assert!(stopped);
    assert_eq!(info.get::<_, String>(0), "canceled");
    assert_eq!(info.get::<_, Option<String>>(1).as_deref(), Some("stop"));
    assert!(info.get::<_, bool>(2));
    assert!(info.get::<_, bool>(3));
    assert!(again);
    assert_eq!(reason_after.as_deref(), Some("stop"));
    assert!(!unknown);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_results_of_canceling_runs_are_discarded() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let completed_run = run_orders(&client, "{}").await;
    let completed_step: i64 = claim(&client, "validate").await[0].get("id");
    let failed_run = run_orders(&client, "{}").await;
    let failed_step: i64 = claim(&client, "validate").await[0].get("id");
    for run in [completed_run, failed_run] {
        client
            .batch_execute(&format!(
                "SELECT cb_cancel_flow(name => 'orders', id => {run})"
            ))
            .await?;
    }

    let completed = complete(&client, completed_step, 1, r#""done""#).await;
    let failed: Option<String> = one(
        &client,
        &format!("SELECT cb_fail_step(flow => 'orders', id => {failed_step}, attempt => 1, error_message => 'boom')"),
    )
    .await
    .get(0);
    let completed_info = one(
        &client,
        &format!(
            "SELECT status, output FROM cb_get_flow_run(flow => 'orders', id => {completed_run})"
        ),
    )
    .await;

    assert!(!completed);
    assert_eq!(completed_info.get::<_, String>(0), "canceled");
    assert_eq!(completed_info.get::<_, Option<Value>>(1), None);
    assert_eq!(
        step_statuses(&client, completed_run).await[0],
        ("validate".to_owned(), "canceled".to_owned())
    );
    assert_eq!(failed.as_deref(), Some("canceled"));
    assert_eq!(run_status(&client, failed_run).await, "canceled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_claims_skip_runs_that_are_not_started() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let canceling = run_orders(&client, "{}").await;
    rows(
        &client,
        "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'validate', quantity => 1, hide_for => 1)",
    )
    .await;
    client
        .batch_execute(&format!(
            "SELECT cb_cancel_flow(name => 'orders', id => {canceling})"
        ))
        .await?;
    let expired: i64 = one(
        &client,
        "SELECT cb_run_flow(name => 'orders', input => '{}', expires_at => now() - interval '1 second')",
    )
    .await
    .get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;

    let claimed = claim(&client, "validate").await;

    assert_eq!(run_status(&client, canceling).await, "canceling");
    assert_eq!(run_status(&client, expired).await, "started");
    assert_eq!(claimed.len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_claims_follow_priority_then_age() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let older = run_orders(&client, "{}").await;
    let urgent: i64 = one(
        &client,
        "SELECT cb_run_flow(name => 'orders', input => '{}', priority => 5)",
    )
    .await
    .get(0);
    let newer = run_orders(&client, "{}").await;

    let first = rows(
        &client,
        "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'validate', quantity => 1, hide_for => 30000)",
    )
    .await;
    let rest = claim(&client, "validate").await;
    let rest_runs: Vec<i64> = rest.iter().map(|row| row.get("flow_run_id")).collect();

    assert_eq!(first[0].get::<_, i64>("flow_run_id"), urgent);
    assert_eq!(first[0].get::<_, i32>("priority"), 5);
    assert_eq!(rest_runs, [older, newer]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_complete_flow_early_wins_once() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let run = run_orders(&client, "{}").await;
    let id: i64 = claim(&client, "validate").await[0].get("id");
    let early = |output: &str| {
        format!(
            "SELECT cb_complete_flow_early(flow => 'orders', run_id => {run}, output => '{output}', reason => 'shortcut')"
        )
    };

    let won: bool = one(&client, &early(r#"{"early": true}"#)).await.get(0);
    let second: bool = one(&client, &early(r#"{"early": 2}"#)).await.get(0);
    let late_step = complete(&client, id, 1, r#""late""#).await;
    let canceled: bool = one(
        &client,
        &format!("SELECT cb_cancel_flow(name => 'orders', id => {run})"),
    )
    .await
    .get(0);
    let info = one(
        &client,
        &format!("SELECT status, output, cancel_reason FROM cb_get_flow_run(flow => 'orders', id => {run})"),
    )
    .await;
    let unknown: bool = one(
        &client,
        "SELECT cb_complete_flow_early(flow => 'orders', run_id => 999999, output => '1')",
    )
    .await
    .get(0);

    assert!(won);
    assert!(!second);
    assert!(!late_step);
    assert!(canceled);
    assert_eq!(info.get::<_, String>(0), "completed");
    assert_eq!(info.get::<_, Value>(1), json!({"early": true}));
    assert_eq!(
        info.get::<_, Option<String>>(2).as_deref(),
        Some("shortcut")
    );
    assert_eq!(
        step_statuses(&client, run).await,
        pairs(&[
            ("validate", "canceled"),
            ("charge", "canceled"),
            ("notify", "canceled"),
            ("ship", "canceled"),
        ])
    );
    assert!(!unknown);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_inspection_functions() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let first = run_orders(&client, r#"{"n": 1}"#).await;
    let second = run_orders(&client, r#"{"n": 2}"#).await;
    let third = run_orders(&client, r#"{"n": 3}"#).await;

    let latest: Vec<i64> = rows(
        &client,
        "SELECT id FROM cb_list_flow_runs(flow => 'orders', quantity => 2)",
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect();
    let all: Vec<i64> = rows(
        &client,
        "SELECT id FROM cb_list_flow_runs(flow => 'orders')",
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect();
    let run = one(
        &client,
        &format!("SELECT id, input, status, priority FROM cb_get_flow_run(flow => 'orders', id => {second})"),
    )
    .await;
    let missing_run = rows(
        &client,
        "SELECT * FROM cb_get_flow_run(flow => 'orders', id => 999999)",
    )
    .await;
    let steps: Vec<(String, i32)> = rows(
        &client,
        &format!("SELECT step_name, position FROM cb_get_flow_run_steps(flow => 'orders', run_id => {first})"),
    )
    .await
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let charge = one(
        &client,
        &format!(
            "SELECT step_name, status, attempts, flow_run_id FROM cb_get_flow_step(flow => 'orders', run_id => {first}, step => 'charge')"
        ),
    )
    .await;
    let missing_step = rows(
        &client,
        &format!(
            "SELECT * FROM cb_get_flow_step(flow => 'orders', run_id => {first}, step => 'nope')"
        ),
    )
    .await;

    assert_eq!(latest, [third, second]);
    assert_eq!(all, [third, second, first]);
    assert_eq!(run.get::<_, i64>(0), second);
    assert_eq!(run.get::<_, Value>(1), json!({"n": 2}));
    assert_eq!(run.get::<_, String>(2), "started");
    assert_eq!(run.get::<_, i32>(3), 0);
    assert_eq!(missing_run.len(), 0);
    assert_eq!(
        steps,
        [
            ("validate".to_owned(), 1),
            ("charge".to_owned(), 2),
            ("notify".to_owned(), 3),
            ("ship".to_owned(), 4),
        ]
    );
    assert_eq!(charge.get::<_, String>(0), "charge");
    assert_eq!(charge.get::<_, String>(1), "waiting_for_dependencies");
    assert_eq!(charge.get::<_, i32>(2), 0);
    assert_eq!(charge.get::<_, i64>(3), first);
    assert_eq!(missing_step.len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_wait_flow_output() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let running = run_orders(&client, "{}").await;
    let done = run_orders(&client, "{}").await;
    client
        .batch_execute(&format!(
            "SELECT cb_complete_flow_early(flow => 'orders', run_id => {done}, output => '\"ok\"')"
        ))
        .await?;

    let pending = rows(
        &client,
        &format!("SELECT * FROM cb_wait_flow_output(flow => 'orders', id => {running}, poll_for => 100, poll_interval => 20)"),
    )
    .await;
    let finished = one(
        &client,
        &format!("SELECT status, output FROM cb_wait_flow_output(flow => 'orders', id => {done}, poll_for => 100, poll_interval => 20)"),
    )
    .await;
    let (unknown_code, unknown_message) = failure_of(
        &client,
        "SELECT * FROM cb_wait_flow_output(flow => 'orders', id => 999999, poll_for => 100, poll_interval => 20)",
    )
    .await;
    let (interval_code, interval_message) = failure_of(
        &client,
        &format!("SELECT * FROM cb_wait_flow_output(flow => 'orders', id => {running}, poll_for => 100, poll_interval => 100)"),
    )
    .await;

    assert_eq!(pending.len(), 0);
    assert_eq!(finished.get::<_, String>(0), "completed");
    assert_eq!(finished.get::<_, Value>(1), json!("ok"));
    assert_eq!(unknown_code, SQLSTATE_NOT_FOUND);
    assert!(
        unknown_message.contains("flow run 999999 of flow \"orders\" not found"),
        "{unknown_message}"
    );
    assert_eq!(interval_code, SQLSTATE_INVALID_ARGUMENT);
    assert!(
        interval_message.contains("poll_interval (100 ms) must be less than poll_for (100 ms)"),
        "{interval_message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_bad_calls_raise_sqlstates() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let cases = [
        (
            "SELECT cb_run_flow(name => 'absent', input => '{}')",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT cb_run_flow(name => 'Orders', input => '{}')",
            SQLSTATE_INVALID_ARGUMENT,
            "invalid flow name \"Orders\"",
        ),
        (
            "SELECT cb_run_flow(name => 'orders', input => NULL)",
            SQLSTATE_INVALID_ARGUMENT,
            "flow input must not be SQL NULL",
        ),
        (
            "SELECT cb_run_flow(name => 'orders', input => '{}', headers => '[1]')",
            SQLSTATE_INVALID_ARGUMENT,
            "headers must be a JSON object",
        ),
        (
            "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'nope', quantity => 1, hide_for => 1000)",
            SQLSTATE_NOT_DEFINED,
            "flow \"orders\" has no step \"nope\"",
        ),
        (
            "SELECT * FROM cb_claim_steps(flow => 'absent', step => 'a', quantity => 1, hide_for => 1000)",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'validate', quantity => 0, hide_for => 1000)",
            SQLSTATE_INVALID_ARGUMENT,
            "quantity",
        ),
        (
            "SELECT * FROM cb_claim_steps(flow => 'orders', step => 'validate', quantity => 1, hide_for => 0)",
            SQLSTATE_INVALID_ARGUMENT,
            "hide_for",
        ),
        (
            "SELECT cb_signal_flow(flow => 'absent', run_id => 1, step => 'a', input => '{}')",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT cb_cancel_flow(name => 'absent', id => 1)",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT cb_complete_flow_early(flow => 'absent', run_id => 1, output => '1')",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT * FROM cb_get_flow_run(flow => 'absent', id => 1)",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT * FROM cb_get_flow_run_steps(flow => 'absent', run_id => 1)",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT * FROM cb_list_flow_runs(flow => 'orders', quantity => 0)",
            SQLSTATE_INVALID_ARGUMENT,
            "quantity",
        ),
        (
            "SELECT cb_fail_step(flow => 'orders', id => 1, attempt => 1, error_message => 'x', retry_delay => -1)",
            SQLSTATE_INVALID_ARGUMENT,
            "retry_delay",
        ),
        (
            "SELECT cb_complete_step(flow => 'absent', id => 1, attempt => 1, output => '1')",
            SQLSTATE_NOT_DEFINED,
            "flow \"absent\" is not defined",
        ),
        (
            "SELECT cb_create_flow(name => 'orders', steps => '[{\"name\": \"validate\"}]')",
            SQLSTATE_INVALID_ARGUMENT,
            "flow \"orders\" already exists with a different definition",
        ),
    ];
    for (sql, expected_code, expected_message) in cases {
        let (code, message) = failure_of(&client, sql).await;
        assert_eq!(code, expected_code, "{sql}: {message}");
        assert!(
            message.contains(expected_message),
            "{sql}: expected \"{expected_message}\" in \"{message}\""
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_release_step_gives_the_claim_back() -> anyhow::Result<()> {
    let (_db, client) = db_with_orders().await;
    let running = run_orders(&client, "{}").await;
    let running_step: i64 = claim(&client, "validate").await[0].get("id");
    let canceling = run_orders(&client, "{}").await;
    let canceling_step: i64 = claim(&client, "validate").await[0].get("id");
    client
        .batch_execute(&format!(
            "SELECT cb_cancel_flow(name => 'orders', id => {canceling})"
        ))
        .await?;
    let release = |id: i64, attempt: i32| {
        format!(
            "SELECT cb_release_step(flow => 'orders', id => {id}, attempt => {attempt}, delay => 0)"
        )
    };

    let wrong_attempt: bool = one(&client, &release(running_step, 2)).await.get(0);
    let released: bool = one(&client, &release(running_step, 1)).await.get(0);
    let after = one(
        &client,
        &format!("SELECT status, attempts FROM cb_get_flow_step(flow => 'orders', run_id => {running}, step => 'validate')"),
    )
    .await;
    let reclaimed = claim(&client, "validate").await;
    let released_canceling: bool = one(&client, &release(canceling_step, 1)).await.get(0);

    assert!(!wrong_attempt);
    assert!(released);
    assert_eq!(after.get::<_, String>(0), "queued");
    assert_eq!(after.get::<_, i32>(1), 0);
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].get::<_, i32>("attempts"), 1);
    assert!(released_canceling);
    assert_eq!(
        step_statuses(&client, canceling).await[0],
        ("validate".to_owned(), "canceled".to_owned())
    );
    assert_eq!(run_status(&client, canceling).await, "canceled");
    Ok(())
}

/// A batch of item completions locks the items' step runs in id order, as
/// a lease renewal of step runs does. A generator's step run stays started
/// while its items run, so the worker renews its lease meanwhile, and any
/// other order could deadlock the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_completion_locks_steps_in_order() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .batch_execute(
            r#"SELECT cb_create_flow(name => 'gen', steps => '[{"name": "g", "kind": "generator"}]');
               SELECT cb_run_flow(name => 'gen', input => '0') FROM generate_series(1, 8);
               SELECT count(*) FROM cb_claim_steps(flow => 'gen', step => 'g', quantity => 8, hide_for => 600000);
               SELECT cb_start_generator_step('gen', id, 1) FROM cb_s_gen;
               SELECT cb_spawn_generator_map_tasks('gen', id, 1, '[1]') FROM cb_s_gen;
               SELECT count(*) FROM cb_claim_map_tasks(flow => 'gen', step => 'g', quantity => 8, hide_for => 600000);"#,
        )
        .await?;
    let steps: Vec<i64> = rows(&client, "SELECT id FROM cb_s_gen ORDER BY id")
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(steps.len(), 8);
    let items = rows(&client, "SELECT id, attempts FROM cb_m_gen ORDER BY id").await;
    let item_ids: Vec<i64> = items.iter().map(|row| row.get(0)).collect();
    let attempts: Vec<i32> = items.iter().map(|row| row.get(1)).collect();
    let outputs = vec![json!(1); items.len()];

    let holder = db.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM cb_s_gen WHERE id = {} FOR UPDATE",
            steps[0]
        ))
        .await?;
    let completer = db.connect().await;
    let completer_pid: i32 = completer
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let completion = {
        let item_ids = item_ids.clone();
        tokio::spawn(async move {
            completer
                .query(
                    "SELECT * FROM cb_complete_map_tasks(flow => 'gen', ids => $1, attempts => $2, outputs => $3)",
                    &[&item_ids, &attempts, &outputs],
                )
                .await
                .map(|rows| rows.iter().map(|row| row.get(0)).collect::<Vec<i64>>())
        })
    };
    wait_for_lock_wait(
        &client,
        completer_pid,
        "the completion to wait for the first step run's lock",
    )
    .await;

    let free: Vec<i64> = client
        .query(
            "SELECT id FROM cb_s_gen WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
            &[&steps[1..].to_vec()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        free,
        steps[1..],
        "the completion locked later step runs before the first one"
    );

    holder.batch_execute("COMMIT").await?;
    let completed = tokio::time::timeout(Duration::from_secs(20), completion).await???;
    assert_eq!(completed, item_ids);
    Ok(())
}
