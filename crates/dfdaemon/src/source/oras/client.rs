//! The registry side of a resolution: manifests, the auth challenge and token exchange.

use super::auth::{self, Challenge};
use super::manifest::{self, Document};
use super::{Artifact, OrasError, OrasOptions, OrasReference, Reference, RegistryAuth};
use dragonfly_common::digest::{Algorithm, Digest};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// Largest manifest or token response read (registries cap manifests at 4 MiB).
const MAX_DOCUMENT: usize = 4 << 20;
/// Bytes of an error body kept for the message.
const MAX_ERROR_BODY: usize = 4 << 10;

/// A registry client for ORAS references.
#[derive(Debug, Clone)]
pub struct OrasClient {
    http: reqwest::Client,
    opts: OrasOptions,
}

impl OrasClient {
    /// A client with these options (system trust store, redirects followed; reqwest drops
    /// `Authorization` on a redirect to another host, so a token never reaches a blob store).
    pub fn new(opts: &OrasOptions) -> Result<Self, OrasError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("dfget/", env!("CARGO_PKG_VERSION"), " (oras)"))
            .redirect(reqwest::redirect::Policy::limited(10))
            // Blob pieces are parallel ranges: faster over separate HTTP/1.1 connections.
            .http1_only()
            .tls_danger_accept_invalid_certs(opts.insecure_skip_verify)
            .pool_max_idle_per_host(opts.max_idle_conns as usize)
            .pool_idle_timeout(
                (!opts.idle_conn_timeout.is_zero()).then_some(opts.idle_conn_timeout),
            )
            .tcp_keepalive((!opts.keep_alive.is_zero()).then_some(opts.keep_alive));
        if let Some(t) = opts.connect_timeout() {
            b = b.connect_timeout(t);
        }
        if !opts.response_header_timeout.is_zero() {
            b = b.read_timeout(opts.response_header_timeout);
        }
        if let Some(p) = &opts.proxy {
            let proxy =
                reqwest::Proxy::all(p.as_str()).map_err(|source| OrasError::InvalidProxy {
                    proxy: redact_proxy(p),
                    source,
                })?;
            b = b.proxy(proxy);
        }
        let http = b.build().map_err(OrasError::Client)?;
        Ok(Self {
            http,
            opts: opts.clone(),
        })
    }

    /// The HTTP client (with the `oras` settings), also used for the blob's pieces.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The options this client was built with.
    pub fn options(&self) -> &OrasOptions {
        &self.opts
    }

    /// Resolve `reference` to the blob holding its artifact. `extra` headers go to every
    /// registry request (not to the token server).
    pub async fn resolve(
        &self,
        reference: &OrasReference,
        auth: RegistryAuth,
        extra: &HeaderMap,
    ) -> Result<Artifact, OrasError> {
        let mut s = Session {
            client: self,
            reference,
            shown: reference.to_string(),
            header: match &auth {
                RegistryAuth::Header(h) => Some(h.clone()),
                _ => None,
            },
            auth,
            extra,
        };
        let (first, layers_or_index) = s.manifest(&reference.reference).await?;
        let (manifest_digest, layers) = match layers_or_index {
            Document::Manifest(layers) => (first, layers),
            Document::Index(entries) => {
                let entry =
                    manifest::pick_manifest(&entries).map_err(|reason| match entries.first() {
                        Some(e) if entries.len() > 1 => OrasError::Ambiguous {
                            reference: s.shown.clone(),
                            reason,
                            hint: reference.with_digest(&e.digest),
                        },
                        _ => OrasError::NoArtifact {
                            reference: s.shown.clone(),
                            reason,
                        },
                    })?;
                let d = s.digest_of(&entry.digest, "the index entry")?;
                match s.manifest(&Reference::Digest(d)).await? {
                    (d, Document::Manifest(layers)) => (d, layers),
                    (d, Document::Index(_)) => {
                        return Err(OrasError::BadManifest {
                            reference: s.shown.clone(),
                            reason: format!("the index points at another index ({d})"),
                        });
                    }
                }
            }
        };
        let layer = manifest::pick_layer(&layers).map_err(|reason| OrasError::NoArtifact {
            reference: s.shown.clone(),
            reason,
        })?;
        let digest = s.digest_of(&layer.digest, "the layer")?;
        let mut headers = extra.clone();
        if let Some(h) = &s.header {
            headers.insert(header::AUTHORIZATION, h.clone());
        }
        Ok(Artifact {
            blob_url: reference.blob_url(&digest),
            digest,
            size: layer.size,
            media_type: layer.media_type.clone(),
            title: layer.title().map(str::to_string),
            manifest_digest,
            headers,
        })
    }
}

