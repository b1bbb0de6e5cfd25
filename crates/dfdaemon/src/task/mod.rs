//! The task engine: one download per task per node, however many callers join.
//!
//! A [`TaskManager`] owns the local [`Storage`], the origin client and the set of tasks in
//! flight. [`TaskManager::download`] returns a shared [`Task`] handle: callers watch its pieces
//! land ([`Task::wait_piece`], [`Task::subscribe`]) or read its bytes in order
//! ([`Task::reader`]). Pieces come from parents (other daemons' upload servers) when any are
//! known and have them, else from the source; every piece is verified (crc32) before it is
//! stored, and a parent that fails or lies is remembered and not asked again.
//!
//! The parts: `driver` runs one task as named steps (register, layout, admit, fetch, finish);
//! `parents` is its parent set; `picker` decides where each piece comes from and what to do
//! when that fails; `pieces` has the traits of the places pieces come from (a parent, the
//! source) with their real implementations; `lanes` stores a response's pieces and hashes them
//! on the way; `session` is what the engine needs from a scheduler ([`Sessions`], implemented
//! by `crate::scheduling`, passed in by the daemon) and its side of that conversation.

mod driver;
mod error;
mod handle;
mod lanes;
mod parent;
mod parents;
mod picker;
mod pieces;
mod reader;
mod room;
mod session;
mod version;

#[cfg(test)]
mod picker_tests;

pub use error::{TaskError, TaskErrorKind};
pub use handle::{Phase, Task, TaskView};
pub use parent::Parent;
pub use pieces::RemoteError;
pub use reader::TaskReader;
pub use session::{Answer, Outcome, SchedulerError, Session, Sessions};

use crate::source::{HttpSource, SourceOptions};
use crate::storage::{PieceRecord, Storage, StorageError, TaskRecord};
use dashmap::DashMap;
use dragonfly_common::digest::Digest;
use dragonfly_common::task_id::TaskId;
use http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This daemon's host id (peer ids are derived from it).
    pub host_id: String,
    /// Pieces in flight per task.
    pub concurrent_pieces: usize,
    /// Longest wait for one piece from a parent before trying elsewhere.
    pub piece_timeout: Duration,
    /// How long to wait for parents to say how long the content is before asking the source.
    pub parent_metadata_timeout: Duration,
    /// Origin client options.
    pub source: SourceOptions,
    /// Disk GC policy applied before a new task is stored (`None`: no GC on admission).
    pub gc: Option<crate::storage::GcPolicy>,
    /// Counters of the upload server (shared with the scheduler announcer).
    pub upload_stats: Arc<crate::stats::UploadStats>,
    /// Download rate limits (`download.totalRateLimit`, `download.perPeerRateLimit`).
    pub download_limits: crate::rate::DownloadLimits,
    /// The daemon's metrics (tasks, pieces, bytes by source, GC).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            host_id: "local".to_string(),
            concurrent_pieces: 16,
            piece_timeout: Duration::from_secs(30),
            parent_metadata_timeout: Duration::from_secs(5),
            source: SourceOptions::default(),
            gc: None,
            upload_stats: Arc::default(),
            download_limits: Default::default(),
            metrics: Arc::default(),
        }
    }
}

/// What to download.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// The source URL.
    pub url: String,
    /// Headers sent to the source.
    pub headers: HeaderMap,
    /// Task tag (different tags make different tasks of one URL).
    pub tag: String,
    /// Application name (part of the task id).
    pub application: String,
    /// Piece length; `None` picks it from the content length.
    pub piece_length: Option<u64>,
    /// Expected digest of the whole content.
    pub digest: Option<Digest>,
    /// Query parameters left out of the task id (signed-URL noise).
    pub filtered_query_params: Vec<String>,
    /// Use this task id instead of deriving one from the URL (e.g. an OCI blob digest).
    pub task_id: Option<TaskId>,
    /// Parents to fetch pieces from before going to the source.
    pub parents: Vec<Parent>,
    /// Origin client for this task (e.g. with a registry's own CA); `None` uses the engine's.
    pub source: Option<HttpSource>,
    /// A client streams the bytes in order (the proxy): fetch the first pieces first, so the
    /// time to first byte does not depend on where a swarm task starts.
    pub streaming: bool,
}

impl TaskRequest {
    /// The request with any `user:password@` taken out of its URL and sent as an
    /// `Authorization: Basic` header instead (unless it has one), so credentials never reach a
    /// log, the metadata, a scheduler's view of the URL or the task id.
    pub fn without_userinfo(mut self) -> Self {
        let url = std::mem::take(&mut self.url);
        self.url = crate::source::oras::userinfo_to_authorization(url, &mut self.headers);
        self
    }

    /// The task id this request maps to.
    pub fn task_id(&self) -> TaskId {
        self.task_id.clone().unwrap_or_else(|| {
            TaskId::for_url(
                &self.url,
                &self.tag,
                &self.application,
                self.piece_length,
                &self.filtered_query_params,
            )
        })
    }

