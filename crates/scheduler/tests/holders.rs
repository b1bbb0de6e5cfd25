//! In-process gRPC tests of what the scheduler learns about finished copies without a download:
//! a seed peer that serves a task from its storage when asked.

use dragonfly_proto::common::v1::{Piece, Task as ProtoTask};
use dragonfly_proto::dfdaemon::v1::{
    DeleteTaskRequest, DownloadTaskRequest, DownloadTaskResponse, DownloadTaskStartedResponse,
    StatTaskRequest, SyncPiecesRequest, SyncPiecesResponse,
};
use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_response::Response as Resp;
use dragonfly_proto::{
    DfdaemonUpload, DfdaemonUploadServer, Download, Host, HostType, SchedulerClient,
};
use scheduler::config::SchedulerConfig;
use std::pin::Pin;
use std::time::Duration;
use testkit::scheduler::InProcessScheduler;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

const TASK: &str = "task-held";
const PIECE: u64 = 4 << 20;

type Msgs<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A seed daemon that holds every task already: DownloadTask answers "finished" at once.
struct StoredSeed;

#[tonic::async_trait]
impl DfdaemonUpload for StoredSeed {
    type SyncPiecesStream = Msgs<SyncPiecesResponse>;
    type DownloadTaskStream = Msgs<DownloadTaskResponse>;

    async fn sync_pieces(
        &self,
        _: Request<SyncPiecesRequest>,
    ) -> Result<Response<Self::SyncPiecesStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn download_task(
        &self,
        _: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let pieces = (0..3u32)
            .map(|n| Piece {
                number: n,
                offset: u64::from(n) * PIECE,
                length: PIECE,
                ..Default::default()
            })
            .collect();
        let started = DownloadTaskStartedResponse {
            content_length: Some(3 * PIECE),
            pieces,
            is_finished: true,
            piece_length: Some(PIECE),
        };
        let msg = DownloadTaskResponse::new("seed", TASK, "seed-peer-from-storage", started);
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(msg)]))))
    }

    async fn stat_task(&self, _: Request<StatTaskRequest>) -> Result<Response<ProtoTask>, Status> {
        Err(Status::not_found("not needed"))
    }

    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

async fn bind() -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    }
}

/// Registers `peer` of `host` for [`TASK`] (`http://origin/held`) and returns the scheduler's
/// first answer, waiting `wait` at most.
async fn first_answer(
    client: &mut SchedulerClient<tonic::transport::Channel>,
    host: &str,
    peer: &str,
    wait: Duration,
) -> Resp {
    let (tx, rx) = mpsc::channel(4);
    let register = sch::RegisterPeerRequest {
        download: Some(Download {
            url: "http://origin/held".into(),
            ..Default::default()
        }),
    };
    assert!(
        tx.send(sch::AnnouncePeerRequest::new(host, TASK, peer, register))
            .await
            .is_ok()
    );
    let mut answers = match client.announce_peer(ReceiverStream::new(rx)).await {
        Ok(s) => s.into_inner(),
        Err(e) => panic!("announce_peer: {e}"),
    };
    match tokio::time::timeout(wait, answers.message()).await {
        Ok(Ok(Some(sch::AnnouncePeerResponse { response: Some(r) }))) => r,
        other => panic!("{peer}: no answer: {other:?}"),
    }
}

async fn announce(client: &mut SchedulerClient<tonic::transport::Channel>, host: Host) {
    let req = sch::AnnounceHostRequest {
        host: Some(host),
        interval: None,
    };
    assert!(client.announce_host(req).await.is_ok());
}

#[tokio::test]
async fn a_seed_peer_serving_a_task_from_storage_is_a_finished_parent_at_once() {
    let seed_listener = bind().await;
    let seed_port = seed_listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DfdaemonUploadServer::new(StoredSeed))
            .serve_with_incoming(TcpListenerStream::new(seed_listener)),
    );

    let mut config = SchedulerConfig::default();
    config.seed_peer.enable = true;
    // Two seconds of waiting before the scheduler gives up on the seed and says back-to-source.
    config.scheduler.retry_limit = 100;
    config.scheduler.retry_interval = Duration::from_millis(20).into();
    let server = InProcessScheduler::start(config).await;
    let (state, mut client) = (server.state.clone(), server.client.clone());
    let mut seed = Host {
        id: "seed".into(),
        ip: "127.0.0.1".into(),
        upload_port: u32::from(seed_port),
        ..Default::default()
    };
    seed.set_type(HostType::Seed);
    announce(&mut client, seed).await;
    let peer_host = Host {
        id: "h1".into(),
        ip: "127.0.0.2".into(),
        upload_port: 65002,
        ..Default::default()
    };
    announce(&mut client, peer_host).await;

    let started = tokio::time::Instant::now();
    let answer = first_answer(&mut client, "h1", "p1", Duration::from_secs(10)).await;
    let Resp::NormalTaskResponse(normal) = answer else {
        panic!("the seed holds the task, yet the answer was {answer:?}")
    };
    let parents: Vec<&str> = normal
        .candidate_parents
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(parents, vec!["seed-peer-from-storage"]);
    assert_eq!(normal.content_length, Some(3 * PIECE));
    assert_eq!(normal.piece_count, Some(3));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    let task = state.resources.tasks.get(TASK);
    let finished = task
        .as_ref()
        .and_then(|t| t.peers.get("seed-peer-from-storage"))
        .map(|p| p.finished_count());
    assert_eq!(finished, Some(3), "the seed is a finished peer of the task");
}

fn finished(task_id: &str) -> sch::FinishedTask {
    sch::FinishedTask {
        task_id: task_id.into(),
        content_length: 3 * PIECE,
        piece_length: PIECE,
        piece_count: 3,
    }
}