/// One resolution: the auth header found so far is reused for every later request.
struct Session<'a> {
    client: &'a OrasClient,
    reference: &'a OrasReference,
    shown: String,
    auth: RegistryAuth,
    header: Option<HeaderValue>,
    extra: &'a HeaderMap,
}

impl Session<'_> {
    fn digest_of(&self, raw: &str, what: &str) -> Result<Digest, OrasError> {
        let d: Digest = raw.parse().map_err(|e| OrasError::BadDigest {
            reference: self.shown.clone(),
            what: what.to_string(),
            raw: raw.to_string(),
            source: Box::new(e),
        })?;
        if d.algorithm() == Algorithm::Crc32 {
            return Err(OrasError::BadManifest {
                reference: self.shown.clone(),
                reason: format!("{what} has digest {raw:?}, not sha256 or sha512"),
            });
        }
        Ok(d)
    }

    /// GET a manifest by tag or digest; a digest reference is checked against the bytes.
    async fn manifest(&mut self, r: &Reference) -> Result<(Digest, Document), OrasError> {
        let url = self.reference.manifest_url(&r.to_string());
        let resp = self.get(&url, Some(manifest::ACCEPT)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let detail = error_detail(resp).await;
            return Err(OrasError::NotFound {
                reference: self.shown.clone(),
                what: format!("manifest {r}"),
                registry: format!("{}/{}", self.reference.registry, self.reference.repository),
                detail,
            });
        }
        let resp = expect_success(&url, resp).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(&url, resp, MAX_DOCUMENT).await?;
        let algorithm = match r {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let actual = Digest::of(algorithm, &body);
        if let Reference::Digest(expected) = r
            && *expected != actual
        {
            return Err(OrasError::BadManifest {
                reference: self.shown.clone(),
                reason: format!("manifest {url} has digest {actual}, not the {expected} asked for"),
            });
        }
        let doc = manifest::parse(content_type.as_deref(), &body).map_err(|reason| {
            OrasError::BadManifest {
                reference: self.shown.clone(),
                reason: format!("{url}: {reason}"),
            }
        })?;
        Ok((actual, doc))
    }

    /// GET `url` from the registry, answering one auth challenge if there is one.
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, OrasError> {
        let mut answered = false;
        loop {
            let mut rb = self.client.http.get(url).headers(self.extra.clone());
            if let Some(a) = accept {
                rb = rb.header(header::ACCEPT, a);
            }
            if let Some(h) = &self.header {
                rb = rb.header(header::AUTHORIZATION, h.clone());
            }
            let resp = self.client.send(url, rb).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = auth::pick_challenge(
                resp.headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            if answered || matches!(self.auth, RegistryAuth::Header(_)) {
                let detail = error_detail(resp).await;
                return Err(self.refused(challenge.as_ref(), detail));
            }
            answered = true;
            match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let token = self
                        .token(&realm, service.as_deref(), scope.as_deref())
                        .await?;
                    let mut v =
                        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                            OrasError::Token {
                                reference: self.shown.clone(),
                                realm: realm.clone(),
                                reason: "the token is not a valid header value".to_string(),
                            }
                        })?;
                    v.set_sensitive(true);
                    self.header = Some(v);
                }
                Some(Challenge::Basic) => match self.auth.credentials() {
                    Some(c) => self.header = Some(c.basic_header()),
                    None => {
                        return Err(OrasError::NeedsCredentials {
                            reference: self.shown.clone(),
                            registry: self.reference.registry.clone(),
                            scheme: "Basic",
                        });
                    }
                },
                Some(Challenge::Other(scheme)) => {
                    return Err(OrasError::Status {
                        url: url.to_string(),
                        status: "401 Unauthorized".to_string(),
                        code: 401,
                        detail: format!(
                            ": unsupported auth scheme {scheme:?} (Basic and Bearer are)"
                        ),
                    });
                }
                None => {
                    let detail = error_detail(resp).await;
                    return Err(OrasError::Status {
                        url: url.to_string(),
                        status: "401 Unauthorized".to_string(),
                        code: 401,
                        detail: format!(" without a WWW-Authenticate challenge ({detail})"),
                    });
                }
            }
        }
    }

    /// The error for a 401 that persists after answering the challenge.
    fn refused(&self, challenge: Option<&Challenge>, detail: String) -> OrasError {
        match self.auth.credentials() {
            Some(c) => OrasError::CredentialsRefused {
                reference: self.shown.clone(),
                registry: self.reference.registry.clone(),
                user: c.username().to_string(),
                detail,
            },
            None if matches!(self.auth, RegistryAuth::Header(_)) => OrasError::CredentialsRefused {
                reference: self.shown.clone(),
                registry: self.reference.registry.clone(),
                user: "(the Authorization header given)".to_string(),
                detail,
            },
            None => OrasError::NeedsCredentials {
                reference: self.shown.clone(),
                registry: self.reference.registry.clone(),
                scheme: match challenge {
                    Some(Challenge::Basic) => "Basic",
                    _ => "Bearer",
                },
            },
        }
    }

    /// The token exchange: GET realm?service=..&scope=.. (Basic credentials when known).
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, OrasError> {
        let token_err = |reason: String| OrasError::Token {
            reference: self.shown.clone(),
            realm: realm.to_string(),
            reason,
        };
        let mut url = url::Url::parse(realm).map_err(|source| OrasError::TokenRealm {
            reference: self.shown.clone(),
            realm: realm.to_string(),
            source,
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_err("not an http(s) URL".to_string()));
        }
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope.unwrap_or(&default_scope));
        }
        let shown_url = realm.to_string();
        let mut rb = self.client.http.get(url.as_str());
        if let Some(c) = self.auth.credentials() {
            rb = rb.header(header::AUTHORIZATION, c.basic_header());
        }
        let resp = self.client.send(&shown_url, rb).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = format!("token server answered {}", status_text(status));
            return Err(match self.auth.credentials() {
                Some(c) => OrasError::CredentialsRefused {
                    reference: self.shown.clone(),
                    registry: self.reference.registry.clone(),
                    user: c.username().to_string(),
                    detail,
                },
                None => OrasError::NeedsCredentials {
                    reference: self.shown.clone(),
                    registry: self.reference.registry.clone(),
                    scheme: "Bearer",
                },
            });
        }
        if !status.is_success() {
            let detail = error_detail(resp).await;
            return Err(token_err(format!(
                "answered {} ({detail})",
                status_text(status)
            )));
        }
        let body = read_limited(&shown_url, resp, MAX_DOCUMENT).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|source| OrasError::TokenAnswer {
                reference: self.shown.clone(),
                realm: realm.to_string(),
                source,
            })?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|t| t.as_str()).filter(|t| !t.is_empty()))
            .map(str::to_string)
            .ok_or_else(|| token_err("the answer has no token or access_token".to_string()))
    }
}