    /// The digest this request's task is keyed by (an OCI blob task: [`TaskId::for_blob`]),
    /// if it is one.
    pub fn blob_digest(&self) -> Option<&Digest> {
        self.digest
            .as_ref()
            .filter(|d| self.task_id.as_ref() == Some(&TaskId::for_blob(d, &self.url)))
    }
}

struct Inner {
    storage: Storage,
    source: HttpSource,
    opts: EngineOptions,
    tasks: Arc<DashMap<TaskId, Arc<Task>>>,
    pins: Arc<DashMap<TaskId, usize>>,
    room: room::Room,
    /// Finished blob tasks by digest, whatever origin they came from (a hint: the record is
    /// read again before it is served).
    blobs: Arc<DashMap<String, TaskId>>,
    parents: parent::ParentClient,
    sessions: Option<Arc<dyn Sessions>>,
}

/// Finished means every piece is stored and the whole content matched the digest the task was
/// keyed by; the sha256 recorded at finish must be it too (records from before it was kept
/// have none).
fn verified_blob(r: &TaskRecord, digest: &str) -> bool {
    r.digest.as_deref() == Some(digest) && r.content_digest("sha256").is_none_or(|d| d == digest)
}

/// Keeps a task from being evicted while it is served; released on drop.
pub struct TaskPin {
    pins: Arc<DashMap<TaskId, usize>>,
    id: TaskId,
}

