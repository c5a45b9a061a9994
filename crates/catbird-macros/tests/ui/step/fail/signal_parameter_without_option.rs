#[catbird::step]
async fn approve(doc: String, #[signal] approved: bool) -> anyhow::Result<String> {
    Ok(format!("{doc}: {approved}"))
}

fn main() {}
