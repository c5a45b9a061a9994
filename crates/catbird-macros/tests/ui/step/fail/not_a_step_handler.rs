use catbird::worker::Flow;

async fn validate(order: u32) -> anyhow::Result<bool> {
    Ok(order > 0)
}

fn main() {
    let _ = Flow::new("orders").step(validate);
}
