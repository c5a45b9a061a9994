#[catbird::step]
async fn total(count: u32) -> anyhow::Result<u32> {
    Ok(count)
}

#[catbird::step(map = total)]
async fn double(_: u32, total: u32) -> anyhow::Result<u32> {
    Ok(total * 2)
}

fn main() {}
