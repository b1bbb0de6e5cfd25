//! Reading a task's bytes in order while its pieces are still landing.

use super::{Task, TaskError};
use bytes::Bytes;
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

impl TaskReader {
    pub(super) fn new(task: Arc<Task>, start: u64, end: Option<u64>) -> Self {
        let stream = futures::stream::try_unfold(
            (task, start, end, None::<std::fs::File>),
            |(task, pos, end, file): (Arc<Task>, u64, Option<u64>, Cursor)| async move {
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
                let len = (piece.end().min(end) - pos).min(READ_CHUNK);
                let path = task.storage().content_path(&task.id);
                let id = task.id.clone();
                let (chunk, file) = tokio::task::spawn_blocking(move || {
                    let mut f = match file {
                        Some(f) => f,
                        None => {
                            let mut f = std::fs::File::open(&path).map_err(|e| {
                                TaskError::Storage(format!("opening {}: {e}", path.display()))
                            })?;
                            f.seek(SeekFrom::Start(pos)).map_err(|e| {
                                TaskError::Storage(format!("reading task {id}: {e}"))
                            })?;
                            f
                        }
                    };
                    // read_to_end fills spare capacity without zeroing it first.
                    let mut buf = Vec::with_capacity(len as usize);
                    (&mut f)
                        .take(len)
                        .read_to_end(&mut buf)
                        .map_err(|e| TaskError::Storage(format!("reading task {id}: {e}")))?;
                    if buf.len() as u64 != len {
                        return Err(TaskError::Storage(format!(
                            "reading task {id}: the content file ends at {} bytes before {}",
                            pos + buf.len() as u64,
                            pos + len
                        )));
                    }
                    Ok((Bytes::from(buf), f))
                })
                .await
                .map_err(|e| TaskError::Storage(e.to_string()))??;
                Ok(Some((chunk, (task, pos + len, Some(end), Some(file)))))
            },
        );
        Self {
            inner: Box::pin(stream),
        }
    }
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
