//! `dfget`: download a URL to a file.
//!
//! Without a local daemon it downloads straight from the source, pieces in parallel.
//! `oras://HOST/REPO:TAG` downloads the artifact's blob (a Singularity/Apptainer SIF image);
//! registry credentials come from `--username/--password` (or their env vars), else from
//! docker's `config.json`, and travel as an `Authorization: Basic` header (to the daemon, which
//! uses them for the registry's token exchange). They are never printed.

use anyhow::Context as _;
use clap::Parser;
use dfdaemon::source::oras::{self, Credentials, OrasReference};
use dfdaemon::standalone::{self, DownloadRequest, Progress};
use dragonfly_common::digest::Digest;
use http::{HeaderMap, HeaderName, HeaderValue};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(
    name = "dfget",
    version,
    about = "Download a file, peer to peer when a dfdaemon runs here",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// URL to download: http, https, or oras://HOST[:PORT]/REPO[:TAG|@sha256:HEX].
    #[arg(value_name = "URL")]
    url: Option<String>,
    /// URL to download (the form Dragonfly's docs use: `dfget -u URL -O FILE`).
    #[arg(short = 'u', long = "url", value_name = "URL", conflicts_with = "url")]
    url_flag: Option<String>,
    /// Where to write the file.
    #[arg(short = 'O', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Expected digest of the content: sha256:<hex>, sha512:<hex> or crc32:<hex>.
    #[arg(long, value_name = "ALGO:HEX")]
    digest: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Give up when the whole download takes longer than this (e.g. 30s, 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Replace the output file if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
    /// Pieces fetched at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Piece length (e.g. 4Mi); default picks it from the content length.
    #[arg(long, value_name = "SIZE")]
    piece_length: Option<String>,
    /// Skip TLS certificate verification of the origin (without a daemon, also of an ORAS registry).
    #[arg(long)]
    insecure: bool,
    /// Registry user for oras:// URLs (default: docker's config.json for the registry); other
    /// URLs take credentials as `-H 'Authorization: ...'`.
    #[arg(long, env = "DFGET_ORAS_USERNAME", requires = "password")]
    username: Option<String>,
    /// Registry password or token for oras:// URLs (prefer the env var: arguments are visible in `ps`).
    #[arg(
        long,
        env = "DFGET_ORAS_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
    /// The local daemon's socket; dfget downloads through the daemon when it answers there.
    #[arg(
        long,
        env = "DFGET_DAEMON_SOCK",
        default_value = "/var/run/dragonfly/dfdaemon.sock"
    )]
    daemon_sock: PathBuf,
    /// Never use the daemon: download straight from the source.
    #[arg(long)]
    standalone: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Run the daemon (the same as `dfdaemon`).
    Daemon(dfdaemon::daemon::cli::DaemonArgs),
}

fn parse_headers(raw: &[String]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not of the form \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| {
            format!("header {h:?}: {:?} is not a valid header name", name.trim())
        })?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("header {h:?}: the value is not a valid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn parse_size(raw: &str) -> anyhow::Result<u64> {
    raw.parse::<dragonfly_common::config::Size>()
        .map(|s| s.as_u64())
        .map_err(|e| anyhow::anyhow!("--piece-length: {e}"))
}

/// Progress on a terminal: an indicatif bar on stderr.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_length(&self, length: Option<u64>) {
        if let Some(len) = length {
            self.0.set_length(len);
        }
    }
    fn set_position(&self, done: u64) {
        self.0.set_position(done);
    }
}

/// Progress when stderr is not a terminal: a plain line at most every 2 seconds.
struct Lines {
    state: Mutex<(Option<u64>, Instant)>,
    started: Instant,
}

impl Progress for Lines {
    fn set_length(&self, length: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = length;
        }
    }
    fn set_position(&self, done: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.1.elapsed() < Duration::from_secs(2) {
            return;
        }
        s.1 = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match s.0 {
            Some(len) if len > 0 => eprintln!(
                "dfget: {:.0}% {} / {} ({}/s)",
                done as f64 * 100.0 / len as f64,
                bytesize::ByteSize(done).display().iec(),
                bytesize::ByteSize(len).display().iec(),
                bytesize::ByteSize(rate as u64).display().iec()
            ),
            _ => eprintln!("dfget: {}", bytesize::ByteSize(done).display().iec()),
        }
    }
}

/// The daemon client, unless told not to use one or none answers.
async fn daemon_client(
    socket: &std::path::Path,
    standalone: bool,
    quiet: bool,
) -> Option<dragonfly_proto::DfdaemonDownloadClient<tonic::transport::Channel>> {
    if standalone {
        return None;
    }
    match dfdaemon::client::connect(socket).await {
        Ok(c) => Some(c),
        Err(why) => {
            if !quiet && socket.exists() {
                eprintln!("dfget: {why}; downloading without the daemon");
            }
            None
        }
    }
}

