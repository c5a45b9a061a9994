//! `crate = "..."` names catbird through a re-export, for crates that wrap
//! it.
#![deny(warnings)]

mod platform {
    pub use catbird as jobs;
}

#[catbird::step(crate = "crate::platform::jobs")]
pub async fn first(count: u32) -> anyhow::Result<u32> {
    Ok(count + 1)
}

#[catbird::step(crate = "crate::platform::jobs", depends_on(first))]
pub async fn second(count: u32, first: u32) -> anyhow::Result<u32> {
    Ok(count + first)
}

fn main() {
    assert_eq!(second::NAME, "second");
    assert_eq!(second::definition().depends_on[0].name, "first");
}
