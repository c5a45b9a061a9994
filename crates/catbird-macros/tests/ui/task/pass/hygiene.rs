//! The expansion names nothing through the scope it lands in: local items
//! called `Result`, `Option`, `Some`, `Default`, `Duration`, `Task` or
//! `catbird` change nothing.
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
    pub struct Default;
    pub struct Duration;
    pub struct Task;
    pub struct TaskHandler;
    pub struct Client;
    pub mod catbird {}

    // A local `catbird` hides the crate, so the attribute is named from the
    // root here; the expansion already names everything from the root.
    #[::catbird::task(timeout = "1m", backoff(min = "1s", max = "1m"), on_fail = notify)]
    pub async fn count(words: Vec<String>) -> Result<usize> {
        Ok(words.len())
    }

    pub async fn notify(
        words: Vec<String>,
        failure: ::catbird::worker::TaskFailure,
    ) -> Result<()> {
        let _ = (words, failure);
        Ok(())
    }
}

fn main() {
    let handler = shadowing::count::handler();
    assert_eq!(handler.options().timeout, std::time::Duration::from_secs(60));
}
