//! Errors of the local storage.

use dragonfly_common::piece::LayoutError;
use dragonfly_common::task_id::TaskId;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong in [`Storage`](super::Storage).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("storage I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("storage metadata database: {0}")]
    Metadata(#[source] Box<redb::Error>),
    /// A stored record does not decode.
    #[error("stored {kind} record {key:?} is corrupt: {reason}")]
    CorruptRecord {
        /// `task` or `piece`.
        kind: &'static str,
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
        /// The decoder's error, when it does not decode at all.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The content cannot be stored however much is evicted: nothing was evicted for it.
    #[error(
        "task {task} needs {} of storage, but at most {} can be made free ({limit}); \
         nothing stored was evicted for it",
        bytesize::ByteSize(*needed),
        bytesize::ByteSize(*room)
    )]
    NoRoom {
        /// The task.
        task: TaskId,
        /// Bytes it still needs.
        needed: u64,
        /// Bytes that could be made free, evicting every task that may be evicted.
        room: u64,
        /// What limits it: the config key (`storage.diskGCThreshold`) or the disk.
        limit: String,
    },
    /// No such task.
    #[error("task {0} is not in storage")]
    TaskNotFound(TaskId),
    /// The content length and piece length do not make a layout.
    #[error("task {task}: {source}")]
    InvalidLayout {
        /// The task.
        task: TaskId,
        /// Why the layout is impossible.
        source: LayoutError,
    },
    /// The task exists with another layout.
    #[error(
        "task {task} already exists with content length {existing_length} and piece length \
         {existing_piece_length}, not {content_length} and {piece_length}"
    )]
    LayoutConflict {
        /// The task.
        task: TaskId,
        /// Stored content length.
        existing_length: u64,
        /// Stored piece length.
        existing_piece_length: u64,
        /// Requested content length.
        content_length: u64,
        /// Requested piece length.
        piece_length: u64,
    },
    /// A piece number past the end of the task.
    #[error("task {task} has no piece {piece} (it has {piece_count} pieces)")]
    PieceOutOfRange {
        /// The task.
        task: TaskId,
        /// The piece number asked for.
        piece: u32,
        /// How many pieces the task has.
        piece_count: u32,
    },
    /// The piece is already stored; it is not written twice.
    #[error("piece {piece} of task {task} is already stored")]
    PieceExists {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
    },
    /// The piece is not stored.
    #[error("piece {piece} of task {task} is not stored")]
    PieceNotFound {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
    },
    /// More or fewer bytes than the piece holds.
    #[error("piece {piece} of task {task} is {expected} bytes, got {actual}")]
    PieceLength {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
        /// The piece's length.
        expected: u64,
        /// Bytes written (or that would have been written).
        actual: u64,
    },
    /// The piece's bytes do not match its crc32.
    #[error(
        "piece {piece} of task {task}: crc32 {actual:08x} does not match expected {expected:08x}"
    )]
    PieceDigestMismatch {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
        /// The crc32 expected (from the parent, or the stored record).
        expected: u32,
        /// The crc32 of the bytes.
        actual: u32,
    },
    /// Two writers stored different bytes for one piece; the piece was dropped.
    #[error(
        "piece {piece} of task {task} was written twice with different bytes (crc32 {first:08x} \
         and {second:08x}); the piece was dropped and must be fetched again"
    )]
    PieceConflict {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
        /// crc32 of the first committed copy.
        first: u32,
        /// crc32 of the second.
        second: u32,
    },
    /// The task was deleted or re-created while a piece was being written or opened.
    #[error("task {task} was deleted or re-created during an operation on piece {piece}")]
    TaskChanged {
        /// The task.
        task: TaskId,
        /// The piece.
        piece: u32,
    },
    /// `finish_task` with pieces missing.
    #[error("task {task} cannot finish: {missing} of {piece_count} pieces are missing")]
    IncompleteTask {
        /// The task.
        task: TaskId,
        /// Pieces not stored.
        missing: u32,
        /// Pieces in the task.
        piece_count: u32,
    },
}

impl StorageError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the error says the bytes were bad (from a parent or on disk), so fetching the
    /// piece again, from somewhere else, is the fix.
    pub fn is_corrupt_piece(&self) -> bool {
        matches!(
            self,
            StorageError::PieceDigestMismatch { .. }
                | StorageError::PieceConflict { .. }
                | StorageError::PieceLength { .. }
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Metadata(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        StorageError::Metadata(Box::new(e))
    }
}
