//! What the engine needs from a scheduler, as traits the scheduler client implements
//! (`crate::scheduling` sits above the engine): register a peer of a task and read the
//! scheduler's answers, report pieces and the outcome. [`Sched`] is the engine's side of one
//! task's conversation: when to ask, when to give up on the scheduler and go to the source.

use super::parent::Parent;
use super::parents::Parents;
use super::{TaskError, TaskRequest};
use crate::storage::PieceRecord;
use dragonfly_common::task_id::TaskId;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::error::Error;
use std::task::{Context, Poll};
use std::time::Duration;

/// A scheduler error as the engine sees it: only its text goes anywhere (a log line).
pub type SchedulerError = Box<dyn Error + Send + Sync>;

/// The schedulers of this daemon, as the engine uses them.
pub trait Sessions: Send + Sync {
    /// Longest wait for an answer (register or reschedule) before going to the source
    /// (`scheduler.scheduleTimeout`).
    fn schedule_timeout(&self) -> Duration;

    /// Fail a download instead of going to the source when no scheduler answers
    /// (`scheduler.disableAutoBackSource`).
    fn disable_auto_back_source(&self) -> bool;

    /// Register `peer_id`'s download of `task` with the scheduler owning it; the first answer
    /// is read from the session.
    fn register<'a>(
        &'a self,
        task: &'a TaskId,
        peer_id: &'a str,
        req: &'a TaskRequest,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, SchedulerError>>;

    /// This host no longer holds `task` (GC evicted it): stop offering it as a parent.
    fn forget_task(&self, task: &TaskId);
}

