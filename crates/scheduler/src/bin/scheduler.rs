//! `scheduler`: the cluster scheduler that hands each peer its parents.
//!
//! For now it loads and checks its config (`--print-config` shows the effective one); the
//! servers arrive with the scheduler-service issue.
#![forbid(unsafe_code)]

use clap::Parser;
use scheduler::config::{self, ConfigError, ConfigOrigin, LoadedFrom, SchedulerConfig};
use std::path::PathBuf;
use std::process::ExitCode;

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
    eprintln!(
        "scheduler: config loaded from {}; the scheduler's servers arrive with the scheduler-service issue",
        loaded.origin
    );
    ExitCode::from(2)
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
