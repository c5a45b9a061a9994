//! The quickstart: run with `cargo xtask demo`.

fn main() {}
