//! The scheduler's shared state and its gRPC server entry point.

use crate::config::SchedulerConfig;
use crate::grpc::SchedulerGrpc;
use crate::resource::Resources;
use crate::seed::{GrpcSeedTrigger, NoSeedTrigger, SeedTrigger};
use crate::service::SchedulerService;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Everything one scheduler instance knows, shared by the gRPC service and the GC.
pub struct SchedulerState {
    /// The effective config.
    pub config: SchedulerConfig,
    /// Hosts, tasks, peers (shared with the seed trigger, which records what a seed holds).
    pub resources: Arc<Resources>,
    /// How seed peers are asked to fetch a task.
    pub seed_trigger: Arc<dyn SeedTrigger>,
}

impl SchedulerState {
    /// State for `config`; seed peers are triggered over gRPC when `seedPeer.enable` is set.
    pub fn new(config: SchedulerConfig) -> Self {
        let seed_trigger: Arc<dyn SeedTrigger> = if config.seed_peer.enable {
            Arc::new(GrpcSeedTrigger)
        } else {
            Arc::new(NoSeedTrigger)
        };
        Self::with_seed_trigger(config, seed_trigger)
    }

    /// State with a custom seed trigger (tests, or a different transport).
    pub fn with_seed_trigger(config: SchedulerConfig, seed_trigger: Arc<dyn SeedTrigger>) -> Self {
        SchedulerState {
            config,
            resources: Arc::new(Resources::default()),
            seed_trigger,
        }
    }
}

impl std::fmt::Debug for SchedulerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerState")
            .field("hosts", &self.resources.hosts.len())
            .field("tasks", &self.resources.tasks.len())
            .finish_non_exhaustive()
    }
}

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
