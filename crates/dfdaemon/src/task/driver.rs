//! Drives one task: learn the layout, then fetch every missing piece from parents or the
//! source, at most `concurrent_pieces` at a time, verify each, and finish (or fail) the task.

use super::parent::{self, Parent, ParentEvent};
use super::room::Room;
use super::version::{Version, VersionState, changed, current_version, set_version};
use super::{Phase, Task, TaskError, TaskManager, TaskRequest};
use crate::rate::TaskRate;
use crate::scheduling::{Answer, PeerLink, Schedulers, piece_report};
use crate::source::Probe;
use crate::source::error::DownloadError;
use crate::source::http::content_range;
use crate::source::http::validator_of;
use crate::storage::{NewTask, PieceRecord, Storage, StorageError};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use dragonfly_common::validator::SourceValidator;
use dragonfly_proto::Download;
use dragonfly_proto::scheduler::v1::announce_peer_request::Request;
use dragonfly_proto::scheduler::v1::{
    DownloadPeerBackToSourceFailedRequest, DownloadPeerBackToSourceFinishedRequest,
    DownloadPeerBackToSourceStartedRequest, DownloadPeerFailedRequest, DownloadPeerFinishedRequest,
    DownloadPieceBackToSourceFinishedRequest, DownloadPieceFailedRequest,
    DownloadPieceFinishedRequest, MoreParentsRequest, RescheduleRequest,
};
use http::StatusCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Bytes buffered before a write to the content file.
const WRITE_CHUNK: usize = 1 << 20;
/// Attempts per piece at the source for errors that may pass.
const SOURCE_ATTEMPTS: u32 = 3;
/// How often a task with fewer than [`WANTED_PARENTS`] live parents asks for more.
const MORE_PARENTS_EVERY: Duration = Duration::from_secs(1);
/// Live parents after which a task stops asking for more (the scheduler's default
/// `candidateParentLimit`).
const WANTED_PARENTS: usize = 4;
/// Pieces a streaming task fetches in order before the per-task random point.
const STREAMING_HEAD: u32 = 4;
/// Most pieces one request to the source covers (a lane: one ranged GET whose body is stored
/// piece by piece, each committed as it completes).
const LANE_MAX_PIECES: u32 = 16;
/// Times a task fetches pieces again that were damaged on disk before it could finish.
const DAMAGED_ROUNDS: u32 = 2;
/// Lanes a streaming task runs at the source at once. Its client reads in order, so a lane
/// running beside the head lane only slows the head when they share the bandwidth or the CPU.
/// Measured on 2 cores (448 MiB skopeo pull through the proxy): 1 lane 3.15 s, 2 lanes 3.24 s,
/// 4 lanes 3.2-3.6 s; a fast client's 256 MiB miss gains from more (0.79 / 0.70 / 0.67 s).
const STREAMING_SOURCE_LANES: usize = 1;

/// Run the task to its end and publish the outcome.
pub(super) async fn drive(engine: TaskManager, task: Arc<Task>, req: TaskRequest) {
    let started = Instant::now();
    tracing::info!(task = %task.id, peer = %task.peer_id, url = %req.url, parents = req.parents.len(), "peer task started");
    let mut sched = Sched::new(engine.inner.schedulers.as_ref());
    let result = run(&engine, &task, &req, &mut sched).await;
    let storage = engine.storage().clone();
    let id = task.id.clone();
    let result = match result {
        Ok(digests) => {
            let names: Vec<String> = digests.iter().map(ToString::to_string).collect();
            task.set_digests(digests);
            blocking(move || storage.finish_task_with(&id, &names))
                .await
                .map(|_| ())
                .map_err(TaskError::from)
        }
        Err(e) => Err(e),
    };
    sched.finish(&task, &result);
    if let (Ok(()), Some(d)) = (&result, req.blob_digest()) {
        engine.blob_finished(d, &task.id);
    }
    if result.is_ok()
        && !task
            .digests()
            .iter()
            .any(|d| d.algorithm() == Algorithm::Sha256)
    {
        // Nobody asked for a digest: record the sha256 now, off every caller's path.
        let t = task.clone();
        tokio::spawn(async move {
            match t.content_digest(Algorithm::Sha256).await {
                Ok(d) => tracing::info!(task = %t.id, digest = %d, "content digest recorded"),
                Err(e) => {
                    tracing::warn!(task = %t.id, error = %e, "cannot record the content's sha256");
                }
            }
        });
    }
    let storage = engine.storage().clone();
    let id = task.id.clone();
    match result {
        Ok(()) => {
            task.set_phase(Phase::Finished);
            let cost = started.elapsed();
            tracing::info!(
                task = %task.id,
                peer = %task.peer_id,
                component = "PeerTask",
                from = %sched.fed_summary(),
                scheduler = sched.scheduler.as_deref().unwrap_or(""),
                "peer task done, cost: {}ms",
                cost.as_millis()
            );
        }
        Err(e) => {
            // Nothing of a wrong content, or of a mix of two versions, is kept.
            let drop_all = matches!(
                e,
                TaskError::DigestMismatch { .. } | TaskError::SourceChanged { .. }
            );
            let _ = blocking(move || {
                if drop_all {
                    storage.delete_task(&id)
                } else {
                    storage.fail_task(&id).map(|_| ())
                }
            })
            .await;
            fail(&task, e);
        }
    }
    engine.inner.tasks.remove(&task.id);
}

fn fail(task: &Task, e: TaskError) {
    tracing::warn!(task = %task.id, peer = %task.peer_id, error = %e, "peer task failed");
    task.set_phase(Phase::Failed(e));
}

/// Run a storage call on the blocking pool; a panic there is a storage error.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::Io {
            path: Default::default(),
            source: std::io::Error::other(e),
        })
    })
}

