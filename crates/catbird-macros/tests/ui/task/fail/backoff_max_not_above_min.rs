#[catbird::task(backoff(min = "10s", max = "500ms"))]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
