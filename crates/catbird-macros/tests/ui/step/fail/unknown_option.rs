#[catbird::step(depends = "validate", priority = 3)]
async fn charge(order: u32) -> anyhow::Result<u32> {
    Ok(order)
}

fn main() {}
