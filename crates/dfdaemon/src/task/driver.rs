//! Drives one task, in named steps: register with the scheduler, learn the layout, admit the
//! task to storage, fetch every missing piece (the picker), and finish: check the whole
//! content against the digests its callers expect, going round again when it must.

use super::lanes::{Commit, Gate, Hashed, InlineHash, Lane};
use super::parent::ParentEvent;
use super::parents::Parents;
use super::picker::{Fetch, Picking, stream_all};
use super::pieces::HttpPieces;
use super::session::{LiedAboutContent, Sched};
use super::version::{Version, VersionState, current_version, set_version};
use super::{Phase, Task, TaskError, TaskManager, TaskRequest};
use crate::source::Probe;
use crate::source::http::validator_of;
use crate::storage::{NewTask, StorageError};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use dragonfly_common::validator::SourceValidator;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Times a task fetches pieces again that were damaged on disk before it could finish.
const DAMAGED_ROUNDS: u32 = 2;

/// Run the task to its end and publish the outcome.
pub(super) async fn drive(engine: TaskManager, task: Arc<Task>, req: TaskRequest) {
    let started = Instant::now();
    tracing::info!(task = %task.id, peer = %task.peer_id, url = %req.url, parents = req.parents.len(), "peer task started");
    let metrics = engine.inner.opts.metrics.clone();
    metrics.task_started();
    let mut sched = Sched::new(engine.inner.sessions.as_deref(), metrics.clone());
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
    sched.finish(task.view().layout, result.as_ref().map(|_| ()));
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
                    tracing::warn!(task = %t.id, error = %dragonfly_common::error::chain(&e), "cannot record the content's sha256");
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
            let len = task.view().layout.map_or(0, |l| l.content_length());
            metrics.task_finished(len, cost);
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
            metrics.task_failed(task_failure(&e));
            tracing::warn!(task = %task.id, peer = %task.peer_id, error = %dragonfly_common::error::chain(&e), "peer task failed");
            task.set_phase(Phase::Failed(e));
        }
    }
    engine.inner.tasks.remove(&task.id);
}

/// A task error as its metrics label.
fn task_failure(e: &TaskError) -> crate::metrics::TaskFailure {
    use super::TaskErrorKind as K;
    use crate::metrics::TaskFailure as F;
    match e.kind() {
        K::Source => F::Source,
        K::Unsplittable => F::Unsplittable,
        K::NoScheduler => F::NoScheduler,
        K::Storage => F::Storage,
        K::NoRoom => F::NoRoom,
        K::SourceChanged => F::SourceChanged,
        K::DigestMismatch => F::DigestMismatch,
        K::Shutdown => F::Shutdown,
    }
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

async fn run(
    engine: &TaskManager,
    task: &Arc<Task>,
    req: &TaskRequest,
    sched: &mut Sched,
) -> Result<Vec<Digest>, TaskError> {
    let (parents, events) = Parents::new(engine.inner.opts.host_id.clone(), task.id.clone());
    let mut run = Run {
        engine,
        task,
        req,
        sched,
        parents,
        events,
        version: Arc::new(VersionState {
            // Content named by its digest (an OCI blob) cannot change and is checked against
            // that digest anyway; its ranges may be redirected to storage with other ETags than
            // the registry's, so only a URL's content is pinned to a version.
            pinned: req.blob_digest().is_none(),
            known: std::sync::Mutex::new(None),
        }),
        stored_version: None,
        resumed_bytes: 0,
        source_only: false,
        damaged_rounds: 0,
    };
    for p in &req.parents {
        run.parents.add(p.clone(), false);
    }
    let hint = run.register().await?;
    let (layout, mut whole) = run.layout(hint).await?;
    run.admit(layout).await?;
    loop {
        let hash = run.inline_hash();
        run.fetch(layout, whole.take(), hash.as_ref()).await?;
        if let Some(digests) = run.finish(hash).await? {
            return Ok(digests);
        }
    }
}

/// One task's run: what the steps share.
struct Run<'a> {
    engine: &'a TaskManager,
    task: &'a Arc<Task>,
    req: &'a TaskRequest,
    sched: &'a mut Sched,
    parents: Parents,
    events: mpsc::Receiver<ParentEvent>,
    version: Version,
    /// The version recorded with a resumed task.
    stored_version: Option<SourceValidator>,
    /// Bytes a resumed task has stored already.
    resumed_bytes: u64,
    /// The content failed its digest with parents' pieces: the rest comes from the source.
    source_only: bool,
    damaged_rounds: u32,
}

