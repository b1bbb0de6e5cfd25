//! The daemon process: storage, task engine, upload server, local download socket, GC.

pub mod cli;
mod deliver;
pub mod download_service;
pub use dragonfly_common::logging;
mod listen;
mod observe;
mod options;
pub mod output;
pub mod setup;
mod supervise;

pub use listen::Listeners;

use crate::config::DfdaemonConfig;
use crate::scheduling::Schedulers;
use crate::storage::{GcPolicy, Storage};
use crate::task::TaskManager;
use crate::upload::{self, UploadLimits};
use download_service::DownloadService;
use options::{Identity, SchedulerAddrs, StaticParents};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Local storage would not open.
    #[error("cannot open storage in {dir}: {reason}")]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A listener would not bind.
    #[error("cannot listen on {what} {addr}: {reason}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// The address or socket path.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A config value does not work at run time.
    #[error("config {key}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// One of the daemon's servers or loops stopped on its own; the daemon stopped with it.
    #[error("the {server} stopped")]
    Server {
        /// Which one (e.g. `upload server (upload.tcpListen)`).
        server: &'static str,
        /// How it ended.
        #[source]
        source: ServerExit,
    },
}

/// How a server task of the daemon ended before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServerExit {
    /// It returned this error (e.g. its listener no longer accepts).
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// It panicked.
    #[error("it panicked: {0}")]
    Panicked(String),
    /// It returned without an error, though nothing asked it to stop.
    #[error("it returned before shutdown")]
    Returned,
    /// It was aborted (the daemon does that to its GC loop on shutdown).
    #[error("it was aborted")]
    Cancelled,
}

/// `keepStorage: false`: delete every stored task as the daemon exits cleanly (a crash leaves
/// them, and the next start recovers them as usual).
fn clear_storage(storage: &Storage) {
    let tasks = match storage.tasks() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "keepStorage is false but the stored tasks cannot be listed; they stay");
            return;
        }
    };
    let mut removed = 0usize;
    for t in &tasks {
        match storage.delete_task(&t.id) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(task = %t.id, error = %e, "keepStorage is false but this task cannot be deleted")
            }
        }
    }
    tracing::info!(
        removed,
        "keepStorage is false: stored tasks deleted on exit"
    );
}

/// Where the daemon's parts listen, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The upload server.
    pub upload: SocketAddr,
    /// The local download socket.
    pub socket: PathBuf,
    /// The proxy and registry mirror, when the config has a `proxy` section.
    pub proxy: Option<SocketAddr>,
    /// The metrics server (`/metrics`, `/healthy`), when `metrics.enable` is set.
    pub metrics: Option<SocketAddr>,
}

/// Start the daemon with listeners bound from the config; returns once everything is bound,
/// with a future that runs it until `shutdown` completes (then drains: `gracefulShutdownTimeout`) or
/// one of its servers fails (`Err` naming it).
pub async fn start(
    cfg: DfdaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Bound, impl Future<Output = Result<(), DaemonError>>), DaemonError> {
    start_with(cfg, Listeners::default(), shutdown).await
}

