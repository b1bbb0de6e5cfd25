//! Parent selection: filter a random sample of a task's peers, score the rest, keep the best.
//!
//! Filters (in order): not the child itself, something to give (a finished piece, or a seed peer
//! fetching from the origin), not failed/left, host known and not the child's host, not
//! blocklisted by the child, no cycle in the task's graph, a free upload slot on its host, and not
//! a piece-cost outlier (mean recent piece cost above [`OUTLIER_FACTOR`] x the candidates' median).
//! Score: weighted sum (weights from `evaluator.weights`) of free upload ratio, upload success
//! ratio, finished pieces ratio, idc affinity, location affinity and a seed-peer bonus.

use crate::config::EvaluatorWeights;
use crate::resource::host::{idc_affinity, location_affinity};
use crate::resource::{Host, Peer, PeerState, Task};
use dashmap::DashMap;
use rand::Rng;
use rand::seq::IteratorRandom;
use std::time::Duration;

/// A candidate whose mean piece cost exceeds this many times the median is dropped.
pub const OUTLIER_FACTOR: u32 = 2;

/// Random positions probed per wanted sample before a large task is scanned in full.
const PROBES_PER_PICK: usize = 4;

/// How many peers to look at and how many to return.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Peers sampled before filtering (`scheduler.filterParentLimit`).
    pub filter: usize,
    /// Parents returned at most (`scheduler.candidateParentLimit`).
    pub candidates: usize,
    /// Children one parent feeds at most (`scheduler.childLimit`; 0: no limit). A parent at the
    /// limit is offered only when `over_limit_ok` and no other parent qualifies.
    pub children: usize,
    /// Offer parents at the child limit when nothing else qualifies (the last scheduling
    /// attempt: better a busy parent than the origin).
    pub over_limit_ok: bool,
}

/// The parts of a candidate's score, each in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScoreParts {
    /// Free upload slots of the parent's host.
    pub free_upload: f64,
    /// Share of the parent host's uploads that succeeded.
    pub upload_success: f64,
    /// Finished pieces / piece count.
    pub finished_pieces: f64,
    /// Same idc as the child.
    pub idc: f64,
    /// Common location prefix.
    pub location: f64,
    /// 1 for a seed peer.
    pub seed: f64,
}

impl ScoreParts {
    /// The weighted sum.
    pub fn total(&self, w: &EvaluatorWeights) -> f64 {
        self.free_upload * w.free_upload.get()
            + self.upload_success * w.upload_success.get()
            + self.finished_pieces * w.finished_pieces.get()
            + self.idc * w.idc_affinity.get()
            + self.location * w.location_affinity.get()
            + self.seed * w.seed_peer.get()
    }
}

/// A chosen parent.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Peer id of the parent.
    pub peer_id: String,
    /// Weighted score.
    pub score: f64,
    /// How the score was made.
    pub parts: ScoreParts,
}

/// Picks the best parents for `child_id` among the peers of `task`. `extra_blocklist` is added to
/// the child's own blocklist (e.g. the one of a `RescheduleRequest`).
pub fn choose_parents(
    task: &Task,
    child_id: &str,
    hosts: &DashMap<String, Host>,
    weights: &EvaluatorWeights,
    limits: Limits,
) -> Vec<Candidate> {
    let Some(child) = task.peers.get(child_id) else {
        return Vec::new();
    };
    let child_host = hosts.get(&child.host_id).map(|h| h.info.clone());
    let is_seed = |host_id: &str| hosts.get(host_id).is_some_and(|h| h.is_seed());

    let sample = sample_givers(task, child, &is_seed, limits.filter);

    // Host factors are read under the host's map guard, never cloned (this runs per registration).
    let mut survivors: Vec<(&Peer, ScoreParts)> = Vec::new();
    let mut full: Vec<(&Peer, ScoreParts)> = Vec::new();
    for p in sample {
        let Some((free_slot, parts)) = hosts.get(&p.host_id).map(|host| {
            let parts = score(p, &host, child_host.as_ref(), task.piece_count);
            (host.has_free_upload_slot(), parts)
        }) else {
            tracing::debug!(parent = %p.id, "filtered: host not announced");
            continue;
        };
        if child.blocklist.contains(&p.id) {
            tracing::debug!(parent = %p.id, "filtered: blocklisted");
        } else if !task.dag.can_add_edge(&p.id, child_id) {
            tracing::debug!(parent = %p.id, "filtered: would make a cycle");
        } else if !free_slot {
            tracing::debug!(parent = %p.id, "filtered: no free upload slot");
        } else if limits.children > 0
            && task.dag.child_count(&p.id) >= limits.children
            && !task.dag.has_edge(&p.id, child_id)
        {
            tracing::debug!(parent = %p.id, children = task.dag.child_count(&p.id), "filtered: feeds enough children");
            full.push((p, parts));
        } else {
            survivors.push((p, parts));
        }
    }
    if survivors.is_empty() && limits.over_limit_ok {
        // Least loaded first: the score below does not know about children.
        full.sort_by_key(|(p, _)| task.dag.child_count(&p.id));
        full.truncate(limits.candidates.max(1));
        survivors = full;
    }
    drop_cost_outliers(&mut survivors);

    let mut scored: Vec<Candidate> = survivors
        .into_iter()
        .map(|(p, parts)| Candidate {
            peer_id: p.id.clone(),
            score: parts.total(weights),
            parts,
        })
        .collect();
    scored.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.peer_id.cmp(&b.peer_id))
    });
    for c in &scored {
        tracing::debug!(
            task = %task.id, child = %child_id, parent = %c.peer_id, score = c.score,
            free_upload = c.parts.free_upload, upload_success = c.parts.upload_success,
            finished_pieces = c.parts.finished_pieces, idc = c.parts.idc,
            location = c.parts.location, seed = c.parts.seed, "candidate parent"
        );
    }
    scored.truncate(limits.candidates);
    scored
}

