//! What the scheduler answers a peer: parents, back-to-source, or more parents later.

use super::*;

/// [`schedule`], counted in the metrics as an answer to `to`.
pub(super) async fn timed_schedule(
    state: &SchedulerState,
    c: &StreamCtx,
    to: AnswerTo,
) -> Result<AnnouncePeerResponse, Status> {
    let t0 = Instant::now();
    let reply = schedule(state, c).await;
    let kind = reply.as_ref().map_or(AnswerKind::Failure, answer_kind);
    state.metrics.answered(to, kind, t0.elapsed());
    reply
}

/// The kind of an answer, for the metrics.
pub(super) fn answer_kind(reply: &AnnouncePeerResponse) -> AnswerKind {
    use sch::announce_peer_response::Response as R;
    match &reply.response {
        Some(R::NormalTaskResponse(_)) => AnswerKind::Parents,
        Some(R::NeedBackToSourceResponse(_)) => AnswerKind::BackToSource,
        Some(R::EmptyTaskResponse(_)) => AnswerKind::Empty,
        None => AnswerKind::Failure,
    }
}

/// Finds parents for the peer, waiting `retryInterval` between attempts up to `retryLimit` times;
/// answers back-to-source when allowed and nothing better exists.
pub(super) async fn schedule(
    state: &SchedulerState,
    c: &StreamCtx,
) -> Result<AnnouncePeerResponse, Status> {
    let cfg = &state.config.scheduler;
    for attempt in 0..=cfg.retry_limit {
        match decide(state, c, attempt == cfg.retry_limit)? {
            Decision::Answer(reply) => return Ok(reply),
            Decision::Wait => {
                tracing::debug!(attempt, "no parent yet, waiting");
                tokio::time::sleep(cfg.retry_interval.get()).await;
            }
        }
    }
    if c.download.disable_back_to_source {
        return Err(Status::failed_precondition(format!(
            "no parent for task {} after {} attempts and back-to-source is disabled",
            c.task_id, cfg.retry_limit
        )));
    }
    mark_back_to_source(state, c);
    Ok(back_to_source(format!(
        "no parent after {} attempts",
        cfg.retry_limit
    )))
}

/// One scheduling attempt under the task's lock.
pub(super) fn decide(
    state: &SchedulerState,
    c: &StreamCtx,
    last_attempt: bool,
) -> Result<Decision, Status> {
    let cfg = &state.config.scheduler;
    let res = &state.resources;
    let mut guard = res
        .tasks
        .get_mut(&c.task_id)
        .ok_or_else(|| Status::not_found(format!("task {} is gone", c.task_id)))?;
    let task = &mut *guard;
    let Some(peer) = task.peers.get_mut(&c.peer_id) else {
        return Err(Status::not_found(format!(
            "peer {} of task {} is gone",
            c.peer_id, c.task_id
        )));
    };
    peer.updated_at = Instant::now();
    let may_back_to_source = !c.download.disable_back_to_source;

    if may_back_to_source
        && (c.download.need_back_to_source
            || peer.reschedule_count >= cfg.retry_back_to_source_limit.max(1))
    {
        peer.need_back_to_source = true;
        let why = if c.download.need_back_to_source {
            "the download asked for back-to-source".to_owned()
        } else {
            format!("{} reschedules", peer.reschedule_count)
        };
        return Ok(Decision::Answer(back_to_source(why)));
    }

    if task.content_length == Some(0) && task.state == TaskState::Succeeded {
        let _ = peer.transition(PeerState::ReceivedEmpty);
        return Ok(Decision::Answer(AnnouncePeerResponse::new(
            sch::EmptyTaskResponse {},
        )));
    }

    let limits = Limits {
        filter: cfg.filter_parent_limit as usize,
        candidates: cfg.candidate_parent_limit as usize,
        children: cfg.child_limit as usize,
        over_limit_ok: last_attempt,
    };
    let candidates = evaluator::choose_parents(
        task,
        &c.peer_id,
        &res.hosts,
        &state.config.evaluator.weights,
        limits,
    );
    if !candidates.is_empty()
        && may_back_to_source
        && !task.has_complete_source()
        && task.back_to_source_count() < cfg.back_to_source_count as usize
    {
        // Peers hold pieces, but nobody fetches the rest (the peer that did is gone): without
        // this, the swarm would pass its partial pieces around and stall.
        mark(task, &c.peer_id);
        return Ok(Decision::Answer(back_to_source(
            "no peer of the task is fetching it from the source",
        )));
    }
    if !candidates.is_empty() {
        task.dag.remove_parents_of(&c.peer_id);
        let parents = link_parents(task, &res.hosts, &c.peer_id, &candidates);
        if !parents.is_empty() {
            if let Some(peer) = task.peers.get_mut(&c.peer_id) {
                let _ = peer.transition(PeerState::ReceivedNormal);
            }
            return Ok(Decision::Answer(normal_response(task, parents)));
        }
    }

    if task.has_available_peer(|h| res.is_seed_host(h)) || !may_back_to_source {
        // Someone has pieces but is busy or excluded: wait for them.
        return Ok(Decision::Wait);
    }
    if res.is_seed_host(&c.host_id) {
        mark(task, &c.peer_id);
        return Ok(Decision::Answer(back_to_source(
            "seed peer fetches the task first",
        )));
    }
    if state.config.seed_peer.enable && !task.seed_triggered {
        let seeds: Vec<dragonfly_proto::Host> = res
            .hosts
            .iter()
            .filter(|h| h.is_seed())
            .map(|h| h.info.clone())
            .collect();
        let sent = pick_seed(&c.task_id, &seeds).map(|seed| {
            let sent = state
                .seed_trigger
                .trigger(seed, &c.task_id, &c.download, res);
            state.metrics.seed_triggered(sent);
            (seed, sent)
        });
        if let Some((seed, true)) = sent {
            tracing::info!(seed = %seed.id, "seed peer asked to fetch the task");
            task.seed_triggered = true;
            return Ok(Decision::Wait);
        }
    }
    if task.seed_triggered {
        return Ok(Decision::Wait);
    }
    if task.back_to_source_count() < cfg.back_to_source_count as usize {
        mark(task, &c.peer_id);
        return Ok(Decision::Answer(back_to_source("no peer has the task yet")));
    }
    Ok(Decision::Wait)
}

