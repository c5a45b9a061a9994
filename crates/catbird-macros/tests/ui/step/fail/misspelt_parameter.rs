#[catbird::step(depends_on = "validate")]
async fn charge(order: u32, vaildate: bool) -> anyhow::Result<u32> {
    Ok(if vaildate { order } else { 0 })
}

fn main() {}
