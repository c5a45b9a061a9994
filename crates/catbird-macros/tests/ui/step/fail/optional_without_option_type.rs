#[catbird::step(depends_on = "approve", optional = "approve")]
async fn finish(score: u32, approve: String) -> anyhow::Result<String> {
    Ok(format!("{score} {approve}"))
}

fn main() {}
