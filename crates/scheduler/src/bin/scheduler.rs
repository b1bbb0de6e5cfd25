//! `scheduler`: the cluster scheduler that hands each peer its parents.
//!
//! Loads its config (`--print-config` shows the effective one), then serves the `Scheduler` gRPC
//! API on `server.listenIP:server.port` (default 8002) until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use scheduler::config::{self, ConfigError, ConfigOrigin, LoadedFrom, SchedulerConfig};
use scheduler::{SchedulerState, serve};
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
    let loaded = match load(&cli) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if let ConfigOrigin::Defaults { .. } = loaded.origin {
        eprintln!("note: using {}", loaded.origin);
    }
    if cli.print_config {
        return match loaded.value.to_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    match run(loaded.value) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: SchedulerConfig) -> anyhow::Result<()> {
    let level = if config.verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(config.server.listen_ip, config.server.port.get());
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (set server.listenIP / server.port)")
        })?;
        tracing::info!(%addr, "scheduler listening");
        let state = Arc::new(SchedulerState::new(config));
        serve(listener, state, shutdown_signal())
            .await
            .context("scheduler gRPC server failed")?;
        tracing::info!("scheduler stopped");
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads the config named on the command line (or the default one), with the file as context
/// of value errors.
fn load(cli: &Cli) -> anyhow::Result<LoadedFrom<SchedulerConfig>> {
    config::load_for_cli(cli.config.as_deref()).map_err(with_context)
}

fn with_context(err: ConfigError) -> anyhow::Error {
    match &err {
        ConfigError::Invalid { file, .. } => {
            let context = format!("invalid config {file}");
            anyhow::Error::new(err).context(context)
        }
        ConfigError::NotFound { .. } => anyhow::anyhow!(
            "{err} (omit --config and SCHEDULER_CONFIG to use the default path or built-in defaults)"
        ),
        _ => anyhow::Error::new(err),
    }
}
