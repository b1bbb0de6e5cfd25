//! From the config's sections to the options of each part (storage GC, rate limits, upload
//! server, scheduler client, task engine), so that [`super::start`] only wires parts together.

use super::DaemonError;
use crate::config::{DfdaemonConfig, DownloadConfig, SchedulerConfig, StorageConfig, UploadConfig};
use crate::rate::DownloadLimits;
use crate::scheduling::SchedulerOptions;
use crate::stats::UploadStats;
use crate::storage::GcPolicy;
use crate::task::{EngineOptions, Parent};
use crate::upload::UploadLimits;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

impl From<&StorageConfig> for GcPolicy {
    fn from(s: &StorageConfig) -> Self {
        GcPolicy {
            task_ttl: s.task_expire_time.get(),
            quota_bytes: (!s.disk_gc_threshold.is_zero()).then(|| s.disk_gc_threshold.as_u64()),
            disk_used_percent: (!s.disk_gc_threshold_percent.is_zero())
                .then(|| s.disk_gc_threshold_percent.get()),
        }
    }
}

/// `0`: no limit.
impl From<&DownloadConfig> for DownloadLimits {
    fn from(d: &DownloadConfig) -> Self {
        DownloadLimits::new(
            Some(d.total_rate_limit.as_u64()),
            Some(d.per_peer_rate_limit.as_u64()),
        )
    }
}

impl From<&UploadConfig> for UploadLimits {
    fn from(u: &UploadConfig) -> Self {
        UploadLimits {
            concurrent_total: if u.concurrent_limit == 0 {
                usize::MAX >> 4
            } else {
                u.concurrent_limit as usize
            },
            concurrent_per_peer: u.per_peer_concurrent_limit.max(1) as usize,
            rate_limit: (!u.rate_limit.is_zero()).then(|| u.rate_limit.as_u64()),
            per_peer_rate_limit: (!u.per_peer_rate_limit.is_zero())
                .then(|| u.per_peer_rate_limit.as_u64()),
            ..UploadLimits::default()
        }
    }
}

/// `host:port` of each scheduler (`scheduler.netAddrs`; tcp only).
pub(super) struct SchedulerAddrs(pub(super) Vec<String>);

impl TryFrom<&SchedulerConfig> for SchedulerAddrs {
    type Error = DaemonError;

    fn try_from(s: &SchedulerConfig) -> Result<Self, DaemonError> {
        s.net_addrs
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
            .collect::<Result<_, _>>()
            .map(SchedulerAddrs)
    }
}

/// Static parents from `download.parents` (`host:port` of their upload servers).
pub(super) struct StaticParents(pub(super) Vec<Parent>);

impl TryFrom<&DownloadConfig> for StaticParents {
    type Error = DaemonError;

    fn try_from(d: &DownloadConfig) -> Result<Self, DaemonError> {
        d.parents
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
            .collect::<Result<_, _>>()
            .map(StaticParents)
    }
}

/// Who this node is to the cluster.
pub(super) struct Identity {
    pub(super) hostname: String,
    pub(super) ip: IpAddr,
    pub(super) host_id: String,
}

impl Identity {
    /// The node's name, advertised IP and host id, for an upload server on `upload`.
    pub(super) fn new(cfg: &DfdaemonConfig, upload: SocketAddr, schedulers: &[String]) -> Self {
        let hostname = match &cfg.host.hostname {
            Some(h) if !h.is_empty() => h.clone(),
            _ => system_hostname(),
        };
        let ip = advertise_ip(cfg, upload, schedulers);
        let host_id = format!(
            "{hostname}-{ip}-{}{}",
            upload.port(),
            if cfg.seed_peer.enable { "-seed" } else { "" }
        );
        Identity {
            hostname,
            ip,
            host_id,
        }
    }
}

/// The scheduler client's options (`None` without schedulers).
pub(super) fn scheduler_options(
    cfg: &DfdaemonConfig,
    addrs: &SchedulerAddrs,
    me: &Identity,
    upload: SocketAddr,
    upload_stats: Arc<UploadStats>,
) -> Option<SchedulerOptions> {
    if addrs.0.is_empty() {
        return None;
    }
    let host = dragonfly_proto::Host {
        id: me.host_id.clone(),
        r#type: if cfg.seed_peer.enable {
            dragonfly_proto::HostType::Seed
        } else {
            dragonfly_proto::HostType::Normal
        } as i32,
        hostname: me.hostname.clone(),
        ip: me.ip.to_string(),
        upload_port: u32::from(upload.port()),
        idc: cfg.host.idc.clone(),
        location: cfg.host.location.clone(),
        max_upload_rate: cfg.upload.rate_limit.as_u64(),
        concurrent_upload_limit: cfg.upload.concurrent_limit,
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    Some(SchedulerOptions {
        addrs: addrs.0.clone(),
        schedule_timeout: cfg.scheduler.schedule_timeout.get(),
        announce_interval: cfg
            .scheduler
            .announce_interval
            .get()
            .max(Duration::from_secs(1)),
        host,
        disable_auto_back_source: cfg.scheduler.disable_auto_back_source,
        upload_stats,
    })
}

/// The task engine's options.
pub(super) fn engine_options(
    cfg: &DfdaemonConfig,
    me: &Identity,
    upload_stats: Arc<UploadStats>,
) -> EngineOptions {
    EngineOptions {
        host_id: me.host_id.clone(),
        concurrent_pieces: (cfg.download.concurrent_piece_count as usize).max(1),
        piece_timeout: cfg.download.piece_download_timeout.get(),
        gc: Some(GcPolicy::from(&cfg.storage)),
        upload_stats,
        download_limits: DownloadLimits::from(&cfg.download),
        ..EngineOptions::default()
    }
}

/// The ports this daemon listens on, which its proxy never connects to.
pub(super) fn own_ports(
    upload: SocketAddr,
    proxy: SocketAddr,
    metrics: Option<SocketAddr>,
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
    if let Some(m) = metrics {
        own.push(OwnPort {
            port: m.port(),
            key: "metrics.tcpListen.port",
        });
    }
    own
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

/// The IP other peers reach this node on: `host.advertiseIP`, else the upload server's bind
/// address when it is specific, else the local address of the route to the first scheduler,
/// else loopback.
fn advertise_ip(cfg: &DfdaemonConfig, upload: SocketAddr, schedulers: &[String]) -> IpAddr {
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
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        if let Ok(sock) = std::net::UdpSocket::bind(bind)
            && sock.connect(target).is_ok()
            && let Ok(local) = sock.local_addr()
        {
            return local.ip();
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_limit_zero_means_unlimited_and_per_peer_at_least_one() {
        let cfg = UploadConfig {
            concurrent_limit: 0,
            per_peer_concurrent_limit: 0,
            ..UploadConfig::default()
        };
        let l = UploadLimits::from(&cfg);
        assert_eq!(l.concurrent_total, usize::MAX >> 4);
        assert_eq!(l.concurrent_per_peer, 1);
        assert_eq!(l.rate_limit, None);
    }

    #[test]
    fn a_parent_that_is_not_ip_port_is_named() {
        let cfg = DownloadConfig {
            parents: vec!["parent.example:65002".into()],
            ..DownloadConfig::default()
        };
        let err = StaticParents::try_from(&cfg).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("download.parents") && e.contains("parent.example")),
            "{err:?}"
        );
    }
}
