//! The expansion names nothing through the scope it lands in: local items
//! called `Result`, `Option`, `Some`, `Into`, `StepDef`, `Dependency`,
//! `anyhow` or `catbird` change nothing.
#![deny(warnings)]
#![allow(dead_code)]

mod shadowing {
    use std::fmt;

    #[derive(Debug)]
    pub struct Error;

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error")
        }
    }

    impl std::error::Error for Error {}

    pub type Result<T> = std::result::Result<T, Error>;
    pub struct Option;
    pub struct Some;
    pub struct Into;
    pub struct Duration;
    pub struct StepDef;
    pub struct Dependency;
    pub struct StepArgs;
    pub mod anyhow {}
    pub mod catbird {}

    // A local `catbird` hides the crate, so the attribute is named from the
    // root here; the expansion already names everything from the root.
    #[::catbird::step(timeout = "1m")]
    pub async fn count(words: Vec<String>) -> Result<usize> {
        Ok(words.len())
    }

    #[::catbird::step(depends_on(count), backoff(min = "1s", max = "1m"))]
    pub async fn double(
        args: Vec<String>,
        count: usize,
        ctx: ::catbird::worker::StepContext,
    ) -> Result<usize> {
        let _ = (args, ctx);
        Ok(count * 2)
    }
}

fn main() {
    let handler = shadowing::double::handler();
    assert_eq!(handler.options().timeout, std::time::Duration::from_secs(30));
    assert_eq!(handler.definition().depends_on[0].name, "count");
}
