//! Finished copies a host holds without having downloaded them through this scheduler instance:
//! re-announced after a restart or a move on the ring, or served by a seed peer from its storage.

use super::Resources;
use super::peer::{Peer, PeerState};
use super::task::{Task, TaskState};
use tokio::time::Instant;

/// What a host says about one task it holds whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedCopy {
    /// Total length.
    pub content_length: u64,
    /// Piece length.
    pub piece_length: u64,
    /// Piece count.
    pub piece_count: u32,
}

impl FinishedCopy {
    /// Whether the numbers agree with each other (a copy that does not is not recorded).
    pub fn is_consistent(&self) -> bool {
        if self.piece_count > crate::bounds::MAX_PIECES {
            return false;
        }
        if self.content_length == 0 {
            return self.piece_count == 0;
        }
        self.piece_length > 0
            && self.content_length.div_ceil(self.piece_length) == u64::from(self.piece_count)
    }
}

/// What [`Resources::record_finished`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new finished peer of the task.
    Added,
    /// The host was a finished peer of the task already; its `updated_at` is now.
    Refreshed,
    /// The task has `limit` finished peers already.
    Full,
    /// The host has a peer of the task that is still downloading.
    Busy,
    /// The copy's layout is inconsistent or differs from the task's.
    Mismatch,
    /// The host is not announced.
    UnknownHost,
}

impl Recorded {
    /// Whether the host is now a finished peer of the task.
    pub fn recorded(self) -> bool {
        matches!(self, Recorded::Added | Recorded::Refreshed)
    }
}

/// The peer id a re-announced copy gets (one per host and task, so a second announce refreshes it).
pub fn held_peer_id(host_id: &str) -> String {
    format!("{host_id}-held")
}

impl Resources {
    /// Records `host_id` as a finished peer (`peer_id`) of `task_id`, unless the task has `limit`
    /// finished peers already. A task unknown here is created, already succeeded.
    pub fn record_finished(
        &self,
        task_id: &str,
        host_id: &str,
        peer_id: &str,
        copy: FinishedCopy,
        limit: usize,
        now: Instant,
    ) -> Recorded {
        if !copy.is_consistent() {
            return Recorded::Mismatch;
        }
        if !self.hosts.contains_key(host_id) {
            return Recorded::UnknownHost;
        }
        let mut task = self
            .tasks
            .entry(task_id.to_owned())
            .or_insert_with(|| Task::new(task_id, "", now));
        let known = |v: Option<u64>, w: u64| v.is_none_or(|v| v == w);
        if !known(task.content_length, copy.content_length)
            || !known(task.piece_length, copy.piece_length)
            || !known(task.piece_count.map(u64::from), u64::from(copy.piece_count))
        {
            return Recorded::Mismatch;
        }
        let mine = task
            .peers
            .values()
            .filter(|p| p.host_id == host_id)
            .map(|p| (p.id.clone(), p.state()))
            .collect::<Vec<_>>();
        for (id, state) in mine {
            match state {
                PeerState::Succeeded => {
                    if let Some(p) = task.peers.get_mut(&id) {
                        p.updated_at = now;
                    }
                    task.updated_at = now;
                    return Recorded::Refreshed;
                }
                PeerState::Failed | PeerState::Left => {
                    task.remove_peer(&id);
                }
                _ => return Recorded::Busy,
            }
        }
        let finished = task
            .peers
            .values()
            .filter(|p| p.state() == PeerState::Succeeded)
            .count();
        if finished >= limit {
            return Recorded::Full;
        }
        let mut peer = Peer::new(peer_id, task_id, host_id, now);
        peer.finish_all(copy.piece_count);
        // Pending -> Succeeded is always legal.
        let _ = peer.transition(PeerState::Succeeded);
        task.peers.insert(peer_id.to_owned(), peer);
        task.content_length = Some(copy.content_length);
        task.piece_length = Some(copy.piece_length);
        task.piece_count = Some(copy.piece_count);
        task.state = TaskState::Succeeded;
        task.updated_at = now;
        Recorded::Added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPY: FinishedCopy = FinishedCopy {
        content_length: 10,
        piece_length: 4,
        piece_count: 3,
    };

    #[test]
    fn a_copy_with_more_pieces_than_a_task_may_have_is_refused() {
        let huge = FinishedCopy {
            content_length: u64::from(u32::MAX),
            piece_length: 1,
            piece_count: u32::MAX,
        };
        assert!(!huge.is_consistent(), "a 512 MiB bitmap is never allocated");
        assert!(COPY.is_consistent());
    }

    fn with_hosts(n: usize) -> Resources {
        let res = Resources::default();
        for i in 0..n {
            res.announce_host(
                dragonfly_proto::Host {
                    id: format!("h{i}"),
                    ..Default::default()
                },
                Instant::now(),
            );
        }
        res
    }

    #[test]
    fn copies_are_recorded_once_per_host_and_at_most_limit_per_task() {
        let res = with_hosts(5);
        let now = Instant::now();
        let rec = |h: &str| res.record_finished("t", h, &held_peer_id(h), COPY, 3, now);
        assert_eq!(rec("h0"), Recorded::Added);
        assert_eq!(rec("h0"), Recorded::Refreshed);
        assert_eq!(rec("h1"), Recorded::Added);
        assert_eq!(rec("h2"), Recorded::Added);
        assert_eq!(rec("h3"), Recorded::Full);
        assert_eq!(rec("nobody"), Recorded::UnknownHost);
        let task = res.tasks.get("t");
        let task = task.as_deref();
        assert_eq!(task.map(|t| t.peers.len()), Some(3));
        assert_eq!(task.map(|t| t.state), Some(TaskState::Succeeded));
        assert_eq!(task.and_then(|t| t.piece_count), Some(3));
        let finished = task
            .and_then(|t| t.peers.get("h0-held"))
            .map(|p| p.finished_count());
        assert_eq!(finished, Some(3));
    }

    #[test]
    fn a_copy_that_disagrees_or_a_host_still_downloading_is_not_recorded() {
        let res = with_hosts(2);
        let now = Instant::now();
        let odd = FinishedCopy {
            piece_count: 2,
            ..COPY
        };
        assert_eq!(
            res.record_finished("t", "h0", "x", odd, 8, now),
            Recorded::Mismatch
        );
        assert_eq!(
            res.record_finished("t", "h0", "x", COPY, 8, now),
            Recorded::Added
        );
        let longer = FinishedCopy {
            content_length: 12,
            ..COPY
        };
        assert_eq!(
            res.record_finished("t", "h1", "y", longer, 8, now),
            Recorded::Mismatch
        );
        if let Some(mut t) = res.tasks.get_mut("t") {
            t.peers
                .insert("run".into(), Peer::new("run", "t", "h1", now));
        }
        assert_eq!(
            res.record_finished("t", "h1", "y", COPY, 8, now),
            Recorded::Busy
        );
    }
}
