//! In-process gRPC tests: a scheduler on 127.0.0.1:0 and simulated peers talking the real protocol.

use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_response::Response as Resp;
use dragonfly_proto::{Download, Host, HostType, Piece, SchedulerClient, TaskState};
use scheduler::SchedulerState;
use scheduler::config::SchedulerConfig;
use scheduler::resource::Resources;
use scheduler::seed::SeedTrigger;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use testkit::scheduler::InProcessScheduler;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const TASK: &str = "task-1";

#[derive(Clone)]
struct Cluster {
    client: SchedulerClient<Channel>,
    state: Arc<SchedulerState>,
    _server: Arc<InProcessScheduler>,
}

fn config(back_to_source_count: u32, retry_back_to_source_limit: u32) -> SchedulerConfig {
    let mut c = SchedulerConfig::default();
    c.scheduler.back_to_source_count = back_to_source_count;
    c.scheduler.retry_back_to_source_limit = retry_back_to_source_limit;
    c.scheduler.retry_limit = 5;
    c.scheduler.retry_interval = Duration::from_millis(10).into();
    c.seed_peer.enable = false;
    c
}

/// [`config`]`(1, 5)` with `scheduler.childLimit` at `n`.
fn with_child_limit(n: u32) -> SchedulerConfig {
    let mut c = config(1, 5);
    c.scheduler.child_limit = n;
    c
}

async fn start(config: SchedulerConfig) -> Cluster {
    start_with(SchedulerState::new(config)).await
}

async fn start_with(state: SchedulerState) -> Cluster {
    let server = InProcessScheduler::with_state(state).await;
    Cluster {
        client: server.client.clone(),
        state: server.state.clone(),
        _server: Arc::new(server),
    }
}

impl Cluster {
    async fn host(&mut self, id: &str, ip: &str) {
        self.host_of_type(id, ip, HostType::Normal).await;
    }

    async fn host_of_type(&mut self, id: &str, ip: &str, kind: HostType) {
        let mut host = Host {
            id: id.into(),
            ip: ip.into(),
            upload_port: 65002,
            download_port: 65004,
            ..Default::default()
        };
        host.set_type(kind);
        let req = sch::AnnounceHostRequest {
            host: Some(host),
            interval: None,
        };
        assert!(self.client.announce_host(req).await.is_ok());
    }

    /// Opens the peer's stream and registers it; returns the peer and the scheduler's first answer.
    async fn register(&mut self, host: &str, peer: &str) -> (SimPeer, Resp) {
        let (tx, rx) = mpsc::channel(16);
        let mut p = SimPeer {
            host: host.into(),
            peer: peer.into(),
            tx,
            rx: None,
        };
        p.send(sch::RegisterPeerRequest {
            download: Some(Download {
                url: "http://origin/file".into(),
                ..Default::default()
            }),
        })
        .await;
        let stream = match self.client.announce_peer(ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(e) => panic!("announce_peer: {e}"),
        };
        p.rx = Some(stream);
        let first = p.next().await;
        (p, first)
    }

    /// Announces hosts `h1` ..= `h{n}` on 127.0.0.2 and up.
    async fn hosts(&mut self, n: u8) {
        for i in 1..=n {
            self.host(&format!("h{i}"), &format!("127.0.0.{}", i + 1))
                .await;
        }
    }

    /// [`Self::register`], asserting the scheduler sends the peer to the source, and the peer
    /// saying it started there.
    async fn register_to_source(&mut self, host: &str, peer: &str) -> SimPeer {
        let (p, answer) = self.register(host, peer).await;
        assert!(is_back_to_source(&answer), "{peer}: {answer:?}");
        p.send(sch::DownloadPeerBackToSourceStartedRequest { description: None })
            .await;
        p
    }

    fn has_cycle(&self) -> bool {
        self.state
            .resources
            .tasks
            .get(TASK)
            .is_some_and(|t| t.dag.has_cycle())
    }
}

