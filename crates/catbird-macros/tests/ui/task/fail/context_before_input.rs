use catbird::worker::TaskContext;

#[catbird::task]
async fn send_email(ctx: &TaskContext, to: String) -> anyhow::Result<()> {
    let _ = (ctx, to);
    Ok(())
}

fn main() {}
