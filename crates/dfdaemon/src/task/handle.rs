//! A task as its callers see it ([`Task`]): its progress ([`TaskView`], [`Phase`]), its pieces
//! as they land, its bytes in order, and the digests of the finished content.

use super::{TaskError, TaskReader};
use crate::storage::{PieceRecord, Storage, StorageError};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

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
    pub(super) fn new() -> Self {
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
    pub(super) fn new(id: TaskId, peer_id: String, url: String, storage: Storage) -> Arc<Self> {
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

    pub(super) fn claims(&self) -> Vec<Digest> {
        self.claims.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The digests computed of the finished content so far.
    pub fn digests(&self) -> Vec<Digest> {
        self.digests.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub(super) fn set_digests(&self, digests: Vec<Digest>) {
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

    pub(super) fn set_layout(&self, layout: PieceLayout) {
        self.view.send_modify(|v| {
            v.layout = Some(layout);
            v.have = vec![false; layout.piece_count() as usize];
            v.phase = Phase::Running;
        });
    }

    pub(super) fn piece_stored(&self, record: PieceRecord) {
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
    pub(super) fn pieces_dropped(&self, numbers: &[u32]) {
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

    pub(super) fn set_phase(&self, phase: Phase) {
        self.view.send_modify(|v| v.phase = phase);
    }
}
