#[catbird::task(max_retries = 3, timeout = "30s", max_retries = 5)]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
