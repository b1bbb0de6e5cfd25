//! Real registries, images and clients for end-to-end tests and benchmarks.
//!
//! Everything here drives the real programs a user runs (Debian packages `docker-registry`,
//! `skopeo`, `containerd`, `podman`, `apache2-utils`), so a test that uses it proves the system
//! works with them, not with a model of them:
//!
//! - [`ensure_test_hosts`]: names like `registry.test` for 127.0.0.1 in `/etc/hosts`. Go clients
//!   (skopeo, ctr, podman) ignore `HTTPS_PROXY` for loopback IPs and `localhost`, and ctr talks
//!   plain HTTP to `127.0.0.1:PORT`, so a registry must be addressed by a name.
//! - [`Pki`]: a CA and a server certificate, plus the trust files each client wants.
//! - [`Registry`]: CNCF distribution 2.8 on a free port, TLS, optional htpasswd, access log parsed
//!   into [`LoggedRequest`]s so a test can count the blob GETs and bytes the origin served.
//! - [`ImageSpec`] / [`TestImage`] / [`RegistryClient`]: deterministic images with random-data
//!   layers (uncompressed tar, so containerd can unpack them), pushed through the registry API.
//! - [`Containerd`], [`Podman`], [`skopeo`]: private client instances in temp dirs.
//!
//! Long-running processes are children of the test process and are stopped when their handle
//! drops. Commands are returned as [`std::process::Command`]; in an async test whose proxy runs
//! on the same runtime, run them with [`run`] (tokio) so the runtime keeps serving.

mod access_log;
mod clients;
mod error;
mod hosts;
mod image;
mod pki;
mod process;
mod push;
mod server;

pub use access_log::{LoggedRequest, parse_access_log};
pub use clients::{Containerd, HostsToml, MirrorHost, PROXY_VARS, Podman, run, skopeo};
pub use error::{Error, Result};
pub use hosts::{HOSTS_MARKER, ensure_test_hosts};
pub use image::{Blob, ImageSpec, Layer, TestImage, oci_arch, sha256_digest};
pub use pki::{Pki, write_ca_bundle, write_cert_dir};
pub use push::RegistryClient;
pub use server::{Registry, RegistryOptions, blob_data_path};

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Default registry host name used by the tests (mapped to 127.0.0.1 by [`ensure_test_hosts`]).
pub const DEFAULT_HOST: &str = "registry.test";