/// Up to `n` peers drawn at random among those that could feed `child` (not the child, not on its
/// host, something to give). A large task is sampled by probing random positions, so a
/// registration costs O(n) and not O(peers); when givers are too rare for the probes to find `n`
/// (or the task is small) every peer is scanned.
fn sample_givers<'a>(
    task: &'a Task,
    child: &Peer,
    is_seed: &impl Fn(&str) -> bool,
    n: usize,
) -> Vec<&'a Peer> {
    let eligible = |p: &&Peer| {
        p.id != child.id && p.host_id != child.host_id && has_something_to_give(p, is_seed)
    };
    let mut rng = rand::rng();
    let probes = n.saturating_mul(PROBES_PER_PICK);
    let len = task.peers.len();
    if n > 0 && len > probes.saturating_mul(2) {
        // Random positions, duplicates skipped: by symmetry the first `n` distinct eligible peers
        // are a uniform sample of the eligible ones.
        let mut picked: Vec<&Peer> = Vec::with_capacity(n);
        for _ in 0..probes {
            let Some(p) = task.peers.get_index(rng.random_range(0..len)) else {
                continue;
            };
            if eligible(&p) && !picked.iter().any(|q| std::ptr::eq(*q, p)) {
                picked.push(p);
                if picked.len() == n {
                    return picked;
                }
            }
        }
    }
    task.peers
        .values()
        .filter(eligible)
        .choose_multiple(&mut rng, n)
}

/// A peer that is alive and holds a piece, or a seed peer fetching the task from the origin.
fn has_something_to_give(p: &Peer, is_seed: &impl Fn(&str) -> bool) -> bool {
    match p.state() {
        PeerState::Failed | PeerState::Left => false,
        PeerState::Succeeded => true,
        // The piece count first: the seed check is a host lookup.
        _ if p.finished_count() > 0 => true,
        PeerState::BackToSource | PeerState::Running => is_seed(&p.host_id),
        _ => false,
    }
}

/// Drops candidates whose mean piece cost is above `OUTLIER_FACTOR` x the median (peers without
/// costs yet are kept).
fn drop_cost_outliers(survivors: &mut Vec<(&Peer, ScoreParts)>) {
    let mut costs: Vec<Duration> = survivors
        .iter()
        .filter_map(|(p, _)| p.mean_piece_cost())
        .collect();
    if costs.len() < 3 {
        return;
    }
    costs.sort();
    let median = costs[costs.len() / 2];
    survivors.retain(|(p, _)| {
        let keep = p
            .mean_piece_cost()
            .is_none_or(|c| c <= median * OUTLIER_FACTOR);
        if !keep {
            tracing::debug!(parent = %p.id, ?median, "filtered: piece cost outlier");
        }
        keep
    });
}

