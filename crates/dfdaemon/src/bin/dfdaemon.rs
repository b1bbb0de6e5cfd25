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

/// `dfdaemon containerd-hosts`: one line per file, then whether containerd's config changed
/// and whether `--on-change` ran.
fn containerd_hosts(args: &ContainerdHostsArgs) -> Result<(), SetupError> {
    if args.restore {
        // `--backup-dir` is required with `--restore` (clap).
        let backup_dir = args
            .backup_dir
            .as_deref()
            .unwrap_or(std::path::Path::new("."));
        let Some(outcome) = setup::containerd_restore(backup_dir)? else {
            println!(
                "nothing to restore: no {} in {} (never installed, or restored already)",
                setup::install::MANIFEST,
                backup_dir.display()
            );
            return Ok(());
        };
        for event in &outcome.events {
            println!("{event}");
        }
        return after_run(args, outcome.containerd_config_changed);
    }
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
    let report = setup::containerd_hosts(&setup::HostsOptions {
        dir: &args.dir,
        mirror: &args.mirror,
        registries: &args.registries,
        force: args.force,
        credentials: credentials.as_ref(),
        containerd_config: args.containerd_config.as_deref(),
        backup_dir: args.backup_dir.as_deref(),
    })?;
    for note in &report.notes {
        println!("note: {note}");
    }
    for event in &report.outcome.events {
        match (event, &credentials) {
            (setup::Event::Wrote(p), Some(_)) if p.ends_with("hosts.toml") => {
                println!("{event} (mode 0600: it holds the mirror's proxy.basicAuth credentials)")
            }
            _ => println!("{event}"),
        }
    }
    if args.containerd_config.is_none() {
        println!(
            "containerd uses them once its CRI registry config_path is {:?} \
             ([plugins.\"io.containerd.grpc.v1.cri\".registry] in containerd 1.x, \
             [plugins.\"io.containerd.cri.v1.images\".registry] in 2.x; \
             --containerd-config sets it); \
             later edits to hosts.toml apply to new pulls without a restart",
            report.hosts_dir.display().to_string()
        );
    }
    if report
        .outcome
        .events
        .iter()
        .all(|e| matches!(e, setup::Event::Unchanged(_)))
    {
        println!("unchanged: every file is already as dfdaemon writes it");
    }
    after_run(args, report.outcome.containerd_config_changed)
}

/// Say whether containerd's config changed, and run `--on-change` when it did (or when an
/// earlier run's `--on-change` failed: the manifest remembers that).
fn after_run(args: &ContainerdHostsArgs, config_changed: bool) -> Result<(), SetupError> {
    let manifest_dir = args.backup_dir.as_deref().filter(|_| !args.restore);
    let pending = match (manifest_dir, &args.on_change) {
        (Some(dir), Some(_)) => setup::Manifest::load(dir)?.is_some_and(|m| m.restart_pending),
        _ => false,
    };
    if config_changed {
        println!("containerd config: changed (containerd must be restarted to read it)");
    } else if pending {
        println!(
            "containerd config: changed by an earlier run whose --on-change failed (running it again)"
        );
    } else {
        println!("containerd config: unchanged (no restart needed)");
        if args.on_change.is_some() {
            println!("on-change: not run");
        }
        return Ok(());
    }
    let Some(command) = &args.on_change else {
        return Ok(());
    };
    println!("on-change: running sh -c {command:?}");
    let ran = setup::run_on_change(command);
    if let Some(dir) = manifest_dir {
        setup::install::set_restart_pending(dir, ran.is_err())?;
    }
    ran?;
    println!("on-change: done");
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
        SetupError::DeprecatedRegistry { .. } => Some(
            "containerd's docs/hosts.md shows the hosts.toml equivalent of registry.mirrors and configs.tls",
        ),
        SetupError::Changed { .. } => Some(
            "someone edited a file dfdaemon wrote: keep their edit (remove the registry from the list) or pass --force",
        ),
        SetupError::OnChange { .. } => Some(
            "the files are written; fix the command and run again (a re-run changes nothing, so pass the command once by hand)",
        ),
        SetupError::Exists { .. }
        | SetupError::Ca(_)
        | SetupError::Read { .. }
        | SetupError::ContainerdConfig { .. }
        | SetupError::Manifest { .. } => None,
    }
}