impl Run<'_> {
    /// Register with the scheduler and take its first answer: parents, and maybe the layout.
    async fn register(&mut self) -> Result<Option<(u64, Option<u64>)>, TaskError> {
        match self.engine.inner.sessions.as_deref() {
            Some(sessions) => {
                let task = self.task;
                self.sched
                    .register(
                        sessions,
                        &task.id,
                        &task.peer_id,
                        self.req,
                        &mut self.parents,
                    )
                    .await
            }
            None => Ok(None),
        }
    }

    /// The layout: from storage (resume), the scheduler, a parent, or the source; with the
    /// source's whole-content answer when it ignored Range.
    async fn layout(
        &mut self,
        hint: Option<(u64, Option<u64>)>,
    ) -> Result<(PieceLayout, Option<reqwest::Response>), TaskError> {
        let (s, lookup) = (self.engine.storage().clone(), self.task.id.clone());
        let existing = blocking(move || s.task(&lookup)).await?;
        self.stored_version = existing.as_ref().and_then(|r| r.validator.clone());
        self.resumed_bytes = existing.as_ref().map_or(0, |r| r.stored_bytes());
        set_version(&self.version, self.stored_version.clone());
        if let Some(rec) = existing {
            return Ok((rec.layout()?, None));
        }
        let mut known = hint.and_then(|(len, pl)| match pl {
            Some(pl) => PieceLayout::new(len, pl).ok(),
            None if len == 0 => Some(PieceLayout::auto(0)),
            None => None,
        });
        if known.is_none() && self.parents.any_open() {
            let deadline =
                tokio::time::Instant::now() + self.engine.inner.opts.parent_metadata_timeout;
            while known.is_none() && self.parents.any_open() {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) | Ok(None) => break,
                    Ok(Some(ParentEvent::Layout {
                        content_length,
                        piece_length,
                        version: v,
                        ..
                    })) => {
                        known = PieceLayout::new(content_length, piece_length).ok();
                        set_version(&self.version, Some(v));
                    }
                    Ok(Some(ev)) => self.parents.apply_event(ev, &self.task.id, &self.version),
                }
            }
        }
        match known {
            Some(l) => Ok((l, None)),
            None => {
                let (layout, whole, v) = probe_source(self.engine, self.req).await?;
                set_version(&self.version, Some(v));
                Ok((layout, whole))
            }
        }
    }

    /// Admit the task to storage and record it; pieces stored before (a resumed task) count.
    async fn admit(&mut self, layout: PieceLayout) -> Result<(), TaskError> {
        let (storage, id) = (self.engine.storage(), &self.task.id);
        // Nothing is evicted for the length a source claims: the task is admitted when that
        // length could fit at all, and room is made as its bytes arrive (`room.rs`).
        let needed = layout.content_length().saturating_sub(self.resumed_bytes);
        self.engine.inner.room.admit(id, needed).await?;
        let new = NewTask {
            id: id.clone(),
            url: self.req.url.clone(),
            content_length: layout.content_length(),
            piece_length: layout.piece_length(),
            digest: self.req.digest.as_ref().map(ToString::to_string),
            validator: current_version(&self.version),
        };
        let (s, start_id) = (storage.clone(), id.clone());
        blocking(move || {
            s.create_task(new)?;
            s.start_task(&start_id)
        })
        .await?;
        self.task.set_layout(layout);
        let (s, lookup) = (storage.clone(), id.clone());
        for p in blocking(move || s.pieces(&lookup)).await? {
            self.task.piece_stored(p);
        }
        Ok(())
    }

    /// Callers expect a digest: hash what lanes write in order on the way. Without one the
    /// sha256 is computed after the task finished, off the callers' path (`drive`).
    fn inline_hash(&self) -> Option<InlineHash> {
        let claims = self.task.claims();
        (!claims.is_empty()).then(|| {
            Arc::new(std::sync::Mutex::new(Some(Hashed {
                next: 0,
                hashers: wanted_algorithms(&claims)
                    .into_iter()
                    .map(|a| a.hasher())
                    .collect(),
            })))
        })
    }

    /// Fetch the missing pieces: the whole-content answer first if the probe got one, then
    /// the picker.
    async fn fetch(
        &mut self,
        layout: PieceLayout,
        whole: Option<reqwest::Response>,
        hash: Option<&InlineHash>,
    ) -> Result<(), TaskError> {
        let inner = &self.engine.inner;
        let gate = Gate {
            rate: inner.opts.download_limits.for_task(),
            room: inner.room.clone(),
        };
        let storage = &inner.storage;
        if let Some(body) = whole {
            self.sched.source_started();
            let lane = Lane {
                storage,
                id: &self.task.id,
                layout,
                hash,
                commit: Commit::SOURCE,
                gate: &gate,
            };
            stream_all(&lane, self.task, self.sched, body).await?;
        }
        let source = HttpPieces::new(
            self.req
                .source
                .clone()
                .unwrap_or_else(|| inner.source.clone()),
            self.req.url.clone(),
            self.req.headers.clone(),
        );
        Fetch {
            storage,
            task: self.task,
            layout,
            picking: Picking {
                concurrency: inner.opts.concurrent_pieces,
                streaming: self.req.streaming,
                stall: inner.opts.piece_timeout,
                // No swarm: in order.
                random_start: !(self.parents.list.is_empty() && self.sched.link.is_none()),
            },
            parents: &mut self.parents,
            events: &mut self.events,
            sched: &mut *self.sched,
            version: &self.version,
            gate: &gate,
            hash,
            from_parents: &inner.parents,
            source: &source,
        }
        .run()
        .await
    }

    /// The whole content: its sha256 (recorded with the task) and every digest a caller
    /// expects, from what the lanes hashed in order and the rest read back from the file.
    /// `None`: pieces were dropped (damaged on disk, or from a parent that lied) and the task
    /// goes round again.
    async fn finish(&mut self, hash: Option<InlineHash>) -> Result<Option<Vec<Digest>>, TaskError> {
        let (task, req) = (self.task, self.req);
        let storage = self.engine.storage().clone();
        let id = task.id.clone();
        let claims = task.claims();
        if claims.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let algos = wanted_algorithms(&claims);
        let hashed = hash.and_then(|h| h.lock().ok().and_then(|mut g| g.take()));
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
                self.damaged_rounds += 1;
                if self.damaged_rounds > DAMAGED_ROUNDS {
                    return Err(TaskError::DamagedPiece {
                        task: id.to_string(),
                        piece: damaged.number,
                    });
                }
                task.pieces_dropped(&[damaged.number]);
                return Ok(None);
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
            if self.stored_version.is_none()
                && let Some(v) = current_version(&self.version)
            {
                let (s, i) = (storage.clone(), id.clone());
                blocking(move || s.set_validator(&i, &v)).await?;
            }
            return Ok(Some(digests));
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
        let dropped = if self.source_only {
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
            self.sched.piece_failed(first, liar, &LiedAboutContent);
            self.engine.inner.opts.metrics.piece_failed(
                crate::metrics::Source::Parent,
                crate::metrics::PieceFailure::DigestMismatch,
            );
        }
        for p in self.parents.list.iter_mut() {
            p.bad = true;
        }
        self.parents.refuse_new = true;
        self.sched.source_ok = true;
        self.source_only = true;
        task.pieces_dropped(&dropped.iter().map(|p| p.number).collect::<Vec<_>>());
        Ok(None)
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
                return Err(TaskError::Unsplittable {
                    url: req.url.clone(),
                });
            }
        },
    };
    let layout = match req.piece_length {
        Some(pl) => PieceLayout::new(len, pl).map_err(|e| TaskError::Layout {
            url: req.url.clone(),
            source: Arc::new(e),
        })?,
        None => PieceLayout::auto(len),
    };
    Ok((layout, stream, version))
}

/// A source error as the task's: a status is kept as one (a proxy passes it on).
fn source_error(e: crate::source::error::DownloadError) -> TaskError {
    use crate::source::error::DownloadError;
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
        e => TaskError::Source(Arc::new(e)),
    }
}
