//! The `Scheduler` gRPC service: host announces, the per-peer AnnouncePeer stream, stats and leaves.

use crate::evaluator::{self, Limits};
use crate::metrics::{AnswerKind, AnswerTo, PieceSource};
use crate::resource::{Peer, PeerState, Task, TaskState};
use crate::seed::pick_seed;
use crate::state::SchedulerState;
use dragonfly_proto::Download;
use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_request::Request as Req;
use sch::AnnouncePeerResponse;
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

mod schedule;
use schedule::*;

/// The gRPC service over a shared [`SchedulerState`].
#[derive(Debug, Clone)]
pub struct SchedulerService {
    state: Arc<SchedulerState>,
}

impl SchedulerService {
    /// A service over `state`.
    pub fn new(state: Arc<SchedulerState>) -> Self {
        SchedulerService { state }
    }
}

/// Who the AnnouncePeer stream is about (set by its RegisterPeerRequest).
#[derive(Debug, Clone)]
struct StreamCtx {
    host_id: String,
    task_id: String,
    peer_id: String,
    download: Download,
}

/// Outcome of one scheduling attempt, decided under the task's lock.
enum Decision {
    Answer(AnnouncePeerResponse),
    Wait,
}

type AnnounceStream = Pin<Box<dyn Stream<Item = Result<AnnouncePeerResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dragonfly_proto::Scheduler for SchedulerService {
    type AnnouncePeerStream = AnnounceStream;

    async fn announce_host(
        &self,
        request: Request<sch::AnnounceHostRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let interval = req
            .interval
            .and_then(|d| std::time::Duration::try_from(d).ok());
        let host = req
            .host
            .filter(|h| !h.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("AnnounceHostRequest.host.id is empty"))?;
        self.state.metrics.host_announced();
        let unknown = !self.state.resources.hosts.contains_key(&host.id);
        if unknown {
            tracing::info!(host = %host.id, ip = %host.ip, seed = host.is_seed(), "host announced");
        }
        self.state
            .resources
            .announce_host_every(host, Instant::now(), interval);
        let mut response = Response::new(());
        if unknown {
            // This instance holds no peer of the host: it answers with its finished tasks.
            response.metadata_mut().insert(
                sch::HOST_UNKNOWN_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(response)
    }

    async fn announce_finished_tasks(
        &self,
        request: Request<sch::AnnounceFinishedTasksRequest>,
    ) -> Result<Response<sch::AnnounceFinishedTasksResponse>, Status> {
        crate::finished::announce(&self.state, request.into_inner()).map(Response::new)
    }

    async fn leave_host(
        &self,
        request: Request<sch::LeaveHostRequest>,
    ) -> Result<Response<()>, Status> {
        let id = request.into_inner().host_id;
        let peers = self.state.resources.leave_host(&id);
        tracing::info!(host = %id, peers, "host left");
        Ok(Response::new(()))
    }

    async fn announce_peer(
        &self,
        request: Request<Streaming<sch::AnnouncePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
        // The reply stream itself reads and handles the requests: no task or channel per peer,
        // which matters with 10,000 streams open.
        let peer = AnnounceLoop {
            state: self.state.clone(),
            inbound: request.into_inner(),
            ctx: None,
            span: None,
            done: false,
        };
        let replies = futures::stream::unfold(peer, |mut peer| async move {
            let reply = peer.next_reply().await?;
            Some((reply, peer))
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn stat_peer(
        &self,
        request: Request<sch::StatPeerRequest>,
    ) -> Result<Response<dragonfly_proto::Peer>, Status> {
        let req = request.into_inner();
        let res = &self.state.resources;
        let task = res
            .tasks
            .get(&req.task_id)
            .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))?;
        let peer = task
            .peers
            .get(&req.peer_id)
            .ok_or_else(|| Status::not_found(format!("peer {} not found", req.peer_id)))?;
        let mut out = dragonfly_proto::Peer {
            id: peer.id.clone(),
            task_id: peer.task_id.clone(),
            host: res.hosts.get(&peer.host_id).map(|h| h.info.clone()),
            finished_pieces: peer.finished_pieces.clone(),
            finished_piece_count: peer.finished_count(),
            need_back_to_source: peer.need_back_to_source,
            ..Default::default()
        };
        out.set_state(peer.state().to_proto());
        Ok(Response::new(out))
    }

    async fn leave_peer(
        &self,
        request: Request<sch::LeavePeerRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let existed = self.state.resources.leave_peer(&req.task_id, &req.peer_id);
        tracing::info!(task = %req.task_id, peer = %req.peer_id, existed, "peer left");
        Ok(Response::new(()))
    }

    async fn stat_task(
        &self,
        request: Request<sch::StatTaskRequest>,
    ) -> Result<Response<dragonfly_proto::Task>, Status> {
        let id = request.into_inner().task_id;
        let res = &self.state.resources;
        let task = res
            .tasks
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("task {id} not found")))?;
        Ok(Response::new(task.to_proto(|h| res.is_seed_host(h))))
    }

    async fn delete_task(
        &self,
        request: Request<sch::DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let peers = self
            .state
            .resources
            .delete_task_on_host(&req.task_id, &req.host_id);
        tracing::info!(task = %req.task_id, host = %req.host_id, peers, "task deleted on host");
        Ok(Response::new(()))
    }
}

/// One AnnouncePeer stream: its requests, whom it is about, and its tracing span.
struct AnnounceLoop {
    state: Arc<SchedulerState>,
    inbound: Streaming<sch::AnnouncePeerRequest>,
    ctx: Option<StreamCtx>,
    /// Made from the first message (and each registration), not per message.
    span: Option<tracing::Span>,
    /// An error was sent; the stream ends.
    done: bool,
}

impl AnnounceLoop {
    /// Handles requests until one has an answer; `None` once the stream is over.
    async fn next_reply(&mut self) -> Option<Result<AnnouncePeerResponse, Status>> {
        if self.done {
            return None;
        }
        loop {
            let msg = match self.inbound.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => return None,
                Err(status) => {
                    tracing::debug!("announce stream ended: {status}");
                    return None;
                }
            };
            let registers = matches!(msg.request, Some(Req::RegisterPeerRequest(_)));
            let span = match &self.span {
                Some(span) if !registers => span.clone(),
                _ => {
                    let span =
                        tracing::info_span!("peer", task = %msg.task_id, peer = %msg.peer_id);
                    self.span = Some(span.clone());
                    span
                }
            };
            // Boxed: an idle stream then holds a pointer, not the largest handler state (~2.5 KiB).
            match Box::pin(handle(&self.state, &mut self.ctx, msg).instrument(span)).await {
                Ok(Some(reply)) => return Some(Ok(reply)),
                Ok(None) => {}
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            }
        }
    }
}

