use catbird::worker::TaskFailure;

async fn notify(to: u64, failure: TaskFailure) -> anyhow::Result<()> {
    let _ = (to, failure);
    Ok(())
}

#[catbird::task(on_fail = notify)]
async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
