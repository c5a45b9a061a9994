#[catbird::step(depends_on = "validate", ignore_output("audit"), optional(validate))]
async fn charge(order: u32, validate: Option<bool>) -> anyhow::Result<u32> {
    Ok(if validate.unwrap_or(false) { order } else { 0 })
}

fn main() {}