/// A parent as the driver tracks it.
struct ParentState {
    parent: Parent,
    /// Pieces it holds, with its crc32.
    has: HashMap<u32, u32>,
    /// Its SyncPieces stream is still open (it may get more pieces).
    open: bool,
    /// It failed, lied or stalled: never ask it again for this task.
    bad: bool,
    inflight: usize,
    /// A seed peer: asked only for pieces no other parent has, so its uplink carries each piece
    /// to few children and the others swap among themselves.
    seed: bool,
}

impl ParentState {
    /// Not failed, and has pieces or may still get some.
    fn is_live(&self) -> bool {
        !self.bad && (self.open || !self.has.is_empty())
    }
}

/// The task's parents, with a follower (SyncPieces) per parent. Parents are added as the
/// scheduler names them; dropping this stops every follower.
struct Parents {
    list: Vec<ParentState>,
    /// The content failed its digest with parents' pieces: take no new parents for this task.
    refuse_new: bool,
    followers: Aborting,
    tx: mpsc::Sender<ParentEvent>,
    host_id: String,
    task: TaskId,
}

impl Parents {
    fn new(host_id: String, task: TaskId) -> (Self, mpsc::Receiver<ParentEvent>) {
        let (tx, rx) = mpsc::channel(1024);
        let me = Self {
            list: Vec::new(),
            refuse_new: false,
            followers: Aborting(Vec::new()),
            tx,
            host_id,
            task,
        };
        (me, rx)
    }

    /// Start following `p` unless it is already known.
    fn add(&mut self, p: Parent, seed: bool) {
        if self.refuse_new || self.list.iter().any(|s| s.parent.id == p.id) {
            return;
        }
        let i = self.list.len();
        self.followers.0.push(tokio::spawn(parent::follow(
            i,
            p.clone(),
            self.host_id.clone(),
            self.task.clone(),
            self.tx.clone(),
        )));
        self.list.push(ParentState {
            parent: p,
            has: HashMap::new(),
            open: true,
            bad: false,
            inflight: 0,
            seed,
        });
    }

    /// Some parent has or may still get a piece.
    fn may_help(&self) -> bool {
        self.list.iter().any(ParentState::is_live)
    }

    /// Some parent's stream is open.
    fn any_open(&self) -> bool {
        self.list.iter().any(|p| !p.bad && p.open)
    }

    /// Parents that have or may still get pieces.
    fn live_count(&self) -> usize {
        self.list.iter().filter(|p| p.is_live()).count()
    }

    /// Ids of the parents that failed.
    fn bad_ids(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|p| p.bad)
            .map(|p| p.parent.id.clone())
            .collect()
    }
}

/// The task's conversation with its scheduler, and where its pieces came from.
struct Sched {
    link: Option<PeerLink>,
    /// Address of the scheduler of this task.
    scheduler: Option<String>,
    /// Pieces may come from the source once parents cannot help: no scheduler, it said so, or
    /// it is gone.
    source_ok: bool,
    /// Fail instead of going to the source when the scheduler is gone.
    no_auto_source: bool,
    /// A reschedule asked at this time is not answered yet.
    asked: Option<tokio::time::Instant>,
    timeout: Duration,
    told_started: bool,
    told_source: bool,
    /// Pieces stored per origin ("source" or a parent's address).
    fed: BTreeMap<String, u32>,
}

impl Sched {
    fn new(schedulers: Option<&Schedulers>) -> Self {
        Self {
            link: None,
            scheduler: None,
            source_ok: schedulers.is_none(),
            no_auto_source: schedulers.is_some_and(|s| s.options().disable_auto_back_source),
            asked: None,
            timeout: schedulers
                .map(|s| s.options().schedule_timeout)
                .unwrap_or(Duration::from_secs(30)),
            told_started: false,
            told_source: false,
            fed: BTreeMap::new(),
        }
    }

    fn send(&mut self, r: Request) {
        if let Some(link) = self.link.as_mut() {
            link.send(r);
        }
    }

    /// The scheduler is gone: go on with the parents we have, then the source.
    fn lost(&mut self, id: &TaskId, why: &str) -> Result<(), TaskError> {
        self.link = None;
        self.asked = None;
        if self.no_auto_source {
            return Err(TaskError::Source(format!(
                "the scheduler is unreachable ({why}) and scheduler.disableAutoBackSource is set"
            )));
        }
        tracing::warn!(task = %id, error = %why, "scheduler unavailable; going on with known parents, then the source");
        self.source_ok = true;
        Ok(())
    }

    /// Act on an answer; returns a layout hint from the scheduler, or `Some(0-length)` for an
    /// empty task.
    fn apply(
        &mut self,
        answer: Answer,
        parents: &mut Parents,
        id: &TaskId,
    ) -> Result<Option<(u64, Option<u64>)>, TaskError> {
        self.asked = None;
        match answer {
            Answer::Parents {
                parents: offered,
                seeds,
                content_length,
                piece_length,
            } => {
                tracing::info!(task = %id, parents = ?offered.iter().map(|p| p.addr.to_string()).collect::<Vec<_>>(), "scheduler assigned parents");
                for p in offered {
                    let seed = seeds.contains(&p.id);
                    parents.add(p, seed);
                }
                if !self.told_started {
                    self.told_started = true;
                    self.send(Request::DownloadPeerStartedRequest(Default::default()));
                }
                Ok(content_length.map(|len| (len, piece_length)))
            }
            Answer::BackToSource(why) => {
                tracing::info!(task = %id, reason = %why, "scheduler: back to source");
                self.source_ok = true;
                Ok(None)
            }
            Answer::Empty => Ok(Some((0, None))),
            Answer::Lost(why) => self.lost(id, &why).map(|()| None),
        }
    }

