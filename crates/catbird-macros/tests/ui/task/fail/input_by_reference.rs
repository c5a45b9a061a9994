#[catbird::task]
async fn send_email(to: &str) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
