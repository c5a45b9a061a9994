#[catbird::task(backoff(min = "500ms"))]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
