use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Validation {
    valid: bool,
}

#[derive(Serialize, Deserialize)]
struct Charge {
    id: String,
}

#[catbird::step]
async fn validate(order: u32) -> anyhow::Result<Validation> {
    Ok(Validation { valid: order > 0 })
}

#[catbird::step(depends_on(validate))]
async fn charge(order: u32, validate: Charge) -> anyhow::Result<String> {
    Ok(format!("{order} {}", validate.id))
}

#[catbird::step(depends_on(validate))]
async fn audit(order: u32, validate: Option<String>) -> anyhow::Result<String> {
    Ok(format!("{order} {validate:?}"))
}

fn main() {}
