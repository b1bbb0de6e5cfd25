//! Talking to parents: follow a parent's pieces (SyncPieces over gRPC) and fetch piece bytes
//! from its upload server over plain HTTP/1.1 (`GET /pieces/{task}/{number}`).

use super::pieces::RemoteError;
use super::{EngineOptions, TaskError};
use dragonfly_common::task_id::TaskId;
use dragonfly_common::validator::SourceValidator;
use dragonfly_proto::DfdaemonUploadClient;
use dragonfly_proto::dfdaemon::v1::SyncPiecesRequest;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// A parent: another daemon's upload server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Parent {
    /// The parent's peer or host id (for logs and blocklists).
    pub id: String,
    /// Address of its upload server (gRPC and piece data).
    pub addr: SocketAddr,
}

/// Metadata of a piece a parent holds.
#[derive(Debug, Clone, Copy)]
pub struct ParentPiece {
    /// Piece number.
    pub number: u32,
    /// The parent's crc32 of it.
    pub crc32: u32,
}

/// What a parent's SyncPieces stream says.
#[derive(Debug)]
pub enum ParentEvent {
    /// The task's size as the parent knows it.
    Layout {
        /// Which parent.
        parent: usize,
        /// Content length.
        content_length: u64,
        /// Piece length.
        piece_length: u64,
        /// The source version its bytes are from.
        version: SourceValidator,
    },
    /// The parent has a piece.
    Piece {
        /// Which parent.
        parent: usize,
        /// The piece.
        piece: ParentPiece,
    },
    /// The stream ended (the parent finished sending, failed, or went away).
    Closed {
        /// Which parent.
        parent: usize,
        /// Why, when it was an error.
        error: Option<String>,
    },
}

/// HTTP client for piece bytes.
#[derive(Clone)]
pub(crate) struct ParentClient {
    http: reqwest::Client,
}

impl ParentClient {
    pub(crate) fn new(opts: &EngineOptions) -> Result<Self, TaskError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(opts.piece_timeout)
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| TaskError::ParentClient(std::sync::Arc::new(e)))?;
        Ok(Self { http })
    }

    /// Start fetching piece `number` of `task` from `parent`.
    pub(crate) async fn fetch(
        &self,
        parent: &Parent,
        task: &TaskId,
        number: u32,
    ) -> Result<reqwest::Response, RemoteError> {
        let url = format!("http://{}/pieces/{}/{}", parent.addr, task, number);
        let failed = |reason: String| RemoteError::Parent {
            id: parent.id.clone(),
            addr: parent.addr,
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| failed(dragonfly_common::error::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(failed(format!(
                "answered {} for piece {number}",
                resp.status()
            )));
        }
        Ok(resp)
    }
}

/// Follow `parent`'s pieces of `task`, sending events to `tx` until the stream ends.
pub(crate) async fn follow(
    index: usize,
    parent: Parent,
    host_id: String,
    task: TaskId,
    tx: mpsc::Sender<ParentEvent>,
) {
    let error = follow_inner(index, &parent, host_id, &task, &tx)
        .await
        .err();
    let _ = tx
        .send(ParentEvent::Closed {
            parent: index,
            error,
        })
        .await;
}

async fn follow_inner(
    index: usize,
    parent: &Parent,
    host_id: String,
    task: &TaskId,
    tx: &mpsc::Sender<ParentEvent>,
) -> Result<(), String> {
    let endpoint = format!("http://{}", parent.addr);
    let mut client = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        DfdaemonUploadClient::connect(endpoint),
    )
    .await
    .map_err(|_| format!("parent {} ({}): connect timed out", parent.id, parent.addr))?
    .map_err(|e| {
        format!(
            "parent {} ({}): {}",
            parent.id,
            parent.addr,
            dragonfly_common::error::chain(&e)
        )
    })?;
    let mut stream = client
        .sync_pieces(SyncPiecesRequest {
            host_id,
            task_id: task.to_string(),
            interested_piece_numbers: Vec::new(),
        })
        .await
        .map_err(|s| format!("parent {} ({}): {}", parent.id, parent.addr, s.message()))?
        .into_inner();
    let mut sent_layout = false;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(s) => {
                return Err(format!(
                    "parent {} ({}): {}",
                    parent.id,
                    parent.addr,
                    s.message()
                ));
            }
        };
        if !sent_layout
            && let (Some(content_length), Some(piece_length)) =
                (msg.content_length, msg.piece_length)
        {
            sent_layout = true;
            let ev = ParentEvent::Layout {
                parent: index,
                content_length,
                piece_length,
                version: SourceValidator {
                    etag: msg.etag.clone(),
                    last_modified: msg.last_modified.clone(),
                },
            };
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
        if let Some(p) = msg.piece {
            let Some(crc32) = p.crc32 else { continue };
            let ev = ParentEvent::Piece {
                parent: index,
                piece: ParentPiece {
                    number: p.number,
                    crc32,
                },
            };
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
}
