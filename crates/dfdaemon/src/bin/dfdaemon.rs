//! `dfdaemon`: the per-node P2P daemon (the same as `dfget daemon`), plus setup commands.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use dfdaemon::daemon::setup::{self, ContainerdHostsArgs, GenCaArgs, SetupError};
use std::process::ExitCode;

/// Command line of `dfdaemon`.
#[derive(Parser, Debug)]
#[command(
    name = "dfdaemon",
    version,
    about = "Per-node P2P daemon: piece engine, upload server, local download socket",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    args: dfdaemon::daemon::cli::DaemonArgs,
    /// Without a command, dfdaemon runs the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Setup commands; each does its job and exits.
#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a CA for HTTPS hijacking (proxy.hijackHTTPS): writes DIR/ca.crt and DIR/ca.key.
    GenCa(GenCaArgs),
    /// Write containerd hosts.toml files that pull the given registries through dfdaemon.
    ContainerdHosts(ContainerdHostsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => return dfdaemon::daemon::cli::run(&cli.args),
        Some(Command::GenCa(args)) => gen_ca(&args),
        Some(Command::ContainerdHosts(args)) => containerd_hosts(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", dragonfly_common::error::chain(&e));
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `dfdaemon gen-ca`.
fn gen_ca(args: &GenCaArgs) -> Result<(), SetupError> {
    let ca = setup::gen_ca(&args.out, &args.name)?;
    println!("wrote {}", ca.cert.display());
    println!("wrote {} (mode 0600; keep it secret)", ca.key.display());
    println!();
    println!(
        "Add to the dfdaemon config, and have clients trust {}:",
        ca.cert.display()
    );
    println!();
    print!("{}", setup::hijack_config_snippet(&ca));
    Ok(())
}

/// `dfdaemon containerd-hosts`.
fn containerd_hosts(args: &ContainerdHostsArgs) -> Result<(), SetupError> {
    let credentials = match &args.config {
        Some(path) => {
            let (auth, warnings) = setup::credentials_from_config(path)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            auth
        }
        None => None,
    };
    let written = setup::containerd_hosts(
        &args.dir,
        &args.mirror,
        &args.registries,
        args.force,
        credentials.as_ref(),
    )?;
    for path in &written {
        match credentials {
            Some(_) => println!(
                "wrote {} (mode 0600: it holds the mirror's proxy.basicAuth credentials)",
                path.display()
            ),
            None => println!("wrote {}", path.display()),
        }
    }
    println!(
        "containerd uses them once its CRI registry config_path is {:?} \
         ([plugins.\"io.containerd.grpc.v1.cri\".registry] in containerd 1.x, \
         [plugins.\"io.containerd.cri.v1.images\".registry] in 2.x); \
         later edits to hosts.toml apply to new pulls without a restart",
        args.dir.display().to_string()
    );
    Ok(())
}

/// What the user can do about `e`.
fn hint(e: &SetupError) -> Option<&'static str> {
    match e {
        SetupError::Ca(dfdaemon::proxy::ca::CaError::Exists { .. }) => Some(
            "choose another --out directory, or remove the old CA (clients that trust it must be updated)",
        ),
        SetupError::Registry { .. } => {
            Some("give registries as host[:port], optionally with http:// or https://")
        }
        SetupError::Mirror { .. } => Some("give --mirror as a URL, e.g. http://127.0.0.1:65001"),
        SetupError::Write { .. } => Some("run as a user that may write there (often root)"),
        SetupError::Config(_) => Some("--config takes the daemon's config file (dfget.yaml)"),
        SetupError::Exists { .. } | SetupError::Ca(_) => None,
    }
}
