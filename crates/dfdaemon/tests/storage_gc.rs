//! Storage GC: TTL, quota in LRU order, in-use and running tasks, the report. Time is an
//! injected clock; nothing sleeps.

use dfdaemon::storage::{EvictionReason, GcPolicy, Storage};
use dragonfly_common::task_id::TaskId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use testkit::storage::{new_task, task_id as id};

const SEC: u64 = 1000;

struct Fixture {
    _dir: tempfile::TempDir,
    s: Storage,
    now: Arc<AtomicU64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_000_000));
        let n = now.clone();
        let s = Storage::open_with_clock(dir.path(), Arc::new(move || n.load(Ordering::SeqCst)))
            .unwrap();
        Fixture { _dir: dir, s, now }
    }

    fn at(&self, ms: u64) {
        self.now.store(1_000_000 + ms, Ordering::SeqCst);
    }

    fn create(&self, n: u32, len: u64) -> TaskId {
        let t = id(n);
        self.s.create_task(new_task(&t, len, 4)).unwrap();
        // GC counts stored bytes, not claimed lengths: every piece is written.
        for n in 0..len.div_ceil(4) as u32 {
            let mut w = self.s.piece_writer(&t, n).unwrap();
            let l = w.range().length as usize;
            w.write(&vec![7u8; l]).unwrap();
            w.commit(None, None).unwrap();
        }
        t
    }
}

fn policy(ttl: Duration, quota: Option<u64>) -> GcPolicy {
    GcPolicy {
        task_ttl: ttl,
        quota_bytes: quota,
        disk_used_percent: None,
    }
}

fn ids(report: &dfdaemon::storage::GcReport) -> Vec<TaskId> {
    report.evicted.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn ttl_evicts_tasks_not_accessed_within_it() {
    let f = Fixture::new();
    f.at(0);
    let old = f.create(1, 10);
    let touched = f.create(2, 20);
    f.at(50 * SEC);
    let young = f.create(3, 30);
    f.at(90 * SEC);
    f.s.touch(&touched).unwrap();
    f.at(100 * SEC);

    let report =
        f.s.gc(&policy(Duration::from_secs(60), None), &|_| false, 0)
            .unwrap();
    assert_eq!(ids(&report), std::slice::from_ref(&old));
    assert_eq!(report.evicted[0].reason, EvictionReason::Expired);
    assert_eq!(report.evicted[0].bytes, 10);
    assert_eq!(report.bytes_freed, 10);
    assert_eq!(report.usage_bytes, 50);
    assert!(report.target_reached);
    assert_eq!(f.s.task(&old).unwrap(), None);
    assert!(!f.s.content_path(&old).exists());
    assert!(f.s.task(&young).unwrap().is_some());

    // Exactly at the TTL is not past it; zero disables expiry.
    f.at(110 * SEC);
    assert!(
        f.s.gc(&policy(Duration::from_secs(60), None), &|_| false, 0)
            .unwrap()
            .evicted
            .is_empty()
    );
    f.at(10_000 * SEC);
    assert!(
        f.s.gc(&policy(Duration::ZERO, None), &|_| false, 0)
            .unwrap()
            .evicted
            .is_empty()
    );
    assert_eq!(f.s.usage_bytes().unwrap(), 50);
}

#[test]
fn quota_evicts_least_recently_accessed_first() {
    let f = Fixture::new();
    let mut all = Vec::new();
    for n in 0..6 {
        f.at(u64::from(n) * SEC);
        all.push(f.create(n, 100));
    }
    // Access order now: 1, 2, 4, 5, 0, 3 (0 and 3 touched last).
    f.at(10 * SEC);
    f.s.touch(&all[0]).unwrap();
    f.at(11 * SEC);
    f.s.touch(&all[3]).unwrap();

    let ttl = Duration::from_secs(3600);
    let report = f.s.gc(&policy(ttl, Some(350)), &|_| false, 0).unwrap();
    assert_eq!(
        ids(&report),
        [all[1].clone(), all[2].clone(), all[4].clone()]
    );
    assert!(
        report
            .evicted
            .iter()
            .all(|e| e.reason == EvictionReason::Quota)
    );
    assert_eq!(report.bytes_freed, 300);
    assert_eq!(report.usage_bytes, 300);
    assert!(report.target_reached);
    assert!(
        report
            .evicted
            .windows(2)
            .all(|w| w[0].last_access <= w[1].last_access)
    );

    // Room for an incoming task of 150 bytes.
    let report = f.s.gc(&policy(ttl, Some(350)), &|_| false, 150).unwrap();
    assert_eq!(ids(&report), [all[5].clone()]);
    assert_eq!(report.usage_bytes, 200);
    let left: Vec<_> = f.s.tasks().unwrap().into_iter().map(|t| t.id).collect();
    let mut expected = vec![all[0].clone(), all[3].clone()];
    expected.sort();
    assert_eq!(left, expected);
}

#[test]
fn in_use_and_running_tasks_are_never_evicted() {
    let f = Fixture::new();
    f.at(0);
    let served = f.create(1, 100);
    let running = f.create(2, 100);
    let idle = f.create(3, 100);
    f.s.start_task(&running).unwrap();
    f.at(1_000 * SEC);

    let in_use = |t: &TaskId| *t == served;
    // Everything is expired and the quota is zero: only the idle task may go.
    let report =
        f.s.gc(&policy(Duration::from_secs(1), Some(0)), &in_use, 0)
            .unwrap();
    assert_eq!(ids(&report), std::slice::from_ref(&idle));
    assert_eq!(report.evicted[0].reason, EvictionReason::Expired);
    let mut skipped = report.skipped.clone();
    skipped.sort();
    let mut expected = vec![served.clone(), running.clone()];
    expected.sort();
    assert_eq!(skipped, expected);
    assert_eq!(report.usage_bytes, 200);
    assert!(!report.target_reached, "200 bytes stay over a 0 quota");
    assert!(f.s.task(&served).unwrap().is_some());
    assert!(f.s.task(&running).unwrap().is_some());

    // Once the download stops and nobody serves it, it can go.
    f.s.fail_task(&running).unwrap();
    f.at(2_000 * SEC);
    let report =
        f.s.gc(&policy(Duration::ZERO, Some(100)), &in_use, 0)
            .unwrap();
    assert_eq!(ids(&report), [running]);
    assert!(report.target_reached);
}

#[test]
fn disk_percent_limits_use_the_real_filesystem() {
    let f = Fixture::new();
    f.at(0);
    let a = f.create(1, 10);
    let b = f.create(2, 10);
    let at_most = |p: f64| GcPolicy {
        task_ttl: Duration::ZERO,
        quota_bytes: None,
        disk_used_percent: Some(p),
    };
    // No filesystem is more than 100% used.
    let report = f.s.gc(&at_most(100.0), &|_| false, 0).unwrap();
    assert!(report.evicted.is_empty());
    assert!(report.target_reached);
    let p = report.disk_used_percent.unwrap();
    assert!((0.0..=100.0).contains(&p));
    // 0% cannot be reached: every evictable task goes, in LRU order, and the report says so.
    let report = f.s.gc(&at_most(0.0), &|t| *t == b, 0).unwrap();
    assert_eq!(ids(&report), [a]);
    assert_eq!(report.evicted[0].reason, EvictionReason::DiskUsage);
    assert!(!report.target_reached);
    assert_eq!(report.skipped, [b]);
}
