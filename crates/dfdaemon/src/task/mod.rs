//! The task engine: one download per task per node, however many callers join.
//!
//! A [`TaskManager`] owns the local [`Storage`], the origin client and the set of tasks in
//! flight. [`TaskManager::download`] returns a shared [`Task`] handle: callers watch its pieces
//! land ([`Task::wait_piece`], [`Task::subscribe`]) or read its bytes in order
//! ([`Task::reader`]). Pieces come from parents (other daemons' upload servers) when any are
//! known and have them, else from the source; every piece is verified (crc32) before it is
//! stored, and a parent that fails or lies is remembered and not asked again.

mod driver;
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

pub use parent::Parent;
pub use pieces::RemoteError;
pub use reader::TaskReader;
pub use session::{Answer, Outcome, SchedulerError, Session, Sessions};

use crate::source::error::DownloadError;
use crate::source::{HttpSource, SourceOptions};
use crate::storage::{PieceRecord, Storage, StorageError, TaskRecord};
use dashmap::DashMap;
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::piece::{LayoutError, PieceLayout};
use dragonfly_common::task_id::TaskId;
use http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

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

/// Why a task failed. Clone: every caller waiting on the task gets it; causes are shared.
#[derive(Debug, Clone)]
pub enum TaskError {
    /// The source failed (unreachable, bad response).
    Source(Arc<DownloadError>),
    /// Fetching pieces from the source failed for good.
    SourcePiece {
        /// The URL.
        url: String,
        /// What went wrong.
        source: Arc<RemoteError>,
    },
    /// The source gives neither a length nor Range support: it cannot be split into pieces
    /// (dfget downloads such a URL without the daemon).
    Unsplittable {
        /// The URL.
        url: String,
    },
    /// The piece length asked for does not fit the content.
    Layout {
        /// The URL.
        url: String,
        /// Why.
        source: Arc<LayoutError>,
    },
    /// No scheduler answered and going to the source is not allowed.
    NoScheduler {
        /// What the scheduler client said.
        why: String,
    },
    /// The client for parents could not be built.
    ParentClient(Arc<reqwest::Error>),
    /// The source answered with a non-2xx status (a proxy passes it on to its client).
    Status {
        /// The URL.
        url: String,
        /// The status code.
        code: u16,
        /// The `WWW-Authenticate` challenge of a 401, if any.
        challenge: Option<String>,
    },
    /// Local storage failed.
    Storage(Arc<StorageError>),
    /// The source's content changed while it was being downloaded (another `ETag`,
    /// `Last-Modified` or length); what was stored of it is dropped.
    SourceChanged {
        /// The URL.
        url: String,
        /// What changed, e.g. `ETag "v1" -> "v2"`.
        why: String,
    },
    /// A stored piece's bytes no longer match its crc32 (damaged on disk); it was dropped, so
    /// the next download fetches it again.
    DamagedPiece {
        /// The task id.
        task: String,
        /// The piece number.
        piece: u32,
    },
    /// A piece read for a caller no longer matches its crc32; it was dropped.
    DamagedOnRead {
        /// The task id.
        task: TaskId,
        /// The piece number.
        piece: u32,
        /// The crc32 of what was read.
        actual: u32,
        /// The crc32 recorded when it was stored.
        stored: u32,
    },
    /// Pieces a reader had passed on were dropped as untrustworthy: its copy is void.
    Rewritten {
        /// The task id.
        task: TaskId,
    },
    /// A piece number past the task's end was waited for.
    NoSuchPiece {
        /// The task id.
        task: TaskId,
        /// The piece number.
        piece: u32,
    },
    /// The content does not match the expected digest.
    DigestMismatch {
        /// The URL.
        url: String,
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// The content cannot be stored here however much is evicted (its length is over the
    /// quota or the disk); nothing stored was evicted for it. A proxy passes such a request
    /// through to its origin instead.
    NoRoom(Arc<StorageError>),
    /// The engine shut down.
    Shutdown,
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Source(e) => write!(f, "{e}"),
            TaskError::SourcePiece { url, source } => write!(f, "{url}: {source}"),
            TaskError::Unsplittable { url } => write!(
                f,
                "{url} gives neither a content length nor Range support; the daemon cannot split it into pieces"
            ),
            TaskError::Layout { url, source } => write!(f, "{url}: {source}"),
            TaskError::NoScheduler { why } => write!(
                f,
                "the scheduler is unreachable ({why}) and scheduler.disableAutoBackSource is set"
            ),
            TaskError::ParentClient(e) => write!(f, "cannot build the parent client: {e}"),
            TaskError::Status { url, code, .. } => {
                write!(f, "{url} answered {}", status_text(*code))
            }
            TaskError::Storage(e) => write!(f, "storage: {e}"),
            TaskError::SourceChanged { url, why } => write!(
                f,
                "{url} changed during the download ({why}); nothing of it was kept, try again"
            ),
            TaskError::DamagedPiece { task, piece } => write!(
                f,
                "piece {piece} of task {task} is damaged on disk; it was dropped and is fetched again"
            ),
            TaskError::DamagedOnRead {
                task,
                piece,
                actual,
                stored,
            } => write!(
                f,
                "piece {piece} of task {task} is damaged on disk (crc32 {actual:08x}, stored {stored:08x}); dropped, it is fetched again on the next request"
            ),
            TaskError::Rewritten { task } => write!(
                f,
                "task {task}: pieces already read were dropped as untrustworthy"
            ),
            TaskError::NoSuchPiece { task, piece } => {
                write!(f, "piece {piece} is not part of task {task}")
            }
            TaskError::DigestMismatch {
                url,
                expected,
                actual,
            } => write!(
                f,
                "digest mismatch for {url}: expected {expected}, got {actual}"
            ),
            TaskError::NoRoom(e) => write!(f, "{e}"),
            TaskError::Shutdown => f.write_str("the daemon is shutting down"),
        }
    }
}

