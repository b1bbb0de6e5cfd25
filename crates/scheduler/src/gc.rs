//! Garbage collection of peers, tasks and hosts, so memory stays flat however many come and go.
//!
//! Each collector takes `now` so tests can run them with any clock; [`run`] calls them on the
//! `scheduler.gc.*` intervals.

use crate::resource::Resources;
use crate::state::SchedulerState;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Drops peers not heard from for `ttl` (whatever their state: a silent peer is gone).
pub fn collect_peers(resources: &Resources, now: Instant, ttl: Duration) -> usize {
    let n = resources.remove_peers_where(|p| now.saturating_duration_since(p.updated_at) >= ttl);
    resources.tasks.shrink_to_fit();
    n
}

/// Drops tasks without peers.
pub fn collect_tasks(resources: &Resources) -> usize {
    let before = resources.tasks.len();
    resources.tasks.retain(|_, t| !t.peers.is_empty());
    resources.tasks.shrink_to_fit();
    before.saturating_sub(resources.tasks.len())
}

/// Drops hosts that have not announced themselves for `ttl` (or for 3 of the intervals they
/// announce themselves at, when shorter), with all of their peers.
pub fn collect_hosts(resources: &Resources, now: Instant, ttl: Duration) -> usize {
    let expired: Vec<String> = resources
        .hosts
        .iter()
        .filter(|h| h.expired(now, ttl))
        .map(|h| h.key().clone())
        .collect();
    for id in &expired {
        let peers = resources.leave_host(id);
        tracing::info!(host = %id, peers, "host expired");
    }
    resources.hosts.shrink_to_fit();
    expired.len()
}

/// Runs the three collectors on their intervals until `shutdown` completes.
pub async fn run(state: Arc<SchedulerState>, shutdown: impl Future<Output = ()>) {
    let gc = &state.config.scheduler.gc;
    let tick = |d: Duration| {
        let mut i = tokio::time::interval(d.max(Duration::from_millis(10)));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let (mut peers, mut tasks, mut hosts) = (
        tick(gc.peer_gc_interval.get()),
        tick(gc.task_gc_interval.get()),
        tick(gc.host_gc_interval.get()),
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = peers.tick() => {
                let n = collect_peers(&state.resources, Instant::now(), gc.peer_ttl.get());
                if n > 0 { tracing::info!(peers = n, "gc: peers collected"); }
            }
            _ = tasks.tick() => {
                let n = collect_tasks(&state.resources);
                if n > 0 { tracing::info!(tasks = n, "gc: tasks collected"); }
            }
            _ = hosts.tick() => {
                let n = collect_hosts(&state.resources, Instant::now(), gc.host_ttl.get());
                if n > 0 { tracing::info!(hosts = n, "gc: hosts collected"); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Peer, PeerState, Task};

    #[test]
    fn maps_shrink_back_after_thousands_of_peers() {
        let res = Resources::default();
        let t0 = Instant::now();
        for h in 0..100 {
            res.announce_host(
                dragonfly_proto::Host {
                    id: format!("h{h}"),
                    ..Default::default()
                },
                t0,
            );
        }
        for i in 0..5000u32 {
            let task_id = format!("t{}", i % 50);
            let mut task = res
                .tasks
                .entry(task_id.clone())
                .or_insert_with(|| Task::new(&task_id, "http://o/f", t0));
            let mut p = Peer::new(&format!("p{i}"), &task_id, &format!("h{}", i % 100), t0);
            let _ = p.transition(if i % 2 == 0 {
                PeerState::Succeeded
            } else {
                PeerState::Failed
            });
            let parent = format!("p{}", i.saturating_sub(50));
            task.peers.insert(p.id.clone(), p);
            if i >= 50 {
                let _ = task.dag.add_edge(&parent, &format!("p{i}"));
            }
        }
        assert_eq!(res.peer_count(), 5000);
        let ttl = Duration::from_secs(60);

        // Too early: nothing goes.
        assert_eq!(collect_peers(&res, t0 + Duration::from_secs(30), ttl), 0);
        assert_eq!(collect_tasks(&res), 0);

        // Hosts keep announcing; peers go idle.
        assert_eq!(collect_peers(&res, t0 + ttl, ttl), 5000);
        assert_eq!(collect_tasks(&res), 50);
        assert_eq!(res.peer_count(), 0);
        assert!(res.tasks.is_empty());
        assert_eq!(res.hosts.len(), 100);

        assert_eq!(
            collect_hosts(
                &res,
                t0 + Duration::from_secs(3600),
                Duration::from_secs(3600)
            ),
            100
        );
        assert!(res.hosts.is_empty());
    }

    #[test]
    fn expired_hosts_take_their_peers_and_graph_edges() {
        let res = Resources::default();
        let t0 = Instant::now();
        for h in ["a", "b"] {
            res.announce_host(
                dragonfly_proto::Host {
                    id: h.into(),
                    ..Default::default()
                },
                t0,
            );
        }
        let mut task = Task::new("t", "u", t0);
        task.peers
            .insert("pa".into(), Peer::new("pa", "t", "a", t0));
        task.peers
            .insert("pb".into(), Peer::new("pb", "t", "b", t0));
        assert!(task.dag.add_edge("pa", "pb").is_ok());
        res.tasks.insert("t".into(), task);
        // b announces again later; a stays silent.
        res.announce_host(
            dragonfly_proto::Host {
                id: "b".into(),
                ..Default::default()
            },
            t0 + Duration::from_secs(50),
        );
        assert_eq!(
            collect_hosts(&res, t0 + Duration::from_secs(60), Duration::from_secs(60)),
            1
        );
        let task = res.tasks.get("t");
        assert!(task.is_some_and(|t| t.peers.len() == 1 && t.dag.edge_count() == 0));
    }

    #[test]
    fn a_host_is_dropped_after_three_missed_announces() {
        let res = Resources::default();
        let t0 = Instant::now();
        let host = |id: &str| dragonfly_proto::Host {
            id: id.into(),
            ..Default::default()
        };
        let ttl = Duration::from_secs(3600);
        res.announce_host_every(host("every-10s"), t0, Some(Duration::from_secs(10)));
        res.announce_host_every(host("silent-about-it"), t0, None);
        res.announce_host_every(host("every-2h"), t0, Some(Duration::from_secs(7200)));
        assert_eq!(collect_hosts(&res, t0 + Duration::from_secs(29), ttl), 0);
        assert_eq!(collect_hosts(&res, t0 + Duration::from_secs(30), ttl), 1);
        assert!(!res.hosts.contains_key("every-10s"));
        // Without an interval, or with one longer than hostTTL / 3, hostTTL applies.
        assert_eq!(collect_hosts(&res, t0 + Duration::from_secs(3599), ttl), 0);
        assert_eq!(collect_hosts(&res, t0 + ttl, ttl), 2);
    }
}
