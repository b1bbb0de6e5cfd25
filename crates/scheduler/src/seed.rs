//! Seed-peer triggering: when nobody holds a task, one seed peer (chosen by rendezvous hashing of
//! the task id over the seed hosts) is asked to fetch it with `DfdaemonUpload.DownloadTask`.

use crate::resource::{FinishedCopy, Resources};
use dragonfly_proto::dfdaemon::v1::{
    DownloadTaskRequest, DownloadTaskResponse, download_task_response,
};
use dragonfly_proto::{DfdaemonUploadClient, Download, Host};
use std::sync::Arc;
use tokio::time::Instant;

/// Asks a seed peer to download a task.
pub trait SeedTrigger: Send + Sync + 'static {
    /// Starts (in the background) a download of `download` on `seed`; returns whether it was asked.
    /// A seed that answers it holds the task already is recorded in `resources` as a finished peer.
    fn trigger(
        &self,
        seed: &Host,
        task_id: &str,
        download: &Download,
        resources: &Arc<Resources>,
    ) -> bool;
}

/// Never triggers: peers go back to source themselves (used when `seedPeer.enable` is false).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSeedTrigger;

impl SeedTrigger for NoSeedTrigger {
    fn trigger(&self, _: &Host, _: &str, _: &Download, _: &Arc<Resources>) -> bool {
        false
    }
}

/// Calls the seed daemon's `DfdaemonUpload.DownloadTask` over gRPC and drains the answer stream
/// in a background task. A seed that downloads registers as a peer of the task like anyone else;
/// a seed whose first answer says it holds the whole task (served from its storage, no download,
/// so no registration) is recorded as a finished peer here.
#[derive(Debug, Default, Clone, Copy)]
pub struct GrpcSeedTrigger;

impl SeedTrigger for GrpcSeedTrigger {
    fn trigger(
        &self,
        seed: &Host,
        task_id: &str,
        download: &Download,
        resources: &Arc<Resources>,
    ) -> bool {
        let Some(endpoint) = seed.upload_endpoint() else {
            tracing::warn!(seed = %seed.id, ip = %seed.ip, port = seed.upload_port, "seed peer has no usable upload address");
            return false;
        };
        let (seed_id, task_id, download) = (seed.id.clone(), task_id.to_owned(), download.clone());
        let resources = resources.clone();
        tokio::spawn(async move {
            let result = async {
                let mut client = DfdaemonUploadClient::connect(endpoint).await?;
                let request = DownloadTaskRequest {
                    download: Some(download),
                };
                let mut stream = client.download_task(request).await?.into_inner();
                if let Some(first) = stream.message().await? {
                    record_stored_copy(&resources, &seed_id, &task_id, &first);
                }
                while stream.message().await?.is_some() {}
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::info!(seed = %seed_id, task = %task_id, "seed peer finished task")
                }
                Err(e) => {
                    tracing::warn!(seed = %seed_id, task = %task_id, "seed peer download failed: {e}")
                }
            }
        });
        true
    }
}

/// Records the seed as a finished peer when its first DownloadTask answer lists every piece.
fn record_stored_copy(
    resources: &Resources,
    seed_id: &str,
    task_id: &str,
    first: &DownloadTaskResponse,
) {
    let Some(download_task_response::Response::DownloadTaskStartedResponse(started)) =
        &first.response
    else {
        return;
    };
    let (Some(content_length), Some(piece_length)) = (started.content_length, started.piece_length)
    else {
        return;
    };
    let Ok(piece_count) = u32::try_from(started.pieces.len()) else {
        return;
    };
    let copy = FinishedCopy {
        content_length,
        piece_length,
        piece_count,
    };
    // A ranged download may be "finished" with part of the pieces: only a whole copy counts.
    if !started.is_finished || !copy.is_consistent() {
        return;
    }
    let peer_id = if first.peer_id.is_empty() {
        crate::resource::finished::held_peer_id(seed_id)
    } else {
        first.peer_id.clone()
    };
    // The seed was asked because a peer waits for it: no holder limit applies.
    let outcome =
        resources.record_finished(task_id, seed_id, &peer_id, copy, usize::MAX, Instant::now());
    tracing::info!(seed = %seed_id, task = %task_id, peer = %peer_id, ?outcome, "seed peer holds the task in its storage");
}

/// The seed host for `task_id`: rendezvous hashing of (task id, host id)
/// ([`dragonfly_common::hashring`]), so every scheduler instance picks the same one and only
/// 1/n of the tasks move when a seed comes or goes.
pub fn pick_seed<'a>(task_id: &str, seeds: impl IntoIterator<Item = &'a Host>) -> Option<&'a Host> {
    seeds.into_iter().max_by(|a, b| {
        let wa = (dragonfly_common::hashring::weight(task_id, &a.id), &a.id);
        let wb = (dragonfly_common::hashring::weight(task_id, &b.id), &b.id);
        wa.cmp(&wb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hosts(n: usize) -> Vec<Host> {
        (0..n)
            .map(|i| Host {
                id: format!("seed-{i}"),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn no_seeds_no_pick() {
        assert!(pick_seed("t", &[]).is_none());
    }

    proptest! {
        #[test]
        fn pick_is_stable_and_only_moves_to_a_new_seed(task in "[a-f0-9]{8,64}", n in 1usize..8) {
            let before = hosts(n);
            let a = pick_seed(&task, &before).map(|h| h.id.clone());
            let mut reversed = before.clone();
            reversed.reverse();
            prop_assert_eq!(&a, &pick_seed(&task, &reversed).map(|h| h.id.clone()));
            let after = hosts(n + 1);
            let b = pick_seed(&task, &after).map(|h| h.id.clone());
            let newcomer = format!("seed-{}", n);
            prop_assert!(a == b || b.as_deref() == Some(newcomer.as_str()));
        }
    }
}
