//! A real swarm: the `scheduler` binary, seed and normal `dfdaemon` processes on their own
//! 127.0.x.y addresses, dfget processes, and a counting origin. Each test uses its own
//! 127.0.N.0/24 so the tests can run at once.

use crate::support::{
    MIB, assert_ok, dfget, dfget_all, outs, peer, peers, scheduler, two_schedulers,
};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::hashring;
use dragonfly_common::task_id::TaskId;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::files::{same, wait_for};
use testkit::net::free_port;
use testkit::origin::{Behavior, Origin, Resource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_six_peers_pull_256_mib_and_the_origin_serves_it_once() {
    let (data, _origin, o) = Origin::random("/big", 41, 256 * MIB).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/big");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sched = scheduler(&work.path().join("scheduler"), true);
    let seed = peer(&w.join("seed"), "127.0.1.2", &[sched.addr()], true).start();
    let peers = peers(work.path(), "peer", 1, 6, &[sched.addr()]);

    let outs = outs(w, "out", 6);
    let runs = dfget_all(&peers, &url, &outs, &digest);
    let results = futures::future::join_all(runs).await;
    for (i, r) in results.iter().enumerate() {
        assert_ok(r, &format!("peer{i}"));
        assert!(same(&outs[i], &data), "peer{i}'s copy differs");
    }

    assert_eq!(
        o.served("/big"),
        data.len() as u64,
        "the origin served the file exactly once for 7 daemons"
    );
    // The seed fetched everything from the origin; the peers got every piece from peers.
    let seed_fed = seed.fed();
    assert_eq!(seed_fed.get("source"), Some(&64), "{seed_fed:?}");
    let mut from_peers = 0;
    for (i, p) in peers.iter().enumerate() {
        let fed = p.fed();
        eprintln!("peer{i} ({}) <- {fed:?}", p.upload_addr());
        assert!(
            !fed.contains_key("source"),
            "peer{i} used the origin: {fed:?}"
        );
        assert_eq!(fed.values().sum::<u32>(), 64, "peer{i}: {fed:?}");
        from_peers += fed.values().sum::<u32>();
    }
    assert_eq!(from_peers, 6 * 64);
    assert!(
        seed.log().contains("seed peer asked to download a task"),
        "the scheduler triggered the seed peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_killed_mid_transfer_leaves_every_child_finishing() {
    let data = random_bytes(42, 48 * MIB);
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let origin = Origin::new();
    let slow = Behavior {
        frame_delay: Duration::from_millis(8), // 8 MiB/s per stream
        ..Behavior::default()
    };
    origin.route("/slow", Resource::bytes(data.clone()).with(slow));
    let o = origin.spawn().await.unwrap();
    let url = o.url("/slow");
    let work = tempfile::tempdir().unwrap();
    let sched = scheduler(&work.path().join("scheduler"), false);
    // Two pieces at a time: the first peer is mid-transfer for about three seconds.
    let mut first = peer(
        &work.path().join("first"),
        "127.0.2.2",
        &[sched.addr()],
        false,
    )
    .config(|c| c.download.concurrent_piece_count = 2)
    .start();
    let children = peers(work.path(), "child", 2, 3, &[sched.addr()]);

    // The first peer goes to the source; once it holds pieces the children get it as parent.
    let out_first = work.path().join("first.out");
    let first_run = tokio::spawn(first.dfget(&[
        &url,
        "-O",
        out_first.to_str().unwrap(),
        "--digest",
        &digest,
        "-q",
    ]));
    wait_for(
        || o.served("/slow") >= 8 * MIB as u64,
        "the first peer to fetch two pieces",
    )
    .await;
    let outs = outs(work.path(), "c", 3);
    let runs = dfget_all(&children, &url, &outs, &digest);
    let killer = async {
        // Kill the parent while the children are following it.
        wait_for(
            || {
                children
                    .iter()
                    .all(|c| c.log().contains("scheduler assigned parents"))
            },
            "the children to get their parents",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.kill();
    };
    let (results, ()) = tokio::join!(futures::future::join_all(runs), killer);
    let _ = first_run.await;
    for (i, r) in results.iter().enumerate() {
        assert_ok(r, &format!("child{i}"));
        assert!(same(&outs[i], &data), "child{i}'s copy differs");
    }
    let parent_addr = first.upload_addr();
    for (i, c) in children.iter().enumerate() {
        eprintln!("child{i} <- {:?}", c.fed());
    }
    let from_parent: u32 = children
        .iter()
        .map(|c| c.fed().get(&parent_addr).copied().unwrap_or(0))
        .sum();
    assert!(
        from_parent > 0,
        "the children took pieces from the first peer before it died"
    );
    assert!(
        children
            .iter()
            .any(|c| c.log().contains("parent failed") || c.log().contains("parent stream failed")),
        "a child noticed the dead parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_finish_from_the_source_when_the_scheduler_dies_or_was_never_there() {
    let data = random_bytes(43, 24 * MIB);
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let slow = Behavior::slow(Duration::from_millis(4));
    let (origin, o) = Origin::serving([
        ("/f", Resource::bytes(data.clone()).with(slow)),
        ("/g", Resource::bytes(data.clone())),
    ])
    .await;
    let work = tempfile::tempdir().unwrap();
    let mut sched = scheduler(&work.path().join("scheduler"), false);
    let peers = peers(work.path(), "p", 3, 3, &[sched.addr()]);
    let outs = outs(work.path(), "o", 3);
    let url = o.url("/f");
    let runs = dfget_all(&peers, &url, &outs, &digest);
    let killer = async {
        wait_for(|| o.served("/f") > 2 * MIB as u64, "the transfer to start").await;
        sched.kill();
    };
    let (results, ()) = tokio::join!(futures::future::join_all(runs), killer);
    for (i, r) in results.iter().enumerate() {
        assert_ok(r, &format!("p{i}"));
        assert!(same(&outs[i], &data), "p{i}'s copy differs");
    }
    assert!(
        peers
            .iter()
            .any(|p| p.log().contains("scheduler unavailable")),
        "some peer noticed the scheduler was gone"
    );

    // A new task with the scheduler dead from the start: straight to the source.
    let out = work.path().join("g");
    let r = dfget(&peers[0], &o.url("/g"), &out, &digest).await;
    assert_ok(&r, "p0 with no scheduler");
    assert!(same(&out, &data));
    assert_eq!(peers[0].fed().get("source"), Some(&6));

    // A daemon whose only scheduler address never answered at all.
    let lonely = peer(
        &work.path().join("lonely"),
        "127.0.3.50",
        &[format!("127.0.0.1:{}", free_port())],
        false,
    )
    .start();
    let out = work.path().join("lonely.out");
    let r = dfget(&lonely, &o.url("/g"), &out, &digest).await;
    assert_ok(&r, "a daemon with a dead scheduler");
    assert!(same(&out, &data));

    // The scheduler comes back (empty): the daemons announce themselves again before their next
    // task, so P2P works at once rather than after the next periodic announce.
    let _back = sched
        .replace(&work.path().join("scheduler-again"))
        .seed_peers(false)
        .start();
    origin.route("/h", Resource::bytes(data.clone()));
    let url = o.url("/h");
    for (i, p) in peers.iter().enumerate().take(2) {
        let out = work.path().join(format!("h{i}"));
        assert_ok(
            &dfget(p, &url, &out, &digest).await,
            &format!("p{i} after the restart"),
        );
        assert!(same(&out, &data));
    }
    assert_eq!(
        o.served("/h"),
        data.len() as u64,
        "served once after the restart"
    );
    let fed = peers[1].fed();
    assert_eq!(fed.get(&peers[0].upload_addr()), Some(&6), "{fed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_split_the_tasks_by_hash_and_a_dead_one_is_skipped() {
    let (origin, o) = Origin::empty().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (s1, mut s2) = two_schedulers(work.path());
    let addrs = vec![s1.addr(), s2.addr()];
    let a = peer(&w.join("a"), "127.0.4.2", &addrs, false).start();
    let b = peer(&w.join("b"), "127.0.4.3", &addrs, false).start();
    // Four files owned by each scheduler (the ports, hence the owners, differ from run to run).
    let mut per_owner = [0; 2];
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..1000u64 {
        let path = format!("/t{i}");
        let id = TaskId::for_url(&o.url(&path), "", "", None, &[]);
        let owner = hashring::ranking(id.as_str(), &addrs)[0];
        if per_owner[owner] < 4 {
            per_owner[owner] += 1;
            let data = random_bytes(100 + i, 3 * MIB + i as usize);
            origin.route(&path, Resource::bytes(data.clone()));
            files.push((path, data));
        }
        if files.len() == 8 {
            break;
        }
    }
    assert_eq!(files.len(), 8);

    let mut owners = BTreeMap::new();
    for (path, data) in &files {
        let url = o.url(path);
        let digest = Digest::of(Algorithm::Sha256, data).to_string();
        for (d, name) in [(&a, "a"), (&b, "b")] {
            let out = work.path().join(format!("{name}{}", &path[1..]));
            assert_ok(&dfget(d, &url, &out, &digest).await, name);
            assert!(same(&out, data));
        }
        // B got the file from A: the scheduler that owns the task saw both.
        assert_eq!(o.served(path), data.len() as u64, "{path} served once");
        assert!(
            b.fed().contains_key(&a.upload_addr()),
            "{path}: {:?}",
            b.fed()
        );
        let id = TaskId::for_url(&url, "", "", None, &[]);
        let expected = hashring::ranking(id.as_str(), &addrs)[0];
        let (k1, k2) = (s1.knows(id.as_str()).await, s2.knows(id.as_str()).await);
        assert_eq!(
            (k1, k2),
            (expected == 0, expected == 1),
            "{path}: only the owner by hash knows the task"
        );
        *owners.entry(expected).or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 2, "both schedulers got tasks: {owners:?}");

    // Scheduler 2 dies: its tasks go to scheduler 1, and P2P still works.
    s2.kill();
    let moved = (0..40)
        .map(|i| format!("/moved{i}"))
        .find(|p| {
            let id = TaskId::for_url(&o.url(p), "", "", None, &[]);
            hashring::ranking(id.as_str(), &addrs)[0] == 1
        })
        .unwrap();
    let data = random_bytes(200, 5 * MIB);
    origin.route(&moved, Resource::bytes(data.clone()));
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url(&moved);
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let out = work.path().join(format!("{name}-moved"));
        assert_ok(&dfget(d, &url, &out, &digest).await, name);
        assert!(same(&out, &data));
    }
    assert!(
        s1.knows(TaskId::for_url(&url, "", "", None, &[]).as_str())
            .await
    );
    assert_eq!(o.served(&moved), data.len() as u64);
    assert!(b.fed().contains_key(&a.upload_addr()), "{:?}", b.fed());
}

/// A peer that tells the scheduler (and its children) it holds every piece, but serves none.
mod liar {
    use dragonfly_proto::common::v1::{Piece, Task as ProtoTask};
    use dragonfly_proto::dfdaemon::v1::{
        DeleteTaskRequest, DownloadTaskRequest, DownloadTaskResponse, StatTaskRequest,
        SyncPiecesRequest, SyncPiecesResponse,
    };
    use dragonfly_proto::{DfdaemonUpload, DfdaemonUploadServer};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status};

    type Msgs<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    pub struct Liar {
        pub content_length: u64,
        pub piece_length: u64,
        pub asked: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl DfdaemonUpload for Liar {
        type SyncPiecesStream = Msgs<SyncPiecesResponse>;
        type DownloadTaskStream = Msgs<DownloadTaskResponse>;

        async fn sync_pieces(
            &self,
            _req: Request<SyncPiecesRequest>,
        ) -> Result<Response<Self::SyncPiecesStream>, Status> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let count = self.content_length.div_ceil(self.piece_length) as u32;
            let (len, pl) = (self.content_length, self.piece_length);
            let msgs: Vec<Result<SyncPiecesResponse, Status>> = (0..count)
                .map(|n| {
                    Ok(SyncPiecesResponse {
                        piece: Some(Piece {
                            number: n,
                            offset: u64::from(n) * pl,
                            length: pl.min(len - u64::from(n) * pl),
                            crc32: Some(0x1234_5678),
                            ..Default::default()
                        }),
                        content_length: Some(len),
                        piece_count: Some(count),
                        piece_length: Some(pl),
                        ..Default::default()
                    })
                })
                .collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
        }

        async fn download_task(
            &self,
            _req: Request<DownloadTaskRequest>,
        ) -> Result<Response<Self::DownloadTaskStream>, Status> {
            Err(Status::unimplemented("liar"))
        }

        async fn stat_task(
            &self,
            _req: Request<StatTaskRequest>,
        ) -> Result<Response<ProtoTask>, Status> {
            Err(Status::not_found("liar"))
        }

        async fn delete_task(
            &self,
            _req: Request<DeleteTaskRequest>,
        ) -> Result<Response<()>, Status> {
            Ok(Response::new(()))
        }
    }

    /// Serve the liar's gRPC on `listener` (piece GETs get no HTTP/1.1 answer from it).
    pub fn serve(listener: tokio::net::TcpListener, liar: Liar) {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DfdaemonUploadServer::new(liar))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lying_about_its_pieces_is_dropped_and_the_download_still_succeeds() {
    use dragonfly_proto::scheduler::v1::{
        AnnounceHostRequest, AnnouncePeerRequest, DownloadPeerBackToSourceFinishedRequest,
        DownloadPeerBackToSourceStartedRequest, RegisterPeerRequest,
        announce_peer_request::Request as Req,
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    let (data, _origin, o) = Origin::random("/lie", 44, 20 * MIB).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/lie");
    let id = TaskId::for_url(&url, "", "", None, &[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sched = scheduler(&work.path().join("scheduler"), false);

    // The liar: an upload port that claims every piece, announced as a host that finished the task.
    let listener = tokio::net::TcpListener::bind("127.0.5.99:0").await.unwrap();
    let liar_port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(AtomicU64::new(0));
    liar::serve(
        listener,
        liar::Liar {
            content_length: data.len() as u64,
            piece_length: 4 * MIB as u64,
            asked: asked.clone(),
        },
    );
    let mut client = dragonfly_proto::SchedulerClient::connect(format!("http://{}", sched.addr()))
        .await
        .unwrap();
    client
        .announce_host(AnnounceHostRequest {
            host: Some(dragonfly_proto::Host {
                id: "liar-host".into(),
                hostname: "liar".into(),
                ip: "127.0.5.99".into(),
                upload_port: u32::from(liar_port),
                ..Default::default()
            }),
            interval: None,
        })
        .await
        .unwrap();
    let msg = |r: Req| AnnouncePeerRequest {
        host_id: "liar-host".into(),
        task_id: id.to_string(),
        peer_id: "liar-peer".into(),
        request: Some(r),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(msg(Req::RegisterPeerRequest(RegisterPeerRequest {
        download: Some(dragonfly_proto::Download {
            url: url.clone(),
            ..Default::default()
        }),
    })))
    .await
    .unwrap();
    let mut answers = client
        .announce_peer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap();
    assert!(first.is_some(), "the scheduler answered the liar");
    tx.send(msg(Req::DownloadPeerBackToSourceStartedRequest(
        DownloadPeerBackToSourceStartedRequest::default(),
    )))
    .await
    .unwrap();
    tx.send(msg(Req::DownloadPeerBackToSourceFinishedRequest(
        DownloadPeerBackToSourceFinishedRequest {
            content_length: data.len() as u64,
            piece_count: 5,
        },
    )))
    .await
    .unwrap();
    // Keep the liar's stream open (it stays "succeeded" as far as the scheduler knows).
    let _keep = (tx, answers);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let honest = peer(&w.join("honest"), "127.0.5.10", &[sched.addr()], false).start();
    let out = work.path().join("out");
    assert_ok(
        &dfget(&honest, &url, &out, &digest).await,
        "the honest peer",
    );
    assert!(same(&out, &data), "the honest peer's copy is right");
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the scheduler offered the liar as a parent"
    );
    let log = honest.log();
    assert!(
        log.contains("parent failed; not asking it again"),
        "the honest peer dropped the liar:\n{log}"
    );
    assert!(
        log.contains("asking the scheduler for new parents"),
        "{log}"
    );
    let fed = honest.fed();
    assert_eq!(fed.get("source"), Some(&5), "{fed:?}");
    assert!(
        !fed.keys().any(|k| k.starts_with("127.0.5.99")),
        "nothing was taken from the liar: {fed:?}"
    );
}
