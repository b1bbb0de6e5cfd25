//! Sources: where bytes come from when no peer has them (the "back-to-source" path).

pub mod error;
pub mod http;
pub mod oras;

pub use http::{HttpSource, Probe, SourceOptions};
pub use oras::{OrasClient, OrasError, OrasOptions, OrasReference};

use dragonfly_common::digest::Digest;

/// The digest of an OCI blob URL (`.../blobs/sha256:<hex>`), the task key of a layer whatever
/// mirror or signed URL it came through.
pub fn blob_digest(url: &str) -> Option<Digest> {
    let path = url.split(['?', '#']).next()?;
    let (_, rest) = path.rsplit_once("/blobs/")?;
    if rest.contains('/') {
        return None;
    }
    rest.parse().ok()
}
