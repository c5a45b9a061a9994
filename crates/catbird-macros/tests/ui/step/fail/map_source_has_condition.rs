#[catbird::step(condition = "input gt 0")]
async fn numbers(count: u32) -> anyhow::Result<Vec<u32>> {
    Ok((0..count).collect())
}

#[catbird::step(map = numbers)]
async fn double(_: u32, numbers: u32) -> anyhow::Result<u32> {
    Ok(numbers * 2)
}

fn main() {}
