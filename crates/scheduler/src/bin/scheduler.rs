//! `scheduler`: the cluster scheduler that hands each peer its parents.
//!
//! Loads its config (`--print-config` shows the effective one), then serves the `Scheduler` gRPC
//! API on `server.listenIP:server.port` (default 8002), and `/metrics` and `/healthy` on
//! `metrics.addr` (default `:8003`) when `metrics.enable`, until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use dragonfly_common::config::config_for_cli;
use scheduler::SchedulerState;
use scheduler::config::{self, SchedulerConfig};
use scheduler::server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Command line of `scheduler`.
#[derive(Parser, Debug)]
#[command(
    name = "scheduler",
    version,
    about = "Cluster scheduler of the P2P distribution system"
)]
struct Cli {
    /// Config file [default: /etc/dragonfly/scheduler.yaml, else built-in defaults].
    #[arg(short, long, env = "SCHEDULER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective config (defaults filled in) as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config_for_cli(
        config::load_for_cli(cli.config.as_deref()),
        "SCHEDULER_CONFIG",
        cli.print_config,
        SchedulerConfig::to_yaml,
    ) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match run(loaded.value) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: SchedulerConfig) -> anyhow::Result<()> {
    let log_dir = &config.server.log_dir;
    let _guard = dragonfly_common::logging::init(log_dir, config.verbose).with_context(|| {
        format!(
            "cannot write logs to {} (set server.logDir)",
            log_dir.display()
        )
    })?;
    dragonfly_common::open_files::raise_to_hard_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(config.server.listen_ip, config.server.port.get());
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (set server.listenIP / server.port)")
        })?;
        let metrics = match config.metrics.enable {
            true => {
                let m = &config.metrics.addr;
                let host = match m.host() {
                    "" => "0.0.0.0",
                    h => h,
                };
                let l = tokio::net::TcpListener::bind((host, m.port().get()))
                    .await
                    .with_context(|| {
                        format!("cannot listen on {m} (set metrics.addr, or metrics.enable: false)")
                    })?;
                Some(l)
            }
            false => None,
        };
        let metrics_addr = match metrics.as_ref().map(|l| l.local_addr()) {
            Some(Ok(a)) => a.to_string(),
            Some(Err(e)) => format!("unknown ({e})"),
            None => "off".to_string(),
        };
        tracing::info!(%addr, metrics = %metrics_addr, "scheduler listening");
        let state = Arc::new(SchedulerState::new(config));
        server::run(
            listener,
            metrics,
            state,
            dragonfly_common::signal::shutdown_signal(),
        )
        .await?;
        tracing::info!("scheduler stopped");
        Ok(())
    })
}
