//! What the engine learns about stored content after the fact: its digests, the source version
//! it came from, and pieces found damaged or untrustworthy (dropped, so they are fetched again).

use super::record::{PIECES, TASKS, TaskState, encode};
use super::{PieceRecord, Result, SourceValidator, Storage, StorageError, get_task};
use dragonfly_common::task_id::TaskId;
use redb::Durability;
use std::os::unix::fs::FileExt;

/// Bytes read at a time when a stored piece is checked.
const VERIFY_CHUNK: usize = 1 << 20;

/// A stored piece whose bytes no longer match its crc32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DamagedPiece {
    /// The piece number.
    pub number: u32,
    /// The crc32 recorded when it was stored.
    pub expected: u32,
    /// The crc32 of the bytes on disk now.
    pub actual: u32,
}

impl Storage {
    /// Remember another digest of the finished content (e.g. `sha512:<hex>` computed for a
    /// caller), so it is computed once. Unknown tasks are ignored.
    pub fn add_content_digest(&self, id: &TaskId, digest: &str) -> Result<()> {
        self.inner.write(Durability::Immediate, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let Some(mut record) = get_task(&tasks, id)? else {
                return Ok(());
            };
            let algo = digest.split_once(':').map(|(a, _)| a);
            record
                .content_digests
                .retain(|d| d.split_once(':').map(|(a, _)| a) != algo);
            record.content_digests.push(digest.to_string());
            tasks.insert(id.as_str(), encode(&record).as_slice())?;
            Ok(())
        })
    }

    /// Record the source version a task's bytes are from (first seen after the task was
    /// created, e.g. when its layout came from a parent).
    pub fn set_validator(&self, id: &TaskId, validator: &SourceValidator) -> Result<()> {
        self.inner.write(Durability::Immediate, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let mut record =
                get_task(&tasks, id)?.ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
            record.validator = Some(validator.clone()).filter(|v| !v.is_empty());
            tasks.insert(id.as_str(), encode(&record).as_slice())?;
            Ok(())
        })
    }

    /// Drop every stored piece of the task that `doubt` rejects (e.g. those from parents whose
    /// content failed its digest); the task is no longer finished. Returns the dropped pieces.
    pub fn drop_pieces_where(
        &self,
        id: &TaskId,
        doubt: impl Fn(&PieceRecord) -> bool,
    ) -> Result<Vec<PieceRecord>> {
        let dropped = self
            .pieces(id)?
            .into_iter()
            .filter(|p| doubt(p))
            .collect::<Vec<_>>();
        if dropped.is_empty() {
            return Ok(dropped);
        }
        self.inner.write(Durability::Immediate, |txn| {
            let mut pieces = txn.open_table(PIECES)?;
            for p in &dropped {
                pieces.remove((id.as_str(), p.number))?;
            }
            let mut tasks = txn.open_table(TASKS)?;
            if let Some(mut task) = get_task(&tasks, id)? {
                task.finished_pieces = task.finished_pieces.saturating_sub(dropped.len() as u32);
                task.state = match task.state {
                    TaskState::Finished => TaskState::Pending,
                    s => s,
                };
                task.content_digests.clear();
                tasks.insert(id.as_str(), encode(&task).as_slice())?;
            }
            Ok(())
        })?;
        Ok(dropped)
    }

    /// Re-read piece `number` and check its crc32. A damaged piece is dropped (the task is no
    /// longer finished, so the next download fetches it again) and returned.
    pub fn verify_piece(&self, id: &TaskId, number: u32) -> Result<Option<DamagedPiece>> {
        let (file, record) = self.content_file(id, number)?;
        let path = self.content_path(id);
        let mut buf = vec![0u8; VERIFY_CHUNK.min(record.length as usize).max(1)];
        let mut crc = crc32fast::Hasher::new();
        let (mut off, end) = (record.offset, record.offset + record.length);
        while off < end {
            let n = buf.len().min((end - off) as usize);
            file.read_exact_at(&mut buf[..n], off)
                .map_err(|e| StorageError::io(&path, e))?;
            crc.update(&buf[..n]);
            off += n as u64;
        }
        let actual = crc.finalize();
        if actual == record.crc32 {
            return Ok(None);
        }
        tracing::warn!(task_id = %id, piece = number, expected = record.crc32, actual, "stored piece is corrupt; dropping it");
        self.drop_stored_piece(id, number, record.crc32)?;
        Ok(Some(DamagedPiece {
            number,
            expected: record.crc32,
            actual,
        }))
    }

    /// Drop piece `number` if its record still has `crc32` (found damaged by a reader); the
    /// task is no longer finished.
    pub fn drop_stored_piece(&self, id: &TaskId, number: u32, crc32: u32) -> Result<()> {
        self.drop_piece(id, number, crc32)
    }
}

impl Storage {
    /// Feed the task's content from byte `from` (a piece boundary) to its end into `hashers`,
    /// checking every piece's crc32 on the way, so a digest is never taken of bytes damaged
    /// since they were stored. `Ok(Err(piece))`: that piece is damaged and was dropped.
    pub fn hash_content(
        &self,
        id: &TaskId,
        from: u64,
        mut hashers: Vec<dragonfly_common::digest::Hasher>,
    ) -> Result<std::result::Result<Vec<dragonfly_common::digest::Digest>, DamagedPiece>> {
        let task = self
            .task(id)?
            .ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
        let layout = task.layout()?;
        let path = self.content_path(id);
        let file = std::fs::File::open(&path).map_err(|e| StorageError::io(&path, e))?;
        let mut buf = vec![0u8; VERIFY_CHUNK];
        for piece in layout.pieces().filter(|p| p.end() > from) {
            // Only a piece read whole can be checked; `from` is a piece boundary in practice.
            let whole = piece.offset >= from;
            let mut crc = crc32fast::Hasher::new();
            let mut off = piece.offset.max(from);
            while off < piece.end() {
                let n = buf.len().min((piece.end() - off) as usize);
                file.read_exact_at(&mut buf[..n], off)
                    .map_err(|e| StorageError::io(&path, e))?;
                crc.update(&buf[..n]);
                for h in &mut hashers {
                    h.update(&buf[..n]);
                }
                off += n as u64;
            }
            if !whole {
                continue;
            }
            let record = self.piece_record(id, piece.number)?.ok_or_else(|| {
                StorageError::PieceNotFound {
                    task: id.clone(),
                    piece: piece.number,
                }
            })?;
            let actual = crc.finalize();
            if actual != record.crc32 {
                tracing::warn!(task_id = %id, piece = piece.number, expected = record.crc32, actual, "stored piece is corrupt; dropping it");
                self.drop_piece(id, piece.number, record.crc32)?;
                return Ok(Err(DamagedPiece {
                    number: piece.number,
                    expected: record.crc32,
                    actual,
                }));
            }
        }
        Ok(Ok(hashers.into_iter().map(|h| h.finish()).collect()))
    }
}