#[tokio::test]
async fn a_restarted_scheduler_asks_for_finished_tasks_and_offers_their_holders() {
    let mut config = SchedulerConfig::default();
    config.seed_peer.enable = false;
    config.scheduler.held_peer_limit = 2;
    config.scheduler.retry_limit = 2;
    config.scheduler.retry_interval = Duration::from_millis(10).into();
    let server = InProcessScheduler::start(config).await;
    let (state, mut client) = (server.state.clone(), server.client.clone());
    let host = |id: &str, ip: &str| Host {
        id: id.into(),
        ip: ip.into(),
        upload_port: 65002,
        download_port: 65004,
        ..Default::default()
    };

    // Nobody is announced: a batch is refused until its host is.
    let batch = |h: &str, tasks: Vec<sch::FinishedTask>| sch::AnnounceFinishedTasksRequest {
        host_id: h.into(),
        tasks,
    };
    let refused = client
        .announce_finished_tasks(batch("h1", vec![finished(TASK)]))
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::FailedPrecondition)
    );

    // The first announce of a host says the scheduler did not know it; the next does not.
    for (i, id) in ["h1", "h2", "h3", "h4"].iter().enumerate() {
        let req = sch::AnnounceHostRequest {
            host: Some(host(id, &format!("127.0.0.{}", i + 2))),
            interval: None,
        };
        let first = client.announce_host(req.clone()).await;
        let header = first
            .as_ref()
            .ok()
            .and_then(|r| r.metadata().get(sch::HOST_UNKNOWN_HEADER).cloned());
        assert_eq!(header.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
        let again = client.announce_host(req).await;
        assert!(again.is_ok_and(|r| r.metadata().get(sch::HOST_UNKNOWN_HEADER).is_none()));
    }

    // Three hosts hold the task; two are kept (heldPeerLimit), the third is skipped.
    let mut recorded = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let reply = client
            .announce_finished_tasks(batch(h, vec![finished(TASK), finished("other")]))
            .await
            .map(|r| r.into_inner());
        recorded.push(reply.map(|r| (r.recorded, r.skipped)).ok());
    }
    assert_eq!(recorded, vec![Some((2, 0)), Some((2, 0)), Some((0, 2))]);
    let too_many = vec![finished(TASK); sch::MAX_FINISHED_TASKS_PER_REQUEST + 1];
    let refused = client.announce_finished_tasks(batch("h1", too_many)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::InvalidArgument)
    );

    // A new peer gets the holders as parents, not the origin.
    let answer = first_answer(&mut client, "h4", "p4", Duration::from_secs(5)).await;
    let Resp::NormalTaskResponse(normal) = answer else {
        panic!("two hosts hold the task, yet the answer was {answer:?}")
    };
    let mut parents: Vec<&str> = normal
        .candidate_parents
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    parents.sort_unstable();
    assert_eq!(parents, vec!["h1-held", "h2-held"]);
    assert_eq!(normal.piece_count, Some(3));

    // A host that deletes its copy is forgotten as a holder.
    let deleted = client
        .delete_task(sch::DeleteTaskRequest {
            host_id: "h1".into(),
            task_id: "other".into(),
        })
        .await;
    assert!(deleted.is_ok());
    let holders = state.resources.tasks.get("other").map(|t| t.peers.len());
    assert_eq!(holders, Some(1));
}

/// Resident memory of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The numbers in docs/scheduler.md: bytes of a batch, time to announce 10,000 tasks from one
/// host over gRPC, memory per recorded finished peer. Run with
/// `cargo test --release -p scheduler --test holders -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_finished_task_announces() {
    use prost::Message;
    const TASKS: usize = 10_000;
    const HOSTS: usize = 16;
    let mut config = SchedulerConfig::default();
    config.seed_peer.enable = false;
    let server = InProcessScheduler::start(config).await;
    let (state, mut client) = (server.state.clone(), server.client.clone());
    let tasks: Vec<sch::FinishedTask> = (0..TASKS)
        .map(|i| sch::FinishedTask {
            task_id: format!("{i:064x}"),
            content_length: 96 << 20,
            piece_length: PIECE,
            piece_count: 24,
        })
        .collect();
    let host_id = |h: usize| format!("host-{h:04}-10.0.{}.{}", h / 256, h % 256);
    let batch = sch::AnnounceFinishedTasksRequest {
        host_id: host_id(0),
        tasks: tasks[..1000].to_vec(),
    };
    println!("one batch of 1,000 tasks: {} bytes", batch.encoded_len());
    let rss_before = rss_bytes();
    for h in 0..HOSTS {
        let host = Host {
            id: host_id(h),
            ip: "10.0.0.1".into(),
            ..Default::default()
        };
        announce(&mut client, host).await;
        let started = tokio::time::Instant::now();
        for chunk in tasks.chunks(1000) {
            let req = sch::AnnounceFinishedTasksRequest {
                host_id: host_id(h),
                tasks: chunk.to_vec(),
            };
            assert!(client.announce_finished_tasks(req).await.is_ok());
        }
        if h == 0 || h == HOSTS - 1 {
            println!(
                "host {h}: {TASKS} tasks announced in {:?}",
                started.elapsed()
            );
        }
    }
    let records = state.resources.peer_count();
    assert_eq!(records, TASKS * HOSTS);
    let grown = rss_bytes().saturating_sub(rss_before);
    println!(
        "{records} finished peers over {TASKS} tasks: resident memory +{} MiB, {} bytes a record (task included)",
        grown >> 20,
        grown / records as u64
    );
}
