//! The `proxy` section: the HTTP(S) forward proxy and registry mirror on port 65001.
//!
//! Dragonfly's docs show `registryMirror`, `proxies` and `hijackHTTPS` both at the top level and
//! nested under `proxy:`; both load, and [`super::DfdaemonConfig`] folds the top-level ones in here.

use super::sections::ProxyListen;
use dragonfly_common::config::{Duration, Pattern, Port};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The P2P rule used when no `proxies` are configured: image layers go peer to peer.
pub const DEFAULT_PROXY_RULE: &str = "blobs/sha256.*";

/// Default upstream of the registry mirror.
pub const DEFAULT_REGISTRY_MIRROR: &str = "https://index.docker.io";

/// Default `proxy.readHeaderTimeout`: nginx's `client_header_timeout`.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `proxy.idleTimeout`: nginx's `keepalive_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default `proxy.perClientConnectionLimit`: containerd asks a mirror for at most a few layers
/// per pull at once (CRI `max_concurrent_downloads` is 3), so even many parallel pulls stay far
/// below it, while one address cannot hold more than a sliver of the raised open-files limit.
pub const DEFAULT_PER_CLIENT_CONNECTIONS: u32 = 256;
/// Default `proxy.perClientTunnelLimit`: a client pulls from a handful of registries at once.
pub const DEFAULT_PER_CLIENT_TUNNELS: u32 = 64;

/// `proxy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Where the proxy listens.
    pub tcp_listen: ProxyListen,
    /// TLS of the proxy's own listener.
    pub security: ProxySecurity,
    /// The registry mirror endpoint (containerd `hosts.toml`, docker `registry-mirrors`).
    pub registry_mirror: RegistryMirror,
    /// Which requests go peer to peer; the first matching rule decides.
    pub proxies: Vec<ProxyRule>,
    /// HTTPS hijacking (TLS interception) for listed hosts; null means CONNECT is tunnelled as is.
    #[serde(rename = "hijackHTTPS")]
    pub hijack_https: Option<HijackHttps>,
    /// Only these hosts may be proxied; empty means all.
    pub white_list: Vec<WhiteListEntry>,
    /// Requests handled at once; 0 means no limit.
    pub max_concurrency: u64,
    /// Query parameters left out of the task id (`&`-separated), e.g. signed-URL parameters.
    pub default_filter: String,
    /// Tag added to every task id (separates otherwise equal URLs).
    pub default_tag: String,
    /// Require these credentials from proxy clients; null means no authentication.
    pub basic_auth: Option<BasicAuth>,
    /// A request head must arrive whole within this long of its first byte, and a new
    /// connection must bring one within this long; 0 means no limit.
    pub read_header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long; 0 means
    /// no limit.
    pub idle_timeout: Duration,
    /// Connections open at once from one client address (an IPv6 client: its /64); 0 means no
    /// limit.
    pub per_client_connection_limit: u32,
    /// CONNECT tunnels open at once from one client address; 0 means no limit.
    pub per_client_tunnel_limit: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            tcp_listen: ProxyListen::default(),
            security: ProxySecurity::default(),
            registry_mirror: RegistryMirror::default(),
            proxies: default_proxy_rules(),
            hijack_https: None,
            white_list: Vec::new(),
            max_concurrency: 0,
            default_filter: "Expires&Signature".to_owned(),
            default_tag: String::new(),
            basic_auth: None,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            per_client_connection_limit: DEFAULT_PER_CLIENT_CONNECTIONS,
            per_client_tunnel_limit: DEFAULT_PER_CLIENT_TUNNELS,
        }
    }
}

/// `[{regx: blobs/sha256.*}]`.
pub fn default_proxy_rules() -> Vec<ProxyRule> {
    // The constant always compiles; `ok()` keeps defaults free of panics all the same.
    Pattern::new(DEFAULT_PROXY_RULE)
        .ok()
        .map(ProxyRule::new)
        .into_iter()
        .collect()
}