fn score(
    parent: &Peer,
    host: &Host,
    child_host: Option<&dragonfly_proto::Host>,
    piece_count: Option<u32>,
) -> ScoreParts {
    let finished_pieces = if parent.state() == PeerState::Succeeded {
        1.0
    } else {
        match piece_count {
            Some(n) if n > 0 => (f64::from(parent.finished_count()) / f64::from(n)).min(1.0),
            // Unknown size: any piece is better than none, but less than all.
            _ if parent.finished_count() > 0 => 0.5,
            _ => 0.0,
        }
    };
    let (idc, location) = child_host.map_or((0.0, 0.0), |c| {
        (
            idc_affinity(&c.idc, &host.info.idc),
            location_affinity(&c.location, &host.info.location),
        )
    });
    ScoreParts {
        free_upload: host.free_upload_ratio(),
        upload_success: host.upload_success_ratio(),
        finished_pieces,
        idc,
        location,
        seed: if host.is_seed() { 1.0 } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_proto::HostType;
    use proptest::prelude::*;
    use tokio::time::Instant;

    const LIMITS: Limits = Limits {
        children: 0,
        over_limit_ok: false,
        filter: 100,
        candidates: 4,
    };

    struct World {
        task: Task,
        hosts: DashMap<String, Host>,
    }

    impl World {
        fn new() -> Self {
            World {
                task: Task::new("t", "http://o/f", Instant::now()),
                hosts: DashMap::new(),
            }
        }

        fn host(&self, id: &str, f: impl FnOnce(&mut dragonfly_proto::Host)) {
            let mut info = dragonfly_proto::Host {
                id: id.into(),
                ip: "127.0.0.1".into(),
                ..Default::default()
            };
            f(&mut info);
            self.hosts
                .insert(id.into(), Host::new(info, Instant::now()));
        }

        /// A peer on its own host (`h-<id>`) with `pieces` finished pieces.
        fn peer(&mut self, id: &str, pieces: u32) -> &mut Peer {
            let host = format!("h-{id}");
            if !self.hosts.contains_key(&host) {
                self.host(&host, |_| {});
            }
            let mut p = Peer::new(id, "t", &host, Instant::now());
            for n in 0..pieces {
                p.finish_piece(n, Duration::from_millis(10));
            }
            self.task.peers.insert(id.into(), p);
            self.task
                .peers
                .get_mut(id)
                .unwrap_or_else(|| unreachable!())
        }

        fn choose(&self, child: &str) -> Vec<String> {
            choose_parents(
                &self.task,
                child,
                &self.hosts,
                &EvaluatorWeights::default(),
                LIMITS,
            )
            .into_iter()
            .map(|c| c.peer_id)
            .collect()
        }
    }

    #[test]
    fn excludes_self_and_empty_peers() {
        let mut w = World::new();
        w.peer("child", 3);
        w.peer("empty", 0);
        w.peer("full", 2);
        assert_eq!(w.choose("child"), vec!["full"]);
    }

    #[test]
    fn excludes_same_host() {
        let mut w = World::new();
        w.peer("child", 0);
        w.peer("twin", 2).host_id = "h-child".into();
        w.peer("other", 1);
        assert_eq!(w.choose("child"), vec!["other"]);
    }

    #[test]
    fn excludes_blocklisted_failed_and_left() {
        let mut w = World::new();
        w.peer("child", 0).blocklist.insert("bad".into());
        w.peer("bad", 5);
        let failed = w.peer("failed", 5);
        assert!(failed.transition(PeerState::Failed).is_ok());
        let left = w.peer("left", 5);
        assert!(left.transition(PeerState::Left).is_ok());
        w.peer("good", 1);
        assert_eq!(w.choose("child"), vec!["good"]);
    }

    #[test]
    fn excludes_cycles() {
        let mut w = World::new();
        w.peer("a", 1);
        w.peer("b", 1);
        assert!(w.task.dag.add_edge("a", "b").is_ok());
        assert_eq!(w.choose("a"), Vec::<String>::new());
        assert_eq!(w.choose("b"), vec!["a"]);
    }

    #[test]
    fn seed_peer_downloading_counts_even_without_pieces() {
        let mut w = World::new();
        w.peer("child", 0);
        w.host("seed-host", |h| h.set_type(HostType::Seed));
        let seed = w.peer("seed", 0);
        seed.host_id = "seed-host".into();
        assert!(seed.transition(PeerState::BackToSource).is_ok());
        w.peer("normal-btos", 0).need_back_to_source = true;
        assert_eq!(w.choose("child"), vec!["seed"]);
    }

    #[test]
    fn excludes_full_upload_slots_unknown_hosts_and_unshared() {
        let mut w = World::new();
        w.peer("child", 0);
        w.peer("busy", 3);
        w.host("h-busy", |h| {
            h.concurrent_upload_limit = 2;
            h.concurrent_upload_count = 2;
        });
        w.peer("unshared", 3);
        w.host("h-unshared", |h| h.disable_shared = true);
        w.peer("ghost", 3).host_id = "nowhere".into();
        w.peer("ok", 1);
        assert_eq!(w.choose("child"), vec!["ok"]);
    }

    #[test]
    fn excludes_piece_cost_outliers() {
        let mut w = World::new();
        w.peer("child", 0);
        w.peer("a", 2);
        w.peer("b", 2);
        w.peer("c", 2);
        w.peer("slow", 2).finish_piece(9, Duration::from_secs(10));
        let got = w.choose("child");
        assert_eq!(got.len(), 3);
        assert!(!got.contains(&"slow".to_owned()));
    }

    #[test]
    fn ordering_follows_the_weights() {
        let mut w = World::new();
        w.host("h-child", |h| {
            h.idc = "dc1".into();
            h.location = "cn|zj|hz".into();
        });
        w.peer("child", 0).host_id = "h-child".into();
        w.task.piece_count = Some(10);
        w.peer("few", 1);
        w.peer("many", 9);
        w.peer("near", 1);
        w.host("h-near", |h| {
            h.idc = "dc1".into();
            h.location = "cn|zj|hz".into();
        });
        w.peer("seed", 1);
        w.host("h-seed", |h| h.set_type(HostType::Seed));
        w.peer("loaded", 1);
        w.host("h-loaded", |h| {
            h.concurrent_upload_limit = 10;
            h.concurrent_upload_count = 9;
        });
        // near: idc .15 + location .15; seed: .15; many: +.16 pieces; loaded: -.135 free upload.
        assert_eq!(w.choose("child"), vec!["near", "many", "seed", "few"]);
    }

    #[test]
    fn returns_at_most_the_candidate_limit() {
        let mut w = World::new();
        w.peer("child", 0);
        for i in 0..10 {
            w.peer(&format!("p{i}"), 1);
        }
        assert_eq!(w.choose("child").len(), 4);
    }

    #[test]
    fn large_tasks_are_sampled_without_missing_rare_givers() {
        let mut w = World::new();
        w.peer("child", 0);
        for i in 0..1000 {
            w.peer(&format!("idle{i}"), 0);
        }
        // 3 givers among 1001 peers: random probes miss them, the full scan must not.
        for i in 0..3 {
            w.peer(&format!("giver{i}"), 1);
        }
        let mut got = w.choose("child");
        got.sort();
        assert_eq!(got, vec!["giver0", "giver1", "giver2"]);

        // Mostly givers: probing finds `filter` distinct eligible peers.
        for i in 0..1000 {
            w.peer(&format!("idle{i}"), 1);
        }
        let child = w.task.peers.get("child").cloned();
        let Some(child) = child else {
            unreachable!("the child was added above")
        };
        let is_seed = |_: &str| false;
        let sample = sample_givers(&w.task, &child, &is_seed, 15);
        let ids: std::collections::HashSet<&str> = sample.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(sample.len(), 15);
        assert_eq!(ids.len(), 15);
        assert!(!ids.contains("child"));
    }

    proptest! {
        #[test]
        fn blocklisted_peers_are_never_returned(
            peers in proptest::collection::vec((0u32..4, any::<bool>()), 1..30),
            filter in 1usize..20,
        ) {
            let mut w = World::new();
            w.peer("child", 0);
            for (i, (pieces, blocked)) in peers.iter().enumerate() {
                let id = format!("p{i}");
                w.peer(&id, *pieces);
                if *blocked {
                    w.task.peers.get_mut("child").map(|c| c.blocklist.insert(id));
                }
            }
            let limits = Limits {
                filter,
                candidates: 4,
                children: 0,
                over_limit_ok: false,
            };
            let got = choose_parents(&w.task, "child", &w.hosts, &EvaluatorWeights::default(), limits);
            let child = w.task.peers.get("child").map(|c| c.blocklist.clone()).unwrap_or_default();
            prop_assert!(got.len() <= 4);
            for c in got {
                prop_assert!(!child.contains(&c.peer_id));
                prop_assert!(c.peer_id != "child");
            }
        }
    }
}
