//! Procedural macros of catbird, used through the `catbird` facade crate,
//! which documents them: `#[catbird::task]` turns an `async fn` into a task,
//! and `#[catbird::step]` turns one into a flow step.
//!
//! The macros live in their own crate so that a process that only enqueues
//! work never compiles `syn`. Each macro is a pipeline of plain modules.
//! `parse` turns the arguments and the function into a model that keeps the
//! user's tokens. `validate` finds every problem and reports each at its
//! tokens. `expand` generates the items, or a stand-in when the function
//! cannot make a task or a step. `common` contains the parts of each stage
//! that both macros share.

mod common;
mod duration;
mod errors;
mod step;
mod suggest;
mod task;

use proc_macro::TokenStream;

/// Defines a flow step from an `async fn`. This attribute lives in
/// `catbird-macros`, and `catbird::step` re-exports and documents it.
#[proc_macro_attribute]
pub fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    step::step(args.into(), item.into()).into()
}

/// Defines a task from an `async fn`. This attribute lives in
/// `catbird-macros`, and `catbird::task` re-exports and documents it.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::task(args.into(), item.into()).into()
}
