//! Talking to the schedulers: announce this host, and open one `AnnouncePeer` stream per task
//! to get parents and report progress.
//!
//! Tasks are spread over the configured schedulers by rendezvous hashing of the task id
//! ([`dragonfly_common::hashring`]), so every daemon sends a given task to the same scheduler and
//! that scheduler sees the whole swarm of the task. A scheduler that does not answer is marked
//! down for a while and the task goes to the next one in its ranking; when none answers, the
//! caller downloads from the source (no download fails because the scheduler is gone).
//!
//! What this host holds survives a scheduler restart or a move on the ring: see [`finished`].

pub mod finished;
mod session;

pub use session::{PeerLink, piece_report};

use dragonfly_common::hashring;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::SchedulerClient;
use dragonfly_proto::common::v1::{Download, Host};
use dragonfly_proto::scheduler::v1::{
    AnnounceHostRequest, AnnouncePeerRequest, DeleteTaskRequest, HOST_UNKNOWN_HEADER,
    LeaveHostRequest, RegisterPeerRequest, announce_peer_request,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// How long a scheduler that failed is skipped before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// Connect timeout to a scheduler.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reports queued per task before new ones are dropped (the scheduler is too slow to read them).
const REPORT_QUEUE: usize = 4096;

/// Settings of the scheduler client.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// `host:port` of every scheduler.
    pub addrs: Vec<String>,
    /// Longest wait for an answer (register or reschedule) before going to the source.
    pub schedule_timeout: Duration,
    /// How often the host is announced.
    pub announce_interval: Duration,
    /// What is announced about this host.
    pub host: Host,
    /// Fail a download instead of going to the source when no scheduler answers
    /// (`scheduler.disableAutoBackSource`).
    pub disable_auto_back_source: bool,
    /// The upload server's counters, announced with the host.
    pub upload_stats: Arc<crate::stats::UploadStats>,
}

/// Why no scheduler could be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no scheduler answered: {0}")]
pub struct Unreachable(pub String);

struct Node {
    addr: String,
    client: SchedulerClient<Channel>,
    down_until: Mutex<Option<Instant>>,
    /// The scheduler has this host's last announce. Cleared when a call or stream to it fails
    /// (it may have restarted and forgotten the host); the next registration re-announces first.
    announced: Arc<AtomicBool>,
    /// The last call to it succeeded (unlike `down_until`, this does not expire by itself): the
    /// ring the finished-task sync hashes tasks over.
    reachable: AtomicBool,
    /// The scheduler did not know this host: it wants every finished task that hashes to it.
    wants_finished: AtomicBool,
    /// It answered UNIMPLEMENTED to AnnounceFinishedTasks (an older scheduler).
    no_finished_sync: AtomicBool,
    /// Wakes the finished-task sync (a scheduler became reachable or unreachable, or wants tasks).
    changed: Arc<tokio::sync::Notify>,
}

impl Node {
    fn is_down(&self) -> bool {
        let g = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        g.is_some_and(|t| Instant::now() < t)
    }

    fn mark(&self, up: bool) {
        let mut g = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = g.is_some();
        *g = (!up).then(|| Instant::now() + DOWN_FOR);
        if self.reachable.swap(up, Ordering::Relaxed) != up {
            self.changed.notify_one();
        }
        if up && was_down {
            tracing::info!(scheduler = %self.addr, "scheduler is back");
        } else if !up && !was_down {
            tracing::warn!(scheduler = %self.addr, "scheduler is down; skipping it for {DOWN_FOR:?}");
        }
    }
}

/// The schedulers of this daemon. Clones share connections.
#[derive(Clone)]
pub struct Schedulers {
    inner: Arc<Inner>,
}

struct Inner {
    opts: SchedulerOptions,
    nodes: Vec<Node>,
    changed: Arc<tokio::sync::Notify>,
}

