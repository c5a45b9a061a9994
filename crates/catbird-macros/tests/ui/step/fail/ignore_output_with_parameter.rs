#[catbird::step]
async fn validate(order: u32) -> anyhow::Result<bool> {
    Ok(order > 0)
}

#[catbird::step(depends_on(validate), ignore_output(validate))]
async fn charge(order: u32, validate: bool) -> anyhow::Result<u32> {
    Ok(if validate { order } else { 0 })
}

fn main() {}
