//! An HTTP/1.1 origin for tests and the demo: serves registered resources (memory or file) with
//! single-range `Range` support, counts requests and body bytes, and misbehaves on request.
//! An optional [`RateLimiter`] caps the body bytes per second of all connections together, like
//! an origin whose uplink is the bottleneck.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Size of the body frames the origin sends.
const FRAME: usize = 64 * 1024;

/// How a resource misbehaves. The default is a well-behaved server.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Answer every GET with 200 and the whole body, whatever `Range` says.
    pub ignore_range: bool,
    /// Answer HEAD with 405 Method Not Allowed.
    pub refuse_head: bool,
    /// Answer every request with this status and a short text body.
    pub status: Option<u16>,
    /// Wait this long before sending response headers.
    pub header_delay: Duration,
    /// Wait this long between body frames (64 KiB each).
    pub frame_delay: Duration,
    /// Flip one byte in every body frame (content that will not match its digest).
    pub corrupt: bool,
    /// Answer 401 unless the request carries this header (name, value).
    pub require_header: Option<(String, String)>,
    /// Answer the first N GETs of this resource with 503.
    pub fail_first_gets: u64,
    /// Answer with `307 Temporary Redirect` to this URL (blob storage behind a registry).
    pub redirect_to: Option<String>,
    /// Answer 400 when the request carries this header (e.g. a token that must not leak).
    pub forbid_header: Option<String>,
    /// The `WWW-Authenticate` value sent with the 401 of `require_header`.
    pub challenge: Option<String>,
    /// Break the connection of the first N GETs of this resource after `break_after` body
    /// bytes (a body that ends early).
    pub break_first_gets: u64,
    /// Body bytes sent before a breaking GET fails.
    pub break_after: u64,
    /// The content is replaced by a new version after this many GETs (`(n, bytes)`): the
    /// first n GETs get the resource's bytes with `ETag: "v1"`, later ones these with
    /// `ETag: "v2"`. `If-Range` is honoured: a range asked of another version gets the whole
    /// current content with 200.
    pub new_version_after_gets: Option<(u64, Bytes)>,
    /// Send no `Content-Length` (the body goes chunked): with `ignore_range`, an origin whose
    /// length is known only at the end of the body.
    pub no_length: bool,
}

impl Behavior {
    /// Flips a byte in every body frame: content that does not match its digest.
    pub fn corrupt() -> Self {
        Behavior {
            corrupt: true,
            ..Behavior::default()
        }
    }

    /// Well-behaved, but waiting `frame_delay` between body frames (64 KiB each): a slow origin.
    pub fn slow(frame_delay: Duration) -> Self {
        Behavior {
            frame_delay,
            ..Behavior::default()
        }
    }
}

/// Where a resource's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes held in memory.
    Memory(Bytes),
    /// A file on disk, read per request.
    File(PathBuf),
}

/// A resource served at one path.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The bytes.
    pub content: Content,
    /// How the server behaves for it.
    pub behavior: Behavior,
}

impl Resource {
    /// A well-behaved in-memory resource.
    pub fn bytes(data: impl Into<Bytes>) -> Self {
        Self {
            content: Content::Memory(data.into()),
            behavior: Behavior::default(),
        }
    }

    /// A well-behaved resource backed by a file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            content: Content::File(path.into()),
            behavior: Behavior::default(),
        }
    }

    /// The same resource with another behaviour.
    pub fn with(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }
}

/// Counters of what the origin served.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    gets: AtomicU64,
    body_bytes: AtomicU64,
    per_path: Mutex<HashMap<String, (u64, u64)>>,
}

impl Stats {
    /// All requests seen (any method).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// GET requests seen.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }
    /// Body bytes handed to the connection (all paths).
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::Relaxed)
    }
    /// (GET requests, body bytes) for one path.
    pub fn for_path(&self, path: &str) -> (u64, u64) {
        self.per_path
            .lock()
            .map(|m| m.get(path).copied().unwrap_or_default())
            .unwrap_or_default()
    }
    fn add_bytes(&self, path: &str, n: u64) {
        self.body_bytes.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut m) = self.per_path.lock() {
            m.entry(path.to_string()).or_default().1 += n;
        }
    }
    fn add_get(&self, path: &str) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.per_path.lock() {
            m.entry(path.to_string()).or_default().0 += 1;
        }
    }
    /// The counters as a JSON object (served at `/_stats`).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"requests\":{},\"gets\":{},\"bytes\":{}}}",
            self.requests(),
            self.gets(),
            self.body_bytes()
        )
    }
}

