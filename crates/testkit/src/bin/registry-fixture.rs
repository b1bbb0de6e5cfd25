//! `registry-fixture`: a real TLS registry with pushed test images, for benchmark scripts.
//!
//! Generates a CA and a server certificate for the host name, starts `docker-registry` on a free
//! port (see [`testkit::registry::Registry`]), pushes every `--image`, writes a shell-sourceable
//! `--env-file` (port, certificates, digests) and serves until SIGTERM or SIGINT, when the
//! registry is stopped. Layer files are deleted once pushed (the registry holds the bytes).

use anyhow::Context;
use clap::Parser;
use std::fmt::Write as _;
use std::path::PathBuf;
use testkit::registry::{ImageSpec, Pki, Registry, RegistryOptions};

#[derive(Parser)]
#[command(about = "Start a TLS docker-registry, push test images, print how to reach them")]
struct Cli {
    /// Directory for certificates, registry config, logs and storage (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Host name of the registry (mapped to 127.0.0.1 in /etc/hosts; needs root the first time).
    #[arg(long, default_value = testkit::registry::DEFAULT_HOST)]
    host: String,
    /// An image to push: REPO:TAG=MIB[,MIB...], one random-data layer per size (repeatable).
    #[arg(long, value_name = "REPO:TAG=MIB,...")]
    image: Vec<String>,
    /// Seed of the layer contents (same seed and sizes, same digests).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to write the shell variables once everything is pushed (written atomically).
    #[arg(long)]
    env_file: PathBuf,
}

/// One `--image` argument.
struct ImageArg {
    repo: String,
    tag: String,
    mib: Vec<u64>,
}

fn parse_image(s: &str) -> anyhow::Result<ImageArg> {
    let (reference, sizes) = s
        .split_once('=')
        .with_context(|| format!("--image {s:?}: expected REPO:TAG=MIB[,MIB...]"))?;
    let (repo, tag) = reference
        .rsplit_once(':')
        .with_context(|| format!("--image {s:?}: {reference:?} has no :TAG"))?;
    let mib = sizes
        .split(',')
        .map(|m| {
            m.trim()
                .parse::<u64>()
                .with_context(|| format!("--image {s:?}: {m:?} is not a number of MiB"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ImageArg {
        repo: repo.to_string(),
        tag: tag.to_string(),
        mib,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let images = cli
        .image
        .iter()
        .map(|s| parse_image(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&cli.dir)
        .with_context(|| format!("cannot create {}", cli.dir.display()))?;
    let pki = Pki::generate(&cli.dir.join("pki"), &[&cli.host])
        .context("cannot generate the registry's certificates")?;
    let registry = Registry::start(
        RegistryOptions::new(&pki)
            .host(&cli.host)
            .dir(cli.dir.join("registry")),
    )
    .await
    .context("cannot start docker-registry (apt-get install docker-registry)")?;
    let client = registry.client()?;

    let mut env = String::new();
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    writeln!(env, "REG_HOST={}", cli.host)?;
    writeln!(env, "REG_PORT={}", registry.port())?;
    writeln!(env, "REG_PID={}", registry.pid())?;
    writeln!(env, "ORIGIN_CA={}", q(&pki.ca_cert()))?;
    writeln!(env, "SERVER_CERT={}", q(&pki.server_cert()))?;
    writeln!(env, "SERVER_KEY={}", q(&pki.server_key()))?;
    writeln!(env, "REG_ACCESS_LOG={}", q(registry.access_log()))?;
    for (i, img) in images.iter().enumerate() {
        let layers_dir = cli.dir.join(format!("layers-{i}"));
        let spec = ImageSpec::new(
            &img.repo,
            &img.tag,
            &img.mib.iter().map(|m| m << 20).collect::<Vec<_>>(),
            cli.seed + i as u64,
        );
        let started = std::time::Instant::now();
        let image = client
            .push_new_image(&spec, &layers_dir)
            .await
            .with_context(|| format!("cannot build and push {}:{}", img.repo, img.tag))?;
        std::fs::remove_dir_all(&layers_dir)
            .with_context(|| format!("cannot remove {}", layers_dir.display()))?;
        eprintln!(
            "registry-fixture: pushed {} ({} layers, {} MiB) in {:.1}s",
            image.reference(&registry.host_port()),
            image.layers.len(),
            image.layers_size() >> 20,
            started.elapsed().as_secs_f64()
        );
        let n = i + 1;
        let digests: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        let sizes: Vec<String> = image.layers.iter().map(|l| l.size.to_string()).collect();
        writeln!(env, "IMAGE{n}_REPO={}", image.repo)?;
        writeln!(env, "IMAGE{n}_TAG={}", image.tag)?;
        writeln!(env, "IMAGE{n}_LAYERS='{}'", digests.join(" "))?;
        writeln!(env, "IMAGE{n}_SIZES='{}'", sizes.join(" "))?;
        writeln!(env, "IMAGE{n}_BYTES={}", image.layers_size())?;
    }
    let tmp = cli.env_file.with_extension("tmp");
    std::fs::write(&tmp, env).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &cli.env_file)
        .with_context(|| format!("cannot write {}", cli.env_file.display()))?;
    eprintln!("registry-fixture: serving {} until SIGTERM", registry.url());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Dropping the handle stops the registry.
    drop(registry);
    Ok(())
}
