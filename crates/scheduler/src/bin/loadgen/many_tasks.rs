//! many-tasks mode: thousands of short tasks come and go over a churning pool of hosts; the
//! scheduler's RSS is sampled as they do and after its GC.

use crate::Cli;
use crate::sim::{
    Conns, Rss, SimPeer, Tally, announce, host, load_average, mib, parent_ids, wait_task_succeeded,
};
use anyhow::{Context, bail};
use dragonfly_proto::SchedulerClient;
use dragonfly_proto::scheduler::v1 as sch;
use rand::seq::IndexedRandom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// many-tasks: the pool of hosts, each slot replaced now and then.
struct Pool {
    run: u32,
    slots: Mutex<Vec<Slot>>,
}

struct Slot {
    generation: usize,
    /// Tasks using the host now.
    busy: usize,
    /// Being replaced: not handed to new tasks.
    replacing: bool,
}

impl Pool {
    fn id(&self, slot: usize, generation: usize) -> String {
        format!("loadgen-{}-h{slot}g{generation}", self.run)
    }

    fn live(&self) -> Vec<(usize, String)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, self.id(i, s.generation)))
            .collect()
    }

    /// Takes `k` distinct random hosts for a task; returns (slot, host id).
    fn take(&self, k: usize) -> Vec<(usize, String)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let free: Vec<usize> = (0..slots.len()).filter(|i| !slots[*i].replacing).collect();
        let chosen: Vec<usize> = free
            .choose_multiple(&mut rand::rng(), k.min(free.len()))
            .copied()
            .collect();
        chosen
            .into_iter()
            .map(|i| {
                slots[i].busy += 1;
                (i, self.id(i, slots[i].generation))
            })
            .collect()
    }

    fn give_back(&self, taken: &[(usize, String)]) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for (i, _) in taken {
            slots[*i].busy = slots[*i].busy.saturating_sub(1);
        }
    }

    /// Starts replacing an idle host; returns (slot, old id, new id). Call [`Pool::commit`] once
    /// the new host is announced.
    fn replace(&self) -> Option<(usize, String, String)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let idle: Vec<usize> = (0..slots.len())
            .filter(|i| slots[*i].busy == 0 && !slots[*i].replacing)
            .collect();
        let &i = idle.choose(&mut rand::rng())?;
        slots[i].replacing = true;
        let generation = slots[i].generation;
        Some((i, self.id(i, generation), self.id(i, generation + 1)))
    }

    fn commit(&self, slot: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[slot].generation += 1;
        slots[slot].replacing = false;
    }
}

