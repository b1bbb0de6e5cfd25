//! The daemon process: storage, task engine, upload server, local download socket, GC.

pub mod cli;
mod deliver;
pub mod download_service;
pub use dragonfly_common::logging;
pub mod output;
pub mod setup;

use crate::config::DfdaemonConfig;
use crate::scheduling::{SchedulerOptions, Schedulers};
use crate::storage::{GcPolicy, Storage};
use crate::task::{EngineOptions, Parent, TaskManager};
use crate::upload::{self, UploadLimits};
use download_service::DownloadService;
use dragonfly_proto::DfdaemonDownloadServer;
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
}

/// The GC policy the config asks for.
pub fn gc_policy(cfg: &DfdaemonConfig) -> GcPolicy {
    let s = &cfg.storage;
    GcPolicy {
        task_ttl: s.task_expire_time.get(),
        quota_bytes: (!s.disk_gc_threshold.is_zero()).then(|| s.disk_gc_threshold.as_u64()),
        disk_used_percent: (!s.disk_gc_threshold_percent.is_zero())
            .then(|| s.disk_gc_threshold_percent.get()),
    }
}

/// The download rate limits the config asks for (`0`: no limit).
pub fn download_limits(cfg: &DfdaemonConfig) -> crate::rate::DownloadLimits {
    let d = &cfg.download;
    crate::rate::DownloadLimits::new(
        Some(d.total_rate_limit.as_u64()),
        Some(d.per_peer_rate_limit.as_u64()),
    )
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
}

/// The ports this daemon listens on (or will: metrics), which its proxy never connects to.
fn own_ports(
    cfg: &DfdaemonConfig,
    upload: SocketAddr,
    proxy: SocketAddr,
) -> Vec<crate::proxy::OwnPort> {
    use crate::proxy::OwnPort;
    let mut own = vec![
        OwnPort {
            port: proxy.port(),
            key: "proxy.tcpListen.port",
        },
        OwnPort {
            port: upload.port(),
            key: "upload.tcpListen.port",
        },
    ];
    if cfg.metrics.enable {
        // A range is tried in order; its first ports are where the server ends up.
        own.extend(
            cfg.metrics
                .tcp_listen
                .port
                .ports()
                .take(16)
                .map(|port| OwnPort {
                    port,
                    key: "metrics.tcpListen.port",
                }),
        );
    }
    own
}

/// Static parents from `download.parents` (`host:port` of their upload servers).
fn static_parents(cfg: &DfdaemonConfig) -> Result<Vec<Parent>, DaemonError> {
    cfg.download
        .parents
        .iter()
        .map(|raw| {
            raw.parse::<SocketAddr>()
                .map(|addr| Parent {
                    id: raw.clone(),
                    addr,
                })
                .map_err(|e| DaemonError::Config {
                    key: "download.parents",
                    reason: format!("{raw:?} is not an ip:port address: {e}"),
                })
        })
        .collect()
}

/// Bind the first port of `ports` on `ip` that is free.
async fn bind_tcp(
    what: &'static str,
    ip: std::net::IpAddr,
    ports: &dragonfly_common::config::PortRange,
) -> Result<(tokio::net::TcpListener, SocketAddr), DaemonError> {
    let mut last_err = String::new();
    for port in ports.ports() {
        match tokio::net::TcpListener::bind((ip, port)).await {
            Ok(l) => {
                let addr = l.local_addr().map_err(|e| DaemonError::Listen {
                    what,
                    addr: format!("{ip}:{port}"),
                    reason: e.to_string(),
                })?;
                return Ok((l, addr));
            }
            Err(e) => last_err = format!("{ip}:{port}: {e}"),
        }
    }
    Err(DaemonError::Listen {
        what,
        addr: ip.to_string(),
        reason: last_err,
    })
}

/// The system's host name.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "dfdaemon".to_string())
}

/// `host:port` of each configured scheduler.
fn scheduler_addrs(cfg: &DfdaemonConfig) -> Result<Vec<String>, DaemonError> {
    cfg.scheduler
        .net_addrs
        .iter()
        .map(|a| {
            if a.kind == "tcp" {
                Ok(a.addr.clone())
            } else {
                Err(DaemonError::Config {
                    key: "scheduler.netAddrs",
                    reason: format!(
                        "{:?} is a {} address; only tcp schedulers are supported",
                        a.addr, a.kind
                    ),
                })
            }
        })
        .collect()
}

