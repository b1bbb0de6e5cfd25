//! The upload server (port 65002): what other daemons ask this node for.
//!
//! One port, two protocols, told apart per request:
//! - gRPC (`application/grpc`, HTTP/2): `DfdaemonUpload.SyncPieces` pushes the metadata of the
//!   pieces this node holds and of each new one as it lands, so a child can follow a parent that
//!   is still downloading.
//!   `grpc.health.v1.Health` answers SERVING for the server (`""`) and for `DfdaemonUpload`
//!   while it accepts, NOT_SERVING once it drains.
//! - HTTP/1.1 `GET /pieces/{task_id}/{number}`: the piece bytes, sent with `sendfile(2)` from the
//!   task's content file (see `data`). Only known tasks (by validated id) and stored pieces are
//!   served; no path from the network ever reaches the file system.
//!
//! Limits: pieces served at once in total and per remote address, and bytes per second in
//! total, so one node cannot be drained by its children. When every slot is taken, a freed one
//! goes to the waiting address holding the fewest (`slots`), and a transfer whose child stopped
//! reading gives its slot up after 5 s while somebody waits (30 s otherwise).

mod data;
mod limit;
mod slots;
mod sync;

pub use limit::UploadLimits;
pub(crate) use sync::stat_task;

use crate::serve::{Drain, accept_loop};
use crate::task::TaskManager;
use bytes::Bytes;
use dragonfly_proto::DfdaemonUploadServer;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

pub use crate::stats::UploadStats;
pub use sync::{Msgs, SeedDownload};

/// Header carrying the piece's crc32 (8 lowercase hex digits).
pub const PIECE_CRC_HEADER: &str = "x-dragonfly-piece-crc32";

struct Shared {
    engine: TaskManager,
    limits: limit::Limiter,
}

/// How long a piece connection idle when the server starts draining may wait for a request: a
/// child in the middle of a download asks for its next piece within this; a pooled connection
/// nobody uses closes.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// Serve uploads on `listener` until `shutdown` completes. `DownloadTask` is refused (this
/// node is not a seed peer).
pub async fn serve(
    listener: TcpListener,
    engine: TaskManager,
    limits: UploadLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, engine, limits, None, shutdown).await
}

/// [`serve`], and on a seed peer (`seed` set) answer `DownloadTask`: the scheduler asks the seed
/// to fetch a task nobody holds yet. Connections open when `shutdown` completes go on until
/// they end (the daemon drains them with [`serve_drained`]).
pub async fn serve_with(
    listener: TcpListener,
    engine: TaskManager,
    limits: UploadLimits,
    seed: Option<Arc<dyn SeedDownload>>,
    shutdown: impl Future<Output = ()>,
) {
    let drain = Drain::new();
    let served = serve_on(listener, engine, limits, seed, drain.clone(), false);
    crate::serve::serve_until("upload server", drain, served, shutdown).await
}

/// The upload server on `drain`, until [`Drain::finish`] ends (or with the error that broke the
/// listener). Once the drain stops, only addresses with a connection still open (children in
/// the middle of a download) may connect, each piece goes out with `connection: close`, and
/// a child finishes its download from this node within the grace period.
pub async fn serve_drained(
    listener: TcpListener,
    engine: TaskManager,
    limits: UploadLimits,
    seed: Option<Arc<dyn SeedDownload>>,
    drain: Drain,
) -> std::io::Result<()> {
    serve_on(listener, engine, limits, seed, drain, true).await
}

async fn serve_on(
    listener: TcpListener,
    engine: TaskManager,
    limits: UploadLimits,
    seed: Option<Arc<dyn SeedDownload>>,
    drain: Drain,
    readmit_children: bool,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        limits: limit::Limiter::new(limits),
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<DfdaemonUploadServer<sync::SyncService>>()
        .await;
    let stopping = drain.clone();
    tokio::spawn(async move {
        stopping.stopping().await;
        health
            .set_not_serving::<DfdaemonUploadServer<sync::SyncService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    let grpc = tonic::service::Routes::new(DfdaemonUploadServer::new(sync::SyncService::new(
        engine, seed,
    )))
    .add_service(health_service)
    .prepare();
    let open = Arc::new(OpenConnections::default());
    let readmit = readmit_children.then(|| {
        let open = open.clone();
        Arc::new(move |ip| open.has(ip)) as crate::serve::Readmit
    });
    let conn_drain = drain.clone();
    accept_loop(
        "upload server",
        listener,
        drain,
        readmit,
        move |stream, remote| {
            let (shared, grpc, drain) = (shared.clone(), grpc.clone(), conn_drain.clone());
            let counted = open.add(remote.ip());
            Some(async move {
                let _counted = counted;
                serve_connection(stream, remote, shared, grpc, drain).await
            })
        },
    )
    .await
}

/// Open connections per remote address.
#[derive(Default)]
struct OpenConnections(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

impl OpenConnections {
    fn add(self: &Arc<Self>, ip: IpAddr) -> OpenConnection {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(ip).or_default() += 1;
        }
        OpenConnection(self.clone(), ip)
    }

    fn has(&self, ip: IpAddr) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(&ip))
    }
}

/// One open connection, counted until dropped.
struct OpenConnection(Arc<OpenConnections>, IpAddr);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.0.lock()
            && let Some(n) = m.get_mut(&self.1)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// One connection: piece GETs (HTTP/1.1) or gRPC (HTTP/2).
async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    grpc: tonic::service::Routes,
    drain: Drain,
) {
    // gRPC speaks HTTP/2 from its first bytes ("PRI * HTTP/2.0"); piece GETs are HTTP/1.1.
    if !starts_with_h2_preface(&stream).await {
        if let Err(e) = data::serve_connection(stream, shared, remote, &drain).await {
            tracing::debug!(peer = %remote, error = %e, "piece connection ended");
        }
        return;
    }
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut grpc = grpc.clone();
        async move {
            let is_grpc = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if is_grpc {
                return grpc.call(req).await;
            }
            Ok::<_, Infallible>(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "HTTP/2 here is for gRPC; piece bytes are served over HTTP/1.1\n".into(),
            ))
        }
    });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = drain.stopping() => {
            // GOAWAY: streams in flight (a child's SyncPieces) finish, no new ones start.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Whether the connection opens with the HTTP/2 preface (waits for its first 3 bytes).
async fn starts_with_h2_preface(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 3];
    for _ in 0..100 {
        match stream.peek(&mut first).await {
            Ok(n) if n >= 3 => return &first == b"PRI",
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    false
}

fn text(status: StatusCode, msg: String) -> Response<tonic::body::Body> {
    let mut r = Response::new(tonic::body::Body::new(
        Full::new(Bytes::from(msg)).map_err(|n| match n {}),
    ));
    *r.status_mut() = status;
    r
}
