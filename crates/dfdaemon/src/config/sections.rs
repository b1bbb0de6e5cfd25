//! The dfdaemon config sections other than `proxy`: one struct per section, defaults in its
//! `Default` impl.

use dragonfly_common::config::{Duration, Percent, PortRange, Size, ip};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Default proxy / registry mirror port.
pub const DEFAULT_PROXY_PORT: u16 = 65001;
/// Default upload port (piece data and peer gRPC).
pub const DEFAULT_UPLOAD_PORT: u16 = 65002;
/// Default metrics and health port.
pub const DEFAULT_METRICS_PORT: u16 = 65003;
/// Default unix socket of the local gRPC API that dfget talks to.
pub const DEFAULT_UNIX_SOCKET: &str = "/var/run/dragonfly/dfdaemon.sock";

/// Defines a `tcpListen: {listen, port}` struct whose port defaults to `$port` (serde derives do
/// not support const generics, so each section gets its own type).
macro_rules! tcp_listen {
    ($(#[$doc:meta])* $name:ident, $port:expr) => {
        $(#[$doc])*
        ///
        /// `port` may also be Dragonfly's range `{start, end}` (ports tried in order).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, rename_all = "camelCase")]
        pub struct $name {
            /// Address to bind.
            #[serde(with = "ip")]
            pub listen: IpAddr,
            /// Port, or ports to try in order.
            pub port: PortRange,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    port: PortRange::default_port($port),
                }
            }
        }
    };
}

tcp_listen!(
    /// `proxy.tcpListen`: default `0.0.0.0:65001`.
    ProxyListen,
    DEFAULT_PROXY_PORT
);
tcp_listen!(
    /// `upload.tcpListen`: default `0.0.0.0:65002`.
    UploadListen,
    DEFAULT_UPLOAD_PORT
);
tcp_listen!(
    /// `metrics.tcpListen`: default `0.0.0.0:65003`.
    MetricsListen,
    DEFAULT_METRICS_PORT
);

/// `host`: how this node describes itself to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HostConfig {
    /// Host name announced to the scheduler; null means the system host name.
    pub hostname: Option<String>,
    /// IP announced to peers; null means the address of the default route's interface.
    #[serde(rename = "advertiseIP", with = "ip::option")]
    pub advertise_ip: Option<IpAddr>,
    /// IP the peer-facing servers bind.
    #[serde(rename = "listenIP", with = "ip")]
    pub listen_ip: IpAddr,
    /// Data center, for the scheduler's IDC affinity.
    pub idc: String,
    /// Location such as `country|province|city`, for the scheduler's location affinity.
    pub location: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            hostname: None,
            advertise_ip: None,
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            idc: String::new(),
            location: String::new(),
        }
    }
}

/// `scheduler`: where the schedulers are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// Scheduler addresses; a task picks one by consistent hash. Empty: no scheduler, every
    /// download goes to the source.
    pub net_addrs: Vec<NetAddr>,
    /// How long to wait for the scheduler's first answer before going back to source.
    pub schedule_timeout: Duration,
    /// How often this host announces itself to every scheduler.
    pub announce_interval: Duration,
    /// Fail instead of going back to source when the scheduler cannot be reached.
    pub disable_auto_back_source: bool,
    /// Dragonfly's manager settings, accepted and kept as written (not used yet).
    pub manager: Option<yaml_serde::Value>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            net_addrs: Vec::new(),
            schedule_timeout: Duration::from_secs(30),
            announce_interval: Duration::from_secs(30),
            disable_auto_back_source: false,
            manager: None,
        }
    }
}

/// One scheduler address: Dragonfly's `{type: tcp, addr: host:port}` or a plain `"host:port"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetAddr {
    /// `tcp` (default) or `unix`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `host:port` for tcp, a socket path for unix.
    pub addr: String,
}

#[derive(Deserialize)]
struct NetAddrForm {
    #[serde(rename = "type", default = "tcp")]
    kind: String,
    addr: String,
}

fn tcp() -> String {
    "tcp".to_owned()
}

impl NetAddr {
    fn checked<E: de::Error>(kind: String, addr: String) -> Result<Self, E> {
        if kind == "tcp" {
            let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<dragonfly_common::config::Port>().is_ok()
            });
            if !port_ok {
                return Err(E::custom(format!(
                    "{addr:?} is not a scheduler address (host:port, e.g. scheduler.dragonfly:8002)"
                )));
            }
        } else if kind != "unix" {
            return Err(E::custom(format!(
                "{kind:?} is not an address type (tcp or unix)"
            )));
        }
        Ok(NetAddr { kind, addr })
    }
}

impl<'de> Deserialize<'de> for NetAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NetAddrVisitor;

        impl<'de> Visitor<'de> for NetAddrVisitor {
            type Value = NetAddr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scheduler address (\"host:port\" or {type, addr})")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<NetAddr, E> {
                NetAddr::checked(tcp(), v.trim().to_owned())
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NetAddr, A::Error> {
                let form = NetAddrForm::deserialize(MapAccessDeserializer::new(map))?;
                NetAddr::checked(form.kind, form.addr)
            }
        }

        deserializer.deserialize_any(NetAddrVisitor)
    }
}

/// `seedPeer`: whether this daemon is a seed peer (downloads from the source first for others).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SeedPeerConfig {
    /// Run as a seed peer.
    pub enable: bool,
    /// Seed peer type (Dragonfly's `super`, `strong`, `weak`).
    #[serde(rename = "type")]
    pub kind: SeedPeerType,
    /// Seed peer cluster the scheduler puts this peer in.
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
}

