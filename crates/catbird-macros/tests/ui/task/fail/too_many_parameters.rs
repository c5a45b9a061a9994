use catbird::worker::TaskContext;

#[catbird::task]
async fn send_email(to: String, ctx: &TaskContext, subject: String, body: String) -> anyhow::Result<()> {
    let _ = (to, ctx, subject, body);
    Ok(())
}

fn main() {}