/// The IP other peers reach this node on: `host.advertiseIP`, else the upload server's bind
/// address when it is specific, else the local address of the route to the first scheduler,
/// else loopback.
fn advertise_ip(
    cfg: &DfdaemonConfig,
    upload: SocketAddr,
    schedulers: &[String],
) -> std::net::IpAddr {
    if let Some(ip) = cfg.host.advertise_ip {
        return ip;
    }
    if !upload.ip().is_unspecified() {
        return upload.ip();
    }
    for s in schedulers {
        use std::net::ToSocketAddrs;
        let Some(target) = s.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            continue;
        };
        let bind: SocketAddr = if target.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        if let Ok(sock) = std::net::UdpSocket::bind(bind)
            && sock.connect(target).is_ok()
            && let Ok(local) = sock.local_addr()
        {
            return local.ip();
        }
    }
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

/// Start the daemon; returns once everything is bound, with a future that runs it until
/// `shutdown` completes.
pub async fn start(
    cfg: DfdaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Bound, impl Future<Output = ()>), DaemonError> {
    let dir = cfg.data_dir.clone();
    let storage = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || Storage::open(&d))
            .await
            .map_err(|e| DaemonError::Storage {
                dir: dir.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| DaemonError::Storage {
                dir: dir.clone(),
                reason: dragonfly_common::error::chain(&e),
            })?
    };
    if cfg.metrics.enable {
        tracing::warn!(
            port = ?cfg.metrics.tcp_listen.port,
            "metrics.enable is set but nothing serves /metrics or /healthy yet; the key is accepted and has no effect"
        );
    }
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
    let policy = gc_policy(&cfg);

    // Upload server: the first port of the range that binds.
    let (upload_listener, upload_addr) = bind_tcp(
        "upload.tcpListen",
        cfg.upload.tcp_listen.listen,
        &cfg.upload.tcp_listen.port,
    )
    .await?;

    // Who this node is to the cluster, and its schedulers.
    let hostname = match &cfg.host.hostname {
        Some(h) if !h.is_empty() => h.clone(),
        _ => system_hostname(),
    };
    let scheduler_addrs = scheduler_addrs(&cfg)?;
    let ip = advertise_ip(&cfg, upload_addr, &scheduler_addrs);
    let host_id = format!(
        "{hostname}-{ip}-{}{}",
        upload_addr.port(),
        if cfg.seed_peer.enable { "-seed" } else { "" }
    );
    let upload_stats = std::sync::Arc::new(crate::upload::UploadStats::default());
    let schedulers = if scheduler_addrs.is_empty() {
        None
    } else {
        let host = dragonfly_proto::Host {
            id: host_id.clone(),
            r#type: if cfg.seed_peer.enable {
                dragonfly_proto::HostType::Seed
            } else {
                dragonfly_proto::HostType::Normal
            } as i32,
            hostname: hostname.clone(),
            ip: ip.to_string(),
            upload_port: u32::from(upload_addr.port()),
            idc: cfg.host.idc.clone(),
            location: cfg.host.location.clone(),
            max_upload_rate: cfg.upload.rate_limit.as_u64(),
            concurrent_upload_limit: cfg.upload.concurrent_limit,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        let opts = SchedulerOptions {
            addrs: scheduler_addrs.clone(),
            schedule_timeout: cfg.scheduler.schedule_timeout.get(),
            announce_interval: cfg
                .scheduler
                .announce_interval
                .get()
                .max(std::time::Duration::from_secs(1)),
            host,
            disable_auto_back_source: cfg.scheduler.disable_auto_back_source,
            upload_stats: upload_stats.clone(),
        };
        Some(Schedulers::new(opts).map_err(|reason| DaemonError::Config {
            key: "scheduler.netAddrs",
            reason,
        })?)
    };
    let opts = EngineOptions {
        host_id: host_id.clone(),
        concurrent_pieces: (cfg.download.concurrent_piece_count as usize).max(1),
        piece_timeout: cfg.download.piece_download_timeout.get(),
        gc: Some(policy.clone()),
        upload_stats,
        download_limits: download_limits(&cfg),
        ..EngineOptions::default()
    };
    let sessions = schedulers
        .clone()
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn crate::task::Sessions>);
    let engine =
        TaskManager::with_sessions(storage, opts, sessions).map_err(|e| DaemonError::Config {
            key: "download",
            reason: e.to_string(),
        })?;
    if let Some(s) = &schedulers {
        let accepted = s.announce_once().await;
        tracing::info!(host = %host_id, ip = %ip, seed = cfg.seed_peer.enable, schedulers = ?scheduler_addrs, accepted, "announced to schedulers");
        if accepted == 0 {
            tracing::warn!(schedulers = ?scheduler_addrs, "no scheduler answered; downloads go to the source until one does");
        }
    }

    // Local download socket for dfget.
    let socket = cfg.download.unix_listen.socket.clone();
    let listen_err = |e: std::io::Error| DaemonError::Listen {
        what: "download.unixListen.socket",
        addr: socket.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(listen_err)?;
    }
    if socket.exists() {
        // A socket left by a daemon that was killed; a live one would answer.
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Err(listen_err(std::io::Error::other(
                "another daemon is listening there",
            )));
        }
        std::fs::remove_file(&socket).map_err(listen_err)?;
    }
    let unix = tokio::net::UnixListener::bind(&socket).map_err(listen_err)?;

    let limits = UploadLimits {
        concurrent_total: if cfg.upload.concurrent_limit == 0 {
            usize::MAX >> 4
        } else {
            cfg.upload.concurrent_limit as usize
        },
        concurrent_per_peer: cfg.upload.per_peer_concurrent_limit.max(1) as usize,
        rate_limit: (!cfg.upload.rate_limit.is_zero()).then(|| cfg.upload.rate_limit.as_u64()),
        per_peer_rate_limit: (!cfg.upload.per_peer_rate_limit.is_zero())
            .then(|| cfg.upload.per_peer_rate_limit.as_u64()),
        ..UploadLimits::default()
    };
    let parents = static_parents(&cfg)?;
    let proxy = if cfg.proxy_enabled {
        let (listener, addr) = bind_tcp(
            "proxy.tcpListen",
            cfg.proxy.tcp_listen.listen,
            &cfg.proxy.tcp_listen.port,
        )
        .await?;
        let proxy = crate::proxy::Proxy::new(&cfg.proxy, engine.clone(), parents.clone(), {
            own_ports(&cfg, upload_addr, addr)
        })
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
    let gc_interval = cfg.gc_interval.get().max(std::time::Duration::from_secs(1));
    let keep_storage = cfg.keep_storage;
    let bound = Bound {
        upload: upload_addr,
        socket: socket.clone(),
        proxy: proxy.as_ref().map(|(_, _, a)| *a),
    };
    tracing::info!(upload = %upload_addr, socket = %socket.display(), proxy = ?bound.proxy, "dfdaemon ready");
    let run = async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let up = tokio::spawn(upload::serve_with(
            upload_listener,
            engine.clone(),
            limits,
            seed,
            stopped(stop_rx.clone()),
        ));
        let proxy_task =
            proxy.map(|(p, listener, _)| tokio::spawn(p.serve(listener, stopped(stop_rx.clone()))));
        let announcer = schedulers
            .clone()
            .map(|s| tokio::spawn(s.run_announcer(stopped(stop_rx.clone()))));
        // Tells the schedulers what this host holds after a restart or a move on the ring.
        let finished_sync = schedulers.clone().map(|s| {
            tokio::spawn(s.run_finished_sync(engine.storage().clone(), stopped(stop_rx.clone())))
        });
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DfdaemonDownloadServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(unix),
                    stopped(stop_rx.clone()),
                ),
        );
        let gc_engine = engine.clone();
        let gc = tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (e, p) = (gc_engine.clone(), policy.clone());
                let storage = gc_engine.storage().clone();
                match tokio::task::spawn_blocking(move || storage.gc(&p, &|id| e.in_use(id), 0))
                    .await
                {
                    Ok(Ok(r)) if !r.evicted.is_empty() => {
                        gc_engine.evicted(&r.evicted);
                        tracing::info!(evicted = r.evicted.len(), bytes_freed = r.bytes_freed, "gc")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "gc failed"),
                    _ => {}
                }
            }
        });
        shutdown.await;
        tracing::info!("dfdaemon shutting down");
        let _ = stop_tx.send(true);
        gc.abort();
        let _ = up.await;
        let _ = grpc.await;
        if let Some(p) = proxy_task {
            let _ = p.await;
        }
        if let Some(f) = finished_sync {
            let _ = f.await;
        }
        if let Some(a) = announcer {
            let _ = a.await; // leaves every scheduler
        }
        if !keep_storage {
            let storage = engine.storage().clone();
            let _ = tokio::task::spawn_blocking(move || clear_storage(&storage)).await;
        }
        let _ = std::fs::remove_file(&socket);
    };
    Ok((bound, run))
}
