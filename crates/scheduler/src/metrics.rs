//! The scheduler's Prometheus metrics (`dragonfly_scheduler_*`, served on `metrics.addr`; see
//! `docs/metrics.md`). One [`Metrics`] per scheduler state. Every labelled series is created up
//! front (labels take a few fixed values; no host, peer or task), so counting is one atomic add.
//! The hosts, tasks and peers gauges are read from the resources at scrape time
//! (`crate::state` registers that collector).

use dragonfly_common::label_values;
use dragonfly_common::metrics::{ByLabel, ByLabels, Labels, registered};
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

/// Prefix of every metric of the scheduler.
pub const PREFIX: &str = "dragonfly_scheduler";

label_values!(
    /// What the scheduler answered a peer.
    AnswerKind, "kind", {
        /// Candidate parents.
        Parents => "parents",
        /// Fetch it from the origin.
        BackToSource => "back_to_source",
        /// The task is empty.
        Empty => "empty",
        /// No answer could be given (the peer's stream gets an error status).
        Failure => "failure",
    }
);

label_values!(
    /// What the answer was to.
    AnswerTo, "trigger", {
        /// A peer registering.
        Register => "register",
        /// A peer asking for new parents (its parents failed).
        Reschedule => "reschedule",
        /// A peer asking for more parents.
        MoreParents => "more_parents",
    }
);

label_values!(
    /// Where a peer says a piece came from.
    PieceSource, "source", {
        /// Another peer.
        Parent => "parent",
        /// The origin.
        Origin => "origin",
    }
);

/// Schedule latency: 1 ms to ~33 s, doubling (an answer may wait `retryInterval` steps).
fn schedule_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// The scheduler's metrics. `Default` is a fresh registry with every metric at zero.
pub struct Metrics {
    registry: Mutex<Registry>,
    announce_host: Counter,
    register_peer: Counter,
    register_peer_failed: Counter,
    answers: ByLabels<AnswerTo, AnswerKind, Counter>,
    schedule_duration: ByLabel<AnswerTo, Histogram>,
    seed_trigger: Counter,
    seed_trigger_failed: Counter,
    peer_finished: Counter,
    peer_failed: Counter,
    pieces: ByLabel<PieceSource, Counter>,
    piece_failed: ByLabel<PieceSource, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered, with `build_info` set.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        dragonfly_common::metrics::register_build_info(
            &mut r,
            "The scheduler's version and the git commit it was built from (always 1)",
            env!("CARGO_PKG_VERSION"),
        );
        let mut counter =
            |name: &str, help: &str| registered(&mut r, name, help, Counter::default());
        let announce_host = counter("announce_host", "Host announcements received");
        let register_peer = counter("register_peer", "Peers that registered for a task");
        let register_peer_failed = counter(
            "register_peer_failure",
            "Registrations refused (unknown host, bad request)",
        );
        let seed_trigger = counter(
            "seed_trigger",
            "Times a seed peer was asked to fetch a task nobody had",
        );
        let seed_trigger_failed = counter(
            "seed_trigger_failure",
            "Seed peer triggers that could not be sent",
        );
        let peer_finished = counter(
            "download_peer_finished",
            "Peers that reported their download finished",
        );
        let peer_failed = counter(
            "download_peer_failure",
            "Peers that reported their download failed",
        );
        let answers = registered(
            &mut r,
            "schedule_answer",
            "Answers to peers, by what they asked (trigger) and what they got (kind)",
            Family::<Labels, Counter>::default(),
        );
        let duration = registered(
            &mut r,
            "schedule_duration_seconds",
            "Time from a peer's request to the scheduler's answer, waits for parents included",
            Family::<Labels, Histogram, _>::new_with_constructor(
                (|| Histogram::new(schedule_buckets())) as fn() -> Histogram,
            ),
        );
        let pieces = registered(
            &mut r,
            "download_piece_finished",
            "Pieces peers reported stored, by where they came from",
            Family::<Labels, Counter>::default(),
        );
        let piece_failed = registered(
            &mut r,
            "download_piece_failure",
            "Piece failures peers reported, by where the piece was asked",
            Family::<Labels, Counter>::default(),
        );
        Metrics {
            answers: ByLabels::new(&answers),
            schedule_duration: ByLabel::new(&duration),
            pieces: ByLabel::new(&pieces),
            piece_failed: ByLabel::new(&piece_failed),
            registry: Mutex::new(r),
            announce_host,
            register_peer,
            register_peer_failed,
            seed_trigger,
            seed_trigger_failed,
            peer_finished,
            peer_failed,
        }
    }

    /// Add a collector read at every scrape, under the scheduler's prefix.
    pub fn register_collector(&self, c: impl Collector) {
        if let Ok(mut r) = self.registry.lock() {
            r.register_collector(Box::new(c));
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        dragonfly_common::metrics::render(&self.registry)
    }

    /// A host announced itself.
    pub fn host_announced(&self) {
        self.announce_host.inc();
    }

    /// A peer registered (`ok`), or its registration was refused.
    pub fn peer_registered(&self, ok: bool) {
        match ok {
            true => self.register_peer.inc(),
            false => self.register_peer_failed.inc(),
        };
    }

    /// The scheduler answered `to` with `kind` after `cost`.
    pub fn answered(&self, to: AnswerTo, kind: AnswerKind, cost: Duration) {
        self.answers.get(to, kind).inc();
        self.schedule_duration.get(to).observe(cost.as_secs_f64());
    }

    /// A seed peer was asked to fetch a task (`sent`: the request went out).
    pub fn seed_triggered(&self, sent: bool) {
        match sent {
            true => self.seed_trigger.inc(),
            false => self.seed_trigger_failed.inc(),
        };
    }

    /// A peer reported its download's end.
    pub fn peer_ended(&self, ok: bool) {
        match ok {
            true => self.peer_finished.inc(),
            false => self.peer_failed.inc(),
        };
    }

    /// A peer reported a piece stored.
    pub fn piece_finished(&self, from: PieceSource) {
        self.pieces.get(from).inc();
    }

    /// A peer reported a piece failed.
    pub fn piece_failed(&self, from: PieceSource) {
        self.piece_failed.get(from).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_series_exists_from_the_start_and_counts_in_place() {
        let m = Metrics::new();
        let before = m.render();
        let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        m.answered(
            AnswerTo::Reschedule,
            AnswerKind::BackToSource,
            Duration::from_millis(2),
        );
        m.peer_registered(true);
        let after = m.render();
        for line in [
            "dragonfly_scheduler_schedule_answer_total{trigger=\"reschedule\",kind=\"back_to_source\"} 1",
            "dragonfly_scheduler_schedule_answer_total{trigger=\"register\",kind=\"parents\"} 0",
            "dragonfly_scheduler_register_peer_total 1",
            "dragonfly_scheduler_schedule_duration_seconds_count{trigger=\"reschedule\"} 1",
        ] {
            assert!(after.lines().any(|l| l == line), "no {line:?} in\n{after}");
        }
        assert_eq!(series(&before), series(&after));
        assert!(after.contains("dragonfly_scheduler_build_info{version=\""));
    }
}