    /// Ask for new parents (the current ones cannot help).
    fn reschedule(&mut self, parents: &Parents, id: &TaskId) -> Result<(), TaskError> {
        if self.link.is_none() {
            return self.lost(id, "no scheduler stream");
        }
        let blocklist = parents.bad_ids();
        tracing::info!(task = %id, blocklist = ?blocklist, "asking the scheduler for new parents");
        self.send(Request::RescheduleRequest(RescheduleRequest {
            candidate_parents_blocklist: blocklist,
            description: Some("parents failed or have nothing more to give".to_string()),
        }));
        self.asked = Some(tokio::time::Instant::now());
        Ok(())
    }

    fn piece_stored(&mut self, record: &PieceRecord, from: Option<&Parent>, cost: Duration) {
        let key = from.map_or_else(|| "source".to_string(), |p| p.addr.to_string());
        *self.fed.entry(key).or_default() += 1;
        let r = match from {
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

    fn source_started(&mut self) {
        if !self.told_source {
            self.told_source = true;
            self.send(Request::DownloadPeerBackToSourceStartedRequest(
                DownloadPeerBackToSourceStartedRequest {
                    description: Some("no parent can give the missing pieces".to_string()),
                },
            ));
        }
    }

    fn used_source(&self) -> bool {
        self.fed.contains_key("source")
    }

    /// Report the outcome and close the stream.
    fn finish(&mut self, task: &Task, result: &Result<(), TaskError>) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let view = task.view();
        let (len, count) = view
            .layout
            .map_or((0, 0), |l| (l.content_length(), l.piece_count()));
        let r = match (result, self.used_source()) {
            (Ok(()), false) => Request::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {
                content_length: len,
                piece_count: count,
            }),
            (Ok(()), true) => Request::DownloadPeerBackToSourceFinishedRequest(
                DownloadPeerBackToSourceFinishedRequest {
                    content_length: len,
                    piece_count: count,
                },
            ),
            (Err(e), false) => Request::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
                description: Some(e.to_string()),
            }),
            (Err(e), true) => Request::DownloadPeerBackToSourceFailedRequest(
                DownloadPeerBackToSourceFailedRequest {
                    description: Some(e.to_string()),
                    status_code: None,
                    temporary: !matches!(e, TaskError::DigestMismatch { .. }),
                },
            ),
        };
        link.send(r);
        link.close();
    }

    /// "source=3,127.0.0.2:65002=61": pieces stored per origin.
    fn fed_summary(&self) -> String {
        let parts: Vec<String> = self.fed.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }
}

