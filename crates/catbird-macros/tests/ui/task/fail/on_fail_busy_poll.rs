async fn notify(n: i64, failure: catbird::worker::TaskFailure) -> anyhow::Result<()> {
    let _ = (n, failure);
    Ok(())
}

#[catbird::task(on_fail(handler = notify, busy_poll = "5ms"))]
async fn poll(n: i64) -> anyhow::Result<i64> {
    Ok(n)
}

fn main() {}
