//! A peer: one host's download of one task, with its state machine and progress.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How many recent piece costs a peer keeps (bounded so memory stays flat).
const PIECE_COSTS_KEPT: usize = 32;

/// Lifecycle of a peer: `Pending -> ReceivedNormal/Running/BackToSource -> Succeeded/Failed -> Left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Registered, no decision yet.
    Pending,
    /// Told the task is empty.
    ReceivedEmpty,
    /// Received candidate parents.
    ReceivedNormal,
    /// Downloading from parents.
    Running,
    /// Downloading from the origin.
    BackToSource,
    /// Holds the whole content.
    Succeeded,
    /// Gave up.
    Failed,
    /// Gone (host left, task deleted, peer left).
    Left,
}

impl PeerState {
    /// Whether `self -> to` is a legal transition.
    pub fn can_become(self, to: PeerState) -> bool {
        use PeerState::*;
        match (self, to) {
            (Left, _) => false,
            (_, Left) => true,
            (a, b) if a == b => true,
            (Pending | ReceivedEmpty | ReceivedNormal | Running | BackToSource, Failed) => true,
            (Pending | ReceivedEmpty | ReceivedNormal | Running | BackToSource, Succeeded) => true,
            (Pending | ReceivedNormal | Running, ReceivedNormal | Running | BackToSource) => true,
            (BackToSource, Running) => true,
            (Pending, ReceivedEmpty) => true,
            _ => false,
        }
    }

    /// Whether the peer is done (successfully or not).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PeerState::Succeeded | PeerState::Failed | PeerState::Left
        )
    }

    /// The wire enum.
    pub fn to_proto(self) -> dragonfly_proto::PeerState {
        use dragonfly_proto::PeerState as P;
        match self {
            PeerState::Pending => P::Pending,
            PeerState::ReceivedEmpty => P::ReceivedEmpty,
            PeerState::ReceivedNormal => P::ReceivedNormal,
            PeerState::Running => P::Running,
            PeerState::BackToSource => P::BackToSource,
            PeerState::Succeeded => P::Succeeded,
            PeerState::Failed => P::Failed,
            PeerState::Left => P::Leave,
        }
    }
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer {peer} cannot go from {from:?} to {to:?}")]
pub struct InvalidTransition {
    /// The peer.
    pub peer: String,
    /// Its state.
    pub from: PeerState,
    /// The refused state.
    pub to: PeerState,
}

/// One host's download of one task.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Peer id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Host id.
    pub host_id: String,
    state: PeerState,
    /// Finished pieces (see `dragonfly_proto::bitmap`).
    pub finished_pieces: Vec<u8>,
    finished_count: u32,
    piece_costs: VecDeque<Duration>,
    /// Parents this peer must not be offered again.
    pub blocklist: HashSet<String>,
    /// Reschedules asked for so far.
    pub reschedule_count: u32,
    /// The peer was told (or asked) to fetch from the origin.
    pub need_back_to_source: bool,
    /// When the peer registered.
    pub created_at: Instant,
    /// When the peer last reported anything (GC drops peers silent for `peerTTL`).
    pub updated_at: Instant,
}

impl Peer {
    /// A new pending peer.
    pub fn new(id: &str, task_id: &str, host_id: &str, now: Instant) -> Self {
        Peer {
            id: id.to_owned(),
            task_id: task_id.to_owned(),
            host_id: host_id.to_owned(),
            state: PeerState::Pending,
            finished_pieces: Vec::new(),
            finished_count: 0,
            piece_costs: VecDeque::new(),
            blocklist: HashSet::new(),
            reschedule_count: 0,
            need_back_to_source: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// Current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Moves to `to` if legal.
    pub fn transition(&mut self, to: PeerState) -> Result<(), InvalidTransition> {
        if !self.state.can_become(to) {
            return Err(InvalidTransition {
                peer: self.id.clone(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// Records a finished piece and what it cost.
    pub fn finish_piece(&mut self, number: u32, cost: Duration) {
        if !dragonfly_proto::bitmap::contains(&self.finished_pieces, number) {
            dragonfly_proto::bitmap::set(&mut self.finished_pieces, number);
            self.finished_count += 1;
        }
        if self.piece_costs.len() == PIECE_COSTS_KEPT {
            self.piece_costs.pop_front();
        }
        self.piece_costs.push_back(cost);
    }

    /// Marks pieces `0..count` finished (the peer holds the whole content).
    pub fn finish_all(&mut self, count: u32) {
        for n in 0..count {
            if !dragonfly_proto::bitmap::contains(&self.finished_pieces, n) {
                dragonfly_proto::bitmap::set(&mut self.finished_pieces, n);
                self.finished_count += 1;
            }
        }
    }

    /// Number of finished pieces.
    pub fn finished_count(&self) -> u32 {
        self.finished_count
    }

    /// Mean cost of the recent pieces, `None` before the first one.
    pub fn mean_piece_cost(&self) -> Option<Duration> {
        let n = u32::try_from(self.piece_costs.len())
            .ok()
            .filter(|n| *n > 0)?;
        Some(self.piece_costs.iter().sum::<Duration>() / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        let mut p = Peer::new("p", "t", "h", Instant::now());
        assert!(p.transition(PeerState::Running).is_ok());
        assert!(p.transition(PeerState::BackToSource).is_ok());
        assert!(p.transition(PeerState::Pending).is_err());
        assert!(p.transition(PeerState::Succeeded).is_ok());
        assert!(p.transition(PeerState::Running).is_err());
        assert!(p.transition(PeerState::Left).is_ok());
        assert!(p.transition(PeerState::Failed).is_err());
        assert_eq!(p.state(), PeerState::Left);
    }

    #[test]
    fn pieces_and_costs() {
        let mut p = Peer::new("p", "t", "h", Instant::now());
        assert_eq!(p.mean_piece_cost(), None);
        p.finish_piece(3, Duration::from_millis(10));
        p.finish_piece(3, Duration::from_millis(30));
        assert_eq!(p.finished_count(), 1);
        assert_eq!(p.mean_piece_cost(), Some(Duration::from_millis(20)));
        p.finish_all(5);
        assert_eq!(p.finished_count(), 5);
        for _ in 0..100 {
            p.finish_piece(0, Duration::from_millis(1));
        }
        assert_eq!(p.mean_piece_cost(), Some(Duration::from_millis(1)));
    }
}
