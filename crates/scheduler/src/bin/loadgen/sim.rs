//! The simulated side: connections, one peer's AnnouncePeer stream, hosts, the scheduler's RSS and
//! the latency tally.

use anyhow::{Context, bail};
use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_response::Response as Resp;
use dragonfly_proto::{Download, Host, Piece, SchedulerClient, TaskState};
use rand::Rng;
use rand::seq::IndexedRandom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Piece length of every simulated task.
const PIECE_LENGTH: u64 = 4 << 20;

/// Clients over `n` separate HTTP/2 connections.
pub struct Conns {
    pub clients: Vec<SchedulerClient<Channel>>,
    pub next: AtomicUsize,
}

impl Conns {
    pub async fn connect(addr: &str, n: usize) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("bad --addr {addr:?} (want http://host:port)"))?
            .tcp_nodelay(true);
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let channel = endpoint.connect().await.with_context(|| {
                format!("cannot connect to the scheduler at {addr} (is it running?)")
            })?;
            clients.push(SchedulerClient::new(channel));
        }
        Ok(Conns {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The next client, round robin.
    pub fn client(&self) -> SchedulerClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }
}

/// The scheduler's memory, from `/proc/PID/status`.
pub struct Rss {
    pub pid: u32,
}

impl Rss {
    /// (VmRSS, VmHWM) in KiB.
    pub fn read(&self) -> anyhow::Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path} (is the scheduler still running?)"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// The pid of the only process whose name is `scheduler`.
pub fn find_scheduler_pid() -> anyhow::Result<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "scheduler")
        {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no process named scheduler found; pass --scheduler-pid"),
        many => bail!("several scheduler processes {many:?}; pass --scheduler-pid"),
    }
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One simulated peer's AnnouncePeer stream.
pub struct SimPeer {
    pub host: String,
    pub task: String,
    pub peer: String,
    tx: mpsc::Sender<sch::AnnouncePeerRequest>,
    rx: Streaming<sch::AnnouncePeerResponse>,
}

/// What the scheduler answered first, and how long it took.
pub struct Registered {
    pub peer: SimPeer,
    pub answer: Resp,
    pub took: Duration,
}

impl SimPeer {
    /// Opens the stream with a RegisterPeerRequest and waits for the first answer.
    pub async fn register(
        mut client: SchedulerClient<Channel>,
        host: &str,
        task: &str,
        peer: &str,
    ) -> anyhow::Result<Registered> {
        let (tx, rx) = mpsc::channel(32);
        let download = Download {
            url: format!("http://origin.loadgen.invalid/{task}"),
            piece_length: Some(PIECE_LENGTH),
            ..Default::default()
        };
        let start = Instant::now();
        tx.send(sch::AnnouncePeerRequest::new(
            host,
            task,
            peer,
            sch::RegisterPeerRequest {
                download: Some(download),
            },
        ))
        .await
        .context("stream closed before registering")?;
        let mut stream = client
            .announce_peer(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("AnnouncePeer of {peer} refused"))?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .with_context(|| format!("{peer}: no answer in 30s"))?
            .with_context(|| format!("{peer}: stream failed"))?;
        let took = start.elapsed();
        let Some(sch::AnnouncePeerResponse {
            response: Some(answer),
        }) = first
        else {
            bail!("{peer}: stream ended without an answer");
        };
        Ok(Registered {
            peer: SimPeer {
                host: host.to_owned(),
                task: task.to_owned(),
                peer: peer.to_owned(),
                tx,
                rx: stream,
            },
            answer,
            took,
        })
    }

    /// Sends one stream message of this peer.
    pub async fn send(
        &self,
        req: impl Into<sch::announce_peer_request::Request>,
    ) -> anyhow::Result<()> {
        let msg = sch::AnnouncePeerRequest::new(&self.host, &self.task, &self.peer, req);
        self.tx
            .send(msg)
            .await
            .with_context(|| format!("{}: stream closed", self.peer))
    }

    /// Reports `pieces` as fetched from the origin, then the whole download as finished.
    pub async fn back_to_source(&self, pieces: u32) -> anyhow::Result<()> {
        self.send(sch::DownloadPeerBackToSourceStartedRequest { description: None })
            .await?;
        for n in 0..pieces {
            let piece = piece(n, "");
            self.send(sch::DownloadPieceBackToSourceFinishedRequest { piece: Some(piece) })
                .await?;
        }
        self.send(sch::DownloadPeerBackToSourceFinishedRequest {
            content_length: u64::from(pieces) * PIECE_LENGTH,
            piece_count: pieces,
        })
        .await
    }

