#[catbird::step(map = "numbers", reduce = "numbers")]
async fn double(_: u32, numbers: u32) -> anyhow::Result<u32> {
    Ok(numbers * 2)
}

fn main() {}
