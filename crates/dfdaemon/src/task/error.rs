//! Why a task failed: [`TaskError`], shared by every caller waiting on the task, keeping its
//! cause; [`TaskErrorKind`] for code that acts on it.

use super::pieces::RemoteError;
use crate::source::error::DownloadError;
use crate::storage::StorageError;
use dragonfly_common::piece::LayoutError;
use dragonfly_common::task_id::TaskId;
use std::sync::Arc;

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
    pub(super) fn joined(e: tokio::task::JoinError) -> Self {
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
