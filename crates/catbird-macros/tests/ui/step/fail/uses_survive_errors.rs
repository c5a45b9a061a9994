//! A step whose signature is wrong reports that one problem: the flow and
//! the steps that depend on it by path still compile against the stand-in
//! the macro leaves.
use catbird::worker::Flow;

#[catbird::step]
fn validate(order: u32) -> anyhow::Result<bool> {
    Ok(order > 0)
}

#[catbird::step(depends_on(validate))]
async fn charge(order: u32, validate: bool) -> anyhow::Result<u32> {
    Ok(if validate { order } else { 0 })
}

fn main() {
    let _ = Flow::new("orders").step(validate).step(charge);
    let _ = validate::call(3);
}
