//! `DfdaemonUpload` gRPC: SyncPieces (piece metadata pushed as pieces land).

use crate::storage::{PieceRecord, SourceValidator};
use crate::task::{Phase, TaskManager};
use dragonfly_common::error::chain;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::DfdaemonUpload;
use dragonfly_proto::common::v1::{Piece, Task as ProtoTask};
use dragonfly_proto::dfdaemon::v1::{
    DeleteTaskRequest, DownloadTaskRequest, DownloadTaskResponse, StatTaskRequest,
    SyncPiecesRequest, SyncPiecesResponse,
};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// A stream of gRPC answers.
pub type Msgs<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a seed peer does when the scheduler asks it, on the upload port, to download a task
/// nobody holds yet. The daemon's download service implements it; the upload server, below the
/// daemon's wiring, knows only this.
#[tonic::async_trait]
pub trait SeedDownload: Send + Sync + 'static {
    /// Download the task and stream its progress, as `DfdaemonDownload::DownloadTask` does.
    async fn download_task(
        &self,
        req: Request<DownloadTaskRequest>,
    ) -> Result<Response<Msgs<DownloadTaskResponse>>, Status>;
}

pub(crate) struct SyncService {
    engine: TaskManager,
    seed: Option<Arc<dyn SeedDownload>>,
}

impl SyncService {
    pub(crate) fn new(engine: TaskManager, seed: Option<Arc<dyn SeedDownload>>) -> Self {
        Self { engine, seed }
    }
}

fn piece_msg(
    p: &PieceRecord,
    content_length: u64,
    piece_length: u64,
    piece_count: u32,
    version: &SourceValidator,
) -> SyncPiecesResponse {
    SyncPiecesResponse {
        piece: Some(Piece {
            number: p.number,
            offset: p.offset,
            length: p.length,
            crc32: Some(p.crc32),
            ..Default::default()
        }),
        content_length: Some(content_length),
        piece_count: Some(piece_count),
        piece_length: Some(piece_length),
        etag: version.etag.clone(),
        last_modified: version.last_modified.clone(),
    }
}

fn storage_status(e: impl std::error::Error) -> Status {
    Status::internal(chain(&e))
}

#[tonic::async_trait]
impl DfdaemonUpload for SyncService {
    type SyncPiecesStream = Msgs<SyncPiecesResponse>;
    type DownloadTaskStream = Msgs<DownloadTaskResponse>;

