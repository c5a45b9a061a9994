#[catbird::task]
async fn send_email(to: String, subject: String) -> anyhow::Result<()> {
    let _ = (to, subject);
    Ok(())
}

fn main() {}
