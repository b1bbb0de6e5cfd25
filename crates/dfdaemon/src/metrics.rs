//! The daemon's Prometheus metrics (`dragonfly_dfdaemon_*`, served on `metrics.tcpListen`; see
//! `docs/metrics.md`). One [`Metrics`] per daemon, shared by the task engine, the upload server,
//! the proxy and the GC through the engine's options.
//!
//! Cheap on the hot path: every series a label can name is created up front and kept as a
//! handle (an atomic), so counting a piece is one atomic add and takes no lock and allocates
//! nothing; pieces are counted as they are committed, not per chunk. Labels take a few fixed
//! values only (no host, peer, task or URL). Values another part already keeps (the upload
//! server's [`UploadStats`], the disk) are read at scrape time by collectors instead of being
//! counted twice.

use crate::stats::UploadStats;
use dragonfly_common::label_values;
use dragonfly_common::metrics::{ByLabel, ByLabels, Labels, registered};
pub use dragonfly_common::metrics::{ConstValue, LabelValues, encode_const};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prefix of every metric of the daemon.
pub const PREFIX: &str = "dragonfly_dfdaemon";

label_values!(
    /// Where downloaded bytes came from.
    Source, "source", {
        /// Another daemon's upload server.
        Parent => "parent",
        /// The origin (back-to-source).
        Origin => "origin",
        /// A task finished earlier, served again from this node's storage.
        Local => "local",
    }
);

label_values!(
    /// Why a task failed (the engine's `TaskErrorKind`).
    TaskFailure, "reason", {
        /// The origin failed or refused.
        Source => "source",
        /// The content cannot be split into pieces.
        Unsplittable => "unsplittable",
        /// No scheduler, and going to the origin is not allowed.
        NoScheduler => "no_scheduler",
        /// Local storage failed.
        Storage => "storage",
        /// No room on disk.
        NoRoom => "no_room",
        /// The origin's content changed during the download.
        SourceChanged => "source_changed",
        /// The content does not match its digest.
        DigestMismatch => "digest_mismatch",
        /// The daemon shut down.
        Shutdown => "shutdown",
    }
);

label_values!(
    /// Why a piece could not be fetched from where it was asked.
    PieceFailure, "reason", {
        /// The parent could not be reached or answered with an error status.
        Parent => "parent_error",
        /// The origin could not be reached or answered with an error status.
        Origin => "origin_error",
        /// The body broke off.
        Transfer => "transfer",
        /// The body ended before the piece did.
        ShortBody => "short_body",
        /// The body went on past the piece.
        LongBody => "long_body",
        /// The origin sent another range than asked.
        WrongRange => "wrong_range",
        /// The bytes are not the piece (length or crc32).
        CrcMismatch => "crc_mismatch",
        /// The parents made no progress for `download.pieceTimeout`.
        Timeout => "timeout",
        /// Pieces passed their crc32 but the content failed its digest (a lying parent).
        DigestMismatch => "digest_mismatch",
    }
);

label_values!(
    /// How the proxy handled a request.
    ProxyRoute, "route", {
        /// A proxied request served as a P2P task.
        P2p => "p2p",
        /// A proxied request passed through to the upstream.
        Direct => "direct",
        /// A CONNECT.
        Tunnel => "tunnel",
        /// A registry mirror request (`/v2/...` on the proxy port).
        Mirror => "mirror",
    }
);

label_values!(
    /// What came of a proxy request.
    ProxyResult, "result", {
        /// Served from this node's storage.
        Hit => "hit",
        /// Fetched (P2P or from the upstream) or passed on.
        Miss => "miss",
        /// Answered with an error status (4xx or 5xx).
        Error => "error",
    }
);

label_values!(
    /// What started a GC pass.
    GcTrigger, "trigger", {
        /// The `gcInterval` loop.
        Interval => "interval",
        /// Making room for incoming bytes.
        Admission => "admission",
    }
);

