//! The HTTP(S) forward proxy and registry mirror on `proxy.tcpListen` (65001).
//!
//! One listener serves three kinds of request:
//! - **forward proxy**: absolute-form requests (`GET http://host/...`) and `CONNECT host:443`;
//!   a CONNECT to a host listed in `hijackHTTPS.hosts` is terminated with a certificate the
//!   local CA mints for it ([`connect`]), any other CONNECT is a byte tunnel;
//! - **registry mirror**: origin-form `/v2/...` requests, sent to `registryMirror.url` or the
//!   registry named by `X-Dragonfly-Registry` / containerd's `?ns=` ([`route::mirror_target`]);
//! - `GET /ca.crt`: the CA certificate clients must trust for hijacked hosts;
//! - `GET /healthy`: `200 OK` while the proxy serves (no credentials needed, like `/ca.crt`).
//!
//! Each request is then either a P2P task ([`p2p`]: GET and HEAD matching the `proxies` rules,
//! by default `blobs/sha256.*`) or passed through as is ([`forward`]). Where the proxy may
//! connect is [`reach`]'s; how long a client may wait [`timeouts`]'; how much one client may
//! hold open [`limits`]'.

/// The `AsyncWrite` methods of a wrapper that only watches or prefixes reads: every write goes
/// to `self.inner` as it is. Inside `impl AsyncWrite for ...`.
macro_rules! write_through_inner {
    () => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    };
}

pub mod ca;
mod connect;
mod fast;
mod forward;
mod limits;
mod p2p;
pub mod reach;
pub mod route;
mod timeouts;
mod tunnel;
mod upstream;

pub use fast::SERVED_HEADER;
pub use reach::{OwnPort, Refusal};

