#[catbird::task(timeout = "30sec", backoff(min = "1.5s", max = "1w"))]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
