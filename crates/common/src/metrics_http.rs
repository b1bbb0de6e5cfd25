//! The metrics and health endpoints of the daemon (`metrics.tcpListen`, 65003) and the scheduler
//! (`metrics.addr`, 8003), over HTTP/1.1:
//!
//! - `GET /metrics`: the process's Prometheus registry in the OpenMetrics text format
//!   (prometheus-client's encoder), which Prometheus scrapes natively;
//! - `GET /healthy`: `200 OK` while the process is serving, `503` with the reason otherwise
//!   (what "serving" means is the caller's [`Endpoints::healthy`]).
//!
//! Anything else is a 404; a method other than GET or HEAD a 405. The caller owns the accept
//! loop ([`serve_connection`] per connection) or uses [`serve`].

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// The content type of `/metrics` (prometheus-client encodes OpenMetrics 1.0.0 text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints answer with; cheap to clone.
#[derive(Clone)]
pub struct Endpoints {
    /// The `/metrics` body.
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok` when healthy, else why not (the body of the 503).
    pub healthy: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

/// Answer one request.
pub fn respond(endpoints: &Endpoints, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            format!("{method} is not served here: GET /metrics or /healthy\n"),
        );
    }
    match path {
        "/metrics" => reply(StatusCode::OK, METRICS_CONTENT_TYPE, (endpoints.render)()),
        "/healthy" => match (endpoints.healthy)() {
            Ok(()) => reply(StatusCode::OK, TEXT, "OK".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("nothing at {other}: GET /metrics or /healthy\n"),
        ),
    }
}

/// Serve one HTTP/1.1 connection until the client closes it or `stop` completes (then the
/// request in flight is answered and the connection closes).
pub async fn serve_connection(
    stream: TcpStream,
    endpoints: Endpoints,
    stop: impl Future<Output = ()>,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let r = respond(&endpoints, req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(r) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Accept on `listener` and serve every connection until `shutdown` completes; then stop
/// accepting and close connections as their request in flight is answered. Returns the
/// accept error that broke the listener, if one did.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Tells the open connections to close (a watch channel: late subscribers see it too).
    let (stop, _) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let (e, mut rx) = (endpoints.clone(), stop.subscribe());
                tokio::spawn(serve_connection(stream, e, async move {
                    let _ = rx.changed().await;
                }));
            }
            // One connection's trouble (reset before accept, out of descriptors): go on.
            Err(e) if e.raw_os_error().is_some_and(|c| c != 9 && c != 22) => {
                tracing::warn!(error = %e, "metrics server: accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = stop.send(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(healthy: bool) -> Endpoints {
        Endpoints {
            render: Arc::new(|| "# EOF\n".to_string()),
            healthy: Arc::new(move || {
                if healthy {
                    Ok(())
                } else {
                    Err("draining".into())
                }
            }),
        }
    }

    #[test]
    fn routes_and_statuses() {
        let up = endpoints(true);
        let r = respond(&up, &Method::GET, "/metrics");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(METRICS_CONTENT_TYPE)
        );
        assert_eq!(
            respond(&up, &Method::GET, "/healthy").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&endpoints(false), &Method::GET, "/healthy").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&up, &Method::GET, "/").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&up, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
