//! One task's `AnnouncePeer` stream ([`PeerLink`]): the engine's [`Session`] with its
//! scheduler. It turns the engine's events into the protocol's reports (piece finished or
//! failed, back to source, reschedule, the outcome) and the scheduler's responses into
//! [`Answer`]s; [`Schedulers`] opens them, as the engine's [`Sessions`].

use super::Schedulers;
use crate::storage::PieceRecord;
use crate::task::{
    Answer, Outcome, Parent, SchedulerError, Session, Sessions, TaskError, TaskErrorKind,
    TaskRequest,
};
use dragonfly_common::error::chain;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::common::v1::{Download, Piece};
use dragonfly_proto::scheduler::v1::announce_peer_request::Request;
use dragonfly_proto::scheduler::v1::{
    AnnouncePeerRequest, AnnouncePeerResponse, DownloadPeerBackToSourceFailedRequest,
    DownloadPeerBackToSourceFinishedRequest, DownloadPeerBackToSourceStartedRequest,
    DownloadPeerFailedRequest, DownloadPeerFinishedRequest,
    DownloadPieceBackToSourceFinishedRequest, DownloadPieceFailedRequest,
    DownloadPieceFinishedRequest, MoreParentsRequest, RescheduleRequest, announce_peer_response,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::mpsc;

impl Sessions for Schedulers {
    fn schedule_timeout(&self) -> Duration {
        self.options().schedule_timeout
    }

    fn disable_auto_back_source(&self) -> bool {
        self.options().disable_auto_back_source
    }

    fn register<'a>(
        &'a self,
        task: &'a TaskId,
        peer_id: &'a str,
        req: &'a TaskRequest,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, SchedulerError>> {
        Box::pin(async move {
            match Schedulers::register(self, task, peer_id, download_msg(req)).await {
                Ok(link) => Ok(Box::new(link) as Box<dyn Session>),
                Err(e) => Err(Box::new(e) as SchedulerError),
            }
        })
    }

    fn forget_task(&self, task: &TaskId) {
        Schedulers::forget_task(self, task);
    }
}

/// What a task registers with the scheduler.
fn download_msg(req: &TaskRequest) -> Download {
    let mut request_header = std::collections::HashMap::new();
    for (k, v) in &req.headers {
        if let Ok(v) = v.to_str() {
            request_header
                .entry(k.as_str().to_string())
                .and_modify(|old: &mut String| {
                    old.push_str(", ");
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    Download {
        url: req.url.clone(),
        digest: req.digest.as_ref().map(ToString::to_string),
        tag: req.tag.clone(),
        application: req.application.clone(),
        piece_length: req.piece_length,
        filtered_query_params: req.filtered_query_params.clone(),
        request_header,
        ..Default::default()
    }
}

/// One task's open `AnnouncePeer` stream.
pub struct PeerLink {
    pub(super) host_id: String,
    pub(super) task_id: String,
    pub(super) peer_id: String,
    /// Address of the scheduler serving this task.
    pub scheduler: String,
    pub(super) tx: mpsc::Sender<AnnouncePeerRequest>,
    pub(super) rx: tonic::Streaming<AnnouncePeerResponse>,
    pub(super) dropped: u64,
    /// The scheduler node's "has our announce" flag (cleared when this stream breaks).
    pub(super) announced: Arc<AtomicBool>,
}

impl PeerLink {
    /// Queue a report; never waits (a report the scheduler cannot take in time is dropped and
    /// counted: the scheduler learns the same from later reports and the final result).
    pub fn send(&mut self, request: Request) {
        let msg = AnnouncePeerRequest {
            host_id: self.host_id.clone(),
            task_id: self.task_id.clone(),
            peer_id: self.peer_id.clone(),
            request: Some(request),
        };
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
            if self.dropped == 1 {
                tracing::warn!(task = %self.task_id, scheduler = %self.scheduler, "scheduler is not reading reports; dropping some");
            }
        }
    }

    /// Send the last reports and close the stream. The scheduler reads everything queued before
    /// it sees the end (the answer side is drained in the background, so nothing is cut short).
    pub fn close(self) {
        let PeerLink { tx, mut rx, .. } = self;
        drop(tx);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(_)) = rx.next().await {}
            })
            .await;
        });
    }

    /// The next answer. Cancel safe (use it in `select!`).
    pub async fn answer(&mut self) -> Answer {
        std::future::poll_fn(|cx| self.poll_next_answer(cx)).await
    }

    fn poll_next_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        loop {
            let msg = match ready!(self.rx.poll_next_unpin(cx)) {
                Some(Ok(m)) => m,
                Some(Err(status)) => {
                    self.announced.store(false, Ordering::Relaxed);
                    return Poll::Ready(Answer::Lost(format!(
                        "{}: {}",
                        self.scheduler,
                        status.message()
                    )));
                }
                None => {
                    self.announced.store(false, Ordering::Relaxed);
                    return Poll::Ready(Answer::Lost(format!(
                        "{} closed the stream",
                        self.scheduler
                    )));
                }
            };
            match msg.response {
                Some(announce_peer_response::Response::NormalTaskResponse(r)) => {
                    let parents: Vec<Parent> = r
                        .candidate_parents
                        .iter()
                        .filter_map(|c| {
                            let host = c.host.as_ref()?;
                            match host.piece_data_addr() {
                                Some(addr) => Some(Parent {
                                    id: c.id.clone(),
                                    addr,
                                }),
                                None => {
                                    tracing::warn!(parent = %c.id, ip = %host.ip, port = host.upload_port, "scheduler offered a parent with no usable address");
                                    None
                                }
                            }
                        })
                        .collect();
                    if parents.is_empty() {
                        return Poll::Ready(Answer::BackToSource(
                            "the scheduler offered no usable parent".to_string(),
                        ));
                    }
                    let seeds = r
                        .candidate_parents
                        .iter()
                        .filter(|c| c.host.as_ref().is_some_and(|h| h.is_seed()))
                        .map(|c| c.id.clone())
                        .collect();
                    return Poll::Ready(Answer::Parents {
                        parents,
                        seeds,
                        content_length: r.content_length,
                        piece_length: r.piece_length,
                    });
                }
                Some(announce_peer_response::Response::NeedBackToSourceResponse(r)) => {
                    return Poll::Ready(Answer::BackToSource(
                        r.description
                            .unwrap_or_else(|| "the scheduler said so".to_string()),
                    ));
                }
                Some(announce_peer_response::Response::EmptyTaskResponse(_)) => {
                    return Poll::Ready(Answer::Empty);
                }
                None => {
                    // A response kind newer than this daemon: ignore it (protocol rule 5).
                    tracing::debug!(task = %self.task_id, "unknown scheduler response ignored");
                }
            }
        }
    }
}

