#[catbird::task(busy_poll = "2s")]
async fn poll(n: i64) -> anyhow::Result<i64> {
    Ok(n)
}

fn main() {}
