//! Every fan-out form: mappers over the flow input and over a step's
//! output, a generator with its item handler, and reducers over a mapper
//! and a generator, with the dependency checks between them.
#![deny(warnings)]

use catbird::flow::{MapSource, StepKind};
use catbird::worker::{Flow, StepContext, Yielder};

#[catbird::step(map_input, max_retries = 1, concurrency = 8)]
pub async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step]
pub async fn numbers(count: u32) -> anyhow::Result<Vec<u32>> {
    Ok((0..count).collect())
}

#[catbird::step(map = numbers)]
pub async fn square(count: u32, numbers: u32, ctx: &StepContext) -> anyhow::Result<u64> {
    let _ = ctx.item_index();
    Ok(u64::from(numbers) * u64::from(numbers) + u64::from(count))
}

#[catbird::step(map = "numbers", depends_on(numbers))]
pub async fn label(_: serde::de::IgnoredAny, numbers: u32) -> anyhow::Result<String> {
    Ok(numbers.to_string())
}

#[catbird::step(reduce = square)]
pub async fn total(total: u64, square: u64) -> anyhow::Result<u64> {
    Ok(total + square)
}

#[catbird::step(depends_on(square))]
pub async fn count(_: u32, square: Vec<u64>) -> anyhow::Result<usize> {
    Ok(square.len())
}

#[catbird::step(item)]
pub async fn halve(item: u32) -> anyhow::Result<f64> {
    Ok(f64::from(item) / 2.0)
}

#[catbird::step(item)]
async fn shout(item: String, ctx: StepContext) -> anyhow::Result<String> {
    Ok(format!("{item} in {}", ctx.step()))
}

#[catbird::step(signal, depends_on(numbers), generator(item = halve), batch_size = 16)]
pub async fn halves(
    count: u32,
    #[signal] limit: u32,
    numbers: Vec<u32>,
    items: Yielder<u32>,
    ctx: &StepContext,
) -> anyhow::Result<()> {
    let _ = ctx.step();
    items
        .send_all(numbers.into_iter().take(limit as usize).chain([count]))
        .await?;
    Ok(())
}

#[catbird::step(generator(item = shout))]
async fn shouts(text: String, items: catbird::worker::Yielder<String>) -> anyhow::Result<()> {
    items.send(text).await?;
    Ok(())
}

#[catbird::step(reduce = halves)]
pub async fn sum(sum: f64, halves: f64) -> anyhow::Result<f64> {
    Ok(sum + halves)
}

#[catbird::step(depends_on(halves))]
pub async fn all(_: u32, halves: Vec<f64>) -> anyhow::Result<usize> {
    Ok(halves.len())
}

fn main() {
    assert_eq!(double::definition().kind, StepKind::Map(MapSource::Input));
    assert_eq!(double::handler().options().max_retries, 1);
    let square = square::definition();
    assert_eq!(square.kind, StepKind::Map(MapSource::Step("numbers".into())));
    assert_eq!(square.depends_on.len(), 1);
    assert_eq!(label::definition().depends_on.len(), 1);
    assert_eq!(total::definition().kind, StepKind::Reduce("square".into()));
    assert_eq!(total::definition().depends_on[0].name, "square");
    assert_eq!(halves::definition().kind, StepKind::Generator);
    assert_eq!(shouts::definition().kind, StepKind::Generator);

    let flow = Flow::new("fan_out")
        .step(numbers)
        .step(square)
        .step(total)
        .step(count)
        .step(halves)
        .step(sum)
        .step(all);
    assert_eq!(flow.definition().steps.len(), 7);
    let flow = Flow::new("fan_out_input").step(double).step(numbers).step(label);
    assert_eq!(flow.definition().steps.len(), 3);
    let _ = Flow::new("shouting").step(shouts);
}
