//! HTTP(S) origin access: probe the length, fetch byte ranges.

use crate::source::error::DownloadError;
use dragonfly_common::validator::SourceValidator;
use http::{HeaderMap, StatusCode, header};
use std::time::Duration;

/// Options of the HTTP source client.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response before giving up on it.
    pub read_timeout: Duration,
    /// Skip TLS certificate verification.
    pub insecure: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            insecure: false,
        }
    }
}

/// What a probe learnt about a URL.
#[derive(Debug)]
pub enum Probe {
    /// The length is known; ranges may work (confirmed by the first ranged GET).
    Length {
        /// Content length in bytes.
        content_length: u64,
        /// The version the length is of (`ETag`, `Last-Modified`).
        validator: SourceValidator,
    },
    /// No length or no range support: this response streams the whole body.
    Stream(reqwest::Response),
}

/// A client for HTTP(S) origins.
#[derive(Clone, Debug)]
pub struct HttpSource {
    client: reqwest::Client,
}

impl HttpSource {
    /// A client with these options (system roots, redirects followed).
    pub fn new(opts: &SourceOptions) -> Result<Self, DownloadError> {
        Self::with_tls(opts, Vec::new(), true)
    }

    /// A client that also trusts `roots` (on top of the system's) and follows redirects or not.
    ///
    /// Followed redirects to another host drop `Authorization` and cookies (reqwest's policy),
    /// so a registry's token never reaches the blob store it redirects to.
    pub fn with_tls(
        opts: &SourceOptions,
        roots: Vec<reqwest::Certificate>,
        follow_redirects: bool,
    ) -> Result<Self, DownloadError> {
        let redirect = if follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        };
        Self::build(Self::builder(opts, roots).redirect(redirect))
    }

    /// The client settings of [`HttpSource::with_tls`] without its redirect policy, for a
    /// caller that adds more (the proxy sets its own DNS resolver and redirect checks).
    pub fn builder(
        opts: &SourceOptions,
        roots: Vec<reqwest::Certificate>,
    ) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .tls_danger_accept_invalid_certs(opts.insecure)
            .tls_certs_merge(roots)
            // Parallel ranges go faster over separate HTTP/1.1 connections than one h2 stream set.
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("dfget/", env!("CARGO_PKG_VERSION")))
    }

    /// A source over the client `builder` builds.
    pub fn build(builder: reqwest::ClientBuilder) -> Result<Self, DownloadError> {
        let client = builder.build().map_err(DownloadError::Client)?;
        Ok(Self { client })
    }

    /// A source over an already-built client (e.g. the ORAS client with the `oras` settings).
    pub fn from_client(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// The underlying client (the proxy forwards requests with it).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Learn the content length: HEAD, or a one-byte ranged GET when HEAD is refused.
    pub async fn probe(&self, url: &str, headers: &HeaderMap) -> Result<Probe, DownloadError> {
        let head = self
            .client
            .head(url)
            .headers(headers.clone())
            .send()
            .await
            .map_err(|e| DownloadError::connect(url, e))?;
        if head.status().is_success()
            && let Some(len) = content_length(head.headers())
        {
            return Ok(Probe::Length {
                content_length: len,
                validator: validator_of(head.headers()),
            });
        }
        // HEAD refused or gave no length: ask for the first byte, which also tells range support.
        let resp = self
            .client
            .get(url)
            .headers(headers.clone())
            .header(header::RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(|e| DownloadError::connect(url, e))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => match content_range(resp.headers()) {
                Some((_, _, Some(total))) => Ok(Probe::Length {
                    content_length: total,
                    validator: validator_of(resp.headers()),
                }),
                _ => Err(bad(
                    url,
                    "206 response without a total length in Content-Range",
                )),
            },
            // An empty resource cannot satisfy bytes=0-0.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Probe::Length {
                content_length: 0,
                validator: validator_of(resp.headers()),
            }),
            s if s.is_success() => Ok(Probe::Stream(resp)),
            _ => Err(status_error(url, resp.status(), resp.headers())),
        }
    }

    /// GET `url`, whole (`range: None`) or the inclusive byte range `(first, last)`.
    ///
    /// Returns the response when its status is 2xx; the caller checks 206 vs 200.
    pub async fn get(
        &self,
        url: &str,
        headers: &HeaderMap,
        range: Option<(u64, u64)>,
    ) -> Result<reqwest::Response, DownloadError> {
        self.get_version(url, headers, range, None).await
    }

    /// [`HttpSource::get`] of a range of one version of the content: with `If-Range`, an origin
    /// whose content changed answers `200` with the new whole content instead of a range of
    /// it, which the caller tells apart by [`validator_of`] the response.
    pub async fn get_version(
        &self,
        url: &str,
        headers: &HeaderMap,
        range: Option<(u64, u64)>,
        version: Option<&SourceValidator>,
    ) -> Result<reqwest::Response, DownloadError> {
        let mut req = self.client.get(url).headers(headers.clone());
        if let Some((first, last)) = range {
            req = req.header(header::RANGE, format!("bytes={first}-{last}"));
            if let Some(v) = version.and_then(SourceValidator::if_range) {
                req = req.header(header::IF_RANGE, v);
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| DownloadError::connect(url, e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, resp.status(), resp.headers()));
        }
        Ok(resp)
    }
}

fn bad(url: &str, reason: &str) -> DownloadError {
    DownloadError::BadResponse {
        url: url.to_string(),
        what: reason.to_string(),
    }
}

/// An error for a non-2xx status (keeping an auth challenge for the client).
pub fn status_error(url: &str, status: StatusCode, headers: &HeaderMap) -> DownloadError {
    DownloadError::Status {
        challenge: headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        url: url.to_string(),
        status: format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string(),
        code: status.as_u16(),
    }
}

/// The version a response is of: its `ETag` and `Last-Modified` headers.
pub fn validator_of(headers: &HeaderMap) -> SourceValidator {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    SourceValidator {
        etag: get(header::ETAG),
        last_modified: get(header::LAST_MODIFIED),
    }
}

/// `Content-Length` as a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range: bytes first-last/total` (total may be `*`).
pub fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_RANGE, v.parse().unwrap());
        m
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(
            content_range(&h("bytes 0-0/1234")),
            Some((0, 0, Some(1234)))
        );
        assert_eq!(content_range(&h("bytes 5-9/*")), Some((5, 9, None)));
        assert_eq!(content_range(&h("bytes */1234")), None);
        assert_eq!(content_range(&h("items 0-1/2")), None);
    }
}