/// A cap on body bytes per second shared by every connection: a token bucket (kept as the
/// time at which the bucket would be full again, GCRA-style) holding at most `burst` bytes.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    /// How far ahead of real time the reservations may run (the bucket size, as time).
    burst: Duration,
    /// When every byte reserved so far has been paid for at the rate.
    paid_until: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (more than 0). The bucket holds the larger of one body
    /// frame and 20 ms worth of bytes, so sleeps are not shorter than the timer can honour.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = Duration::from_secs_f64((FRAME as f64 / rate).max(0.02));
        Self {
            bytes_per_sec: rate,
            burst,
            paid_until: Mutex::new(Instant::now()),
        }
    }

    /// The cap, in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec as u64
    }

    /// Wait until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let ready_at = {
            let Ok(mut paid) = self.paid_until.lock() else {
                return;
            };
            let now = Instant::now();
            let start = (*paid).max(now);
            *paid = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            paid.checked_sub(self.burst).unwrap_or(*paid)
        };
        if ready_at > Instant::now() {
            tokio::time::sleep_until(ready_at).await;
        }
    }
}

/// Parse a byte rate: a number with an optional unit, `K`/`M`/`G` (also `Ki`, `KiB`, `KB`, ...;
/// all binary: 1K = 1024), e.g. `100M` or `104857600`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches("/s");
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    let v = num * mult as f64;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

/// The origin's routing table and counters. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct Origin {
    routes: Arc<Mutex<HashMap<String, Resource>>>,
    dir: Option<PathBuf>,
    stats: Arc<Stats>,
    rate_limit: Option<Arc<RateLimiter>>,
}