/// The causes are shared (`Arc`) between the task's waiters; each is given as itself, so
/// [`dragonfly_common::error::is_caused_by`] finds it by its type.
impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TaskError::Source(e) => Some(&**e),
            TaskError::SourcePiece { source, .. } => Some(&**source),
            TaskError::Layout { source, .. } => Some(&**source),
            TaskError::ParentClient(e) => Some(&**e),
            TaskError::Storage(e) | TaskError::NoRoom(e) => Some(&**e),
            _ => None,
        }
    }
}

/// What kind of failure a [`TaskError`] is, for code that acts on it (never its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskErrorKind {
    /// The source failed or refused ([`TaskError::Source`], [`TaskError::SourcePiece`],
    /// [`TaskError::Status`], [`TaskError::Layout`]).
    Source,
    /// The source cannot be split into pieces.
    Unsplittable,
    /// No scheduler and no going to the source.
    NoScheduler,
    /// Local storage failed, or pieces were damaged or dropped.
    Storage,
    /// The content cannot be stored here.
    NoRoom,
    /// The source changed during the download.
    SourceChanged,
    /// The content does not match its digest.
    DigestMismatch,
    /// The engine shut down.
    Shutdown,
}

impl TaskError {
    /// The kind of failure.
    pub fn kind(&self) -> TaskErrorKind {
        match self {
            TaskError::Source(_)
            | TaskError::SourcePiece { .. }
            | TaskError::Status { .. }
            | TaskError::Layout { .. } => TaskErrorKind::Source,
            TaskError::Unsplittable { .. } => TaskErrorKind::Unsplittable,
            TaskError::NoScheduler { .. } => TaskErrorKind::NoScheduler,
            TaskError::ParentClient(_)
            | TaskError::Storage(_)
            | TaskError::DamagedPiece { .. }
            | TaskError::DamagedOnRead { .. }
            | TaskError::Rewritten { .. }
            | TaskError::NoSuchPiece { .. } => TaskErrorKind::Storage,
            TaskError::NoRoom(_) => TaskErrorKind::NoRoom,
            TaskError::SourceChanged { .. } => TaskErrorKind::SourceChanged,
            TaskError::DigestMismatch { .. } => TaskErrorKind::DigestMismatch,
            TaskError::Shutdown => TaskErrorKind::Shutdown,
        }
    }

