#[catbird::step]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step(reduce = double)]
async fn sum(total: u32, double: u32) -> anyhow::Result<u32> {
    Ok(total + double)
}

fn main() {}
