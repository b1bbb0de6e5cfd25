//! Crash recovery, run by [`Storage::open`](super::Storage::open) before anything else.
//!
//! Steps, in order:
//! 1. task records that do not decode are dropped with their pieces;
//! 2. task records whose content file is missing or not `content_length` bytes are dropped;
//! 3. piece records without a task, or whose range does not match the task's layout, are dropped;
//! 4. every piece of an unfinished task is re-read and checked against its crc32; bad ones are
//!    dropped so the engine fetches them again. Finished tasks are only checked for layout,
//!    unless the machine rebooted since the storage was last opened (the boot id changed): piece
//!    bytes are never fsynced, so after a possible power loss they are all re-verified;
//! 5. `Running` tasks become `Pending` (resumable); `finished_pieces` is recounted;
//! 6. the metadata changes are committed, and only then content files without a kept record
//!    (orphans) are removed, so a crash during recovery is repaired by the next one.

use super::record::{
    PIECES, PieceRecord, TASKS, TaskRecord, TaskState, decode_piece, decode_task, encode,
};
use super::{Inner, Result, StorageError};
use dragonfly_common::task_id::TaskId;
use redb::{Durability, ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What recovery found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Finished tasks kept.
    pub finished_tasks: usize,
    /// Unfinished tasks kept (resumable from the pieces they have).
    pub unfinished_tasks: usize,
    /// Tasks that were `Running` when the daemon stopped and are now `Pending`.
    pub resumed: Vec<TaskId>,
    /// Task records dropped.
    pub dropped_tasks: Vec<DroppedTask>,
    /// Piece records dropped.
    pub dropped_pieces: Vec<DroppedPiece>,
    /// Pieces whose bytes were re-read and checked against their crc32.
    pub pieces_verified: u64,
    /// Content files removed because no task record owns them.
    pub orphan_files_removed: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Whether recovery changed nothing.
    pub fn is_clean(&self) -> bool {
        self.resumed.is_empty()
            && self.dropped_tasks.is_empty()
            && self.dropped_pieces.is_empty()
            && self.orphan_files_removed.is_empty()
    }
}

/// A task record recovery dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTask {
    /// The record's key (the task id, unless the key itself was damaged).
    pub key: String,
    /// Why.
    pub reason: String,
}

/// A piece record recovery dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPiece {
    /// The task's key.
    pub task: String,
    /// The piece number.
    pub number: u32,
    /// Why.
    pub reason: String,
}

type PieceEntries = Vec<(u32, Result<PieceRecord>)>;

