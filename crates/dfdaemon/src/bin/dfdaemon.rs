//! `dfdaemon`: the per-node P2P daemon (the same as `dfget daemon`).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// Command line of `dfdaemon`.
#[derive(Parser, Debug)]
#[command(
    name = "dfdaemon",
    version,
    about = "Per-node P2P daemon: piece engine, upload server, local download socket"
)]
struct Cli {
    #[command(flatten)]
    args: dfdaemon::daemon::cli::DaemonArgs,
}

fn main() -> ExitCode {
    dfdaemon::daemon::cli::run(&Cli::parse().args)
}
