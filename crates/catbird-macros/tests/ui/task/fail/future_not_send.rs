use std::rc::Rc;

#[catbird::task]
async fn send_email(to: String) -> anyhow::Result<()> {
    let shared = Rc::new(to);
    tokio::task::yield_now().await;
    drop(shared);
    Ok(())
}

fn main() {}
