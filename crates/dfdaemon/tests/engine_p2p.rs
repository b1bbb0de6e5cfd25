//! The task engine and upload server in one process: a child follows a parent that is still
//! downloading, and falls back to the source when the parent fails or lies.

mod support;
use support::read_all;

use dfdaemon::storage::{GcPolicy, Storage};
use dfdaemon::task::{EngineOptions, Parent, TaskManager, TaskRequest};
use dfdaemon::upload::{self, UploadLimits};
use dragonfly_common::digest::{Algorithm, Digest};
use futures::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::origin::{Behavior, Origin, Resource};

const MIB: usize = 1 << 20;

struct Node {
    engine: TaskManager,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn node(name: &str) -> Node {
    node_with(name, None).await
}

async fn node_with(name: &str, gc: Option<GcPolicy>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let engine = TaskManager::new(
        storage,
        EngineOptions {
            host_id: name.to_string(),
            gc,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(upload::serve(
        listener,
        engine.clone(),
        UploadLimits::default(),
        async {
            let _ = rx.await;
        },
    ));
    Node {
        engine,
        addr,
        _dir: dir,
        _stop: tx,
    }
}

fn request(url: &str, data: &[u8], parents: Vec<Parent>) -> TaskRequest {
    TaskRequest {
        url: url.to_string(),
        digest: Some(Digest::of(Algorithm::Sha256, data)),
        parents,
        ..TaskRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_follows_a_parent_that_is_still_downloading() {
    let data = random_bytes(11, 48 * MIB);
    let origin = Origin::new();
    // Slow enough that the child joins while the parent is mid-download.
    let slow = Behavior::slow(Duration::from_millis(2));
    origin.route("/blob", Resource::bytes(data.clone()).with(slow));
    let o = origin.spawn().await.unwrap();
    let url = o.url("/blob");
    let a = node("a").await;
    let b = node("b").await;
    let ta = a
        .engine
        .download(request(&url, &data, vec![]))
        .await
        .unwrap();
    ta.layout().await.unwrap();
    let parent = Parent {
        id: "a".into(),
        addr: a.addr,
    };
    let tb = b
        .engine
        .download(request(&url, &data, vec![parent]))
        .await
        .unwrap();
    assert!(
        ta.view().done < ta.view().have.len() as u32,
        "parent still downloading when the child starts"
    );
    let got = read_all(&tb).await;
    tb.wait_finished().await.unwrap();
    assert!(got == data, "child content differs");
    assert!(read_all(&ta).await == data);
    let (_, bytes) = o.stats.for_path("/blob");
    assert_eq!(
        bytes,
        data.len() as u64,
        "the origin served the content once"
    );
    let from_parent = b
        .engine
        .storage()
        .pieces(&tb.id)
        .unwrap()
        .iter()
        .filter(|p| p.parent_id.as_deref() == Some("a"))
        .count();
    assert_eq!(
        from_parent,
        tb.view().have.len(),
        "every piece of the child came from the parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_share_one_download_and_finished_tasks_come_from_storage() {
    let (data, _origin, o) = Origin::random("/blob", 12, 9 * MIB).await;
    let url = o.url("/blob");
    let a = node("a").await;
    let t1 = a
        .engine
        .download(request(&url, &data, vec![]))
        .await
        .unwrap();
    let t2 = a
        .engine
        .download(request(&url, &data, vec![]))
        .await
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&t1, &t2), "one download per task");
    let (x, y) = tokio::join!(read_all(&t1), read_all(&t2));
    assert!(x == data && y == data);
    t1.wait_finished().await.unwrap();
    let t3 = a
        .engine
        .download(request(&url, &data, vec![]))
        .await
        .unwrap();
    assert!(read_all(&t3).await == data);
    assert_eq!(o.served("/blob"), data.len() as u64);
    // A range in the middle, across a piece boundary.
    let mut r = t3.reader(4 * MIB as u64 - 10, Some(4 * MIB as u64 + 10));
    let mut part = Vec::new();
    while let Some(c) = r.next().await {
        part.extend_from_slice(&c.unwrap());
    }
    assert_eq!(part, &data[4 * MIB - 10..4 * MIB + 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_parent_means_back_to_source() {
    let (data, _origin, o) = Origin::random("/blob", 13, 9 * MIB).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let b = node("b").await;
    let parent = Parent {
        id: "dead".into(),
        addr: dead,
    };
    let t = b
        .engine
        .download(request(&o.url("/blob"), &data, vec![parent]))
        .await
        .unwrap();
    assert!(read_all(&t).await == data);
    t.wait_finished().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_fails_the_task_and_keeps_nothing() {
    let (data, _origin, o) = Origin::random_with("/blob", 14, 6 * MIB, Behavior::corrupt()).await;
    let a = node("a").await;
    let t = a
        .engine
        .download(request(&o.url("/blob"), &data, vec![]))
        .await
        .unwrap();
    let err = t.wait_finished().await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(
        a.engine.storage().task(&t.id).unwrap().is_none(),
        "nothing of a wrong content is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_under_a_small_quota_never_evicts_a_task_in_use() {
    let origin = Origin::new();
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(30 + i, 8 * MIB)).collect();
    for (i, b) in blobs.iter().enumerate() {
        let slow = Behavior::slow(Duration::from_millis(if i == 3 { 20 } else { 0 }));
        origin.route(&format!("/b{i}"), Resource::bytes(b.clone()).with(slow));
    }
    let o = origin.spawn().await.unwrap();
    let policy = GcPolicy {
        task_ttl: Duration::ZERO,
        quota_bytes: Some(12 * MIB as u64),
        disk_used_percent: None,
    };
    let n = node_with("gc", Some(policy.clone())).await;
    let get = |i: usize| request(&o.url(&format!("/b{i}")), &blobs[i], vec![]);
    let x = n.engine.download(get(0)).await.unwrap();
    x.wait_finished().await.unwrap();
    // X is being served: admitting Y would need X's room, but X must stay.
    let pin = n.engine.pin(&x.id);
    let y = n.engine.download(get(1)).await.unwrap();
    y.wait_finished().await.unwrap();
    let storage = n.engine.storage().clone();
    assert!(
        storage.task(&x.id).unwrap().is_some(),
        "a task in use is never evicted"
    );
    drop(pin);
    // Nothing in use any more: admitting Z evicts the least recently used first.
    let z = n.engine.download(get(2)).await.unwrap();
    z.wait_finished().await.unwrap();
    assert!(
        storage.task(&x.id).unwrap().is_none(),
        "X, the oldest, was evicted"
    );
    assert!(storage.task(&z.id).unwrap().is_some());
    assert!(storage.usage_bytes().unwrap() <= 16 * MIB as u64);
    // A task being downloaded is never evicted, even with a zero quota.
    // In 1 MiB pieces, several to a source lane: its first pieces are stored while it runs.
    let w = n
        .engine
        .download(TaskRequest {
            piece_length: Some(MIB as u64),
            ..get(3)
        })
        .await
        .unwrap();
    w.layout().await.unwrap();
    // Once a piece of it is stored, it counts against the quota (stored bytes, not its length).
    for _ in 0..400 {
        if storage
            .task(&w.id)
            .unwrap()
            .is_some_and(|r| r.finished_pieces > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let zero = GcPolicy {
        quota_bytes: Some(0),
        ..policy
    };
    let e = n.engine.clone();
    let report = storage.gc(&zero, &|id| e.in_use(id), 0).unwrap();
    assert!(
        !report.evicted.iter().any(|ev| ev.id == w.id),
        "running task evicted: {report:?}"
    );
    assert!(report.skipped.contains(&w.id), "{report:?}");
    assert!(read_all(&w).await == blobs[3]);
}
