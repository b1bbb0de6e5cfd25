//! Storing a response's pieces: a lane (one response carrying pieces back to back, from the
//! source or one piece from a parent) written piece by piece, each committed as it completes,
//! with the content hash fed the same buffers on the way when it has reached the piece; and the
//! check that a ranged answer is the range asked.

use super::driver::blocking;
use super::pieces::{Body, LaneError, RemoteError, SourceAnswer};
use super::room::Room;
use crate::rate::TaskRate;
use crate::source::http::content_range;
use crate::storage::{PieceRecord, Storage, StorageError};
use dragonfly_common::error::Retry;
use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes buffered before a write to the content file.
const WRITE_CHUNK: usize = 1 << 20;

/// What the bytes of a piece being written wait for: the download rate limit, and room on
/// disk (reserved before each piece).
#[derive(Clone)]
pub(super) struct Gate {
    pub(super) rate: TaskRate,
    pub(super) room: Room,
}

/// The content digest computed from the bytes as lanes store them, in order, so the finished
/// content needs no second read. `None` once it was lost (a lane failed while holding it):
/// then the whole file is hashed at the end.
pub(super) type InlineHash = Arc<std::sync::Mutex<Option<Hashed>>>;

/// The first `next` bytes of the content, all in committed pieces, went into `hasher`.
pub(super) struct Hashed {
    pub(super) next: u64,
    pub(super) hashers: Vec<dragonfly_common::digest::Hasher>,
}

/// How the pieces of a response are recorded.
#[derive(Clone, Copy)]
pub(super) struct Commit<'a> {
    /// The crc32 a parent announced for its piece (a parent's response is one piece).
    pub(super) expected_crc: Option<u32>,
    /// Where the bytes came from: a parent's peer id, or "" for the source.
    pub(super) from: &'a str,
}

impl Commit<'static> {
    pub(super) const SOURCE: Self = Commit {
        expected_crc: None,
        from: "",
    };
}

/// The answer carries the bytes `[first, end)`: a 206 with that Content-Range, or a 200 (the
/// caller checked that a 200 is the whole content).
pub(super) fn check_range(
    answer: &impl SourceAnswer,
    first: u64,
    end: u64,
) -> Result<(), RemoteError> {
    if answer.status() == StatusCode::OK {
        return Ok(()); // the whole content is this one lane
    }
    match content_range(answer.headers()) {
        Some((a, b, _)) if a == first && b + 1 == end => Ok(()),
        got => Err(RemoteError::WrongRange {
            first,
            last: end - 1,
            got,
        }),
    }
}

fn piece_write_error(e: StorageError) -> LaneError {
    if e.is_corrupt_piece() || !matches!(e, StorageError::Io { .. } | StorageError::Metadata(_)) {
        // Too many or too few bytes, or not the announced crc32: the remote sent the wrong
        // thing (a parent is not asked again; the source may send it right next time).
        LaneError::Remote(RemoteError::Bytes(e), Retry::Same)
    } else {
        LaneError::Storage(e)
    }
}

/// Store a response that carries `pieces` back to back, committing each piece as soon as its
/// last byte is written and handing it to `stored` with the time it took. The content hash,
/// when it has reached a piece, is fed the same buffers on the way to the file. A body that
/// ends early, or goes on past the last piece, fails (the last piece is then not recorded).
pub(super) struct Lane<'a> {
    pub(super) storage: &'a Storage,
    pub(super) id: &'a TaskId,
    pub(super) layout: PieceLayout,
    pub(super) hash: Option<&'a InlineHash>,
    pub(super) commit: Commit<'a>,
    pub(super) gate: &'a Gate,
}

impl Lane<'_> {
    pub(super) async fn write(
        &self,
        pieces: std::ops::Range<u32>,
        mut body: impl Body,
        mut stored: impl FnMut(PieceRecord, Duration),
    ) -> Result<(), LaneError> {
        let Lane {
            storage,
            id,
            layout,
            hash,
            commit,
            gate,
        } = *self;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
        let mut carry = bytes::Bytes::new();
        let last = pieces.end.saturating_sub(1);
        let remote = |e| LaneError::Remote(e, Retry::Same);
        for n in pieces {
            let Some(range) = layout.piece(n) else {
                break;
            };
            let t0 = Instant::now();
            // Held until the piece is stored or abandoned.
            let _room = gate
                .room
                .reserve(range.length)
                .await
                .map_err(LaneError::Storage)?;
            let (s, i) = (storage.clone(), id.clone());
            let mut writer = blocking(move || s.piece_writer(&i, n))
                .await
                .map_err(LaneError::Storage)?;
            // Held while this piece is written and put back once it is committed: a failure
            // loses it, and the end hashes the whole file instead.
            let mut hashing = hash.and_then(|h| {
                let mut g = h.lock().ok()?;
                match g.as_ref() {
                    Some(st) if st.next == range.offset => g.take(),
                    _ => None,
                }
            });
            let mut left = range.length;
            while left > 0 {
                while left > 0 && buf.len() < WRITE_CHUNK {
                    if carry.is_empty() {
                        carry = match body.chunk().await.map_err(remote)? {
                            Some(c) => {
                                gate.rate.acquire(c.len() as u64).await;
                                c
                            }
                            None => return Err(remote(RemoteError::ShortBody(n))),
                        };
                    }
                    let take = (left as usize)
                        .min(carry.len())
                        .min(WRITE_CHUNK - buf.len());
                    buf.extend_from_slice(&carry.split_to(take));
                    left -= take as u64;
                }
                (writer, buf, hashing) = blocking(move || {
                    writer.write(&buf)?;
                    if let Some(h) = hashing.as_mut() {
                        for hasher in &mut h.hashers {
                            hasher.update(&buf);
                        }
                        h.next += buf.len() as u64;
                    }
                    buf.clear();
                    Ok((writer, buf, hashing))
                })
                .await
                .map_err(piece_write_error)?;
            }
            if n == last {
                let more = match carry.is_empty() {
                    true => body
                        .chunk()
                        .await
                        .map(|c| c.is_some_and(|c| !c.is_empty()))
                        .map_err(remote)?,
                    false => true,
                };
                if more {
                    return Err(remote(RemoteError::LongBody(n)));
                }
            }
            let from = commit.from.to_string();
            let expected_crc = commit.expected_crc;
            let record = blocking(move || writer.commit(expected_crc, Some(&from)))
                .await
                .map_err(piece_write_error)?;
            if let (Some(h), Some(done)) = (hash, hashing)
                && let Ok(mut g) = h.lock()
            {
                *g = Some(done);
            }
            stored(record, t0.elapsed());
        }
        Ok(())
    }
}
