//! scheduler library: the cluster service that knows which peer holds which pieces and hands
//! each new peer its best parents. See `docs/scheduler.md`.
#![forbid(unsafe_code)]

pub mod config;
pub mod evaluator;
pub mod resource;
