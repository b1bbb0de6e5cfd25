//! Sources: where bytes come from when no peer has them (the "back-to-source" path).

pub mod http;
pub mod oras;

pub use http::{HttpSource, Probe, SourceOptions};
pub use oras::{OrasClient, OrasError, OrasOptions, OrasReference};
