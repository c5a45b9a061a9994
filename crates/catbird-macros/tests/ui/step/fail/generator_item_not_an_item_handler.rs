use catbird::worker::Yielder;

#[catbird::step]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step(generator(item = double))]
async fn numbers(count: u32, items: Yielder<u32>) -> anyhow::Result<()> {
    items.send_all(0..count).await?;
    Ok(())
}

fn main() {}
