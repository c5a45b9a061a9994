use std::rc::Rc;

#[catbird::step]
async fn validate(order: u32) -> anyhow::Result<bool> {
    let shared = Rc::new(order);
    tokio::task::yield_now().await;
    Ok(*shared > 0)
}

fn main() {}