    /// Reports `count` random pieces out of `pieces` as fetched from `parents`.
    pub async fn pieces_from(
        &self,
        parents: &[String],
        pieces: u32,
        count: u32,
    ) -> anyhow::Result<()> {
        self.send(sch::DownloadPeerStartedRequest {}).await?;
        let numbers: Vec<u32> = {
            let mut rng = rand::rng();
            let mut all: Vec<u32> = (0..pieces).collect();
            let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(
                all.as_mut_slice(),
                &mut rng,
                count.min(pieces) as usize,
            );
            chosen.to_vec()
        };
        for n in numbers {
            let parent = parents
                .choose(&mut rand::rng())
                .cloned()
                .unwrap_or_default();
            self.send(sch::DownloadPieceFinishedRequest {
                piece: Some(piece(n, &parent)),
            })
            .await?;
        }
        Ok(())
    }

    /// Reports the whole download as finished.
    pub async fn finished(&self, pieces: u32) -> anyhow::Result<()> {
        self.send(sch::DownloadPeerFinishedRequest {
            content_length: u64::from(pieces) * PIECE_LENGTH,
            piece_count: pieces,
        })
        .await
    }

    /// Ends the request stream and waits until the scheduler has read all of it (it then ends the
    /// response stream), so nothing sent is lost to a reset.
    pub async fn close(self) {
        let SimPeer { tx, mut rx, .. } = self;
        drop(tx);
        let drain = async { while let Ok(Some(_)) = rx.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
    }
}

/// Piece `number` as reported, with a random 5..20 ms cost.
pub fn piece(number: u32, parent: &str) -> Piece {
    let cost = Duration::from_millis(rand::rng().random_range(5..20));
    Piece {
        number,
        offset: u64::from(number) * PIECE_LENGTH,
        length: PIECE_LENGTH,
        parent_id: parent.to_owned(),
        cost: Some(dragonfly_proto::time::duration_to_proto(cost)),
        ..Default::default()
    }
}

/// Host `id` (the `n`th): distinct address, 4 idcs, 32 racks, 50 upload slots.
pub fn host(id: &str, n: usize) -> Host {
    Host {
        id: id.to_owned(),
        hostname: id.to_owned(),
        // Distinct private addresses; nobody connects to them.
        ip: format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff),
        upload_port: 65002,
        download_port: 65004,
        idc: format!("idc{}", n % 4),
        location: format!("cn|zone{}|rack{}", n % 4, n % 32),
        concurrent_upload_limit: 50,
        ..Default::default()
    }
}

/// Announces `h`; `every` is how often it will announce itself again (None: it will not).
pub async fn announce(
    client: &mut SchedulerClient<Channel>,
    h: Host,
    every: Option<Duration>,
) -> anyhow::Result<()> {
    let id = h.id.clone();
    client
        .announce_host(sch::AnnounceHostRequest {
            host: Some(h),
            interval: every.map(dragonfly_proto::time::duration_to_proto),
        })
        .await
        .with_context(|| format!("AnnounceHost {id} failed"))?;
    Ok(())
}

/// Candidate parent ids of a NormalTaskResponse (empty for other answers).
pub fn parent_ids(answer: &Resp) -> Vec<String> {
    match answer {
        Resp::NormalTaskResponse(n) => n.candidate_parents.iter().map(|p| p.id.clone()).collect(),
        _ => Vec::new(),
    }
}

/// Latencies and answer kinds.
#[derive(Default)]
pub struct Tally {
    /// Register -> NormalTaskResponse with parents.
    parents: Vec<Duration>,
    back_to_source: usize,
    empty: usize,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    pub fn add(&mut self, answer: &Resp, took: Duration) {
        match answer {
            Resp::NormalTaskResponse(n) if !n.candidate_parents.is_empty() => {
                self.parents.push(took)
            }
            Resp::NeedBackToSourceResponse(_) => self.back_to_source += 1,
            _ => self.empty += 1,
        }
    }

    pub fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.parents.extend(other.parents);
        self.back_to_source += other.back_to_source;
        self.empty += other.empty;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn print(&mut self, what: &str) {
        self.parents.sort();
        let q = |p: f64| -> f64 {
            if self.parents.is_empty() {
                return 0.0;
            }
            let i = ((self.parents.len() as f64 * p).ceil() as usize).clamp(1, self.parents.len());
            self.parents[i - 1].as_secs_f64() * 1e3
        };
        println!(
            "{what}: {} got parents, {} back-to-source, {} other answers, {} errors",
            self.parents.len(),
            self.back_to_source,
            self.empty,
            self.errors
        );
        println!(
            "register -> parents latency: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            q(0.50),
            q(0.90),
            q(0.99),
            q(1.0)
        );
        if let Some(e) = &self.first_error {
            println!("first error: {e}");
        }
    }
}

/// Polls StatTask until the task succeeded (the first peer's reports were processed).
pub async fn wait_task_succeeded(
    mut client: SchedulerClient<Channel>,
    task: &str,
) -> anyhow::Result<()> {
    for _ in 0..500 {
        let t = client
            .stat_task(sch::StatTaskRequest {
                task_id: task.to_owned(),
            })
            .await
            .with_context(|| format!("StatTask {task} failed"))?
            .into_inner();
        if t.state() == TaskState::Succeeded {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("task {task} did not succeed within 5s of its first peer finishing")
}

/// The 1-minute load average (other work on the machine skews the figures).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
