#[catbird::task(name = "Send-Email")]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

#[catbird::task(name = "input")]
async fn check_input(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