struct SimPeer {
    host: String,
    peer: String,
    tx: mpsc::Sender<sch::AnnouncePeerRequest>,
    rx: Option<Streaming<sch::AnnouncePeerResponse>>,
}

impl SimPeer {
    async fn send(&self, req: impl Into<sch::announce_peer_request::Request>) {
        let msg = sch::AnnouncePeerRequest::new(&self.host, TASK, &self.peer, req);
        assert!(self.tx.send(msg).await.is_ok());
    }

    async fn next(&mut self) -> Resp {
        let Some(rx) = self.rx.as_mut() else {
            panic!("not registered")
        };
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.message()).await;
        match msg {
            Ok(Ok(Some(sch::AnnouncePeerResponse { response: Some(r) }))) => r,
            other => panic!("{}: no answer: {other:?}", self.peer),
        }
    }

    async fn piece_from_source(&self, n: u32) {
        let piece = Piece {
            number: n,
            length: 4 << 20,
            offset: u64::from(n) * (4 << 20),
            ..Default::default()
        };
        self.send(sch::DownloadPieceBackToSourceFinishedRequest { piece: Some(piece) })
            .await;
    }

    async fn piece_from(&self, n: u32, parent: &str) {
        let piece = Piece {
            number: n,
            parent_id: parent.into(),
            ..Default::default()
        };
        self.send(sch::DownloadPieceFinishedRequest { piece: Some(piece) })
            .await;
    }

    async fn reschedule(&mut self, blocklist: &[&str]) -> Resp {
        self.send(sch::RescheduleRequest {
            candidate_parents_blocklist: blocklist.iter().map(|s| (*s).to_owned()).collect(),
            description: Some("parents failed".into()),
        })
        .await;
        self.next().await
    }
}

fn parent_ids(r: &Resp) -> Vec<String> {
    match r {
        Resp::NormalTaskResponse(n) => n.candidate_parents.iter().map(|p| p.id.clone()).collect(),
        other => panic!("expected parents, got {other:?}"),
    }
}

fn is_back_to_source(r: &Resp) -> bool {
    matches!(r, Resp::NeedBackToSourceResponse(_))
}

/// Waits until the scheduler has processed the peer's earlier messages.
/// A cluster of hosts `h1` ..= `h{hosts}` where `p1` on `h1` went to the source and holds
/// piece 0 (settled).
async fn p1_holds_piece_0(config: SchedulerConfig, hosts: u8) -> (Cluster, SimPeer) {
    let mut c = start(config).await;
    c.hosts(hosts).await;
    let p1 = c.register_to_source("h1", "p1").await;
    p1.piece_from_source(0).await;
    settle().await;
    (c, p1)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn first_peer_goes_to_source_and_feeds_the_second() {
    let (mut c, p1) = p1_holds_piece_0(config(1, 5), 2).await;

    let (_p2, answer) = c.register("h2", "p2").await;
    let Resp::NormalTaskResponse(normal) = &answer else {
        panic!("expected parents, got {answer:?}")
    };
    assert_eq!(normal.candidate_parents.len(), 1);
    let parent = &normal.candidate_parents[0];
    assert_eq!(parent.id, "p1");
    assert_eq!(parent.finished_piece_count, 1);
    let host = parent.host.clone().unwrap_or_default();
    assert_eq!(
        (host.ip.as_str(), host.upload_port, host.download_port),
        ("127.0.0.2", 65002, 65004)
    );

    p1.send(sch::DownloadPeerBackToSourceFinishedRequest {
        content_length: 8 << 20,
        piece_count: 2,
    })
    .await;
    settle().await;
    let task = c
        .client
        .stat_task(sch::StatTaskRequest {
            task_id: TASK.into(),
        })
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(task.peer_count, 2);
    assert!(task.has_available_peer);
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(
        (task.content_length, task.piece_count),
        (Some(8 << 20), Some(2))
    );
}

#[tokio::test]
async fn second_peer_waits_for_the_one_going_to_source() {
    let mut c = start(config(1, 5)).await;
    c.hosts(2).await;
    let (p1, first) = c.register("h1", "p1").await;
    assert!(is_back_to_source(&first));

    // p2 registers while p1 has nothing: the scheduler retries until p1 reports a piece.
    let register = tokio::spawn(async move {
        let mut c2 = c;
        let (_p2, answer) = c2.register("h2", "p2").await;
        answer
    });
    tokio::time::sleep(Duration::from_millis(25)).await;
    p1.piece_from_source(0).await;
    let answer = register.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parent_ids(&answer), vec!["p1"]);
}

