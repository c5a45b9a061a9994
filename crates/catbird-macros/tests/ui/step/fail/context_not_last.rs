use catbird::worker::StepContext;

#[catbird::step(depends_on = "validate")]
async fn charge(order: u32, ctx: &StepContext, validate: bool) -> anyhow::Result<u32> {
    let _ = ctx.attempt();
    Ok(if validate { order } else { 0 })
}

fn main() {}
