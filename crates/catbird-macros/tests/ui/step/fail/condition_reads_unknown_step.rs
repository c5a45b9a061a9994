#[catbird::step(depends_on = "validate", condition = "validation.valid eq true")]
async fn charge(order: u32, validate: bool) -> anyhow::Result<u32> {
    Ok(if validate { order } else { 0 })
}

fn main() {}
