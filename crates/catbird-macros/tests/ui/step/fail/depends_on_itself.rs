#[catbird::step(depends_on = "charge")]
async fn charge(order: u32, charge: u32) -> anyhow::Result<u32> {
    Ok(order + charge)
}

fn main() {}
