//! `scheduler-loadgen`: simulated hosts and peers driving a running `scheduler` over its real gRPC
//! API (TCP, several HTTP/2 connections), to measure register-to-parents latency and the
//! scheduler's memory. See `docs/scheduler.md`, section "Load generator".
//!
//! - `one-task`: N hosts, one peer each on one task. The first peer goes to the source; the others
//!   register (`--concurrency` back to back, or arriving at `--rate` per second) and are timed from
//!   `RegisterPeerRequest` to their first answer, then report a few pieces (so they become parents)
//!   and keep their stream open.
//! - `many-tasks`: thousands of short tasks over a pool of hosts that churn; peers leave or go
//!   silent, hosts leave or go silent; the scheduler's RSS is sampled as tasks come and go and once
//!   more after its GC had time to run.
#![forbid(unsafe_code)]

mod many_tasks;
mod one_task;
mod sim;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sim::{Conns, Rss};

/// Command line of `scheduler-loadgen`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "scheduler-loadgen",
    about = "Load generator for a running scheduler: simulated hosts and peers over gRPC"
)]
pub struct Cli {
    /// Scheduler gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:8002")]
    addr: String,
    /// What to simulate.
    #[arg(long, value_enum, default_value_t = Mode::OneTask)]
    mode: Mode,
    /// Pid of the scheduler, for its RSS [default: the only process named `scheduler`].
    #[arg(long)]
    scheduler_pid: Option<u32>,
    /// HTTP/2 connections the peers' streams are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Registrations in flight at once (one-task), tasks in flight at once (many-tasks).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Pieces of each simulated task.
    #[arg(long, default_value_t = 16)]
    pieces: u32,
    /// Pieces a peer reports (DownloadPieceFinished) after it got parents.
    #[arg(long, default_value_t = 4)]
    report_pieces: u32,
    /// one-task: peers of the task, one per host.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// one-task: peers send DownloadPeerFinished and close their stream instead of keeping it open.
    #[arg(long)]
    finish: bool,
    /// one-task: peers arrive at this many per second (open loop, at most --concurrency in flight)
    /// instead of `--concurrency` registering back to back (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// one-task: task id [default: a fresh one per run].
    #[arg(long)]
    task: Option<String>,
    /// many-tasks: tasks to run.
    #[arg(long, default_value_t = 5000)]
    tasks: usize,
    /// many-tasks: peers per task (the first goes to the source).
    #[arg(long, default_value_t = 4)]
    peers_per_task: usize,
    /// many-tasks: size of the host pool.
    #[arg(long, default_value_t = 500)]
    hosts: usize,
    /// many-tasks: one pool host is replaced after this many tasks (alternately with LeaveHost and
    /// by going silent).
    #[arg(long, default_value_t = 5)]
    churn_every: usize,
    /// many-tasks: live hosts re-announce themselves this often and say so in AnnounceHost (the
    /// scheduler drops a host after 3 missed announces).
    #[arg(long, default_value_t = 1000)]
    announce_interval_ms: u64,
    /// many-tasks: print an RSS sample every this many finished tasks.
    #[arg(long, default_value_t = 500)]
    sample_every: usize,
    /// many-tasks: after the last task, wait this long for the scheduler's GC before the last sample
    /// (longer than peerTTL + taskGCInterval and hostTTL + hostGCInterval).
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// N peers on one task.
    OneTask,
    /// Thousands of short tasks coming and going.
    ManyTasks,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.connections == 0 || cli.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    if cli.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of peers per second");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let pid = match cli.scheduler_pid {
            Some(pid) => pid,
            None => sim::find_scheduler_pid()?,
        };
        let rss = Rss { pid };
        let conns = Conns::connect(&cli.addr, cli.connections).await?;
        println!(
            "machine: {} cores, load average {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            sim::load_average()
        );
        match cli.mode {
            Mode::OneTask => one_task::run(&cli, &conns, &rss).await,
            Mode::ManyTasks => many_tasks::run(&cli, &conns, &rss).await,
        }
    })
}
