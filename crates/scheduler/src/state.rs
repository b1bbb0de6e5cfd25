//! The scheduler's shared state: below the gRPC service, the GC and the server that run on it.

use crate::config::SchedulerConfig;
use crate::resource::Resources;
use crate::seed::{GrpcSeedTrigger, NoSeedTrigger, SeedTrigger};
use std::sync::Arc;

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
