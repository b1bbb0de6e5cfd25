//! The scheduler's gRPC server entry point: the service and the GC over one shared state, with
//! `grpc.health.v1.Health` on the same port (SERVING until shutdown starts); and [`run`], which
//! adds the metrics server (`/metrics`, `/healthy` on `metrics.addr`).

use crate::grpc::SchedulerGrpc;
use crate::service::SchedulerService;
use crate::state::SchedulerState;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// How long a stopping scheduler waits for open peer streams before it closes them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves the `Scheduler` gRPC API on an already-bound `listener` (and runs the GC) until
/// `shutdown` completes, then waits at most [`SHUTDOWN_GRACE`] for open peer streams.
pub async fn serve(
    listener: TcpListener,
    state: Arc<SchedulerState>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop_gc, gc_stopped) = tokio::sync::oneshot::channel::<()>();
    let gc = tokio::spawn(crate::gc::run(state.clone(), async move {
        let _ = gc_stopped.await;
    }));
    let (stopping, stop_asked) = tokio::sync::oneshot::channel::<()>();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SchedulerGrpc>().await;
    let shutdown = async move {
        shutdown.await;
        health.set_not_serving::<SchedulerGrpc>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(SchedulerGrpc::new(SchedulerService::new(state)))
        // Without TCP_NODELAY a small answer can wait 40 ms for the peer's delayed ACK (Nagle).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    // A graceful stop waits for open AnnouncePeer streams, which last as long as a download:
    // give them SHUTDOWN_GRACE, then close them (peers go on with their parents or the source).
    let grace = async {
        if stop_asked.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = server => r,
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "peer streams still open at shutdown; closing them");
            Ok(())
        }
    };
    let _ = stop_gc.send(());
    let _ = gc.await;
    result
}

/// Why [`run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gRPC server failed.
    #[error("scheduler gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    /// The metrics server's listener stopped working.
    #[error("metrics server (metrics.addr) failed")]
    Metrics(#[source] std::io::Error),
}

/// [`serve`] on `listener`, and the metrics server on `metrics` when given (`/metrics` renders
/// the state's registry; `/healthy` is 200 while the gRPC server serves), until `shutdown`
/// completes or one of them fails.
pub async fn run(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state: Arc<SchedulerState>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let up = Arc::new(AtomicBool::new(true));
    let (stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_server = async {
        let Some(listener) = metrics else {
            return std::future::pending().await;
        };
        let (registry, flag) = (state.metrics.clone(), up.clone());
        let endpoints = dragonfly_common::metrics_http::Endpoints {
            render: Arc::new(move || registry.render()),
            healthy: Arc::new(move || match flag.load(Ordering::Relaxed) {
                true => Ok(()),
                false => Err("the scheduler is shutting down".into()),
            }),
        };
        dragonfly_common::metrics_http::serve(listener, endpoints, stopped(stop.subscribe())).await
    };
    let grpc = serve(listener, state.clone(), async {
        shutdown.await;
        up.store(false, Ordering::Relaxed);
        let _ = stop.send(true);
    });
    tokio::pin!(metrics_server);
    tokio::select! {
        r = grpc => {
            // The metrics server ends with the shutdown (its stop was sent) or now.
            let _ = stop.send(true);
            r.map_err(RunError::Grpc)
        }
        r = &mut metrics_server => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(RunError::Metrics(e)),
        },
    }
}
