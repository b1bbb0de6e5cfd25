//! The running daemon: its servers and loops in one `JoinSet`, the drain on shutdown, and a
//! loud stop when one of them fails.
//!
//! On shutdown (or when a server fails): the upload server and the proxy stop accepting and
//! their connections in flight get `gracefulShutdownTimeout` to finish (then they are cut, and
//! counted in the log); the local download socket stops taking connections and its requests get
//! the same deadline; then the announcer leaves the schedulers, and the daemon returns.

use super::{DaemonError, ServerExit};
use crate::scheduling::Schedulers;
use crate::serve::Drain;
use crate::storage::GcPolicy;
use crate::task::TaskManager;
use crate::upload::{self, SeedDownload, UploadLimits};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// Names of the daemon's tasks, as errors and logs give them.
pub(super) const UPLOAD: &str = "upload server (upload.tcpListen)";
const PROXY: &str = "proxy (proxy.tcpListen)";
const SOCKET: &str = "download socket (download.unixListen.socket)";
const ANNOUNCER: &str = "scheduler announcer";
const FINISHED_SYNC: &str = "finished-task sync to the schedulers";
const GC: &str = "gc loop";
const METRICS: &str = "metrics server (metrics.tcpListen)";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything [`run`] starts, bound and configured.
pub(super) struct Parts {
    pub(super) engine: TaskManager,
    pub(super) upload: TcpListener,
    pub(super) upload_limits: UploadLimits,
    pub(super) seed: Option<Arc<dyn SeedDownload>>,
    pub(super) proxy: Option<(Arc<crate::proxy::Proxy>, TcpListener)>,
    pub(super) socket: UnixListener,
    pub(super) service: super::download_service::DownloadService,
    pub(super) schedulers: Option<Schedulers>,
    pub(super) gc_interval: Duration,
    pub(super) gc_policy: GcPolicy,
    pub(super) grace: Duration,
    /// The metrics server's listener and answers, when `metrics.enable` is set.
    pub(super) metrics: Option<(TcpListener, dragonfly_common::metrics_http::Endpoints)>,
    /// `/healthy`'s flag: set once everything runs, cleared when the drain starts.
    pub(super) up: super::observe::Up,
}

/// The daemon's tasks by name.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Result<(), BoxError>>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    fn spawn<F>(&mut self, name: &'static str, task: F) -> AbortHandle
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
        handle
    }

    /// The next task to end, with its name and how it ended.
    async fn next(&mut self) -> Option<(&'static str, Result<(), ServerExit>)> {
        let ended = self.set.join_next_with_id().await?;
        let (id, result) = match ended {
            Ok((id, Ok(()))) => (id, Ok(())),
            Ok((id, Err(e))) => (id, Err(ServerExit::Failed(e))),
            Err(e) => (e.id(), Err(panicked(e))),
        };
        let name = self.names.remove(&id).unwrap_or("a daemon task");
        Some((name, result))
    }
}

/// How a task that did not return ended.
fn panicked(e: JoinError) -> ServerExit {
    if e.is_cancelled() {
        return ServerExit::Cancelled;
    }
    let payload = e.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    ServerExit::Panicked(msg)
}