/// The next scheduler answer, or never when there is no stream.
async fn next_answer(link: &mut Option<PeerLink>) -> Answer {
    match link.as_mut() {
        Some(l) => l.answer().await,
        None => std::future::pending().await,
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

/// Where one piece is being fetched from.
#[derive(Debug, Clone, Copy)]
enum From {
    Parent(usize),
    Source,
}

/// Why one piece fetch failed.
enum PieceError {
    /// The parent or source failed; try elsewhere.
    Remote(String, bool),
    /// The bytes did not match the crc32 the parent announced.
    Corrupt(String),
    /// The source ignored Range: this response streams the whole content.
    RangeIgnored(reqwest::Response),
    /// The source now serves another version of the content.
    Changed(String),
    /// Local storage failed: the task cannot go on.
    Storage(StorageError),
}

struct Aborting(Vec<tokio::task::JoinHandle<()>>);
impl Drop for Aborting {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// A finished fetch: its pieces, where from, how long it took, and the piece (a parent's), or
/// `None` for a source lane (whose pieces came through the lane channel as they completed).
type Joined = (
    std::ops::Range<u32>,
    From,
    Duration,
    Result<Option<PieceRecord>, PieceError>,
);
/// A piece a source lane stored, and how long it took.
type LanePiece = (PieceRecord, Duration);

/// The content digest computed from the bytes as lanes store them, in order, so the finished
/// content needs no second read. `None` once it was lost (a lane failed while holding it):
/// then the whole file is hashed at the end.
type InlineHash = Arc<std::sync::Mutex<Option<Hashed>>>;

/// The first `next` bytes of the content, all in committed pieces, went into `hasher`.
struct Hashed {
    next: u64,
    hashers: Vec<dragonfly_common::digest::Hasher>,
}

async fn run(
    engine: &TaskManager,
    task: &Arc<Task>,
    req: &TaskRequest,
    sched: &mut Sched,
) -> Result<Vec<Digest>, TaskError> {
    let inner = &engine.inner;
    let storage = inner.storage.clone();
    let id = task.id.clone();
    let gate = Gate {
        rate: inner.opts.download_limits.for_task(),
        room: inner.room.clone(),
    };

    let (mut parents, mut prx) = Parents::new(inner.opts.host_id.clone(), id.clone());
    for p in &req.parents {
        parents.add(p.clone(), false);
    }

    // 0. Register with the scheduler and take its first answer.
    let mut hint = None;
    if let Some(schedulers) = inner.schedulers.as_ref() {
        match schedulers
            .register(&id, &task.peer_id, download_msg(req))
            .await
        {
            Ok(mut link) => {
                sched.scheduler = Some(link.scheduler.clone());
                let answer = tokio::time::timeout(sched.timeout, link.answer())
                    .await
                    .unwrap_or_else(|_| {
                        Answer::Lost(format!(
                            "{}: no answer within {:?} (scheduler.scheduleTimeout)",
                            link.scheduler, sched.timeout
                        ))
                    });
                sched.link = Some(link);
                hint = sched.apply(answer, &mut parents, &id)?;
            }
            Err(e) => sched.lost(&id, &e.to_string())?,
        }
    }

    // 1. The layout: from storage (resume), the scheduler, a parent, or the source.
    let (s, lookup) = (storage.clone(), id.clone());
    let existing = blocking(move || s.task(&lookup)).await?;
    let mut pending_stream = None;
    // Content named by its digest (an OCI blob) cannot change and is checked against that
    // digest anyway; its ranges may be redirected to storage with other ETags than the
    // registry's, so only a URL's content is pinned to a version.
    let by_digest = req.blob_digest().is_some();
    let version: Version = Arc::new(VersionState {
        pinned: !by_digest,
        known: std::sync::Mutex::new(None),
    });
    let stored_version = existing.as_ref().and_then(|r| r.validator.clone());
    let resumed_bytes = existing.as_ref().map_or(0, |r| r.stored_bytes());
    set_version(&version, stored_version.clone());
    let layout = match existing {
        Some(rec) => rec.layout()?,
        None => {
            let mut known = hint.and_then(|(len, pl)| match pl {
                Some(pl) => PieceLayout::new(len, pl).ok(),
                None if len == 0 => Some(PieceLayout::auto(0)),
                None => None,
            });
            if known.is_none() && parents.any_open() {
                let deadline = tokio::time::Instant::now() + inner.opts.parent_metadata_timeout;
                while known.is_none() && parents.any_open() {
                    match tokio::time::timeout_at(deadline, prx.recv()).await {
                        Err(_) | Ok(None) => break,
                        Ok(Some(ParentEvent::Layout {
                            content_length,
                            piece_length,
                            version: v,
                            ..
                        })) => {
                            known = PieceLayout::new(content_length, piece_length).ok();
                            set_version(&version, Some(v));
                        }
                        Ok(Some(ev)) => apply_event(&mut parents.list, ev, &id, &version),
                    }
                }
            }
            match known {
                Some(l) => l,
                None => {
                    let (layout, stream, v) = probe_source(engine, req).await?;
                    pending_stream = stream;
                    set_version(&version, Some(v));
                    layout
                }
            }
        }
    };
    // Nothing is evicted for the length a source claims: the task is admitted when that length
    // could fit at all, and room is made as its bytes arrive (`room.rs`).
    let needed = layout.content_length().saturating_sub(resumed_bytes);
    inner.room.admit(&id, needed).await?;
    let (s, new) = (
        storage.clone(),
        NewTask {
            id: id.clone(),
            url: req.url.clone(),
            content_length: layout.content_length(),
            piece_length: layout.piece_length(),
            digest: req.digest.as_ref().map(ToString::to_string),
            validator: current_version(&version),
        },
    );
    let start_id = id.clone();
    blocking(move || {
        s.create_task(new)?;
        s.start_task(&start_id)
    })
    .await?;
    task.set_layout(layout);
    let (s, lookup) = (storage.clone(), id.clone());
    for p in blocking(move || s.pieces(&lookup)).await? {
        task.piece_stored(p);
    }

    // 2. The pieces; then 3. the whole content checked. A content that fails the digest its
    // callers expect, with pieces from parents, goes round again from the source only.
    let mut source_only = false;
    let mut damaged_rounds = 0;
    loop {
        // Callers expect a digest: hash what lanes write in order on the way. Without one the
        // sha256 is computed after the task finished, off the callers' path (`drive`).
        let claims = task.claims();
        let inline_hash: Option<InlineHash> = (!claims.is_empty()).then(|| {
            Arc::new(std::sync::Mutex::new(Some(Hashed {
                next: 0,
                hashers: wanted_algorithms(&claims)
                    .into_iter()
                    .map(|a| a.hasher())
                    .collect(),
            })))
        });
        if let Some(resp) = pending_stream.take() {
            sched.source_started();
            stream_all(
                &storage,
                task,
                layout,
                resp,
                sched,
                inline_hash.as_ref(),
                &gate,
            )
            .await?;
        }
        let view = task.view();
        let mut missing: BTreeSet<u32> = (0..layout.piece_count())
            .filter(|n| !view.have.get(*n as usize).copied().unwrap_or(false))
            .collect();
        let mut inflight: HashMap<u32, From> = HashMap::new();
        let mut source_attempts: HashMap<u32, u32> = HashMap::new();
        let mut set: JoinSet<Joined> = JoinSet::new();
        let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<LanePiece>();
        let concurrency = inner.opts.concurrent_pieces.max(1);
        // A streaming client reads in order: a few long lanes feed it sooner than many pieces
        // fetched side by side, which all complete at once, late.
        let source_slots = if req.streaming {
            concurrency.min(STREAMING_SOURCE_LANES)
        } else {
            concurrency
        };
        let mut source_jobs = 0usize;
        let stall = inner.opts.piece_timeout;
        let mut last_progress = tokio::time::Instant::now();
        let start = if parents.list.is_empty() && sched.link.is_none() {
            0 // no swarm: in order
        } else {
            rand::random_range(0..layout.piece_count().max(1))
        };
        let head = if req.streaming {
            STREAMING_HEAD.min(layout.piece_count())
        } else {
            0
        };
        let start = start.max(head);
        let mut more = tokio::time::interval_at(
            tokio::time::Instant::now() + MORE_PARENTS_EVERY,
            MORE_PARENTS_EVERY,
        );
        more.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        while !missing.is_empty() || !set.is_empty() {
            // Parents cannot help: ask the scheduler for others (or, without one, use the source).
            let parents_may_help = parents.may_help();
            if !parents_may_help && !sched.source_ok && sched.asked.is_none() && !missing.is_empty()
            {
                sched.reschedule(&parents, &id)?;
            }
            // Schedule as many pieces as allowed: a parent that has the piece (least busy), else the
            // source once no usable parent may still get it.
            // From a per-task random point on (wrapping): siblings that share a seed ask it for
            // different pieces and then swap them, instead of all asking for the same ones.
            // A streaming client reads in order: its first pieces go before the random point.
            let candidates: Vec<u32> = missing
                .range(..head)
                .chain(missing.range(start..))
                .chain(missing.range(head..start))
                .copied()
                .filter(|n| !inflight.contains_key(n))
                .collect();
            for (i, &n) in candidates.iter().enumerate() {
                if set.len() >= concurrency {
                    break;
                }
                if inflight.contains_key(&n) {
                    continue; // taken by a lane started in this round
                }
                let best = parents
                    .list
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.bad && p.has.contains_key(&n))
                    .min_by_key(|(_, p)| (p.seed, p.inflight))
                    .map(|(i, _)| i);
                let from = match best {
                    Some(i) => From::Parent(i),
                    None if !parents_may_help && sched.source_ok && source_jobs < source_slots => {
                        From::Source
                    }
                    None => continue, // a parent will have it soon, or the scheduler will say
                };
                let Some(range) = layout.piece(n) else {
                    continue;
                };
                let t0 = Instant::now();
                match from {
                    From::Parent(i) => {
                        inflight.insert(n, from);
                        let ps = &mut parents.list[i];
                        ps.inflight += 1;
                        let expected = ps.has.get(&n).copied();
                        let p = ps.parent.clone();
                        let (client, storage, id, gate) = (
                            inner.parents.clone(),
                            storage.clone(),
                            id.clone(),
                            gate.clone(),
                        );
                        set.spawn(async move {
                            let r = match client.fetch(&p, &id, n).await {
                                Ok(resp) => {
                                    let mut got = None;
                                    let commit = Commit {
                                        expected_crc: expected,
                                        from: &p.id,
                                    };
                                    write_lane(
                                        &storage,
                                        &id,
                                        layout,
                                        n..n + 1,
                                        resp,
                                        None,
                                        commit,
                                        &gate,
                                        |r, _| got = Some(r),
                                    )
                                    .await
                                    .map(|()| got)
                                }
                                Err(e) => Err(PieceError::Remote(e, true)),
                            };
                            (n..n + 1, from, t0.elapsed(), r)
                        });
                    }
                    From::Source => {
                        // A lane: this piece and the ones after it that are still to fetch, about
                        // an equal share of what is left per free source slot.
                        let left = candidates.len() - i;
                        let slots = (source_slots - source_jobs).max(1);
                        let want = (left.div_ceil(slots) as u32).clamp(1, LANE_MAX_PIECES);
                        let mut end = n + 1;
                        while end - n < want
                            && missing.contains(&end)
                            && !inflight.contains_key(&end)
                            && layout.piece(end).is_some()
                        {
                            end += 1;
                        }
                        for k in n..end {
                            inflight.insert(k, from);
                        }
                        source_jobs += 1;
                        sched.source_started();
                        let (source, storage, id, url, headers, tx, hash, version, gate) = (
                            req.source.clone().unwrap_or_else(|| inner.source.clone()),
                            storage.clone(),
                            id.clone(),
                            req.url.clone(),
                            req.headers.clone(),
                            lane_tx.clone(),
                            inline_hash.clone(),
                            version.clone(),
                            gate.clone(),
                        );
                        let last = layout.piece(end - 1).unwrap_or(range);
                        let (first_byte, end_byte) = (range.offset, last.end());
                        set.spawn(async move {
                            let asked = current_version(&version);
                            let r = match source
                                .get_version(
                                    &url,
                                    &headers,
                                    Some((first_byte, end_byte - 1)),
                                    asked.as_ref(),
                                )
                                .await
                            {
                                Ok(resp) => match changed(&version, &resp, layout.content_length())
                                {
                                    Some(why) => Err(PieceError::Changed(why)),
                                    None if resp.status() == StatusCode::OK
                                        && end_byte - first_byte != layout.content_length() =>
                                    {
                                        Err(PieceError::RangeIgnored(resp))
                                    }
                                    None => match check_range(&resp, first_byte, end_byte) {
                                        Ok(()) => write_lane(
                                            &storage,
                                            &id,
                                            layout,
                                            n..end,
                                            resp,
                                            hash.as_ref(),
                                            Commit::SOURCE,
                                            &gate,
                                            |p, cost| {
                                                let _ = tx.send((p, cost));
                                            },
                                        )
                                        .await
                                        .map(|()| None),
                                        Err(e) => Err(PieceError::Remote(e, true)),
                                    },
                                },
                                Err(e) => {
                                    let retry = e.is_retryable();
                                    Err(PieceError::Remote(e.to_string(), retry))
                                }
                            };
                            (n..end, from, t0.elapsed(), r)
                        });
                    }
                }
            }

            tokio::select! {
                joined = set.join_next(), if !set.is_empty() => {
                    let Some(joined) = joined else { continue };
                    let (pieces, from, cost, result) = joined.map_err(|e| TaskError::Storage(format!("piece task: {e}")))?;
                    match from {
                        From::Parent(i) => {
                            parents.list[i].inflight = parents.list[i].inflight.saturating_sub(1);
                        }
                        From::Source => {
                            source_jobs = source_jobs.saturating_sub(1);
                            // The lane sent its pieces before it ended: take them first.
                            while let Ok((record, cost)) = lane_rx.try_recv() {
                                lane_piece_stored(task, sched, &mut missing, &mut inflight, record, cost);
                                last_progress = tokio::time::Instant::now();
                            }
                        }
                    }
                    for k in pieces.clone() {
                        inflight.remove(&k);
                    }
                    // The piece a failure is about: the lane's first one still missing.
                    let n = pieces.clone().find(|k| missing.contains(k)).unwrap_or(pieces.start);
                    match result {
                        Ok(None) => {}
                        Ok(Some(record)) => {
                            missing.remove(&n);
                            last_progress = tokio::time::Instant::now();
                            let parent = match from {
                                From::Parent(i) => Some(&parents.list[i].parent),
                                From::Source => None,
                            };
                            sched.piece_stored(&record, parent, cost);
                            task.piece_stored(record);
                        }
                        Err(PieceError::Storage(e)) => return Err(e.into()),
                        Err(PieceError::Changed(why)) => {
                            return Err(TaskError::SourceChanged { url: req.url.clone(), why });
                        }
                        Err(PieceError::RangeIgnored(resp)) => {
                            tracing::info!(task = %id, "source ignores Range: reading it as one stream");
                            set.shutdown().await;
                            while let Ok((record, cost)) = lane_rx.try_recv() {
                                lane_piece_stored(task, sched, &mut missing, &mut inflight, record, cost);
                            }
                            stream_all(&storage, task, layout, resp, sched, inline_hash.as_ref(), &gate).await?;
                            missing.clear();
                            inflight.clear();
                            source_jobs = 0;
                        }
                        Err(PieceError::Remote(e, _) | PieceError::Corrupt(e)) if matches!(from, From::Parent(_)) => {
                            if let From::Parent(i) = from {
                                let ps = &mut parents.list[i];
                                tracing::warn!(task = %id, piece = n, parent = %ps.parent.id, addr = %ps.parent.addr, error = %e, "parent failed; not asking it again");
                                ps.bad = true;
                                sched.send(Request::DownloadPieceFailedRequest(DownloadPieceFailedRequest {
                                    piece_number: n,
                                    parent_id: ps.parent.id.clone(),
                                    temporary: false,
                                    description: Some(e),
                                }));
                            }
                        }
                        Err(PieceError::Remote(e, false)) => return Err(TaskError::Source(e)),
                        Err(PieceError::Remote(e, true) | PieceError::Corrupt(e)) => {
                            let attempts = source_attempts.entry(n).or_default();
                            *attempts += 1;
                            if *attempts >= SOURCE_ATTEMPTS {
                                return Err(TaskError::Source(e));
                            }
                            tracing::debug!(task = %id, piece = n, error = %e, "source piece failed, retrying");
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(*attempts))).await;
                        }
                    }
                }
                Some((record, cost)) = lane_rx.recv() => {
                    lane_piece_stored(task, sched, &mut missing, &mut inflight, record, cost);
                    last_progress = tokio::time::Instant::now();
                }
                ev = prx.recv() => {
                    if let Some(ev) = ev {
                        apply_event(&mut parents.list, ev, &id, &version);
                        last_progress = tokio::time::Instant::now();
                    }
                }
                answer = next_answer(&mut sched.link), if sched.link.is_some() => {
                    sched.apply(answer, &mut parents, &id)?;
                    last_progress = tokio::time::Instant::now();
                }
                _ = more.tick(), if sched.link.is_some() && !missing.is_empty() => {
                    // Fewer parents than it could use: ask for more (peers that got pieces since),
                    // so the swarm spreads the upload over everyone instead of a few.
                    if sched.asked.is_none() && !sched.told_source && parents.live_count() < WANTED_PARENTS {
                        sched.send(Request::MoreParentsRequest(MoreParentsRequest {}));
                    }
                }
                _ = tokio::time::sleep_until(sched.asked.unwrap_or_else(tokio::time::Instant::now) + sched.timeout), if sched.asked.is_some() => {
                    sched.lost(&id, "no answer to a reschedule within scheduler.scheduleTimeout")?;
                }
                _ = tokio::time::sleep_until(last_progress + stall), if set.is_empty() && !missing.is_empty() => {
                    tracing::warn!(task = %id, "parents made no progress for {:?}; not asking them again", stall);
                    for p in parents.list.iter_mut() {
                        if p.open || !p.has.is_empty() {
                            p.bad = true;
                        }
                        p.open = false;
                        p.has.clear();
                    }
                    last_progress = tokio::time::Instant::now();
                }
            }
        }

        // 3. The whole content: its sha256 (recorded with the task) and every digest a caller
        // expects, from what the lanes hashed in order and the rest read back from the file.
        let claims = task.claims();
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let algos = wanted_algorithms(&claims);
        let hashed = inline_hash.and_then(|h| h.lock().ok().and_then(|mut g| g.take()));
        let (s, i) = (storage.clone(), id.clone());
        let hashed = blocking(move || {
            let (from, hashers) = match hashed {
                Some(h) => (h.next, h.hashers),
                None => (0, algos.iter().map(|a| a.hasher()).collect()),
            };
            s.hash_content(&i, from, hashers)
        })
        .await?;
        let digests = match hashed {
            Ok(d) => d,
            Err(damaged) => {
                // Damaged on disk since it was stored (the piece was dropped): fetch it again.
                damaged_rounds += 1;
                if damaged_rounds > DAMAGED_ROUNDS {
                    return Err(TaskError::DamagedPiece {
                        task: id.to_string(),
                        piece: damaged.number,
                    });
                }
                task.pieces_dropped(&[damaged.number]);
                continue;
            }
        };
        // A digest-keyed task (an OCI blob) must have that digest; otherwise one caller's digest
        // matching is enough (each caller's own is checked against the result before it is
        // served, so a typo fails only its caller).
        let intrinsic = claims.iter().find(|d| TaskId::for_blob(d, &req.url) == id);
        let verified = match intrinsic {
            Some(d) => digests.contains(d),
            None => claims.is_empty() || claims.iter().any(|c| digests.contains(c)),
        };
        if verified {
            if stored_version.is_none()
                && let Some(v) = current_version(&version)
            {
                let (s, i) = (storage.clone(), id.clone());
                blocking(move || s.set_validator(&i, &v)).await?;
            }
            return Ok(digests);
        }
        let expected = intrinsic.or(claims.first()).cloned();
        let mismatch = |expected: Option<Digest>| {
            let expected = expected.unwrap_or_else(|| digests[0].clone());
            let actual = digests
                .iter()
                .find(|d| d.algorithm() == expected.algorithm())
                .unwrap_or(&digests[0]);
            TaskError::DigestMismatch {
                url: req.url.clone(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            }
        };
        // Parents' pieces passed their crc32, but a parent can lie consistently: drop what came
        // from parents, never ask them again, and take those pieces from the source.
        let (s, i) = (storage.clone(), id.clone());
        let dropped = if source_only {
            Vec::new()
        } else {
            blocking(move || s.drop_pieces_where(&i, |p| p.parent_id.as_deref() != Some("")))
                .await?
        };
        if dropped.is_empty() {
            // All from the source and still no caller's digest: keep nothing of it.
            return Err(mismatch(expected));
        }
        let liars: BTreeSet<&str> = dropped
            .iter()
            .filter_map(|p| p.parent_id.as_deref())
            .collect();
        tracing::warn!(task = %id, error = %mismatch(expected.clone()), parents = ?liars, pieces = dropped.len(), "content failed its digest; dropping the parents' pieces and fetching them from the source");
        for liar in &liars {
            let first = dropped
                .iter()
                .find(|p| p.parent_id.as_deref() == Some(*liar))
                .map_or(0, |p| p.number);
            sched.send(Request::DownloadPieceFailedRequest(
                DownloadPieceFailedRequest {
                    piece_number: first,
                    parent_id: liar.to_string(),
                    temporary: false,
                    description: Some("its pieces failed the content digest".to_string()),
                },
            ));
        }
        for p in parents.list.iter_mut() {
            p.bad = true;
        }
        parents.refuse_new = true;
        sched.source_ok = true;
        source_only = true;
        task.pieces_dropped(&dropped.iter().map(|p| p.number).collect::<Vec<_>>());
    }
}

/// The digests computed of every finished content: sha256 (recorded with the task), plus the
/// algorithms callers asked for.
fn wanted_algorithms(claims: &[Digest]) -> Vec<Algorithm> {
    let mut algos = vec![Algorithm::Sha256];
    for c in claims {
        if !algos.contains(&c.algorithm()) {
            algos.push(c.algorithm());
        }
    }
    algos
}

fn apply_event(parents: &mut [ParentState], ev: ParentEvent, id: &TaskId, version: &Version) {
    match ev {
        ParentEvent::Layout {
            parent, version: v, ..
        } => {
            // A parent holding another version of the source must not feed this task.
            if let (Some(known), Some(p)) = (current_version(version), parents.get_mut(parent))
                && let Some(why) = known.differs(&v)
            {
                tracing::warn!(task = %id, parent = %p.parent.id, change = %why, "parent holds another version of the source; not asking it");
                p.bad = true;
            }
        }
        ParentEvent::Piece { parent, piece } => {
            if let Some(p) = parents.get_mut(parent) {
                p.has.insert(piece.number, piece.crc32);
            }
        }
        ParentEvent::Closed { parent, error } => {
            if let Some(p) = parents.get_mut(parent) {
                p.open = false;
                if let Some(e) = error {
                    tracing::warn!(task = %id, parent = %p.parent.id, error = %e, "parent stream failed");
                    p.bad = true;
                }
            }
        }
    }
}

/// Ask the source for the length; a response that ignores Range comes back to be streamed.
async fn probe_source(
    engine: &TaskManager,
    req: &TaskRequest,
) -> Result<(PieceLayout, Option<reqwest::Response>, SourceValidator), TaskError> {
    let probe = req
        .source
        .as_ref()
        .unwrap_or(&engine.inner.source)
        .probe(&req.url, &req.headers)
        .await
        .map_err(source_error)?;
    let (len, stream, version) = match probe {
        Probe::Length {
            content_length,
            validator,
        } => (content_length, None, validator),
        Probe::Stream(resp) => match crate::source::http::content_length(resp.headers()) {
            Some(len) => {
                let v = validator_of(resp.headers());
                (len, Some(resp), v)
            }
            None => {
                return Err(TaskError::Source(format!(
                    "{} gives neither a content length nor Range support; the daemon cannot split it into pieces",
                    req.url
                )));
            }
        },
    };
    let layout = match req.piece_length {
        Some(pl) => PieceLayout::new(len, pl).map_err(|e| TaskError::Source(e.to_string()))?,
        None => PieceLayout::auto(len),
    };
    Ok((layout, stream, version))
}

fn source_error(e: DownloadError) -> TaskError {
    match e {
        DownloadError::Status {
            url,
            code,
            challenge,
            ..
        } => TaskError::Status {
            url,
            code,
            challenge,
        },
        e => TaskError::Source(e.to_string()),
    }
}

/// The response carries the bytes `[first, end)`: a 206 with that Content-Range, or a 200 (the
/// caller checked that a 200 is the whole content).
fn check_range(resp: &reqwest::Response, first: u64, end: u64) -> Result<(), String> {
    if resp.status() == StatusCode::OK {
        return Ok(()); // the whole content is this one lane
    }
    match content_range(resp.headers()) {
        Some((a, b, _)) if a == first && b + 1 == end => Ok(()),
        other => Err(format!(
            "asked for bytes={first}-{}, got Content-Range {other:?}",
            end - 1
        )),
    }
}

fn piece_write_error(e: StorageError) -> PieceError {
    if e.is_corrupt_piece() {
        PieceError::Corrupt(e.to_string())
    } else if matches!(e, StorageError::Io { .. } | StorageError::Metadata(_)) {
        PieceError::Storage(e)
    } else {
        // Too many or too few bytes: the remote sent the wrong thing.
        PieceError::Remote(e.to_string(), true)
    }
}

/// What the bytes of a piece being written wait for: the download rate limit, and room on
/// disk (reserved before each piece).
#[derive(Clone)]
struct Gate {
    rate: TaskRate,
    room: Room,
}

/// Store a whole-content response piece by piece (the source ignored Range).
async fn stream_all(
    storage: &Storage,
    task: &Arc<Task>,
    layout: PieceLayout,
    resp: reqwest::Response,
    sched: &mut Sched,
    hash: Option<&InlineHash>,
    gate: &Gate,
) -> Result<(), TaskError> {
    write_lane(
        storage,
        &task.id,
        layout,
        0..layout.piece_count(),
        resp,
        hash,
        Commit::SOURCE,
        gate,
        |record, cost| {
            sched.piece_stored(&record, None, cost);
            task.piece_stored(record);
        },
    )
    .await
    .map_err(|e| match e {
        PieceError::Storage(e) => e.into(),
        PieceError::Remote(e, _) | PieceError::Corrupt(e) => {
            TaskError::Source(format!("{}: {e}", task.url))
        }
        PieceError::RangeIgnored(_) => TaskError::Source(format!("{}: range ignored", task.url)),
        PieceError::Changed(why) => TaskError::SourceChanged {
            url: task.url.clone(),
            why,
        },
    })
}

/// A piece a source lane stored: count it, tell the scheduler and the readers (once).
fn lane_piece_stored(
    task: &Task,
    sched: &mut Sched,
    missing: &mut BTreeSet<u32>,
    inflight: &mut HashMap<u32, From>,
    record: PieceRecord,
    cost: Duration,
) {
    inflight.remove(&record.number);
    if missing.remove(&record.number) {
        sched.piece_stored(&record, None, cost);
        task.piece_stored(record);
    }
}

/// How the pieces of a response are recorded.
#[derive(Clone, Copy)]
struct Commit<'a> {
    /// The crc32 a parent announced for its piece (a parent's response is one piece).
    expected_crc: Option<u32>,
    /// Where the bytes came from: a parent's peer id, or "" for the source.
    from: &'a str,
}

