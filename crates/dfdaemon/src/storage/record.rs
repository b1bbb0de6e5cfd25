//! Typed metadata records and their encoding in the metadata database.
//!
//! Each record is stored as a JSON object with a `"v"` (record version) field next to the
//! record's own fields. Fields added later must carry `#[serde(default)]`, so older records
//! still decode; unknown fields are ignored, so a downgrade still reads newer records.

use super::error::StorageError;
use dragonfly_common::piece::{PieceLayout, PieceRange};
use dragonfly_common::task_id::TaskId;
pub use dragonfly_common::validator::SourceValidator;
use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version written into every record.
pub const RECORD_VERSION: u32 = 1;

/// Tasks keyed by task id (64 hex).
pub(crate) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// Pieces keyed by (task id, piece number); a task's pieces are one contiguous key range.
pub(crate) const PIECES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("pieces");
/// Storage-wide facts, e.g. `boot_id`: the kernel boot the page cache belongs to.
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Created or resumable: not being downloaded right now.
    Pending,
    /// Being downloaded; never evicted by GC. Becomes `Pending` on restart.
    Running,
    /// Every piece is stored and synced.
    Finished,
    /// The last download failed; stored pieces are kept for a retry.
    Failed,
}

/// One task's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id (also the content file's name).
    pub id: TaskId,
    /// The URL the task was created for (informational only; never used for paths).
    pub url: String,
    /// Content length in bytes.
    pub content_length: u64,
    /// Piece length in bytes.
    pub piece_length: u64,
    /// Number of pieces.
    pub piece_count: u32,
    /// Expected digest of the whole content (`sha256:<hex>`), when known.
    pub digest: Option<String>,
    /// Life-cycle state.
    pub state: TaskState,
    /// Creation time, unix ms.
    pub created_at: u64,
    /// Last access, unix ms (GC evicts the least recently accessed first).
    pub last_access: u64,
    /// Number of stored pieces.
    pub finished_pieces: u32,
    /// Digests of the finished content computed here (`sha256:<hex>` always once finished;
    /// other algorithms once asked for), so a caller's digest is checked without a re-read.
    #[serde(default)]
    pub content_digests: Vec<String>,
    /// The origin's validator of the version these bytes are from (later ranges are asked
    /// with `If-Range`, so pieces of two versions never mix).
    #[serde(default)]
    pub validator: Option<SourceValidator>,
}

impl TaskRecord {
    /// The task's piece layout.
    pub fn layout(&self) -> Result<PieceLayout, StorageError> {
        PieceLayout::new(self.content_length, self.piece_length).map_err(|source| {
            StorageError::InvalidLayout {
                task: self.id.clone(),
                source,
            }
        })
    }

    /// The byte range of piece `number`.
    pub fn piece_range(&self, number: u32) -> Result<PieceRange, StorageError> {
        self.layout()?
            .piece(number)
            .ok_or_else(|| StorageError::PieceOutOfRange {
                task: self.id.clone(),
                piece: number,
                piece_count: self.piece_count,
            })
    }

    /// Bytes of the task on disk: its content length once finished; before, its stored pieces
    /// (content files are sparse and pieces are allocated as they are written).
    pub fn stored_bytes(&self) -> u64 {
        if self.is_finished() {
            return self.content_length;
        }
        u64::from(self.finished_pieces)
            .saturating_mul(self.piece_length)
            .min(self.content_length)
    }

    /// Whether every piece is stored and the task was marked finished.
    pub fn is_finished(&self) -> bool {
        self.state == TaskState::Finished
    }

    /// The recorded digest of the content for `algorithm` (`sha256`, ...), if computed.
    pub fn content_digest(&self, algorithm: &str) -> Option<&str> {
        self.content_digests
            .iter()
            .map(String::as_str)
            .find(|d| d.split_once(':').is_some_and(|(a, _)| a == algorithm))
    }
}

/// One stored piece's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRecord {
    /// Piece number.
    pub number: u32,
    /// Offset in the content file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of the bytes.
    pub crc32: u32,
    /// Who the piece came from: `Some("")` = the origin, `Some(peer id)` = that parent,
    /// `None` = not recorded.
    pub parent_id: Option<String>,
    /// When it was stored, unix ms.
    pub stored_at: u64,
}