    /// A failure of the blocking pool (a panic in a storage call), as a storage error.
    fn joined(e: tokio::task::JoinError) -> Self {
        TaskError::Storage(Arc::new(StorageError::Io {
            path: Default::default(),
            source: std::io::Error::other(e),
        }))
    }
}

/// `404 Not Found`: the code and its reason phrase.
fn status_text(code: u16) -> String {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{code} {reason}").trim_end().to_string()
}

impl From<StorageError> for TaskError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NoRoom { .. } => TaskError::NoRoom(Arc::new(e)),
            e => TaskError::Storage(Arc::new(e)),
        }
    }
}

/// Where a task is.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Learning the content length.
    Preparing,
    /// Fetching pieces.
    Running,
    /// Every piece stored and verified.
    Finished,
    /// Failed for good.
    Failed(TaskError),
}

/// A snapshot of a task's progress.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// The layout, once the length is known.
    pub layout: Option<PieceLayout>,
    /// Which pieces are stored.
    pub have: Vec<bool>,
    /// How many pieces are stored.
    pub done: u32,
    /// The phase.
    pub phase: Phase,
}

impl TaskView {
    fn new() -> Self {
        Self {
            layout: None,
            have: Vec::new(),
            done: 0,
            phase: Phase::Preparing,
        }
    }
}

/// One task as seen by its callers. Cheap to share.
pub struct Task {
    /// The task id.
    pub id: TaskId,
    /// The peer id of this node's download of it.
    pub peer_id: String,
    /// The source URL.
    pub url: String,
    storage: Storage,
    view: watch::Sender<TaskView>,
    pieces: broadcast::Sender<PieceRecord>,
    /// Digests callers said the content has (the first request's and every joiner's).
    claims: std::sync::Mutex<Vec<Digest>>,
    /// Digests computed of the finished content.
    digests: std::sync::Mutex<Vec<Digest>>,
    /// Bumped whenever stored pieces are dropped again (found untrustworthy), so a reader
    /// that already passed them on knows its copy is void.
    rewrites: std::sync::atomic::AtomicU64,
}

