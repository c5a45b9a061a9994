//! A step may return an alias of `Result` without type arguments; steps
//! that depend on it by path still have their parameter types checked.
#![deny(warnings)]

type Result = std::result::Result<u8, std::io::Error>;

#[catbird::step]
async fn first(count: u8) -> Result {
    Ok(count + 1)
}

#[catbird::step(depends_on(first))]
async fn second(count: u8, first: u8) -> anyhow::Result<u16> {
    Ok(u16::from(count) + u16::from(first))
}

fn main() {
    assert_eq!(second::definition().depends_on[0].name, "first");
}
