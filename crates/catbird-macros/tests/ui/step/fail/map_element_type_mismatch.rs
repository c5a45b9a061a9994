#[catbird::step]
async fn numbers(count: u32) -> anyhow::Result<Vec<u32>> {
    Ok((0..count).collect())
}

#[catbird::step(map = numbers)]
async fn label(count: u32, numbers: String) -> anyhow::Result<String> {
    Ok(format!("{count} {numbers}"))
}

fn main() {}