/// `proxy.security`: TLS of the proxy listener itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxySecurity {
    /// Listen with plain HTTP (Dragonfly's docs always set this; TLS needs `cert` and `key`).
    pub insecure: bool,
    /// CA bundle for client certificates.
    pub cacert: Option<PathBuf>,
    /// Listener certificate.
    pub cert: Option<PathBuf>,
    /// Listener private key.
    pub key: Option<PathBuf>,
    /// Require and verify client certificates.
    pub tls_verify: bool,
}

impl Default for ProxySecurity {
    fn default() -> Self {
        ProxySecurity {
            insecure: true,
            cacert: None,
            cert: None,
            key: None,
            tls_verify: false,
        }
    }
}

/// `registryMirror`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RegistryMirror {
    /// Take the upstream from the `X-Dragonfly-Registry` request header when present.
    pub dynamic: bool,
    /// Upstream registry (kept as written; a placeholder only draws a warning).
    pub url: String,
    /// Skip TLS verification of the upstream.
    pub insecure: bool,
    /// Extra CA certificates for the upstream.
    pub certs: Vec<PathBuf>,
    /// Fetch from the upstream directly, never peer to peer.
    pub direct: bool,
    /// Apply `proxies` rules to mirror requests instead of sending all blobs peer to peer.
    pub use_proxies: bool,
    /// Registries a dynamic mirror request (`X-Dragonfly-Registry`, `?ns=`) may go to; empty
    /// means any that `whiteList` and the reach rules let through. A listed host may be on a
    /// loopback or link-local address.
    pub allow: Vec<WhiteListEntry>,
}

impl Default for RegistryMirror {
    fn default() -> Self {
        RegistryMirror {
            dynamic: false,
            url: DEFAULT_REGISTRY_MIRROR.to_owned(),
            insecure: false,
            certs: Vec::new(),
            direct: false,
            use_proxies: false,
            allow: Vec::new(),
        }
    }
}

/// One entry of `proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRule {
    /// Requests whose URL matches go through this rule (`regex` is accepted too).
    #[serde(alias = "regex")]
    pub regx: Pattern,
    /// Rewrite `http` to `https` for matching requests.
    #[serde(rename = "useHTTPS", default)]
    pub use_https: bool,
    /// Pass matching requests straight through instead of peer to peer.
    #[serde(default)]
    pub direct: bool,
    /// Send matching requests to this host instead.
    #[serde(default)]
    pub redirect: Option<String>,
}

impl ProxyRule {
    /// A peer-to-peer rule for `regx`.
    pub fn new(regx: Pattern) -> Self {
        ProxyRule {
            regx,
            use_https: false,
            direct: false,
            redirect: None,
        }
    }
}

/// `hijackHTTPS`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HijackHttps {
    /// CA certificate that signs the per-host certificates; null means a generated CA.
    /// The path is not checked when the config loads.
    pub cert: Option<PathBuf>,
    /// The CA's private key.
    pub key: Option<PathBuf>,
    /// Hosts whose HTTPS is intercepted.
    pub hosts: Vec<HijackHost>,
}

/// One entry of `hijackHTTPS.hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HijackHost {
    /// Hosts (`host:port` of the CONNECT) that match are intercepted (`regex` is accepted too).
    #[serde(alias = "regex")]
    pub regx: Pattern,
    /// Skip TLS verification of the real host.
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificates for the real host.
    #[serde(default)]
    pub certs: Vec<PathBuf>,
}

/// One entry of `whiteList`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WhiteListEntry {
    /// Host name allowed.
    pub host: String,
    /// Or hosts matching this (`regex` is accepted too).
    #[serde(alias = "regex")]
    pub regx: Option<Pattern>,
    /// Ports allowed; empty means all.
    pub ports: Vec<Port>,
}

/// `basicAuth`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}
