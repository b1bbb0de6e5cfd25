//! Local storage of tasks and pieces: metadata in redb, piece bytes in one preallocated file per
//! task, crash recovery on open, and GC.
//!
//! Layout under the data directory:
//!
//! ```text
//! <dir>/metadata.redb                 tasks and pieces (typed, versioned JSON records)
//! <dir>/content/<id[0..2]>/<id>       one file per task, content_length bytes, written at offsets
//! ```
//!
//! Paths are only ever derived from a validated [`TaskId`] (64 lowercase hex characters), never
//! from a URL or any other input.
//!
//! The API is synchronous and blocking (file I/O and fsyncs): async code calls it from
//! `tokio::task::spawn_blocking`. [`Storage`] is cheap to clone and `Send + Sync`.
//!
//! Crash consistency (the daemon may be killed at any point):
//! - piece bytes are written before the piece record is committed, so a record never points to
//!   bytes that were not written;
//! - a task's file is created before its record and removed after it;
//! - on open, [`recovery`](RecoveryReport) removes files without records, records without
//!   (right-sized) files, re-verifies every piece of unfinished tasks, and turns `Running` tasks
//!   back into `Pending` ones.
//!
//! See `docs/storage.md` for the whole story.

mod disk;
mod error;
mod gc;
mod record;
mod recovery;
mod verify;
mod writer;

pub use disk::DiskUsage;
pub use error::StorageError;
pub use gc::{Eviction, EvictionReason, GcPolicy, GcReport};
pub use record::{PieceRecord, RECORD_VERSION, SourceValidator, TaskRecord, TaskState};
pub use recovery::{DroppedPiece, DroppedTask, RecoveryReport};
pub use verify::DamagedPiece;
pub use writer::PieceWriter;

use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use record::{PIECES, TASKS, decode_piece, decode_task, encode};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A source of "now" in unix milliseconds; injectable so tests need not sleep.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// File name of the metadata database inside the data directory.
pub const METADATA_FILE: &str = "metadata.redb";
/// Directory of content files inside the data directory.
pub const CONTENT_DIR: &str = "content";
/// `touch` writes a task's last access at most this often.
const TOUCH_INTERVAL_MS: u64 = 1000;

/// The wall clock in unix milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// What [`Storage::create_task`] needs to know about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The task id.
    pub id: TaskId,
    /// The URL (recorded for operators; never used for paths).
    pub url: String,
    /// Content length in bytes.
    pub content_length: u64,
    /// Piece length in bytes (see `dragonfly_common::piece::piece_length_for`).
    pub piece_length: u64,
    /// Expected digest of the whole content, when known.
    pub digest: Option<String>,
    /// The source's validator of the version being stored, when known.
    pub validator: Option<SourceValidator>,
}

/// Local storage of tasks and their pieces. Clones share one database.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    content_dir: PathBuf,
    dir: PathBuf,
    db: Database,
    clock: Clock,
    /// Serializes the operations that create or remove tasks (create, delete, GC eviction), so a
    /// file is never removed under a record that was just created for it.
    structure: Mutex<()>,
    /// When each task's last access was last written, to keep `touch` cheap.
    touched: Mutex<HashMap<TaskId, u64>>,
    recovery: RecoveryReport,
    /// When a piece commit was last made durable (unix ms); see `PieceWriter::commit`.
    last_durable_ms: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Make the commits since the last durable one durable on a clean close.
        let _ = self.write(Durability::Immediate, |_| Ok(()));
    }
}