/// Runs recovery on a freshly opened storage.
pub(super) fn recover(inner: &Inner, verify_finished: bool) -> Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let (tasks, bad_tasks, mut pieces) = load(inner)?;

    let mut drop_tasks: Vec<String> = Vec::new();
    let mut drop_pieces: Vec<(String, u32)> = Vec::new();
    let mut updates: Vec<TaskRecord> = Vec::new();
    let mut keep: HashSet<TaskId> = HashSet::new();

    for (key, reason) in bad_tasks {
        tracing::warn!(key = %key, %reason, "dropping undecodable task record");
        report.dropped_tasks.push(DroppedTask {
            key: key.clone(),
            reason,
        });
        drop_tasks.push(key);
    }

    for (key, record) in tasks {
        let entries = pieces.remove(&key).unwrap_or_default();
        let path = inner.content_path(&record.id);
        if let Some(reason) = file_problem(&path, record.content_length)? {
            tracing::warn!(task_id = %record.id, %reason, "dropping task");
            report.dropped_tasks.push(DroppedTask {
                key: key.clone(),
                reason,
            });
            drop_tasks.push(key);
            continue;
        }
        let checked = check_pieces(&record, &path, entries, verify_finished, &mut report)?;
        for (number, reason) in checked.dropped {
            tracing::warn!(task_id = %record.id, piece = number, %reason, "dropping piece");
            report.dropped_pieces.push(DroppedPiece {
                task: key.clone(),
                number,
                reason,
            });
            drop_pieces.push((key.clone(), number));
        }
        let mut fixed = record.clone();
        fixed.finished_pieces = checked.kept;
        if fixed.state == TaskState::Running {
            fixed.state = TaskState::Pending;
            report.resumed.push(record.id.clone());
        }
        if fixed.state == TaskState::Finished && checked.kept != fixed.piece_count {
            tracing::warn!(task_id = %record.id, "finished task lost pieces; resumable again");
            fixed.state = TaskState::Pending;
        }
        if fixed.state == TaskState::Finished {
            report.finished_tasks += 1;
        } else {
            report.unfinished_tasks += 1;
        }
        if fixed != record {
            updates.push(fixed);
        }
        keep.insert(record.id);
    }

    // Pieces left over belong to no task.
    for (key, entries) in pieces {
        for (number, _) in entries {
            report.dropped_pieces.push(DroppedPiece {
                task: key.clone(),
                number,
                reason: "no task record".to_string(),
            });
            drop_pieces.push((key.clone(), number));
        }
    }

    if !(drop_tasks.is_empty() && drop_pieces.is_empty() && updates.is_empty()) {
        // Immediate: the repaired metadata must be durable before files are removed below.
        inner.write(Durability::Immediate, |txn| {
            let mut task_table = txn.open_table(TASKS)?;
            let mut piece_table = txn.open_table(PIECES)?;
            for key in &drop_tasks {
                task_table.remove(key.as_str())?;
                piece_table
                    .retain_in((key.as_str(), 0u32)..=(key.as_str(), u32::MAX), |_, _| {
                        false
                    })?;
            }
            for (key, number) in &drop_pieces {
                piece_table.remove((key.as_str(), *number))?;
            }
            for record in &updates {
                task_table.insert(record.id.as_str(), encode(record).as_slice())?;
            }
            Ok(())
        })?;
    }

    report.orphan_files_removed = remove_orphans(&inner.content_dir, &keep)?;
    if report.is_clean() {
        tracing::info!(
            finished = report.finished_tasks,
            unfinished = report.unfinished_tasks,
            "storage opened"
        );
    } else {
        tracing::info!(
            finished = report.finished_tasks,
            unfinished = report.unfinished_tasks,
            resumed = report.resumed.len(),
            dropped_tasks = report.dropped_tasks.len(),
            dropped_pieces = report.dropped_pieces.len(),
            orphan_files = report.orphan_files_removed.len(),
            "storage recovered"
        );
    }
    Ok(report)
}

type Loaded = (
    BTreeMap<String, TaskRecord>,
    Vec<(String, String)>,
    BTreeMap<String, PieceEntries>,
);

/// Reads every task and piece record.
fn load(inner: &Inner) -> Result<Loaded> {
    let txn = inner.db.begin_read()?;
    let mut tasks = BTreeMap::new();
    let mut bad = Vec::new();
    for item in txn.open_table(TASKS)?.iter()? {
        let (k, v) = item?;
        let key = k.value().to_string();
        match decode_task(&key, v.value()) {
            Ok(record) => {
                tasks.insert(key, record);
            }
            Err(e) => bad.push((key, dragonfly_common::error::chain(&e))),
        }
    }
    let mut pieces: BTreeMap<String, PieceEntries> = BTreeMap::new();
    for item in txn.open_table(PIECES)?.iter()? {
        let (k, v) = item?;
        let (task, number) = k.value();
        pieces
            .entry(task.to_string())
            .or_default()
            .push((number, decode_piece(task, number, v.value())));
    }
    Ok((tasks, bad, pieces))
}

