//! The shortest form: a private task in a binary, registered with a worker
//! and never run from here, compiles without a warning.
#![deny(warnings)]

use catbird::worker::{TaskContext, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Image {
    url: String,
}

#[derive(Serialize, Deserialize)]
struct Thumb {
    url: String,
    attempt: i32,
}

#[derive(Debug)]
struct ResizeError;

impl std::fmt::Display for ResizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot resize")
    }
}

impl std::error::Error for ResizeError {}

#[catbird::task]
async fn resize(image: Image, ctx: &TaskContext) -> Result<Thumb, ResizeError> {
    if image.url.is_empty() {
        return Err(ResizeError);
    }
    Ok(Thumb {
        url: format!("{}?w=64", image.url),
        attempt: ctx.attempt(),
    })
}

fn main() {
    let pool = catbird::pool_from_url("postgres://127.0.0.1/app", 1).unwrap();
    let worker = Worker::new(pool).task(resize);
    drop(worker);
    assert_eq!(resize::handler().name(), "resize");
}
