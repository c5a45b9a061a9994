#[catbird::task]
async fn send_email<T: serde::de::DeserializeOwned>(input: T) -> anyhow::Result<()> {
    let _ = input;
    Ok(())
}

fn main() {}