label_values!(
    /// A task's size, in a few classes (Dragonfly's task size levels, coarser).
    SizeLevel, "size_level", {
        /// 0 bytes.
        Empty => "empty",
        /// Under 1 MiB.
        Lt1Mib => "lt_1mib",
        /// Under 16 MiB.
        Lt16Mib => "lt_16mib",
        /// Under 128 MiB.
        Lt128Mib => "lt_128mib",
        /// Under 1 GiB.
        Lt1Gib => "lt_1gib",
        /// Under 8 GiB.
        Lt8Gib => "lt_8gib",
        /// 8 GiB or more.
        Ge8Gib => "ge_8gib",
    }
);

impl SizeLevel {
    /// The class of a task of `len` bytes.
    pub fn of(len: u64) -> Self {
        const MIB: u64 = 1 << 20;
        match len {
            0 => SizeLevel::Empty,
            l if l < MIB => SizeLevel::Lt1Mib,
            l if l < 16 * MIB => SizeLevel::Lt16Mib,
            l if l < 128 * MIB => SizeLevel::Lt128Mib,
            l if l < 1024 * MIB => SizeLevel::Lt1Gib,
            l if l < 8 * 1024 * MIB => SizeLevel::Lt8Gib,
            _ => SizeLevel::Ge8Gib,
        }
    }
}

/// Task durations: 50 ms to ~14 min, doubling.
fn task_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.05, 2.0, 15)
}

/// Piece durations: 2 ms to ~33 s, doubling.
fn piece_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.002, 2.0, 15)
}

/// The daemon's metrics. `Default` is a fresh registry with every metric at zero.
pub struct Metrics {
    registry: Mutex<Registry>,
    task_started: Counter,
    task_running: Gauge,
    task_local: Counter,
    task_finished: ByLabel<SizeLevel, Counter>,
    task_failed: ByLabel<TaskFailure, Counter>,
    task_duration: ByLabel<SizeLevel, Histogram>,
    bytes_in: ByLabel<Source, Counter>,
    pieces: ByLabel<Source, Counter>,
    piece_duration: ByLabel<Source, Histogram>,
    piece_failed: ByLabels<Source, PieceFailure, Counter>,
    proxy: ByLabels<ProxyRoute, ProxyResult, Counter>,
    gc_runs: ByLabel<GcTrigger, Counter>,
    gc_freed: Counter,
    gc_evicted: Counter,
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

fn counters() -> Family<Labels, Counter> {
    Family::default()
}

impl Metrics {
    /// Every metric at zero, registered, with `build_info` set.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        dragonfly_common::metrics::register_build_info(
            &mut r,
            "The daemon's version and the git commit it was built from (always 1)",
            env!("CARGO_PKG_VERSION"),
        );

