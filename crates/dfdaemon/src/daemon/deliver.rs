//! Delivering one caller's download: follow the task's pieces (progress messages), copy them to
//! the caller's `-O` as they land, then, before the output appears, check what this caller was
//! promised: its own `--digest` against the finished content, and every stored piece's crc32
//! (a piece damaged on disk is dropped, fetched again and copied again).

use super::output::OutputWriter;
use crate::storage::{PieceRecord, StorageError};
use crate::task::{Phase, Task, TaskError, TaskManager, TaskRequest};
use dragonfly_common::digest::Digest;
use dragonfly_common::error::chain;
use dragonfly_common::piece::PieceLayout;
use dragonfly_proto::common::v1::Piece;
use dragonfly_proto::dfdaemon::v1::{
    DownloadPieceFinishedResponse, DownloadTaskResponse, DownloadTaskStartedResponse,
    download_task_response,
};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// Times a caller's output is re-checked after pieces found damaged were fetched again.
const REPAIR_ROUNDS: u32 = 2;

/// One caller's download in progress.
pub(super) struct Delivery {
    pub engine: TaskManager,
    /// The request, to start the task again when stored pieces were found damaged.
    pub request: TaskRequest,
    pub task: Arc<Task>,
    pub layout: PieceLayout,
    /// Pieces stored when the caller arrived.
    pub stored: Vec<PieceRecord>,
    pub writer: Option<OutputWriter>,
    pub output: Option<PathBuf>,
    /// This caller's expected digest.
    pub digest: Option<Digest>,
    pub host_id: String,
    pub tx: mpsc::Sender<Result<DownloadTaskResponse, Status>>,
}