impl PieceRecord {
    /// Whether the record describes exactly this range.
    pub(crate) fn matches(&self, range: &PieceRange) -> bool {
        self.number == range.number && self.offset == range.offset && self.length == range.length
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    v: u32,
    #[serde(flatten)]
    record: &'a T,
}

#[derive(Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    record: T,
}

/// Encodes a record with its version.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    serde_json::to_vec(&EnvelopeRef {
        v: RECORD_VERSION,
        record,
    })
    .unwrap_or_default()
}

/// Decodes a record; `kind` and `key` name it in the error.
pub(crate) fn decode<T: DeserializeOwned>(
    kind: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    let corrupt = |reason: &str, source| StorageError::CorruptRecord {
        kind,
        key: key.to_string(),
        reason: reason.to_string(),
        source,
    };
    let env: Envelope<T> =
        serde_json::from_slice(bytes).map_err(|e| corrupt("it does not decode", Some(e)))?;
    if env.v == 0 {
        return Err(corrupt("record version 0", None));
    }
    Ok(env.record)
}

/// Decodes a task record and checks it is for the key it is stored under.
pub(crate) fn decode_task(key: &str, bytes: &[u8]) -> Result<TaskRecord, StorageError> {
    let rec: TaskRecord = decode("task", key, bytes)?;
    if rec.id.as_str() != key {
        return Err(StorageError::CorruptRecord {
            kind: "task",
            key: key.to_string(),
            reason: format!("record is for task {}", rec.id),
            source: None,
        });
    }
    rec.layout()?;
    Ok(rec)
}

/// Decodes a piece record and checks it is for the number it is stored under.
pub(crate) fn decode_piece(
    task: &str,
    number: u32,
    bytes: &[u8],
) -> Result<PieceRecord, StorageError> {
    let key = || format!("{task}/{number}");
    let rec: PieceRecord = decode("piece", &key(), bytes)?;
    if rec.number != number {
        return Err(StorageError::CorruptRecord {
            kind: "piece",
            key: key(),
            reason: format!("record is for piece {}", rec.number),
            source: None,
        });
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskRecord {
        TaskRecord {
            id: "ab".repeat(32).parse().unwrap(),
            url: "https://h/o".into(),
            content_length: 10,
            piece_length: 4,
            piece_count: 3,
            digest: None,
            state: TaskState::Running,
            created_at: 1,
            last_access: 2,
            finished_pieces: 0,
            content_digests: Vec::new(),
            validator: None,
        }
    }

    #[test]
    fn round_trip_with_version() {
        let t = task();
        let bytes = encode(&t);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(decode_task(t.id.as_str(), &bytes).unwrap(), t);
        let p = PieceRecord {
            number: 2,
            offset: 8,
            length: 2,
            crc32: 7,
            parent_id: Some(String::new()),
            stored_at: 3,
        };
        assert_eq!(decode_piece("x", 2, &encode(&p)).unwrap(), p);
        assert!(decode_piece("x", 3, &encode(&p)).is_err());
    }

    #[test]
    fn newer_records_with_extra_fields_decode() {
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&task())).unwrap();
        json["v"] = 2.into();
        json["added_later"] = "x".into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(decode_task(task().id.as_str(), &bytes).unwrap(), task());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let id = task().id;
        for bad in [&b""[..], b"{", b"{\"v\":1}", b"\xff\xfe", b"{\"v\":0}"] {
            assert!(matches!(
                decode_task(id.as_str(), bad),
                Err(StorageError::CorruptRecord { .. })
            ));
        }
        // A record stored under another key, or with an impossible layout, is corrupt too.
        assert!(decode_task(&"cd".repeat(32), &encode(&task())).is_err());
        let mut t = task();
        t.piece_length = 0;
        assert!(decode_task(id.as_str(), &encode(&t)).is_err());
        // A path-traversal id inside a record does not decode.
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&task())).unwrap();
        json["id"] = "../../etc/passwd".into();
        assert!(decode_task("../../etc/passwd", &serde_json::to_vec(&json).unwrap()).is_err());
    }
}
