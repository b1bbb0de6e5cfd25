//! What several end-to-end areas share: swarm peers (`dfdaemon` processes on their own
//! 127.0.x.y addresses, talking to schedulers), schedulers, and dfget run against a peer.

use dragonfly_common::config::Duration;
use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::daemon::{DaemonBuilder, DaemonProcess, Program};
use testkit::scheduler::SchedulerProcess;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// A swarm peer in `dir` (its host name is the directory's name) whose upload server listens on
/// `ip`, announcing itself every second to `schedulers`, a seed peer if `seed`; pieces come 16
/// at a time and a parent gets 10 s a piece. Start it with `.start()`.
pub fn peer<S: AsRef<str>>(dir: &Path, ip: &str, schedulers: &[S], seed: bool) -> DaemonBuilder {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{} has no name", dir.display()));
    DaemonProcess::builder(dir)
        .program(Program::Dfdaemon)
        .upload(ip, testkit::net::free_port())
        .schedulers(schedulers)
        .multiplex(true)
        .config(|c| {
            c.host.hostname = Some(name);
            c.scheduler.schedule_timeout = Duration::from_secs(10);
            c.scheduler.announce_interval = Duration::from_secs(1);
            c.seed_peer.enable = seed;
            c.download.piece_download_timeout = Duration::from_secs(10);
        })
}

/// `count` normal peers `{name}0`, `{name}1`, ... in `work`, on 127.0.`net`.10 and up, started.
pub fn peers(
    work: &Path,
    name: &str,
    net: u8,
    count: u8,
    schedulers: &[String],
) -> Vec<DaemonProcess> {
    (0..count)
        .map(|i| {
            let ip = format!("127.0.{net}.{}", 10 + i);
            peer(&work.join(format!("{name}{i}")), &ip, schedulers, false).start()
        })
        .collect()
}

/// A scheduler in `dir` that asks seed peers first if `seed_peers`.
pub fn scheduler(dir: &Path, seed_peers: bool) -> SchedulerProcess {
    SchedulerProcess::builder(dir)
        .seed_peers(seed_peers)
        .start()
}

/// Schedulers in `work/s1` and `work/s2`, neither asking seed peers.
pub fn two_schedulers(work: &Path) -> (SchedulerProcess, SchedulerProcess) {
    (
        scheduler(&work.join("s1"), false),
        scheduler(&work.join("s2"), false),
    )
}

/// `dfget URL -O OUT --digest DIGEST -q` through `d`.
pub async fn dfget(d: &DaemonProcess, url: &str, out: &Path, digest: &str) -> Output {
    let out = out.to_str().expect("utf-8 output path");
    d.dfget(&[url, "-O", out, "--digest", digest, "-q"]).await
}

/// Asserts dfget on `who` succeeded.
pub fn assert_ok(o: &Output, who: &str) {
    assert!(
        o.status.success(),
        "dfget on {who} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `work/{name}0`, `work/{name}1`, ...: `count` output paths.
pub fn outs(work: &Path, name: &str, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| work.join(format!("{name}{i}")))
        .collect()
}

/// [`dfget`] of `url` through each of `peers` into the matching one of `outs`, not yet awaited.
pub fn dfget_all<'a>(
    peers: &'a [DaemonProcess],
    url: &'a str,
    outs: &'a [PathBuf],
    digest: &'a str,
) -> Vec<impl Future<Output = Output> + 'a> {
    peers
        .iter()
        .zip(outs)
        .map(|(p, out)| dfget(p, url, out, digest))
        .collect()
}
