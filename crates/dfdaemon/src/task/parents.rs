//! The task's parent set: what each parent holds (from its SyncPieces stream), which failed,
//! and how busy each is.

use super::parent::{self, Parent, ParentEvent};
use super::version::{Version, current_version};
use dragonfly_common::task_id::TaskId;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// A parent as the driver tracks it.
pub(super) struct ParentState {
    pub(super) parent: Parent,
    /// Pieces it holds, with its crc32.
    pub(super) has: HashMap<u32, u32>,
    /// Its SyncPieces stream is still open (it may get more pieces).
    pub(super) open: bool,
    /// It failed, lied or stalled: never ask it again for this task.
    pub(super) bad: bool,
    pub(super) inflight: usize,
    /// A seed peer: asked only for pieces no other parent has, so its uplink carries each piece
    /// to few children and the others swap among themselves.
    pub(super) seed: bool,
}

impl ParentState {
    fn new(parent: Parent, seed: bool) -> Self {
        Self {
            parent,
            has: HashMap::new(),
            open: true,
            bad: false,
            inflight: 0,
            seed,
        }
    }

    /// Not failed, and has pieces or may still get some.
    pub(super) fn is_live(&self) -> bool {
        !self.bad && (self.open || !self.has.is_empty())
    }
}

/// The task's parents, with a follower (SyncPieces) per parent. Parents are added as the
/// scheduler names them; dropping this stops every follower.
pub(super) struct Parents {
    pub(super) list: Vec<ParentState>,
    /// The content failed its digest with parents' pieces: take no new parents for this task.
    pub(super) refuse_new: bool,
    followers: Aborting,
    tx: mpsc::Sender<ParentEvent>,
    host_id: String,
    task: TaskId,
}

impl Parents {
    pub(super) fn new(host_id: String, task: TaskId) -> (Self, mpsc::Receiver<ParentEvent>) {
        let (tx, rx) = mpsc::channel(1024);
        let me = Self {
            list: Vec::new(),
            refuse_new: false,
            followers: Aborting(Vec::new()),
            tx,
            host_id,
            task,
        };
        (me, rx)
    }

    /// Start following `p` unless it is already known.
    pub(super) fn add(&mut self, p: Parent, seed: bool) {
        if self.refuse_new || self.list.iter().any(|s| s.parent.id == p.id) {
            return;
        }
        let i = self.list.len();
        self.followers.0.push(tokio::spawn(parent::follow(
            i,
            p.clone(),
            self.host_id.clone(),
            self.task.clone(),
            self.tx.clone(),
        )));
        self.list.push(ParentState::new(p, seed));
    }

    /// A parent whose pieces are known already, with no follower (tests feed its events).
    #[cfg(test)]
    pub(super) fn add_known(&mut self, p: Parent, seed: bool, has: &[(u32, u32)]) -> usize {
        let mut s = ParentState::new(p, seed);
        s.has.extend(has.iter().copied());
        self.list.push(s);
        self.list.len() - 1
    }

    /// Some parent has or may still get a piece.
    pub(super) fn may_help(&self) -> bool {
        self.list.iter().any(ParentState::is_live)
    }

    /// Some parent's stream is open.
    pub(super) fn any_open(&self) -> bool {
        self.list.iter().any(|p| !p.bad && p.open)
    }

    /// Parents that have or may still get pieces.
    pub(super) fn live_count(&self) -> usize {
        self.list.iter().filter(|p| p.is_live()).count()
    }

