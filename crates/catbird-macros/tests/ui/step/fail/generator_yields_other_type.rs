use catbird::worker::Yielder;

#[catbird::step(item)]
async fn shout(text: String) -> anyhow::Result<String> {
    Ok(text.to_uppercase())
}

#[catbird::step(generator(item = shout))]
async fn numbers(count: u32, items: Yielder<u32>) -> anyhow::Result<()> {
    items.send_all(0..count).await?;
    Ok(())
}

fn main() {}
