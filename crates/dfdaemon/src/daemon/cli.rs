//! The daemon's command line, shared by `dfdaemon` and `dfget daemon`.

use crate::config::{self, DfdaemonConfig};
use dragonfly_common::config::cli_message;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `dfdaemon` / `dfget daemon`.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Config file [default: /etc/dragonfly/dfget.yaml, then /etc/dragonfly/dfdaemon.yaml,
    /// else built-in defaults].
    #[arg(short, long, env = "DFDAEMON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective config (shapes folded, defaults filled in) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Load the config, print it or run the daemon until SIGINT/SIGTERM; the process exit code.
pub fn run(args: &DaemonArgs) -> ExitCode {
    let loaded = match config::load_for_cli(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {}", cli_message(&err, "DFDAEMON_CONFIG"));
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = loaded.report(args.print_config, DfdaemonConfig::to_yaml) {
        return code;
    }
    let cfg = loaded.value;
    let _guard = match super::logging::init(&cfg.log_dir, cfg.verbose) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: cannot write logs to {}: {e}", cfg.log_dir.display());
            return ExitCode::FAILURE;
        }
    };
    dragonfly_common::open_files::raise_to_hard_limit();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %loaded.origin, "dfdaemon starting");
    runtime.block_on(async move {
        match super::start(cfg, shutdown_signal()).await {
            Ok((_bound, serve)) => match serve.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let msg = dragonfly_common::error::chain(&e);
                    tracing::error!(error = %msg, "dfdaemon stopped on a failure");
                    eprintln!("error: {msg}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "dfdaemon cannot start");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
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