/// This kernel boot's id (`/proc/sys/kernel/random/boot_id`); `None` where there is none, which
/// makes every open verify everything.
fn current_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data cannot be left inconsistent by a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Storage {
    /// Opens (creating if needed) the storage in `dir` and runs crash recovery.
    pub fn open(dir: impl AsRef<Path>) -> Result<Storage> {
        Self::open_with_clock(dir, system_clock())
    }

    /// [`Storage::open`] with an injected clock (unix ms), for tests.
    pub fn open_with_clock(dir: impl AsRef<Path>, clock: Clock) -> Result<Storage> {
        let dir = dir.as_ref().to_path_buf();
        let content_dir = dir.join(CONTENT_DIR);
        fs::create_dir_all(&content_dir).map_err(|e| StorageError::io(&content_dir, e))?;
        let db = Database::create(dir.join(METADATA_FILE))?;
        {
            // Create the tables so readers never meet a missing table.
            let txn = db.begin_write()?;
            txn.open_table(TASKS)?;
            txn.open_table(PIECES)?;
            txn.open_table(record::META)?;
            txn.commit()?;
        }
        // Piece bytes and most commits are not fsynced (see `writer`): a killed process loses
        // nothing the page cache holds, but a reboot (power loss) may. So after a reboot every
        // task, finished or not, is re-verified before it is served again.
        let boot = current_boot_id();
        let rebooted = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(record::META)?;
            let stored = meta.get("boot_id")?.map(|v| v.value().to_string());
            stored.is_none() || stored != boot
        };
        let mut inner = Inner {
            content_dir,
            dir,
            db,
            clock,
            structure: Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
            recovery: RecoveryReport::default(),
            last_durable_ms: std::sync::atomic::AtomicU64::new(0),
        };
        inner.recovery = recovery::recover(&inner, rebooted)?;
        if let Some(boot) = boot {
            inner.write(Durability::Immediate, |txn| {
                txn.open_table(record::META)?
                    .insert("boot_id", boot.as_str())?;
                Ok(())
            })?;
        }
        Ok(Storage {
            inner: Arc::new(inner),
        })
    }

    /// What recovery found and repaired when this storage was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The content file of a task: `<dir>/content/<first 2 hex>/<id>`.
    ///
    /// The upload server opens it to serve pieces by offset and length (sendfile).
    pub fn content_path(&self, id: &TaskId) -> PathBuf {
        self.inner.content_path(id)
    }

    /// Creates a task and its content file (sparse: a piece's blocks are allocated when its
    /// writer starts, so a length claimed by a source takes no disk before bytes arrive).
    ///
    /// Idempotent: when the task exists with the same content and piece length, the stored
    /// record is returned unchanged. A different layout is [`StorageError::LayoutConflict`].
    pub fn create_task(&self, new: NewTask) -> Result<TaskRecord> {
        let layout = PieceLayout::new(new.content_length, new.piece_length).map_err(|source| {
            StorageError::InvalidLayout {
                task: new.id.clone(),
                source,
            }
        })?;
        let _structure = lock(&self.inner.structure);
        if let Some(existing) = self.task(&new.id)? {
            if existing.content_length == new.content_length
                && existing.piece_length == new.piece_length
            {
                return Ok(existing);
            }
            return Err(StorageError::LayoutConflict {
                task: new.id,
                existing_length: existing.content_length,
                existing_piece_length: existing.piece_length,
                content_length: new.content_length,
                piece_length: new.piece_length,
            });
        }
        let path = self.content_path(&new.id);
        // The file exists before its record: a crash in between leaves an orphan file, which
        // recovery removes, never a record without a file.
        disk::create_content_file(&path, new.content_length)?;
        let now = self.inner.now();
        let record = TaskRecord {
            id: new.id,
            url: new.url,
            content_length: new.content_length,
            piece_length: new.piece_length,
            piece_count: layout.piece_count(),
            digest: new.digest,
            state: TaskState::Pending,
            created_at: now,
            last_access: now,
            finished_pieces: 0,
            content_digests: Vec::new(),
            validator: new.validator.filter(|v| !v.is_empty()),
        };
        // Immediate: once create_task returns the task survives a crash (one fsync per task).
        let stored = self.inner.write(Durability::Immediate, |txn| {
            txn.open_table(TASKS)?
                .insert(record.id.as_str(), encode(&record).as_slice())?;
            Ok(())
        });
        if let Err(e) = stored {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(task_id = %record.id, content_length = record.content_length, "task created");
        Ok(record)
    }

    /// The record of a task, if stored.
    pub fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let txn = self.inner.db.begin_read()?;
        get_task(&txn.open_table(TASKS)?, id)
    }

    /// Every stored task, in id order.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(decode_task(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The stored pieces of a task, by number.
    pub fn pieces(&self, id: &TaskId) -> Result<Vec<PieceRecord>> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(PIECES)?;
        let mut out = Vec::new();
        for item in table.range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX))? {
            let (k, v) = item?;
            out.push(decode_piece(id.as_str(), k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Whether piece `number` of the task is stored.
    pub fn has_piece(&self, id: &TaskId, number: u32) -> Result<bool> {
        let txn = self.inner.db.begin_read()?;
        Ok(txn
            .open_table(PIECES)?
            .get((id.as_str(), number))?
            .is_some())
    }

    /// The record of piece `number`, if stored.
    pub fn piece_record(&self, id: &TaskId, number: u32) -> Result<Option<PieceRecord>> {
        let txn = self.inner.db.begin_read()?;
        get_piece(&txn.open_table(PIECES)?, id, number)
    }

    /// A streaming writer for piece `number`; see [`PieceWriter`].
    ///
    /// Fails with [`StorageError::PieceExists`] when the piece is already stored.
    pub fn piece_writer(&self, id: &TaskId, number: u32) -> Result<PieceWriter> {
        let task = self
            .task(id)?
            .ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
        let range = task.piece_range(number)?;
        if self.has_piece(id, number)? {
            return Err(StorageError::PieceExists {
                task: id.clone(),
                piece: number,
            });
        }
        let path = self.content_path(id);
        let file = self.open_content(id, true)?;
        // A full disk fails here, before the piece's bytes are fetched.
        disk::allocate(&file, range.offset, range.length)
            .map_err(|e| StorageError::io(&path, e))?;
        Ok(PieceWriter::new(
            self.clone(),
            id.clone(),
            range,
            file,
            &path,
        ))
    }

    /// Reads piece `number`. With `verify`, re-computes its crc32; on a mismatch the piece
    /// record is dropped (so the piece is fetched again) and
    /// [`StorageError::PieceDigestMismatch`] is returned.
    pub fn read_piece(&self, id: &TaskId, number: u32, verify: bool) -> Result<Vec<u8>> {
        let (file, record) = self.content_file(id, number)?;
        let path = self.content_path(id);
        let mut buf = vec![0u8; disk::buf_len(record.length, &path)?];
        file.read_exact_at(&mut buf, record.offset)
            .map_err(|e| StorageError::io(&path, e))?;
        if verify {
            let actual = crc32fast::hash(&buf);
            if actual != record.crc32 {
                tracing::warn!(task_id = %id, piece = number, expected = record.crc32, actual, "stored piece is corrupt; dropping it");
                self.drop_piece(id, number, record.crc32)?;
                return Err(StorageError::PieceDigestMismatch {
                    task: id.clone(),
                    piece: number,
                    expected: record.crc32,
                    actual,
                });
            }
        }
        Ok(buf)
    }

    /// The content file opened for reading and the record of piece `number`, for zero-copy
    /// serving of `record.offset .. record.offset + record.length`.
    pub fn content_file(&self, id: &TaskId, number: u32) -> Result<(File, PieceRecord)> {
        // File first, then the record, then a check that the path still names the opened file:
        // a task deleted or re-created in between is reported, never read from the wrong file.
        let file = self.open_content(id, false)?;
        let record = self.checked_piece_record(id, number)?;
        let path = self.content_path(id);
        if !disk::same_file(&file, &path) {
            return Err(StorageError::TaskChanged {
                task: id.clone(),
                piece: number,
            });
        }
        Ok((file, record))
    }

    /// Marks the task `Running` (being downloaded: GC leaves it alone). A finished task stays
    /// finished.
    pub fn start_task(&self, id: &TaskId) -> Result<TaskRecord> {
        self.set_state(id, |state| match state {
            TaskState::Finished => TaskState::Finished,
            _ => TaskState::Running,
        })
    }

    /// Marks the task `Failed`; its stored pieces are kept for a retry.
    pub fn fail_task(&self, id: &TaskId) -> Result<TaskRecord> {
        self.set_state(id, |_| TaskState::Failed)
    }

    /// Marks the task `Finished` (durably); fails with
    /// [`StorageError::IncompleteTask`] (naming how many are missing) unless every piece is
    /// stored.
    pub fn finish_task(&self, id: &TaskId) -> Result<TaskRecord> {
        self.finish_task_with(id, &[])
    }

    /// [`Storage::finish_task`], recording the content's digests computed on the way
    /// (`sha256:<hex>`, ...) in the same durable write.
    pub fn finish_task_with(&self, id: &TaskId, digests: &[String]) -> Result<TaskRecord> {
        let now = self.inner.now();
        // Immediate, so the state and every piece record before it survive. The bytes are not
        // synced: a killed process loses nothing of the page cache, and after a reboot open
        // re-verifies finished tasks too (boot id), so a sync of the whole file (seconds per
        // GiB) buys nothing.
        self.inner.write(Durability::Immediate, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let mut record =
                get_task(&tasks, id)?.ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
            if record.state == TaskState::Finished {
                return Ok(record);
            }
            let pieces = txn.open_table(PIECES)?;
            let mut stored = 0u32;
            for item in pieces.range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX))? {
                item?;
                stored += 1;
            }
            if stored < record.piece_count {
                return Err(StorageError::IncompleteTask {
                    task: id.clone(),
                    missing: record.piece_count - stored,
                    piece_count: record.piece_count,
                });
            }
            record.state = TaskState::Finished;
            record.finished_pieces = stored;
            if !digests.is_empty() {
                record.content_digests = digests.to_vec();
            }
            record.last_access = now;
            tasks.insert(id.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }

    /// Deletes a task: its records first, then its file. Idempotent.
    pub fn delete_task(&self, id: &TaskId) -> Result<()> {
        let _structure = lock(&self.inner.structure);
        self.inner.delete_locked(id, |_| true)?;
        Ok(())
    }

    /// Records an access to the task now (GC evicts least recently accessed first).
    ///
    /// Cheap: writes at most once per task per second, without an fsync.
    pub fn touch(&self, id: &TaskId) -> Result<()> {
        let now = self.inner.now();
        if let Some(last) = lock(&self.inner.touched).get(id)
            && now.saturating_sub(*last) < TOUCH_INTERVAL_MS
        {
            return Ok(());
        }
        // Durability::None: a lost last-access time only makes GC slightly less accurate, and
        // the next durable commit (any piece) persists it anyway.
        let found = self.inner.write(Durability::None, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let Some(mut record) = get_task(&tasks, id)? else {
                return Ok(false);
            };
            if record.last_access < now {
                record.last_access = now;
                tasks.insert(id.as_str(), encode(&record).as_slice())?;
            }
            Ok(true)
        })?;
        if found {
            // Only stored tasks are remembered, so ids from the network cannot grow the map.
            lock(&self.inner.touched).insert(id.clone(), now);
        }
        Ok(())
    }

    /// Bytes the stored tasks take: finished tasks' content lengths and unfinished tasks'
    /// stored pieces ([`TaskRecord::stored_bytes`]).
    pub fn usage_bytes(&self) -> Result<u64> {
        Ok(self
            .tasks()?
            .iter()
            .map(TaskRecord::stored_bytes)
            .fold(0u64, u64::saturating_add))
    }

    /// Usage of the filesystem holding the data directory.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        DiskUsage::of(&self.inner.dir)
    }

    /// Opens the task's content file; a file missing because the task is gone is
    /// [`StorageError::TaskNotFound`].
    fn open_content(&self, id: &TaskId, write: bool) -> Result<File> {
        let path = self.content_path(id);
        match OpenOptions::new().read(!write).write(write).open(&path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.task(id)?.is_none() => {
                Err(StorageError::TaskNotFound(id.clone()))
            }
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    /// A piece record checked against its task's layout, so a damaged record cannot send a
    /// read past the piece.
    fn checked_piece_record(&self, id: &TaskId, number: u32) -> Result<PieceRecord> {
        let txn = self.inner.db.begin_read()?;
        let task = get_task(&txn.open_table(TASKS)?, id)?
            .ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
        let record = get_piece(&txn.open_table(PIECES)?, id, number)?.ok_or_else(|| {
            StorageError::PieceNotFound {
                task: id.clone(),
                piece: number,
            }
        })?;
        if !record.matches(&task.piece_range(number)?) {
            return Err(StorageError::CorruptRecord {
                kind: "piece",
                key: format!("{id}/{number}"),
                reason: format!(
                    "range {}+{} does not match the task's layout",
                    record.offset, record.length
                ),
                source: None,
            });
        }
        Ok(record)
    }

    /// Drops piece `number` if its record still has `crc32` (a fresh rewrite is kept).
    fn drop_piece(&self, id: &TaskId, number: u32, crc32: u32) -> Result<()> {
        // Immediate: a dropped record must not come back after a crash for a finished task
        // (unfinished ones are re-verified on open anyway).
        self.inner.write(Durability::Immediate, |txn| {
            let mut pieces = txn.open_table(PIECES)?;
            match get_piece(&pieces, id, number)? {
                Some(p) if p.crc32 == crc32 => {}
                _ => return Ok(()),
            }
            pieces.remove((id.as_str(), number))?;
            let mut tasks = txn.open_table(TASKS)?;
            if let Some(mut task) = get_task(&tasks, id)? {
                task.finished_pieces = task.finished_pieces.saturating_sub(1);
                if task.state == TaskState::Finished {
                    task.state = TaskState::Pending;
                }
                tasks.insert(id.as_str(), encode(&task).as_slice())?;
            }
            Ok(())
        })
    }

    fn set_state(&self, id: &TaskId, f: impl FnOnce(TaskState) -> TaskState) -> Result<TaskRecord> {
        let now = self.inner.now();
        // Immediate: state changes are rare, and Finished/Failed must survive a restart.
        self.inner.write(Durability::Immediate, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let mut record =
                get_task(&tasks, id)?.ok_or_else(|| StorageError::TaskNotFound(id.clone()))?;
            record.state = f(record.state);
            record.last_access = record.last_access.max(now);
            tasks.insert(id.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }
}

/// What [`Inner::delete_locked`] did.
pub(crate) enum Deleted {
    /// The task was removed.
    Removed(TaskRecord),
    /// There was no record (any leftover file was removed).
    Absent,
    /// The record was kept because the predicate refused it.
    Refused,
}

impl Inner {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn content_path(&self, id: &TaskId) -> PathBuf {
        self.content_dir.join(id.shard()).join(id.as_str())
    }

    /// Runs `f` in a write transaction with `durability`; commits when `f` succeeds.
    fn write<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<R>,
    ) -> Result<R> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        match f(&txn) {
            Ok(r) => {
                txn.commit()?;
                Ok(r)
            }
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// Deletes a task if `allow` accepts its record (checked inside the transaction): records
    /// first, then the file. The caller holds the structure lock.
    fn delete_locked(
        &self,
        id: &TaskId,
        allow: impl FnOnce(&TaskRecord) -> bool,
    ) -> Result<Deleted> {
        // Immediate: once delete returns the task is gone for good; were it lost in a crash,
        // recovery would still drop the record whose file is missing.
        let outcome = self.write(Durability::Immediate, |txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let Some(record) = get_task(&tasks, id)? else {
                return Ok(Deleted::Absent);
            };
            if !allow(&record) {
                return Ok(Deleted::Refused);
            }
            tasks.remove(id.as_str())?;
            txn.open_table(PIECES)?
                .retain_in((id.as_str(), 0u32)..=(id.as_str(), u32::MAX), |_, _| false)?;
            Ok(Deleted::Removed(record))
        })?;
        if matches!(outcome, Deleted::Refused) {
            return Ok(outcome);
        }
        let path = self.content_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(&path, e)),
        }
        lock(&self.touched).remove(id);
        if let Deleted::Removed(record) = &outcome {
            tracing::debug!(task_id = %id, bytes = record.content_length, "task deleted");
        }
        Ok(outcome)
    }
}

/// Reads a task record from a tasks table.
fn get_task(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &TaskId,
) -> Result<Option<TaskRecord>> {
    match table.get(id.as_str())? {
        Some(v) => decode_task(id.as_str(), v.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads a piece record from a pieces table.
fn get_piece(
    table: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    id: &TaskId,
    number: u32,
) -> Result<Option<PieceRecord>> {
    match table.get((id.as_str(), number))? {
        Some(v) => decode_piece(id.as_str(), number, v.value()).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
