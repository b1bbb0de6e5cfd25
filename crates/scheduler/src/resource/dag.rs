//! Per-task graph of who feeds whom (parent -> child edges between peer ids), kept acyclic.

use std::collections::{HashMap, HashSet};

/// Why an edge was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// The edge would point a peer at itself.
    #[error("peer {0} cannot be its own parent")]
    SelfLoop(String),
    /// The child already reaches the parent, so the edge would close a cycle.
    #[error("edge {parent} -> {child} would close a cycle")]
    Cycle {
        /// The would-be parent.
        parent: String,
        /// The would-be child.
        child: String,
    },
}

/// A directed acyclic graph over peer ids. Vertices exist implicitly while they have edges.
#[derive(Debug, Default, Clone)]
pub struct Dag {
    children: HashMap<String, HashSet<String>>,
    parents: HashMap<String, HashSet<String>>,
}

impl Dag {
    /// Whether `parent -> child` may be added without creating a cycle (an existing edge is allowed).
    pub fn can_add_edge(&self, parent: &str, child: &str) -> bool {
        parent != child && !self.reaches(child, parent)
    }

    /// Adds `parent -> child`; refused if `child` already reaches `parent` (or they are equal).
    pub fn add_edge(&mut self, parent: &str, child: &str) -> Result<(), DagError> {
        if parent == child {
            return Err(DagError::SelfLoop(parent.to_owned()));
        }
        if self.reaches(child, parent) {
            return Err(DagError::Cycle {
                parent: parent.to_owned(),
                child: child.to_owned(),
            });
        }
        self.children
            .entry(parent.to_owned())
            .or_default()
            .insert(child.to_owned());
        self.parents
            .entry(child.to_owned())
            .or_default()
            .insert(parent.to_owned());
        Ok(())
    }

    /// How many children `parent` feeds.
    pub fn child_count(&self, parent: &str) -> usize {
        self.children.get(parent).map_or(0, HashSet::len)
    }

    /// Whether `parent -> child` exists.
    pub fn has_edge(&self, parent: &str, child: &str) -> bool {
        self.children.get(parent).is_some_and(|c| c.contains(child))
    }

    /// Removes `parent -> child` if present.
    pub fn remove_edge(&mut self, parent: &str, child: &str) {
        remove_from(&mut self.children, parent, child);
        remove_from(&mut self.parents, child, parent);
    }

    /// Removes every edge into `child` (before it gets new parents).
    pub fn remove_parents_of(&mut self, child: &str) {
        if let Some(parents) = self.parents.remove(child) {
            for p in parents {
                remove_from(&mut self.children, &p, child);
            }
        }
    }

    /// Removes every edge touching `id`.
    pub fn remove_vertex(&mut self, id: &str) {
        self.remove_parents_of(id);
        if let Some(children) = self.children.remove(id) {
            for c in children {
                remove_from(&mut self.parents, &c, id);
            }
        }
    }

    /// Current parents of `child`.
    pub fn parents_of(&self, child: &str) -> impl Iterator<Item = &str> {
        self.parents
            .get(child)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.children.values().map(HashSet::len).sum()
    }

    /// Number of vertices with at least one edge.
    pub fn vertex_count(&self) -> usize {
        let mut ids: HashSet<&str> = self.children.keys().map(String::as_str).collect();
        ids.extend(self.parents.keys().map(String::as_str));
        ids.len()
    }

    /// Whether a path `from -> ... -> to` exists (iterative DFS; `from == to` counts).
    pub fn reaches(&self, from: &str, to: &str) -> bool {
        if from == to {
            return true;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack = vec![from];
        while let Some(v) = stack.pop() {
            for c in self.children.get(v).into_iter().flatten() {
                if c == to {
                    return true;
                }
                if seen.insert(c.as_str()) {
                    stack.push(c.as_str());
                }
            }
        }
        false
    }

    /// Whether the graph has a cycle (for tests; Kahn's algorithm).
    pub fn has_cycle(&self) -> bool {
        let mut indegree: HashMap<&str, usize> = HashMap::new();
        for (p, cs) in &self.children {
            indegree.entry(p.as_str()).or_insert(0);
            for c in cs {
                *indegree.entry(c.as_str()).or_insert(0) += 1;
            }
        }
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(v, _)| *v)
            .collect();
        let mut visited = 0;
        while let Some(v) = ready.pop() {
            visited += 1;
            for c in self.children.get(v).into_iter().flatten() {
                if let Some(d) = indegree.get_mut(c.as_str()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(c.as_str());
                    }
                }
            }
        }
        visited != indegree.len()
    }
}

fn remove_from(map: &mut HashMap<String, HashSet<String>>, key: &str, value: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_self_loops_and_cycles() {
        let mut dag = Dag::default();
        assert!(dag.add_edge("a", "b").is_ok());
        assert!(dag.add_edge("b", "c").is_ok());
        assert_eq!(dag.add_edge("a", "a"), Err(DagError::SelfLoop("a".into())));
        assert!(matches!(
            dag.add_edge("c", "a"),
            Err(DagError::Cycle { .. })
        ));
        assert!(!dag.can_add_edge("b", "a"));
        assert!(dag.can_add_edge("a", "c"));
        assert!(!dag.has_cycle());
        assert_eq!(dag.edge_count(), 2);
    }

    #[test]
    fn removing_vertices_frees_everything() {
        let mut dag = Dag::default();
        assert!(dag.add_edge("a", "b").is_ok());
        assert!(dag.add_edge("b", "c").is_ok());
        dag.remove_vertex("b");
        assert_eq!(dag.edge_count(), 0);
        assert_eq!(dag.vertex_count(), 0);
        assert!(dag.add_edge("c", "a").is_ok());
        dag.remove_parents_of("a");
        assert_eq!(dag.vertex_count(), 0);
    }

    proptest! {
        #[test]
        fn random_insertions_never_make_a_cycle(
            ops in proptest::collection::vec((0u8..12, 0u8..12, any::<bool>()), 0..200)
        ) {
            let mut dag = Dag::default();
            for (p, c, remove) in ops {
                let (p, c) = (p.to_string(), c.to_string());
                if remove {
                    dag.remove_vertex(&p);
                } else {
                    let allowed = dag.can_add_edge(&p, &c);
                    prop_assert_eq!(dag.add_edge(&p, &c).is_ok(), allowed);
                }
                prop_assert!(!dag.has_cycle());
            }
        }
    }
}
