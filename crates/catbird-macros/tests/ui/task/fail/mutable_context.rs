use catbird::worker::TaskContext;

#[catbird::task]
async fn send_email(to: String, ctx: &mut TaskContext) -> anyhow::Result<()> {
    let _ = (to, ctx);
    Ok(())
}

fn main() {}