/// [`start`] on listeners the caller bound (each one not given is bound from the config).
pub async fn start_with(
    cfg: DfdaemonConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Bound, impl Future<Output = Result<(), DaemonError>>), DaemonError> {
    let storage = open_storage(&cfg).await?;
    let metrics_listener = match cfg.metrics.enable {
        true => Some(
            listen::tcp(
                listeners.metrics,
                "metrics.tcpListen",
                cfg.metrics.tcp_listen.listen,
                &cfg.metrics.tcp_listen.port,
            )
            .await?,
        ),
        false => None,
    };
    let (upload_listener, upload_addr) = listen::tcp(
        listeners.upload,
        "upload.tcpListen",
        cfg.upload.tcp_listen.listen,
        &cfg.upload.tcp_listen.port,
    )
    .await?;

    // Who this node is to the cluster, and its schedulers.
    let scheduler_addrs = SchedulerAddrs::try_from(&cfg.scheduler)?;
    let me = Identity::new(&cfg, upload_addr, &scheduler_addrs.0);
    let upload_stats = std::sync::Arc::new(crate::upload::UploadStats::default());
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    observe::collect(&metrics, &storage, upload_stats.clone());
    let schedulers = options::scheduler_options(
        &cfg,
        &scheduler_addrs,
        &me,
        upload_addr,
        upload_stats.clone(),
    )
    .map(Schedulers::new)
    .transpose()
    .map_err(|reason| DaemonError::Config {
        key: "scheduler.netAddrs",
        reason,
    })?;
    let mut opts = options::engine_options(&cfg, &me, upload_stats);
    opts.metrics = metrics.clone();
    let sessions = schedulers
        .clone()
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn crate::task::Sessions>);
    let engine =
        TaskManager::with_sessions(storage, opts, sessions).map_err(|e| DaemonError::Config {
            key: "download",
            reason: dragonfly_common::error::chain(&e),
        })?;
    if let Some(s) = &schedulers {
        let accepted = s.announce_once().await;
        tracing::info!(host = %me.host_id, ip = %me.ip, seed = cfg.seed_peer.enable, schedulers = ?scheduler_addrs.0, accepted, "announced to schedulers");
        if accepted == 0 {
            tracing::warn!(schedulers = ?scheduler_addrs.0, "no scheduler answered; downloads go to the source until one does");
        }
    }

    let (unix, socket) = listen::unix(listeners.socket, &cfg)?;
    let parents = StaticParents::try_from(&cfg.download)?.0;
    let proxy = if cfg.proxy_enabled {
        let (listener, addr) = listen::tcp(
            listeners.proxy,
            "proxy.tcpListen",
            cfg.proxy.tcp_listen.listen,
            &cfg.proxy.tcp_listen.port,
        )
        .await?;
        let own = options::own_ports(
            upload_addr,
            addr,
            metrics_listener.as_ref().map(|(_, a)| *a),
        );
        let proxy = crate::proxy::Proxy::new(&cfg.proxy, engine.clone(), parents.clone(), own)
            .map_err(|e| DaemonError::Config {
                key: "proxy",
                reason: dragonfly_common::error::chain(&e),
            })?;
        Some((std::sync::Arc::new(proxy), listener, addr))
    } else {
        None
    };
    let service = DownloadService::new(engine.clone(), cfg.storage.multiplex, parents.clone())
        .with_oras(&cfg.oras)
        .map_err(|e| DaemonError::Config {
            key: "oras",
            reason: dragonfly_common::error::chain(&e),
        })?;
    let seed = cfg.seed_peer.enable.then(|| {
        std::sync::Arc::new(DownloadService::new(engine.clone(), false, parents))
            as std::sync::Arc<dyn upload::SeedDownload>
    });
    let bound = Bound {
        upload: upload_addr,
        socket: socket.clone(),
        proxy: proxy.as_ref().map(|(_, _, a)| *a),
        metrics: metrics_listener.as_ref().map(|(_, a)| *a),
    };
    tracing::info!(upload = %upload_addr, socket = %socket.display(), proxy = ?bound.proxy, metrics = ?bound.metrics, "dfdaemon ready");
    let up = observe::Up::default();
    let metrics_server = metrics_listener.map(|(listener, _)| {
        let endpoints = observe::endpoints(metrics, engine.storage(), up.clone());
        (listener, endpoints)
    });
    let keep_storage = cfg.keep_storage;
    let parts = supervise::Parts {
        engine: engine.clone(),
        upload: upload_listener,
        upload_limits: UploadLimits::from(&cfg.upload),
        seed,
        proxy: proxy.map(|(p, l, _)| (p, l)),
        socket: unix,
        service,
        schedulers,
        gc_interval: cfg.gc_interval.get().max(std::time::Duration::from_secs(1)),
        gc_policy: GcPolicy::from(&cfg.storage),
        grace: cfg.graceful_shutdown_timeout.get(),
        metrics: metrics_server,
        up,
    };
    let run = async move {
        let result = supervise::run(parts, shutdown).await;
        if !keep_storage {
            let storage = engine.storage().clone();
            let _ = tokio::task::spawn_blocking(move || clear_storage(&storage)).await;
        }
        let _ = std::fs::remove_file(&socket);
        tracing::info!(ok = result.is_ok(), "dfdaemon stopped");
        result
    };
    Ok((bound, run))
}

/// Open the data directory's storage, and remove the temporary outputs a killed daemon left.
async fn open_storage(cfg: &DfdaemonConfig) -> Result<Storage, DaemonError> {
    let dir = cfg.data_dir.clone();
    let d = dir.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&d))
        .await
        .map_err(|e| DaemonError::Storage {
            dir: dir.clone(),
            reason: e.to_string(),
        })?
        .map_err(|e| DaemonError::Storage {
            dir: dir.clone(),
            reason: dragonfly_common::error::chain(&e),
        })?;
    let report = storage.recovery_report().clone();
    tracing::info!(dir = %dir.display(), ?report, "storage opened");
    // Storage holds the data dir's lock: no other daemon is writing these parts.
    let parts = storage.dir().join(output::PARTS_DIR);
    let removed = tokio::task::spawn_blocking(move || output::remove_recorded_parts(&parts))
        .await
        .unwrap_or_default();
    for path in removed {
        tracing::info!(path = %path.display(), "removed the temporary output file of a killed daemon");
    }
    Ok(storage)
}