fn proto_piece(p: &PieceRecord) -> Piece {
    Piece {
        number: p.number,
        offset: p.offset,
        length: p.length,
        crc32: Some(p.crc32),
        parent_id: p.parent_id.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The status for a failed write to the output (an output that appeared meanwhile is
/// "already exists", as when it was there at the start).
fn write_status(out: Option<&std::path::Path>, e: std::io::Error) -> Status {
    let out = out.map(std::path::Path::to_path_buf).unwrap_or_default();
    match e.kind() {
        std::io::ErrorKind::AlreadyExists => super::download_service::output_status(
            crate::standalone::DownloadError::OutputExists(out),
        ),
        _ => Status::internal(format!("writing {}: {e}", out.display())),
    }
}

fn task_status(e: &TaskError) -> Status {
    match e {
        TaskError::DigestMismatch { .. } => Status::data_loss(chain(e)),
        _ => Status::aborted(chain(e)),
    }
}

impl Delivery {
    fn msg(&self, r: download_task_response::Response) -> DownloadTaskResponse {
        DownloadTaskResponse {
            host_id: self.host_id.clone(),
            task_id: self.task.id.to_string(),
            peer_id: self.task.peer_id.clone(),
            response: Some(r),
        }
    }

    /// Run to the end; errors go to the caller as the stream's last message.
    pub async fn run(mut self) {
        let _pin = self.engine.pin(&self.task.id);
        if let Err(status) = self.deliver().await {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn deliver(&mut self) -> Result<(), Status> {
        let rewrites = self.task.rewrites();
        let mut copied = self.follow().await?;
        // Pieces dropped as untrustworthy after they were copied: copy everything again.
        if self.task.rewrites() != rewrites {
            copied.clear();
        }
        let mut round = 0;
        loop {
            let rest: Vec<_> = self
                .layout
                .pieces()
                .filter(|p| !copied.contains(&p.number))
                .map(|p| (p.number, p.offset, p.length))
                .collect();
            let mut damaged = self.copy(rest.clone()).await?;
            copied.extend(rest.iter().map(|p| p.0));
            // This caller's digest, once every piece it got passed its crc32.
            if damaged.is_empty()
                && let Some(d) = self.digest.clone()
            {
                match self.task.verify_digest(&d).await {
                    Ok(()) => {}
                    Err(TaskError::DamagedPiece { piece, .. }) => damaged.push(piece),
                    Err(e) => return Err(task_status(&e)),
                }
            }
            if damaged.is_empty() {
                break;
            }
            round += 1;
            if round > REPAIR_ROUNDS {
                return Err(Status::data_loss(format!(
                    "task {}: stored pieces {damaged:?} are damaged again after {REPAIR_ROUNDS} re-downloads; the disk under the data directory may be failing",
                    self.task.id
                )));
            }
            tracing::warn!(task = %self.task.id, pieces = ?damaged, "stored pieces are damaged; fetching them again");
            let task = self
                .engine
                .download(self.request.clone())
                .await
                .map_err(|e| task_status(&e))?;
            task.wait_finished().await.map_err(|e| task_status(&e))?;
            self.task = task;
            for n in damaged {
                copied.remove(&n);
            }
        }
        if let (Some(w), Some(out)) = (self.writer.take(), self.output.clone()) {
            let client = self.tx.clone();
            // dfget gone: stop waiting for a FIFO's reader.
            let mode = tokio::task::spawn_blocking(move || w.commit(&|| !client.is_closed()))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| write_status(Some(&out), e))?;
            tracing::info!(task = %self.task.id, output = %out.display(), ?mode, "output written");
        }
        Ok(())
    }

    /// Report pieces as they land and copy them to the output, until the task finished.
    /// Returns the pieces copied.
    async fn follow(&mut self) -> Result<HashSet<u32>, Status> {
        let mut updates = self.task.subscribe();
        let mut sent: HashSet<u32> = self.stored.iter().map(|p| p.number).collect();
        let started = DownloadTaskStartedResponse {
            content_length: Some(self.layout.content_length()),
            piece_length: Some(self.layout.piece_length()),
            pieces: self.stored.iter().map(proto_piece).collect(),
            is_finished: sent.len() as u32 == self.layout.piece_count(),
        };
        if self.tx.send(Ok(self.msg(started.into()))).await.is_err() {
            return Err(Status::cancelled("the caller went away"));
        }
        let mut copied: HashSet<u32> = HashSet::new();
        let mut pending: Vec<(u32, u64, u64)> = self
            .stored
            .iter()
            .map(|p| (p.number, p.offset, p.length))
            .collect();
        let mut watch = self.task.watch();
        loop {
            if !pending.is_empty() {
                let batch = std::mem::take(&mut pending);
                // A piece found damaged is not marked copied: the end copies (and checks) it
                // again once the task has it again.
                let damaged = self.copy(batch.clone()).await?;
                copied.extend(batch.iter().map(|b| b.0).filter(|n| !damaged.contains(n)));
            }
            let phase = watch.borrow().phase.clone();
            match phase {
                Phase::Failed(e) => return Err(task_status(&e)),
                Phase::Finished => break,
                _ => {}
            }
            tokio::select! {
                got = updates.recv() => match got {
                    Ok(p) => {
                        pending.push((p.number, p.offset, p.length));
                        if sent.insert(p.number) {
                            let m = self.msg(DownloadPieceFinishedResponse { piece: Some(proto_piece(&p)) }.into());
                            if self.tx.send(Ok(m)).await.is_err() {
                                return Err(Status::cancelled("the caller went away"));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {}
                },
                changed = watch.changed() => if changed.is_err() { break },
            }
        }
        // Pieces whose events were missed (or queued at the end): report them now.
        while let Ok(p) = updates.try_recv() {
            if sent.insert(p.number) {
                let m = self.msg(
                    DownloadPieceFinishedResponse {
                        piece: Some(proto_piece(&p)),
                    }
                    .into(),
                );
                let _ = self.tx.send(Ok(m)).await;
            }
        }
        Ok(copied)
    }

    /// Check pieces `(number, offset, length)` against their stored crc32 and copy the good
    /// ones into the output (nothing without one). Damaged pieces are dropped from storage
    /// (the task is no longer finished) and returned.
    async fn copy(&mut self, batch: Vec<(u32, u64, u64)>) -> Result<Vec<u32>, Status> {
        let Some(mut w) = self.writer.take() else {
            return Ok(Vec::new());
        };
        if batch.is_empty() {
            self.writer = Some(w);
            return Ok(Vec::new());
        }
        let (storage, id) = (self.engine.storage().clone(), self.task.id.clone());
        let (w, damaged) = tokio::task::spawn_blocking(move || {
            let mut damaged = Vec::new();
            for (n, off, len) in &batch {
                match storage.verify_piece(&id, *n) {
                    Ok(None) => w.piece(*off, *len)?,
                    // Damaged now, or found damaged and dropped earlier: fetch it again.
                    // Gone since (a failed task is deleted; its phase says why).
                    Ok(Some(_))
                    | Err(
                        StorageError::PieceNotFound { .. }
                        | StorageError::TaskNotFound(_)
                        | StorageError::TaskChanged { .. },
                    ) => damaged.push(*n),
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "checking stored piece {n}: {e}"
                        )));
                    }
                }
            }
            Ok::<_, std::io::Error>((w, damaged))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| write_status(self.output.as_deref(), e))?;
        self.writer = Some(w);
        Ok(damaged)
    }
}