impl Drop for AnnounceLoop {
    /// The stream is gone (peer done, cancelled, crashed or cut off; the reply stream is dropped in
    /// every case). A peer that did not finish cannot be trusted to serve anything more: it leaves
    /// the graph, and its children reschedule when they notice.
    fn drop(&mut self) {
        let Some(c) = self.ctx.take() else {
            return;
        };
        let succeeded = self
            .state
            .resources
            .tasks
            .get(&c.task_id)
            .and_then(|t| {
                t.peers
                    .get(&c.peer_id)
                    .map(|p| p.state() == PeerState::Succeeded)
            })
            .unwrap_or(true);
        if !succeeded {
            tracing::info!(task = %c.task_id, peer = %c.peer_id, "stream ended before the peer finished; it feeds nobody");
            peer_failed(&self.state, &c, false);
        }
    }
}

/// Handles one stream message; `Ok(Some)` is sent back, `Err` ends the stream.
async fn handle(
    state: &SchedulerState,
    ctx: &mut Option<StreamCtx>,
    msg: sch::AnnouncePeerRequest,
) -> Result<Option<AnnouncePeerResponse>, Status> {
    let Some(request) = msg.request else {
        tracing::debug!("announce message without a known request variant, ignored");
        return Ok(None);
    };
    if let Req::RegisterPeerRequest(register) = request {
        let registered = register_peer(state, &msg.host_id, &msg.task_id, &msg.peer_id, register);
        state.metrics.peer_registered(registered.is_ok());
        let (c, peers) = registered?;
        let reply = timed_schedule(state, &c, AnswerTo::Register).await?;
        // One line per registration, written after every lock is released.
        tracing::info!(host = %c.host_id, peers, answer = %Answer(&reply), "peer registered");
        *ctx = Some(c);
        return Ok(Some(reply));
    }
    let c = match ctx {
        Some(c) => c.clone(),
        None => {
            // A peer re-opening its stream after a scheduler hiccup may skip registration.
            let known = state
                .resources
                .tasks
                .get(&msg.task_id)
                .is_some_and(|t| t.peers.contains_key(&msg.peer_id));
            if !known {
                return Err(Status::failed_precondition(format!(
                    "peer {} of task {}: the first message must be RegisterPeerRequest",
                    msg.peer_id, msg.task_id
                )));
            }
            let c = StreamCtx {
                host_id: msg.host_id.clone(),
                task_id: msg.task_id.clone(),
                peer_id: msg.peer_id.clone(),
                download: Download::default(),
            };
            *ctx = Some(c.clone());
            c
        }
    };
    let known = state
        .resources
        .tasks
        .get(&c.task_id)
        .map(|t| crate::bounds::Known {
            piece_count: t.piece_count,
        })
        .unwrap_or_default();
    if let Err(why) = crate::bounds::check(known, &request) {
        tracing::warn!(task = %c.task_id, peer = %c.peer_id, host = %c.host_id, error = %why, "peer sent numbers out of bounds; closing its stream");
        return Err(Status::invalid_argument(format!(
            "peer {} of task {}: {why}",
            c.peer_id, c.task_id
        )));
    }
    match request {
        Req::RegisterPeerRequest(_) => Ok(None),
        Req::MoreParentsRequest(_) => {
            let t0 = Instant::now();
            let reply = more_parents(state, &c);
            if let Some(r) = &reply {
                let kind = answer_kind(r);
                state
                    .metrics
                    .answered(AnswerTo::MoreParents, kind, t0.elapsed());
                tracing::debug!(answer = %Answer(r), "more parents");
            }
            Ok(reply)
        }
        Req::RescheduleRequest(r) => {
            update_peer(state, &c, |task, peer_id| {
                task.dag.remove_parents_of(peer_id);
                if let Some(p) = task.peers.get_mut(peer_id) {
                    // Bounded: a peer cannot grow its state without limit.
                    let room = crate::bounds::MAX_BLOCKLIST.saturating_sub(p.blocklist.len());
                    p.blocklist
                        .extend(r.candidate_parents_blocklist.into_iter().take(room));
                    p.reschedule_count += 1;
                }
            });
            let reply = timed_schedule(state, &c, AnswerTo::Reschedule).await?;
            tracing::info!(
                reason = r.description.as_deref().unwrap_or(""),
                answer = %Answer(&reply),
                "rescheduled"
            );
            Ok(Some(reply))
        }
        Req::DownloadPeerStartedRequest(_) => {
            set_state(state, &c, PeerState::Running);
            Ok(None)
        }
        Req::DownloadPeerBackToSourceStartedRequest(_) => {
            set_state(state, &c, PeerState::BackToSource);
            mark_back_to_source(state, &c);
            Ok(None)
        }
        Req::DownloadPieceFinishedRequest(r) => {
            state.metrics.piece_finished(PieceSource::Parent);
            piece_finished(state, &c, r.piece, PeerState::Running);
            Ok(None)
        }
        Req::DownloadPieceBackToSourceFinishedRequest(r) => {
            state.metrics.piece_finished(PieceSource::Origin);
            piece_finished(state, &c, r.piece, PeerState::BackToSource);
            Ok(None)
        }
        Req::DownloadPieceFailedRequest(r) => {
            state.metrics.piece_failed(PieceSource::Parent);
            tracing::debug!(piece = r.piece_number, parent = %r.parent_id, temporary = r.temporary, "piece failed");
            if !r.temporary && !r.parent_id.is_empty() {
                update_peer(state, &c, |task, id| {
                    task.dag.remove_edge(&r.parent_id, id);
                    if let Some(p) = task.peers.get_mut(id)
                        && p.blocklist.len() < crate::bounds::MAX_BLOCKLIST
                    {
                        p.blocklist.insert(r.parent_id.clone());
                    }
                });
            }
            Ok(None)
        }
        Req::DownloadPieceBackToSourceFailedRequest(r) => {
            state.metrics.piece_failed(PieceSource::Origin);
            tracing::debug!(piece = r.piece_number, status = ?r.status_code, "piece from source failed");
            update_peer(state, &c, |_, _| {});
            Ok(None)
        }
        Req::DownloadPeerFinishedRequest(r) => {
            state.metrics.peer_ended(true);
            peer_finished(state, &c, r.content_length, r.piece_count);
            Ok(None)
        }
        Req::DownloadPeerBackToSourceFinishedRequest(r) => {
            state.metrics.peer_ended(true);
            peer_finished(state, &c, r.content_length, r.piece_count);
            Ok(None)
        }
        Req::DownloadPeerFailedRequest(r) => {
            state.metrics.peer_ended(false);
            tracing::info!(
                reason = r.description.as_deref().unwrap_or(""),
                "peer failed"
            );
            peer_failed(state, &c, false);
            Ok(None)
        }
        Req::DownloadPeerBackToSourceFailedRequest(r) => {
            state.metrics.peer_ended(false);
            tracing::info!(reason = r.description.as_deref().unwrap_or(""), status = ?r.status_code, temporary = r.temporary, "peer failed from source");
            peer_failed(state, &c, !r.temporary);
            Ok(None)
        }
    }
}

