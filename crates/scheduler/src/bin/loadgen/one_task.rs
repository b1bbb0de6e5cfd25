//! one-task mode: N hosts with one peer each on one task; register-to-parents latency and RSS.

use crate::Cli;
use crate::sim::{
    Conns, Rss, SimPeer, Tally, announce, host, load_average, mib, parent_ids, wait_task_succeeded,
};
use anyhow::{Context, bail};
use dragonfly_proto::SchedulerClient;
use dragonfly_proto::scheduler::v1 as sch;
use dragonfly_proto::scheduler::v1::announce_peer_response::Response as Resp;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Runs one-task mode and prints its figures.
pub async fn run(cli: &Cli, conns: &Conns, rss: &Rss) -> anyhow::Result<()> {
    let n = cli.peers.max(2);
    let run = std::process::id();
    let task = cli
        .task
        .clone()
        .unwrap_or_else(|| format!("loadgen-{run}-one"));
    let host_id = move |i: usize| format!("loadgen-{run}-h{i}");
    let peer_id = move |i: usize| format!("loadgen-{run}-p{i}");
    let (rss0, _) = rss.read()?;
    let arrivals = match cli.rate {
        Some(rate) => format!(
            "arriving at {rate}/s (at most {} in flight)",
            cli.concurrency
        ),
        None => format!("{} in flight back to back", cli.concurrency),
    };
    println!(
        "one-task: {n} hosts, one peer each, task {task}, {arrivals}, over {} connections; scheduler pid {} RSS {:.1} MiB",
        conns.clients.len(),
        rss.pid,
        mib(rss0)
    );

    // Hosts.
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..cli.concurrency {
        let (next, mut client) = (next.clone(), conns.client());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                announce(&mut client, host(&host_id(i), i), None).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("announce worker panicked")??;
    }
    println!(
        "announced {n} hosts in {:.2} s",
        start.elapsed().as_secs_f64()
    );

    // The first peer fetches from the source.
    let first = SimPeer::register(conns.client(), &host_id(0), &task, &peer_id(0)).await?;
    if !matches!(first.answer, Resp::NeedBackToSourceResponse(_)) {
        bail!(
            "the first peer of {task} was not sent to the source ({:?}); use a fresh --task",
            first.answer
        );
    }
    first.peer.back_to_source(cli.pieces).await?;
    wait_task_succeeded(conns.client(), &task).await?;

    // Everybody else: `concurrency` at a time (closed loop), or arriving at `--rate` per second.
    let start = Instant::now();
    let plan = PeerPlan {
        pieces: cli.pieces,
        report: cli.report_pieces,
        finish: cli.finish,
    };
    let mut set = JoinSet::new();
    let mut waited = 0usize;
    match cli.rate {
        None => {
            let next = Arc::new(AtomicUsize::new(1));
            for _ in 0..cli.concurrency {
                let next = next.clone();
                let task = task.clone();
                let clients = conns.clients.clone();
                set.spawn(async move {
                    let mut out = PeerResults::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return out;
                        }
                        let client = clients[i % clients.len()].clone();
                        out.run(client, &host_id(i), &task, &peer_id(i), plan).await;
                    }
                });
            }
        }
        Some(rate) => {
            let slots = Arc::new(Semaphore::new(cli.concurrency));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 1..n {
                tick.tick().await;
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => {
                        waited += 1;
                        slots.clone().acquire_owned().await?
                    }
                };
                let (host, peer, task) = (host_id(i), peer_id(i), task.clone());
                let client = conns.clients[i % conns.clients.len()].clone();
                set.spawn(async move {
                    let mut out = PeerResults::default();
                    out.run(client, &host, &task, &peer, plan).await;
                    drop(slot);
                    out
                });
            }
        }
    }
    let mut tally = Tally::default();
    let mut open = vec![first.peer];
    while let Some(r) = set.join_next().await {
        let out = r.context("peer worker panicked")?;
        tally.merge(out.tally);
        open.extend(out.open);
    }
    if waited > 0 {
        println!(
            "{waited} arrivals waited for one of the {} in-flight slots (the scheduler fell behind the rate)",
            cli.concurrency
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "registered {} peers in {elapsed:.2} s ({:.0}/s)",
        n - 1,
        (n - 1) as f64 / elapsed
    );
    tally.print("answers");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stat = conns
        .client()
        .stat_task(sch::StatTaskRequest {
            task_id: task.clone(),
        })
        .await
        .with_context(|| format!("StatTask {task} failed"))?
        .into_inner();
    let (now, hwm) = rss.read()?;
    println!(
        "scheduler RSS with {} peers of the task known ({} streams open): {:.1} MiB (peak {:.1} MiB, idle before {:.1} MiB)",
        stat.peer_count,
        open.len(),
        mib(now),
        mib(hwm),
        mib(rss0)
    );

    // Leave as real peers do: finished, stream closed, peer left.
    let mut set = JoinSet::new();
    let per = open.len().div_ceil(cli.concurrency);
    while !open.is_empty() {
        let chunk: Vec<SimPeer> = open.drain(..per.min(open.len())).collect();
        let mut client = conns.client();
        let pieces = cli.pieces;
        set.spawn(async move {
            for p in chunk {
                let _ = p.finished(pieces).await;
                let (task_id, peer_id, host_id) = (p.task.clone(), p.peer.clone(), p.host.clone());
                p.close().await;
                let _ = client
                    .leave_peer(sch::LeavePeerRequest {
                        host_id,
                        task_id,
                        peer_id,
                    })
                    .await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let (now, _) = rss.read()?;
    println!(
        "scheduler RSS after every peer left: {:.1} MiB (freed memory stays with the allocator); load average now {}",
        mib(now),
        load_average()
    );
    Ok(())
}

/// What each peer after the first does in one-task mode.
#[derive(Debug, Clone, Copy)]
struct PeerPlan {
    pieces: u32,
    report: u32,
    finish: bool,
}

/// Answers, latencies and still-open streams of some peers.
#[derive(Default)]
struct PeerResults {
    tally: Tally,
    open: Vec<SimPeer>,
}

impl PeerResults {
    /// Runs one peer (see [`one_peer`]) and records how it went.
    async fn run(
        &mut self,
        client: SchedulerClient<Channel>,
        host: &str,
        task: &str,
        peer: &str,
        plan: PeerPlan,
    ) {
        if let Err(e) = one_peer(self, client, host, task, peer, plan).await {
            self.tally.error(&e);
        }
    }
}

/// One peer: registers (timed), reports pieces as real peers do (so it becomes a parent), then
/// finishes or keeps its stream open.
async fn one_peer(
    out: &mut PeerResults,
    client: SchedulerClient<Channel>,
    host: &str,
    task: &str,
    peer: &str,
    plan: PeerPlan,
) -> anyhow::Result<()> {
    let r = SimPeer::register(client, host, task, peer).await?;
    out.tally.add(&r.answer, r.took);
    let parents = parent_ids(&r.answer);
    if parents.is_empty() {
        r.peer.back_to_source(plan.pieces).await?;
    } else {
        r.peer
            .pieces_from(&parents, plan.pieces, plan.report)
            .await?;
    }
    if plan.finish {
        r.peer.finished(plan.pieces).await?;
        r.peer.close().await;
    } else {
        out.open.push(r.peer);
    }
    Ok(())
}
