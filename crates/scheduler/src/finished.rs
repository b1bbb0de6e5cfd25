//! `AnnounceFinishedTasks`: a host tells this scheduler which tasks it holds whole, so a restarted
//! scheduler (or one that tasks moved to on the ring) offers it as a parent instead of sending
//! peers to the origin. See docs/scheduler.md ("Finished copies across restarts").

use crate::resource::finished::held_peer_id;
use crate::resource::{FinishedCopy, Recorded};
use crate::state::SchedulerState;
use dragonfly_proto::scheduler::v1 as sch;
use tokio::time::Instant;
use tonic::Status;

/// Records the host as a finished peer of every task of the batch that still has room.
pub fn announce(
    state: &SchedulerState,
    req: sch::AnnounceFinishedTasksRequest,
) -> Result<sch::AnnounceFinishedTasksResponse, Status> {
    if req.tasks.len() > sch::MAX_FINISHED_TASKS_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "AnnounceFinishedTasksRequest of host {} carries {} tasks; at most {} per request",
            req.host_id,
            req.tasks.len(),
            sch::MAX_FINISHED_TASKS_PER_REQUEST
        )));
    }
    let res = &state.resources;
    if !res.hosts.contains_key(&req.host_id) {
        return Err(Status::failed_precondition(format!(
            "host {:?} is not announced: AnnounceHost first",
            req.host_id
        )));
    }
    let limit = state.config.scheduler.held_peer_limit as usize;
    let peer_id = held_peer_id(&req.host_id);
    let now = Instant::now();
    let (mut recorded, mut skipped) = (0u32, 0u32);
    let mut unknown_host = false;
    for t in &req.tasks {
        let copy = FinishedCopy {
            content_length: t.content_length,
            piece_length: t.piece_length,
            piece_count: t.piece_count,
        };
        let outcome = if t.task_id.is_empty() {
            Recorded::Mismatch
        } else {
            res.record_finished(&t.task_id, &req.host_id, &peer_id, copy, limit, now)
        };
        unknown_host |= outcome == Recorded::UnknownHost;
        if outcome.recorded() {
            recorded += 1;
        } else {
            skipped += 1;
        }
    }
    if unknown_host {
        // The host left (or expired) while the batch was handled: its copies must not linger.
        res.leave_host(&req.host_id);
        return Err(Status::failed_precondition(format!(
            "host {:?} left while its finished tasks were recorded",
            req.host_id
        )));
    }
    tracing::info!(host = %req.host_id, recorded, skipped, "finished tasks announced");
    Ok(sch::AnnounceFinishedTasksResponse { recorded, skipped })
}
