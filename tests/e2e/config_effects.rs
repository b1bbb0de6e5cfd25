//! Config keys that change what a real daemon does: the download rate limits and
//! `keepStorage` (each test fails when its key is accepted and ignored).

use dfdaemon::config::DfdaemonConfig;
use dragonfly_common::config::Size;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::daemon::DaemonProcess;
use testkit::dfget::ok;
use testkit::origin::Origin;

const MIB: usize = 1 << 20;

/// A daemon in `dir` with the usual test config, `keepStorage` set, and `edit` applied.
fn start(
    dir: &Path,
    parents: &[u16],
    keep_storage: bool,
    edit: impl FnOnce(&mut DfdaemonConfig),
) -> DaemonProcess {
    DaemonProcess::builder(dir)
        .parents(parents)
        .config(|c| {
            c.keep_storage = keep_storage;
            edit(c);
        })
        .start()
}

async fn dfget(d: &DaemonProcess, url: &str, out: &Path) {
    ok(&d.dfget(&[url, "-O", out.to_str().unwrap()]).await);
}

/// [`dfget`] to an `out` that may exist from an earlier run.
async fn dfget_again(d: &DaemonProcess, url: &str, out: &Path) {
    let _ = std::fs::remove_file(out);
    dfget(d, url, out).await
}

// Under a 2 MiB/s cap, 8 MiB takes at least 3 s (the bucket starts with one second's worth);
// unlimited on loopback it takes well under 1 s. A lower bound is not flaky on a slow machine.
const CAP: Size = Size::mib(2);
const AT_LEAST: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_rate_limit_caps_a_download_from_the_source() {
    let (data, _origin, o) = Origin::random("/file", 51, 8 * MIB).await;
    let work = tempfile::tempdir().unwrap();
    let d = start(&work.path().join("a"), &[], false, |c| {
        c.download.total_rate_limit = CAP
    });
    let out = work.path().join("out");
    let t0 = Instant::now();
    dfget(&d, &o.url("/file"), &out).await;
    let took = t0.elapsed();
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(
        took >= AT_LEAST,
        "8 MiB under download.totalRateLimit {CAP}/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_rate_limit_caps_a_download_from_a_parent() {
    let (data, _origin, o) = Origin::random("/file", 52, 8 * MIB).await;
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let a = start(&work.path().join("a"), &[], true, |_| {});
    dfget(&a, &url, &work.path().join("out-a")).await;
    let b = start(&work.path().join("b"), &[a.upload_port()], false, |c| {
        c.download.per_peer_rate_limit = CAP
    });
    let out = work.path().join("out-b");
    let t0 = Instant::now();
    dfget(&b, &url, &out).await;
    let took = t0.elapsed();
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(
        o.served("/file"),
        data.len() as u64,
        "b took every byte from its parent"
    );
    assert!(
        took >= AT_LEAST,
        "8 MiB from a parent under download.perPeerRateLimit {CAP}/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_storage_decides_whether_tasks_survive_a_clean_exit() {
    let (data, _origin, o) = Origin::random("/file", 53, 2 * MIB + 5).await;
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("a");
    let out = work.path().join("out");
    let served = || o.served("/file") / data.len() as u64;

    // keepStorage: true: the task is still there after SIGTERM and a new start.
    let d = start(&dir, &[], true, |_| {});
    dfget_again(&d, &url, &out).await;
    d.terminate();
    let d = start(&dir, &[], true, |_| {});
    dfget_again(&d, &url, &out).await;
    assert_eq!(
        served(),
        1,
        "keepStorage: true served the second copy from storage"
    );
    d.terminate();

    // keepStorage: false: the clean exit deletes it, so the next start asks the origin again.
    let d = start(&dir, &[], false, |_| {});
    dfget_again(&d, &url, &out).await;
    assert_eq!(served(), 1, "still stored when the daemon started");
    d.terminate();
    let d = start(&dir, &[], false, |_| {});
    dfget_again(&d, &url, &out).await;
    assert!(std::fs::read(&out).unwrap() == data);
    let log = d.log();
    assert!(log.contains("stored tasks deleted on exit"), "{log}");
    // metrics.enable defaults to true: the ready line (of this, the last start in the shared
    // log) names the metrics server's address.
    let ready = log
        .lines()
        .rfind(|l| l.contains("dfdaemon ready"))
        .unwrap_or_else(|| panic!("no 'dfdaemon ready' line:\n{log}"));
    assert!(ready.contains(&d.metrics_addr().to_string()), "{ready}");
    assert_eq!(
        served(),
        2,
        "keepStorage: false deleted the task on the clean exit"
    );
}
