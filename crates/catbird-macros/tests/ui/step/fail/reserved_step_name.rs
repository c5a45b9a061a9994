#[catbird::step]
async fn signal(order: u32) -> anyhow::Result<u32> {
    Ok(order)
}

#[catbird::step(depends_on = "input")]
async fn charge(order: u32) -> anyhow::Result<u32> {
    Ok(order)
}

fn main() {}
