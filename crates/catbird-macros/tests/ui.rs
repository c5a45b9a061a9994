//! Compile tests of the macros, one folder per macro. Every `fail` case is
//! one mistake, named after it, with the compiler's output pinned in its
//! `.stderr` file. Every `pass` case compiles a representative use under
//! `#![deny(warnings)]`.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test -p
//! catbird-macros --test ui`, then read every changed one: the messages are
//! part of the interface.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/task/pass/*.rs");
    cases.compile_fail("tests/ui/task/fail/*.rs");
    cases.pass("tests/ui/step/pass/*.rs");
    cases.compile_fail("tests/ui/step/fail/*.rs");
}