impl Task {
    fn new(id: TaskId, peer_id: String, url: String, storage: Storage) -> Arc<Self> {
        let (view, _) = watch::channel(TaskView::new());
        let (pieces, _) = broadcast::channel(1024);
        Arc::new(Self {
            id,
            peer_id,
            url,
            storage,
            view,
            pieces,
            claims: std::sync::Mutex::new(Vec::new()),
            digests: std::sync::Mutex::new(Vec::new()),
            rewrites: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Note a digest a caller expects (checked per caller once the task finished; the engine
    /// also uses the set to tell a lying parent from a caller's typo).
    pub fn claim(&self, digest: Option<&Digest>) {
        if let Some(d) = digest
            && let Ok(mut c) = self.claims.lock()
            && !c.contains(d)
        {
            c.push(d.clone());
        }
    }

    fn claims(&self) -> Vec<Digest> {
        self.claims.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The digests computed of the finished content so far.
    pub fn digests(&self) -> Vec<Digest> {
        self.digests.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set_digests(&self, digests: Vec<Digest>) {
        if let Ok(mut d) = self.digests.lock() {
            *d = digests;
        }
    }

    /// How often stored pieces of this task were dropped as untrustworthy; a reader that sees
    /// it change between its first and last byte must not complete its copy.
    pub fn rewrites(&self) -> u64 {
        self.rewrites.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The finished content's digest for `algorithm`: the one recorded at finish, or computed
    /// once from the stored file and remembered (in the task record too).
    pub async fn content_digest(&self, algorithm: Algorithm) -> Result<Digest, TaskError> {
        self.wait_finished().await?;
        if let Some(d) = self
            .digests()
            .into_iter()
            .find(|d| d.algorithm() == algorithm)
        {
            return Ok(d);
        }
        let (storage, id) = (self.storage.clone(), self.id.clone());
        let d = tokio::task::spawn_blocking(move || -> Result<Digest, TaskError> {
            let d = storage
                .hash_content(&id, 0, vec![algorithm.hasher()])?
                .map_err(|damaged| TaskError::DamagedPiece {
                    task: id.to_string(),
                    piece: damaged.number,
                })?
                .pop()
                .ok_or_else(|| {
                    TaskError::Storage(Arc::new(StorageError::Io {
                        path: storage.content_path(&id),
                        source: std::io::Error::other("no digest computed"),
                    }))
                })?;
            storage.add_content_digest(&id, &d.to_string())?;
            Ok(d)
        })
        .await
        .map_err(TaskError::joined)??;
        if let Ok(mut all) = self.digests.lock() {
            all.push(d.clone());
        }
        Ok(d)
    }

    /// Check a caller's expected digest against the finished content
    /// ([`Task::content_digest`] of its algorithm).
    pub async fn verify_digest(&self, expected: &Digest) -> Result<(), TaskError> {
        let actual = self.content_digest(expected.algorithm()).await?;
        if &actual == expected {
            Ok(())
        } else {
            Err(TaskError::DigestMismatch {
                url: self.url.clone(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            })
        }
    }

    /// The current progress.
    pub fn view(&self) -> TaskView {
        self.view.borrow().clone()
    }

    /// A receiver of progress changes.
    pub fn watch(&self) -> watch::Receiver<TaskView> {
        self.view.subscribe()
    }

    /// Pieces stored from now on (pair with [`Task::view`] for those stored before).
    pub fn subscribe(&self) -> broadcast::Receiver<PieceRecord> {
        self.pieces.subscribe()
    }

    /// The storage the task's bytes live in.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Wait for the layout (content length known) or failure.
    pub async fn layout(&self) -> Result<PieceLayout, TaskError> {
        let mut rx = self.view.subscribe();
        let v = rx
            .wait_for(|v| v.layout.is_some() || matches!(v.phase, Phase::Failed(_)))
            .await
            .map_err(|_| TaskError::Shutdown)?;
        match (&v.layout, &v.phase) {
            (Some(l), _) => Ok(*l),
            (None, Phase::Failed(e)) => Err(e.clone()),
            _ => Err(TaskError::Shutdown),
        }
    }

    /// Wait until piece `number` is stored, or the task failed.
    pub async fn wait_piece(&self, number: u32) -> Result<(), TaskError> {
        let mut rx = self.view.subscribe();
        let v = rx
            .wait_for(|v| {
                v.have.get(number as usize).copied().unwrap_or(false)
                    || matches!(v.phase, Phase::Failed(_) | Phase::Finished)
            })
            .await
            .map_err(|_| TaskError::Shutdown)?;
        if v.have.get(number as usize).copied().unwrap_or(false) {
            return Ok(());
        }
        match &v.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Err(TaskError::NoSuchPiece {
                task: self.id.clone(),
                piece: number,
            }),
        }
    }

    /// Wait until the task finished or failed.
    pub async fn wait_finished(&self) -> Result<(), TaskError> {
        let mut rx = self.view.subscribe();
        let v = rx
            .wait_for(|v| matches!(v.phase, Phase::Finished | Phase::Failed(_)))
            .await
            .map_err(|_| TaskError::Shutdown)?;
        match &v.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Read the bytes `[start, end)` in order as pieces land (`end: None` = to the end).
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> TaskReader {
        TaskReader::new(self.clone(), start, end)
    }

    fn set_layout(&self, layout: PieceLayout) {
        self.view.send_modify(|v| {
            v.layout = Some(layout);
            v.have = vec![false; layout.piece_count() as usize];
            v.phase = Phase::Running;
        });
    }

    fn piece_stored(&self, record: PieceRecord) {
        let n = record.number as usize;
        self.view.send_modify(|v| {
            if let Some(slot) = v.have.get_mut(n)
                && !*slot
            {
                *slot = true;
                v.done += 1;
            }
        });
        let _ = self.pieces.send(record);
    }

    /// Pieces dropped from storage (untrustworthy): no longer had.
    fn pieces_dropped(&self, numbers: &[u32]) {
        self.rewrites
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.view.send_modify(|v| {
            for &n in numbers {
                if let Some(slot) = v.have.get_mut(n as usize)
                    && *slot
                {
                    *slot = false;
                    v.done -= 1;
                }
            }
        });
    }

    fn set_phase(&self, phase: Phase) {
        self.view.send_modify(|v| v.phase = phase);
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
        );
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
