#[catbird::step(map_input)]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step(reduce = double)]
async fn sum(total: u64, double: String) -> anyhow::Result<u64> {
    Ok(total + double.len() as u64)
}

fn main() {}
