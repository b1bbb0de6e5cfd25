//! End-to-end tests of the generated tonic clients and servers over real TCP on 127.0.0.1:0.

use std::pin::Pin;
use std::time::Duration;

use dragonfly_proto::common::v1::{Piece, Task, TaskState};
use dragonfly_proto::dfdaemon::v1::{
    DeleteTaskRequest, DownloadTaskRequest, DownloadTaskResponse, StatTaskRequest,
    SyncPiecesRequest, SyncPiecesResponse,
};
use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_request::Request;
use dragonfly_proto::scheduler::v1::announce_peer_response::Response;
use dragonfly_proto::{
    DfdaemonUpload, DfdaemonUploadClient, DfdaemonUploadServer, Scheduler, SchedulerClient,
    SchedulerServer,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::{Code, Request as TonicRequest, Response as TonicResponse, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const TASK: &str = "task-abc";
const PIECE_LEN: u64 = 4 << 20;
const CRCS: [u32; 3] = [0x1111_1111, 0x0000_0000, 0xcbf4_3926];

fn stored_piece(n: u32) -> Piece {
    Piece {
        number: n,
        offset: u64::from(n) * PIECE_LEN,
        length: PIECE_LEN,
        crc32: Some(CRCS[n as usize]),
        ..Default::default()
    }
}

/// A parent that holds piece 0 now and "downloads" pieces 1 and 2 a little later.
struct Parent;

#[tonic::async_trait]
impl DfdaemonUpload for Parent {
    type SyncPiecesStream = BoxStream<SyncPiecesResponse>;
    type DownloadTaskStream = BoxStream<DownloadTaskResponse>;

    async fn sync_pieces(
        &self,
        request: TonicRequest<SyncPiecesRequest>,
    ) -> Result<TonicResponse<Self::SyncPiecesStream>, Status> {
        let req = request.into_inner();
        if req.task_id != TASK {
            return Err(Status::not_found(format!("task {} not found", req.task_id)));
        }
        let wanted: Vec<u32> = if req.interested_piece_numbers.is_empty() {
            vec![0, 1, 2]
        } else {
            req.interested_piece_numbers
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for n in wanted.into_iter().filter(|n| *n < 3) {
                if n > 0 {
                    // Pieces 1 and 2 arrive later: the stream pushes them as they land.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let msg = SyncPiecesResponse {
                    piece: Some(stored_piece(n)),
                    content_length: Some(3 * PIECE_LEN),
                    piece_count: Some(3),
                    piece_length: Some(PIECE_LEN),
                    ..Default::default()
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return; // child went away
                }
            }
        });
        Ok(TonicResponse::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn download_task(
        &self,
        _request: TonicRequest<DownloadTaskRequest>,
    ) -> Result<TonicResponse<Self::DownloadTaskStream>, Status> {
        Err(Status::unimplemented("not a seed peer"))
    }

    async fn stat_task(
        &self,
        request: TonicRequest<StatTaskRequest>,
    ) -> Result<TonicResponse<Task>, Status> {
        let id = request.into_inner().task_id;
        if id != TASK {
            return Err(Status::not_found(id));
        }
        Ok(TonicResponse::new(Task {
            id,
            content_length: Some(3 * PIECE_LEN),
            piece_length: Some(PIECE_LEN),
            piece_count: Some(3),
            state: TaskState::Running as i32,
            pieces: vec![stored_piece(0)],
            ..Default::default()
        }))
    }

    async fn delete_task(
        &self,
        request: TonicRequest<DeleteTaskRequest>,
    ) -> Result<TonicResponse<()>, Status> {
        if request.into_inner().task_id == TASK {
            Ok(TonicResponse::new(()))
        } else {
            Err(Status::not_found("no such task"))
        }
    }
}

/// Serves `routes` on 127.0.0.1:0; returns the endpoint, a shutdown trigger and the server task.
async fn serve(routes: Routes) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });
    (format!("http://{addr}"), stop_tx, handle)
}