    /// Ids of the parents that failed.
    pub(super) fn bad_ids(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|p| p.bad)
            .map(|p| p.parent.id.clone())
            .collect()
    }

    /// The parent to ask for piece `n`: one that has it and did not fail, a seed only when no
    /// other has it, the least busy first.
    pub(super) fn best_for(&self, n: u32) -> Option<usize> {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.bad && p.has.contains_key(&n))
            .min_by_key(|(_, p)| (p.seed, p.inflight))
            .map(|(i, _)| i)
    }

    /// No parent made progress for a while: never ask those that had or might get pieces.
    pub(super) fn stalled(&mut self) {
        for p in self.list.iter_mut() {
            if p.open || !p.has.is_empty() {
                p.bad = true;
            }
            p.open = false;
            p.has.clear();
        }
    }

    /// Act on what a parent's stream said.
    pub(super) fn apply_event(&mut self, ev: ParentEvent, id: &TaskId, version: &Version) {
        match ev {
            ParentEvent::Layout {
                parent, version: v, ..
            } => {
                // A parent holding another version of the source must not feed this task.
                if let (Some(known), Some(p)) =
                    (current_version(version), self.list.get_mut(parent))
                    && let Some(why) = known.differs(&v)
                {
                    tracing::warn!(task = %id, parent = %p.parent.id, change = %why, "parent holds another version of the source; not asking it");
                    p.bad = true;
                }
            }
            ParentEvent::Piece { parent, piece } => {
                if let Some(p) = self.list.get_mut(parent) {
                    p.has.insert(piece.number, piece.crc32);
                }
            }
            ParentEvent::Closed { parent, error } => {
                if let Some(p) = self.list.get_mut(parent) {
                    p.open = false;
                    if let Some(e) = error {
                        tracing::warn!(task = %id, parent = %p.parent.id, error = %e, "parent stream failed");
                        p.bad = true;
                    }
                }
            }
        }
    }
}

/// Aborts the followers when the task is done with its parents.
struct Aborting(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Aborting {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(i: u8) -> Parent {
        Parent {
            id: format!("p{i}"),
            addr: format!("127.0.0.{i}:65002").parse().unwrap(),
        }
    }

    #[test]
    fn the_seed_is_asked_only_for_pieces_no_other_parent_has() {
        let (mut ps, _rx) =
            Parents::new("h".into(), TaskId::for_url("http://o/x", "", "", None, &[]));
        let seed = ps.add_known(parent(1), true, &[(0, 1), (1, 1), (2, 1)]);
        let peer = ps.add_known(parent(2), false, &[(0, 1), (1, 1)]);
        assert_eq!(ps.best_for(0), Some(peer));
        assert_eq!(ps.best_for(2), Some(seed), "only the seed has it");
        assert_eq!(ps.best_for(3), None);
        // Busy or not, a peer goes before the seed.
        ps.list[peer].inflight = 10;
        assert_eq!(ps.best_for(1), Some(peer));
        ps.list[peer].bad = true;
        assert_eq!(ps.best_for(1), Some(seed), "a failed parent is not asked");
    }

    #[test]
    fn the_least_busy_parent_is_asked() {
        let (mut ps, _rx) =
            Parents::new("h".into(), TaskId::for_url("http://o/x", "", "", None, &[]));
        let a = ps.add_known(parent(1), false, &[(0, 1)]);
        let b = ps.add_known(parent(2), false, &[(0, 1)]);
        ps.list[a].inflight = 2;
        assert_eq!(ps.best_for(0), Some(b));
    }

    #[test]
    fn a_closed_stream_with_an_error_makes_the_parent_bad_and_a_clean_end_does_not() {
        let id = TaskId::for_url("http://o/x", "", "", None, &[]);
        let (mut ps, _rx) = Parents::new("h".into(), id.clone());
        let a = ps.add_known(parent(1), false, &[(0, 1)]);
        let b = ps.add_known(parent(2), false, &[]);
        let version: Version = Default::default();
        ps.apply_event(
            ParentEvent::Closed {
                parent: a,
                error: None,
            },
            &id,
            &version,
        );
        assert!(
            !ps.list[a].bad && ps.list[a].is_live(),
            "it still has piece 0"
        );
        ps.apply_event(
            ParentEvent::Closed {
                parent: b,
                error: Some("parent p2: connection reset".into()),
            },
            &id,
            &version,
        );
        assert!(ps.list[b].bad);
        assert_eq!(ps.bad_ids(), vec!["p2".to_string()]);
        assert_eq!(ps.live_count(), 1);
        ps.stalled();
        assert!(!ps.may_help());
    }
}
