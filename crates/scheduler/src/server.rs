//! The scheduler's gRPC server entry point: the service and the GC over one shared state.

use crate::grpc::SchedulerGrpc;
use crate::service::SchedulerService;
use crate::state::SchedulerState;
use std::future::Future;
use std::sync::Arc;
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
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder()
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
