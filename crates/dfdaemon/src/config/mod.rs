//! dfdaemon's config file (`/etc/dragonfly/dfget.yaml`), in Dragonfly's shape.
//!
//! Load it with [`DfdaemonConfig::load`], [`DfdaemonConfig::from_yaml`] or, for a command line,
//! [`load_for_cli`]. Loading folds Dragonfly's alternative spellings into one place:
//! top-level `registryMirror` / `proxies` / `hijackHTTPS` move under `proxy` (the nested ones win
//! when both are given), and `download.downloadGRPC.unixListen` moves to `download.unixListen`.

mod proxy;
mod sections;
mod shapes;

pub use proxy::{
    BasicAuth, DEFAULT_IDLE_TIMEOUT, DEFAULT_PER_CLIENT_CONNECTIONS, DEFAULT_PER_CLIENT_TUNNELS,
    DEFAULT_PROXY_RULE, DEFAULT_READ_HEADER_TIMEOUT, DEFAULT_REGISTRY_MIRROR, HijackHost,
    HijackHttps, ProxyConfig, ProxyRule, ProxySecurity, RegistryMirror, WhiteListEntry,
    default_proxy_rules,
};
pub use sections::{
    DEFAULT_METRICS_PORT, DEFAULT_PROXY_PORT, DEFAULT_UNIX_SOCKET, DEFAULT_UPLOAD_PORT,
    DownloadConfig, HostConfig, MetricsConfig, MetricsListen, NetAddr, OrasConfig, ProxyListen,
    SchedulerConfig, SeedPeerConfig, SeedPeerType, StorageConfig, UnixListen, UploadConfig,
    UploadListen,
};

pub use dragonfly_common::config::{ConfigError, ConfigOrigin, Loaded, LoadedFrom};

use dragonfly_common::config::{Duration, LoadOptions, looks_like_placeholder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where dfdaemon looks for its config when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dfget.yaml";
/// Read instead when [`DEFAULT_CONFIG_PATH`] does not exist (older Dragonfly installs).
pub const FALLBACK_CONFIG_PATH: &str = "/etc/dragonfly/dfdaemon.yaml";

/// `gracefulShutdownTimeout`: long enough for the piece sends and short streams in flight, short
/// enough that a stalled client cannot hold a rolling restart (a node's SIGTERM is answered
/// within 10 s, as before the drain, and well inside Kubernetes' default 30 s). Dragonfly's
/// daemon has no such key: it waits for its servers without a limit.
pub const DEFAULT_GRACEFUL_SHUTDOWN_SECS: u64 = 5;

/// Dragonfly options this implementation knows but does not use; they draw a warning that says
/// so rather than "unknown key".
const UNSUPPORTED_KEYS: &[&str] = &[
    "aliveTime",
    "announcer",
    "certSpec",
    "health",
    "jaeger",
    "network",
    "networkTopology",
    "objectStorage",
    "pluginDir",
    "pprof-port",
    "reload",
    "security",
    "download.calculateDigest",
    "download.concurrent",
    "download.downloadGRPC.security",
    "download.getPiecesMaxRetry",
    "download.peerGRPC",
    "download.recursiveConcurrent",
    "download.resourceClients",
    "download.splitRunningTasks",
    "download.transportOption",
    "download.watchdogTimeout",
    "host.netTopology",
    "host.securityDomain",
    "proxy.dumpHTTPContent",
    "proxy.extraRegistryMirrors",
    "proxy.hijackHTTPS.sni",
    "proxy.security.tlsConfig",
    "proxy.tcpListen.namespace",
    "hijackHTTPS.sni",
    "upload.security",
    "upload.tcpListen.namespace",
];

/// The whole dfdaemon config. Every section has defaults; an empty file is a valid config.
///
/// Build it with [`DfdaemonConfig::from_yaml`] or [`DfdaemonConfig::load`]: deserializing it
/// directly skips the folding of Dragonfly's alternative spellings and the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DfdaemonConfig {
    /// How often garbage collection runs.
    pub gc_interval: Duration,
    /// Dragonfly's base directory (accepted; every directory below is set on its own).
    pub work_home: PathBuf,
    /// Log directory; the daemon writes `core.log` here.
    pub log_dir: PathBuf,
    /// Task data and metadata.
    pub data_dir: PathBuf,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Keep task data on exit (otherwise it is removed on a clean shutdown).
    pub keep_storage: bool,
    /// On SIGTERM/SIGINT, how long piece sends, proxied streams and local downloads in flight
    /// may take to finish before they are cut (the servers stop accepting at once).
    pub graceful_shutdown_timeout: Duration,
    /// Log to the console too.
    pub console: bool,
    /// Debug logging.
    pub verbose: bool,
    /// How this node describes itself.
    pub host: HostConfig,
    /// Where the schedulers are.
    pub scheduler: SchedulerConfig,
    /// Seed peer mode.
    pub seed_peer: SeedPeerConfig,
    /// Local API and download behaviour.
    pub download: DownloadConfig,
    /// Upload server for other peers.
    pub upload: UploadConfig,
    /// Disk storage and its garbage collection.
    pub storage: StorageConfig,
    /// HTTP(S) proxy and registry mirror, with the effective `registryMirror`, `proxies` and
    /// `hijackHTTPS` whichever shape the file used.
    pub proxy: ProxyConfig,
    /// HTTP client for `oras://` sources.
    pub oras: OrasConfig,
    /// Metrics and health endpoints.
    pub metrics: MetricsConfig,
    /// Whether the proxy runs: the file has a `proxy` section (or the top-level
    /// `registryMirror` / `proxies` / `hijackHTTPS`), or no file was loaded (the built-in
    /// defaults, like Dragonfly's default `dfget.yaml`, include the proxy on 65001).
    #[serde(skip)]
    pub proxy_enabled: bool,
}

