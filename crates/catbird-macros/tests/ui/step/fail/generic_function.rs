#[catbird::step]
async fn validate<T: serde::de::DeserializeOwned>(order: T) -> anyhow::Result<()> {
    let _ = order;
    Ok(())
}

fn main() {}
