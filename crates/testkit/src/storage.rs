//! Fixtures for tests of dfdaemon's storage.

use dfdaemon::storage::{NewTask, PieceRecord, Storage};
use dragonfly_common::task_id::TaskId;

/// The id of test task `n` (the URL `https://origin/file/<n>`).
pub fn task_id(n: u32) -> TaskId {
    TaskId::for_url(&format!("https://origin/file/{n}"), "", "", None, &[])
}

/// A task of `len` bytes in pieces of `piece_length`, without a digest or validator.
pub fn new_task(id: &TaskId, len: u64, piece_length: u64) -> NewTask {
    NewTask {
        id: id.clone(),
        url: format!("https://origin/{id}"),
        content_length: len,
        piece_length,
        digest: None,
        validator: None,
    }
}

/// Write `bytes` as piece `n` of task `id` and commit it without a checksum, from `parent`
/// (`None`: the source). Panics on an error (test helper).
pub fn put_piece(
    s: &Storage,
    id: &TaskId,
    n: u32,
    bytes: &[u8],
    parent: Option<&str>,
) -> PieceRecord {
    let mut w = s
        .piece_writer(id, n)
        .unwrap_or_else(|e| panic!("piece {n} of {id}: {e}"));
    w.write(bytes)
        .unwrap_or_else(|e| panic!("writing piece {n} of {id}: {e}"));
    w.commit(None, parent)
        .unwrap_or_else(|e| panic!("committing piece {n} of {id}: {e}"))
}
