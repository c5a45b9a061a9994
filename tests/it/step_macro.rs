//! Flows whose steps are defined with `#[catbird::step]`: a worker executes
//! them, each parameter receives the typed output of the step it is named
//! after, and a value that does not decode fails the attempt.

use std::future::Future;
use std::time::Duration;

use catbird::flow::{FlowHandle, RunFlowOpts, StepStatus};
use catbird::worker::{Flow, StepContext, Worker};
use catbird::{CancellationToken, Client};
use catbird_tests::TestDb;
use serde::{Deserialize, Serialize};

/// How long a test waits for a run before it gives up: far above what a run
/// needs on an idle machine, so a slow machine does not fail the suite.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize)]
struct Order {
    amount: u32,
    items: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Validation {
    valid: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stock {
    available: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Charge {
    charged: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Shipment {
    charged: Option<u32>,
    items: u32,
}

/// Accepts orders with an amount.
#[catbird::step]
async fn validate(order: Order) -> anyhow::Result<Validation> {
    Ok(Validation {
        valid: order.amount > 0,
    })
}

#[catbird::step]
async fn check_inventory(order: Order) -> anyhow::Result<Stock> {
    Ok(Stock {
        available: order.items <= 10,
    })
}

// Named by a string: the condition skips it for invalid orders.
#[catbird::step(depends_on = "validate", condition = "validate.valid eq true")]
async fn charge(order: Order, validate: Validation) -> anyhow::Result<Charge> {
    assert!(
        validate.valid,
        "the condition lets only valid orders through"
    );
    Ok(Charge {
        charged: order.amount,
    })
}

// Named by path: the compiler checked both parameter types. `charge` has a
// condition, so its output arrives as an `Option`.
#[catbird::step(depends_on(charge, check_inventory), max_retries = 0)]
async fn ship(
    order: Order,
    charge: Option<Charge>,
    check_inventory: Stock,
) -> anyhow::Result<Shipment> {
    anyhow::ensure!(check_inventory.available, "out of stock");
    Ok(Shipment {
        charged: charge.map(|charge| charge.charged),
        items: order.items,
    })
}

fn order_flow() -> Flow {
    Flow::new("order_processing")
        .step(validate)
        .step(check_inventory)
        .step(charge)
        .step(ship)
}

#[derive(Serialize, Deserialize)]
struct Doc {
    text: String,
}

#[derive(Serialize, Deserialize)]
struct Decision {
    approved: bool,
    reviewer: String,
}

#[catbird::step]
async fn score(doc: Doc) -> anyhow::Result<u32> {
    Ok(u32::try_from(doc.text.len())?)
}

/// Waits for a reviewer, but only for documents long enough to review.
#[catbird::step(signal, depends_on(score), condition = "score gte 5")]
async fn review(doc: Doc, #[signal] decision: Decision, score: u32) -> anyhow::Result<String> {
    let verdict = if decision.approved {
        "approved"
    } else {
        "rejected"
    };
    Ok(format!(
        "{} ({score} characters) {verdict} by {}",
        doc.text, decision.reviewer
    ))
}

#[catbird::step(depends_on = "review", optional = "review")]
async fn publish(
    _: serde::de::IgnoredAny,
    review: Option<String>,
    ctx: &StepContext,
) -> anyhow::Result<String> {
    Ok(format!(
        "{}: {}",
        ctx.step(),
        review.unwrap_or_else(|| "published without review".to_owned())
    ))
}

fn review_flow() -> Flow {
    Flow::new("document_review")
        .step(score)
        .step(review)
        .step(publish)
}

/// Expects the output of `validate` as a number, which it is not.
#[catbird::step(depends_on = "validate", max_retries = 0)]
async fn misread(_: Order, validate: u32) -> anyhow::Result<u32> {
    Ok(validate)
}

/// Waits for `future`, failing the test after [`DEADLINE`].
async fn within<T>(event: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("expected {event} within {DEADLINE:?}"))
}

/// Creates `flow` and starts a worker that executes it; returns the
/// worker's shutdown token and join handle.
async fn start(
    db: &TestDb,
    client: &Client,
    flow: Flow,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), catbird::worker::WorkerError>>,
)> {
    client.create_flow(flow.definition()).await?;
    let shutdown = CancellationToken::new();
    let worker = Worker::new(db.pool.clone())
        .flow(flow)
        .listen_url(&db.url());
    let handle = tokio::spawn(worker.start(shutdown.clone()));
    Ok((shutdown, handle))
}

/// Waits until `step` of `run` has `status`.
async fn wait_for_status(run: &FlowHandle, step: &str, status: StepStatus) -> anyhow::Result<()> {
    within(&format!("step {step} to be {status}"), async {
        loop {
            let steps = run.steps().await?;
            if steps
                .iter()
                .any(|run| run.step_name == step && run.status == status)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_passes_typed_outputs_along() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (shutdown, worker) = start(&db, &client, order_flow()).await?;

    let order = Order {
        amount: 42,
        items: 3,
    };
    let run = client
        .run_flow("order_processing", &order, RunFlowOpts::default())
        .await?;
    let id = run.id();
    let shipment: Shipment = within("the order ships", run.typed().wait_for_output()).await?;
    assert_eq!(
        shipment,
        Shipment {
            charged: Some(42),
            items: 3
        }
    );

    let run = client.flow_handle("order_processing", id);
    for step in run.steps().await? {
        match step.step_name.as_str() {
            "validate" => assert_eq!(step.output_as::<Validation>()?, Validation { valid: true }),
            "check_inventory" => {
                assert_eq!(step.output_as::<Stock>()?, Stock { available: true });
            }
            "charge" => assert_eq!(step.output_as::<Charge>()?, Charge { charged: 42 }),
            "ship" => assert!(step.is_completed()),
            other => panic!("unexpected step {other}"),
        }
    }

    let stored = client.get_flow("order_processing").await?;
    let validate = &stored.steps[0];
    assert_eq!(
        validate.description.as_deref(),
        Some("Accepts orders with an amount.")
    );
    assert_eq!(stored.steps[3].depends_on, ["charge", "check_inventory"]);

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_dependency_arrives_as_none() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (shutdown, worker) = start(&db, &client, order_flow()).await?;

    let order = Order {
        amount: 0,
        items: 2,
    };
    let run = client
        .run_flow("order_processing", &order, RunFlowOpts::default())
        .await?;
    let id = run.id();
    let shipment: Shipment = within("the order ships", run.typed().wait_for_output()).await?;
    assert_eq!(
        shipment,
        Shipment {
            charged: None,
            items: 2
        }
    );

    let run = client.flow_handle("order_processing", id);
    let charge = run
        .steps()
        .await?
        .into_iter()
        .find(|step| step.step_name == charge::NAME)
        .expect("the run has a charge step");
    assert_eq!(charge.status, StepStatus::Skipped);

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_parameter_receives_the_signal_input() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let (shutdown, worker) = start(&db, &client, review_flow()).await?;

    let doc = Doc {
        text: "release notes".to_owned(),
    };
    let run = client
        .run_flow("document_review", &doc, RunFlowOpts::default())
        .await?;
    wait_for_status(&run, review::NAME, StepStatus::WaitingForSignal).await?;
    let decision = Decision {
        approved: true,
        reviewer: "ada".to_owned(),
    };
    run.signal(review::NAME, &decision).await?;
    let published: String =
        within("the document is published", run.typed().wait_for_output()).await?;
    assert_eq!(
        published,
        "publish: release notes (13 characters) approved by ada"
    );

    // The condition of a signal step is evaluated once its signal arrives:
    // a short document skips the review, and `publish` runs without it.
    let doc = Doc {
        text: "typo".to_owned(),
    };
    let run = client
        .run_flow("document_review", &doc, RunFlowOpts::default())
        .await?;
    let id = run.id();
    wait_for_status(&run, review::NAME, StepStatus::WaitingForSignal).await?;
    run.signal(review::NAME, &decision).await?;
    let published: String =
        within("the document is published", run.typed().wait_for_output()).await?;
    let run = client.flow_handle("document_review", id);
    wait_for_status(&run, review::NAME, StepStatus::Skipped).await?;
    assert_eq!(published, "publish: published without review");

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_does_not_decode_fails_the_attempt() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let flow = Flow::new("misread_order").step(validate).step(misread);
    let (shutdown, worker) = start(&db, &client, flow).await?;

    let order = Order {
        amount: 1,
        items: 1,
    };
    let run = client
        .run_flow("misread_order", &order, RunFlowOpts::default())
        .await?;
    let error = within("the run fails", run.wait_for_output())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("step \"misread\" could not decode the output of \"validate\""),
        "{error}"
    );
    assert_eq!(
        run.get().await?.failed_step_name.as_deref(),
        Some("misread")
    );

    shutdown.cancel();
    within("the worker stops", worker).await??;
    Ok(())
}
