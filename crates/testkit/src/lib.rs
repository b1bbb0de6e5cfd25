//! Test and demo helpers.
//!
//! [`origin`] is a small HTTP origin server with `Range` support that counts the bytes and
//! requests it serves, and can misbehave on purpose (no Range, no HEAD, slow, fixed status,
//! wrong bytes) so tests can prove what the downloader does with each.
//!
//! [`registry`] runs the real thing for end-to-end tests: a TLS `docker-registry` whose access
//! log counts blob GETs, deterministic OCI images pushed to it, and containerd, podman and skopeo.
//!
//! [`layers`] checks that a crate's modules depend downward only.
//!
//! [`scheduler`] runs the workspace's scheduler binary for tests; [`process`] reads what a
//! running process was given.
#![forbid(unsafe_code)]

pub mod data;
pub mod layers;
pub mod origin;
pub mod process;
pub mod registry;
pub mod scheduler;
