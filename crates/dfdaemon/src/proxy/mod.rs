//! The HTTP(S) forward proxy and registry mirror on `proxy.tcpListen` (65001).
//!
//! One listener serves three kinds of request:
//! - **forward proxy**: absolute-form requests (`GET http://host/...`) and `CONNECT host:443`;
//!   a CONNECT to a host listed in `hijackHTTPS.hosts` is terminated with a certificate the
//!   local CA mints for it ([`connect`]), any other CONNECT is a byte tunnel;
//! - **registry mirror**: origin-form `/v2/...` requests, sent to `registryMirror.url` or the
//!   registry named by `X-Dragonfly-Registry` / containerd's `?ns=` ([`route::mirror_target`]);
//! - `GET /ca.crt`: the CA certificate clients must trust for hijacked hosts.
//!
//! Each request is then either a P2P task ([`p2p`]: GET and HEAD matching the `proxies` rules,
//! by default `blobs/sha256.*`) or passed through as is ([`forward`]).

pub mod ca;
mod connect;
mod fast;
mod forward;
mod p2p;
pub mod route;

pub use fast::SERVED_HEADER;

use crate::config::{HijackHttps, ProxyConfig};
use crate::source::{HttpSource, SourceOptions};
use crate::task::{Parent, TaskManager};
use bytes::Bytes;
use ca::CertAuthority;
use dragonfly_common::config::Pattern;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Errors of a response body (a task that failed mid-stream, an upstream that broke).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every proxy response.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Largest request head (request line and headers) accepted; larger ones get 431.
const MAX_HEAD: usize = 64 * 1024;

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A certificate file of the config could not be used.
    #[error("{key}: cannot use {path}: {reason}")]
    Certs {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA for hijacking could not be loaded or made.
    #[error("proxy.hijackHTTPS: {0}")]
    Ca(#[from] ca::CaError),
    /// The upstream HTTP client could not be built.
    #[error("proxy: cannot build the upstream HTTP client: {0}")]
    Client(String),
}

/// Clients to one kind of upstream, with its TLS trust.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    /// Passes requests through (redirects go back to the client).
    pub forward: HttpSource,
    /// Fetches task pieces (redirects to blob storage are followed).
    pub fetch: HttpSource,
}

