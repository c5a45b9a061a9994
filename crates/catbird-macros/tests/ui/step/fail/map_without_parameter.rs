#[catbird::step(map = "numbers")]
async fn double(count: u32) -> anyhow::Result<u32> {
    Ok(count * 2)
}

fn main() {}
