//! The upload server (port 65002): what other daemons ask this node for.
//!
//! One port, two protocols, told apart per request:
//! - gRPC (`application/grpc`, HTTP/2): `DfdaemonUpload.SyncPieces` pushes the metadata of the
//!   pieces this node holds and of each new one as it lands, so a child can follow a parent that
//!   is still downloading.
//! - HTTP/1.1 `GET /pieces/{task_id}/{number}`: the piece bytes, straight from the task's content
//!   file. Only known tasks (by validated id) and stored pieces are served; no path from the
//!   network ever reaches the file system.
//!
//! Limits: pieces served at once in total and per remote address, and bytes per second in
//! total, so one node cannot be drained by its children.

mod limit;
mod sync;

pub use limit::UploadLimits;
pub(crate) use sync::stat_task;

use crate::task::TaskManager;
use bytes::Bytes;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::DfdaemonUploadServer;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::Service;

/// Size of the reads that feed a piece response.
const SEND_CHUNK: u64 = 512 * 1024;

/// Header carrying the piece's crc32 (8 lowercase hex digits).
pub const PIECE_CRC_HEADER: &str = "x-dragonfly-piece-crc32";

struct Shared {
    engine: TaskManager,
    limits: limit::Limiter,
}

/// Serve uploads on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    engine: TaskManager,
    limits: UploadLimits,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        limits: limit::Limiter::new(limits),
    });
    let grpc =
        tonic::service::Routes::new(DfdaemonUploadServer::new(sync::SyncService::new(engine)))
            .prepare();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "upload server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let grpc = grpc.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
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
                    Ok::<_, Infallible>(serve_piece(&shared, remote, req).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, msg: String) -> Response<tonic::body::Body> {
    let mut r = Response::new(tonic::body::Body::new(
        Full::new(Bytes::from(msg)).map_err(|n| match n {}),
    ));
    *r.status_mut() = status;
    r
}

/// `GET /pieces/{task_id}/{number}`.
async fn serve_piece(
    shared: &Shared,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<tonic::body::Body> {
    if req.method() != http::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /pieces/{task}/{number}\n".into(),
        );
    }
    let path = req.uri().path();
    let Some((task, number)) = path
        .strip_prefix("/pieces/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such resource {path:?}\n"),
        );
    };
    let Ok(task) = task.parse::<TaskId>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{task:?} is not a task id\n"),
        );
    };
    let Ok(number) = number.parse::<u32>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{number:?} is not a piece number\n"),
        );
    };
    let storage = shared.engine.storage().clone();
    let (s, t) = (storage.clone(), task.clone());
    let record = match tokio::task::spawn_blocking(move || s.piece_record(&t, number)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("task {task} has no piece {number} here\n"),
            );
        }
        Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let permit = (
        shared.limits.acquire(remote.ip()).await,
        shared.engine.pin(&task),
    );
    let path = storage.content_path(&task);
    let file = match std::fs::File::open(&path) {
        Ok(f) => Arc::new(f),
        Err(e) => return text(StatusCode::NOT_FOUND, format!("task {task}: {e}\n")),
    };
    if !shared.engine.is_running(&task) {
        let (s, t) = (storage.clone(), task.clone());
        tokio::task::spawn_blocking(move || s.touch(&t));
    }
    let rates = shared.limits.rates(remote.ip());
    let (start, len) = (record.offset, record.length);
    let frames = futures::stream::try_unfold(0u64, move |sent| {
        let file = file.clone();
        let rates = rates.clone();
        async move {
            if sent >= len {
                return Ok::<_, std::io::Error>(None);
            }
            let n = (len - sent).min(SEND_CHUNK);
            for r in &rates {
                r.take(n).await;
            }
            let buf = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                file.read_exact_at(&mut buf, start + sent).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((Frame::data(Bytes::from(buf)), sent + n)))
        }
    });
    // The permit lives as long as the body is being sent.
    let frames = futures::StreamExt::map(frames, move |f| {
        let _held = &permit;
        f
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(PIECE_CRC_HEADER, format!("{:08x}", record.crc32))
        .body(tonic::body::Body::new(StreamBody::new(frames)))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
