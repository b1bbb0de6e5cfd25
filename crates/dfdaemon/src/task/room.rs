//! Room on disk for the bytes tasks write: made as bytes arrive, never for a length a source
//! merely claims.
//!
//! A source's `Content-Length` is chosen by whoever runs it, and any proxy client can point the
//! daemon at a source it runs. So a new task evicts nothing up front: it is admitted only when
//! its length could fit at all ([`Storage::room_for`]), and room is then made a little ahead of
//! the bytes actually being written ([`Room::reserve`], called before each piece). A source that
//! claims a lot and sends little costs the cache only what it sends; one that stalls holds at
//! most the pieces it has started, released when they time out.

use super::driver::blocking;
use crate::storage::{Eviction, GcPolicy, Storage, StorageError};
use dashmap::DashMap;
use dragonfly_common::task_id::TaskId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Room is made up to this many bytes ahead of the writes: one GC pass per this many bytes
/// written, not one per piece.
const AHEAD: u64 = 64 << 20;
/// ... and at most this share of the space the policy allows (a 64 MiB quota makes room one
/// piece at a time, so a stalled download never holds a large part of a small cache).
const AHEAD_SHARE: u64 = 64;
/// Room made and not taken within this long is made again: others may have filled the disk
/// meanwhile.
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// What keeps a task from eviction: being downloaded, or pinned by a reader.
#[derive(Clone)]
pub(crate) struct InUse {
    pub(crate) tasks: Arc<DashMap<TaskId, Arc<super::Task>>>,
    pub(crate) pins: Arc<DashMap<TaskId, usize>>,
}

impl InUse {
    pub(crate) fn contains(&self, id: &TaskId) -> bool {
        self.tasks.contains_key(id) || self.pins.contains_key(id)
    }
}

/// The node's room for incoming bytes. Clones share state.
#[derive(Clone)]
pub(crate) struct Room {
    storage: Storage,
    policy: Option<GcPolicy>,
    in_use: InUse,
    /// Finished blobs by digest (the engine's index), for evicted tasks to leave.
    blobs: Arc<DashMap<String, TaskId>>,
    sessions: Option<Arc<dyn super::Sessions>>,
    /// How far ahead room is made.
    ahead: u64,
    /// Room made by the last GC pass and not handed out yet, and when it was made.
    budget: Arc<tokio::sync::Mutex<(u64, Option<Instant>)>>,
    /// Bytes handed out for pieces being written (not yet in the stored tasks' usage).
    inflight: Arc<AtomicU64>,
    /// Counts the GC passes made here.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Room for one piece; given back when the piece is stored or abandoned.
pub(crate) struct Grant {
    inflight: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.inflight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Room {
    /// Count this room's GC passes in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub(crate) fn new(
        storage: Storage,
        policy: Option<GcPolicy>,
        in_use: InUse,
        sessions: Option<Arc<dyn super::Sessions>>,
    ) -> Self {
        // The space the policy allows: the quota, or the disk-used percent of the disk.
        let allowed = policy.as_ref().and_then(|p| {
            let by_percent = p.disk_used_percent.and_then(|pct| {
                let d = storage.disk_usage().ok()?;
                let total = d.used_bytes.saturating_add(d.available_bytes);
                Some((total as f64 * pct / 100.0) as u64)
            });
            match (p.quota_bytes, by_percent) {
                (Some(q), Some(b)) => Some(q.min(b)),
                (q, b) => q.or(b),
            }
        });
        let ahead = allowed.map_or(AHEAD, |a| (a / AHEAD_SHARE).min(AHEAD));
        Self {
            ahead,
            storage,
            policy,
            in_use,
            blobs: Arc::new(DashMap::new()),
            sessions,
            budget: Arc::new(tokio::sync::Mutex::new((0, None))),
            inflight: Arc::new(AtomicU64::new(0)),
            metrics: Arc::default(),
        }
    }

    /// Whether `needed` more bytes for `task` could be stored at all; evicts nothing.
    pub(crate) async fn admit(&self, task: &TaskId, needed: u64) -> Result<(), StorageError> {
        let (s, policy, task) = (self.storage.clone(), self.policy.clone(), task.clone());
        blocking(move || s.room_for(&task, policy.as_ref(), needed)).await
    }

    /// The finished blobs by digest (shared with the engine).
    pub(crate) fn blobs(&self) -> &Arc<DashMap<String, TaskId>> {
        &self.blobs
    }

    /// Evicted tasks leave the blob index and the schedulers' view of this host.
    pub(crate) fn forget(&self, evicted: &[Eviction]) {
        if evicted.is_empty() {
            return;
        }
        self.blobs
            .retain(|_, id| !evicted.iter().any(|e| &e.id == id));
        if let Some(s) = &self.sessions {
            for e in evicted {
                s.forget_task(&e.id);
            }
        }
    }

