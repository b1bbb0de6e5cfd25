//! `oras://HOST[:PORT]/REPO[:TAG|@DIGEST]`: what an ORAS reference names and where its
//! manifests and blobs live.

use super::OrasError;
use dragonfly_common::digest::Digest;
use std::fmt;

/// The URL scheme of ORAS references.
pub const SCHEME: &str = "oras";

/// The tag used when a reference names neither a tag nor a digest (as docker and oras do).
const DEFAULT_TAG: &str = "latest";

/// Whether `url` is an `oras://` reference (scheme compared case-insensitively).
pub fn is_oras_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(SCHEME))
}

/// A tag or a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `:tag`.
    Tag(String),
    /// `@sha256:<hex>`: the manifest (or index) with this digest.
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A parsed `oras://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrasReference {
    /// `host[:port]` as the user wrote it (the key of `~/.docker/config.json`).
    pub registry: String,
    /// Repository path, e.g. `library/app` or `sif/lolcow`.
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
}

impl OrasReference {
    /// Parse `oras://HOST[:PORT]/REPO[:TAG|@ALGO:HEX]` (no tag: `latest`).
    pub fn parse(url: &str) -> Result<Self, OrasError> {
        let shown = redact_userinfo(url);
        let bad = |reason: &str| OrasError::InvalidReference {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(SCHEME) => rest,
            _ => return Err(bad("it does not start with oras://")),
        };
        if rest.contains(['?', '#', ' ']) {
            return Err(bad("a reference has no query, fragment or spaces"));
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry host"))?;
        if registry.contains('@') {
            return Err(bad(
                "credentials do not go in the URL; use --username/--password or `docker login`",
            ));
        }
        validate_registry(registry).map_err(|r| bad(&r))?;
        let (repository, reference) = match path.rsplit_once('@') {
            Some((repo, digest)) => {
                let d = digest
                    .parse::<Digest>()
                    .map_err(|e| bad(&format!("bad digest after '@': {e}")))?;
                if d.algorithm() == dragonfly_common::digest::Algorithm::Crc32 {
                    return Err(bad("a manifest digest is sha256:<hex> or sha512:<hex>"));
                }
                (repo, Reference::Digest(d))
            }
            None => {
                // A ':' after the last '/' starts the tag.
                let last = path.rfind('/').map_or(0, |i| i + 1);
                match path[last..].find(':') {
                    Some(i) => {
                        let (repo, tag) = path.split_at(last + i);
                        let tag = &tag[1..];
                        validate_tag(tag).map_err(|r| bad(&r))?;
                        (repo, Reference::Tag(tag.to_string()))
                    }
                    None => (path, Reference::Tag(DEFAULT_TAG.to_string())),
                }
            }
        };
        validate_repository(repository).map_err(|r| bad(&r))?;
        Ok(OrasReference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            reference,
        })
    }

    /// `https://HOST[:PORT]`, the registry API base (Docker Hub's API host for `docker.io`).
    pub fn api_base(&self) -> String {
        let host = match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        format!("https://{host}")
    }

    /// The URL of manifest `reference` in this repository.
    pub fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{reference}",
            self.api_base(),
            self.repository
        )
    }

    /// The URL of blob `digest` in this repository.
    pub fn blob_url(&self, digest: &Digest) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.api_base(), self.repository)
    }

    /// This reference with `digest` instead of its tag (for an error's hint).
    pub fn with_digest(&self, digest: &str) -> String {
        format!("oras://{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for OrasReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "oras://{}/{}:{t}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "oras://{}/{}@{d}", self.registry, self.repository),
        }
    }
}

/// `url` with any `user:password@` before the host replaced by `***@`, for messages.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

fn validate_registry(registry: &str) -> Result<(), String> {
    if registry.is_empty() {
        return Err("no registry host".to_string());
    }
    // `[::1]:5000`, `host:5000`, `host`.
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {registry:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("registry host {host:?} is not a host name"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("registry port {p:?} is not a port number"));
    }
    Ok(())
}

/// Repository names: lowercase components of `[a-z0-9]` joined by `.`, `_`, `__`, `-`, split by `/`.
fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("no repository name".to_string());
    }
    for part in repo.split('/') {
        let ok = !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository {repo:?} is not valid (lowercase letters, digits and . _ - between them, / between components)"
            ));
        }
    }
    Ok(())
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not valid (up to 128 of letters, digits, . _ -, not starting with . or -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OrasReference {
        OrasReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_tags_digests_and_ports() {
        let r = p("oras://registry.test:5000/sif/app:v1.2");
        assert_eq!(r.registry, "registry.test:5000");
        assert_eq!(r.repository, "sif/app");
        assert_eq!(r.reference, Reference::Tag("v1.2".into()));
        assert_eq!(
            r.manifest_url("v1.2"),
            "https://registry.test:5000/v2/sif/app/manifests/v1.2"
        );
        assert_eq!(r.to_string(), "oras://registry.test:5000/sif/app:v1.2");

        let hex = "ab".repeat(32);
        let r = p(&format!("ORAS://ghcr.io/a/b/c@sha256:{hex}"));
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "a/b/c");
        assert!(matches!(&r.reference, Reference::Digest(d) if d.hex() == hex));
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(
            r.blob_url(&d),
            format!("https://ghcr.io/v2/a/b/c/blobs/sha256:{hex}")
        );

        let r = p("oras://localhost/app");
        assert_eq!(r.reference, Reference::Tag("latest".into()));
        assert_eq!(p("oras://[::1]:5000/app:x").registry, "[::1]:5000");
        assert_eq!(
            p("oras://docker.io/library/x:1").api_base(),
            "https://registry-1.docker.io"
        );
        assert!(is_oras_url("oras://h/r"));
        assert!(!is_oras_url("https://h/r"));
    }

    #[test]
    fn rejects_what_is_not_a_reference() {
        for (url, needle) in [
            ("https://h/r:t", "oras://"),
            ("oras://host", "no repository"),
            ("oras:///repo:t", "no registry host"),
            ("oras://u:p@host/repo:t", "credentials"),
            ("oras://host/Repo:t", "repository"),
            ("oras://host/repo:", "tag"),
            ("oras://host/repo:-x", "tag"),
            ("oras://host/repo@sha256:12", "digest"),
            ("oras://host/repo@crc32:12345678", "sha256"),
            ("oras://host:99999/repo", "port"),
            ("oras://host/repo:t?x=1", "query"),
            ("oras://host//repo", "repository"),
        ] {
            let e = OrasReference::parse(url).expect_err(url).to_string();
            assert!(e.contains(needle), "{url}: {e}");
            if !url.contains('@') || url.contains("@sha") || url.contains("@crc") {
                assert!(e.contains(url), "the error names the URL: {e}");
            }
        }
        let e = OrasReference::parse("oras://me:s3cret@host/repo")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("oras://***@host/repo"),
            "{e}"
        );
    }
}