        let task_started = registered(
            &mut r,
            "download_task",
            "Tasks this daemon started downloading (not counting those served from storage)",
            Counter::default(),
        );
        let task_running = registered(
            &mut r,
            "download_task_running",
            "Tasks being downloaded right now",
            Gauge::default(),
        );
        let task_local = registered(
            &mut r,
            "download_task_local",
            "Requests for a task already finished here, served from local storage",
            Counter::default(),
        );
        let finished = registered(
            &mut r,
            "download_task_finished",
            "Tasks downloaded completely, by size level",
            counters(),
        );
        let failed = registered(
            &mut r,
            "download_task_failure",
            "Tasks that failed, by reason",
            counters(),
        );
        let task_duration = registered(
            &mut r,
            "download_task_duration_seconds",
            "Time from start to end of the tasks that finished, by size level",
            Family::<Labels, Histogram, _>::new_with_constructor(
                (|| Histogram::new(task_buckets())) as fn() -> Histogram,
            ),
        );
        let bytes_in = registered(
            &mut r,
            "download_bytes",
            "Piece bytes stored from parents and the origin, and bytes of finished tasks served again from local storage",
            counters(),
        );
        let pieces = registered(
            &mut r,
            "download_piece",
            "Pieces stored, by where they came from",
            counters(),
        );
        let piece_duration = registered(
            &mut r,
            "download_piece_duration_seconds",
            "Time to fetch and store one piece, by where it came from",
            Family::<Labels, Histogram, _>::new_with_constructor(
                (|| Histogram::new(piece_buckets())) as fn() -> Histogram,
            ),
        );
        let piece_failed = registered(
            &mut r,
            "download_piece_failure",
            "Piece fetches that failed, by where they were asked and why",
            counters(),
        );
        let proxy = registered(
            &mut r,
            "proxy_request",
            "Requests the proxy and registry mirror answered, by route and result",
            counters(),
        );
        let gc_runs = registered(
            &mut r,
            "gc_runs",
            "Storage GC passes, by trigger",
            counters(),
        );
        let gc_freed = registered(
            &mut r,
            "gc_freed_bytes",
            "Bytes freed by evicting tasks",
            Counter::default(),
        );
        let gc_evicted = registered(
            &mut r,
            "gc_evicted_tasks",
            "Tasks evicted by the GC",
            Counter::default(),
        );
        Metrics {
            task_finished: ByLabel::new(&finished),
            task_failed: ByLabel::new(&failed),
            task_duration: ByLabel::new(&task_duration),
            bytes_in: ByLabel::new(&bytes_in),
            pieces: ByLabel::new(&pieces),
            piece_duration: ByLabel::new(&piece_duration),
            piece_failed: ByLabels::new(&piece_failed),
            proxy: ByLabels::new(&proxy),
            gc_runs: ByLabel::new(&gc_runs),
            registry: Mutex::new(r),
            task_started,
            task_running,
            task_local,
            gc_freed,
            gc_evicted,
        }
    }

    /// Add a collector read at every scrape (e.g. the disk's usage), under the daemon's prefix.
    pub fn register_collector(&self, c: impl Collector) {
        if let Ok(mut r) = self.registry.lock() {
            r.register_collector(Box::new(c));
        }
    }

    /// Export the upload server's counters (kept by the upload server itself).
    pub fn register_upload_stats(&self, stats: Arc<UploadStats>) {
        self.register_collector(UploadCollector(stats));
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        dragonfly_common::metrics::render(&self.registry)
    }

    /// A download started.
    pub fn task_started(&self) {
        self.task_started.inc();
        self.task_running.inc();
    }

    /// A download finished: `len` bytes in `cost`.
    pub fn task_finished(&self, len: u64, cost: Duration) {
        self.task_running.dec();
        let level = SizeLevel::of(len);
        self.task_finished.get(level).inc();
        self.task_duration.get(level).observe(cost.as_secs_f64());
    }

    /// A download failed.
    pub fn task_failed(&self, why: TaskFailure) {
        self.task_running.dec();
        self.task_failed.get(why).inc();
    }

    /// A finished task of `len` bytes was served from storage.
    pub fn task_local(&self, len: u64) {
        self.task_local.inc();
        self.bytes_in.get(Source::Local).inc_by(len);
    }

    /// A piece of `len` bytes was stored, fetched from `from` in `cost`.
    pub fn piece_stored(&self, from: Source, len: u64, cost: Duration) {
        self.bytes_in.get(from).inc_by(len);
        self.pieces.get(from).inc();
        self.piece_duration.get(from).observe(cost.as_secs_f64());
    }

    /// A piece fetch from `from` failed.
    pub fn piece_failed(&self, from: Source, why: PieceFailure) {
        self.piece_failed.get(from, why).inc();
    }

    /// The proxy answered a request.
    pub fn proxy_request(&self, route: ProxyRoute, result: ProxyResult) {
        self.proxy.get(route, result).inc();
    }

    /// A GC pass ran and evicted `evicted` tasks, freeing `bytes`.
    pub fn gc_ran(&self, trigger: GcTrigger, evicted: usize, bytes: u64) {
        self.gc_runs.get(trigger).inc();
        self.gc_evicted.inc_by(evicted as u64);
        self.gc_freed.inc_by(bytes);
    }
}

