//! The process's limit on open files, raised at start by dfdaemon and the scheduler.

/// Raise the soft limit on open files to the hard one, logging what changed: every connection,
/// tunnel, stream and piece transfer holds descriptors, and the usual soft limit of 1,024 ran out
/// with about a thousand idle clients. The hard limit (`LimitNOFILE=` in a systemd unit) is the
/// operator's to raise.
pub fn raise_to_hard_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let below_hard = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !below_hard {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = ?limit.current,
            to = ?limit.maximum,
            "open files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            soft = ?limit.current,
            hard = ?limit.maximum,
            "cannot raise the open files limit"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        super::raise_to_hard_limit();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
    }
}
