//! ORAS artifacts (`oras://HOST[:PORT]/REPO[:TAG|@DIGEST]`, what Singularity/Apptainer push):
//! resolve the manifest to the one blob that holds the artifact, with the registry auth needed
//! to fetch it. The blob itself is then an ordinary P2P task keyed by its digest.
//!
//! Auth follows the registry's `WWW-Authenticate` challenge: anonymous first; `Bearer` gets a
//! token from the realm (with Basic credentials when known); `Basic` sends the credentials.

mod auth;
mod client;
mod manifest;
mod options;
mod reference;

pub use auth::{
    Challenge, Credentials, base64_decode, base64_encode, docker_config_credentials,
    docker_config_path, parse_challenge, userinfo_to_authorization,
};
pub use client::OrasClient;
pub use manifest::{Descriptor, SIF_LAYER};
pub use options::OrasOptions;
pub use reference::{OrasReference, Reference, SCHEME, is_oras_url};

use dragonfly_common::digest::Digest;
use http::{HeaderMap, HeaderValue, header};
use std::time::Duration;

/// Why an ORAS reference could not be resolved. Messages name the reference, the registry and
/// what to do; never a password or token.
#[derive(Debug, thiserror::Error)]
pub enum OrasError {
    /// Not `oras://HOST/REPO[:TAG|@DIGEST]`.
    #[error("{url} is not an ORAS reference (oras://HOST[:PORT]/REPO[:TAG|@sha256:HEX]): {reason}")]
    InvalidReference {
        /// What the user gave (credentials in it redacted).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (no TLS roots).
    #[error("the ORAS registry client")]
    Client(#[source] reqwest::Error),
    /// `oras.proxy` is not a proxy URL.
    #[error("the ORAS registry client: oras.proxy {proxy:?} is not a proxy URL")]
    InvalidProxy {
        /// The proxy URL, its password redacted.
        proxy: String,
        /// Why it does not work.
        #[source]
        source: reqwest::Error,
    },
    /// The registry or token server could not be reached.
    #[error("cannot reach {url}{hint}")]
    Connect {
        /// The URL.
        url: String,
        /// ` (through oras.proxy ...)` and what to do about an untrusted certificate, or empty.
        hint: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No response headers within `oras.responseHeaderTimeout` (plus the connect time).
    #[error("{url} sent no response within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The tag, digest or repository does not exist.
    #[error("{reference}: {what} not found in {registry} ({detail})")]
    NotFound {
        /// The reference.
        reference: String,
        /// `manifest v1` or `manifest sha256:...`.
        what: String,
        /// `host:port/repo`.
        registry: String,
        /// The registry's error code and message.
        detail: String,
    },
    /// The registry wants credentials and none were given.
    #[error(
        "{reference}: {registry} requires authentication ({scheme}) and no credentials were given; \
         pass --username/--password (or DFGET_ORAS_USERNAME/DFGET_ORAS_PASSWORD), or `docker login {registry}`"
    )]
    NeedsCredentials {
        /// The reference.
        reference: String,
        /// `host:port`.
        registry: String,
        /// `Basic` or `Bearer`.
        scheme: &'static str,
    },
    /// The credentials were refused, or grant no pull access to the repository.
    #[error("{reference}: {registry} refused the credentials of user {user:?} ({detail})")]
    CredentialsRefused {
        /// The reference.
        reference: String,
        /// `host:port`.
        registry: String,
        /// The user name (never the password).
        user: String,
        /// What the registry or token server said.
        detail: String,
    },
    /// The token server's realm is not a URL.
    #[error("{reference}: token server {realm}: not a URL")]
    TokenRealm {
        /// The reference.
        reference: String,
        /// The realm the registry named.
        realm: String,
        /// The parser's error.
        #[source]
        source: url::ParseError,
    },
    /// The token server's answer is not JSON.
    #[error("{reference}: token server {realm}: the answer is not JSON")]
    TokenAnswer {
        /// The reference.
        reference: String,
        /// The realm URL.
        realm: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A digest in a manifest does not parse.
    #[error("{reference}: {what} has digest {raw:?}")]
    BadDigest {
        /// The reference.
        reference: String,
        /// What holds it (`the manifest`, `layer 0`).
        what: String,
        /// The digest as written.
        raw: String,
        /// The parser's error (boxed: it is large, and errors travel in every `Result`).
        #[source]
        source: Box<dragonfly_common::digest::DigestError>,
    },
    /// The token server answered something unusable.
    #[error("{reference}: token server {realm}: {reason}")]
    Token {
        /// The reference.
        reference: String,
        /// The realm URL.
        realm: String,
        /// What was wrong.
        reason: String,
    },
    /// Any other non-2xx answer.
    #[error("{url} answered {status}{detail}")]
    Status {
        /// The URL.
        url: String,
        /// `500 Internal Server Error`.
        status: String,
        /// Numeric status.
        code: u16,
        /// `: <registry error>` or empty.
        detail: String,
    },
    /// The manifest cannot be read, or does not match its digest.
    #[error("{reference}: {reason}")]
    BadManifest {
        /// The reference.
        reference: String,
        /// What was wrong.
        reason: String,
    },
    /// An index with several manifests: the user has to pick one.
    #[error("{reference}: {reason}; pull one of them by digest, e.g. {hint}")]
    Ambiguous {
        /// The reference.
        reference: String,
        /// The candidates.
        reason: String,
        /// The first candidate as an `oras://...@digest` reference.
        hint: String,
    },
    /// No layer, or no single layer, holds the artifact.
    #[error("{reference}: {reason}")]
    NoArtifact {
        /// The reference.
        reference: String,
        /// The layers found.
        reason: String,
    },
}

/// How to authenticate to the registry.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// Anonymous; a challenge without credentials is an error.
    #[default]
    Anonymous,
    /// Answer challenges with these (Basic, or the token exchange).
    Credentials(Credentials),
    /// Send this `Authorization` value as is (a token the user already has).
    Header(HeaderValue),
}

impl RegistryAuth {
    /// Take `Authorization` out of `headers`: `Basic` becomes credentials (what dfget sends
    /// the daemon), anything else is sent as is.
    pub fn take_from(headers: &mut HeaderMap) -> RegistryAuth {
        match headers.remove(header::AUTHORIZATION) {
            None => RegistryAuth::Anonymous,
            Some(v) => match Credentials::from_basic_header(&v) {
                Some(c) => RegistryAuth::Credentials(c),
                None => {
                    let mut v = v;
                    v.set_sensitive(true);
                    RegistryAuth::Header(v)
                }
            },
        }
    }

