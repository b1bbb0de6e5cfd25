//! scheduler library: the cluster service that knows which peer holds which pieces and hands
//! each new peer its best parents. See `docs/scheduler.md`.
//!
//! Start one with [`serve`] on an already-bound listener:
//! `serve(listener, Arc::new(SchedulerState::new(config)), shutdown)`.
#![forbid(unsafe_code)]

pub mod bounds;
pub mod config;
pub mod evaluator;
pub mod finished;
pub mod gc;
pub mod grpc;
pub mod metrics;
pub mod resource;
pub mod seed;
pub mod server;
pub mod service;
pub mod state;

pub use server::serve;
pub use service::SchedulerService;
pub use state::SchedulerState;
