//! Re-runs the build when a migration file changes, so `include_str!` never
//! embeds a stale copy.

fn main() {
    println!("cargo::rerun-if-changed=../../sql");
}