use crate::config::ProxyConfig;
use crate::metrics::ProxyRoute;
use crate::serve::{Drain, accept_loop};
use crate::task::{Parent, TaskManager};
use bytes::Bytes;
use ca::CertAuthority;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reach::{Ask, Reach};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use timeouts::{Timeouts, Tracked, Watch, Watched};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use upstream::{Hijack, Upstream};

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
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A certificate file of the config could not be read.
    #[error("{key}: cannot use {path}")]
    CertsUnreadable {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file of the config does not parse.
    #[error("{key}: cannot use {path}: not a PEM certificate")]
    CertsNotPem {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: reqwest::Error,
    },
    /// The CA for hijacking could not be loaded or made.
    #[error("proxy.hijackHTTPS: {0}")]
    Ca(#[from] ca::CaError),
    /// The upstream HTTP client could not be built.
    #[error("proxy: cannot build the upstream HTTP client")]
    Client(#[source] crate::source::error::DownloadError),
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
    reach: Arc<Reach>,
    timeouts: Timeouts,
    /// `perClientConnectionLimit`.
    conns: Arc<limits::Cap>,
    /// `perClientTunnelLimit`.
    tunnels: Arc<limits::Cap>,
    tunnel_budget: tunnel::Budget,
}

/// One client connection, as the handlers see it.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) peer: SocketAddr,
    /// Its place under `perClientConnectionLimit`; a tunnel the connection turns into keeps it.
    pub(crate) slot: Arc<limits::Slot>,
    /// The server's drain: an idle connection closes when it stops, a tunnel runs on it.
    pub(crate) drain: Drain,
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
    /// The proxy for `cfg` over `engine`; `parents` are static parents for its tasks, `own` the
    /// daemon's ports (never a target).
    pub fn new(
        cfg: &ProxyConfig,
        engine: TaskManager,
        parents: Vec<Parent>,
        own: Vec<OwnPort>,
    ) -> Result<Self, ProxyError> {
        if !cfg.security.insecure || cfg.security.cert.is_some() {
            tracing::warn!(
                "proxy.security: TLS on the proxy port itself is not supported; it serves plain HTTP (as with insecure: true). Clients reach HTTPS registries through CONNECT as usual"
            );
        }
        let reach = Arc::new(Reach::new(cfg, own));
        let default_upstream = Arc::new(Upstream::new("proxy", false, &[], &reach)?);
        let m = &cfg.registry_mirror;
        let mirror_upstream = Arc::new(Upstream::new(
            "proxy.registryMirror.certs",
            m.insecure,
            &m.certs,
            &reach,
        )?);
        let hijack = match &cfg.hijack_https {
            Some(h) if !h.hosts.is_empty() => Some(Hijack::new(h, &reach)?),
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
            reach,
            timeouts: Timeouts {
                header: Some(cfg.read_header_timeout.get()).filter(|d| !d.is_zero()),
                idle: Some(cfg.idle_timeout.get()).filter(|d| !d.is_zero()),
            },
            conns: limits::Cap::new(
                cfg.per_client_connection_limit,
                "proxy.perClientConnectionLimit",
                "connections",
            ),
            tunnels: limits::Cap::new(
                cfg.per_client_tunnel_limit,
                "proxy.perClientTunnelLimit",
                "CONNECT tunnels",
            ),
            tunnel_budget: tunnel::Budget::new(tunnel::GROWTH_BUDGET),
        })
    }

    /// Serve connections from `listener` until `shutdown` completes (connections open then go
    /// on until they end; the daemon drains them with [`Proxy::serve_drained`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let drain = Drain::new();
        let served = self.serve_drained(listener, drain.clone());
        crate::serve::serve_until("proxy", drain, served, shutdown).await
    }

    /// The proxy on `drain`: returns when the drain stops (streams in flight and CONNECT tunnels
    /// go on, for [`Drain::finish`] to wait for), or with the error that broke the listener.
    pub async fn serve_drained(
        self: Arc<Self>,
        listener: TcpListener,
        drain: Drain,
    ) -> std::io::Result<()> {
        let conn_drain = drain.clone();
        accept_loop("proxy", listener, drain, None, move |stream, peer| {
            let slot = match self.conns.take(peer.ip()) {
                Ok(s) => Arc::new(s),
                Err(over) => {
                    refuse_at_once(stream, &over.to_string());
                    return None;
                }
            };
            let client = Client {
                peer,
                slot,
                drain: conn_drain.clone(),
            };
            // Stored blobs go out with sendfile; everything else to hyper (fast.rs).
            Some(fast::serve(self.clone(), stream, client))
        })
        .await
    }

    /// Serve HTTP/1.1 on one connection (the listener's, or a hijacked TLS stream) until it
    /// ends or `watch` finds it waited too long for its client.
    ///
    /// Boxed with `Send` spelled out: a hijacked CONNECT serves its tunnel with this, which makes
    /// the future types recursive.
    pub(crate) fn serve_conn<I>(
        self: Arc<Self>,
        io: I,
        client: Client,
        via: Via,
        watch: Arc<Watch>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(self.serve_conn_inner(io, client, via, watch))
    }

    async fn serve_conn_inner<I>(
        self: Arc<Self>,
        io: I,
        client: Client,
        via: Via,
        watch: Arc<Watch>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let peer = client.peer;
        let drain = client.drain.clone();
        let w = watch.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (proxy, via, client) = (proxy.clone(), via.clone(), client.clone());
            // Busy from the head until the response body is done (or dropped).
            let in_flight = w.request();
            async move {
                let resp = proxy.handle(req, &client, via).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .preserve_header_case(true)
            .serve_connection(TokioIo::new(Watched::new(io, watch.clone())), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            why = watch.expired() => {
                tracing::debug!(client = %peer, "proxy connection closed: {why}");
                return;
            }
            () = drain.stopping() => {
                // The response in flight is finished, then the connection closes.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    why = watch.expired() => {
                        tracing::debug!(client = %peer, "proxy connection closed: {why}");
                        return;
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(client = %peer, error = %e, "proxy connection ended");
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: &Client,
        via: Via,
    ) -> Response<Body> {
        let peer = client.peer;
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
        let mut seen = Seen::default();
        let metrics = self.engine.metrics().clone();
        let resp = self.route(req, client, via, &mut seen).await;
        if let Some(route) = seen.route {
            use crate::metrics::ProxyResult;
            let result = match (resp.status().as_u16() >= 400, seen.hit) {
                (true, _) => ProxyResult::Error,
                (false, true) => ProxyResult::Hit,
                (false, false) => ProxyResult::Miss,
            };
            metrics.proxy_request(route, result);
        }
        tracing::debug!(client = %peer, %method, %uri, status = resp.status().as_u16(), "proxy request");
        resp
    }

    async fn route(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: &Client,
        via: Via,
        seen: &mut Seen,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            seen.route = Some(ProxyRoute::Tunnel);
            if let Via::Tunnel { .. } = via {
                return text(
                    StatusCode::BAD_REQUEST,
                    "CONNECT inside a hijacked tunnel is not supported",
                );
            }
            if let Some(resp) = self.check_auth(req.headers()) {
                return resp;
            }
            return connect::connect(self, req, client).await;
        }
        let uri = req.uri();
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let (url, upstream, mirror) = match (&via, uri.scheme_str()) {
            // The CONNECT was checked.
            (
                Via::Tunnel {
                    authority,
                    upstream,
                },
                None,
            ) => {
                seen.route = Some(ProxyRoute::Direct);
                (format!("https://{authority}{pq}"), upstream.clone(), None)
            }
            (_, Some(scheme @ ("http" | "https"))) => {
                seen.route = Some(ProxyRoute::Direct);
                if let Some(resp) = self.check_auth(req.headers()) {
                    return resp;
                }
                let Some(a) = uri.authority() else {
                    return text(StatusCode::BAD_REQUEST, "the request names no host");
                };
                let port = a
                    .port_u16()
                    .unwrap_or(if scheme == "http" { 80 } else { 443 });
                if let Err(resp) = self.check_reach(Ask::Forward, a.host(), port).await {
                    return resp;
                }
                let upstream = if scheme == "https" {
                    self.upstream_for(a.as_str())
                } else {
                    self.default_upstream.clone()
                };
                (uri.to_string(), upstream, None)
            }
            (_, Some(other)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("scheme {other:?} is not proxied (http and https are)"),
                );
            }
            (Via::Plain, None) => {
                let path = uri.path();
                let (get, head) = (req.method() == Method::GET, req.method() == Method::HEAD);
                if path == "/ca.crt" && get {
                    return self.ca_cert();
                }
                if path == HEALTH_PATH && (get || head) {
                    return text(StatusCode::OK, "OK");
                }
                if path != "/v2" && !path.starts_with("/v2/") {
                    return text(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "{path} is not a proxy or registry mirror request: send absolute URLs (HTTP_PROXY), CONNECT (HTTPS_PROXY), /v2/... (mirror), GET /ca.crt or GET {HEALTH_PATH}"
                        ),
                    );
                }
                seen.route = Some(ProxyRoute::Mirror);
                // Mirror requests pass basicAuth and whiteList like proxied ones (only
                // /ca.crt and the health path answer without credentials).
                if let Some(resp) = self.check_auth(req.headers()) {
                    return resp;
                }
                let m = &self.cfg.registry_mirror;
                let target = match route::mirror_upstream(m, req.headers(), path, uri.query()) {
                    Ok(t) => t,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                let ask = if target.dynamic {
                    Ask::DynamicMirror
                } else {
                    Ask::StaticMirror
                };
                if let Some((host, port)) = host_port(&target.url)
                    && let Err(resp) = self.check_reach(ask, &host, port).await
                {
                    return resp;
                }
                (target.url, self.mirror_upstream.clone(), Some(m))
            }
        };
        // Credentials in the target URL (`X-Dragonfly-Registry: https://user:pw@registry`, or
        // an absolute URL) go upstream as `Authorization`, never into a log or a task id.
        let url = crate::source::oras::userinfo_to_authorization(url, req.headers_mut());
        let decision = route::decide(&self.cfg.proxies, mirror, &url);
        if mirror.is_none() && matches!(decision, route::Decision::P2p(_)) {
            seen.route = Some(ProxyRoute::P2p);
        }
        match (decision, req.method()) {
            (route::Decision::P2p(target), &Method::GET) => {
                p2p::get(&self, req, target, upstream, &mut seen.hit).await
            }
            (route::Decision::P2p(target), &Method::HEAD) => {
                match p2p::head_from_storage(&self, &target).await {
                    Some(resp) => {
                        seen.hit = true;
                        resp
                    }
                    None => forward::forward(req, &target, &upstream.forward).await,
                }
            }
            _ => forward::forward(req, &url, &upstream.forward).await,
        }
    }

    /// `proxy.basicAuth`: the client's `Proxy-Authorization` must carry its credentials.
    fn check_auth(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        if self.auth_ok(headers) {
            return None;
        }
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy credentials required",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"dfdaemon\""),
        );
        Some(r)
    }

    /// Whether `headers` pass `proxy.basicAuth` (always, when it is not set).
    fn auth_ok(&self, headers: &HeaderMap) -> bool {
        let Some(auth) = &self.cfg.basic_auth else {
            return true;
        };
        let expected = basic_credentials(auth);
        headers
            .get(header::PROXY_AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
    }

    /// [`Reach::check`] as a response: `403` naming the host and the key to set. Returns the
    /// addresses checked.
    async fn check_reach(
        &self,
        ask: Ask,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Response<Body>> {
        self.reach.check(ask, host, port).await.map_err(|r| {
            tracing::info!(refused = %r, "proxy target refused");
            text(StatusCode::FORBIDDEN, &r.to_string())
        })
    }

    /// The hijack settings for a CONNECT `authority` (`host:port`), if it is listed.
    fn hijacked(&self, authority: &str) -> Option<(Arc<CertAuthority>, Arc<Upstream>)> {
        self.hijack.as_ref()?.find(authority)
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

/// `Basic <base64(user:password)>`: the `Proxy-Authorization` that `proxy.basicAuth` expects.
pub fn basic_credentials(auth: &crate::config::BasicAuth) -> String {
    format!(
        "Basic {}",
        crate::source::oras::base64_encode(
            format!("{}:{}", auth.username, auth.password).as_bytes()
        )
    )
}

/// The path that answers `200 OK` without credentials (Dragonfly's health path).
pub const HEALTH_PATH: &str = "/healthy";

/// What a request turned out to be, for the metrics.
#[derive(Default)]
struct Seen {
    /// Its route, once known (`None`: not a proxy request, e.g. `GET /ca.crt`).
    route: Option<ProxyRoute>,
    /// Served from this node's storage.
    hit: bool,
}

/// `host` (as a URL writes it: IPv6 in brackets) and port of an absolute URL.
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    Some((u.host_str()?.to_string(), u.port_or_known_default()?))
}

/// Answer a connection over a cap with `503` and `msg` if its socket takes it now, and close.
fn refuse_at_once(stream: TcpStream, msg: &str) {
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}\n",
        msg.len() + 1
    );
    let _ = stream.try_write(resp.as_bytes());
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