#[tokio::test]
async fn blocklisted_parent_is_never_offered_again() {
    let mut c = start(config(2, 5)).await;
    c.hosts(3).await;
    let (p1, a1) = c.register("h1", "p1").await;
    let (p3, a3) = c.register("h3", "p3").await;
    assert!(is_back_to_source(&a1) && is_back_to_source(&a3));
    p1.piece_from_source(0).await;
    p3.piece_from_source(0).await;
    settle().await;

    let (mut p2, answer) = c.register("h2", "p2").await;
    let mut got = parent_ids(&answer);
    got.sort();
    assert_eq!(got, vec!["p1", "p3"]);

    // A corrupt piece from p1 blocklists it for p2.
    p2.send(sch::DownloadPieceFailedRequest {
        piece_number: 0,
        parent_id: "p1".into(),
        temporary: false,
        description: Some("crc32 mismatch".into()),
    })
    .await;
    for _ in 0..3 {
        let answer = p2.reschedule(&[]).await;
        assert_eq!(parent_ids(&answer), vec!["p3"]);
    }
    // With p3 blocklisted too, nobody is left: after the retries, back to source.
    let answer = p2.reschedule(&["p3"]).await;
    assert!(is_back_to_source(&answer), "{answer:?}");
}

#[tokio::test]
async fn reschedule_exhaustion_leads_back_to_source() {
    let mut c = start(config(1, 2)).await;
    c.hosts(2).await;
    let (p1, _) = c.register("h1", "p1").await;
    p1.piece_from_source(0).await;
    settle().await;
    let (mut p2, answer) = c.register("h2", "p2").await;
    assert_eq!(parent_ids(&answer), vec!["p1"]);
    let answer = p2.reschedule(&[]).await;
    assert_eq!(parent_ids(&answer), vec!["p1"]);
    let answer = p2.reschedule(&[]).await;
    assert!(is_back_to_source(&answer), "{answer:?}");
}

#[tokio::test]
async fn two_peers_never_feed_each_other() {
    let mut c = start(config(1, 5)).await;
    for (h, ip) in [
        ("h0", "127.0.0.2"),
        ("ha", "127.0.0.3"),
        ("hb", "127.0.0.4"),
    ] {
        c.host(h, ip).await;
    }
    let (p0, _) = c.register("h0", "p0").await;
    p0.piece_from_source(0).await;
    settle().await;

    let (mut pa, answer) = c.register("ha", "pa").await;
    assert_eq!(parent_ids(&answer), vec!["p0"]);
    pa.piece_from(0, "p0").await;
    settle().await;

    let (pb, answer) = c.register("hb", "pb").await;
    assert!(parent_ids(&answer).contains(&"pa".to_owned()));
    pb.piece_from(0, "pa").await;
    settle().await;

    // pa loses p0: pb has pieces, but pb is pa's child, so it must not become pa's parent.
    let answer = pa.reschedule(&["p0"]).await;
    if let Resp::NormalTaskResponse(n) = &answer {
        assert!(
            n.candidate_parents.iter().all(|p| p.id != "pb"),
            "{answer:?}"
        );
    }
    assert!(is_back_to_source(&answer), "{answer:?}");
    assert!(!c.has_cycle());
}

