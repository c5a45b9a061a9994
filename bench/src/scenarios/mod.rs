//! The benchmark scenarios, one module each. Every `run` returns the figures
//! of its scenario.

pub(crate) mod ceiling;
pub(crate) mod flows;
pub(crate) mod idle;
pub(crate) mod latency;
pub(crate) mod map;
pub(crate) mod queue;
pub(crate) mod sql;
pub(crate) mod tasks;

/// Concurrent clients of the call-loop scenarios (`ceiling`, `queue`) and
/// producers of the single-call enqueue figure.
pub(crate) const CLIENTS: usize = 8;
