//! The plain-HTTP fast path: a registry-mirror `GET /v2/<name>/blobs/sha256:<hex>` for a blob
//! that is stored and verified here is answered with `sendfile(2)` from the content file, so
//! the bytes never pass through user space (what nginx does for its cache).
//!
//! The request head is read and parsed here first. Anything else (another request, a Range,
//! a blob not stored yet, a body) goes to hyper with the bytes already read put back in front
//! of the connection, and hyper serves the rest of the connection.

use super::reach::Ask;
use super::route::{self, Decision, RangeAsk};
use super::timeouts::Watch;
use super::{Client, MAX_HEAD, Proxy, Via};
use crate::storage::TaskRecord;
use bytes::{Buf, Bytes, BytesMut};
use dragonfly_common::digest::Digest;
use dragonfly_common::task_id::TaskId;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Response header on answers of this path (operators can see which blobs went zero-copy).
pub const SERVED_HEADER: &str = "x-dragonfly-served";

/// Headers parsed at most (a registry client sends a dozen).
const MAX_HEADERS: usize = 64;

/// Serve one plain connection of the proxy listener.
pub(super) async fn serve(proxy: Arc<Proxy>, mut stream: TcpStream, client: Client) {
    let peer = client.peer;
    let watch = Watch::new(proxy.timeouts);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // The head of the next request, or hyper for anything this path does not know.
        let head_len = loop {
            if let Some(end) = find_head_end(&buf) {
                break Some(end);
            }
            if buf.len() > MAX_HEAD {
                let msg = format!(
                    "request head of more than {MAX_HEAD} bytes is over the limit of {MAX_HEAD}\n"
                );
                return refuse(stream, "431 Request Header Fields Too Large", &msg).await;
            }
            match head_error(&buf) {
                // Not HTTP (a client trying TLS first, as skopeo does with an `insecure`
                // mirror): refused at once instead of both sides waiting for more.
                Some(httparse::Error::TooManyHeaders) => break None, // hyper takes more
                Some(e) => {
                    let msg = format!("not an HTTP/1.1 request: {e}\n");
                    return refuse(stream, "400 Bad Request", &msg).await;
                }
                None => {}
            }
            let read = tokio::select! {
                r = stream.read_buf(&mut buf) => r,
                why = watch.expired() => {
                    tracing::debug!(client = %peer, "proxy connection closed: {why}");
                    return;
                }
                // Draining: the response in flight was sent; an idle connection closes.
                () = client.drain.idle_closes(std::time::Duration::ZERO), if buf.is_empty() => return,
            };
            match read {
                Ok(0) if buf.is_empty() => return, // closed between requests
                Ok(0) => break None,               // hyper reports the broken request
                Ok(_) => watch.bytes_arrived(),
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "proxy connection ended");
                    return;
                }
            }
        };
        let Some(head_len) = head_len else {
            return hand_to_hyper(proxy, stream, buf.freeze(), client, watch).await;
        };
        let Some(ask) = parse(&buf[..head_len]) else {
            return hand_to_hyper(proxy, stream, buf.freeze(), client, watch).await;
        };
        let Some((record, id, digest)) = stored_blob(&proxy, &ask).await else {
            return hand_to_hyper(proxy, stream, buf.freeze(), client, watch).await;
        };
        let len = record.content_length;
        let (from, to) = match route::parse_range(ask.range.as_deref(), len) {
            RangeAsk::Full => (0, len),
            RangeAsk::Part(s, e) => (s, e),
            RangeAsk::Unsatisfiable => {
                return hand_to_hyper(proxy, stream, buf.freeze(), client, watch).await; // its 416
            }
        };
        let file = match std::fs::File::open(proxy.engine.storage().content_path(&id)) {
            Ok(f) => f,
            Err(_) => return hand_to_hyper(proxy, stream, buf.freeze(), client, watch).await,
        };
        buf.advance(head_len);
        let _busy = watch.request();
        let _permit = match &proxy.limit {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        if !proxy.engine.is_running(&id) {
            let (s, t) = (proxy.engine.storage().clone(), id.clone());
            tokio::task::spawn_blocking(move || s.touch(&t));
        }
        let part = (from, to) != (0, len);
        let head = response_head(&record, &id, &digest, part.then_some((from, to)), ask.close);
        let sent = async {
            stream.write_all(head.as_bytes()).await?;
            crate::sendfile::sendfile(&stream, &file, from, to).await
        }
        .await;
        let status = if part { 206 } else { 200 };
        tracing::debug!(client = %peer, method = "GET", uri = %ask.path, status, served = "sendfile", "proxy request");
        if let Err(e) = sent {
            tracing::debug!(client = %peer, task = %id, error = %e, "proxy connection ended");
            return;
        }
        if ask.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Why these first bytes of a request head cannot become a valid one (`None`: they may).
fn head_error(buf: &[u8]) -> Option<httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    httparse::Request::new(&mut headers).parse(buf).err()
}

/// Answer a request head that cannot be served with `status` and a one-line text, and close.
async fn refuse(mut stream: TcpStream, status: &str, msg: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
        msg.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client still sends (briefly): closing with unread input resets the
    // connection, and the client would lose the answer.
    let drain = async {
        let mut sink = [0u8; 8192];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// Where the request head ends (after its blank line), as the HTTP parser sees it: a head
/// ended by bare LFs (`\n\n`) is complete too, and must not wait for a `\r\n\r\n` that never
/// comes.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
    }
}

/// A request this path may answer.
#[derive(Debug)]
struct BlobGet {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    /// A `Range` header (one range is served as 206; several get the whole blob).
    range: Option<String>,
    close: bool,
}

