//! Project automation, run as `cargo xtask <command>`.

fn main() {
    eprintln!("usage: cargo xtask <db|demo|test|migrate>");
}
