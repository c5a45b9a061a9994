#[catbird::task]
async fn clean_up() -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
