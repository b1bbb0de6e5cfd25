//! Streaming piece writer: bytes to the content file at the piece's offset, then the record.

use super::record::{PIECES, PieceRecord, TASKS, encode};
use super::{Result, Storage, StorageError, TaskState, disk, get_piece, get_task};
use dragonfly_common::piece::PieceRange;
use dragonfly_common::task_id::TaskId;
use redb::Durability;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Chunks are gathered up to this many bytes before one positioned write.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Writes one piece: [`write`](PieceWriter::write) chunks as they arrive, then
/// [`commit`](PieceWriter::commit). Dropping the writer without committing records nothing.
pub struct PieceWriter {
    storage: Storage,
    task: TaskId,
    range: PieceRange,
    file: File,
    /// The content file's path; a commit is refused unless it still names `file`.
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes already written to the file.
    flushed: u64,
    hasher: crc32fast::Hasher,
}

impl std::fmt::Debug for PieceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceWriter")
            .field("task", &self.task)
            .field("range", &self.range)
            .field("written", &self.written())
            .finish_non_exhaustive()
    }
}

impl PieceWriter {
    pub(super) fn new(
        storage: Storage,
        task: TaskId,
        range: PieceRange,
        file: File,
        path: &Path,
    ) -> Self {
        PieceWriter {
            storage,
            task,
            range,
            file,
            path: path.to_path_buf(),
            // Allocated only when small chunks arrive (large ones are written directly).
            buf: Vec::new(),
            flushed: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// The piece being written.
    pub fn range(&self) -> PieceRange {
        self.range
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Accepts the next chunk of the piece. Refuses (and ignores) a chunk that would take the
    /// piece past its length.
    pub fn write(&mut self, mut chunk: &[u8]) -> Result<()> {
        let after = self.written() + chunk.len() as u64;
        if after > self.range.length {
            return Err(StorageError::PieceLength {
                task: self.task.clone(),
                piece: self.range.number,
                expected: self.range.length,
                actual: after,
            });
        }
        self.hasher.update(chunk);
        if self.buf.is_empty() && chunk.len() >= WRITE_BUFFER {
            // The caller batched already: straight to the file, no second copy in memory.
            self.file
                .write_all_at(chunk, self.range.offset + self.flushed)
                .map_err(|e| StorageError::io(&self.path, e))?;
            self.flushed += chunk.len() as u64;
            return Ok(());
        }
        while !chunk.is_empty() {
            let room = WRITE_BUFFER - self.buf.len();
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            self.buf.extend_from_slice(now);
            chunk = rest;
            if self.buf.len() == WRITE_BUFFER {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the buffered bytes at their offset (pwrite).
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.range.offset + self.flushed)
            .map_err(|e| StorageError::io(&self.path, e))?;
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Finishes the piece: checks the length and, when given, the crc32, then records it.
    ///
    /// `parent_id`: `Some("")` for the origin, `Some(peer)` for a parent. On
    /// [`StorageError::PieceDigestMismatch`] nothing is recorded.
    pub fn commit(
        mut self,
        expected_crc: Option<u32>,
        parent_id: Option<&str>,
    ) -> Result<PieceRecord> {
        self.flush()?;
        if self.flushed != self.range.length {
            return Err(StorageError::PieceLength {
                task: self.task.clone(),
                piece: self.range.number,
                expected: self.range.length,
                actual: self.flushed,
            });
        }
        let actual = self.hasher.clone().finalize();
        if let Some(expected) = expected_crc
            && expected != actual
        {
            return Err(StorageError::PieceDigestMismatch {
                task: self.task.clone(),
                piece: self.range.number,
                expected,
                actual,
            });
        }
        let record = PieceRecord {
            number: self.range.number,
            offset: self.range.offset,
            length: self.range.length,
            crc32: actual,
            parent_id: parent_id.map(str::to_string),
            stored_at: self.storage.inner.now(),
        };
        self.record(record)
    }

    /// Commits the piece record (the bytes are already in the file).
    fn record(self, record: PieceRecord) -> Result<PieceRecord> {
        enum Outcome {
            Stored(PieceRecord),
            Conflict(u32),
        }
        let id = &self.task;
        let number = record.number;
        let inner = &self.storage.inner;
        // Atomic always; fsynced at most about once a second. A commit that is not durable
        // survives a killed process only up to the last durable one: the pieces after it are
        // fetched again after a restart (their bytes are there, their records are not), which
        // is cheap, while an fsync per piece cost ~0.8 s per GiB. Finish is always durable.
        let now = inner.now();
        let last = inner
            .last_durable_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let durability = if now.saturating_sub(last) >= 1000 {
            inner
                .last_durable_ms
                .store(now, std::sync::atomic::Ordering::Relaxed);
            Durability::Immediate
        } else {
            Durability::None
        };
        let outcome = inner.write(durability, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let mut task = get_task(&tasks, id)?.ok_or_else(|| StorageError::TaskChanged {
                task: id.clone(),
                piece: number,
            })?;
            // Checked inside the write transaction, which excludes delete's: the path still
            // names the very file we wrote into, so the record points at our bytes.
            if !disk::same_file(&self.file, &self.path) {
                return Err(StorageError::TaskChanged {
                    task: id.clone(),
                    piece: number,
                });
            }
            let mut pieces = txn.open_table(PIECES)?;
            if let Some(existing) = get_piece(&pieces, id, number)? {
                if existing.crc32 == record.crc32 {
                    // Another writer stored the same bytes first.
                    return Ok(Outcome::Stored(existing));
                }
                // Two writers wrote different bytes into one range: what is on disk is
                // unknowable now, so the piece goes and is fetched again.
                pieces.remove((id.as_str(), number))?;
                task.finished_pieces = task.finished_pieces.saturating_sub(1);
                if task.state == TaskState::Finished {
                    task.state = TaskState::Pending;
                }
                tasks.insert(id.as_str(), encode(&task).as_slice())?;
                return Ok(Outcome::Conflict(existing.crc32));
            }
            pieces.insert((id.as_str(), number), encode(&record).as_slice())?;
            task.finished_pieces = task.finished_pieces.saturating_add(1);
            task.last_access = task.last_access.max(record.stored_at);
            tasks.insert(id.as_str(), encode(&task).as_slice())?;
            Ok(Outcome::Stored(record.clone()))
        })?;
        match outcome {
            Outcome::Stored(record) => {
                tracing::debug!(task_id = %id, piece = number, crc32 = record.crc32, "piece stored");
                Ok(record)
            }
            Outcome::Conflict(first) => Err(StorageError::PieceConflict {
                task: id.clone(),
                piece: number,
                first,
                second: record.crc32,
            }),
        }
    }
}