/// Why a task's content file cannot be used, if it cannot.
fn file_problem(path: &Path, content_length: u64) -> Result<Option<String>> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => Ok(Some("content path is not a regular file".to_string())),
        Ok(m) if m.len() != content_length => Ok(Some(format!(
            "content file is {} bytes, expected {content_length}",
            m.len()
        ))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Some("content file is missing".to_string()))
        }
        Err(e) => Err(StorageError::io(path, e)),
    }
}

struct CheckedPieces {
    kept: u32,
    dropped: Vec<(u32, String)>,
}

/// Checks one task's piece records against its layout and, for unfinished tasks, their bytes.
fn check_pieces(
    record: &TaskRecord,
    path: &Path,
    entries: PieceEntries,
    verify_finished: bool,
    report: &mut RecoveryReport,
) -> Result<CheckedPieces> {
    let layout = record.layout()?;
    let file = if record.state == TaskState::Finished && !verify_finished {
        None
    } else {
        Some(File::open(path).map_err(|e| StorageError::io(path, e))?)
    };
    let mut buf = Vec::new();
    let mut out = CheckedPieces {
        kept: 0,
        dropped: Vec::new(),
    };
    for (number, decoded) in entries {
        let problem = match decoded {
            Err(e) => Some(dragonfly_common::error::chain(&e)),
            Ok(piece) => match layout.piece(number) {
                None => Some(format!("past the last piece ({})", record.piece_count)),
                Some(range) if !piece.matches(&range) => Some(format!(
                    "range {}+{} does not match the layout ({}+{})",
                    piece.offset, piece.length, range.offset, range.length
                )),
                Some(_) => match &file {
                    None => None,
                    Some(file) => {
                        report.pieces_verified += 1;
                        verify(file, &piece, &mut buf)
                    }
                },
            },
        };
        match problem {
            Some(reason) => out.dropped.push((number, reason)),
            None => out.kept += 1,
        }
    }
    Ok(out)
}

/// Re-reads a piece and compares its crc32; the problem, if any.
fn verify(file: &File, piece: &PieceRecord, buf: &mut Vec<u8>) -> Option<String> {
    let Ok(len) = usize::try_from(piece.length) else {
        return Some(format!("{} bytes does not fit in memory", piece.length));
    };
    buf.resize(len, 0);
    if let Err(e) = file.read_exact_at(buf, piece.offset) {
        return Some(format!("read failed: {e}"));
    }
    let actual = crc32fast::hash(buf);
    (actual != piece.crc32).then(|| {
        format!(
            "crc32 {actual:08x} does not match recorded {:08x}",
            piece.crc32
        )
    })
}

/// Removes every file under `content_dir` that is not the content file of a kept task.
fn remove_orphans(content_dir: &Path, keep: &HashSet<TaskId>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let read = |dir: &Path| fs::read_dir(dir).map_err(|e| StorageError::io(dir, e));
    for shard in read(content_dir)? {
        let shard = shard.map_err(|e| StorageError::io(content_dir, e))?;
        let shard_path = shard.path();
        let kind = shard
            .file_type()
            .map_err(|e| StorageError::io(&shard_path, e))?;
        if !kind.is_dir() {
            // Nothing of ours lives directly in content/.
            remove(&shard_path, &mut removed)?;
            continue;
        }
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str().filter(|n| is_shard_name(n)) else {
            tracing::warn!(path = %shard_path.display(), "unexpected directory in content dir; left alone");
            continue;
        };
        for entry in read(&shard_path)? {
            let entry = entry.map_err(|e| StorageError::io(&shard_path, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| StorageError::io(&path, e))?;
            if kind.is_dir() {
                tracing::warn!(path = %path.display(), "unexpected directory in content dir; left alone");
                continue;
            }
            let owned = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TaskId>().ok())
                .is_some_and(|id| id.shard() == shard_name && keep.contains(&id));
            if !owned {
                remove(&path, &mut removed)?;
            }
        }
    }
    Ok(removed)
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn remove(path: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed orphan content file");
            removed.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(path, e)),
    }
}
