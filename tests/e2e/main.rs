//! End-to-end tests: the workspace's binaries together (dfdaemon, dfget, scheduler), with
//! counting origins, real registries and container clients. One test binary, a module per area;
//! tests that need only one crate stay in that crate's `tests/`.
//!
//! The binaries are found next to this test (`testkit::bins`): `make test` and
//! `cargo test --workspace` build them; `cargo test -p e2e` alone needs
//! `cargo build --workspace --bins` first.

mod config_effects;
mod containerd_hosts;
mod daemon_process;
mod demo;
mod image;
mod metrics;
mod oras;
mod registry;
mod scheduler_restart;
mod secrets;
mod support;
mod swarm;
mod systemd;
mod trust;
