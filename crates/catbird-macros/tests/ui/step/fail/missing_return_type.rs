#[catbird::step]
async fn validate(order: u32) {
    let _ = order;
}

fn main() {}
