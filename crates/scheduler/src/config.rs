//! The scheduler's config file (`/etc/dragonfly/scheduler.yaml`), in Dragonfly's shape.
//!
//! Load it with [`SchedulerConfig::load`], [`SchedulerConfig::from_yaml`] or, for a command
//! line, [`load_for_cli`]. Unknown keys are warnings; bad values are errors naming the key and
//! the value (`scheduler.retryInterval: "5x" is not a duration (examples: 30s, 6h, 7d)`).

pub use dragonfly_common::config::{ConfigError, ConfigOrigin, Loaded, LoadedFrom};

use dragonfly_common::config::{Duration, ListenAddr, LoadOptions, Port, Weight, ip};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Where the scheduler looks for its config when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/scheduler.yaml";
/// Default gRPC port.
pub const DEFAULT_PORT: u16 = 8002;
/// Default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 8003;

/// Dragonfly scheduler options this implementation knows but does not use.
const UNSUPPORTED_KEYS: &[&str] = &[
    "database",
    "dynConfig",
    "host",
    "jaeger",
    "job",
    "networkTopology",
    "pprof-port",
    "storage",
    "trainer",
    "metrics.enableHost",
    "scheduler.gc.pieceDownloadTimeout",
    "scheduler.networkTopology",
    "seedPeer.taskDownloadTimeout",
    "server.advertisePort",
    "server.cacheDir",
    "server.pluginDir",
];

/// The whole scheduler config. Every section has defaults; an empty file is a valid config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// Where the gRPC server listens and where files go.
    pub server: ServerConfig,
    /// Scheduling limits, retries and garbage collection.
    pub scheduler: SchedulingConfig,
    /// How candidate parents are scored.
    pub evaluator: EvaluatorConfig,
    /// Seed peers.
    pub seed_peer: SeedPeerConfig,
    /// Metrics endpoint.
    pub metrics: MetricsConfig,
    /// Dragonfly's manager settings, accepted and kept as written (not used yet).
    pub manager: Option<yaml_serde::Value>,
    /// Dragonfly's security settings, accepted and kept as written (not used yet).
    pub security: Option<yaml_serde::Value>,
    /// Dragonfly's network settings, accepted and kept as written (not used yet).
    pub network: Option<yaml_serde::Value>,
    /// Log to the console too.
    pub console: bool,
    /// Debug logging.
    pub verbose: bool,
}

/// `server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// IP announced to peers; null means the address of the default route's interface.
    #[serde(rename = "advertiseIP", with = "ip::option")]
    pub advertise_ip: Option<IpAddr>,
    /// IP the gRPC server binds.
    #[serde(rename = "listenIP", with = "ip")]
    pub listen_ip: IpAddr,
    /// gRPC port.
    pub port: Port,
    /// Host name announced; null means the system host name.
    pub host: Option<String>,
    /// Dragonfly's base directory (accepted; the directories below are set on their own).
    pub work_home: PathBuf,
    /// Log directory; the scheduler writes `core.log` here.
    pub log_dir: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            advertise_ip: None,
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: Port::default_port(DEFAULT_PORT),
            host: None,
            work_home: PathBuf::from("/usr/local/dragonfly"),
            log_dir: PathBuf::from("/var/log/dragonfly/scheduler"),
            data_dir: PathBuf::from("/var/lib/dragonfly/scheduler"),
        }
    }
}

/// `scheduler`: limits and retries of parent selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulingConfig {
    /// Evaluator algorithm; `default` is the weighted score of [`EvaluatorWeights`].
    pub algorithm: String,
    /// Peers of one task allowed to download from the source at once.
    pub back_to_source_count: u32,
    /// Scheduling attempts after which a peer is told to go back to source.
    pub retry_back_to_source_limit: u32,
    /// Scheduling attempts after which scheduling fails.
    pub retry_limit: u32,
    /// Pause between scheduling attempts.
    pub retry_interval: Duration,
    /// Parents handed to a peer at most (1 or more).
    pub candidate_parent_limit: u32,
    /// Children one parent feeds at once at most, so a swarm grows as a tree rather than a star
    /// around the first holder (0: no limit). Past it, new peers get other parents, or wait for
    /// them; on the last attempt a busy parent is still better than the origin.
    pub child_limit: u32,
    /// Peers of the task sampled and filtered before scoring (at least `candidateParentLimit`).
    pub filter_parent_limit: u32,
    /// Finished peers of one task recorded from hosts' `AnnounceFinishedTasks` at most (peers that
    /// finish a download here count too), so memory is tasks x this, not hosts x tasks (0: none).
    pub held_peer_limit: u32,
    /// Garbage collection of peers, tasks and hosts.
    pub gc: GcConfig,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            algorithm: "default".to_owned(),
            back_to_source_count: 1,
            retry_back_to_source_limit: 5,
            retry_limit: 10,
            retry_interval: Duration::from_millis(200),
            candidate_parent_limit: 4,
            child_limit: 8,
            filter_parent_limit: 15,
            held_peer_limit: 16,
            gc: GcConfig::default(),
        }
    }
}

