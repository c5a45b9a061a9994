//! Procedural macros of catbird, used through the `catbird` facade crate,
//! which documents them: `#[catbird::task]` turns an `async fn` into a task.
//!
//! The macros live in their own crate so that a process that only enqueues
//! work never compiles `syn`. Each macro is a pipeline of plain modules.
//! `parse` turns the arguments and the function into a model that keeps the
//! user's tokens. `validate` finds every problem and reports each at its
//! tokens. `expand` generates the items, or a stand-in when the function
//! cannot make a task.

mod common;
mod duration;
mod errors;
mod suggest;
mod task;

use proc_macro::TokenStream;

/// Defines a task from an `async fn`. This attribute lives in
/// `catbird-macros`, and `catbird::task` re-exports and documents it.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::task(args.into(), item.into()).into()
}
