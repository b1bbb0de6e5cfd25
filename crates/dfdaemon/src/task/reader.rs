//! Reading a task's bytes in order while its pieces are still landing.

use super::{Task, TaskError};
use crate::storage::StorageError;
use bytes::Bytes;
use dragonfly_common::piece::PieceRange;
use futures::Stream;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;

/// Size of the chunks a reader yields: large enough that the per-chunk hop to a blocking
/// thread is noise next to the copy (256 KiB chunks spent ~15% of a cache hit's CPU on it).
const READ_CHUNK: u64 = 1024 * 1024;

/// A stream of the bytes `[start, end)` of a task, waiting for each piece as needed.
pub struct TaskReader {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, TaskError>> + Send>>,
}

/// The reader's file, positioned at the next byte to read (one handle per reader).
type Cursor = Option<std::fs::File>;

/// Where a reader is: the next byte, its open file, and the crc32 of the piece it is in.
struct ReadState {
    task: Arc<Task>,
    pos: u64,
    end: Option<u64>,
    file: Cursor,
    /// The piece being read and the crc32 of its bytes up to `pos`.
    crc: Option<(u32, crc32fast::Hasher)>,
    /// The task's rewrite count when the read started.
    rewrites: u64,
}

impl TaskReader {
    pub(super) fn new(task: Arc<Task>, start: u64, end: Option<u64>) -> Self {
        let rewrites = task.rewrites();
        let state = ReadState {
            task,
            pos: start,
            end,
            file: None,
            crc: None,
            rewrites,
        };
        let stream = futures::stream::try_unfold(state, |st: ReadState| async move {
            let ReadState {
                task,
                pos,
                end,
                file,
                crc,
                rewrites,
            } = st;
            let layout = task.layout().await?;
            let end = end
                .unwrap_or(layout.content_length())
                .min(layout.content_length());
            if pos >= end {
                return Ok(None);
            }
            let Some(piece) = layout.piece_at(pos) else {
                return Ok(None);
            };
            task.wait_piece(piece.number).await?;
            if task.rewrites() != rewrites {
                return Err(TaskError::Rewritten {
                    task: task.id.clone(),
                });
            }
            let len = (piece.end().min(end) - pos).min(READ_CHUNK);
            let path = task.storage().content_path(&task.id);
            let t = task.clone();
            let (chunk, file, crc) = tokio::task::spawn_blocking(move || {
                let id = &t.id;
                let mut f = match file {
                    Some(f) => f,
                    None => {
                        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
                        f.seek(SeekFrom::Start(pos)).map_err(io(&path))?;
                        f
                    }
                };
                // read_to_end fills spare capacity without zeroing it first.
                let mut buf = Vec::with_capacity(len as usize);
                (&mut f)
                    .take(len)
                    .read_to_end(&mut buf)
                    .map_err(io(&path))?;
                if buf.len() as u64 != len {
                    return Err(io(&path)(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the content file of task {id} ends at {} bytes before {}",
                            pos + buf.len() as u64,
                            pos + len
                        ),
                    )));
                }
                let crc = check_piece(&t, &path, piece, pos, end, &buf, crc)?;
                Ok((Bytes::from(buf), f, crc))
            })
            .await
            .map_err(TaskError::joined)??;
            let next = ReadState {
                task,
                pos: pos + len,
                end: Some(end),
                file: Some(file),
                crc,
                rewrites,
            };
            Ok(Some((chunk, next)))
        });
        Self {
            inner: Box::pin(stream),
        }
    }
}

/// Feed `buf` (the bytes at `pos` of `piece`) to the piece's crc32; a read that starts or
/// ends inside the piece hashes the rest of it from the file. Once the piece is complete its
/// crc32 must be the stored one: a piece damaged on disk is dropped (so it is fetched again)
/// and the read fails before the piece's last bytes go out.
fn check_piece(
    task: &Task,
    path: &std::path::Path,
    piece: PieceRange,
    pos: u64,
    read_end: u64,
    buf: &[u8],
    crc: Option<(u32, crc32fast::Hasher)>,
) -> Result<Option<(u32, crc32fast::Hasher)>, TaskError> {
    use std::os::unix::fs::FileExt;
    let id = &task.id;
    let io = io(path);
    let hash_range = |h: &mut crc32fast::Hasher, from: u64, to: u64| -> Result<(), TaskError> {
        let f = std::fs::File::open(path).map_err(&io)?;
        let mut b = vec![0u8; (to - from).min(READ_CHUNK) as usize];
        let mut at = from;
        while at < to {
            let n = b.len().min((to - at) as usize);
            f.read_exact_at(&mut b[..n], at).map_err(&io)?;
            h.update(&b[..n]);
            at += n as u64;
        }
        Ok(())
    };
    let mut h = match crc {
        Some((n, h)) if n == piece.number => h,
        _ => {
            let mut h = crc32fast::Hasher::new();
            hash_range(&mut h, piece.offset, pos)?;
            h
        }
    };
    h.update(buf);
    let read_to = pos + buf.len() as u64;
    if read_to < piece.end() && read_to < read_end {
        return Ok(Some((piece.number, h)));
    }
    hash_range(&mut h, read_to, piece.end())?;
    let actual = h.finalize();
    let record = task
        .storage()
        .piece_record(id, piece.number)?
        .ok_or_else(|| StorageError::PieceNotFound {
            task: id.clone(),
            piece: piece.number,
        })?;
    if record.crc32 != actual {
        task.storage()
            .drop_stored_piece(id, piece.number, record.crc32)?;
        return Err(TaskError::DamagedOnRead {
            task: id.clone(),
            piece: piece.number,
            actual,
            stored: record.crc32,
        });
    }
    Ok(None)
}

impl Stream for TaskReader {
    type Item = Result<Bytes, TaskError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A read of the content file failed, as the task's error (naming the file).
fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> TaskError + '_ {
    move |source| {
        TaskError::Storage(std::sync::Arc::new(StorageError::Io {
            path: path.to_path_buf(),
            source,
        }))
    }
}
