//! Procedural macros of catbird, used through the `catbird` facade crate.
//!
//! The `#[catbird::task]` and `#[catbird::step]` attributes arrive with the
//! task executor; this crate holds them so that a process that only enqueues
//! work never compiles `syn`.
//!
//! ```
//! // Nothing to call yet: the crate builds as an empty proc-macro library.
//! ```