#[tokio::test]
async fn sync_pieces_streams_three_pieces_end_to_end() {
    let (endpoint, stop, server) = serve(Routes::new(DfdaemonUploadServer::new(Parent))).await;
    let mut client = DfdaemonUploadClient::connect(endpoint).await.unwrap();

    let mut stream = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child-host".into(),
            task_id: TASK.into(),
            interested_piece_numbers: vec![],
        })
        .await
        .expect("sync_pieces")
        .into_inner();

    let mut got = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream item") {
        assert_eq!(msg.content_length, Some(3 * PIECE_LEN));
        assert_eq!(msg.piece_count, Some(3));
        got.push(msg.piece.expect("piece set"));
    }
    assert_eq!(got.len(), 3, "stream ends OK after the interested pieces");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(*p, stored_piece(i as u32));
        assert_eq!(p.offset, i as u64 * PIECE_LEN);
        assert!(p.crc32_matches(CRCS[i]));
    }
    // crc32 0 survives the trip as Some(0), not "missing".
    assert_eq!(got[1].crc32, Some(0));
    assert_eq!(got[2].crc32_digest().as_deref(), Some("crc32:cbf43926"));

    // Interested subset only.
    let subset: Vec<u32> = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child-host".into(),
            task_id: TASK.into(),
            interested_piece_numbers: vec![2],
        })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().piece.unwrap().number)
        .collect()
        .await;
    assert_eq!(subset, vec![2]);

    // Errors are gRPC statuses.
    let err = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child-host".into(),
            task_id: "nope".into(),
            interested_piece_numbers: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Unary calls, including a google.protobuf.Empty (unit) response.
    let task = client
        .stat_task(StatTaskRequest {
            task_id: TASK.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.piece_count, Some(3));
    assert_eq!(task.state(), TaskState::Running);
    assert_eq!(task.pieces, vec![stored_piece(0)]);
    client
        .delete_task(DeleteTaskRequest {
            task_id: TASK.into(),
        })
        .await
        .expect("delete");

    // An RPC a server chooses not to serve is UNIMPLEMENTED; callers fall back (rule 7).
    let err = client
        .download_task(DownloadTaskRequest { download: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    stop.send(()).unwrap();
    server.await.unwrap();
}

/// A minimal scheduler: parents on register, back-to-source on reschedule, ignores unknown requests.
struct MiniScheduler;

#[tonic::async_trait]
impl Scheduler for MiniScheduler {
    type AnnouncePeerStream = BoxStream<sch::AnnouncePeerResponse>;

    async fn announce_host(
        &self,
        _: TonicRequest<sch::AnnounceHostRequest>,
    ) -> Result<TonicResponse<()>, Status> {
        Ok(TonicResponse::new(()))
    }

    async fn leave_host(
        &self,
        _: TonicRequest<sch::LeaveHostRequest>,
    ) -> Result<TonicResponse<()>, Status> {
        Ok(TonicResponse::new(()))
    }

    async fn announce_peer(
        &self,
        request: TonicRequest<Streaming<sch::AnnouncePeerRequest>>,
    ) -> Result<TonicResponse<Self::AnnouncePeerStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut finished_pieces = Vec::new();
            while let Some(Ok(msg)) = inbound.next().await {
                let reply: Option<sch::AnnouncePeerResponse> = match msg.request {
                    Some(Request::RegisterPeerRequest(_)) => {
                        Some(sch::AnnouncePeerResponse::new(sch::NormalTaskResponse {
                            candidate_parents: vec![sch::CandidateParent {
                                id: "seed-peer".into(),
                                finished_piece_count: 3,
                                ..Default::default()
                            }],
                            content_length: Some(3 * PIECE_LEN),
                            piece_length: Some(PIECE_LEN),
                            piece_count: Some(3),
                        }))
                    }
                    Some(Request::RescheduleRequest(r)) => Some(sch::AnnouncePeerResponse::new(
                        sch::NeedBackToSourceResponse {
                            description: Some(format!(
                                "blocklisted {}",
                                r.candidate_parents_blocklist.join(",")
                            )),
                        },
                    )),
                    Some(Request::DownloadPieceFinishedRequest(p)) => {
                        dragonfly_proto::bitmap::set(&mut finished_pieces, p.piece.unwrap().number);
                        None
                    }
                    Some(Request::DownloadPeerFinishedRequest(f)) => {
                        // Acknowledge only if every reported piece was recorded; otherwise fail the stream.
                        let recorded = dragonfly_proto::bitmap::count(&finished_pieces);
                        if recorded != f.piece_count {
                            let _ = tx
                                .send(Err(Status::internal(format!("recorded {recorded} pieces"))))
                                .await;
                            return;
                        }
                        Some(sch::AnnouncePeerResponse::new(sch::EmptyTaskResponse {}))
                    }
                    // Unknown (newer) variant: ignore, keep the stream alive (rule 5).
                    None => None,
                    Some(_) => None,
                };
                if let Some(reply) = reply
                    && tx.send(Ok(reply)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(TonicResponse::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat_peer(
        &self,
        _: TonicRequest<sch::StatPeerRequest>,
    ) -> Result<TonicResponse<dragonfly_proto::Peer>, Status> {
        Err(Status::not_found("peer"))
    }

    async fn leave_peer(
        &self,
        _: TonicRequest<sch::LeavePeerRequest>,
    ) -> Result<TonicResponse<()>, Status> {
        Ok(TonicResponse::new(()))
    }

    async fn stat_task(
        &self,
        _: TonicRequest<sch::StatTaskRequest>,
    ) -> Result<TonicResponse<Task>, Status> {
        Err(Status::not_found("task"))
    }

    async fn delete_task(
        &self,
        _: TonicRequest<sch::DeleteTaskRequest>,
    ) -> Result<TonicResponse<()>, Status> {
        Ok(TonicResponse::new(()))
    }

    async fn announce_finished_tasks(
        &self,
        _: TonicRequest<sch::AnnounceFinishedTasksRequest>,
    ) -> Result<TonicResponse<sch::AnnounceFinishedTasksResponse>, Status> {
        // A scheduler older than the RPC, as a daemon may meet one.
        Err(Status::unimplemented("AnnounceFinishedTasks"))
    }
}

#[tokio::test]
async fn announce_peer_bidirectional_stream() {
    let (endpoint, stop, server) = serve(Routes::new(SchedulerServer::new(MiniScheduler))).await;
    let mut client = SchedulerClient::connect(endpoint).await.unwrap();

    let (tx, rx) = mpsc::channel::<sch::AnnouncePeerRequest>(8);
    let msg = |r: Request| sch::AnnouncePeerRequest::new("host-1", TASK, "peer-1", r);
    tx.send(msg(sch::RegisterPeerRequest { download: None }.into()))
        .await
        .unwrap();
    let mut responses = client
        .announce_peer(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    match responses.message().await.unwrap().and_then(|r| r.response) {
        Some(Response::NormalTaskResponse(n)) => {
            assert_eq!(n.candidate_parents.len(), 1);
            assert_eq!(n.candidate_parents[0].id, "seed-peer");
            assert_eq!(n.piece_count, Some(3));
        }
        other => panic!("expected NormalTaskResponse, got {other:?}"),
    }

    // A message whose oneof is unset (what an older scheduler sees for a newer variant) is ignored.
    tx.send(sch::AnnouncePeerRequest {
        host_id: "host-1".into(),
        task_id: TASK.into(),
        peer_id: "peer-1".into(),
        request: None,
    })
    .await
    .unwrap();

    tx.send(msg(sch::RescheduleRequest {
        candidate_parents_blocklist: vec!["seed-peer".into()],
        description: None,
    }
    .into()))
        .await
        .unwrap();
    match responses.message().await.unwrap().and_then(|r| r.response) {
        Some(Response::NeedBackToSourceResponse(n)) => {
            assert_eq!(n.description.as_deref(), Some("blocklisted seed-peer"))
        }
        other => panic!("expected NeedBackToSourceResponse, got {other:?}"),
    }

    for n in 0..3 {
        tx.send(msg(sch::DownloadPieceBackToSourceFinishedRequest {
            piece: Some(stored_piece(n)),
        }
        .into()))
            .await
            .unwrap();
        tx.send(msg(sch::DownloadPieceFinishedRequest {
            piece: Some(stored_piece(n)),
        }
        .into()))
            .await
            .unwrap();
    }
    tx.send(msg(sch::DownloadPeerFinishedRequest {
        content_length: 3 * PIECE_LEN,
        piece_count: 3,
    }
    .into()))
        .await
        .unwrap();
    drop(tx); // half-close
    match responses.message().await.unwrap().and_then(|r| r.response) {
        Some(Response::EmptyTaskResponse(_)) => {}
        other => panic!("expected the end marker, got {other:?}"),
    }
    assert!(
        responses.message().await.unwrap().is_none(),
        "server ends the stream"
    );

    stop.send(()).unwrap();
    server.await.unwrap();
}
