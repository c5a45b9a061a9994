#[catbird::step(condition = "input gt 10")]
async fn discount(order: u32) -> anyhow::Result<u32> {
    Ok(order / 10)
}

#[catbird::step(depends_on(discount))]
async fn charge(order: u32, discount: u32) -> anyhow::Result<u32> {
    Ok(order - discount)
}

fn main() {}
