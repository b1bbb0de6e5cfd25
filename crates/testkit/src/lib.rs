//! Test and demo helpers.
//!
//! [`origin`] is a small HTTP origin server with `Range` support that counts the bytes and
//! requests it serves, and can misbehave on purpose (no Range, no HEAD, slow, fixed status,
//! wrong bytes) so tests can prove what the downloader does with each.
//!
//! [`registry`] runs the real thing for end-to-end tests: a TLS `docker-registry` whose access
//! log counts blob GETs, deterministic OCI images pushed to it, and containerd, podman and skopeo.
//!
//! [`daemon`] and [`scheduler`] run the workspace's daemon and scheduler, configured through
//! their real config types; [`dfget`] runs the CLI against a daemon; [`bins`] finds the
//! workspace's binaries; [`cli`] runs one to the end; [`net`] picks ports; [`files`] looks into what a daemon wrote;
//! [`storage`] holds the fixtures of storage tests; [`tmpfs`] mounts a small filesystem; [`process`] reads what a running process
//! was given and signals it; [`layers`] checks that a crate's modules depend downward only;
//! [`python`] makes a venv with pinned PyPI tools.
#![forbid(unsafe_code)]

pub mod bins;
pub mod cli;
pub mod daemon;
pub mod data;
pub mod dfget;
pub mod files;
pub mod layers;
pub mod net;
pub mod origin;
pub mod process;
pub mod python;
pub mod registry;
pub mod scheduler;
pub mod storage;
pub mod tmpfs;