impl Default for DfdaemonConfig {
    fn default() -> Self {
        DfdaemonConfig {
            gc_interval: Duration::from_mins(1),
            work_home: PathBuf::from("/usr/local/dragonfly"),
            log_dir: PathBuf::from("/var/log/dragonfly/daemon"),
            data_dir: PathBuf::from("/var/lib/dragonfly"),
            cache_dir: PathBuf::from("/var/cache/dragonfly"),
            keep_storage: true,
            graceful_shutdown_timeout: Duration::from_secs(DEFAULT_GRACEFUL_SHUTDOWN_SECS),
            console: false,
            verbose: false,
            host: HostConfig::default(),
            scheduler: SchedulerConfig::default(),
            seed_peer: SeedPeerConfig::default(),
            download: DownloadConfig::default(),
            upload: UploadConfig::default(),
            storage: StorageConfig::default(),
            proxy: ProxyConfig::default(),
            oras: OrasConfig::default(),
            metrics: MetricsConfig::default(),
            proxy_enabled: true,
        }
    }
}

impl DfdaemonConfig {
    /// Reads and loads the file at `path`.
    pub fn load(path: &Path) -> Result<Loaded<Self>, ConfigError> {
        let text = dragonfly_common::config::read_config_file(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Loads YAML `text`; `source` names it in warnings and errors (usually the path).
    pub fn from_yaml(text: &str, source: &str) -> Result<Loaded<Self>, ConfigError> {
        let options = LoadOptions {
            unsupported: UNSUPPORTED_KEYS,
            handled_elsewhere: shapes::ALTERNATIVE_KEYS,
            report_only_under: &[],
        };
        let Loaded {
            value: mut config,
            mut warnings,
        } = dragonfly_common::config::load_yaml_with::<Self>(text, source, &options)?;
        let origins =
            shapes::fold_alternatives(&mut config, text, source, UNSUPPORTED_KEYS, &mut warnings)?;
        config.proxy_enabled = has_proxy_section(text);
        config.tidy();
        config.check_placeholders(&origins, source, &mut warnings);
        config.validate(source)?;
        Ok(Loaded {
            value: config,
            warnings,
        })
    }

    /// The effective config as YAML (after normalization, with every default filled in).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let err = |e: yaml_serde::Error| ConfigError::Serialize {
            message: e.to_string(),
        };
        if self.proxy_enabled {
            return yaml_serde::to_string(self).map_err(err);
        }
        // No proxy section in, none out: printing must not turn the proxy on.
        let mut value = yaml_serde::to_value(self).map_err(err)?;
        if let yaml_serde::Value::Mapping(m) = &mut value {
            m.remove("proxy");
        }
        yaml_serde::to_string(&value).map_err(err)
    }

