//! In-memory state of the cluster: hosts, tasks, peers and each task's peer graph.
//!
//! Locking: hosts and tasks are two `DashMap`s. A task entry's guard covers its peers and graph.
//! Code may read a host while holding a task guard, never the reverse, and never holds a guard
//! across an `.await`.

pub mod dag;
pub mod finished;
pub mod host;
pub mod peer;
pub mod peer_map;
pub mod task;

pub use dag::{Dag, DagError};
pub use finished::{FinishedCopy, Recorded};
pub use host::Host;
pub use peer::{InvalidTransition, Peer, PeerState};
pub use peer_map::PeerMap;
pub use task::{Task, TaskState};

use dashmap::DashMap;
use tokio::time::Instant;

/// All hosts and tasks known to this scheduler instance.
#[derive(Debug, Default)]
pub struct Resources {
    /// Hosts by id.
    pub hosts: DashMap<String, Host>,
    /// Tasks by id (each with its peers).
    pub tasks: DashMap<String, Task>,
}

impl Resources {
    /// Adds or refreshes a host.
    pub fn announce_host(&self, info: dragonfly_proto::Host, now: Instant) {
        self.announce_host_every(info, now, None);
    }

    /// Adds or refreshes a host that announces itself every `interval`: it is dropped after 3
    /// missed announces (or `hostTTL`, whichever comes first).
    pub fn announce_host_every(
        &self,
        info: dragonfly_proto::Host,
        now: Instant,
        interval: Option<std::time::Duration>,
    ) {
        let id = info.id.clone();
        let mut host = Host::new(info, now);
        host.expires_after = interval
            .filter(|d| !d.is_zero())
            .map(|d| d.saturating_mul(3));
        self.hosts.insert(id, host);
    }

    /// Whether `host_id` is a known seed peer host.
    pub fn is_seed_host(&self, host_id: &str) -> bool {
        self.hosts.get(host_id).is_some_and(|h| h.is_seed())
    }

    /// Removes a host and all of its peers; returns how many peers went.
    pub fn leave_host(&self, host_id: &str) -> usize {
        self.hosts.remove(host_id);
        self.remove_peers_where(|p| p.host_id == host_id)
    }

    /// Removes the peers of `task_id` on `host_id`; returns how many went.
    pub fn delete_task_on_host(&self, task_id: &str, host_id: &str) -> usize {
        let Some(mut task) = self.tasks.get_mut(task_id) else {
            return 0;
        };
        remove_from_task(&mut task, |p| p.host_id == host_id)
    }

    /// Removes one peer; returns whether it existed.
    pub fn leave_peer(&self, task_id: &str, peer_id: &str) -> bool {
        self.tasks
            .get_mut(task_id)
            .is_some_and(|mut t| t.remove_peer(peer_id).is_some())
    }

    /// Removes, in every task, the peers matching `pred`.
    pub fn remove_peers_where(&self, pred: impl Fn(&Peer) -> bool) -> usize {
        let mut removed = 0;
        for mut task in self.tasks.iter_mut() {
            removed += remove_from_task(&mut task, &pred);
        }
        removed
    }

    /// Number of peers over all tasks.
    pub fn peer_count(&self) -> usize {
        self.tasks.iter().map(|t| t.peers.len()).sum()
    }
}

fn remove_from_task(task: &mut Task, pred: impl Fn(&Peer) -> bool) -> usize {
    let ids: Vec<String> = task
        .peers
        .values()
        .filter(|p| pred(p))
        .map(|p| p.id.clone())
        .collect();
    for id in &ids {
        task.remove_peer(id);
    }
    ids.len()
}
