//! Fan-out steps defined with `#[catbird::step]`: mappers over the flow
//! input and over a step's output, a generator with its item handler, and
//! reducers over a mapper and a generator, each run by a real worker.

use catbird::Client;
use catbird::flow::RunFlowOpts;
use catbird::worker::{Flow, StepContext, Worker, Yielder};
use catbird_tests::TestDb;
use serde_json::json;

use crate::flow_helpers::{output_of, start};

#[catbird::step(map_input, max_retries = 0)]
async fn double(n: u32) -> anyhow::Result<u32> {
    Ok(n * 2)
}

#[catbird::step]
async fn numbers(count: u32) -> anyhow::Result<Vec<u32>> {
    Ok((1..=count).collect())
}

// The flow input stays the first parameter; `numbers` receives one element
// of the output of step `numbers`, and the context knows which.
#[catbird::step(map = numbers)]
async fn offset(base: u32, numbers: u32, ctx: &StepContext) -> anyhow::Result<String> {
    let index = ctx.item_index().unwrap_or(-1);
    Ok(format!("{index}:{}", base * 10 + numbers))
}

#[catbird::step(item)]
async fn double_item(item: u32) -> anyhow::Result<u32> {
    Ok(item * 2)
}

#[catbird::step(generator(item = double_item), batch_size = 2)]
async fn generate(count: u32, items: Yielder<u32>) -> anyhow::Result<()> {
    items.send_all(0..count).await?;
    Ok(())
}

#[catbird::step(reduce = generate)]
async fn sum_generated(total: u64, generate: u32) -> anyhow::Result<u64> {
    Ok(total + u64::from(generate))
}

#[catbird::step(reduce = double)]
async fn sum_doubled(total: u64, double: u32) -> anyhow::Result<u64> {
    Ok(total + u64::from(double))
}

/// Creates `flow`, starts a worker for it and runs it once on `input`;
/// returns the run's output.
async fn run_once(flow: Flow, input: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let name = flow.name().to_owned();
    client.create_flow(flow.definition()).await?;
    let worker = start(&db, Worker::new(db.pool.clone()).flow(flow)).await;
    let run = client
        .run_flow(&name, &input, RunFlowOpts::default())
        .await?;
    let output = output_of(&client, &run).await;
    worker.stop().await;
    Ok(output?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_input_doubles_each_element() -> anyhow::Result<()> {
    let output = run_once(Flow::new("double_input").step(double), json!([1, 2, 3])).await?;
    assert_eq!(output, json!([2, 4, 6]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_over_a_step_output_keeps_the_flow_input() -> anyhow::Result<()> {
    let flow = Flow::new("offset_numbers").step(numbers).step(offset);
    assert_eq!(offset::definition().depends_on[0].name, "numbers");
    let output = run_once(flow, json!(3)).await?;
    assert_eq!(output, json!(["0:31", "1:32", "2:33"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_items_are_doubled_and_summed() -> anyhow::Result<()> {
    let flow = Flow::new("generate_double_sum")
        .step(generate)
        .step(sum_generated);
    let output = run_once(flow, json!(5)).await?;
    assert_eq!(output, json!(20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reducer_folds_the_outputs_of_a_mapper() -> anyhow::Result<()> {
    let flow = Flow::new("double_sum").step(double).step(sum_doubled);
    let output = run_once(flow, json!([1, 2, 3, 4])).await?;
    assert_eq!(output, json!(20));
    Ok(())
}
