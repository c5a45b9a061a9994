#[catbird::step(item, max_retries = 3)]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

fn main() {}
