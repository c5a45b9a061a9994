#[catbird::step(item, max_retries = 3, busy_poll = "5ms")]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

fn main() {}
