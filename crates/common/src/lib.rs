//! Shared building blocks of dfdaemon, dfget and the scheduler.
#![forbid(unsafe_code)]

pub mod config;
pub mod digest;
pub mod error;
pub mod hashring;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod open_files;
pub mod piece;
pub mod secret;
pub mod signal;
pub mod task_id;
pub mod validator;