impl Commit<'static> {
    const SOURCE: Self = Commit {
        expected_crc: None,
        from: "",
    };
}

/// Store a response that carries `pieces` back to back, committing each piece as soon as its
/// last byte is written and handing it to `stored` with the time it took. The content hash,
/// when it has reached a piece, is fed the same buffers on the way to the file. A body that
/// ends early, or goes on past the last piece, fails (the last piece is then not recorded).
#[allow(clippy::too_many_arguments)]
async fn write_lane(
    storage: &Storage,
    id: &TaskId,
    layout: PieceLayout,
    pieces: std::ops::Range<u32>,
    mut resp: reqwest::Response,
    hash: Option<&InlineHash>,
    commit: Commit<'_>,
    gate: &Gate,
    mut stored: impl FnMut(PieceRecord, Duration),
) -> Result<(), PieceError> {
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut carry = bytes::Bytes::new();
    let last = pieces.end.saturating_sub(1);
    for n in pieces {
        let Some(range) = layout.piece(n) else {
            break;
        };
        let t0 = Instant::now();
        // Held until the piece is stored or abandoned.
        let _room = gate
            .room
            .reserve(range.length)
            .await
            .map_err(PieceError::Storage)?;
        let (s, i) = (storage.clone(), id.clone());
        let mut writer = blocking(move || s.piece_writer(&i, n))
            .await
            .map_err(PieceError::Storage)?;
        // Held while this piece is written and put back once it is committed: a failure loses
        // it, and the end hashes the whole file instead.
        let mut hashing = hash.and_then(|h| {
            let mut g = h.lock().ok()?;
            match g.as_ref() {
                Some(st) if st.next == range.offset => g.take(),
                _ => None,
            }
        });
        let mut left = range.length;
        while left > 0 {
            while left > 0 && buf.len() < WRITE_CHUNK {
                if carry.is_empty() {
                    carry = match resp.chunk().await {
                        Ok(Some(c)) => {
                            gate.rate.acquire(c.len() as u64).await;
                            c
                        }
                        Ok(None) => {
                            return Err(PieceError::Remote(
                                format!("body ended inside piece {n}"),
                                true,
                            ));
                        }
                        Err(e) => {
                            return Err(PieceError::Remote(
                                crate::source::error::error_chain(&e),
                                true,
                            ));
                        }
                    };
                }
                let take = (left as usize)
                    .min(carry.len())
                    .min(WRITE_CHUNK - buf.len());
                buf.extend_from_slice(&carry.split_to(take));
                left -= take as u64;
            }
            (writer, buf, hashing) = blocking(move || {
                writer.write(&buf)?;
                if let Some(h) = hashing.as_mut() {
                    for hasher in &mut h.hashers {
                        hasher.update(&buf);
                    }
                    h.next += buf.len() as u64;
                }
                buf.clear();
                Ok((writer, buf, hashing))
            })
            .await
            .map_err(piece_write_error)?;
        }
        if n == last {
            let more = match carry.is_empty() {
                true => resp.chunk().await.map(|c| c.is_some_and(|c| !c.is_empty())),
                false => Ok(true),
            };
            match more {
                Ok(false) => {}
                Ok(true) => {
                    return Err(PieceError::Remote(
                        format!("the body goes on past the end of piece {n}"),
                        true,
                    ));
                }
                Err(e) => {
                    return Err(PieceError::Remote(
                        crate::source::error::error_chain(&e),
                        true,
                    ));
                }
            }
        }
        let from = commit.from.to_string();
        let record = blocking(move || writer.commit(commit.expected_crc, Some(&from)))
            .await
            .map_err(piece_write_error)?;
        if let (Some(h), Some(done)) = (hash, hashing)
            && let Ok(mut g) = h.lock()
        {
            *g = Some(done);
        }
        stored(record, t0.elapsed());
    }
    Ok(())
}
