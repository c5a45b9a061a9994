#[catbird::step(depends_on = "validate")]
async fn charge(validate: bool) -> anyhow::Result<u32> {
    Ok(u32::from(validate))
}

fn main() {}