impl OrasClient {
    /// What to do about a transport error whose text (with its causes) is `cause`: the proxy
    /// it went through, the trust hint; empty when there is nothing to add.
    fn hint(&self, cause: &str) -> String {
        let mut hint = String::new();
        if let Some(p) = &self.opts.proxy {
            hint.push_str(&format!(" (through oras.proxy {})", redact_proxy(p)));
        }
        if cause.contains("certificate") && !self.opts.insecure_skip_verify {
            hint.push_str(
                "; the registry's certificate is not trusted: add its CA to the system trust \
                 store (or SSL_CERT_FILE), or skip verification (oras.insecureSkipVerify in the \
                 daemon config, --insecure for dfget without a daemon)",
            );
        }
        hint
    }

    /// A transport error on `url`, with [`Self::hint`].
    fn connect_error(&self, url: &str, source: reqwest::Error) -> OrasError {
        OrasError::Connect {
            url: url.to_string(),
            hint: self.hint(&dragonfly_common::error::chain(&source)),
            source,
        }
    }

    /// Send, waiting at most connect timeout + `responseHeaderTimeout` for the headers.
    async fn send(
        &self,
        url: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OrasError> {
        let connect_err = |e: reqwest::Error| self.connect_error(url, e);
        if self.opts.response_header_timeout.is_zero() {
            return rb.send().await.map_err(connect_err);
        }
        let limit =
            self.opts.connect_timeout().unwrap_or_default() + self.opts.response_header_timeout;
        match tokio::time::timeout(limit, rb.send()).await {
            Ok(r) => r.map_err(connect_err),
            Err(_) => Err(OrasError::Timeout {
                url: url.to_string(),
                after: limit,
            }),
        }
    }
}

/// A proxy URL without its password, for messages.
fn redact_proxy(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) if !raw.contains('@') => raw.to_string(),
        Err(_) => "(a value with credentials)".to_string(),
    }
}