impl Origin {
    /// An origin with no resources (every path is 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// An origin that also serves the files under `dir` (paths with `..` are refused).
    pub fn with_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..Self::default()
        }
    }

    /// Cap the body bytes of all connections together at `bytes_per_sec` (0: no cap).
    pub fn with_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.rate_limit = (bytes_per_sec > 0).then(|| Arc::new(RateLimiter::new(bytes_per_sec)));
        self
    }

    /// A new origin serving `routes`, running on 127.0.0.1: the routing table (more routes can
    /// be added while it runs) and the running server. Panics when it cannot bind (test helper).
    pub async fn serving<P: AsRef<str>>(
        routes: impl IntoIterator<Item = (P, Resource)>,
    ) -> (Origin, RunningOrigin) {
        let origin = Origin::new();
        for (path, resource) in routes {
            origin.route(path.as_ref(), resource);
        }
        let running = origin.spawn().await.expect("bind an origin on 127.0.0.1");
        (origin, running)
    }

    /// A new origin serving nothing yet (add routes while it runs), running on 127.0.0.1.
    pub async fn empty() -> (Origin, RunningOrigin) {
        Self::serving(Vec::<(&str, Resource)>::new()).await
    }

    /// A new origin serving `len` deterministic bytes from `seed` ([`crate::data::random_bytes`])
    /// at `path`: the bytes, the routing table and the running server.
    pub async fn random(path: &str, seed: u64, len: usize) -> (Vec<u8>, Origin, RunningOrigin) {
        Self::random_with(path, seed, len, Behavior::default()).await
    }

    /// [`Origin::random`], misbehaving as `behavior` says.
    pub async fn random_with(
        path: &str,
        seed: u64,
        len: usize,
        behavior: Behavior,
    ) -> (Vec<u8>, Origin, RunningOrigin) {
        let data = crate::data::random_bytes(seed, len);
        let resource = Resource::bytes(data.clone()).with(behavior);
        let (origin, running) = Origin::serving([(path, resource)]).await;
        (data, origin, running)
    }

    /// Serve `resource` at `path` (e.g. `/blob`).
    pub fn route(&self, path: &str, resource: Resource) -> &Self {
        if let Ok(mut r) = self.routes.lock() {
            r.insert(path.to_string(), resource);
        }
        self
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Bind `127.0.0.1:0` and serve in the background until the handle is dropped.
    pub async fn spawn(&self) -> std::io::Result<RunningOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let origin = self.clone();
        tokio::spawn(async move {
            serve(listener, origin, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningOrigin {
            addr,
            stats: self.stats.clone(),
            _shutdown: tx,
        })
    }

    fn lookup(&self, path: &str) -> Option<Resource> {
        if let Some(r) = self.routes.lock().ok()?.get(path) {
            return Some(r.clone());
        }
        let dir = self.dir.as_ref()?;
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        let full = dir.join(rel);
        full.is_file().then(|| Resource::file(full))
    }
}

/// A running origin; it stops when this is dropped.
pub struct RunningOrigin {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl RunningOrigin {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The body bytes it has served of `path` so far.
    pub fn served(&self, path: &str) -> u64 {
        self.stats.for_path(path).1
    }
}

/// Serve `origin` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, origin: Origin, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let origin = origin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let origin = origin.clone();
                async move { Ok::<_, Infallible>(handle(&origin, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// A parsed single `Range: bytes=...` header, resolved against the length.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multi-range: serve the whole body
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.saturating_sub(1)),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(len.saturating_sub(1)),
        ),
    };
    if start >= len || start > end {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

async fn handle(origin: &Origin, req: Request<Incoming>) -> Response<Body> {
    let stats = origin.stats.clone();
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    if path == "/_stats" {
        return text(StatusCode::OK, &stats.to_json());
    }
    let Some(resource) = origin.lookup(&path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let b = &resource.behavior;
    if !b.header_delay.is_zero() {
        tokio::time::sleep(b.header_delay).await;
    }
    if let Some(code) = b.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return text(status, &format!("status {code} on purpose\n"));
    }
    if let Some(name) = &b.forbid_header
        && req.headers().contains_key(name.as_str())
    {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("header {name} must not be sent here\n"),
        );
    }
    if let Some((name, value)) = &b.require_header {
        let ok = req
            .headers()
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes());
        if !ok {
            let mut r = text(StatusCode::UNAUTHORIZED, "missing required header\n");
            if let Some(c) = b
                .challenge
                .as_deref()
                .and_then(|c| http::HeaderValue::from_str(c).ok())
            {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, c);
            }
            return r;
        }
    }
    if let Some(to) = b
        .redirect_to
        .as_deref()
        .and_then(|t| http::HeaderValue::from_str(t).ok())
    {
        let mut r = text(StatusCode::TEMPORARY_REDIRECT, "moved\n");
        r.headers_mut().insert(http::header::LOCATION, to);
        return r;
    }
    let is_head = req.method() == Method::HEAD;
    if !is_head && b.fail_first_gets > 0 {
        let seen = stats.for_path(&path).0;
        if seen < b.fail_first_gets {
            stats.add_get(&path);
            return text(StatusCode::SERVICE_UNAVAILABLE, "failing on purpose\n");
        }
    }
    if is_head && b.refuse_head {
        return text(StatusCode::METHOD_NOT_ALLOWED, "HEAD not allowed\n");
    }
    if !is_head && req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let gets_so_far = stats.for_path(&path).0;
    let (content, etag) = match &b.new_version_after_gets {
        Some((n, new)) if gets_so_far >= *n => (Content::Memory(new.clone()), Some("\"v2\"")),
        Some(_) => (resource.content.clone(), Some("\"v1\"")),
        None => (resource.content.clone(), None),
    };
    let same_version = match (req.headers().get(header::IF_RANGE), etag) {
        (Some(asked), Some(current)) => asked.as_bytes() == current.as_bytes(),
        _ => true,
    };
    let len = match &content {
        Content::Memory(b) => b.len() as u64,
        Content::File(p) => match tokio::fs::metadata(p).await {
            Ok(m) => m.len(),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !b.ignore_range && same_version)
        .and_then(|v| parse_range(v, len));
    let (status, start, end_incl) = match range {
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(Err(())) => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
            if let Ok(v) = format!("bytes */{len}").parse() {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end_incl - start + 1 };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if !b.no_length {
        builder = builder.header(header::CONTENT_LENGTH, count);
    }
    if !b.ignore_range {
        builder = builder.header(header::ACCEPT_RANGES, "bytes");
    }
    if let Some(etag) = etag {
        builder = builder.header(header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end_incl}/{len}"),
        );
    }
    if is_head {
        let body = if b.no_length {
            // A body of unknown size: hyper would announce an empty `Full` as length 0.
            let none = futures::stream::empty::<Result<Frame<Bytes>, std::io::Error>>();
            BodyExt::boxed_unsync(StreamBody::new(none))
        } else {
            Full::new(Bytes::new())
                .map_err(|n| match n {})
                .boxed_unsync()
        };
        return builder
            .body(body)
            .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
    }
    let breaking = b.break_first_gets > stats.for_path(&path).0;
    stats.add_get(&path);
    let frames = body_frames(content, start, count);
    // A breaking GET: its frames up to `break_after` bytes, then an error (hyper drops the
    // connection, the client sees a short body).
    let cut = breaking.then_some(b.break_after);
    let frames = frames.scan(Some(0u64), move |sent, item| {
        let out = match (cut, *sent, item) {
            (_, None, _) => None,
            (Some(limit), Some(n), _) if n >= limit => {
                *sent = None;
                Some(Err(std::io::Error::other("connection broken on purpose")))
            }
            (Some(limit), Some(n), Ok(chunk)) => {
                let keep = chunk.len().min((limit - n) as usize);
                *sent = Some(n + keep as u64);
                Some(Ok(chunk.slice(..keep)))
            }
            (_, Some(n), item) => {
                if let Ok(c) = &item {
                    *sent = Some(n + c.len() as u64);
                }
                Some(item)
            }
        };
        futures::future::ready(out)
    });
    // Give the client time to read what was sent before the connection is reset (a reset
    // discards bytes the client has not read yet).
    let frames = frames.then(|item| async move {
        if item.is_err() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        item
    });
    let delay = b.frame_delay;
    let corrupt = b.corrupt;
    let limiter = origin.rate_limit.clone();
    let counted = frames.then(move |item| {
        let stats = stats.clone();
        let path = path.clone();
        let limiter = limiter.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let (Some(l), Ok(chunk)) = (&limiter, &item) {
                l.acquire(chunk.len() as u64).await;
            }
            item.map(|chunk| {
                let chunk = if corrupt && !chunk.is_empty() {
                    let mut v = chunk.to_vec();
                    v[0] ^= 0xff;
                    Bytes::from(v)
                } else {
                    chunk
                };
                stats.add_bytes(&path, chunk.len() as u64);
                Frame::data(chunk)
            })
        }
    });
    builder
        .body(BodyExt::boxed_unsync(StreamBody::new(counted)))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

/// The body bytes `[start, start+count)` as a stream of frames of at most [`FRAME`] bytes.
fn body_frames(
    content: Content,
    start: u64,
    count: u64,
) -> std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
    match content {
        Content::Memory(bytes) => {
            let s = start as usize;
            let e = s + count as usize;
            let mut chunks = Vec::new();
            let mut at = s;
            while at < e {
                let n = FRAME.min(e - at);
                chunks.push(Ok(bytes.slice(at..at + n)));
                at += n;
            }
            Box::pin(futures::stream::iter(chunks))
        }
        Content::File(path) => Box::pin(futures::stream::unfold(
            (None::<tokio::fs::File>, path, start, count),
            |(file, path, pos, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut f = match file {
                    Some(f) => f,
                    None => {
                        let opened = async {
                            let mut f = tokio::fs::File::open(&path).await?;
                            f.seek(std::io::SeekFrom::Start(pos)).await?;
                            Ok::<_, std::io::Error>(f)
                        };
                        match opened.await {
                            Ok(f) => f,
                            Err(e) => return Some((Err(e), (None, path, pos, 0))),
                        }
                    }
                };
                let mut buf = vec![0u8; (FRAME as u64).min(left) as usize];
                match f.read_exact(&mut buf).await {
                    Ok(_) => {
                        let n = buf.len() as u64;
                        Some((Ok(Bytes::from(buf)), (Some(f), path, pos + n, left - n)))
                    }
                    Err(e) => Some((Err(e), (None, path, pos, 0))),
                }
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Origin, Resource, parse_range, parse_size};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// GET `path` over a raw HTTP/1.1 connection; the number of bytes received (head + body).
    async fn fetch(addr: std::net::SocketAddr, path: &str) -> usize {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf.len()
    }

    #[tokio::test]
    async fn rate_limit_caps_all_connections_together() {
        const MIB: usize = 1 << 20;
        let origin = Origin::new().with_rate_limit(8 << 20);
        origin.route("/a", Resource::bytes(vec![7u8; 2 * MIB]));
        origin.route("/b", Resource::bytes(vec![9u8; 2 * MIB]));
        origin.route("/c", Resource::bytes(vec![1u8; 4 * MIB]));
        let running = origin.spawn().await.unwrap();

        // One connection: 4 MiB at 8 MiB/s cannot take less than 0.4 s (0.5 s minus the bucket).
        let t = Instant::now();
        assert!(fetch(running.addr, "/c").await > 4 * MIB);
        let one = t.elapsed();
        assert!(one.as_secs_f64() >= 0.4, "4 MiB at 8 MiB/s took {one:?}");

        // Two connections at once share the cap: 2 x 2 MiB also takes at least 0.4 s.
        let t = Instant::now();
        let (a, b) = tokio::join!(fetch(running.addr, "/a"), fetch(running.addr, "/b"));
        let two = t.elapsed();
        assert!(a > 2 * MIB && b > 2 * MIB);
        assert!(
            two.as_secs_f64() >= 0.4,
            "2 x 2 MiB at 8 MiB/s took {two:?}"
        );
        assert_eq!(running.stats.body_bytes(), 8 * MIB as u64);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("104857600"), Some(100 << 20));
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("100MiB"), Some(100 << 20));
        assert_eq!(parse_size("100Mi"), Some(100 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("8MiB/s"), Some(8 << 20));
        assert_eq!(parse_size("fast"), None);
        assert_eq!(parse_size("10X"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-200", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