    /// Room for `bytes` about to be written: taken from what the last GC pass made, or made
    /// now (evicting the least recently used tasks GC may evict).
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<Grant, StorageError> {
        let grant = |inflight: &Arc<AtomicU64>| {
            inflight.fetch_add(bytes, Ordering::Relaxed);
            Grant {
                inflight: inflight.clone(),
                bytes,
            }
        };
        let Some(policy) = self.policy.clone() else {
            return Ok(grant(&self.inflight));
        };
        let mut budget = self.budget.lock().await;
        let fresh = budget.1.is_some_and(|t| t.elapsed() < BUDGET_TTL);
        if fresh && budget.0 >= bytes {
            budget.0 -= bytes;
            return Ok(grant(&self.inflight));
        }
        let ahead = bytes.max(self.ahead);
        let incoming = ahead.saturating_add(self.inflight.load(Ordering::Relaxed));
        let (s, in_use) = (self.storage.clone(), self.in_use.clone());
        let report = blocking(move || s.gc(&policy, &|id| in_use.contains(id), incoming)).await?;
        self.metrics.gc_ran(
            crate::metrics::GcTrigger::Admission,
            report.evicted.len(),
            report.bytes_freed,
        );
        *budget = (ahead - bytes, Some(Instant::now()));
        if !report.evicted.is_empty() {
            tracing::info!(
                evicted = report.evicted.len(),
                bytes_freed = report.bytes_freed,
                "made room for incoming bytes"
            );
            self.forget(&report.evicted);
        }
        Ok(grant(&self.inflight))
    }

    /// Bytes handed out for pieces being written.
    #[cfg(test)]
    pub(crate) fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewTask, TaskState};

    fn policy(quota: u64) -> GcPolicy {
        GcPolicy {
            task_ttl: Duration::ZERO,
            quota_bytes: Some(quota),
            disk_used_percent: None,
        }
    }

    fn id(n: u8) -> TaskId {
        format!("{:064x}", n).parse().unwrap()
    }

    /// A finished task of `len` bytes (pieces written as zeros).
    fn stored(s: &Storage, n: u8, len: u64) {
        s.create_task(NewTask {
            id: id(n),
            url: format!("http://o/{n}"),
            content_length: len,
            piece_length: 1 << 20,
            digest: None,
            validator: None,
        })
        .unwrap();
        s.start_task(&id(n)).unwrap();
        for p in 0..len.div_ceil(1 << 20) as u32 {
            let mut w = s.piece_writer(&id(n), p).unwrap();
            let l = w.range().length as usize;
            w.write(&vec![0u8; l]).unwrap();
            w.commit(None, None).unwrap();
        }
        s.finish_task(&id(n)).unwrap();
    }

    fn room(s: &Storage, quota: u64) -> Room {
        let in_use = InUse {
            tasks: Arc::new(DashMap::new()),
            pins: Arc::new(DashMap::new()),
        };
        Room::new(s.clone(), Some(policy(quota)), in_use, None)
    }

    #[tokio::test]
    async fn a_claim_that_cannot_fit_is_refused_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for n in 1..=3 {
            stored(&s, n, 4 << 20);
        }
        let r = room(&s, 16 << 20);
        let e = r.admit(&id(9), 1 << 40).await.unwrap_err();
        assert!(
            matches!(e, StorageError::NoRoom { needed, room, .. } if needed == 1 << 40 && room == 16 << 20),
            "{e}"
        );
        assert!(e.to_string().contains("storage.diskGCThreshold"), "{e}");
        assert_eq!(s.tasks().unwrap().len(), 3, "nothing was evicted");
        // What fits once stored tasks go is admitted, still without evicting anything.
        r.admit(&id(9), 15 << 20).await.unwrap();
        assert_eq!(s.tasks().unwrap().len(), 3);
        // Over the disk's free space plus every stored task: refused, naming the disk.
        let disk = || {
            Ok(crate::storage::DiskUsage {
                used_bytes: 100 << 20,
                available_bytes: 10 << 20,
            })
        };
        let e = s
            .room_for_with_disk(&id(9), None, 23 << 20, &disk)
            .unwrap_err();
        assert!(e.to_string().contains("free on the disk of"), "{e}");
        s.room_for_with_disk(&id(9), None, 22 << 20, &disk).unwrap();
    }

    #[tokio::test]
    async fn room_is_made_as_bytes_arrive_and_handed_back_with_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for n in 1..=4 {
            stored(&s, n, 32 << 20);
        }
        // 128 MiB stored under a 130 MiB quota: the first piece makes room for itself (room is
        // made at most 1/64 of the quota ahead), which evicts the least recently used task,
        // and only that one.
        let r = room(&s, 130 << 20);
        let ids = || {
            s.tasks()
                .unwrap()
                .iter()
                .map(|t| t.id.clone())
                .collect::<Vec<_>>()
        };
        let g = r.reserve(4 << 20).await.unwrap();
        assert_eq!(ids(), [id(2), id(3), id(4)]);
        assert_eq!(r.inflight(), 4 << 20);
        // Room for the next pieces: made again as each comes, evicting nothing while the
        // stored tasks and the pieces in flight fit.
        for _ in 0..4 {
            drop(r.reserve(4 << 20).await.unwrap());
        }
        assert_eq!(ids(), [id(2), id(3), id(4)]);
        // A second piece in flight with the first one: 96 + 4 + 4 fits in 130.
        let g2 = r.reserve(4 << 20).await.unwrap();
        assert_eq!(ids(), [id(2), id(3), id(4)]);
        assert_eq!(r.inflight(), 8 << 20);
        drop(g2);
        drop(g);
        assert_eq!(r.inflight(), 0, "every grant was handed back");
        assert!(
            s.tasks()
                .unwrap()
                .iter()
                .all(|t| t.state == TaskState::Finished)
        );
    }
}
