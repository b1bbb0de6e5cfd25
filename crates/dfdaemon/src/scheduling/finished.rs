//! Finished-task sync: the schedulers learn which tasks this host holds whole without a download.
//!
//! A scheduler forgets every peer when it restarts, and a task that moves to another scheduler on
//! the ring (one went down, came back, or `scheduler.netAddrs` changed with a daemon restart)
//! arrives where nobody holds it. Either way new peers would go to the origin although this host
//! has the file. So this host sends `AnnounceFinishedTasks`, in batches of [`BATCH`], to:
//! - a scheduler whose AnnounceHost answer says it did not know this host (restart, host expiry,
//!   first contact): every finished task whose id hashes to it;
//! - a scheduler that tasks moved to because the set of reachable schedulers changed: those tasks.
//!
//! A scheduler older than the RPC answers UNIMPLEMENTED and is not asked again.

use super::{CONNECT_TIMEOUT, Node, Schedulers};
use crate::storage::Storage;
use dragonfly_common::hashring;
use dragonfly_proto::scheduler::v1::{AnnounceFinishedTasksRequest, FinishedTask};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Tasks per request: about 80 bytes each on the wire, so about 80 KB a request.
pub const BATCH: usize = 1000;

/// Pause after a change before a round, so a restart seen as "down" then "back" makes one round.
const SETTLE: Duration = Duration::from_millis(200);

/// Which tasks go to which scheduler (by index) in one round. `before` and `now` say which
/// schedulers were and are reachable; `wants_all` which asked for everything they own.
pub fn plan(
    tasks: &[FinishedTask],
    addrs: &[&str],
    before: &[bool],
    now: &[bool],
    wants_all: &[bool],
) -> Vec<Vec<FinishedTask>> {
    let mut out = vec![Vec::new(); addrs.len()];
    for t in tasks {
        let ranking = hashring::ranking(&t.task_id, addrs);
        let owner = |up: &[bool]| ranking.iter().copied().find(|i| up[*i]);
        let Some(to) = owner(now) else {
            continue;
        };
        if wants_all[to] || owner(before) != Some(to) {
            out[to].push(t.clone());
        }
    }
    out
}

impl Schedulers {
    /// Which schedulers answered their last call.
    fn reachable(&self) -> Vec<bool> {
        let nodes = &self.inner.nodes;
        nodes
            .iter()
            .map(|n| {
                n.reachable.load(Ordering::Relaxed) && !n.no_finished_sync.load(Ordering::Relaxed)
            })
            .collect()
    }

    /// Keep the schedulers told which finished tasks of `storage` this host holds, until `shutdown`.
    pub async fn run_finished_sync(
        self,
        storage: Storage,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut before = self.reachable();
        loop {
            let wants: Vec<bool> = self
                .inner
                .nodes
                .iter()
                .map(|n| {
                    n.wants_finished.swap(false, Ordering::Relaxed)
                        && !n.no_finished_sync.load(Ordering::Relaxed)
                })
                .collect();
            let now = self.reachable();
            if wants.iter().any(|w| *w) || now != before {
                self.sync_round(&storage, &before, &now, &wants).await;
                before = now;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.changed.notified() => {}
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(SETTLE) => {}
            }
        }
    }

