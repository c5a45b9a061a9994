#[catbird::step(name = "Charge", depends_on("validate", "validate", "input"), timeout = "30sec")]
fn charge(order: &u32, stock: u32, #[signal] approved: bool) {
    let _ = (order, stock, approved);
}

fn main() {}