/// Registry credentials for an `oras://` reference: the flags (or their env vars), else the
/// `auths` entry of docker's config.json for the registry.
fn oras_credentials(
    cli: &Cli,
    reference: &OrasReference,
) -> anyhow::Result<Option<(Credentials, String)>> {
    if let (Some(u), Some(p)) = (&cli.username, &cli.password) {
        return Ok(Some((Credentials::new(u, p), "--username".to_string())));
    }
    let Some(path) = oras::docker_config_path() else {
        return Ok(None);
    };
    let creds = oras::docker_config_credentials(&path, &reference.registry)
        .map_err(|e| anyhow::anyhow!("docker config: {e}"))?;
    Ok(creds.map(|c| (c, path.display().to_string())))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli
        .url
        .clone()
        .or(cli.url_flag.clone())
        .context("no URL given (dfget URL -O FILE)")?;
    let output = cli
        .output
        .clone()
        .context("no output file given (-O FILE)")?;
    // Credentials in the URL become an Authorization header, so the URL dfget prints, sends to
    // the daemon and keys the task by carries none.
    let mut headers = parse_headers(&cli.headers)?;
    let url = oras::userinfo_to_authorization(url, &mut headers);
    let mut req = DownloadRequest::new(url.clone(), output.clone());
    req.headers = headers;
    if oras::is_oras_url(&url) {
        let reference = OrasReference::parse(&url)?;
        if !req.headers.contains_key(http::header::AUTHORIZATION)
            && let Some((creds, from)) = oras_credentials(&cli, &reference)?
        {
            if !cli.quiet {
                eprintln!(
                    "dfget: registry {} as user {:?} (credentials from {from})",
                    reference.registry,
                    creds.username()
                );
            }
            req.headers
                .insert(http::header::AUTHORIZATION, creds.basic_header());
        }
    }
    req.overwrite = cli.overwrite;
    req.timeout = cli.timeout;
    req.concurrency = usize::from(cli.concurrency);
    req.source.insecure = cli.insecure;
    req.digest = cli
        .digest
        .as_deref()
        .map(str::parse::<Digest>)
        .transpose()
        .context("--digest")?;
    req.piece_length = cli.piece_length.as_deref().map(parse_size).transpose()?;

    let mut bar = None;
    let lines;
    let progress: &dyn Progress = if cli.quiet {
        &()
    } else if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        &*bar.insert(Bar(pb))
    } else {
        lines = Lines {
            state: Mutex::new((None, Instant::now())),
            started: Instant::now(),
        };
        &lines
    };
    let result = match daemon_client(&cli.daemon_sock, cli.standalone, cli.quiet).await {
        Some(mut client) => match dfdaemon::client::download(&mut client, &req, progress).await {
            Err(standalone::DownloadError::DaemonDeclined { message, .. }) => {
                if !cli.quiet {
                    eprintln!(
                        "dfget: the daemon cannot download it ({message}); downloading without the daemon"
                    );
                }
                standalone::download(&req, progress).await
            }
            other => other,
        },
        None => standalone::download(&req, progress).await,
    };
    if let Some(Bar(pb)) = &bar {
        pb.finish_and_clear();
    }
    let summary = result?;
    if !cli.quiet {
        let secs = summary.elapsed.as_secs_f64().max(1e-6);
        let mut line = format!(
            "dfget: {} -> {}: {} in {:.2}s ({}/s)",
            url,
            output.display(),
            bytesize::ByteSize(summary.content_length).display().iec(),
            secs,
            bytesize::ByteSize((summary.content_length as f64 / secs) as u64)
                .display()
                .iec(),
        );
        if let Some(d) = &summary.digest {
            line.push_str(&format!(", digest {d} verified"));
        }
        if summary.mode == standalone::Mode::Daemon {
            line.push_str(" (through the local daemon)");
        }
        println!("{line}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Daemon(args)) = &cli.command {
        return dfdaemon::daemon::cli::run(args);
    }
    let runtime = match dfdaemon::daemon::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfget: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                return Err(anyhow::anyhow!("cannot handle SIGINT/SIGTERM: {e}"));
            }
        };
        // Dropping the download on a signal drops its temporary file (removed) first.
        tokio::select! {
            r = run(cli) => r.map(|()| None),
            _ = int.recv() => Ok(Some(("SIGINT", 130))),
            _ = term.recv() => Ok(Some(("SIGTERM", 143))),
        }
    });
    // A blocking write (into a FIFO nobody reads) must not keep an interrupted dfget alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some((name, code))) => {
            eprintln!("dfget: interrupted by {name}; the partial download was removed");
            std::process::ExitCode::from(code)
        }
        Err(e) => {
            // The error and its causes, each said once (anyhow's `{:#}` repeats a cause whose
            // text the message already holds).
            eprintln!(
                "dfget: error: {}",
                dragonfly_common::error::chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}