fn register_peer(
    state: &SchedulerState,
    host_id: &str,
    task_id: &str,
    peer_id: &str,
    register: sch::RegisterPeerRequest,
) -> Result<(StreamCtx, usize), Status> {
    if host_id.is_empty() || task_id.is_empty() || peer_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "RegisterPeerRequest needs host_id, task_id and peer_id (got {host_id:?}, {task_id:?}, {peer_id:?})"
        )));
    }
    let download = register.download.unwrap_or_default();
    let now = Instant::now();
    let mut task = state
        .resources
        .tasks
        .entry(task_id.to_owned())
        .or_insert_with(|| Task::new(task_id, &download.url, now));
    if task.piece_length.is_none() {
        task.piece_length = download.piece_length;
    }
    if task.url.is_empty() {
        // Created from a host's finished-task announce, which carries no URL.
        task.url.clone_from(&download.url);
    }
    if task.state == TaskState::Failed {
        // A new attempt may succeed (the origin may be back).
        task.state = TaskState::Pending;
        task.seed_triggered = false;
    }
    task.updated_at = now;
    task.remove_peer(peer_id);
    task.peers.insert(
        peer_id.to_owned(),
        Peer::new(peer_id, task_id, host_id, now),
    );
    let peers = task.peers.len();
    let c = StreamCtx {
        host_id: host_id.to_owned(),
        task_id: task_id.to_owned(),
        peer_id: peer_id.to_owned(),
        download,
    };
    Ok((c, peers))
}