impl Schedulers {
    /// Clients for `opts.addrs` (connections are made on first use).
    pub fn new(opts: SchedulerOptions) -> Result<Self, String> {
        let mut nodes = Vec::with_capacity(opts.addrs.len());
        let changed = Arc::new(tokio::sync::Notify::new());
        for addr in &opts.addrs {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("scheduler address {addr:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            nodes.push(Node {
                addr: addr.clone(),
                client: SchedulerClient::new(endpoint.connect_lazy()),
                down_until: Mutex::new(None),
                announced: Arc::new(AtomicBool::new(false)),
                reachable: AtomicBool::new(false),
                wants_finished: AtomicBool::new(false),
                no_finished_sync: AtomicBool::new(false),
                changed: changed.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                nodes,
                changed,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &SchedulerOptions {
        &self.inner.opts
    }

    /// This host's id as announced.
    pub fn host_id(&self) -> &str {
        &self.inner.opts.host.id
    }

    /// Scheduler addresses in the order `task` tries them.
    pub fn ranking(&self, task: &TaskId) -> Vec<&str> {
        self.order(task)
            .into_iter()
            .map(|i| self.inner.nodes[i].addr.as_str())
            .collect()
    }

    /// Indices of the schedulers in the order `task` tries them (rendezvous hashing).
    fn order(&self, task: &TaskId) -> Vec<usize> {
        let addrs: Vec<&str> = self.inner.nodes.iter().map(|n| n.addr.as_str()).collect();
        hashring::ranking(task.as_str(), &addrs)
    }

    /// Announce this host to every scheduler once; returns how many accepted it.
    pub async fn announce_once(&self) -> usize {
        let calls = self.inner.nodes.iter().map(|node| self.announce_to(node));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    async fn announce_to(&self, node: &Node) -> bool {
        let mut host = self.inner.opts.host.clone();
        let stats = &self.inner.opts.upload_stats;
        host.concurrent_upload_count = stats.in_flight.load(Ordering::Relaxed);
        host.upload_count = stats.pieces.load(Ordering::Relaxed);
        host.upload_failed_count = stats.failed.load(Ordering::Relaxed);
        let req = AnnounceHostRequest {
            host: Some(host),
            interval: prost_types::Duration::try_from(self.inner.opts.announce_interval).ok(),
        };
        let mut client = node.client.clone();
        let r = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.announce_host(tonic::Request::new(req)),
        )
        .await;
        let ok = match r {
            Ok(Ok(resp)) => {
                if resp.metadata().get(HOST_UNKNOWN_HEADER).is_some() {
                    tracing::info!(scheduler = %node.addr, "scheduler did not know this host; sending it the finished tasks it owns");
                    node.wants_finished.store(true, Ordering::Relaxed);
                    node.changed.notify_one();
                }
                true
            }
            Ok(Err(status)) => {
                tracing::debug!(scheduler = %node.addr, error = %status.message(), "announce host failed");
                false
            }
            Err(_) => {
                tracing::debug!(scheduler = %node.addr, "announce host timed out");
                false
            }
        };
        node.mark(ok);
        node.announced.store(ok, Ordering::Relaxed);
        ok
    }

    /// Announce this host every `announce_interval` until `shutdown`, then leave every scheduler.
    pub async fn run_announcer(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.inner.opts.announce_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => { self.announce_once().await; }
            }
        }
        self.leave().await;
    }

    /// Tell every scheduler this host is going away (best effort, bounded).
    pub async fn leave(&self) {
        let id = self.inner.opts.host.id.clone();
        let calls = self.inner.nodes.iter().map(|node| {
            let mut client = node.client.clone();
            let req = LeaveHostRequest {
                host_id: id.clone(),
            };
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.leave_host(req)).await;
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Tell the scheduler owning `task` that this host no longer holds it (local GC evicted it),
    /// so it stops offering this host as a parent. Best effort, in the background.
    pub fn forget_task(&self, task: &TaskId) {
        let order = self.order(task);
        let Some(i) = order
            .iter()
            .copied()
            .find(|i| !self.inner.nodes[*i].is_down())
        else {
            return;
        };
        let mut client = self.inner.nodes[i].client.clone();
        let req = DeleteTaskRequest {
            host_id: self.host_id().to_string(),
            task_id: task.to_string(),
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.delete_task(req)).await;
        });
    }

    /// Register a peer of `task` with the scheduler that owns it (skipping those that do not
    /// answer) and return the open stream. The first answer is read with [`PeerLink::answer`].
    pub async fn register(
        &self,
        task: &TaskId,
        peer_id: &str,
        download: Download,
    ) -> Result<PeerLink, Unreachable> {
        let order = self.order(task);
        // Schedulers believed up first, in ranking order; those marked down as a last resort.
        let (up, down): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .partition(|i| !self.inner.nodes[*i].is_down());
        let mut errors = Vec::new();
        for i in up.into_iter().chain(down) {
            let node = &self.inner.nodes[i];
            if !node.announced.load(Ordering::Relaxed) && !self.announce_to(node).await {
                errors.push(format!("{}: does not take this host's announce", node.addr));
                continue;
            }
            let (tx, rx) = mpsc::channel(REPORT_QUEUE);
            let first = AnnouncePeerRequest {
                host_id: self.host_id().to_string(),
                task_id: task.to_string(),
                peer_id: peer_id.to_string(),
                request: Some(announce_peer_request::Request::RegisterPeerRequest(
                    RegisterPeerRequest {
                        download: Some(download.clone()),
                    },
                )),
            };
            if tx.try_send(first).is_err() {
                continue;
            }
            let mut client = node.client.clone();
            let call = client.announce_peer(ReceiverStream::new(rx));
            match tokio::time::timeout(self.inner.opts.schedule_timeout, call).await {
                Ok(Ok(resp)) => {
                    node.mark(true);
                    return Ok(PeerLink {
                        host_id: self.host_id().to_string(),
                        task_id: task.to_string(),
                        peer_id: peer_id.to_string(),
                        scheduler: node.addr.clone(),
                        tx,
                        rx: resp.into_inner(),
                        dropped: 0,
                        announced: node.announced.clone(),
                    });
                }
                Ok(Err(status)) => {
                    node.mark(false);
                    node.announced.store(false, Ordering::Relaxed);
                    errors.push(format!("{}: {}", node.addr, status.message()));
                }
                Err(_) => {
                    node.mark(false);
                    node.announced.store(false, Ordering::Relaxed);
                    errors.push(format!(
                        "{}: no answer within {:?} (scheduler.scheduleTimeout)",
                        node.addr, self.inner.opts.schedule_timeout
                    ));
                }
            }
        }
        Err(Unreachable(if errors.is_empty() {
            "no scheduler is configured".to_string()
        } else {
            errors.join("; ")
        }))
    }
}
