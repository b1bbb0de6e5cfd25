//! dfdaemon: the per-node daemon of the P2P distribution system, and the engine behind dfget.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod proxy;
pub mod rate;
pub mod scheduling;
pub mod sendfile;
pub mod serve;
pub mod source;
pub mod standalone;
pub mod stats;
pub mod storage;
pub mod task;
pub mod upload;