#[tokio::test]
async fn leaves_and_unknown_messages() {
    let mut c = start(config(1, 5)).await;
    c.hosts(1).await;
    let (p1, _) = c.register("h1", "p1").await;
    // An empty oneof (a newer peer's message) is ignored and the stream stays up.
    assert!(
        p1.tx
            .send(sch::AnnouncePeerRequest {
                host_id: "h1".into(),
                task_id: TASK.into(),
                peer_id: "p1".into(),
                request: None,
            })
            .await
            .is_ok()
    );
    p1.piece_from_source(0).await;
    settle().await;
    let peer = c
        .client
        .stat_peer(sch::StatPeerRequest {
            host_id: "h1".into(),
            task_id: TASK.into(),
            peer_id: "p1".into(),
        })
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(peer.finished_piece_count, 1);

    assert!(
        c.client
            .leave_peer(sch::LeavePeerRequest {
                host_id: "h1".into(),
                task_id: TASK.into(),
                peer_id: "p1".into(),
            })
            .await
            .is_ok()
    );
    let gone = c
        .client
        .stat_peer(sch::StatPeerRequest {
            host_id: "h1".into(),
            task_id: TASK.into(),
            peer_id: "p1".into(),
        })
        .await;
    assert_eq!(gone.err().map(|s| s.code()), Some(tonic::Code::NotFound));

    let (_p2, _) = c.register("h1", "p2").await;
    assert!(
        c.client
            .leave_host(sch::LeaveHostRequest {
                host_id: "h1".into()
            })
            .await
            .is_ok()
    );
    assert_eq!(c.state.resources.peer_count(), 0);
    assert!(c.state.resources.hosts.is_empty());
}

/// Records which seed was asked for which task.
#[derive(Default)]
struct RecordingTrigger(Mutex<Vec<(String, String)>>);

impl SeedTrigger for RecordingTrigger {
    fn trigger(&self, seed: &Host, task_id: &str, _: &Download, _: &Arc<Resources>) -> bool {
        if let Ok(mut calls) = self.0.lock() {
            calls.push((seed.id.clone(), task_id.to_owned()));
        }
        true
    }
}

