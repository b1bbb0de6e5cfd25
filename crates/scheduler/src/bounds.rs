//! What a peer may say about a task: piece numbers and counts within the task (or, before the
//! task's size is known, within [`MAX_PIECES`]), bounded blocklists and ids. Per-peer state is
//! sized by these numbers (a piece bitmap, a blocklist), so one message with a number like
//! 4294967295 must be refused, not stored: the peer's stream is closed and the refusal logged.

use dragonfly_proto::scheduler::v1::announce_peer_request::Request as Req;

/// Most pieces a task may have: 1 TiB at 1 MiB pieces, 4 TiB at the 4 MiB minimum of the
/// automatic piece length. A piece bitmap of this many bits is 128 KiB.
pub const MAX_PIECES: u32 = 1 << 20;
/// Most parents one peer's blocklist holds; older entries beyond it are not kept.
pub const MAX_BLOCKLIST: usize = 1024;
/// Longest id (peer, parent) a peer may name.
pub const MAX_ID_LEN: usize = 512;

/// What the scheduler knows of the task a message is about.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known {
    /// Its piece count, once a peer finished it.
    pub piece_count: Option<u32>,
}

/// Why `request` is out of bounds for the task, if it is.
pub fn check(known: Known, request: &Req) -> Result<(), String> {
    let limit = known.piece_count.unwrap_or(MAX_PIECES);
    let piece = |n: u32| {
        if n >= limit {
            Err(format!(
                "piece number {n} is out of range (the task has {} pieces)",
                known
                    .piece_count
                    .map_or_else(|| format!("at most {MAX_PIECES}"), |c| c.to_string())
            ))
        } else {
            Ok(())
        }
    };
    let id = |what: &str, s: &str| {
        if s.len() > MAX_ID_LEN {
            Err(format!(
                "{what} is {} bytes long (at most {MAX_ID_LEN})",
                s.len()
            ))
        } else {
            Ok(())
        }
    };
    let finished = |content_length: u64, count: u32| {
        if count > MAX_PIECES {
            return Err(format!("piece count {count} is over {MAX_PIECES}"));
        }
        if let Some(k) = known.piece_count
            && k != count
        {
            return Err(format!("piece count {count}, the task has {k}"));
        }
        if count > 0 && content_length == 0 {
            return Err(format!("piece count {count} of an empty content"));
        }
        Ok(())
    };
    match request {
        Req::DownloadPieceFinishedRequest(r) => match &r.piece {
            Some(p) => piece(p.number).and(id("parent id", &p.parent_id)),
            None => Ok(()),
        },
        Req::DownloadPieceBackToSourceFinishedRequest(r) => match &r.piece {
            Some(p) => piece(p.number),
            None => Ok(()),
        },
        Req::DownloadPieceFailedRequest(r) => {
            piece(r.piece_number).and(id("parent id", &r.parent_id))
        }
        Req::DownloadPieceBackToSourceFailedRequest(r) => piece(r.piece_number),
        Req::DownloadPeerFinishedRequest(r) => finished(r.content_length, r.piece_count),
        Req::DownloadPeerBackToSourceFinishedRequest(r) => {
            finished(r.content_length, r.piece_count)
        }
        Req::RescheduleRequest(r) => {
            if r.candidate_parents_blocklist.len() > MAX_BLOCKLIST {
                return Err(format!(
                    "a blocklist of {} parents (at most {MAX_BLOCKLIST})",
                    r.candidate_parents_blocklist.len()
                ));
            }
            r.candidate_parents_blocklist
                .iter()
                .try_for_each(|p| id("blocklisted parent id", p))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_proto::Piece;
    use dragonfly_proto::scheduler::v1 as sch;

    fn finished_piece(n: u32) -> Req {
        Req::DownloadPieceBackToSourceFinishedRequest(
            sch::DownloadPieceBackToSourceFinishedRequest {
                piece: Some(Piece {
                    number: n,
                    ..Default::default()
                }),
            },
        )
    }

    #[test]
    fn piece_numbers_stay_within_the_task() {
        let unknown = Known::default();
        assert!(check(unknown, &finished_piece(7)).is_ok());
        assert!(check(unknown, &finished_piece(u32::MAX)).is_err());
        let known = Known {
            piece_count: Some(8),
        };
        assert!(check(known, &finished_piece(7)).is_ok());
        let e = check(known, &finished_piece(8)).unwrap_err();
        assert!(
            e.contains("piece number 8") && e.contains("8 pieces"),
            "{e}"
        );
    }

    #[test]
    fn finished_counts_must_fit_the_task() {
        let known = Known { piece_count: None };
        let done = |len, count| {
            Req::DownloadPeerFinishedRequest(sch::DownloadPeerFinishedRequest {
                content_length: len,
                piece_count: count,
            })
        };
        assert!(check(known, &done(10 << 20, 3)).is_ok());
        assert!(check(known, &done(0, 4)).is_err());
        let counted = Known {
            piece_count: Some(3),
        };
        assert!(check(counted, &done(10 << 20, 4)).is_err());
        assert!(check(Known::default(), &done(u64::MAX, u32::MAX)).is_err());
        let blocklist = Req::RescheduleRequest(sch::RescheduleRequest {
            candidate_parents_blocklist: vec!["p".into(); MAX_BLOCKLIST + 1],
            description: None,
        });
        assert!(check(known, &blocklist).is_err());
    }
}