/// The upload server's [`UploadStats`] at scrape time.
#[derive(Debug)]
struct UploadCollector(Arc<UploadStats>);

impl Collector for UploadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        encode_const(
            &mut encoder,
            "upload_piece",
            "Pieces sent to other daemons completely",
            ConstValue::Counter(get(&s.pieces)),
        )?;
        encode_const(
            &mut encoder,
            "upload_piece_failure",
            "Piece sends to other daemons that broke off",
            ConstValue::Counter(get(&s.failed)),
        )?;
        encode_const(
            &mut encoder,
            "upload_bytes",
            "Piece bytes sent to other daemons",
            ConstValue::Counter(get(&s.bytes)),
        )?;
        encode_const(
            &mut encoder,
            "upload_piece_in_flight",
            "Pieces being sent right now",
            ConstValue::Gauge(i64::from(s.in_flight.load(Ordering::Relaxed))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_levels_cover_every_length_with_few_values() {
        const MIB: u64 = 1 << 20;
        let cases = [
            (0, "empty"),
            (1, "lt_1mib"),
            (MIB - 1, "lt_1mib"),
            (MIB, "lt_16mib"),
            (16 * MIB, "lt_128mib"),
            (128 * MIB, "lt_1gib"),
            (1024 * MIB, "lt_8gib"),
            (8 * 1024 * MIB, "ge_8gib"),
            (u64::MAX, "ge_8gib"),
        ];
        for (len, want) in cases {
            assert_eq!(SizeLevel::of(len).as_str(), want, "{len}");
        }
        // Whatever the lengths, the label takes at most these values.
        let seen: std::collections::BTreeSet<&str> = (0..64)
            .map(|shift| SizeLevel::of(1u64 << shift).as_str())
            .chain(std::iter::once(SizeLevel::of(0).as_str()))
            .collect();
        assert_eq!(seen.len(), SizeLevel::ALL.len());
    }

    #[test]
    fn label_handles_are_created_up_front_and_counted_in_place() {
        let m = Metrics::new();
        let before = m.render();
        // Every series exists at zero before anything happened (rate() works from the start).
        assert!(
            before.contains("dragonfly_dfdaemon_download_piece_failure_total{source=\"parent\",reason=\"crc_mismatch\"} 0"),
            "{before}"
        );
        m.piece_failed(Source::Parent, PieceFailure::CrcMismatch);
        m.piece_stored(Source::Origin, 4096, Duration::from_millis(3));
        m.task_started();
        m.task_failed(TaskFailure::Source);
        let after = m.render();
        for line in [
            "dragonfly_dfdaemon_download_piece_failure_total{source=\"parent\",reason=\"crc_mismatch\"} 1",
            "dragonfly_dfdaemon_download_bytes_total{source=\"origin\"} 4096",
            "dragonfly_dfdaemon_download_task_total 1",
            "dragonfly_dfdaemon_download_task_failure_total{reason=\"source\"} 1",
            "dragonfly_dfdaemon_download_task_running 0",
        ] {
            assert!(after.lines().any(|l| l == line), "no {line:?} in\n{after}");
        }
        // No series appears that the label sets did not create up front.
        let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(series(&before), series(&after));
    }

    #[test]
    fn upload_stats_are_read_at_scrape_time() {
        let m = Metrics::new();
        let stats = Arc::new(UploadStats::default());
        m.register_upload_stats(stats.clone());
        stats.bytes.fetch_add(12345, Ordering::Relaxed);
        stats.in_flight.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.lines()
                .any(|l| l == "dragonfly_dfdaemon_upload_bytes_total 12345"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "dragonfly_dfdaemon_upload_piece_in_flight 2"),
            "{text}"
        );
    }
}
