//! Flow runs executed by a worker.

use std::time::Duration;

use catbird_core::flow::{FlowDef, RunFlowOpts, StepDef};
use catbird_core::{Client, Error};
use catbird_tests::TestDb;
use catbird_worker::{Flow, StepArgs, StepContext, StepHandler, Worker};
use tokio_util::sync::CancellationToken;

async fn start(
    db: &TestDb,
    worker: Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), catbird_worker::WorkerError>>,
) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.listen_url(&db.url()).start(shutdown.clone()));
    (shutdown, handle)
}

fn double_add() -> Flow {
    let double = StepHandler::new(
        StepDef::new("double"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok::<_, anyhow::Error>(args.input::<i64>()? * 2)
        },
    );
    let add = StepHandler::new(
        StepDef::new("add").depends_on("double"),
        |args: StepArgs, _ctx: StepContext| async move {
            Ok::<_, anyhow::Error>(args.dependency::<i64>("double")? + 1)
        },
    );
    Flow::new("double_add").step(double).step(add)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_flow_passes_outputs_along() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client.create_flow(double_add().definition()).await?;
    let (shutdown, worker) = start(&db, Worker::new(db.pool.clone()).flow(double_add())).await;

    let run = client
        .run_flow("double_add", &10, RunFlowOpts::default())
        .await?;
    let output: i64 =
        tokio::time::timeout(Duration::from_secs(10), run.typed().wait_for_output()).await??;
    assert_eq!(output, 21);

    shutdown.cancel();
    worker.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_fails_the_run() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let boom = StepHandler::new(
        StepDef::new("boom"),
        |_: StepArgs, _ctx: StepContext| async move { Err::<(), _>(anyhow::anyhow!("boom")) },
    )
    .max_retries(0);
    let flow = Flow::new("failing").step(boom);
    client.create_flow(flow.definition()).await?;
    let (shutdown, worker) = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;

    let run = client
        .run_flow("failing", &serde_json::json!({}), RunFlowOpts::default())
        .await?;
    let error = tokio::time::timeout(Duration::from_secs(10), run.wait_for_output())
        .await?
        .unwrap_err();
    assert!(
        matches!(error, Error::RunFailed(ref message) if message == "boom"),
        "{error}"
    );
    assert_eq!(run.get().await?.failed_step_name.as_deref(), Some("boom"));

    shutdown.cancel();
    worker.await??;
    Ok(())
}

#[tokio::test]
async fn definition_only_flow_is_stored_and_inspectable() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let flow = FlowDef::new("order")
        .step(StepDef::new("validate"))
        .step(StepDef::new("charge").depends_on("validate"));
    client.create_flow(&flow).await?;
    client.create_flow(&flow).await?;

    let info = client.get_flow("order").await?;
    assert_eq!(info.output_priority, vec!["charge".to_owned()]);
    assert_eq!(info.steps[1].depends_on, vec!["validate".to_owned()]);

    let changed = FlowDef::new("order").step(StepDef::new("validate"));
    let error = client.create_flow(&changed).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("already exists with a different definition"),
        "{error}"
    );
    Ok(())
}
