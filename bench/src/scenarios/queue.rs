//! `queue`: messages through the Rust queue functions, one per call and in
//! batches of 100.

use std::time::Duration;

use catbird_core::queue::{
    CreateQueueOpts, SendManyOpts, SendOpts, create_queue, delete, delete_many, read, send,
    send_many,
};
use serde_json::json;

use super::CLIENTS;
use crate::Bench;
use crate::report::{Ceiling, Figure};
use crate::window::Loops;

/// The lease of a read; long enough that no message is read twice.
const HIDE_FOR: Duration = Duration::from_secs(60);

/// Measures send+read+delete one message per call, then send_many, read and
/// delete_many with 100 messages per call.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (batch, name, ceiling) in [
        (1, "send, read, delete: 1 per call", Ceiling::Single),
        (
            100,
            "send_many, read, delete_many: 100 per call",
            Ceiling::Batch,
        ),
    ] {
        let queue = format!("bench_queue_{batch}");
        create_queue(&bench.pool, &queue, CreateQueueOpts::default()).await?;
        bench.settle().await?;
        let rate = cycle(bench, &queue, batch).await?;
        figures.push(
            Figure::new(
                "queue",
                name,
                rate,
                "msg/s",
                json!({
                    "clients": CLIENTS,
                    "messages_per_call": batch,
                    "window_seconds": bench.window.as_secs_f64(),
                }),
            )
            .against(ceiling),
        );
    }
    Ok(figures)
}

async fn cycle(bench: &Bench, queue: &str, batch: usize) -> anyhow::Result<f64> {
    let pool = bench.pool.clone();
    let queue = queue.to_owned();
    let loops = Loops::start(CLIENTS, move |_, handle| {
        let pool = pool.clone();
        let queue = queue.clone();
        async move {
            let client = pool.get().await?;
            let bodies: Vec<serde_json::Value> = (0..batch).map(|i| json!({ "i": i })).collect();
            while !handle.stopped() {
                if batch == 1 {
                    send(&client, &queue, &bodies[0], SendOpts::default()).await?;
                    for message in read(&client, &queue, 1, HIDE_FOR).await? {
                        if delete(&client, &queue, message.id).await? {
                            handle.add(1);
                        }
                    }
                } else {
                    send_many(&client, &queue, &bodies, SendManyOpts::default()).await?;
                    let messages = read(&client, &queue, batch, HIDE_FOR).await?;
                    let ids: Vec<i64> = messages.iter().map(|message| message.id).collect();
                    let deleted = delete_many(&client, &queue, &ids).await?;
                    handle.add(deleted.len() as u64);
                }
            }
            Ok(())
        }
    });
    let rate = loops.measure(bench.warmup, bench.window).await?;
    Ok(rate.per_second)
}