fn status_text(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_string()
}

async fn expect_success(
    url: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, OrasError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let detail = error_detail(resp).await;
    Err(OrasError::Status {
        url: url.to_string(),
        status: status_text(status),
        code: status.as_u16(),
        detail: format!(": {detail}"),
    })
}

/// The body, failing when it is longer than `limit`.
async fn read_limited(
    url: &str,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, OrasError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| OrasError::Connect {
        url: url.to_string(),
        hint: String::new(),
        source,
    })? {
        if out.len() + chunk.len() > limit {
            return Err(OrasError::Status {
                url: url.to_string(),
                status: "200 OK".to_string(),
                code: 200,
                detail: format!(" with a body over {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// What a registry error body says: `CODE: message` of its first error, else the body's start.
async fn error_detail(mut resp: reqwest::Response) -> String {
    let status = status_text(resp.status());
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let from_json = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            Some(
                format!("{code}: {msg}")
                    .trim_matches([' ', ':'])
                    .to_string(),
            )
        })
        .filter(|s| !s.is_empty());
    match from_json {
        Some(s) => format!("{status}, {s}"),
        None => {
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            if text.trim().is_empty() {
                status
            } else {
                format!("{status}, {}", text.trim())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_build_and_bad_proxies_are_named() {
        assert!(OrasClient::new(&OrasOptions::default()).is_ok());
        let bad = OrasClient::new(&OrasOptions {
            proxy: Some("::not a url".into()),
            ..OrasOptions::default()
        })
        .unwrap_err();
        assert!(bad.to_string().contains("oras.proxy"), "{bad}");
    }

    #[test]
    fn proxy_passwords_stay_out_of_messages() {
        assert_eq!(
            redact_proxy("http://u:secret@proxy.test:3128"),
            "http://u:***@proxy.test:3128/"
        );
        assert_eq!(
            redact_proxy("http://proxy.test:3128"),
            "http://proxy.test:3128/"
        );
        let c = OrasClient::new(&OrasOptions {
            proxy: Some("http://u:secret@proxy.test:3128".into()),
            ..OrasOptions::default()
        })
        .unwrap();
        let why = c.hint("invalid peer certificate: UnknownIssuer");
        assert!(
            !why.contains("secret") && why.contains("oras.insecureSkipVerify"),
            "{why}"
        );
    }
}
