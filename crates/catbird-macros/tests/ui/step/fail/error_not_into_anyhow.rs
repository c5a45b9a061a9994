#[derive(Debug)]
struct ChargeError;

#[catbird::step]
async fn charge(order: u32) -> Result<u32, ChargeError> {
    Ok(order)
}

fn main() {}