    /// Empty strings that Dragonfly's configs use for "unset" become our defaults.
    fn tidy(&mut self) {
        if self.download.unix_listen.socket.as_os_str().is_empty() {
            self.download.unix_listen = UnixListen::default();
        }
        if self
            .oras
            .proxy
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            self.oras.proxy = None;
        }
    }

    /// Warns about values that load but cannot work as written, such as the docs' placeholders.
    fn check_placeholders(
        &self,
        origins: &shapes::Origins,
        source: &str,
        warnings: &mut Vec<String>,
    ) {
        let url = &self.proxy.registry_mirror.url;
        if !is_http_url(url) {
            warnings.push(format!(
                "{}.url in {source}: {url:?} is not a URL; the registry mirror cannot be used until it is set (e.g. {DEFAULT_REGISTRY_MIRROR})",
                origins.registry_mirror
            ));
        }
        for (i, rule) in self.proxy.proxies.iter().enumerate() {
            if rule.regx.is_placeholder() {
                warnings.push(placeholder_warning(
                    &format!("{}[{i}].regx", origins.proxies),
                    rule.regx.as_str(),
                    source,
                ));
            }
        }
        if let Some(hijack) = &self.proxy.hijack_https {
            for (i, host) in hijack.hosts.iter().enumerate() {
                if host.regx.is_placeholder() {
                    warnings.push(placeholder_warning(
                        &format!("{}.hosts[{i}].regx", origins.hijack_https),
                        host.regx.as_str(),
                        source,
                    ));
                }
            }
        }
        for (i, addr) in self.scheduler.net_addrs.iter().enumerate() {
            if looks_like_placeholder(&addr.addr) {
                warnings.push(placeholder_warning(
                    &format!("scheduler.netAddrs[{i}]"),
                    &addr.addr,
                    source,
                ));
            }
        }
    }

    /// Checks that need more than one value or a rule serde cannot express.
    fn validate(&self, source: &str) -> Result<(), ConfigError> {
        if self.download.concurrent_piece_count == 0 {
            return Err(ConfigError::invalid(
                source,
                "download.concurrentPieceCount",
                "0 is not a piece count (1 or more)",
            ));
        }
        Ok(())
    }
}

/// Whether a config file configures the proxy (in either of Dragonfly's shapes).
fn has_proxy_section(text: &str) -> bool {
    match yaml_serde::from_str::<yaml_serde::Value>(text) {
        Ok(yaml_serde::Value::Mapping(m)) => ["proxy", "registryMirror", "proxies", "hijackHTTPS"]
            .iter()
            .any(|k| m.contains_key(*k)),
        _ => false,
    }
}

fn placeholder_warning(key: &str, value: &str, source: &str) -> String {
    format!(
        "{key} in {source}: {value:?} looks like a placeholder from the docs; replace it with your registry's host name"
    )
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// The command-line flow shared by `dfdaemon` and `dfget daemon`: `path` (from `--config`) must
/// exist; without it, [`DEFAULT_CONFIG_PATH`] then [`FALLBACK_CONFIG_PATH`] are tried, and when
/// neither exists the daemon runs on defaults (`origin` says so, for the caller to log).
pub fn load_for_cli(path: Option<&Path>) -> Result<LoadedFrom<DfdaemonConfig>, ConfigError> {
    dragonfly_common::config::load_for_cli(
        path,
        &[
            Path::new(DEFAULT_CONFIG_PATH),
            Path::new(FALLBACK_CONFIG_PATH),
        ],
        DfdaemonConfig::from_yaml,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let loaded = DfdaemonConfig::from_yaml("# nothing here\n", "t.yaml");
        // A file without a proxy section runs no proxy; everything else is the defaults.
        let expected = DfdaemonConfig {
            proxy_enabled: false,
            ..DfdaemonConfig::default()
        };
        assert!(loaded.is_ok_and(|l| l.value == expected && l.warnings.is_empty()));
        let with_proxy = DfdaemonConfig::from_yaml("proxies: [{regx: blobs}]\n", "t.yaml");
        assert!(with_proxy.is_ok_and(|l| l.value.proxy_enabled));
    }

    #[test]
    fn default_proxy_rule_is_blobs() {
        let config = DfdaemonConfig::default();
        let rules: Vec<&str> = config
            .proxy
            .proxies
            .iter()
            .map(|r| r.regx.as_str())
            .collect();
        assert_eq!(rules, vec![DEFAULT_PROXY_RULE]);
    }

    #[test]
    fn nested_wins_over_top_level() {
        let yaml = "registryMirror: {url: https://a.example}\nproxy:\n  registryMirror: {url: https://b.example}\n";
        let loaded = DfdaemonConfig::from_yaml(yaml, "t.yaml").map_err(|e| e.to_string());
        let Ok(loaded) = loaded else {
            panic!("{loaded:?}");
        };
        assert_eq!(loaded.value.proxy.registry_mirror.url, "https://b.example");
        assert_eq!(
            loaded.warnings,
            vec![
                "top-level key \"registryMirror\" in t.yaml is ignored because \"proxy.registryMirror\" is also set"
            ]
        );
    }

    #[test]
    fn download_grpc_socket_is_folded() {
        let yaml = "download:\n  downloadGRPC:\n    unixListen:\n      socket: /tmp/d.sock\n";
        let loaded = DfdaemonConfig::from_yaml(yaml, "t.yaml").map_err(|e| e.to_string());
        assert_eq!(
            loaded.map(|l| l.value.download.unix_listen.socket),
            Ok(PathBuf::from("/tmp/d.sock"))
        );
    }
}