/// Run the daemon's parts until `shutdown` completes or one of them fails; then drain.
pub(super) async fn run(
    parts: Parts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let Parts {
        engine,
        upload,
        upload_limits,
        seed,
        proxy,
        socket,
        service,
        schedulers,
        gc_interval,
        gc_policy,
        grace,
        metrics,
        up,
    } = parts;
    let mut tasks = Tasks::default();
    let (upload_drain, proxy_drain, metrics_drain) = (Drain::new(), Drain::new(), Drain::new());
    // Stop the local socket's gRPC server (it drains itself), and cut it at the deadline.
    let (socket_stop, socket_cut) = (CancellationToken::new(), CancellationToken::new());
    // The loops that talk to the schedulers and collect garbage.
    let background = CancellationToken::new();

    tasks.spawn(
        UPLOAD,
        boxed(upload::serve_drained(
            upload,
            engine.clone(),
            upload_limits,
            seed,
            upload_drain.clone(),
        )),
    );
    if let Some((p, listener)) = proxy {
        tasks.spawn(PROXY, boxed(p.serve_drained(listener, proxy_drain.clone())));
    }
    let grpc = tonic::transport::Server::builder()
        .add_service(dragonfly_proto::DfdaemonDownloadServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(socket),
            socket_stop.clone().cancelled_owned(),
        );
    let cut = socket_cut.clone();
    tasks.spawn(SOCKET, async move {
        tokio::select! {
            r = grpc => r.map_err(Into::into),
            () = cut.cancelled() => {
                tracing::warn!("download socket: requests still in flight after the grace period were cut");
                Ok(())
            }
        }
    });
    if let Some(s) = schedulers {
        let (announcer, stop) = (s.clone(), background.clone().cancelled_owned());
        // Leaves every scheduler when stopped.
        tasks.spawn(ANNOUNCER, async move {
            announcer.run_announcer(stop).await;
            Ok(())
        });
        // Tells the schedulers what this host holds after a restart or a move on the ring.
        let (s, storage) = (s, engine.storage().clone());
        let stop = background.clone().cancelled_owned();
        tasks.spawn(FINISHED_SYNC, async move {
            s.run_finished_sync(storage, stop).await;
            Ok(())
        });
    }
    let gc = tasks.spawn(GC, gc_loop(engine.clone(), gc_interval, gc_policy));
    if let Some((listener, endpoints)) = metrics {
        let drain = metrics_drain.clone();
        let served = crate::serve::accept_loop(
            "metrics server",
            listener,
            metrics_drain.clone(),
            None,
            move |stream, _| {
                let (endpoints, drain) = (endpoints.clone(), drain.clone());
                Some(async move {
                    let stop = drain.clone();
                    dragonfly_common::metrics_http::serve_connection(
                        stream,
                        endpoints,
                        async move { stop.stopping().await },
                    )
                    .await
                })
            },
        );
        tasks.spawn(METRICS, boxed(served));
    }
    up.set(true);

    let mut failure = None;
    tokio::select! {
        () = shutdown => tracing::info!(grace = ?grace, "dfdaemon shutting down: no new connections; transfers in flight have the grace period to finish"),
        Some((name, ended)) = tasks.next() => {
            let exit = ended.err().unwrap_or(ServerExit::Returned);
            tracing::error!(server = name, error = %dragonfly_common::error::chain(&exit), "a server of the daemon stopped; shutting down");
            failure = Some(DaemonError::Server { server: name, source: exit });
        }
    }

    // Drain: stop accepting everywhere, wait up to the grace period, cut what is left.
    up.set(false);
    let deadline = tokio::time::Instant::now() + grace;
    gc.abort();
    socket_stop.cancel();
    let socket_deadline = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        socket_cut.cancel();
    });
    let (upload_cut, proxy_cut, _) = tokio::join!(
        upload_drain.finish(grace),
        proxy_drain.finish(grace),
        metrics_drain.finish(grace)
    );
    for (server, cut) in [(UPLOAD, upload_cut), (PROXY, proxy_cut)] {
        if cut > 0 {
            tracing::warn!(
                server,
                cut,
                "connections still open after the grace period were cut"
            );
        }
    }
    // Then leave the schedulers, and wait for everything to end.
    background.cancel();
    while let Some((name, ended)) = tasks.next().await {
        match ended {
            Ok(()) | Err(ServerExit::Cancelled) => {}
            Err(exit) => {
                tracing::error!(server = name, error = %dragonfly_common::error::chain(&exit), "a server of the daemon failed while shutting down");
                failure.get_or_insert(DaemonError::Server {
                    server: name,
                    source: exit,
                });
            }
        }
    }
    socket_deadline.abort();
    failure.map_or(Ok(()), Err)
}

async fn boxed<E>(f: impl Future<Output = Result<(), E>>) -> Result<(), BoxError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    f.await.map_err(Into::into)
}

/// Collect garbage every `interval` (the first run one interval after start). Never returns.
async fn gc_loop(
    engine: TaskManager,
    interval: Duration,
    policy: GcPolicy,
) -> Result<(), BoxError> {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (e, p) = (engine.clone(), policy.clone());
        let storage = engine.storage().clone();
        let ran = tokio::task::spawn_blocking(move || storage.gc(&p, &|id| e.in_use(id), 0)).await;
        if let Ok(Ok(r)) = &ran {
            let trigger = crate::metrics::GcTrigger::Interval;
            engine
                .metrics()
                .gc_ran(trigger, r.evicted.len(), r.bytes_freed);
        }
        match ran {
            Ok(Ok(r)) if !r.evicted.is_empty() => {
                engine.evicted(&r.evicted);
                tracing::info!(evicted = r.evicted.len(), bytes_freed = r.bytes_freed, "gc")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "gc failed"),
            _ => {}
        }
    }
}
