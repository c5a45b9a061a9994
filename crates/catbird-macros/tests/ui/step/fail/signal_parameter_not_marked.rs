#[catbird::step(signal)]
async fn approve(doc: String, approved: bool) -> anyhow::Result<String> {
    Ok(format!("{doc}: {approved}"))
}

fn main() {}
