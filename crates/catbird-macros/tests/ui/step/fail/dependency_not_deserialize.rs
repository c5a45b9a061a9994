use serde::Serialize;

#[derive(Serialize)]
struct Validation {
    valid: bool,
}

#[catbird::step(depends_on = "validate")]
async fn charge(order: u32, validate: Validation) -> anyhow::Result<u32> {
    Ok(if validate.valid { order } else { 0 })
}

fn main() {}
