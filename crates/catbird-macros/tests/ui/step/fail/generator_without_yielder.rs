#[catbird::step(item)]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step(generator(item = double))]
async fn numbers(count: u32) -> anyhow::Result<()> {
    let _ = count;
    Ok(())
}

fn main() {}
