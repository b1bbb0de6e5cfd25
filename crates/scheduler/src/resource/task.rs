//! A task: one piece of content, its peers and its peer graph.

use super::dag::Dag;
use super::peer::{Peer, PeerState};
use super::peer_map::PeerMap;
use tokio::time::Instant;

/// Lifecycle of a task as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Known, nobody downloads it yet.
    Pending,
    /// Some peer downloads it.
    Running,
    /// Some peer holds all of it.
    Succeeded,
    /// The origin failed permanently.
    Failed,
}

impl TaskState {
    /// The wire enum.
    pub fn to_proto(self) -> dragonfly_proto::TaskState {
        use dragonfly_proto::TaskState as T;
        match self {
            TaskState::Pending => T::Pending,
            TaskState::Running => T::Running,
            TaskState::Succeeded => T::Succeeded,
            TaskState::Failed => T::Failed,
        }
    }
}

/// One task with its peers. Lives in a `DashMap` entry: the entry's lock guards all of it.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task id (computed by the daemons).
    pub id: String,
    /// Origin URL from the first registration.
    pub url: String,
    /// Total length, once known.
    pub content_length: Option<u64>,
    /// Piece length, once known.
    pub piece_length: Option<u64>,
    /// Piece count, once known.
    pub piece_count: Option<u32>,
    /// State.
    pub state: TaskState,
    /// Peers by id.
    pub peers: PeerMap,
    /// Who feeds whom.
    pub dag: Dag,
    /// A seed peer was already asked to fetch this task.
    pub seed_triggered: bool,
    /// When the task was created.
    pub created_at: Instant,
    /// Last change.
    pub updated_at: Instant,
}

impl Task {
    /// A new pending task.
    pub fn new(id: &str, url: &str, now: Instant) -> Self {
        Task {
            id: id.to_owned(),
            url: url.to_owned(),
            content_length: None,
            piece_length: None,
            piece_count: None,
            state: TaskState::Pending,
            peers: PeerMap::default(),
            dag: Dag::default(),
            seed_triggered: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// Removes a peer and every edge touching it.
    pub fn remove_peer(&mut self, peer_id: &str) -> Option<Peer> {
        self.dag.remove_vertex(peer_id);
        self.peers.remove(peer_id)
    }

    /// Whether some peer can serve a piece (has one, or is a seed peer fetching it).
    pub fn has_available_peer(&self, is_seed_host: impl Fn(&str) -> bool) -> bool {
        self.peers.values().any(|p| {
            !matches!(p.state(), PeerState::Failed | PeerState::Left)
                && (p.finished_count() > 0
                    || (p.state() == PeerState::BackToSource && is_seed_host(&p.host_id)))
        })
    }

    /// Whether some live peer holds or is getting the whole content: it succeeded, or it
    /// fetches from the origin (seed peers included).
    pub fn has_complete_source(&self) -> bool {
        self.peers.values().any(|p| {
            p.state() == PeerState::Succeeded || (p.need_back_to_source && !p.state().is_terminal())
        })
    }

    /// Peers fetching from the origin right now.
    pub fn back_to_source_count(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.need_back_to_source && !p.state().is_terminal())
            .count()
    }

    /// The task as `StatTask` answers it.
    pub fn to_proto(&self, is_seed_host: impl Fn(&str) -> bool) -> dragonfly_proto::Task {
        let mut t = dragonfly_proto::Task {
            id: self.id.clone(),
            url: self.url.clone(),
            piece_length: self.piece_length,
            content_length: self.content_length,
            piece_count: self.piece_count,
            peer_count: u32::try_from(self.peers.len()).unwrap_or(u32::MAX),
            has_available_peer: self.has_available_peer(is_seed_host),
            ..Default::default()
        };
        t.set_state(self.state.to_proto());
        t
    }
}
