//! The peers of one task by id, stored densely so parents can be sampled at random without a
//! full scan (a task may have 10,000 peers, and every registration samples them).

use super::peer::Peer;
use std::collections::HashMap;

/// Peers by id: a `Vec` (random access by index) plus an id -> index map; removal swaps the last
/// peer into the hole, so both stay dense.
#[derive(Debug, Default, Clone)]
pub struct PeerMap {
    index: HashMap<String, usize>,
    peers: Vec<Peer>,
}

impl PeerMap {
    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there is no peer.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peer `id`.
    pub fn get(&self, id: &str) -> Option<&Peer> {
        self.index.get(id).map(|&i| &self.peers[i])
    }

    /// The peer `id`, mutably.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Peer> {
        self.index.get(id).map(|&i| &mut self.peers[i])
    }

    /// Whether peer `id` is known.
    pub fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The peer at position `i` (`0..len()`, in no particular order).
    pub fn get_index(&self, i: usize) -> Option<&Peer> {
        self.peers.get(i)
    }

    /// Adds or replaces peer `id` (which must be `peer.id`); returns the replaced one.
    pub fn insert(&mut self, id: String, peer: Peer) -> Option<Peer> {
        debug_assert_eq!(id, peer.id, "PeerMap key must be the peer's id");
        match self.index.get(&id) {
            Some(&i) => Some(std::mem::replace(&mut self.peers[i], peer)),
            None => {
                self.index.insert(id, self.peers.len());
                self.peers.push(peer);
                None
            }
        }
    }

    /// Removes peer `id`.
    pub fn remove(&mut self, id: &str) -> Option<Peer> {
        let i = self.index.remove(id)?;
        let peer = self.peers.swap_remove(i);
        if let Some(moved) = self.peers.get(i)
            && let Some(slot) = self.index.get_mut(moved.id.as_str())
        {
            *slot = i;
        }
        Some(peer)
    }

    /// All peers, in no particular order.
    pub fn values(&self) -> std::slice::Iter<'_, Peer> {
        self.peers.iter()
    }

    /// Frees spare capacity (after many peers left).
    pub fn shrink_to_fit(&mut self) {
        self.index.shrink_to_fit();
        self.peers.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use tokio::time::Instant;

    fn peer(id: &str) -> Peer {
        Peer::new(id, "t", "h", Instant::now())
    }

    #[test]
    fn insert_replace_remove() {
        let mut m = PeerMap::default();
        assert!(m.insert("a".into(), peer("a")).is_none());
        assert!(m.insert("b".into(), peer("b")).is_none());
        let mut again = peer("a");
        again.reschedule_count = 7;
        assert!(m.insert("a".into(), again).is_some());
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a").map(|p| p.reschedule_count), Some(7));
        assert_eq!(m.remove("a").map(|p| p.id), Some("a".to_owned()));
        assert!(m.remove("a").is_none());
        assert_eq!(m.get("b").map(|p| p.id.as_str()), Some("b"));
        assert_eq!(m.get_index(0).map(|p| p.id.as_str()), Some("b"));
        assert!(m.get_index(1).is_none());
    }

    proptest! {
        /// Whatever the order of inserts and removals, the map holds exactly the live ids and
        /// every id finds its own peer.
        #[test]
        fn behaves_like_a_set_of_ids(ops in proptest::collection::vec((0u8..20, any::<bool>()), 0..300)) {
            let mut m = PeerMap::default();
            let mut model = BTreeSet::new();
            for (id, remove) in ops {
                let id = id.to_string();
                if remove {
                    prop_assert_eq!(m.remove(&id).is_some(), model.remove(&id));
                } else {
                    prop_assert_eq!(m.insert(id.clone(), peer(&id)).is_some(), !model.insert(id));
                }
                prop_assert_eq!(m.len(), model.len());
                for id in &model {
                    prop_assert_eq!(m.get(id).map(|p| p.id.as_str()), Some(id.as_str()));
                }
                let listed: BTreeSet<String> = m.values().map(|p| p.id.clone()).collect();
                prop_assert_eq!(&listed, &model);
            }
        }
    }
}
