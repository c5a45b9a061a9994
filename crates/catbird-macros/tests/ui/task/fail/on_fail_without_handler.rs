#[catbird::task(on_fail(max_retries = 5))]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
