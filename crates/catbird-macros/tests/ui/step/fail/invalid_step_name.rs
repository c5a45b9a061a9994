#[catbird::step(name = "Check-Inventory")]
async fn check_inventory(order: u32) -> anyhow::Result<bool> {
    Ok(order < 100)
}

#[catbird::step(depends_on = "Check-Inventory")]
async fn ship(order: u32, check_inventory: bool) -> anyhow::Result<u32> {
    Ok(if check_inventory { order } else { 0 })
}

fn main() {}
