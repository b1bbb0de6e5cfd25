//! What one peer can cost the scheduler is bounded: a peer sending numbers the task cannot have
//! (piece 4294967295, a piece count of 2^32-1, a blocklist of thousands) gets its stream closed
//! and the scheduler stores none of it (each message kind sent with extreme values), and a peer
//! whose stream stays open does not hold a stopping scheduler for longer than its grace period.

use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_request::Request as Req;
use dragonfly_proto::{Download, Host, Piece, SchedulerClient};
use scheduler::config::SchedulerConfig;
use std::time::Duration;
use testkit::scheduler::InProcessScheduler;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const TASK: &str = "bounds-task";

fn extreme_messages() -> Vec<(&'static str, Req)> {
    let piece = |n| Piece {
        number: n,
        length: 4 << 20,
        ..Default::default()
    };
    vec![
        (
            "piece from source",
            sch::DownloadPieceBackToSourceFinishedRequest {
                piece: Some(piece(u32::MAX)),
            }
            .into(),
        ),
        (
            "piece from a parent",
            sch::DownloadPieceFinishedRequest {
                piece: Some(Piece {
                    parent_id: "p".repeat(1 << 20),
                    ..piece(3)
                }),
            }
            .into(),
        ),
        (
            "piece failed",
            sch::DownloadPieceFailedRequest {
                piece_number: u32::MAX,
                parent_id: "x".into(),
                temporary: false,
                description: None,
            }
            .into(),
        ),
        (
            "peer finished",
            sch::DownloadPeerFinishedRequest {
                content_length: u64::MAX,
                piece_count: u32::MAX,
            }
            .into(),
        ),
        (
            "peer finished from source",
            sch::DownloadPeerBackToSourceFinishedRequest {
                content_length: 10 << 20,
                piece_count: 1 << 30,
            }
            .into(),
        ),
        (
            "reschedule",
            sch::RescheduleRequest {
                candidate_parents_blocklist: (0..5000).map(|i| format!("parent-{i}")).collect(),
                description: None,
            }
            .into(),
        ),
    ]
}

/// Opens `peer`'s stream (host `h`) and sends its registration for [`TASK`] with
/// `piece_length`: the sender for more messages and the scheduler's answers.
async fn register(
    client: &mut SchedulerClient<Channel>,
    peer: &str,
    piece_length: Option<u64>,
) -> (
    mpsc::Sender<sch::AnnouncePeerRequest>,
    Streaming<sch::AnnouncePeerResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    let register = sch::RegisterPeerRequest {
        download: Some(Download {
            url: "http://origin/file".into(),
            piece_length,
            ..Default::default()
        }),
    };
    tx.send(sch::AnnouncePeerRequest::new("h", TASK, peer, register))
        .await
        .unwrap();
    let stream = client
        .announce_peer(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_close_the_stream_and_are_not_stored() {
    let mut config = SchedulerConfig::default();
    config.seed_peer.enable = false;
    let server = InProcessScheduler::start(config).await;
    let (state, mut client) = (server.state.clone(), server.client.clone());
    let host = Host {
        id: "h".into(),
        ip: "127.0.0.1".into(),
        upload_port: 65002,
        ..Default::default()
    };
    client
        .announce_host(sch::AnnounceHostRequest {
            host: Some(host),
            interval: None,
        })
        .await
        .unwrap();
    for (i, (what, msg)) in extreme_messages().into_iter().enumerate() {
        let peer = format!("peer-{i}");
        let (tx, mut stream) = register(&mut client, &peer, Some(4 << 20)).await;
        let first = stream.message().await;
        assert!(
            matches!(first, Ok(Some(_))),
            "{what}: registered: {first:?}"
        );
        tx.send(sch::AnnouncePeerRequest::new("h", TASK, &peer, msg))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        let status = answer.expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(&peer),
            "{what}: {}",
            status.message()
        );
    }
    let task = state.resources.tasks.get(TASK).expect("the task exists");
    assert_eq!(task.piece_count, None, "no count was taken from a liar");
    for p in task.peers.values() {
        assert!(
            p.finished_pieces.len() <= 1,
            "{}: bitmap of {} bytes",
            p.id,
            p.finished_pieces.len()
        );
        assert!(
            p.blocklist.is_empty(),
            "{}: {} blocklisted",
            p.id,
            p.blocklist.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_scheduler_closes_open_peer_streams_after_the_grace_period() {
    let mut server = InProcessScheduler::start(SchedulerConfig::default()).await;
    let mut client = server.client.clone();
    // A peer in the middle of a download: registered, its stream open, sending nothing more.
    let (tx, mut stream) = register(&mut client, "p", None).await;
    assert!(matches!(stream.message().await, Ok(Some(_))));
    let server = server.stop();
    // Before, the stop waited for this stream for as long as it stayed open.
    let ended = tokio::time::timeout(
        scheduler::server::SHUTDOWN_GRACE + Duration::from_secs(10),
        server,
    )
    .await;
    assert!(
        ended.is_ok(),
        "the scheduler stopped although a peer stream stayed open"
    );
    drop(tx);
}
