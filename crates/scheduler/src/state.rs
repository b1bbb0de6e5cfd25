//! The scheduler's shared state: below the gRPC service, the GC and the server that run on it.

use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::resource::Resources;
use crate::seed::{GrpcSeedTrigger, NoSeedTrigger, SeedTrigger};
use dragonfly_common::metrics::{ConstValue, encode_const};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::sync::Arc;

/// Everything one scheduler instance knows, shared by the gRPC service and the GC.
pub struct SchedulerState {
    /// The effective config.
    pub config: SchedulerConfig,
    /// Hosts, tasks, peers (shared with the seed trigger, which records what a seed holds).
    pub resources: Arc<Resources>,
    /// How seed peers are asked to fetch a task.
    pub seed_trigger: Arc<dyn SeedTrigger>,
    /// The scheduler's metrics (`/metrics` on `metrics.addr`).
    pub metrics: Arc<Metrics>,
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
        let resources = Arc::new(Resources::default());
        let metrics = Arc::new(Metrics::new());
        metrics.register_collector(ResourceCollector(resources.clone()));
        SchedulerState {
            config,
            resources,
            seed_trigger,
            metrics,
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

/// The hosts, tasks and peers the scheduler knows, counted at scrape time.
struct ResourceCollector(Arc<Resources>);

impl std::fmt::Debug for ResourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ResourceCollector").finish()
    }
}

impl Collector for ResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.0;
        let gauge = |n: usize| ConstValue::Gauge(i64::try_from(n).unwrap_or(i64::MAX));
        let seeds = r.hosts.iter().filter(|h| h.is_seed()).count();
        let peers: usize = r.tasks.iter().map(|t| t.peers.len()).sum();
        encode_const(
            &mut encoder,
            "hosts",
            "Hosts (daemons) announced to this scheduler",
            gauge(r.hosts.len()),
        )?;
        encode_const(
            &mut encoder,
            "seed_hosts",
            "Seed peer hosts announced to this scheduler",
            gauge(seeds),
        )?;
        encode_const(
            &mut encoder,
            "tasks",
            "Tasks this scheduler knows",
            gauge(r.tasks.len()),
        )?;
        encode_const(
            &mut encoder,
            "peers",
            "Peers (a host's download of a task) this scheduler knows",
            gauge(peers),
        )
    }
}
