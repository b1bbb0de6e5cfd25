//! Reading a task's bytes in order while its pieces are still landing.

use super::{Task, TaskError};
use bytes::Bytes;
use futures::Stream;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;

/// Size of the chunks a reader yields.
const READ_CHUNK: u64 = 256 * 1024;

/// A stream of the bytes `[start, end)` of a task, waiting for each piece as needed.
pub struct TaskReader {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, TaskError>> + Send>>,
}

impl TaskReader {
    pub(super) fn new(task: Arc<Task>, start: u64, end: Option<u64>) -> Self {
        let stream = futures::stream::try_unfold(
            (task, start, end, None::<Arc<std::fs::File>>),
            |(task, pos, end, file)| async move {
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
                let file = match file {
                    Some(f) => f,
                    None => {
                        let path = task.storage().content_path(&task.id);
                        Arc::new(std::fs::File::open(&path).map_err(|e| {
                            TaskError::Storage(format!("opening {}: {e}", path.display()))
                        })?)
                    }
                };
                let len = (piece.end().min(end) - pos).min(READ_CHUNK);
                let f = file.clone();
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(|e| TaskError::Storage(e.to_string()))?
                .map_err(|e| TaskError::Storage(format!("reading task {}: {e}", task.id)))?;
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