/// `scheduler.gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcConfig {
    /// How often peers are collected.
    #[serde(rename = "peerGCInterval")]
    pub peer_gc_interval: Duration,
    /// A peer not heard from for this long is removed.
    #[serde(rename = "peerTTL")]
    pub peer_ttl: Duration,
    /// How often tasks without peers are collected.
    #[serde(rename = "taskGCInterval")]
    pub task_gc_interval: Duration,
    /// How often hosts are collected.
    #[serde(rename = "hostGCInterval")]
    pub host_gc_interval: Duration,
    /// A host that has not announced itself for this long is removed.
    #[serde(rename = "hostTTL")]
    pub host_ttl: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            peer_gc_interval: Duration::from_secs(10),
            peer_ttl: Duration::from_hours(24),
            task_gc_interval: Duration::from_mins(30),
            host_gc_interval: Duration::from_mins(1),
            host_ttl: Duration::from_hours(1),
        }
    }
}

/// `evaluator`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EvaluatorConfig {
    /// Weights of the parent score; only their ratios matter.
    pub weights: EvaluatorWeights,
}

/// `evaluator.weights`: a candidate parent's score is the weighted sum of these factors, each
/// in 0..=1. The defaults are Dragonfly's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EvaluatorWeights {
    /// Share of the task the parent already has (finished pieces / total pieces).
    pub finished_pieces: Weight,
    /// The parent host's upload success rate.
    pub upload_success: Weight,
    /// The parent host's free upload slots (idle bandwidth).
    pub free_upload: Weight,
    /// Seed peers score higher (Dragonfly's host type weight).
    pub seed_peer: Weight,
    /// Same IDC as the child.
    pub idc_affinity: Weight,
    /// Length of the common prefix of the `|`-separated locations.
    pub location_affinity: Weight,
}

impl Default for EvaluatorWeights {
    fn default() -> Self {
        EvaluatorWeights {
            finished_pieces: Weight::default_value(0.2),
            upload_success: Weight::default_value(0.2),
            free_upload: Weight::default_value(0.15),
            seed_peer: Weight::default_value(0.15),
            idc_affinity: Weight::default_value(0.15),
            location_affinity: Weight::default_value(0.15),
        }
    }
}

impl EvaluatorWeights {
    fn sum(&self) -> f64 {
        [
            self.finished_pieces,
            self.upload_success,
            self.free_upload,
            self.seed_peer,
            self.idc_affinity,
            self.location_affinity,
        ]
        .iter()
        .map(|w| w.get())
        .sum()
    }
}

/// `seedPeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SeedPeerConfig {
    /// Ask a seed peer to fetch a task from the source when no peer has it.
    pub enable: bool,
}

impl Default for SeedPeerConfig {
    fn default() -> Self {
        SeedPeerConfig { enable: true }
    }
}

/// `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthy`.
    pub enable: bool,
    /// Listen address, `host:port` or `:port`.
    pub addr: ListenAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enable: true,
            addr: ListenAddr::default_addr("", DEFAULT_METRICS_PORT),
        }
    }
}

impl SchedulerConfig {
    /// Reads and loads the file at `path`.
    pub fn load(path: &Path) -> Result<Loaded<Self>, ConfigError> {
        let text = dragonfly_common::config::read_config_file(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Loads YAML `text`; `source` names it in warnings and errors (usually the path).
    pub fn from_yaml(text: &str, source: &str) -> Result<Loaded<Self>, ConfigError> {
        let options = LoadOptions {
            unsupported: UNSUPPORTED_KEYS,
            ..LoadOptions::default()
        };
        let loaded = dragonfly_common::config::load_yaml_with::<Self>(text, source, &options)?;
        loaded.value.validate(source)?;
        Ok(loaded)
    }

    /// The effective config as YAML, with every default filled in.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        yaml_serde::to_string(self).map_err(|e| ConfigError::Serialize {
            message: e.to_string(),
        })
    }

    fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let s = &self.scheduler;
        if s.candidate_parent_limit == 0 {
            return Err(ConfigError::invalid(
                source,
                "scheduler.candidateParentLimit",
                "0 is not a parent limit (1 or more)",
            ));
        }
        if s.filter_parent_limit < s.candidate_parent_limit {
            return Err(ConfigError::invalid(
                source,
                "scheduler.filterParentLimit",
                format!(
                    "{} is below scheduler.candidateParentLimit ({})",
                    s.filter_parent_limit, s.candidate_parent_limit
                ),
            ));
        }
        if self.evaluator.weights.sum() <= 0.0 {
            return Err(ConfigError::invalid(
                source,
                "evaluator.weights",
                "all weights are 0 (at least one must be above 0)",
            ));
        }
        Ok(())
    }
}

/// The command-line flow: `path` (from `--config`) must exist; without it
/// [`DEFAULT_CONFIG_PATH`] is read when it exists, else the defaults are used (`origin` says so).
pub fn load_for_cli(path: Option<&Path>) -> Result<LoadedFrom<SchedulerConfig>, ConfigError> {
    dragonfly_common::config::load_for_cli(
        path,
        &[Path::new(DEFAULT_CONFIG_PATH)],
        SchedulerConfig::from_yaml,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let loaded = SchedulerConfig::from_yaml("", "s.yaml");
        assert!(
            loaded.is_ok_and(|l| l.value == SchedulerConfig::default() && l.warnings.is_empty())
        );
    }

    #[test]
    fn default_weights_sum_to_one() {
        let sum = EvaluatorWeights::default().sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    }
}
