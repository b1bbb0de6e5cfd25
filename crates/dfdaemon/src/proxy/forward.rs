//! Pass-through: a request that is not a P2P task goes to its upstream as is, both bodies
//! streamed, hop-by-hop headers removed both ways (RFC 9110 §7.6.1), redirects left to the
//! client.

use super::route::{REGISTRY_HEADER, strip_hop_by_hop};
use super::{Body, BoxError, text};
use crate::source::HttpSource;
use futures::TryStreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Body as _;
use hyper::body::{Frame, Incoming};

/// Send `req` to `url` with `client` and stream the answer back.
pub(crate) async fn forward(
    req: Request<Incoming>,
    url: &str,
    client: &HttpSource,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(REGISTRY_HEADER);
    // hyper already answered `Expect: 100-continue` when the body was first read.
    headers.remove(header::EXPECT);
    // A request whose framing says "no body" (most GETs and HEADs) is sent without one.
    let has_body = !body.is_end_stream();
    let mut out = client
        .client()
        .request(parts.method.clone(), url)
        .headers(headers);
    if has_body {
        let stream = BodyStream::new(body)
            .try_filter_map(|f: Frame<bytes::Bytes>| async move { Ok(f.into_data().ok()) });
        out = out.body(reqwest::Body::wrap_stream(stream));
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            // A name that resolved to an address the reach rules refuse, when connecting.
            if let Some(r) = super::reach::refusal_in(&e) {
                tracing::info!(%url, refused = %r, "proxy target refused");
                return text(StatusCode::FORBIDDEN, &r.to_string());
            }
            tracing::info!(%url, error = %dragonfly_common::error::chain(&e), "upstream failed");
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {url}: {}", dragonfly_common::error::chain(&e)),
            );
        }
    };
    let status = resp.status();
    let mut headers = resp.headers().clone();
    strip_hop_by_hop(&mut headers);
    let stream = resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}
