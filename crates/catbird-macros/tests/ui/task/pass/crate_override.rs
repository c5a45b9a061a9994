//! `crate = "..."` names catbird through a re-export, for crates that wrap
//! it.
#![deny(warnings)]

mod platform {
    pub use catbird as jobs;
}

#[catbird::task(crate = "crate::platform::jobs", name = "ping")]
pub async fn ping(count: u32, ctx: catbird::worker::TaskContext) -> anyhow::Result<u32> {
    let _ = ctx.task();
    Ok(count + 1)
}

fn main() {
    assert_eq!(ping::NAME, "ping");
    let _ = ping::definition();
}
