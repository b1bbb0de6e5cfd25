//! `dforigin`: serve a directory over HTTP with Range support and count what is served.
//! Used by `make demo` and the benchmarks. `GET /_stats` returns the counters as JSON.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "A counting HTTP origin for demos and tests")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory whose files are served.
    #[arg(long)]
    dir: PathBuf,
    /// Create FILE=SIZE_MIB in --dir with deterministic content before serving (repeatable).
    #[arg(long, value_name = "NAME=MIB")]
    generate: Vec<String>,
    /// Cap the body bytes per second of all connections together (e.g. 100M, 1.5G, 65536;
    /// units are binary). Unset: no cap.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    rate_limit: Option<u64>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    testkit::origin::parse_size(s).ok_or_else(|| format!("{s:?} is not a size like 100M"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    for spec in &cli.generate {
        let (name, mib) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--generate {spec:?}: expected NAME=MIB"))?;
        let mib: u64 = mib
            .parse()
            .map_err(|_| anyhow::anyhow!("--generate {spec:?}: {mib:?} is not a number of MiB"))?;
        let path = cli.dir.join(name);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(mib << 20) {
            testkit::data::write_random_file(&path, 42, mib << 20)?;
        }
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.listen))?;
    eprintln!(
        "dforigin: serving {} on http://{}",
        cli.dir.display(),
        listener.local_addr()?
    );
    let mut origin = testkit::origin::Origin::with_dir(cli.dir);
    if let Some(rate) = cli.rate_limit {
        origin = origin.with_rate_limit(rate);
        eprintln!("dforigin: body bytes capped at {rate} bytes/s for all connections together");
    }
    let stats = origin.stats();
    testkit::origin::serve(listener, origin, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    eprintln!("dforigin: {}", stats.to_json());
    Ok(())
}