impl Drop for TaskPin {
    fn drop(&mut self) {
        // Decrement and remove at zero under the entry's lock, so pins never leak.
        if let dashmap::Entry::Occupied(mut e) = self.pins.entry(self.id.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// The node's task engine. Clones share state.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl TaskManager {
    /// An engine over `storage` (parents only from each request, no scheduler).
    pub fn new(storage: Storage, opts: EngineOptions) -> Result<Self, TaskError> {
        Self::with_sessions(storage, opts, None)
    }

    /// An engine over `storage` whose tasks ask the schedulers (`sessions`, implemented by the
    /// scheduler client) for parents.
    pub fn with_sessions(
        storage: Storage,
        opts: EngineOptions,
        sessions: Option<Arc<dyn Sessions>>,
    ) -> Result<Self, TaskError> {
        let source = HttpSource::new(&opts.source).map_err(|e| TaskError::Source(Arc::new(e)))?;
        let parents = parent::ParentClient::new(&opts)?;
        let in_use = room::InUse {
            tasks: Arc::new(DashMap::new()),
            pins: Arc::new(DashMap::new()),
        };
        let room = room::Room::new(
            storage.clone(),
            opts.gc.clone(),
            in_use.clone(),
            sessions.clone(),
        )
        .with_metrics(opts.metrics.clone());
        let blobs = room.blobs().clone();
        for r in storage.tasks()?.into_iter().filter(|r| r.is_finished()) {
            // Blob tasks, and those an older daemon keyed by the digest alone.
            if let Some(d) = r.digest.as_deref().and_then(|d| d.parse::<Digest>().ok())
                && (TaskId::for_blob(&d, &r.url) == r.id || TaskId::legacy_blob_v1(&d) == r.id)
            {
                blobs.insert(d.to_string(), r.id);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                storage,
                source,
                opts,
                tasks: in_use.tasks,
                pins: in_use.pins,
                room,
                blobs,
                parents,
                sessions,
            }),
        })
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The upload server's counters.
    pub fn upload_stats(&self) -> &crate::stats::UploadStats {
        &self.inner.opts.upload_stats
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.opts.metrics
    }

    /// Tell the scheduler that GC evicted these tasks here.
    pub fn evicted(&self, evicted: &[crate::storage::Eviction]) {
        self.inner.room.forget(evicted);
    }

    /// This node's host id.
    pub fn host_id(&self) -> &str {
        &self.inner.opts.host_id
    }

    /// The task in flight with this id, if any.
    pub fn running(&self, id: &TaskId) -> Option<Arc<Task>> {
        self.inner.tasks.get(id).map(|t| t.clone())
    }

    /// Whether a task is being downloaded right now (GC must not evict it).
    pub fn is_running(&self, id: &TaskId) -> bool {
        self.inner.tasks.contains_key(id)
    }

    /// Mark the task in use (being served) until the pin is dropped.
    pub fn pin(&self, id: &TaskId) -> TaskPin {
        *self.inner.pins.entry(id.clone()).or_insert(0) += 1;
        TaskPin {
            pins: self.inner.pins.clone(),
            id: id.clone(),
        }
    }

    /// Whether GC must keep the task: being downloaded or served.
    pub fn in_use(&self, id: &TaskId) -> bool {
        self.inner.tasks.contains_key(id) || self.inner.pins.contains_key(id)
    }

    /// The finished task holding the blob `digest` fetched from another origin than `own`'s,
    /// with its pieces: content checked against the digest when it finished.
    async fn stored_blob_elsewhere(
        &self,
        digest: &Digest,
        own: &TaskId,
    ) -> Result<Option<(TaskId, TaskRecord, Vec<PieceRecord>)>, TaskError> {
        let Some(other) = self
            .inner
            .blobs
            .get(&digest.to_string())
            .map(|e| e.value().clone())
            .filter(|other| other != own)
        else {
            return Ok(None);
        };
        let (storage, want) = (self.inner.storage.clone(), digest.to_string());
        let found = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            match storage.task(&other)? {
                Some(r) if r.is_finished() && verified_blob(&r, &want) => {
                    let pieces = storage.pieces(&other)?;
                    Ok(Some((other, r, pieces)))
                }
                _ => Ok(None),
            }
        })
        .await
        .map_err(TaskError::joined)??;
        if found.is_none() {
            self.inner
                .blobs
                .remove_if(&digest.to_string(), |_, v| v != own);
        }
        Ok(found)
    }

    /// The finished record of the blob `digest` as the proxy would fetch it from `url`: this
    /// origin's task, else the same blob finished here from another origin.
    pub async fn stored_blob(&self, digest: &Digest, url: &str) -> Option<(TaskId, TaskRecord)> {
        let own = TaskId::for_blob(digest, url);
        let candidates: Vec<TaskId> = std::iter::once(own.clone())
            .chain(
                self.inner
                    .blobs
                    .get(&digest.to_string())
                    .map(|e| e.value().clone())
                    .filter(|o| o != &own),
            )
            .collect();
        let (storage, want) = (self.inner.storage.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .find_map(|id| match storage.task(&id) {
                    Ok(Some(r)) if r.is_finished() && verified_blob(&r, &want) => Some((id, r)),
                    _ => None,
                })
        })
        .await
        .ok()
        .flatten()
    }

    /// Remember a blob task that finished (its content matched its digest).
    pub(crate) fn blob_finished(&self, digest: &Digest, id: &TaskId) {
        self.inner.blobs.insert(digest.to_string(), id.clone());
    }

    /// Start or join the download of `req`; a finished task in storage is served as is.
    pub async fn download(&self, req: TaskRequest) -> Result<Arc<Task>, TaskError> {
        let req = req.without_userinfo();
        let id = req.task_id();
        if let Some(t) = self.running(&id) {
            t.claim(req.digest.as_ref());
            return Ok(t);
        }
        let storage = self.inner.storage.clone();
        let lookup = id.clone();
        let (record, pieces) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let record = storage.task(&lookup)?;
            let pieces = match &record {
                Some(r) if r.is_finished() => storage.pieces(&lookup)?,
                _ => Vec::new(),
            };
            Ok((record, pieces))
        })
        .await
        .map_err(TaskError::joined)??;
        let stored = match record.filter(|r| r.is_finished()) {
            Some(r) => Some((id.clone(), r, pieces)),
            // A blob finished here from another origin: its content matched the digest.
            None => match req.blob_digest() {
                Some(d) => self.stored_blob_elsewhere(d, &id).await?,
                None => None,
            },
        };
        if let Some((id, record, pieces)) = stored {
            let task = Task::new(
                id.clone(),
                self.peer_id(&id),
                req.url.clone(),
                self.inner.storage.clone(),
            );
            task.set_layout(record.layout()?);
            for p in pieces {
                task.piece_stored(p);
            }
            task.set_digests(
                record
                    .content_digests
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
            );
            task.claim(req.digest.as_ref());
            task.set_phase(Phase::Finished);
            let storage = self.inner.storage.clone();
            let _ = tokio::task::spawn_blocking(move || storage.touch(&id)).await;
            self.inner.opts.metrics.task_local(record.content_length);
            tracing::info!(task = %task.id, peer = %task.peer_id, "task served from local storage");
            return Ok(task);
        }
        let entry = self.inner.tasks.entry(id.clone());
        let task = match entry {
            dashmap::Entry::Occupied(o) => {
                o.get().claim(req.digest.as_ref());
                return Ok(o.get().clone());
            }
            dashmap::Entry::Vacant(v) => {
                let task = Task::new(
                    id.clone(),
                    self.peer_id(&id),
                    req.url.clone(),
                    self.inner.storage.clone(),
                );
                task.claim(req.digest.as_ref());
                v.insert(task.clone());
                task
            }
        };
        let engine = self.clone();
        let t = task.clone();
        tokio::spawn(async move { driver::drive(engine, t, req).await });
        Ok(task)
    }

    fn peer_id(&self, id: &TaskId) -> String {
        format!(
            "{}-{}-{:08x}",
            self.inner.opts.host_id,
            &id.as_str()[..8],
            rand::random::<u32>()
        )
    }
}
