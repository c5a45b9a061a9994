#[catbird::step(signal)]
async fn approve(doc: String) -> anyhow::Result<String> {
    Ok(doc)
}

fn main() {}