impl Upstream {
    fn new(key: &str, insecure: bool, certs: &[PathBuf]) -> Result<Self, ProxyError> {
        let mut roots = Vec::new();
        for path in certs {
            let pem = std::fs::read(path).map_err(|e| ProxyError::Certs {
                key: key.to_string(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let found =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ProxyError::Certs {
                    key: key.to_string(),
                    path: path.clone(),
                    reason: format!("not a PEM certificate: {e}"),
                })?;
            if found.is_empty() {
                return Err(ProxyError::Certs {
                    key: key.to_string(),
                    path: path.clone(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            roots.extend(found);
        }
        let opts = SourceOptions {
            insecure,
            ..SourceOptions::default()
        };
        let client = |follow| {
            HttpSource::with_tls(&opts, roots.clone(), follow)
                .map_err(|e| ProxyError::Client(e.to_string()))
        };
        Ok(Self {
            forward: client(false)?,
            fetch: client(true)?,
        })
    }
}

/// A host whose HTTPS is intercepted, with the trust used towards the real host.
struct HijackedHost {
    regx: Pattern,
    upstream: Arc<Upstream>,
}

/// TLS interception.
struct Hijack {
    ca: Arc<CertAuthority>,
    hosts: Vec<HijackedHost>,
}

/// The proxy's state, shared by every connection.
pub struct Proxy {
    cfg: ProxyConfig,
    engine: TaskManager,
    parents: Vec<Parent>,
    default_upstream: Arc<Upstream>,
    mirror_upstream: Arc<Upstream>,
    hijack: Option<Hijack>,
    /// The CA served at `/ca.crt` (the hijack CA, if any).
    ca: Option<Arc<CertAuthority>>,
    filtered: Vec<String>,
    limit: Option<Arc<tokio::sync::Semaphore>>,
}

/// How a request reached the proxy.
#[derive(Clone)]
pub(crate) enum Via {
    /// On the listener itself.
    Plain,
    /// Inside a hijacked CONNECT tunnel to `authority`.
    Tunnel {
        authority: String,
        upstream: Arc<Upstream>,
    },
}

impl Proxy {
    /// The proxy for `cfg` over `engine`; `parents` are static parents for its tasks.
    pub fn new(
        cfg: &ProxyConfig,
        engine: TaskManager,
        parents: Vec<Parent>,
    ) -> Result<Self, ProxyError> {
        if !cfg.security.insecure || cfg.security.cert.is_some() {
            tracing::warn!(
                "proxy.security: TLS on the proxy port itself is not supported; it serves plain HTTP (as with insecure: true). Clients reach HTTPS registries through CONNECT as usual"
            );
        }
        let default_upstream = Arc::new(Upstream::new("proxy", false, &[])?);
        let m = &cfg.registry_mirror;
        let mirror_upstream = Arc::new(Upstream::new(
            "proxy.registryMirror.certs",
            m.insecure,
            &m.certs,
        )?);
        let hijack = match &cfg.hijack_https {
            Some(h) if !h.hosts.is_empty() => Some(Self::hijack(h)?),
            _ => None,
        };
        let ca = hijack.as_ref().map(|h| h.ca.clone());
        let filtered = cfg
            .default_filter
            .split('&')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let limit = (cfg.max_concurrency > 0).then(|| {
            Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrency.min(1 << 20) as usize,
            ))
        });
        Ok(Self {
            cfg: cfg.clone(),
            engine,
            parents,
            default_upstream,
            mirror_upstream,
            hijack,
            ca,
            filtered,
            limit,
        })
    }

    fn hijack(h: &HijackHttps) -> Result<Hijack, ProxyError> {
        let ca = match (&h.cert, &h.key) {
            (Some(cert), Some(key)) => CertAuthority::load(cert, key)?,
            (None, None) => {
                tracing::warn!(
                    "proxy.hijackHTTPS has no cert/key: using a CA generated for this run; clients must trust GET /ca.crt again after every restart (make one with `dfdaemon gen-ca`)"
                );
                CertAuthority::generate("dfdaemon ephemeral CA")?
            }
            _ => {
                return Err(ProxyError::Certs {
                    key: "proxy.hijackHTTPS".into(),
                    path: h.cert.clone().or(h.key.clone()).unwrap_or_default(),
                    reason: "cert and key must be set together".into(),
                });
            }
        };
        let mut hosts = Vec::new();
        for (i, host) in h.hosts.iter().enumerate() {
            hosts.push(HijackedHost {
                regx: host.regx.clone(),
                upstream: Arc::new(Upstream::new(
                    &format!("proxy.hijackHTTPS.hosts[{i}].certs"),
                    host.insecure,
                    &host.certs,
                )?),
            });
        }
        Ok(Hijack {
            ca: Arc::new(ca),
            hosts,
        })
    }

    /// Serve connections from `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            // Stored blobs go out with sendfile; everything else to hyper (fast.rs).
            tokio::spawn(fast::serve(self.clone(), stream, peer));
        }
    }

    /// Serve HTTP/1.1 on one connection (the listener's, or a hijacked TLS stream).
    ///
    /// Boxed with `Send` spelled out: a hijacked CONNECT serves its tunnel with this, which makes
    /// the future types recursive.
    pub(crate) fn serve_conn<I>(
        self: Arc<Self>,
        io: I,
        peer: SocketAddr,
        via: Via,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        Box::pin(self.serve_conn_inner(io, peer, via))
    }

    async fn serve_conn_inner<I>(self: Arc<Self>, io: I, peer: SocketAddr, via: Via)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (proxy, via) = (proxy.clone(), via.clone());
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer, via).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .preserve_header_case(true)
            .serve_connection(io, svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(client = %peer, error = %e, "proxy connection ended");
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        via: Via,
    ) -> Response<Body> {
        let _permit = match &self.limit {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let (method, uri) = (req.method().clone(), req.uri().clone());
        // hyper bounds its read buffer, not the head itself: a head read in one go passes.
        let head: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + uri.to_string().len();
        if head > MAX_HEAD {
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("request head of {head} bytes is over the limit of {MAX_HEAD}"),
            );
        }
        let resp = self.route(req, peer, via).await;
        tracing::debug!(client = %peer, %method, %uri, status = resp.status().as_u16(), "proxy request");
        resp
    }

    async fn route(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        via: Via,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            if let Via::Tunnel { .. } = via {
                return text(
                    StatusCode::BAD_REQUEST,
                    "CONNECT inside a hijacked tunnel is not supported",
                );
            }
            if let Some(resp) = self.check_client(&req) {
                return resp;
            }
            return connect::connect(self, req, peer).await;
        }
        let uri = req.uri();
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let (url, upstream, mirror) = match (&via, uri.scheme_str()) {
            (
                Via::Tunnel {
                    authority,
                    upstream,
                },
                None,
            ) => (format!("https://{authority}{pq}"), upstream.clone(), None),
            (_, Some("http" | "https")) => {
                if let Some(resp) = self.check_client(&req) {
                    return resp;
                }
                let url = uri.to_string();
                let upstream = match uri.authority() {
                    Some(a) if uri.scheme_str() == Some("https") => self.upstream_for(a.as_str()),
                    _ => self.default_upstream.clone(),
                };
                (url, upstream, None)
            }
            (_, Some(other)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("scheme {other:?} is not proxied (http and https are)"),
                );
            }
            (Via::Plain, None) => {
                let path = uri.path();
                if path == "/ca.crt" && req.method() == Method::GET {
                    return self.ca_cert();
                }
                if path != "/v2" && !path.starts_with("/v2/") {
                    return text(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "{path} is not a proxy or registry mirror request: send absolute URLs (HTTP_PROXY), CONNECT (HTTPS_PROXY), /v2/... (mirror) or GET /ca.crt"
                        ),
                    );
                }
                // Mirror requests pass basicAuth and whiteList like proxied ones (only
                // /ca.crt answers without credentials).
                if let Some(resp) = self.check_auth(&req) {
                    return resp;
                }
                let m = &self.cfg.registry_mirror;
                let url = match route::mirror_target(m, req.headers(), path, uri.query()) {
                    Ok(url) => url,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                if !self.cfg.white_list.is_empty() {
                    let target = url::Url::parse(&url).ok();
                    let host = target.as_ref().and_then(|u| u.host_str()).unwrap_or("");
                    let port = target
                        .as_ref()
                        .and_then(url::Url::port_or_known_default)
                        .unwrap_or(443);
                    if let Some(resp) = self.check_target(host, port) {
                        return resp;
                    }
                }
                (url, self.mirror_upstream.clone(), Some(m))
            }
        };
        // Credentials in the target URL (`X-Dragonfly-Registry: https://user:pw@registry`, or
        // an absolute URL) go upstream as `Authorization`, never into a log or a task id.
        let url = crate::source::oras::userinfo_to_authorization(url, req.headers_mut());
        let decision = route::decide(&self.cfg.proxies, mirror, &url);
        match (decision, req.method()) {
            (route::Decision::P2p(target), &Method::GET) => {
                p2p::get(&self, req, target, upstream).await
            }
            (route::Decision::P2p(target), &Method::HEAD) => {
                match p2p::head_from_storage(&self, &target).await {
                    Some(resp) => resp,
                    None => forward::forward(req, &target, &upstream.forward).await,
                }
            }
            _ => forward::forward(req, &url, &upstream.forward).await,
        }
    }

    /// Proxy authentication and the host white list, for forward-proxy requests.
    fn check_client<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if let Some(r) = self.check_auth(req) {
            return Some(r);
        }
        if !self.cfg.white_list.is_empty() {
            let (host, port) = match req.uri().authority() {
                Some(a) => (a.host().to_string(), a.port_u16()),
                None => return Some(text(StatusCode::BAD_REQUEST, "the request names no host")),
            };
            let port = port.unwrap_or(if req.uri().scheme_str() == Some("http") {
                80
            } else {
                443
            });
            return self.check_target(&host, port);
        }
        None
    }

    /// `proxy.basicAuth`: the client's `Proxy-Authorization` must carry its credentials.
    fn check_auth<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if let Some(auth) = &self.cfg.basic_auth {
            let expected = format!(
                "Basic {}",
                crate::source::oras::base64_encode(
                    format!("{}:{}", auth.username, auth.password).as_bytes()
                )
            );
            let ok = req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !ok {
                let mut r = text(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "proxy credentials required",
                );
                r.headers_mut().insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"dfdaemon\""),
                );
                return Some(r);
            }
        }
        None
    }

    /// `proxy.whiteList`: the target `host:port` must be listed (when the list is not empty).
    fn check_target(&self, host: &str, port: u16) -> Option<Response<Body>> {
        if !self.cfg.white_list.is_empty() {
            let allowed = self.cfg.white_list.iter().any(|w| {
                let host_ok = (!w.host.is_empty() && w.host == host)
                    || w.regx.as_ref().is_some_and(|r| r.is_match(host));
                host_ok && (w.ports.is_empty() || w.ports.iter().any(|p| p.get() == port))
            });
            if !allowed {
                return Some(text(
                    StatusCode::FORBIDDEN,
                    &format!("{host}:{port} is not in proxy.whiteList"),
                ));
            }
        }
        None
    }

    /// The hijack settings for a CONNECT `authority` (`host:port`), if it is listed.
    fn hijacked(&self, authority: &str) -> Option<(Arc<CertAuthority>, Arc<Upstream>)> {
        let h = self.hijack.as_ref()?;
        h.hosts
            .iter()
            .find(|x| x.regx.is_match(authority))
            .map(|x| (h.ca.clone(), x.upstream.clone()))
    }

    fn upstream_for(&self, authority: &str) -> Arc<Upstream> {
        self.hijacked(authority)
            .map(|(_, u)| u)
            .unwrap_or_else(|| self.default_upstream.clone())
    }

    fn ca_cert(&self) -> Response<Body> {
        match &self.ca {
            Some(ca) => {
                let mut r = Response::new(full(Bytes::from(ca.cert_pem().to_string())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            None => text(
                StatusCode::NOT_FOUND,
                "this proxy intercepts no HTTPS (proxy.hijackHTTPS.hosts is empty), so it has no CA",
            ),
        }
    }
}

/// A body of these bytes.
pub(crate) fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// A plain-text response (errors name what was wrong).
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