/// Runs `f` on the peer's task (with the peer id) and refreshes the peer's `updated_at`.
fn update_peer(state: &SchedulerState, c: &StreamCtx, f: impl FnOnce(&mut Task, &str)) {
    let Some(mut task) = state.resources.tasks.get_mut(&c.task_id) else {
        return;
    };
    let now = Instant::now();
    task.updated_at = now;
    if let Some(p) = task.peers.get_mut(&c.peer_id) {
        p.updated_at = now;
    }
    f(&mut task, &c.peer_id);
}

fn set_state(state: &SchedulerState, c: &StreamCtx, to: PeerState) {
    update_peer(state, c, |task, id| {
        if let Some(p) = task.peers.get_mut(id)
            && let Err(e) = p.transition(to)
        {
            tracing::debug!("{e}");
        }
        if matches!(to, PeerState::Running | PeerState::BackToSource)
            && task.state == TaskState::Pending
        {
            task.state = TaskState::Running;
        }
    });
}

fn piece_finished(
    state: &SchedulerState,
    c: &StreamCtx,
    piece: Option<dragonfly_proto::Piece>,
    running: PeerState,
) {
    let Some(piece) = piece else {
        tracing::debug!("piece report without a piece, ignored");
        return;
    };
    tracing::debug!(piece = piece.number, parent = %piece.parent_id, "piece finished");
    update_peer(state, c, |task, id| {
        if let Some(p) = task.peers.get_mut(id) {
            p.finish_piece(piece.number, piece.cost_duration());
            if matches!(p.state(), PeerState::Pending | PeerState::ReceivedNormal) {
                let _ = p.transition(running);
            }
            if running == PeerState::BackToSource {
                p.need_back_to_source = true;
            }
        }
        if task.state == TaskState::Pending {
            task.state = TaskState::Running;
        }
    });
}

fn peer_finished(state: &SchedulerState, c: &StreamCtx, content_length: u64, piece_count: u32) {
    update_peer(state, c, |task, id| {
        if let Some(p) = task.peers.get_mut(id) {
            p.finish_all(piece_count);
            if let Err(e) = p.transition(PeerState::Succeeded) {
                tracing::debug!("{e}");
            }
        }
        // It needs no parent any more: free their child slots.
        task.dag.remove_parents_of(id);
        task.content_length = Some(content_length);
        task.piece_count = Some(piece_count);
        task.state = TaskState::Succeeded;
    });
    tracing::info!(content_length, piece_count, "peer finished");
}

fn peer_failed(state: &SchedulerState, c: &StreamCtx, permanent_source_error: bool) {
    update_peer(state, c, |task, id| {
        if let Some(p) = task.peers.get_mut(id)
            && let Err(e) = p.transition(PeerState::Failed)
        {
            tracing::debug!("{e}");
        }
        // A failed peer feeds nobody: its children must reschedule.
        task.dag.remove_vertex(id);
        if permanent_source_error && task.state != TaskState::Succeeded {
            task.state = TaskState::Failed;
        }
    });
}
