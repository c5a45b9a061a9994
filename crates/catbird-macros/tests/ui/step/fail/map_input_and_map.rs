#[catbird::step(map_input, map = "numbers")]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

fn main() {}
