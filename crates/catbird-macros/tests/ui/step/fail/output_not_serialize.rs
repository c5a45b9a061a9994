struct Receipt {
    id: u32,
}

#[catbird::step]
async fn charge(order: u32) -> anyhow::Result<Receipt> {
    Ok(Receipt { id: order })
}

fn main() {}
