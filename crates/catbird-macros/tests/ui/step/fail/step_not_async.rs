#[catbird::step]
fn validate(order: u32) -> anyhow::Result<bool> {
    Ok(order > 0)
}

fn main() {}
