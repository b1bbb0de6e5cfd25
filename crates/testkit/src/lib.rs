//! Test and demo helpers.
//!
//! [`origin`] is a small HTTP origin server with `Range` support that counts the bytes and
//! requests it serves, and can misbehave on purpose (no Range, no HEAD, slow, fixed status,
//! wrong bytes) so tests can prove what the downloader does with each.
#![forbid(unsafe_code)]

pub mod data;
pub mod origin;