/// Adds the edges candidate -> child and describes each linked parent for the child.
pub(super) fn link_parents(
    task: &mut Task,
    hosts: &dashmap::DashMap<String, crate::resource::Host>,
    child_id: &str,
    candidates: &[evaluator::Candidate],
) -> Vec<sch::CandidateParent> {
    let mut parents = Vec::with_capacity(candidates.len());
    for cand in candidates {
        if task.dag.add_edge(&cand.peer_id, child_id).is_err() {
            continue; // the evaluator checked; a refused edge is not offered
        }
        let Some(p) = task.peers.get(&cand.peer_id) else {
            continue;
        };
        let Some(h) = hosts.get(&p.host_id) else {
            continue;
        };
        let mut cp = sch::CandidateParent {
            id: p.id.clone(),
            host: Some(h.info.clone()),
            finished_piece_count: p.finished_count(),
            ..Default::default()
        };
        cp.set_state(p.state().to_proto());
        parents.push(cp);
    }
    parents
}

pub(super) fn normal_response(
    task: &Task,
    parents: Vec<sch::CandidateParent>,
) -> AnnouncePeerResponse {
    AnnouncePeerResponse::new(sch::NormalTaskResponse {
        candidate_parents: parents,
        content_length: task.content_length,
        piece_length: task.piece_length,
        piece_count: task.piece_count,
    })
}

/// `MoreParentsRequest`: parents the peer does not have yet, keeping its current ones; `None`
/// when there are none (no answer is sent, nothing is counted against the peer).
pub(super) fn more_parents(state: &SchedulerState, c: &StreamCtx) -> Option<AnnouncePeerResponse> {
    let cfg = &state.config.scheduler;
    let res = &state.resources;
    let mut guard = res.tasks.get_mut(&c.task_id)?;
    let task = &mut *guard;
    let peer = task.peers.get_mut(&c.peer_id)?;
    peer.updated_at = Instant::now();
    if peer.state().is_terminal() {
        return None;
    }
    let limits = Limits {
        filter: cfg.filter_parent_limit as usize,
        candidates: cfg.candidate_parent_limit as usize,
        children: cfg.child_limit as usize,
        over_limit_ok: false,
    };
    let have = task.dag.parents_of(&c.peer_id).count();
    let wanted = limits.candidates.saturating_sub(have);
    if wanted == 0 {
        return None;
    }
    let mut fresh: Vec<evaluator::Candidate> = evaluator::choose_parents(
        task,
        &c.peer_id,
        &res.hosts,
        &state.config.evaluator.weights,
        Limits {
            candidates: limits.candidates + have,
            ..limits
        },
    )
    .into_iter()
    .filter(|cand| !task.dag.has_edge(&cand.peer_id, &c.peer_id))
    .collect();
    fresh.truncate(wanted);
    let parents = link_parents(task, &res.hosts, &c.peer_id, &fresh);
    (!parents.is_empty()).then(|| normal_response(task, parents))
}

pub(super) fn mark(task: &mut Task, peer_id: &str) {
    if let Some(p) = task.peers.get_mut(peer_id) {
        p.need_back_to_source = true;
    }
}

pub(super) fn mark_back_to_source(state: &SchedulerState, c: &StreamCtx) {
    update_peer(state, c, mark);
}

/// Built under the task's lock: the caller logs the answer (see [`Answer`]) once it is released.
pub(super) fn back_to_source(why: impl Into<String>) -> AnnouncePeerResponse {
    AnnouncePeerResponse::new(sch::NeedBackToSourceResponse {
        description: Some(why.into()),
    })
}

/// A scheduling answer as logged: `parents [a, b]`, `back to source (why)`, `empty task`.
pub(super) struct Answer<'a>(pub(super) &'a AnnouncePeerResponse);

impl std::fmt::Display for Answer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use sch::announce_peer_response::Response as R;
        match &self.0.response {
            Some(R::NormalTaskResponse(n)) => {
                f.write_str("parents [")?;
                for (i, p) in n.candidate_parents.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&p.id)?;
                }
                f.write_str("]")
            }
            Some(R::NeedBackToSourceResponse(b)) => {
                write!(
                    f,
                    "back to source ({})",
                    b.description.as_deref().unwrap_or("")
                )
            }
            Some(R::EmptyTaskResponse(_)) => f.write_str("empty task"),
            None => f.write_str("nothing"),
        }
    }
}
