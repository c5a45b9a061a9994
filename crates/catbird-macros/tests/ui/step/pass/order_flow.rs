//! The order-processing diamond, with string and path dependencies, an
//! optional dependency with a condition, a signal, the context and every
//! handler option, registered in a flow.
#![deny(warnings)]

use catbird::worker::{Flow, StepContext, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Order {
    pub amount: u32,
}

#[derive(Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Stock {
    pub available: bool,
}

#[derive(Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
}

#[derive(Serialize, Deserialize)]
pub struct Approval {
    pub approved: bool,
}

/// Checks the order.
#[catbird::step]
pub async fn validate(order: Order) -> anyhow::Result<Validation> {
    Ok(Validation {
        valid: order.amount > 0,
    })
}

#[catbird::step(name = "check_inventory", timeout = "10s")]
pub async fn check_inventory(order: Order) -> anyhow::Result<Stock> {
    Ok(Stock {
        available: order.amount < 100,
    })
}

#[catbird::step(depends_on = "validate", condition = "validate.valid eq true")]
pub async fn charge(order: Order, validate: Validation) -> anyhow::Result<Charge> {
    Ok(Charge {
        id: format!("{}-{}", order.amount, validate.valid),
    })
}

#[catbird::step(signal, depends_on(check_inventory), max_retries = 0)]
pub async fn approve(
    order: Order,
    #[signal] approval: Approval,
    check_inventory: Stock,
) -> anyhow::Result<bool> {
    Ok(approval.approved && check_inventory.available && order.amount > 0)
}

/// Ships the order.
///
/// The charge is optional: a step that depends on a step with a
/// condition must accept that it was skipped.
#[catbird::step(
    description = "Ships a paid order",
    depends_on(charge, "approve", validate),
    ignore_output(validate),
    optional("approve"),
    concurrency = 5,
    batch_size = 10,
    busy_poll = "5ms",
    timeout = "30s",
    max_retries = 3,
    backoff(min = "500ms", max = "10s"),
    circuit_breaker(threshold = 5, open_timeout = "1m")
)]
pub async fn ship(
    order: Order,
    charge: Option<Charge>,
    approve: Option<bool>,
    ctx: &StepContext,
) -> anyhow::Result<String> {
    Ok(format!(
        "{} {:?} {:?} {}",
        order.amount,
        charge.map(|charge| charge.id),
        approve,
        ctx.step()
    ))
}

fn main() {
    let flow = Flow::new("order_processing")
        .step(validate)
        .step(check_inventory)
        .step(charge)
        .step(approve)
        .step(ship);
    let definition = flow.definition();
    assert_eq!(definition.steps.len(), 5);

    let ship = ship::definition();
    assert_eq!(ship.description.as_deref(), Some("Ships a paid order"));
    let names: Vec<(&str, bool, bool)> = ship
        .depends_on
        .iter()
        .map(|dependency| {
            (
                dependency.name.as_str(),
                dependency.optional,
                dependency.ignore_output,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("charge", true, false),
            ("approve", true, false),
            ("validate", false, true)
        ]
    );
    assert!(approve::definition().signal);
    assert_eq!(
        validate::definition().description.as_deref(),
        Some("Checks the order.")
    );
    let handler = ship::handler();
    assert_eq!(handler.options().concurrency, 5);
    assert_eq!(handler.options().batch_size, 10);
    assert_eq!(
        handler.options().busy_poll,
        Some(std::time::Duration::from_millis(5))
    );

    let pool = catbird::pool_from_url("postgres://127.0.0.1/app", 1).unwrap();
    drop(Worker::new(pool).flow(flow));
}
