use catbird::worker::Yielder;

#[catbird::step(generator())]
async fn numbers(count: u32, items: Yielder<u32>) -> anyhow::Result<()> {
    items.send_all(0..count).await?;
    Ok(())
}

fn main() {}