/// One task's open conversation with its scheduler. Reports never wait (a scheduler too slow
/// to read them loses some; it learns the same from later ones and the outcome).
pub trait Session: Send {
    /// The scheduler's address (for logs).
    fn scheduler(&self) -> &str;
    /// The next answer (the stream of answers). After [`Answer::Lost`] none comes.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer>;
    /// The download started (it has parents).
    fn started(&mut self);
    /// Pieces now come from the source.
    fn source_started(&mut self);
    /// A piece was stored, from `parent` or the source (`None`), taking `cost`.
    fn piece_stored(&mut self, record: &PieceRecord, parent: Option<&Parent>, cost: Duration);
    /// `parent` failed to give piece `number` (it is not asked again for this task).
    fn piece_failed(&mut self, number: u32, parent_id: &str, why: &(dyn Error + 'static));
    /// The parents cannot help: ask for others, not these.
    fn reschedule(&mut self, blocklist: Vec<String>);
    /// Fewer parents than the task could use: ask for more.
    fn more_parents(&mut self);
    /// Report the outcome and close the conversation.
    fn finish(self: Box<Self>, outcome: Outcome<'_>);
}

/// How a task ended, as the scheduler is told.
pub struct Outcome<'a> {
    /// The result.
    pub result: Result<(), &'a TaskError>,
    /// Content length (0 before the layout was known).
    pub content_length: u64,
    /// Piece count (0 before the layout was known).
    pub piece_count: u32,
    /// Some pieces came from the source.
    pub used_source: bool,
}

/// What the scheduler said.
#[derive(Debug)]
pub enum Answer {
    /// Fetch from these parents (best first). Layout hints when the scheduler knows them.
    Parents {
        /// The parents.
        parents: Vec<Parent>,
        /// Ids of those that are seed peers.
        seeds: Vec<String>,
        /// Content length, if known.
        content_length: Option<u64>,
        /// Piece length, if known.
        piece_length: Option<u64>,
    },
    /// Fetch from the source.
    BackToSource(String),
    /// The content is empty.
    Empty,
    /// The stream ended or failed: no more answers will come.
    Lost(String),
}

/// The next scheduler answer, or never when there is no stream. Cancel safe (borrows only
/// the stream, so a `select!` may use the rest of [`Sched`] beside it).
pub(super) async fn next_answer(link: &mut Option<Box<dyn Session>>) -> Answer {
    match link.as_mut() {
        Some(l) => std::future::poll_fn(|cx| l.poll_answer(cx)).await,
        None => std::future::pending().await,
    }
}

/// The content failed its digest with a parent's pieces (reported to the scheduler).
#[derive(Debug, thiserror::Error)]
#[error("its pieces failed the content digest")]
pub(super) struct LiedAboutContent;

/// The task's conversation with its scheduler, and where its pieces came from.
pub(super) struct Sched {
    pub(super) link: Option<Box<dyn Session>>,
    /// Address of the scheduler of this task.
    pub(super) scheduler: Option<String>,
    /// Pieces may come from the source once parents cannot help: no scheduler, it said so, or
    /// it is gone.
    pub(super) source_ok: bool,
    /// Fail instead of going to the source when the scheduler is gone.
    no_auto_source: bool,
    /// A reschedule asked at this time is not answered yet.
    pub(super) asked: Option<tokio::time::Instant>,
    pub(super) timeout: Duration,
    told_started: bool,
    pub(super) told_source: bool,
    /// Pieces stored per origin ("source" or a parent's address).
    fed: BTreeMap<String, u32>,
    /// Counts the pieces and their bytes by source.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Sched {
    pub(super) fn new(
        sessions: Option<&dyn Sessions>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            link: None,
            scheduler: None,
            source_ok: sessions.is_none(),
            no_auto_source: sessions.is_some_and(|s| s.disable_auto_back_source()),
            asked: None,
            timeout: sessions
                .map(|s| s.schedule_timeout())
                .unwrap_or(Duration::from_secs(30)),
            told_started: false,
            told_source: false,
            fed: BTreeMap::new(),
            metrics,
        }
    }

    /// Register with the scheduler and take its first answer; returns a layout hint.
    pub(super) async fn register(
        &mut self,
        sessions: &dyn Sessions,
        task: &TaskId,
        peer_id: &str,
        req: &TaskRequest,
        parents: &mut Parents,
    ) -> Result<Option<(u64, Option<u64>)>, TaskError> {
        match sessions.register(task, peer_id, req).await {
            Ok(mut link) => {
                self.scheduler = Some(link.scheduler().to_string());
                let answer = tokio::time::timeout(
                    self.timeout,
                    std::future::poll_fn(|cx| link.poll_answer(cx)),
                )
                .await
                .unwrap_or_else(|_| {
                    Answer::Lost(format!(
                        "{}: no answer within {:?} (scheduler.scheduleTimeout)",
                        link.scheduler(),
                        self.timeout
                    ))
                });
                self.link = Some(link);
                self.apply(answer, parents, task)
            }
            Err(e) => self
                .lost(task, &dragonfly_common::error::chain(&*e))
                .map(|()| None),
        }
    }

    /// The scheduler is gone: go on with the parents we have, then the source.
    pub(super) fn lost(&mut self, id: &TaskId, why: &str) -> Result<(), TaskError> {
        self.link = None;
        self.asked = None;
        if self.no_auto_source {
            return Err(TaskError::NoScheduler {
                why: why.to_string(),
            });
        }
        tracing::warn!(task = %id, error = %why, "scheduler unavailable; going on with known parents, then the source");
        self.source_ok = true;
        Ok(())
    }

    /// Act on an answer; returns a layout hint from the scheduler, or `Some(0-length)` for an
    /// empty task.
    pub(super) fn apply(
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
                    if let Some(l) = self.link.as_mut() {
                        l.started();
                    }
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
    pub(super) fn reschedule(&mut self, parents: &Parents, id: &TaskId) -> Result<(), TaskError> {
        let Some(link) = self.link.as_mut() else {
            return self.lost(id, "no scheduler stream");
        };
        let blocklist = parents.bad_ids();
        tracing::info!(task = %id, blocklist = ?blocklist, "asking the scheduler for new parents");
        link.reschedule(blocklist);
        self.asked = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Fewer parents than wanted: ask for more, unless a reschedule is pending or the task
    /// went to the source.
    pub(super) fn more_parents(&mut self) {
        if self.asked.is_none()
            && !self.told_source
            && let Some(l) = self.link.as_mut()
        {
            l.more_parents();
        }
    }

    pub(super) fn piece_failed(
        &mut self,
        number: u32,
        parent_id: &str,
        why: &(dyn Error + 'static),
    ) {
        if let Some(l) = self.link.as_mut() {
            l.piece_failed(number, parent_id, why);
        }
    }

    pub(super) fn piece_stored(
        &mut self,
        record: &PieceRecord,
        from: Option<&Parent>,
        cost: Duration,
    ) {
        let source = match from {
            Some(_) => crate::metrics::Source::Parent,
            None => crate::metrics::Source::Origin,
        };
        self.metrics.piece_stored(source, record.length, cost);
        match from {
            Some(p) => *self.fed.entry(p.addr.to_string()).or_default() += 1,
            None => match self.fed.get_mut("source") {
                Some(n) => *n += 1,
                None => {
                    self.fed.insert("source".to_string(), 1);
                }
            },
        }
        if let Some(l) = self.link.as_mut() {
            l.piece_stored(record, from, cost);
        }
    }

    /// Count a failed piece fetch from `from`.
    pub(super) fn fetch_failed(
        &self,
        from: crate::metrics::Source,
        why: crate::metrics::PieceFailure,
    ) {
        self.metrics.piece_failed(from, why);
    }

    pub(super) fn source_started(&mut self) {
        if !self.told_source {
            self.told_source = true;
            if let Some(l) = self.link.as_mut() {
                l.source_started();
            }
        }
    }

    fn used_source(&self) -> bool {
        self.fed.contains_key("source")
    }

    /// Pieces stored from `origin` ("source" or a parent's address).
    #[cfg(test)]
    pub(super) fn fed_from(&self, origin: &str) -> u32 {
        self.fed.get(origin).copied().unwrap_or(0)
    }

    /// Report the outcome and close the stream.
    pub(super) fn finish(
        &mut self,
        layout: Option<dragonfly_common::piece::PieceLayout>,
        result: Result<(), &TaskError>,
    ) {
        let Some(link) = self.link.take() else {
            return;
        };
        let (content_length, piece_count) =
            layout.map_or((0, 0), |l| (l.content_length(), l.piece_count()));
        link.finish(Outcome {
            result,
            content_length,
            piece_count,
            used_source: self.used_source(),
        });
    }

    /// "source=3,127.0.0.2:65002=61": pieces stored per origin.
    pub(super) fn fed_summary(&self) -> String {
        let parts: Vec<String> = self.fed.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }
}