#[tokio::test]
async fn seed_peer_is_triggered_and_offered_while_it_downloads() {
    let mut cfg = config(1, 5);
    cfg.seed_peer.enable = true;
    cfg.scheduler.retry_limit = 50;
    let trigger = Arc::new(RecordingTrigger::default());
    let mut c = start_with(SchedulerState::with_seed_trigger(cfg, trigger.clone())).await;
    c.host_of_type("seed", "127.0.0.9", HostType::Seed).await;
    c.hosts(1).await;

    let mut seed_client = c.clone();
    // p1 waits: the scheduler asks the seed instead of sending p1 to the origin.
    let waiting = tokio::spawn(async move {
        let mut c1 = c;
        let (_p1, answer) = c1.register("h1", "p1").await;
        (c1, answer)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls = trigger.0.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(calls, vec![("seed".to_owned(), TASK.to_owned())]);
    assert!(!waiting.is_finished());

    // The seed daemon registers (as a triggered seed would), goes to source, and is offered at once.
    let (seed, answer) = seed_client.register("seed", "seed-peer").await;
    assert!(is_back_to_source(&answer), "{answer:?}");
    seed.send(sch::DownloadPeerBackToSourceStartedRequest { description: None })
        .await;
    let (_, answer) = waiting.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parent_ids(&answer), vec!["seed-peer"]);
}

#[tokio::test]
async fn a_source_peer_that_vanishes_leaves_the_graph_and_a_child_takes_over_the_source() {
    let mut c = start(config(1, 5)).await;
    c.hosts(3).await;

    let p1 = c.register_to_source("h1", "p1").await;
    p1.piece_from_source(0).await;
    p1.piece_from_source(1).await;
    settle().await;
    let (p2, answer) = c.register("h2", "p2").await;
    assert_eq!(parent_ids(&answer), vec!["p1"]);
    p2.piece_from(0, "p1").await;
    settle().await;

    // p1 crashes: its stream ends without a result. It must not be offered any more.
    drop(p1);
    settle().await;
    let state = c
        .state
        .resources
        .tasks
        .get(TASK)
        .and_then(|t| t.peers.get("p1").map(|p| p.state()));
    assert_eq!(state, Some(scheduler::resource::PeerState::Failed));

    // p3 arrives: p2 holds a piece, but nobody fetches the rest any more, so p3 is sent to the
    // source instead of joining a swarm that would stall.
    let p3 = c.register_to_source("h3", "p3").await;
    p3.piece_from_source(1).await;
    settle().await;

    // Now p2's reschedule gets p3 (fetching from the source), never the dead p1.
    let mut p2 = p2;
    let answer = p2.reschedule(&["p1"]).await;
    assert_eq!(parent_ids(&answer), vec!["p3"]);
}

#[tokio::test]
async fn a_parent_feeds_at_most_child_limit_children_and_the_swarm_grows_as_a_tree() {
    let (mut c, _p1) = p1_holds_piece_0(with_child_limit(2), 5).await;

    let (p2, a2) = c.register("h2", "p2").await;
    let (_p3, a3) = c.register("h3", "p3").await;
    assert_eq!(parent_ids(&a2), vec!["p1"]);
    assert_eq!(parent_ids(&a3), vec!["p1"]);

    // p1 feeds two children: the next peer gets one of them, not p1.
    p2.piece_from(0, "p1").await;
    settle().await;
    let (_p4, a4) = c.register("h4", "p4").await;
    assert_eq!(parent_ids(&a4), vec!["p2"]);

    // p2 finishes: it needs p1 no more, so p1 has a free child slot again.
    p2.send(sch::DownloadPeerFinishedRequest {
        content_length: 8 << 20,
        piece_count: 2,
    })
    .await;
    settle().await;
    let (_p5, a5) = c.register("h5", "p5").await;
    let ids = parent_ids(&a5);
    assert!(ids.contains(&"p1".to_string()), "{ids:?}");
}

#[tokio::test]
async fn a_full_parent_is_still_better_than_the_origin_on_the_last_attempt() {
    let (mut c, _p1) = p1_holds_piece_0(with_child_limit(1), 3).await;
    let (_p2, a2) = c.register("h2", "p2").await;
    assert_eq!(parent_ids(&a2), vec!["p1"]);
    // p2 has nothing yet and p1 is full: p3 waits, then gets p1 anyway (not the origin).
    let (_p3, a3) = c.register("h3", "p3").await;
    assert_eq!(parent_ids(&a3), vec!["p1"]);
}

#[tokio::test]
async fn more_parents_adds_parents_without_counting_against_the_peer() {
    let (mut c, _p1) = p1_holds_piece_0(config(1, 1), 3).await;
    let (mut p2, a2) = c.register("h2", "p2").await;
    assert_eq!(parent_ids(&a2), vec!["p1"]);

    // Nothing new to offer: no answer at all (the peer does not wait for one).
    p2.send(sch::MoreParentsRequest {}).await;
    settle().await;
    let (p3, a3) = c.register("h3", "p3").await;
    assert_eq!(parent_ids(&a3), vec!["p1"]);
    p3.piece_from(0, "p1").await;
    settle().await;

    // p3 now holds a piece: p2 gets it in addition to p1, and even with
    // retryBackToSourceLimit 1 the request is not a reschedule.
    p2.send(sch::MoreParentsRequest {}).await;
    assert_eq!(parent_ids(&p2.next().await), vec!["p3"]);
    p2.send(sch::MoreParentsRequest {}).await;
    settle().await;
    let parents: Vec<String> = c
        .state
        .resources
        .tasks
        .get(TASK)
        .map(|t| t.dag.parents_of("p2").map(str::to_string).collect())
        .unwrap_or_default();
    let mut parents = parents;
    parents.sort();
    assert_eq!(parents, vec!["p1", "p3"]);
}