    async fn sync_pieces(
        &self,
        req: Request<SyncPiecesRequest>,
    ) -> Result<Response<Self::SyncPiecesStream>, Status> {
        let req = req.into_inner();
        let id: TaskId = req
            .task_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?;
        let wanted: HashSet<u32> = req.interested_piece_numbers.into_iter().collect();
        let keep = move |n: u32| wanted.is_empty() || wanted.contains(&n);
        let storage = self.engine.storage().clone();
        let running = self.engine.running(&id);
        // Subscribe before reading what is stored, so no piece falls between the two.
        let mut updates = running.as_ref().map(|t| (t.subscribe(), t.watch()));
        let layout = match &running {
            Some(t) => Some(
                t.layout()
                    .await
                    .map_err(|e| Status::unavailable(chain(&e)))?,
            ),
            None => None,
        };
        let (s, i) = (storage.clone(), id.clone());
        let (record, stored) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::storage::StorageError>((s.task(&i)?, s.pieces(&i)?))
        })
        .await
        .map_err(storage_status)?
        .map_err(storage_status)?;
        let layout = match (layout, &record) {
            (Some(l), _) => l,
            (None, Some(r)) if r.is_finished() => r.layout().map_err(storage_status)?,
            _ => return Err(Status::not_found(format!("task {id} is not on this node"))),
        };
        let (len, pl, count) = (
            layout.content_length(),
            layout.piece_length(),
            layout.piece_count(),
        );
        let version = record
            .as_ref()
            .and_then(|r| r.validator.clone())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut sent = HashSet::new();
            for p in stored.iter().filter(|p| keep(p.number)) {
                if tx
                    .send(Ok(piece_msg(p, len, pl, count, &version)))
                    .await
                    .is_err()
                {
                    return;
                }
                sent.insert(p.number);
            }
            let Some((pieces, mut phase)) = updates.take() else {
                return;
            };
            let mut pieces = pieces;
            loop {
                tokio::select! {
                    got = pieces.recv() => match got {
                        Ok(p) => {
                            if keep(p.number) && sent.insert(p.number)
                                && tx.send(Ok(piece_msg(&p, len, pl, count, &version))).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Missed some: catch up from storage.
                            let (s, i) = (storage.clone(), id.clone());
                            let Ok(Ok(all)) = tokio::task::spawn_blocking(move || s.pieces(&i)).await else { return };
                            for p in all.iter().filter(|p| keep(p.number)) {
                                if sent.insert(p.number) && tx.send(Ok(piece_msg(p, len, pl, count, &version))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    changed = phase.changed() => {
                        if changed.is_err() { return; }
                        let ph = phase.borrow().phase.clone();
                        match ph {
                            Phase::Finished => {
                                // Drain what is queued, then end the stream.
                                while let Ok(p) = pieces.try_recv() {
                                    if keep(p.number) && sent.insert(p.number) && tx.send(Ok(piece_msg(&p, len, pl, count, &version))).await.is_err() {
                                        return;
                                    }
                                }
                                return;
                            }
                            Phase::Failed(e) => {
                                let _ = tx.send(Err(Status::aborted(format!("task {id} failed here: {}", chain(&e))))).await;
                                return;
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn download_task(
        &self,
        req: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let Some(seed) = &self.seed else {
            return Err(Status::failed_precondition(
                "this daemon is not a seed peer (seedPeer.enable is false): it downloads only for its own clients",
            ));
        };
        let remote = req.remote_addr();
        let download = req.get_ref().download.as_ref();
        if download
            .and_then(|d| d.output_path.as_deref())
            .is_some_and(|p| !p.is_empty())
        {
            return Err(Status::invalid_argument(
                "output_path is not allowed on the upload port: a remote peer cannot write files on this node",
            ));
        }
        tracing::info!(url = download.map(|d| d.url.as_str()).unwrap_or(""), from = ?remote, "seed peer asked to download a task");
        let resp = seed.download_task(req).await?;
        let stream: Self::DownloadTaskStream = resp.into_inner();
        Ok(Response::new(stream))
    }

    async fn stat_task(
        &self,
        req: Request<StatTaskRequest>,
    ) -> Result<Response<ProtoTask>, Status> {
        stat_task(self.engine.storage(), &req.into_inner().task_id)
            .await
            .map(Response::new)
    }

    async fn delete_task(&self, _req: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        Err(Status::permission_denied(
            "tasks are deleted by the node's own GC, not by other peers",
        ))
    }
}

/// `StatTask` of both gRPC services: the stored task with this id, or NOT_FOUND.
pub(crate) async fn stat_task(
    storage: &crate::storage::Storage,
    raw_id: &str,
) -> Result<ProtoTask, Status> {
    let id: TaskId = raw_id
        .parse()
        .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?;
    let (s, i) = (storage.clone(), id.clone());
    let rec = tokio::task::spawn_blocking(move || s.task(&i))
        .await
        .map_err(storage_status)?
        .map_err(storage_status)?
        .ok_or_else(|| Status::not_found(format!("task {id} is not on this node")))?;
    Ok(ProtoTask {
        id: rec.id.to_string(),
        url: rec.url,
        digest: rec.digest,
        content_length: Some(rec.content_length),
        piece_length: Some(rec.piece_length),
        piece_count: Some(rec.piece_count),
        ..Default::default()
    })
}
