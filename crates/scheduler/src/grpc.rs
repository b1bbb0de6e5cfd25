//! The `Scheduler` gRPC service as served: the generated router, except that AnnouncePeer (one
//! long-lived stream per downloading peer) gets small codec buffers.
//!
//! tonic gives each RPC an 8 KiB encode and an 8 KiB decode buffer for its whole life: with 10,000
//! peers downloading that is 160 MiB for messages of a few hundred bytes. Small buffers still grow
//! (in steps of their size) for a bigger message.

use crate::service::SchedulerService;
use dragonfly_proto::scheduler::v1::{AnnouncePeerRequest, AnnouncePeerResponse};
use dragonfly_proto::{Scheduler, SchedulerServer};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic_prost::{ProstDecoder, ProstEncoder};

const ANNOUNCE_PEER_PATH: &str = "/dragonfly.scheduler.v1.Scheduler/AnnouncePeer";

/// Initial size and growth step of AnnouncePeer's buffers (its messages are ~100 to ~1000 bytes).
pub const ANNOUNCE_PEER_BUFFER: usize = 512;

/// tonic's default: encoded replies are flushed once this many bytes are pending.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The service to add to a tonic server.
#[derive(Debug, Clone)]
pub struct SchedulerGrpc {
    generated: SchedulerServer<SchedulerService>,
    service: SchedulerService,
}

impl SchedulerGrpc {
    /// Serves `service`.
    pub fn new(service: SchedulerService) -> Self {
        SchedulerGrpc {
            generated: SchedulerServer::new(service.clone()),
            service,
        }
    }
}

impl NamedService for SchedulerGrpc {
    const NAME: &'static str = <SchedulerServer<SchedulerService> as NamedService>::NAME;
}

impl Service<http::Request<tonic::body::Body>> for SchedulerGrpc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != ANNOUNCE_PEER_PATH {
            return self.generated.call(req);
        }
        let method = AnnouncePeer(self.service.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SmallBuffers);
            Ok(grpc.streaming(method, req).await)
        })
    }
}

/// AnnouncePeer as a tonic streaming method.
struct AnnouncePeer(SchedulerService);

impl tonic::server::StreamingService<AnnouncePeerRequest> for AnnouncePeer {
    type Response = AnnouncePeerResponse;
    type ResponseStream = <SchedulerService as Scheduler>::AnnouncePeerStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<AnnouncePeerRequest>>,
    ) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.announce_peer(request).await })
    }
}

/// The prost codec of AnnouncePeer with [`ANNOUNCE_PEER_BUFFER`]-byte buffers.
struct SmallBuffers;

impl SmallBuffers {
    fn settings() -> BufferSettings {
        BufferSettings::new(ANNOUNCE_PEER_BUFFER, YIELD_THRESHOLD)
    }
}

impl Codec for SmallBuffers {
    type Encode = AnnouncePeerResponse;
    type Decode = AnnouncePeerRequest;
    type Encoder = ProstEncoder<AnnouncePeerResponse>;
    type Decoder = ProstDecoder<AnnouncePeerRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Self::settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(Self::settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulerConfig;
    use crate::{SchedulerState, serve};
    use dragonfly_proto::scheduler::v1 as sch;
    use dragonfly_proto::scheduler::v1::announce_peer_response::Response as Resp;
    use dragonfly_proto::{Download, Host, Piece, SchedulerClient};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;

    /// Opens a peer's stream with a RegisterPeerRequest carrying `download`; returns its sender
    /// and the first answer.
    async fn register(
        client: &mut SchedulerClient<tonic::transport::Channel>,
        host: &str,
        peer: &str,
        download: Download,
    ) -> (mpsc::Sender<sch::AnnouncePeerRequest>, Resp) {
        let (tx, rx) = mpsc::channel(8);
        let msg = sch::AnnouncePeerRequest::new(
            host,
            "t",
            peer,
            sch::RegisterPeerRequest {
                download: Some(download),
            },
        );
        assert!(tx.send(msg).await.is_ok());
        let mut stream = match client.announce_peer(ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(e) => panic!("announce_peer: {e}"),
        };
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Ok(Ok(Some(sch::AnnouncePeerResponse { response: Some(r) }))) => (tx, r),
            other => panic!("{peer}: no answer: {other:?}"),
        }
    }

    #[tokio::test]
    async fn announce_peer_messages_larger_than_its_buffers_pass_both_ways() {
        let mut config = SchedulerConfig::default();
        config.seed_peer.enable = false;
        config.scheduler.retry_interval = Duration::from_millis(10).into();
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (_stop, stopped) = oneshot::channel::<()>();
        let state = Arc::new(SchedulerState::new(config));
        tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let mut client = match SchedulerClient::connect(format!("http://{addr}")).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        // The parent's host has a 16 KiB location, so an answer naming it is ~32x the buffer.
        for (id, location) in [("h1", "x".repeat(16 << 10)), ("h2", String::new())] {
            let host = Host {
                id: id.into(),
                ip: "127.0.0.2".into(),
                location,
                ..Default::default()
            };
            let req = sch::AnnounceHostRequest {
                host: Some(host),
                interval: None,
            };
            assert!(client.announce_host(req).await.is_ok());
        }
        let (p1, first) = register(&mut client, "h1", "p1", Download::default()).await;
        assert!(
            matches!(first, Resp::NeedBackToSourceResponse(_)),
            "{first:?}"
        );
        let piece = Piece {
            number: 0,
            length: 4 << 20,
            ..Default::default()
        };
        let msg = sch::AnnouncePeerRequest::new(
            "h1",
            "t",
            "p1",
            sch::DownloadPieceBackToSourceFinishedRequest { piece: Some(piece) },
        );
        assert!(p1.send(msg).await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;

        // A 64 KiB request (one big origin header) gets the big answer.
        let mut download = Download::default();
        download
            .request_header
            .insert("cookie".into(), "y".repeat(64 << 10));
        let (_p2, answer) = register(&mut client, "h2", "p2", download).await;
        let Resp::NormalTaskResponse(normal) = answer else {
            panic!("expected parents, got {answer:?}")
        };
        assert_eq!(normal.candidate_parents.len(), 1);
        let location = normal.candidate_parents[0]
            .host
            .as_ref()
            .map(|h| h.location.len());
        assert_eq!(location, Some(16 << 10));
        const { assert!(ANNOUNCE_PEER_BUFFER < 16 << 10) };
    }
}
