//! `DfdaemonDownload` on the local unix socket: dfget asks the daemon to download a task and
//! write it to `-O` (hardlink with `storage.multiplex`, else copy), following its pieces.

use super::output::OutputWriter;
use crate::download::validate_url;
use crate::storage::PieceRecord;
use crate::task::{Parent, Phase, TaskManager, TaskRequest};
use dragonfly_common::digest::Digest;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::DfdaemonDownload;
use dragonfly_proto::common::v1::{Piece, Task as ProtoTask};
use dragonfly_proto::dfdaemon::v1::{
    DeleteTaskRequest, DownloadPieceFinishedResponse, DownloadTaskRequest, DownloadTaskResponse,
    DownloadTaskStartedResponse, StatTaskRequest, download_task_response,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashSet;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type Msgs<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The local download service.
pub struct DownloadService {
    engine: TaskManager,
    multiplex: bool,
    parents: Vec<Parent>,
}

impl DownloadService {
    /// A service over `engine`; `multiplex` hardlinks outputs to the stored content;
    /// `parents` are static parents to try before the source.
    pub fn new(engine: TaskManager, multiplex: bool, parents: Vec<Parent>) -> Self {
        Self {
            engine,
            multiplex,
            parents,
        }
    }
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

fn headers(raw: &std::collections::HashMap<String, String>) -> Result<HeaderMap, Status> {
    let mut map = HeaderMap::new();
    for (k, v) in raw {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            Status::invalid_argument(format!("request header name {k:?} is not valid"))
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            Status::invalid_argument(format!("request header {k:?} has an invalid value"))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

#[tonic::async_trait]
impl DfdaemonDownload for DownloadService {
    type DownloadTaskStream = Msgs<DownloadTaskResponse>;

    async fn download_task(
        &self,
        req: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let d = req
            .into_inner()
            .download
            .ok_or_else(|| Status::invalid_argument("download is missing"))?;
        validate_url(&d.url).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let digest = d
            .digest
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse::<Digest>)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let output = d
            .output_path
            .clone()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if let Some(out) = &output
            && !out.is_absolute()
        {
            return Err(Status::invalid_argument(format!(
                "output path {} is not absolute",
                out.display()
            )));
        }
        let treq = TaskRequest {
            url: d.url.clone(),
            headers: headers(&d.request_header)?,
            tag: d.tag.clone(),
            application: d.application.clone(),
            piece_length: d.piece_length,
            digest,
            filtered_query_params: d.filtered_query_params.clone(),
            task_id: None,
            parents: self.parents.clone(),
            source: None,
            streaming: false,
        };
        let task = self
            .engine
            .download(treq)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut updates = task.subscribe();
        let layout = task
            .layout()
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let (storage, id) = (self.engine.storage().clone(), task.id.clone());
        let (s, i) = (storage.clone(), id.clone());
        let stored = tokio::task::spawn_blocking(move || s.pieces(&i))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let host_id = self.engine.host_id().to_string();
        let multiplex = self.multiplex;
        let (tx, rx) = mpsc::channel(64);
        let peer_id = task.peer_id.clone();
        let msg = move |r: download_task_response::Response| DownloadTaskResponse {
            host_id: host_id.clone(),
            task_id: id.to_string(),
            peer_id: peer_id.clone(),
            response: Some(r),
        };
        let pin = self.engine.pin(&task.id);
        let content = storage.content_path(&task.id);
        let mut writer = match &output {
            Some(out) => {
                let (c, o, len) = (content.clone(), out.clone(), layout.content_length());
                let w =
                    tokio::task::spawn_blocking(move || OutputWriter::new(&c, &o, multiplex, len))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|e| Status::internal(format!("writing {}: {e}", out.display())))?;
                Some(w)
            }
            None => None,
        };
        tokio::spawn(async move {
            let _pin = pin;
            let mut sent: HashSet<u32> = stored.iter().map(|p| p.number).collect();
            let finished_now = sent.len() as u32 == layout.piece_count();
            let started = DownloadTaskStartedResponse {
                content_length: Some(layout.content_length()),
                piece_length: Some(layout.piece_length()),
                pieces: stored.iter().map(proto_piece).collect(),
                is_finished: finished_now,
            };
            if tx.send(Ok(msg(started.into()))).await.is_err() {
                return;
            }
            let fail = |e: std::io::Error| Status::internal(format!("writing the output: {e}"));
            let mut copied: HashSet<u32> = HashSet::new();
            let mut pending: Vec<(u32, u64, u64)> = stored
                .iter()
                .map(|p| (p.number, p.offset, p.length))
                .collect();
            let mut watch = task.watch();
            loop {
                if !pending.is_empty() {
                    if let Some(w) = writer.take() {
                        let batch = std::mem::take(&mut pending);
                        let done = tokio::task::spawn_blocking(move || {
                            let mut w = w;
                            for (_, off, len) in &batch {
                                w.piece(*off, *len)?;
                            }
                            Ok::<_, std::io::Error>((w, batch))
                        })
                        .await;
                        match done {
                            Ok(Ok((w, batch))) => {
                                copied.extend(batch.iter().map(|b| b.0));
                                writer = Some(w);
                            }
                            Ok(Err(e)) => {
                                let _ = tx.send(Err(fail(e))).await;
                                return;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                return;
                            }
                        }
                    } else {
                        pending.clear();
                    }
                }
                let phase = watch.borrow().phase.clone();
                match phase {
                    Phase::Failed(e) => {
                        let _ = tx.send(Err(Status::aborted(e.to_string()))).await;
                        return;
                    }
                    Phase::Finished => break,
                    _ => {}
                }
                tokio::select! {
                    got = updates.recv() => match got {
                        Ok(p) => {
                            pending.push((p.number, p.offset, p.length));
                            if sent.insert(p.number) {
                                let m = msg(DownloadPieceFinishedResponse { piece: Some(proto_piece(&p)) }.into());
                                if tx.send(Ok(m)).await.is_err() { return; }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {}
                    },
                    changed = watch.changed() => if changed.is_err() { break },
                }
            }
            // Pieces whose events were missed (or queued at the end): report and copy them now.
            while let Ok(p) = updates.try_recv() {
                if sent.insert(p.number) {
                    let m = msg(DownloadPieceFinishedResponse {
                        piece: Some(proto_piece(&p)),
                    }
                    .into());
                    let _ = tx.send(Ok(m)).await;
                }
            }
            if let (Some(mut w), Some(out)) = (writer, output) {
                let rest: Vec<_> = layout
                    .pieces()
                    .filter(|p| !copied.contains(&p.number))
                    .collect();
                let result = tokio::task::spawn_blocking(move || {
                    for p in rest {
                        w.piece(p.offset, p.length)?;
                    }
                    w.commit()
                })
                .await;
                match result {
                    Ok(Ok(mode)) => {
                        tracing::info!(task = %task.id, output = %out.display(), ?mode, "output written")
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(fail(e))).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat_task(
        &self,
        req: Request<StatTaskRequest>,
    ) -> Result<Response<ProtoTask>, Status> {
        crate::upload::stat_task(self.engine.storage(), &req.into_inner().task_id)
            .await
            .map(Response::new)
    }

    async fn delete_task(&self, req: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        let id: TaskId = req
            .into_inner()
            .task_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?;
        if self.engine.is_running(&id) {
            return Err(Status::failed_precondition(format!(
                "task {id} is being downloaded"
            )));
        }
        let s = self.engine.storage().clone();
        tokio::task::spawn_blocking(move || s.delete_task(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(()))
    }
}
