#[catbird::step(reduce = "double")]
async fn sum(input: u32, total: u32, double: u32) -> anyhow::Result<u32> {
    Ok(input + total + double)
}

fn main() {}
