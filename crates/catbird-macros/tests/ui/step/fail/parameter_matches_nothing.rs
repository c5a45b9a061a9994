#[catbird::step(depends_on = "validate")]
async fn charge(order: u32, validate: bool, stock: u32) -> anyhow::Result<u32> {
    Ok(if validate { order.min(stock) } else { 0 })
}

fn main() {}