/// Announces every live host of the pool, spread over the connections.
async fn announce_all(pool: &Pool, conns: &Conns, every: Duration) -> anyhow::Result<()> {
    let live = pool.live();
    let per = live.len().div_ceil(conns.clients.len()).max(1);
    let mut set = JoinSet::new();
    for chunk in live.chunks(per) {
        let (chunk, mut client) = (chunk.to_vec(), conns.client());
        set.spawn(async move {
            for (slot, id) in chunk {
                announce(&mut client, host(&id, slot), Some(every)).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("announce worker panicked")??;
    }
    Ok(())
}

/// Runs many-tasks mode and prints its figures.
pub async fn run(cli: &Cli, conns: &Conns, rss: &Rss) -> anyhow::Result<()> {
    let per_task = cli.peers_per_task.max(2);
    let pool = Arc::new(Pool {
        run: std::process::id(),
        slots: Mutex::new(
            (0..cli.hosts.max(per_task))
                .map(|_| Slot {
                    generation: 0,
                    busy: 0,
                    replacing: false,
                })
                .collect(),
        ),
    });
    let (rss0, _) = rss.read()?;
    println!(
        "many-tasks: {} tasks x {per_task} peers over a pool of {} hosts, {} tasks in flight; scheduler pid {} RSS {:.1} MiB",
        cli.tasks,
        pool.live().len(),
        cli.concurrency,
        rss.pid,
        mib(rss0)
    );
    let every = Duration::from_millis(cli.announce_interval_ms.max(10));
    announce_all(&pool, conns, every).await?;
    // Live hosts keep announcing themselves; replaced ones stop (silent) or left.
    let refresher = {
        let pool = pool.clone();
        let conns = Conns {
            clients: conns.clients.clone(),
            next: AtomicUsize::new(0),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = announce_all(&pool, &conns, every).await {
                    eprintln!("re-announcing hosts: {e:#}");
                }
            }
        })
    };

    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let churned = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let samples = Arc::new(Mutex::new(Vec::<(usize, f64, u64)>::new()));
    let mut set = JoinSet::new();
    for _ in 0..cli.concurrency {
        let (next, done, churned, samples) =
            (next.clone(), done.clone(), churned.clone(), samples.clone());
        let pool = pool.clone();
        let clients = conns.clients.clone();
        let cli = cli.clone();
        let pid = rss.pid;
        set.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cli.tasks {
                    return tally;
                }
                let client = clients[i % clients.len()].clone();
                let hosts = pool.take(per_task);
                let task = format!("loadgen-{}-t{i}", pool.run);
                if let Err(e) = run_task(&cli, client.clone(), &task, &hosts, &mut tally).await {
                    tally.error(&e);
                }
                pool.give_back(&hosts);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_multiple_of(cli.churn_every.max(1))
                    && let Some((slot, old, new)) = pool.replace()
                {
                    let mut client = client.clone();
                    let _ = announce(&mut client, host(&new, slot), Some(every)).await;
                    pool.commit(slot);
                    // Alternately: the host says goodbye, or it just goes silent.
                    if (d / cli.churn_every.max(1)).is_multiple_of(2) {
                        let _ = client
                            .leave_host(sch::LeaveHostRequest { host_id: old })
                            .await;
                        churned.0.fetch_add(1, Ordering::Relaxed);
                    } else {
                        churned.1.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if d.is_multiple_of(cli.sample_every.max(1))
                    && let Ok((now, _)) = (Rss { pid }).read()
                {
                    let secs = start.elapsed().as_secs_f64();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((d, secs, now));
                    println!(
                        "  {d:>7} tasks done  {secs:>6.1} s  scheduler RSS {:>6.1} MiB",
                        mib(now)
                    );
                }
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(r) = set.join_next().await {
        tally.merge(r.context("task worker panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    refresher.abort();
    let (left, silent) = (
        churned.0.load(Ordering::Relaxed),
        churned.1.load(Ordering::Relaxed),
    );
    println!(
        "{} tasks in {elapsed:.1} s ({:.0} tasks/s); hosts replaced: {left} with LeaveHost, {silent} went silent",
        cli.tasks,
        cli.tasks as f64 / elapsed
    );
    tally.print("answers");
    let (end_rss, hwm) = rss.read()?;

    // Every host stops announcing now; the scheduler's GC must forget them, their peers and tasks.
    println!(
        "waiting {} s for the scheduler's GC (all hosts now silent)...",
        cli.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(cli.settle_secs)).await;
    let (after, hwm_after) = rss.read()?;
    let known = still_known(conns, pool.run, cli.tasks).await?;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rss_of = |s: &[(usize, f64, u64)]| s.iter().map(|x| x.2).collect::<Vec<_>>();
    let all = rss_of(&samples);
    let tail = rss_of(&samples[samples.len() / 2..]);
    let range = |v: &[u64]| (v.iter().min().copied(), v.iter().max().copied());
    if let ((Some(lo), Some(hi)), (Some(tlo), Some(thi))) = (range(&all), range(&tail)) {
        println!(
            "scheduler RSS over the run: {:.1}..{:.1} MiB (second half {:.1}..{:.1} MiB); idle before {:.1} MiB",
            mib(lo),
            mib(hi),
            mib(tlo),
            mib(thi),
            mib(rss0)
        );
    }
    println!(
        "scheduler RSS at the end {:.1} MiB, after GC {:.1} MiB (peak {:.1} MiB); {known} of the {} tasks still known (StatTask); load average now {}",
        mib(end_rss),
        mib(after),
        mib(hwm.max(hwm_after).max(end_rss)),
        cli.tasks,
        load_average()
    );
    Ok(())
}

/// How many of the run's `tasks` the scheduler still knows (StatTask answers), asked over every
/// connection at once.
async fn still_known(conns: &Conns, run: u32, tasks: usize) -> anyhow::Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for client in &conns.clients {
        let (next, mut client) = (next.clone(), client.clone());
        set.spawn(async move {
            let mut known = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    return known;
                }
                let task_id = format!("loadgen-{run}-t{i}");
                if client
                    .stat_task(sch::StatTaskRequest { task_id })
                    .await
                    .is_ok()
                {
                    known += 1;
                }
            }
        });
    }
    let mut known = 0;
    while let Some(n) = set.join_next().await {
        known += n.context("StatTask worker panicked")?;
    }
    Ok(known)
}

/// One task: the first peer goes to the source, the others get parents, report pieces and finish;
/// then half of the peers leave with LeavePeer and the others just close their stream (silent).
async fn run_task(
    cli: &Cli,
    client: SchedulerClient<Channel>,
    task: &str,
    hosts: &[(usize, String)],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let Some(((_, first_host), rest)) = hosts.split_first() else {
        bail!("no hosts for task {task}");
    };
    let first = SimPeer::register(client.clone(), first_host, task, &format!("{task}-p0")).await?;
    first.peer.back_to_source(cli.pieces).await?;
    wait_task_succeeded(client.clone(), task).await?;
    let mut peers = vec![first.peer];
    let mut set = JoinSet::new();
    for (j, (_, h)) in rest.iter().enumerate() {
        let (client, h, task) = (client.clone(), h.clone(), task.to_owned());
        let (pieces, report) = (cli.pieces, cli.report_pieces);
        set.spawn(async move {
            let r = SimPeer::register(client, &h, &task, &format!("{task}-p{}", j + 1)).await?;
            let parents = parent_ids(&r.answer);
            if parents.is_empty() {
                r.peer.back_to_source(pieces).await?;
            } else {
                r.peer.pieces_from(&parents, pieces, report).await?;
                r.peer.finished(pieces).await?;
            }
            Ok::<_, anyhow::Error>((r.answer, r.took, r.peer))
        });
    }
    while let Some(r) = set.join_next().await {
        match r.context("peer panicked")? {
            Ok((answer, took, peer)) => {
                tally.add(&answer, took);
                peers.push(peer);
            }
            Err(e) => tally.error(&e),
        }
    }
    let mut client = client;
    for (j, p) in peers.into_iter().enumerate() {
        let (task_id, peer_id, host_id) = (p.task.clone(), p.peer.clone(), p.host.clone());
        p.close().await;
        if j % 2 == 0 {
            client
                .leave_peer(sch::LeavePeerRequest {
                    host_id,
                    task_id,
                    peer_id,
                })
                .await
                .context("LeavePeer failed")?;
        }
    }
    Ok(())
}
