//! Drives one task: learn the layout, then fetch every missing piece from parents or the
//! source, at most `concurrent_pieces` at a time, verify each, and finish (or fail) the task.

use super::parent::{self, Parent, ParentEvent};
use super::{Phase, Task, TaskError, TaskManager, TaskRequest};
use crate::download::DownloadError;
use crate::source::Probe;
use crate::source::http::content_range;
use crate::storage::{NewTask, PieceRecord, Storage, StorageError};
use dragonfly_common::piece::{PieceLayout, PieceRange};
use dragonfly_common::task_id::TaskId;
use http::StatusCode;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Bytes buffered before a write to the content file.
const WRITE_CHUNK: usize = 1 << 20;
/// Attempts per piece at the source for errors that may pass.
const SOURCE_ATTEMPTS: u32 = 3;

/// Run the task to its end and publish the outcome.
pub(super) async fn drive(engine: TaskManager, task: Arc<Task>, req: TaskRequest) {
    let started = Instant::now();
    tracing::info!(task = %task.id, peer = %task.peer_id, url = %req.url, parents = req.parents.len(), "peer task started");
    let result = run(&engine, &task, &req).await;
    let storage = engine.storage().clone();
    let id = task.id.clone();
    match result {
        Ok(()) => {
            let finished = blocking(move || storage.finish_task(&id)).await;
            match finished {
                Ok(_) => {
                    task.set_phase(Phase::Finished);
                    let cost = started.elapsed();
                    tracing::info!(
                        task = %task.id,
                        peer = %task.peer_id,
                        component = "PeerTask",
                        "peer task done, cost: {}ms",
                        cost.as_millis()
                    );
                }
                Err(e) => fail(&task, e.into()),
            }
        }
        Err(e) => {
            let digest_mismatch = matches!(e, TaskError::DigestMismatch { .. });
            let _ = blocking(move || {
                if digest_mismatch {
                    storage.delete_task(&id) // nothing of a wrong content is kept
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

async fn blocking<T: Send + 'static>(
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
    /// It failed or lied: never ask it again for this task.
    bad: bool,
    inflight: usize,
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

async fn run(engine: &TaskManager, task: &Arc<Task>, req: &TaskRequest) -> Result<(), TaskError> {
    let inner = &engine.inner;
    let storage = inner.storage.clone();
    let id = task.id.clone();

    let (ptx, mut prx) = mpsc::channel(1024);
    let mut parents: Vec<ParentState> = Vec::new();
    let mut followers = Vec::new();
    for (i, p) in req.parents.iter().enumerate() {
        followers.push(tokio::spawn(parent::follow(
            i,
            p.clone(),
            inner.opts.host_id.clone(),
            id.clone(),
            ptx.clone(),
        )));
        parents.push(ParentState {
            parent: p.clone(),
            has: HashMap::new(),
            open: true,
            bad: false,
            inflight: 0,
        });
    }
    drop(ptx);
    let _followers = Aborting(followers);
    let mut events_open = !parents.is_empty();

    // 1. The layout: from storage (resume), from a parent, or from the source.
    let (s, lookup) = (storage.clone(), id.clone());
    let existing = blocking(move || s.task(&lookup)).await?;
    let mut pending_stream = None;
    let layout = match existing {
        Some(rec) => rec.layout()?,
        None => {
            let mut from_parent = None;
            if events_open {
                let deadline = tokio::time::Instant::now() + inner.opts.parent_metadata_timeout;
                while from_parent.is_none() && events_open {
                    match tokio::time::timeout_at(deadline, prx.recv()).await {
                        Err(_) => break,
                        Ok(None) => events_open = false,
                        Ok(Some(ParentEvent::Layout {
                            content_length,
                            piece_length,
                            ..
                        })) => {
                            from_parent = PieceLayout::new(content_length, piece_length).ok();
                        }
                        Ok(Some(ev)) => apply_event(&mut parents, ev, &id),
                    }
                }
            }
            match from_parent {
                Some(l) => l,
                None => {
                    let (layout, stream) = probe_source(engine, req).await?;
                    pending_stream = stream;
                    layout
                }
            }
        }
    };
    if let Some(policy) = inner.opts.gc.clone() {
        // Make room before a new task is stored, if it would cross the quota.
        let (s, e, incoming) = (storage.clone(), engine.clone(), layout.content_length());
        let report = blocking(move || s.gc(&policy, &|id| e.in_use(id), incoming)).await?;
        if !report.evicted.is_empty() {
            tracing::info!(task = %id, evicted = report.evicted.len(), "made room for a new task");
        }
    }
    let (s, new) = (
        storage.clone(),
        NewTask {
            id: id.clone(),
            url: req.url.clone(),
            content_length: layout.content_length(),
            piece_length: layout.piece_length(),
            digest: req.digest.as_ref().map(ToString::to_string),
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

    // 2. The pieces.
    if let Some(resp) = pending_stream {
        stream_all(&storage, task, layout, resp).await?;
    }
    let view = task.view();
    let mut missing: BTreeSet<u32> = (0..layout.piece_count())
        .filter(|n| !view.have.get(*n as usize).copied().unwrap_or(false))
        .collect();
    let mut inflight: HashMap<u32, From> = HashMap::new();
    let mut source_attempts: HashMap<u32, u32> = HashMap::new();
    let mut set: JoinSet<(u32, From, Result<PieceRecord, PieceError>)> = JoinSet::new();
    let concurrency = inner.opts.concurrent_pieces.max(1);
    let stall = inner.opts.piece_timeout;
    let mut last_progress = tokio::time::Instant::now();

    while !missing.is_empty() || !set.is_empty() {
        // Schedule as many pieces as allowed: a parent that has the piece (least busy), else the
        // source once no usable parent may still get it.
        let parents_may_help = parents
            .iter()
            .any(|p| !p.bad && (p.open || !p.has.is_empty()));
        let candidates: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|n| !inflight.contains_key(n))
            .collect();
        for n in candidates {
            if set.len() >= concurrency {
                break;
            }
            let best = parents
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.bad && p.has.contains_key(&n))
                .min_by_key(|(_, p)| p.inflight)
                .map(|(i, _)| i);
            let from = match best {
                Some(i) => From::Parent(i),
                None if !parents_may_help => From::Source,
                None => continue, // a parent will have it soon
            };
            let Some(range) = layout.piece(n) else {
                continue;
            };
            inflight.insert(n, from);
            match from {
                From::Parent(i) => {
                    parents[i].inflight += 1;
                    let expected = parents[i].has.get(&n).copied();
                    let p = parents[i].parent.clone();
                    let (client, storage, id) =
                        (inner.parents.clone(), storage.clone(), id.clone());
                    set.spawn(async move {
                        let r = match client.fetch(&p, &id, n).await {
                            Ok(resp) => {
                                write_piece(&storage, &id, range, resp, expected, Some(&p.id)).await
                            }
                            Err(e) => Err(PieceError::Remote(e, true)),
                        };
                        (n, from, r)
                    });
                }
                From::Source => {
                    let (source, storage, id, url, headers) = (
                        inner.source.clone(),
                        storage.clone(),
                        id.clone(),
                        req.url.clone(),
                        req.headers.clone(),
                    );
                    set.spawn(async move {
                        let r = match source
                            .get(&url, &headers, Some((range.offset, range.end() - 1)))
                            .await
                        {
                            Ok(resp)
                                if resp.status() == StatusCode::OK
                                    && range.length != layout.content_length() =>
                            {
                                Err(PieceError::RangeIgnored(resp))
                            }
                            Ok(resp) => match check_range(&resp, range) {
                                Ok(()) => {
                                    write_piece(&storage, &id, range, resp, None, Some("")).await
                                }
                                Err(e) => Err(PieceError::Remote(e, true)),
                            },
                            Err(e) => {
                                let retry = e.is_retryable();
                                Err(PieceError::Remote(e.to_string(), retry))
                            }
                        };
                        (n, from, r)
                    });
                }
            }
        }

        tokio::select! {
            joined = set.join_next(), if !set.is_empty() => {
                let Some(joined) = joined else { continue };
                let (n, from, result) = joined.map_err(|e| TaskError::Storage(format!("piece task: {e}")))?;
                inflight.remove(&n);
                if let From::Parent(i) = from {
                    parents[i].inflight = parents[i].inflight.saturating_sub(1);
                }
                match result {
                    Ok(record) => {
                        missing.remove(&n);
                        last_progress = tokio::time::Instant::now();
                        task.piece_stored(record);
                    }
                    Err(PieceError::Storage(e)) => return Err(e.into()),
                    Err(PieceError::RangeIgnored(resp)) => {
                        tracing::info!(task = %id, "source ignores Range: reading it as one stream");
                        set.abort_all();
                        stream_all(&storage, task, layout, resp).await?;
                        missing.clear();
                        inflight.clear();
                    }
                    Err(PieceError::Remote(e, _) | PieceError::Corrupt(e)) if matches!(from, From::Parent(_)) => {
                        if let From::Parent(i) = from {
                            tracing::warn!(task = %id, piece = n, parent = %parents[i].parent.id, error = %e, "parent failed; not asking it again");
                            parents[i].bad = true;
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
            ev = prx.recv(), if events_open => {
                match ev {
                    Some(ev) => apply_event(&mut parents, ev, &id),
                    None => events_open = false,
                }
                if events_open { last_progress = tokio::time::Instant::now(); }
            }
            _ = tokio::time::sleep_until(last_progress + stall), if set.is_empty() && !missing.is_empty() => {
                tracing::warn!(task = %id, "parents made no progress for {:?}; going to the source", stall);
                for p in parents.iter_mut() { p.open = false; p.has.clear(); }
            }
        }
        // Parents whose stream closed without a piece we still need are of no further help.
        if !events_open {
            for p in parents.iter_mut() {
                p.open = false;
            }
        }
    }

    // 3. The whole content against the expected digest.
    if let Some(expected) = &req.digest {
        let (path, algo) = (storage.content_path(&id), expected.algorithm());
        let actual = tokio::task::spawn_blocking(move || hash_file(&path, algo))
            .await
            .map_err(|e| TaskError::Storage(e.to_string()))?
            .map_err(|e| TaskError::Storage(e.to_string()))?;
        if &actual != expected {
            return Err(TaskError::DigestMismatch {
                url: req.url.clone(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

fn apply_event(parents: &mut [ParentState], ev: ParentEvent, id: &TaskId) {
    match ev {
        ParentEvent::Layout { .. } => {}
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
) -> Result<(PieceLayout, Option<reqwest::Response>), TaskError> {
    let probe = engine
        .inner
        .source
        .probe(&req.url, &req.headers)
        .await
        .map_err(source_error)?;
    let (len, stream) = match probe {
        Probe::Length { content_length } => (content_length, None),
        Probe::Stream(resp) => match crate::source::http::content_length(resp.headers()) {
            Some(len) => (len, Some(resp)),
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
    Ok((layout, stream))
}

fn source_error(e: DownloadError) -> TaskError {
    TaskError::Source(e.to_string())
}

fn check_range(resp: &reqwest::Response, range: PieceRange) -> Result<(), String> {
    if resp.status() == StatusCode::OK {
        return Ok(()); // the whole content is this one piece
    }
    match content_range(resp.headers()) {
        Some((a, b, _)) if a == range.offset && b + 1 == range.end() => Ok(()),
        other => Err(format!(
            "asked for {}, got Content-Range {other:?}",
            range.http_range()
        )),
    }
}

/// Stream a response body into piece `range`, verifying `expected_crc` when given.
async fn write_piece(
    storage: &Storage,
    id: &TaskId,
    range: PieceRange,
    mut resp: reqwest::Response,
    expected_crc: Option<u32>,
    parent_id: Option<&str>,
) -> Result<PieceRecord, PieceError> {
    let (s, i, n) = (storage.clone(), id.clone(), range.number);
    let mut writer = blocking(move || s.piece_writer(&i, n))
        .await
        .map_err(PieceError::Storage)?;
    let mut buf = Vec::with_capacity(WRITE_CHUNK.min(range.length as usize));
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(PieceError::Remote(crate::download::error_chain(&e), true)),
        };
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_CHUNK {
            (writer, buf) = blocking(move || {
                writer.write(&buf)?;
                buf.clear();
                Ok((writer, buf))
            })
            .await
            .map_err(piece_write_error)?;
        }
    }
    let parent = parent_id.map(str::to_string);
    blocking(move || {
        if !buf.is_empty() {
            writer.write(&buf)?;
        }
        writer.commit(expected_crc, parent.as_deref())
    })
    .await
    .map_err(piece_write_error)
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

/// Store a whole-content response piece by piece (the source ignored Range).
async fn stream_all(
    storage: &Storage,
    task: &Arc<Task>,
    layout: PieceLayout,
    mut resp: reqwest::Response,
) -> Result<(), TaskError> {
    let mut pieces = layout.pieces();
    let mut current = pieces.next();
    let mut writer = None;
    let mut carry = bytes::Bytes::new();
    while let Some(range) = current {
        if writer.is_none() {
            let (s, i, n) = (storage.clone(), task.id.clone(), range.number);
            writer = Some((blocking(move || s.piece_writer(&i, n)).await?, 0u64));
        }
        if carry.is_empty() {
            carry = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Err(TaskError::Source(format!(
                        "{}: body ended inside piece {}",
                        task.url, range.number
                    )));
                }
                Err(e) => return Err(TaskError::Source(crate::download::error_chain(&e))),
            };
        }
        let Some((mut w, written)) = writer.take() else {
            continue;
        };
        let take = ((range.length - written) as usize).min(carry.len());
        let part = carry.split_to(take);
        let written = written + take as u64;
        w = blocking(move || w.write(&part).map(|()| w)).await?;
        if written == range.length {
            let record = blocking(move || w.commit(None, Some(""))).await?;
            task.piece_stored(record);
            current = pieces.next();
        } else {
            writer = Some((w, written));
        }
    }
    Ok(())
}

fn hash_file(
    path: &std::path::Path,
    algo: dragonfly_common::digest::Algorithm,
) -> std::io::Result<dragonfly_common::digest::Digest> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = algo.hasher();
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}
