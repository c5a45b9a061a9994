//! The shortest form: private steps with private types and a custom error
//! in a binary, added to a flow and never run from here, compile without a
//! warning.
#![deny(warnings)]

use catbird::worker::{Flow, StepContext};
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

#[catbird::step]
async fn resize(image: Image, ctx: &StepContext) -> Result<Thumb, ResizeError> {
    if image.url.is_empty() {
        return Err(ResizeError);
    }
    Ok(Thumb {
        url: format!("{}?w=64", image.url),
        attempt: ctx.attempt(),
    })
}

#[catbird::step(depends_on(resize))]
async fn publish(_: serde::de::IgnoredAny, resize: Thumb) -> anyhow::Result<String> {
    Ok(format!("{} ({})", resize.url, resize.attempt))
}

fn main() {
    let flow = Flow::new("thumbnails").step(resize).step(publish);
    assert_eq!(flow.definition().steps.len(), 2);
}