impl Session for PeerLink {
    fn scheduler(&self) -> &str {
        &self.scheduler
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        self.poll_next_answer(cx)
    }

    fn started(&mut self) {
        self.send(Request::DownloadPeerStartedRequest(Default::default()));
    }

    fn source_started(&mut self) {
        self.send(Request::DownloadPeerBackToSourceStartedRequest(
            DownloadPeerBackToSourceStartedRequest {
                description: Some("no parent can give the missing pieces".to_string()),
            },
        ));
    }

    fn piece_stored(&mut self, record: &PieceRecord, parent: Option<&Parent>, cost: Duration) {
        let r = match parent {
            Some(p) => Request::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest {
                piece: Some(piece_report(record, &p.id, cost)),
            }),
            None => Request::DownloadPieceBackToSourceFinishedRequest(
                DownloadPieceBackToSourceFinishedRequest {
                    piece: Some(piece_report(record, "", cost)),
                },
            ),
        };
        self.send(r);
    }

    fn piece_failed(&mut self, number: u32, parent_id: &str, why: &(dyn Error + 'static)) {
        self.send(Request::DownloadPieceFailedRequest(
            DownloadPieceFailedRequest {
                piece_number: number,
                parent_id: parent_id.to_string(),
                temporary: false,
                description: Some(chain(why)),
            },
        ));
    }

    fn reschedule(&mut self, blocklist: Vec<String>) {
        self.send(Request::RescheduleRequest(RescheduleRequest {
            candidate_parents_blocklist: blocklist,
            description: Some("parents failed or have nothing more to give".to_string()),
        }));
    }

    fn more_parents(&mut self) {
        self.send(Request::MoreParentsRequest(MoreParentsRequest {}));
    }

    fn finish(mut self: Box<Self>, outcome: Outcome<'_>) {
        let (content_length, piece_count) = (outcome.content_length, outcome.piece_count);
        let description = |e: &TaskError| Some(chain(e));
        let r = match (outcome.result, outcome.used_source) {
            (Ok(()), false) => Request::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {
                content_length,
                piece_count,
            }),
            (Ok(()), true) => Request::DownloadPeerBackToSourceFinishedRequest(
                DownloadPeerBackToSourceFinishedRequest {
                    content_length,
                    piece_count,
                },
            ),
            (Err(e), false) => Request::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
                description: description(e),
            }),
            (Err(e), true) => Request::DownloadPeerBackToSourceFailedRequest(
                DownloadPeerBackToSourceFailedRequest {
                    description: description(e),
                    status_code: None,
                    temporary: e.kind() != TaskErrorKind::DigestMismatch,
                },
            ),
        };
        self.send(r);
        (*self).close();
    }
}

/// A piece as reported to the scheduler.
pub fn piece_report(record: &PieceRecord, parent_id: &str, cost: Duration) -> Piece {
    use dragonfly_proto::common::v1::TrafficType;
    Piece {
        number: record.number,
        offset: record.offset,
        length: record.length,
        crc32: Some(record.crc32),
        parent_id: parent_id.to_string(),
        traffic_type: if parent_id.is_empty() {
            TrafficType::BackToSource
        } else {
            TrafficType::RemotePeer
        } as i32,
        cost: prost_types::Duration::try_from(cost).ok(),
        ..Default::default()
    }
}
