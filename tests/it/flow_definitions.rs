//! Flow definitions: validation in the client and in `cb_create_flow`,
//! re-creation, and reading definitions back.

use std::time::Duration;

use catbird_core::flow::{Dependency, FlowDef, RunFlowOpts, StepDef, StepStatus};
use catbird_core::{Client, Error, SQLSTATE_INVALID_ARGUMENT};
use catbird_tests::TestDb;
use catbird_worker::{Flow, Worker};
use serde_json::json;

use crate::flow_helpers::{start, step_run};
use crate::helpers::{RecordingExecutor, sqlstate};

/// Returns invalid definitions and a fragment of the error each must give.
/// Every message names the step (or the output priority entry) at fault.
fn invalid_definitions() -> Vec<(&'static str, FlowDef, &'static str)> {
    vec![
        (
            "unknown dependency",
            FlowDef::new("orders")
                .step(StepDef::new("validate"))
                .step(StepDef::new("charge").depends_on("missing")),
            "invalid flow \"orders\": step \"charge\" depends on \"missing\", which is not a step of the flow",
        ),
        (
            "cycle",
            FlowDef::new("orders")
                .step(StepDef::new("a").depends_on("c"))
                .step(StepDef::new("b").depends_on("a"))
                .step(StepDef::new("c").depends_on("b")),
            "the dependencies form a cycle: a -> c -> b -> a",
        ),
        (
            "self dependency",
            FlowDef::new("orders").step(StepDef::new("a").depends_on("a")),
            "step \"a\" depends on itself",
        ),
        (
            "dependency listed twice",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .step(StepDef::new("b").depends_on("a").depends_on("a")),
            "step \"b\" lists the dependency \"a\" twice",
        ),
        (
            "duplicate step",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .step(StepDef::new("a")),
            "step \"a\" is defined twice",
        ),
        (
            "step named input",
            FlowDef::new("orders").step(StepDef::new("input")),
            "step name \"input\" is reserved",
        ),
        (
            "step named signal",
            FlowDef::new("orders").step(StepDef::new("signal")),
            "step name \"signal\" is reserved",
        ),
        (
            "no steps",
            FlowDef::new("orders"),
            "a flow needs at least one step",
        ),
        (
            "output priority names an unknown step",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .output_priority(["zz", "a"]),
            "output_priority names \"zz\", which is not a step",
        ),
        (
            "output priority misses a final step",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .step(StepDef::new("b"))
                .output_priority(["a"]),
            "output_priority must include every final step; \"b\" is missing",
        ),
        (
            "output priority lists a step twice",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .output_priority(["a", "a"]),
            "output_priority lists a step twice",
        ),
        (
            "empty output priority",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .output_priority(Vec::<String>::new()),
            "output_priority is empty",
        ),
        (
            "condition reads a step that is not a dependency",
            FlowDef::new("orders")
                .step(StepDef::new("a"))
                .step(StepDef::new("b"))
                .step(StepDef::new("c").depends_on("b").condition("a.ok eq true")),
            "the condition of step \"c\" reads \"a\", which is not one of its dependencies (b)",
        ),
        (
            "condition reads an ignored dependency",
            FlowDef::new("orders").step(StepDef::new("a")).step(
                StepDef::new("b")
                    .depends_on_ignoring_output("a")
                    .condition("a.ok eq true"),
            ),
            "the condition of step \"b\" reads \"a\", whose output the step ignores",
        ),
        (
            "condition reads the signal of a step without one",
            FlowDef::new("orders").step(StepDef::new("a").condition("signal.ok eq true")),
            "the condition of step \"a\" reads signal.*, but the step does not wait for a signal",
        ),
        (
            "required dependency on a conditional step",
            FlowDef::new("orders")
                .step(StepDef::new("a").condition("input.go eq true"))
                .step(StepDef::new("b").depends_on("a")),
            "step \"b\" depends on \"a\", which has a condition and may be skipped; declare the dependency optional",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_invalid_definitions_before_sql() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let recording = RecordingExecutor::new(db.pool.clone());

    for (case, definition, expected) in invalid_definitions() {
        let error = catbird_core::flow::create_flow(&recording, &definition)
            .await
            .expect_err(case);
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{case}: {error:?}"
        );
        assert!(
            error.to_string().contains(expected),
            "{case}: expected \"{expected}\" in \"{error}\""
        );
    }
    assert_eq!(recording.statements(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_rejects_invalid_definitions() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let sql = db.connect().await;

    for (case, definition, expected) in invalid_definitions() {
        let error = sql
            .query(
                "SELECT cb_create_flow(name => $1, steps => $2, output_priority => $3)",
                &[
                    &definition.name,
                    &definition.steps_json(),
                    &definition.output_priority,
                ],
            )
            .await
            .expect_err(case);
        let message = error
            .as_db_error()
            .map(|db| db.message().to_owned())
            .unwrap_or_default();
        assert_eq!(sqlstate(&error), Some(SQLSTATE_INVALID_ARGUMENT), "{case}");
        assert!(
            message.contains(expected),
            "{case}: expected \"{expected}\" in \"{message}\""
        );
    }
    let stored: i64 = sql
        .query_one("SELECT count(*) FROM cb_flows", &[])
        .await?
        .get(0);
    assert_eq!(stored, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_rejected_on_both_sides() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let sql = db.connect().await;

    let bad_step = FlowDef::new("orders").step(StepDef::new("Bad-Name"));
    let error = client.create_flow(&bad_step).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidName { kind: "step", name, .. } if name == "Bad-Name"),
        "{error:?}"
    );

    let bad_flow = FlowDef::new("Orders").step(StepDef::new("a"));
    let error = client.create_flow(&bad_flow).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidName { kind: "flow", name, .. } if name == "Orders"),
        "{error:?}"
    );

    let too_long = "s".repeat(59);
    let error = client
        .create_flow(&FlowDef::new("orders").step(StepDef::new(too_long.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidName { kind: "step", name, .. } if *name == too_long),
        "{error:?}"
    );

    let error = sql
        .batch_execute(
            r#"SELECT cb_create_flow(name => 'orders', steps => '[{"name": "Bad-Name"}]')"#,
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), Some(SQLSTATE_INVALID_ARGUMENT));
    assert!(
        error
            .as_db_error()
            .is_some_and(|db| db.message().contains("invalid step name \"Bad-Name\"")),
        "{error:?}"
    );

    let error = sql
        .batch_execute(r#"SELECT cb_create_flow(name => 'Orders', steps => '[{"name": "a"}]')"#)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), Some(SQLSTATE_INVALID_ARGUMENT));
    assert!(
        error
            .as_db_error()
            .is_some_and(|db| db.message().contains("invalid flow name \"Orders\"")),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_defined_later_is_accepted() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let sql = db.connect().await;

    let forward = FlowDef::new("forward")
        .step(StepDef::new("ship").depends_on("pack"))
        .step(StepDef::new("pack"));
    client.create_flow(&forward).await?;
    sql.batch_execute(
        r#"SELECT cb_create_flow(name => 'forward_sql',
                                 steps => '[{"name": "ship", "depends_on": ["pack"]}, {"name": "pack"}]')"#,
    )
    .await?;

    for name in ["forward", "forward_sql"] {
        let info = client.get_flow(name).await?;
        let steps: Vec<&str> = info.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(steps, ["ship", "pack"], "{name}");
        assert_eq!(info.steps[0].depends_on, ["pack"], "{name}");
        assert_eq!(info.output_priority, ["ship"], "{name}");

        let run = client
            .run_flow(name, &json!({}), RunFlowOpts::default())
            .await?;
        let pack = step_run(&client, name, run.id(), "pack").await;
        let ship = step_run(&client, name, run.id(), "ship").await;
        assert_eq!(pack.status, StepStatus::Queued, "{name}");
        assert_eq!(ship.status, StepStatus::WaitingForDependencies, "{name}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_same_definition_is_a_no_op() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let definition = FlowDef::new("orders")
        .description("order processing")
        .step(StepDef::new("validate"))
        .step(StepDef::new("charge").depends_on("validate"))
        .retention_period(Duration::from_secs(3600));

    client.create_flow(&definition).await?;
    let first = client.get_flow("orders").await?;
    let run = client
        .run_flow("orders", &json!({"id": 1}), RunFlowOpts::default())
        .await?;
    client.create_flow(&definition).await?;
    let second = client.get_flow("orders").await?;

    assert_eq!(second, first);
    assert_eq!(client.list_flows().await?.len(), 1);
    assert_eq!(
        client.get_flow_run("orders", run.id()).await?.input,
        json!({"id": 1})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_different_definition_names_the_difference() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let base = || {
        FlowDef::new("orders")
            .step(StepDef::new("validate"))
            .step(StepDef::new("charge").depends_on("validate"))
    };
    client.create_flow(&base()).await?;

    let cases = [
        (
            "description",
            base().description("new"),
            "description is null in the database but new here",
        ),
        (
            "steps",
            FlowDef::new("orders")
                .step(StepDef::new("validate"))
                .step(StepDef::new("precheck"))
                .step(
                    StepDef::new("charge")
                        .depends_on("validate")
                        .depends_on("precheck"),
                ),
            "the steps are [validate, charge] in the database but [validate, precheck, charge] here",
        ),
        (
            "step description",
            FlowDef::new("orders")
                .step(StepDef::new("validate").description("checks"))
                .step(StepDef::new("charge").depends_on("validate")),
            "step \"validate\" has description null in the database but checks here",
        ),
        (
            "dependency",
            FlowDef::new("orders")
                .step(StepDef::new("validate"))
                .step(StepDef::new("charge").depends_on_optional("validate")),
            "step \"charge\" has depends_on",
        ),
        (
            "signal",
            FlowDef::new("orders")
                .step(StepDef::new("validate"))
                .step(StepDef::new("charge").depends_on("validate").signal()),
            "step \"charge\" has signal false in the database but true here",
        ),
        (
            "retention",
            base().retention_period(Duration::from_secs(60)),
            "retention_period is 0 in the database but 60000 here",
        ),
    ];
    for (case, changed, expected) in cases {
        let error = client.create_flow(&changed).await.expect_err(case);
        let message = error.to_string();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{case}: {error:?}"
        );
        assert!(
            message.contains("flow \"orders\" already exists with a different definition"),
            "{case}: {message}"
        );
        assert!(
            message.contains(expected),
            "{case}: expected \"{expected}\" in \"{message}\""
        );
    }

    let info = client.get_flow("orders").await?;
    assert_eq!(info.steps.len(), 2);
    assert_eq!(info.description, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_flow_returns_the_stored_definition() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let definition = FlowDef::new("orders")
        .description("order processing")
        .step(StepDef::new("validate").description("checks the order"))
        .step(StepDef::new("charge").depends_on("validate"))
        .step(
            StepDef::new("check_inventory")
                .depends_on("validate")
                .signal(),
        )
        .step(StepDef {
            depends_on: vec![
                Dependency::on("charge"),
                Dependency {
                    ignore_output: true,
                    ..Dependency::on("check_inventory")
                },
            ],
            ..StepDef::new("ship")
        })
        .step(StepDef::new("notify").depends_on("validate"))
        .retention_period(Duration::from_secs(7 * 24 * 3600));
    client.create_flow(&definition).await?;

    let info = client.get_flow("orders").await?;
    let names: Vec<&str> = info.steps.iter().map(|s| s.name.as_str()).collect();
    let now = chrono::Utc::now();

    assert_eq!(info.name, "orders");
    assert_eq!(info.description.as_deref(), Some("order processing"));
    assert_eq!(
        names,
        ["validate", "charge", "check_inventory", "ship", "notify"]
    );
    assert_eq!(
        info.steps[0].description.as_deref(),
        Some("checks the order")
    );
    assert_eq!(info.steps[1].description, None);
    assert!(info.steps.iter().all(|s| s.kind == "normal"));
    assert!(info.steps[2].signal);
    assert!(!info.steps[1].signal);
    assert_eq!(info.steps[3].depends_on, ["charge", "check_inventory"]);
    assert_eq!(info.steps[0].depends_on, Vec::<String>::new());
    assert_eq!(info.output_priority, ["ship", "notify"]);
    assert_eq!(info.retention_period, Duration::from_secs(7 * 24 * 3600));
    assert!(
        (now - info.created_at).num_seconds().abs() < 60,
        "{}",
        info.created_at
    );

    let missing = client.get_flow("absent").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_flows_orders_by_name() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    for name in ["zeta", "alpha", "mid"] {
        client
            .create_flow(&FlowDef::new(name).step(StepDef::new("only")))
            .await?;
    }
    client
        .create_flow(
            &FlowDef::new("beta")
                .step(StepDef::new("a"))
                .step(StepDef::new("b"))
                .output_priority(["b", "a"]),
        )
        .await?;

    let flows = client.list_flows().await?;
    let names: Vec<&str> = flows.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "mid", "zeta"]);
    assert_eq!(flows[1].output_priority, ["b", "a"]);
    assert_eq!(flows[0].steps.len(), 1);
    assert_eq!(flows[0].retention_period, Duration::ZERO);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_without_handlers_runs_and_stays_queued() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let flow = Flow::new("orders")
        .step(StepDef::new("validate"))
        .step(StepDef::new("charge").depends_on("validate"));
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = catbird_tests::wait_for(
        "the worker to create the flow",
        Duration::from_secs(10),
        || async {
            client
                .run_flow("orders", &json!({"id": 7}), RunFlowOpts::default())
                .await
                .ok()
        },
    )
    .await;
    // Nothing can claim these steps: a bounded pause shows they stay put.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let info = client.get_flow_run("orders", run.id()).await?;
    let validate = step_run(&client, "orders", run.id(), "validate").await;
    let charge = step_run(&client, "orders", run.id(), "charge").await;
    let runs = client.list_flow_runs("orders").await?;
    assert_eq!(info.status, catbird_core::RunStatus::Started);
    assert_eq!(info.input, json!({"id": 7}));
    assert_eq!(validate.status, StepStatus::Queued);
    assert_eq!(validate.attempts, 0);
    assert_eq!(charge.status, StepStatus::WaitingForDependencies);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run.id());

    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flow_and_run_are_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .create_flow(&FlowDef::new("orders").step(StepDef::new("a")))
        .await?;

    let error = client
        .run_flow("absent", &json!({}), RunFlowOpts::default())
        .await
        .unwrap_err();
    assert!(error.is_not_defined(), "{error:?}");

    let error = client.get_flow_run("absent", 1).await.unwrap_err();
    assert!(error.is_not_defined(), "{error:?}");

    let error = client.get_flow_run("orders", 4242).await.unwrap_err();
    assert!(error.is_not_found(), "{error:?}");

    let steps = client.get_flow_run_steps("orders", 4242).await?;
    assert_eq!(steps.len(), 0);

    let deleted = client.delete_flow("orders").await?;
    let deleted_again = client.delete_flow("orders").await?;
    assert!(deleted);
    assert!(!deleted_again);
    assert_eq!(client.list_flows().await?.len(), 0);
    Ok(())
}
