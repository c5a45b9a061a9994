#[catbird::step(map_inputs)]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

fn main() {}
