//! GET and HEAD as P2P tasks: the client gets bytes as pieces land, `Range` gets 206, and a
//! blob's last bytes are held back until the whole content matched its digest, so a client
//! never receives a complete-looking corrupt blob.

use super::route::{RangeAsk, blob_digest, parse_range, source_headers};
use super::{Body, BoxError, Proxy, Upstream, empty, text};
use crate::task::{Task, TaskError, TaskPin, TaskReader, TaskRequest};
use bytes::Bytes;
use dragonfly_common::digest::Digest;
use dragonfly_common::error::chain;
use dragonfly_common::task_id::TaskId;
use futures::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;

/// Header naming the task that served a response (for logs and tests).
pub const TASK_HEADER: &str = "x-dragonfly-task";

/// Serve `GET url` from a P2P task.
pub(crate) async fn get(
    proxy: &Proxy,
    req: Request<Incoming>,
    url: String,
    upstream: Arc<Upstream>,
    hit: &mut bool,
) -> Response<Body> {
    let digest = blob_digest(&url);
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let treq = TaskRequest {
        headers: source_headers(req.headers()),
        tag: proxy.cfg.default_tag.clone(),
        application: String::new(),
        piece_length: None,
        digest: digest.clone(),
        filtered_query_params: proxy.filtered.clone(),
        task_id: digest.as_ref().map(|d| TaskId::for_blob(d, &url)),
        parents: proxy.parents.clone(),
        source: Some(upstream.fetch.clone()),
        streaming: true,
        url: url.clone(),
    };
    let task = match proxy.engine.download(treq).await {
        Ok(t) => t,
        Err(e) => return task_error(&url, &e),
    };
    // Finished already: from storage, not fetched for this request.
    *hit = matches!(task.view().phase, crate::task::Phase::Finished);
    let layout = match task.layout().await {
        Ok(l) => l,
        // Content this node cannot store goes straight from the origin to the client.
        Err(e @ TaskError::NoRoom(_)) => {
            tracing::warn!(%url, error = %e, "passed through without storing");
            return super::forward::forward(req, &url, &upstream.forward).await;
        }
        Err(e) => return task_error(&url, &e),
    };
    let len = layout.content_length();
    let (status, start, end) = match parse_range(range_header.as_deref(), len) {
        RangeAsk::Full => (StatusCode::OK, 0, len),
        RangeAsk::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        RangeAsk::Unsatisfiable => {
            let mut r = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &format!(
                    "range {:?} is outside the {len} bytes of {url}",
                    range_header.unwrap_or_default()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    // Hold back the last bytes of a read that reaches the end until the digest matched.
    let verify = digest.is_some() && end == len;
    let pin = proxy.engine.pin(&task.id);
    let check = if verify { digest.clone() } else { None };
    let body = verified_stream(task.clone(), task.reader(start, Some(end)), check, pin);
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    headers_for(h, &task.id, digest.as_ref(), end - start);
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Answer `HEAD url` from a task stored here for that same URL (length and digest, no
/// download); `None` when the origin should answer.
pub(crate) async fn head_from_storage(proxy: &Proxy, url: &str) -> Option<Response<Body>> {
    let digest = blob_digest(url)?;
    let id = TaskId::for_blob(&digest, url);
    let storage = proxy.engine.storage().clone();
    let lookup = id.clone();
    let record = tokio::task::spawn_blocking(move || storage.task(&lookup))
        .await
        .ok()?
        .ok()??;
    // Only for the URL the task was fetched from: a HEAD of the same digest in another
    // repository is how a pusher asks whether the registry has it there, and only the
    // registry knows.
    if !record.is_finished() || record.url != url {
        return None;
    }
    let mut r = Response::new(empty());
    headers_for(r.headers_mut(), &id, Some(&digest), record.content_length);
    Some(r)
}

pub(super) fn headers_for(h: &mut http::HeaderMap, id: &TaskId, digest: Option<&Digest>, len: u64) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(d) = digest
        && let Ok(v) = HeaderValue::from_str(&d.to_string())
    {
        h.insert("docker-content-digest", v.clone());
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"{d}\"")).unwrap_or(v),
        );
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        h.insert(TASK_HEADER, v);
    }
}

/// A failed task as a response: the origin's own status (with its auth challenge, so token
/// auth works through the proxy), or 502 naming what failed.
fn task_error(url: &str, e: &TaskError) -> Response<Body> {
    match e {
        TaskError::Status {
            code, challenge, ..
        } => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut r = text(status, &chain(e));
            if let Some(c) = challenge
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
            }
            r
        }
        _ => {
            let e = chain(e);
            tracing::warn!(%url, error = %e, "proxy task failed");
            text(StatusCode::BAD_GATEWAY, &format!("{url}: {e}"))
        }
    }
}

struct Held {
    task: Arc<Task>,
    reader: TaskReader,
    /// The digest the whole content must have before its last chunk goes out.
    verify: Option<Digest>,
    held: Option<Bytes>,
    done: bool,
    _pin: TaskPin,
}

/// The reader's bytes; with `verify`, the last chunk waits for the task to finish (digest
/// checked) and the stream fails instead if it did not.
fn verified_stream(
    task: Arc<Task>,
    reader: TaskReader,
    verify: Option<Digest>,
    pin: TaskPin,
) -> Body {
    let state = Held {
        task,
        reader,
        verify,
        held: None,
        done: false,
        _pin: pin,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.reader.next().await {
                Some(Ok(chunk)) => {
                    if st.verify.is_none() {
                        return Some((Ok(chunk), st));
                    }
                    if let Some(prev) = st.held.replace(chunk) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    tracing::warn!(task = %st.task.id, error = %chain(&e), "proxy stream failed");
                    return Some((Err(Box::new(e) as BoxError), st));
                }
                None => {
                    st.done = true;
                    if let Some(d) = st.verify.clone()
                        && let Err(e) = st.task.verify_digest(&d).await
                    {
                        tracing::warn!(task = %st.task.id, error = %chain(&e), "blob failed verification; the client's response is cut short");
                        return Some((Err(Box::new(e) as BoxError), st));
                    }
                    let last = st.held.take()?;
                    return Some((Ok(last), st));
                }
            }
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(stream.map(|r| r.map(Frame::data))))
}
