//! The daemon's command line, shared by `dfdaemon` and `dfget daemon`.

use crate::config::{self, DfdaemonConfig};
use dragonfly_common::config::config_for_cli;
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

/// What every binary of this crate runs on: the TLS provider (aws-lc-rs) installed, and tokio's
/// multi-threaded runtime.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Load the config, print it or run the daemon until SIGINT/SIGTERM; the process exit code.
pub fn run(args: &DaemonArgs) -> ExitCode {
    let loaded = match config_for_cli(
        config::load_for_cli(args.config.as_deref()),
        "DFDAEMON_CONFIG",
        args.print_config,
        DfdaemonConfig::to_yaml,
    ) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let cfg = loaded.value;
    let _guard = match super::logging::init(&cfg.log_dir, cfg.verbose) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: cannot write logs to {}: {e}", cfg.log_dir.display());
            return ExitCode::FAILURE;
        }
    };
    dragonfly_common::open_files::raise_to_hard_limit();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %loaded.origin, "dfdaemon starting");
    runtime.block_on(async move {
        match super::start(cfg, dragonfly_common::signal::shutdown_signal()).await {
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