    fn credentials(&self) -> Option<&Credentials> {
        match self {
            RegistryAuth::Credentials(c) => Some(c),
            _ => None,
        }
    }
}

/// The blob that holds an artifact, and how to fetch it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `https://HOST/v2/REPO/blobs/<digest>`.
    pub blob_url: String,
    /// The blob's digest (the task key and the check of the content).
    pub digest: Digest,
    /// The blob's length from the manifest.
    pub size: u64,
    /// The layer's media type.
    pub media_type: String,
    /// The file name oras recorded (`org.opencontainers.image.title`).
    pub title: Option<String>,
    /// Digest of the manifest the layer was found in.
    pub manifest_digest: Digest,
    /// Headers for the blob GET: the caller's extra headers and the `Authorization` that worked
    /// for the manifest (marked sensitive).
    pub headers: HeaderMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers_become_credentials_or_pass_as_is() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            Credentials::new("u", "p").basic_header(),
        );
        h.insert("x-extra", HeaderValue::from_static("1"));
        assert!(
            matches!(RegistryAuth::take_from(&mut h), RegistryAuth::Credentials(c) if c.username() == "u")
        );
        assert!(!h.contains_key(header::AUTHORIZATION) && h.contains_key("x-extra"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(matches!(
            RegistryAuth::take_from(&mut h),
            RegistryAuth::Header(v) if v.is_sensitive()
        ));
        assert!(matches!(
            RegistryAuth::take_from(&mut h),
            RegistryAuth::Anonymous
        ));
    }
}