    async fn sync_round(&self, storage: &Storage, before: &[bool], now: &[bool], wants: &[bool]) {
        let s = storage.clone();
        let listed = tokio::task::spawn_blocking(move || s.tasks()).await;
        let records = match listed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!("listing the finished tasks for the schedulers: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!("listing the finished tasks for the schedulers: {e}");
                return;
            }
        };
        let tasks: Vec<FinishedTask> = records
            .into_iter()
            .filter(|r| r.is_finished())
            .map(|r| FinishedTask {
                task_id: r.id.to_string(),
                content_length: r.content_length,
                piece_length: r.piece_length,
                piece_count: r.piece_count,
            })
            .collect();
        let addrs: Vec<&str> = self.inner.nodes.iter().map(|n| n.addr.as_str()).collect();
        let plan = plan(&tasks, &addrs, before, now, wants);
        for (node, tasks) in self.inner.nodes.iter().zip(plan) {
            if !tasks.is_empty() {
                self.send_finished(node, tasks).await;
            }
        }
    }

    /// Sends `tasks` to `node` in batches; on failure the node asks again once it answers.
    async fn send_finished(&self, node: &Node, tasks: Vec<FinishedTask>) {
        let started = tokio::time::Instant::now();
        let (mut recorded, mut skipped) = (0u64, 0u64);
        for batch in tasks.chunks(BATCH) {
            let req = AnnounceFinishedTasksRequest {
                host_id: self.host_id().to_string(),
                tasks: batch.to_vec(),
            };
            let mut client = node.client.clone();
            let call = client.announce_finished_tasks(req);
            match tokio::time::timeout(CONNECT_TIMEOUT * 5, call).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    recorded += u64::from(r.recorded);
                    skipped += u64::from(r.skipped);
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(scheduler = %node.addr, "scheduler does not take finished tasks (older version)");
                    node.no_finished_sync.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(Err(status)) => {
                    tracing::warn!(scheduler = %node.addr, error = %status.message(), "sending finished tasks failed; again after the next announce");
                    // Unknown host: re-announce first; its answer asks for the tasks again.
                    node.announced.store(false, Ordering::Relaxed);
                    node.wants_finished.store(true, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    tracing::warn!(scheduler = %node.addr, "sending finished tasks timed out");
                    node.wants_finished.store(true, Ordering::Relaxed);
                    node.mark(false);
                    return;
                }
            }
        }
        tracing::info!(scheduler = %node.addr, tasks = tasks.len(), recorded, skipped, elapsed = ?started.elapsed(), "finished tasks sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(n: usize) -> Vec<FinishedTask> {
        (0..n)
            .map(|i| FinishedTask {
                task_id: format!("{i:064x}"),
                content_length: 1,
                piece_length: 1,
                piece_count: 1,
            })
            .collect()
    }

    fn ids(v: &[FinishedTask]) -> Vec<&str> {
        v.iter().map(|t| t.task_id.as_str()).collect()
    }

    #[test]
    fn a_scheduler_that_forgot_the_host_gets_exactly_the_tasks_it_owns() {
        let all = tasks(200);
        let addrs = ["a:1", "b:2", "c:3"];
        let up = [true; 3];
        let p = plan(&all, &addrs, &up, &up, &[false, true, false]);
        assert!(p[0].is_empty() && p[2].is_empty());
        let owned: Vec<&str> = all
            .iter()
            .filter(|t| hashring::ranking(&t.task_id, &addrs)[0] == 1)
            .map(|t| t.task_id.as_str())
            .collect();
        assert!(!owned.is_empty());
        assert_eq!(ids(&p[1]), owned);
        // Nothing changed, nobody asked: nothing is sent.
        let p = plan(&all, &addrs, &up, &up, &[false; 3]);
        assert!(p.iter().all(Vec::is_empty));
    }

    #[test]
    fn when_a_scheduler_goes_down_only_its_tasks_move_and_each_to_its_next_in_ranking() {
        let all = tasks(300);
        let addrs = ["a:1", "b:2", "c:3"];
        let before = [true; 3];
        let now = [true, false, true];
        let p = plan(&all, &addrs, &before, &now, &[false; 3]);
        assert!(p[1].is_empty());
        let mut moved = 0;
        for t in &all {
            let r = hashring::ranking(&t.task_id, &addrs);
            let sent_to: Vec<usize> = (0..3)
                .filter(|i| ids(&p[*i]).contains(&t.task_id.as_str()))
                .collect();
            if r[0] == 1 {
                assert_eq!(
                    sent_to,
                    vec![r[1]],
                    "{} moves to its next scheduler",
                    t.task_id
                );
                moved += 1;
            } else {
                assert!(sent_to.is_empty(), "{} did not move", t.task_id);
            }
        }
        assert!(moved > 0);
        // It comes back without having restarted: its tasks move back to it.
        let back = plan(&all, &addrs, &now, &before, &[false; 3]);
        assert_eq!(back[1].len(), moved);
        assert!(back[0].is_empty() && back[2].is_empty());
        // No scheduler reachable: nothing to send.
        let none = plan(&all, &addrs, &before, &[false; 3], &[true; 3]);
        assert!(none.iter().all(Vec::is_empty));
    }
}