/// `GET /v2/...` over HTTP/1.1 without a body or conditions; `None` for anything else.
fn parse(head: &[u8]) -> Option<BlobGet> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    if !target.starts_with("/v2/") {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    route::blob_digest(path)?;
    let mut map = HeaderMap::new();
    let mut close = false;
    let mut range = None;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        // Bodies, conditional requests, upgrades: hyper's.
        if matches!(
            name.as_str(),
            "content-length"
                | "transfer-encoding"
                | "if-range"
                | "if-match"
                | "if-none-match"
                | "if-modified-since"
                | "if-unmodified-since"
                | "expect"
                | "upgrade"
        ) {
            return None;
        }
        if name == http::header::RANGE {
            range = Some(value.to_str().ok()?.to_string());
        }
        if name == http::header::CONNECTION {
            let v = value.to_str().ok()?;
            close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        map.append(name, value);
    }
    Some(BlobGet {
        path: path.to_string(),
        query,
        headers: map,
        range,
        close,
    })
}

/// The finished, verified task of the blob this mirror request is for, if this node has it,
/// the request passes `basicAuth` and the name lists (`whiteList`, `registryMirror.allow`;
/// hyper's path answers those that do not), and it would be served as a P2P task at all. The
/// rules on addresses are not checked: serving a stored blob connects nowhere.
async fn stored_blob(proxy: &Proxy, ask: &BlobGet) -> Option<(TaskRecord, TaskId, Digest)> {
    if !proxy.auth_ok(&ask.headers) {
        return None;
    }
    let m = &proxy.cfg.registry_mirror;
    let target = route::mirror_upstream(m, &ask.headers, &ask.path, ask.query.as_deref()).ok()?;
    let (host, port) = super::host_port(&target.url)?;
    let kind = if target.dynamic {
        Ask::DynamicMirror
    } else {
        Ask::StaticMirror
    };
    proxy.reach.check_lists(kind, &host, port).ok()?;
    let url = target.url;
    let Decision::P2p(target) = route::decide(&proxy.cfg.proxies, Some(m), &url) else {
        return None;
    };
    let digest = route::blob_digest(&target)?;
    let (id, record) = proxy.engine.stored_blob(&digest, &target).await?;
    Some((record, id, digest))
}

/// The status line and headers: those of [`super::p2p`]'s answer for the same blob
/// ([`super::p2p::headers_for`]); `part` is the byte range `[from, to)` of a 206.
fn response_head(
    record: &TaskRecord,
    id: &TaskId,
    digest: &Digest,
    part: Option<(u64, u64)>,
    close: bool,
) -> String {
    let len = record.content_length;
    let mut h = HeaderMap::new();
    let (status, length) = match part {
        Some((from, to)) => ("206 Partial Content", to - from),
        None => ("200 OK", len),
    };
    super::p2p::headers_for(&mut h, id, Some(digest), length);
    if let Some((from, to)) = part
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{}/{len}", to - 1))
    {
        h.insert(http::header::CONTENT_RANGE, v);
    }
    h.insert(SERVED_HEADER, HeaderValue::from_static("sendfile"));
    if close {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in &h {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// hyper serves the rest of the connection, starting with the bytes already read.
async fn hand_to_hyper(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    read: Bytes,
    client: Client,
    watch: Arc<Watch>,
) {
    let io = Prefixed {
        prefix: read,
        inner: stream,
    };
    proxy.serve_conn(io, client, Via::Plain, watch).await
}

/// A connection with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    write_through_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_blob_gets_are_taken() {
        let blob = "/v2/lib/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let get =
            |extra: &str| format!("GET {blob}?ns=docker.io HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let ask = parse(get("").as_bytes()).expect("a plain blob GET");
        assert_eq!(ask.path, blob);
        assert_eq!(ask.query.as_deref(), Some("ns=docker.io"));
        assert!(!ask.close);
        assert!(
            parse(get("Connection: keep-alive, close\r\n").as_bytes())
                .unwrap()
                .close
        );
        let ranged = parse(get("Range: bytes=0-1\r\n").as_bytes()).expect("a ranged GET");
        assert_eq!(ranged.range.as_deref(), Some("bytes=0-1"));
        for refused in [
            "If-Range: \"x\"\r\n",
            "If-None-Match: \"x\"\r\n",
            "Content-Length: 3\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Expect: 100-continue\r\n",
        ] {
            assert!(parse(get(refused).as_bytes()).is_none(), "{refused}");
        }
        for other in [
            format!("HEAD {blob} HTTP/1.1\r\n\r\n"),
            format!("GET {blob} HTTP/1.0\r\n\r\n"),
            "GET /v2/lib/app/manifests/latest HTTP/1.1\r\n\r\n".to_string(),
            "GET http://h/v2/lib/app/blobs/sha256:00 HTTP/1.1\r\n\r\n".to_string(),
            "GET /ca.crt HTTP/1.1\r\n\r\n".to_string(),
            "garbage\r\n\r\n".to_string(),
        ] {
            assert!(parse(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn partial_heads_are_told_from_other_protocols() {
        assert!(head_error(b"GE").is_none());
        assert!(head_error(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").is_none());
        // The start of a TLS ClientHello.
        assert!(head_error(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).is_some());
        assert!(head_error(b"GET /v2/ HTTP/1.1\r\nBad Header\r\n").is_some());
    }

    #[tokio::test]
    async fn bytes_already_read_come_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b" world").await.unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).await.unwrap();
            back
        });
        let (inner, _) = listener.accept().await.unwrap();
        let mut p = Prefixed {
            prefix: Bytes::from_static(b"hello"),
            inner,
        };
        let mut got = vec![0u8; 11];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        p.write_all(b"ok").await.unwrap();
        p.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), "ok");
    }
}