impl Default for SeedPeerConfig {
    fn default() -> Self {
        SeedPeerConfig {
            enable: false,
            kind: SeedPeerType::Super,
            cluster_id: 1,
        }
    }
}

/// Dragonfly's seed peer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedPeerType {
    /// Downloads from the source and serves everyone (the default).
    Super,
    /// Serves peers; preferred over normal peers.
    Strong,
    /// Serves peers; used like a normal peer.
    Weak,
}

/// `download`: the local API and how this node downloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadConfig {
    /// Unix socket of the local gRPC API (dfget talks to it).
    /// (Dragonfly's `download.downloadGRPC.unixListen` is read into this when the config loads.)
    pub unix_listen: UnixListen,
    /// Download bandwidth cap for all tasks together, per second; 0 means no cap.
    pub total_rate_limit: Size,
    /// Download bandwidth cap per task, per second; 0 means no cap.
    pub per_peer_rate_limit: Size,
    /// Give up on a piece from one parent after this long and try another.
    pub piece_download_timeout: Duration,
    /// Pieces downloaded at once per task (1 or more).
    pub concurrent_piece_count: u32,
    /// On a ranged request, also download the whole task in the background.
    pub prefetch: bool,
    /// Static parents (`ip:port` of other daemons' upload servers) tried before the source,
    /// for clusters without a scheduler.
    pub parents: Vec<String>,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            unix_listen: UnixListen::default(),
            total_rate_limit: Size::ZERO,
            per_peer_rate_limit: Size::ZERO,
            piece_download_timeout: Duration::from_secs(30),
            concurrent_piece_count: 16,
            prefetch: false,
            parents: Vec::new(),
        }
    }
}

/// `unixListen: {socket: ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UnixListen {
    /// Socket path; an empty string means the default.
    pub socket: PathBuf,
}

impl Default for UnixListen {
    fn default() -> Self {
        UnixListen {
            socket: PathBuf::from(DEFAULT_UNIX_SOCKET),
        }
    }
}

/// `upload`: the server other peers fetch pieces from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UploadConfig {
    /// Upload bandwidth cap, per second; 0 means no cap.
    pub rate_limit: Size,
    /// Where the upload server listens.
    pub tcp_listen: UploadListen,
    /// Piece requests served at once; 0 means no limit.
    pub concurrent_limit: u32,
    /// Upload bandwidth cap per child address, per second; 0 means no cap.
    pub per_peer_rate_limit: Size,
    /// Piece requests served at once to one child address (1 or more).
    pub per_peer_concurrent_limit: u32,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            rate_limit: Size::ZERO,
            tcp_listen: Default::default(),
            concurrent_limit: 100,
            per_peer_rate_limit: Size::ZERO,
            per_peer_concurrent_limit: 16,
        }
    }
}

/// `storage`: where tasks live on disk and when they are collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StorageConfig {
    /// A task not accessed for this long is deleted.
    pub task_expire_time: Duration,
    /// Dragonfly's storage strategy name, kept as given (`io.d7y.storage.v2.simple` or
    /// `io.d7y.storage.v2.advance.`); this implementation has one storage layout.
    pub strategy: String,
    /// When all tasks together exceed this, the least recently used are deleted; 0 means no quota.
    #[serde(rename = "diskGCThreshold")]
    pub disk_gc_threshold: Size,
    /// When the disk is fuller than this percentage, the least recently used tasks are deleted;
    /// 0 means off.
    #[serde(rename = "diskGCThresholdPercent")]
    pub disk_gc_threshold_percent: Percent,
    /// Hard-link finished tasks to the output path (same filesystem) instead of copying.
    pub multiplex: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            task_expire_time: Duration::from_hours(6),
            strategy: "io.d7y.storage.v2.simple".to_owned(),
            disk_gc_threshold: Size::ZERO,
            disk_gc_threshold_percent: Percent::default_value(95.0),
            multiplex: false,
        }
    }
}

/// `oras`: the HTTP client for `oras://` sources (Go `http.Transport` knobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OrasConfig {
    /// Proxy URL for registry requests; null means none.
    pub proxy: Option<String>,
    /// TCP connect timeout.
    pub dial_timeout: Duration,
    /// TCP keep-alive interval.
    pub keep_alive: Duration,
    /// Idle connections kept in the pool.
    pub max_idle_conns: u32,
    /// An idle pooled connection is closed after this long.
    pub idle_conn_timeout: Duration,
    /// Wait this long for response headers.
    pub response_header_timeout: Duration,
    /// TLS handshake timeout.
    pub tls_handshake_timeout: Duration,
    /// Wait this long for `100 Continue`.
    pub expect_continue_timeout: Duration,
    /// Skip TLS certificate verification of the registry.
    pub insecure_skip_verify: bool,
}

impl Default for OrasConfig {
    fn default() -> Self {
        OrasConfig {
            proxy: None,
            dial_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            max_idle_conns: 100,
            idle_conn_timeout: Duration::from_secs(90),
            response_header_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            expect_continue_timeout: Duration::from_secs(1),
            insecure_skip_verify: false,
        }
    }
}

/// `metrics`: Prometheus `/metrics` and `/healthy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Serve metrics and health.
    pub enable: bool,
    /// Where to listen.
    pub tcp_listen: MetricsListen,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enable: true,
            tcp_listen: Default::default(),
        }
    }
}
