//! What the cluster holds survives the scheduler: after a scheduler restart, a failover on the
//! ring, or a scheduler added to `scheduler.netAddrs`, a new peer gets a file some daemon holds
//! from that daemon, and the origin serves 0 more bytes. Real processes, as in swarm.rs; each
//! test uses its own 127.0.N.0/24.

use crate::support::{MIB, assert_ok, dfget, peer, scheduler, two_schedulers};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::hashring;
use dragonfly_common::task_id::TaskId;
use std::path::Path;
use testkit::daemon::DaemonProcess;
use testkit::data::random_bytes;
use testkit::files::{same, wait_for};
use testkit::origin::{Origin, Resource};
use testkit::scheduler::SchedulerProcess;

/// Downloads `url` on `d` into `dir/name` and checks the copy.
async fn pull(d: &DaemonProcess, url: &str, data: &[u8], dir: &Path, name: &str) {
    let digest = Digest::of(Algorithm::Sha256, data).to_string();
    let out = dir.join(name);
    assert_ok(&dfget(d, url, &out, &digest).await, name);
    assert!(same(&out, data), "{name}'s copy differs");
}

/// Waits until `s` knows `task` (a daemon told it, or a peer registered).
async fn until_known(s: &SchedulerProcess, task: &TaskId, what: &str) {
    for _ in 0..200 {
        if s.knows(task.as_str()).await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Asserts the last download of `d` took no piece from the origin, and returns its piece count.
fn from_peers_only(d: &DaemonProcess, who: &str) -> u32 {
    let fed = d.fed();
    assert!(
        !fed.contains_key("source"),
        "{who} used the origin: {fed:?}"
    );
    fed.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_scheduler_restart_the_seed_peer_serves_what_it_holds() {
    let (data, _origin, o) = Origin::random("/f", 61, 16 * MIB).await;
    let url = o.url("/f");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sched = scheduler(&w.join("s"), true);
    let _seed = peer(&w.join("seed"), "127.0.6.2", &[sched.addr()], true).start();
    let a = peer(&w.join("a"), "127.0.6.10", &[sched.addr()], false).start();
    pull(&a, &url, &data, w, "a.out").await;
    assert_eq!(o.served("/f"), data.len() as u64);

    // The restarted scheduler records no finished task a host announces (heldPeerLimit 0), so
    // only the seed peer, asked for the task, can say it holds it.
    let sched = sched
        .replace(&w.join("s-again"))
        .seed_peers(true)
        .config(|c| c.scheduler.held_peer_limit = 0)
        .start();
    wait_for(
        || sched.log().matches("host announced").count() >= 2,
        "the seed and a to announce themselves again",
    )
    .await;
    let b = peer(&w.join("b"), "127.0.6.11", &[sched.addr()], false).start();
    pull(&b, &url, &data, w, "b.out").await;
    assert_eq!(from_peers_only(&b, "b"), 4);
    assert!(
        sched
            .log()
            .contains("seed peer holds the task in its storage"),
        "{}",
        sched.log()
    );
    assert_eq!(
        o.served("/f"),
        data.len() as u64,
        "the origin served nothing after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_scheduler_restart_daemons_tell_it_what_they_hold() {
    let (data, _origin, o) = Origin::random("/g", 62, 12 * MIB).await;
    let url = o.url("/g");
    let task = TaskId::for_url(&url, "", "", None, &[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // No seed peers: only what the daemons say can keep the new peer off the origin.
    let sched = scheduler(&w.join("s"), false);
    let a = peer(&w.join("a"), "127.0.7.10", &[sched.addr()], false).start();
    let b = peer(&w.join("b"), "127.0.7.11", &[sched.addr()], false).start();
    pull(&a, &url, &data, w, "a.out").await;
    pull(&b, &url, &data, w, "b.out").await;
    assert_eq!(o.served("/g"), data.len() as u64);

    let sched = sched.replace(&w.join("s-again")).seed_peers(false).start();
    until_known(&sched, &task, "a daemon to re-announce the task").await;
    let c = peer(&w.join("c"), "127.0.7.12", &[sched.addr()], false).start();
    pull(&c, &url, &data, w, "c.out").await;
    assert_eq!(from_peers_only(&c, "c"), 3);
    assert_eq!(o.served("/g"), data.len() as u64);
}

/// A path on `o` whose task is owned by scheduler `owner` of `addrs`.
fn path_owned_by(o: &testkit::origin::RunningOrigin, addrs: &[String], owner: usize) -> String {
    (0..200)
        .map(|i| format!("/owned{i}"))
        .find(|p| {
            let id = TaskId::for_url(&o.url(p), "", "", None, &[]);
            hashring::ranking(id.as_str(), addrs)[0] == owner
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_tasks_scheduler_dies_the_next_one_learns_who_holds_it() {
    let data = random_bytes(63, 8 * MIB);
    let (origin, o) = Origin::empty().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (s1, mut s2) = two_schedulers(w);
    let addrs = vec![s1.addr(), s2.addr()];
    let path = path_owned_by(&o, &addrs, 1);
    origin.route(&path, Resource::bytes(data.clone()));
    let url = o.url(&path);
    let task = TaskId::for_url(&url, "", "", None, &[]);
    let a = peer(&w.join("a"), "127.0.8.10", &addrs, false).start();
    pull(&a, &url, &data, w, "a.out").await;
    assert!(s2.knows(&task).await && !s1.knows(&task).await);

    // Scheduler 2 dies for good: the task's next scheduler on the ring is told who holds it.
    s2.kill();
    until_known(&s1, &task, "a to tell scheduler 1 about the moved task").await;
    let c = peer(&w.join("c"), "127.0.8.12", &addrs, false).start();
    pull(&c, &url, &data, w, "c.out").await;
    assert_eq!(from_peers_only(&c, "c"), 2);
    assert_eq!(o.served(&path), data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_added_to_net_addrs_learns_the_tasks_that_now_hash_to_it() {
    let data = random_bytes(64, 8 * MIB);
    let (origin, o) = Origin::empty().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (s1, s2) = two_schedulers(w);
    let both = vec![s1.addr(), s2.addr()];
    let path = path_owned_by(&o, &both, 1);
    origin.route(&path, Resource::bytes(data.clone()));
    let url = o.url(&path);
    let task = TaskId::for_url(&url, "", "", None, &[]);

    // A knows only scheduler 1 when it downloads; then it restarts with both.
    let mut a = peer(&w.join("a"), "127.0.9.10", &[s1.addr()], false).start();
    pull(&a, &url, &data, w, "a.out").await;
    assert!(!s2.knows(&task).await);
    a.kill();
    let _a = peer(&w.join("a"), "127.0.9.10", &both, false).start();
    until_known(&s2, &task, "a to tell the added scheduler about its task").await;
    let c = peer(&w.join("c"), "127.0.9.12", &both, false).start();
    pull(&c, &url, &data, w, "c.out").await;
    assert_eq!(from_peers_only(&c, "c"), 2);
    assert_eq!(o.served(&path), data.len() as u64);
}
