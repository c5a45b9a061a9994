#[catbird::step(item)]
async fn halve(n: u32) -> anyhow::Result<u32> {
    Ok(n / 2)
}

#[catbird::step(map_input, generator(item = halve))]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

fn main() {}
