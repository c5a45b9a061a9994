#[catbird::step(reduce = "double")]
async fn sum(total: u64, item: u32) -> anyhow::Result<u32> {
    Ok(u32::try_from(total)? + item)
}

fn main() {}
