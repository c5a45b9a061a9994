#[catbird::step(map = "numbers")]
async fn double(_: u32, numbers: Option<u32>) -> anyhow::Result<u32> {
    Ok(numbers.unwrap_or_default() * 2)
}

fn main() {}
