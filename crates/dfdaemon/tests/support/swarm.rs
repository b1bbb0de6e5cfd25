//! Real processes for swarm tests: the `scheduler` binary, `dfdaemon`s on their own 127.0.x.y
//! addresses, and dfget. Included by the test files that need them with
//! `#[path = "support/swarm.rs"] mod swarm;`.
#![allow(dead_code)] // each test file uses a different part

use dragonfly_common::task_id::TaskId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The scheduler binary, built next to dfdaemon by `cargo test --workspace` (`make test`).
pub fn scheduler_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_dfdaemon")).with_file_name("scheduler");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (`cargo test --workspace` or `make test`)",
        p.display()
    );
    p
}

pub struct Proc {
    pub child: Child,
    pub dir: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Scheduler {
    pub proc: Proc,
    pub port: u16,
}

impl Scheduler {
    pub fn start(dir: &Path, seed_peers: bool) -> Scheduler {
        Self::start_on(dir, free_port(), seed_peers)
    }

    pub fn start_on(dir: &Path, port: u16, seed_peers: bool) -> Scheduler {
        Self::start_with(dir, port, seed_peers, "")
    }

    /// A scheduler whose config ends with `extra_yaml` (top-level sections).
    pub fn start_with(dir: &Path, port: u16, seed_peers: bool, extra_yaml: &str) -> Scheduler {
        std::fs::create_dir_all(dir).unwrap();
        let cfg = format!(
            "server:\n  listenIP: 127.0.0.1\n  port: {port}\n  logDir: {d}\nseedPeer:\n  enable: {seed_peers}\n{extra_yaml}",
            d = dir.display()
        );
        std::fs::write(dir.join("scheduler.yaml"), cfg).unwrap();
        let child = Command::new(scheduler_bin())
            .arg("--config")
            .arg(dir.join("scheduler.yaml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let s = Scheduler {
            proc: Proc {
                child,
                dir: dir.to_path_buf(),
            },
            port,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "scheduler did not start: {}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.proc.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whether this scheduler knows `task` (its StatTask over gRPC).
    pub async fn knows(&self, task: &TaskId) -> bool {
        let mut c = dragonfly_proto::SchedulerClient::connect(format!("http://{}", self.addr()))
            .await
            .unwrap();
        c.stat_task(dragonfly_proto::scheduler::v1::StatTaskRequest {
            task_id: task.to_string(),
        })
        .await
        .is_ok()
    }
}

pub struct Daemon {
    pub proc: Proc,
    pub ip: String,
    pub port: u16,
}

impl Daemon {
    pub fn start(dir: &Path, ip: &str, schedulers: &[String], seed: bool) -> Daemon {
        Self::start_with(dir, ip, schedulers, seed, 16)
    }

    pub fn start_with(
        dir: &Path,
        ip: &str,
        schedulers: &[String],
        seed: bool,
        concurrent_pieces: u32,
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let addrs: Vec<String> = schedulers.iter().map(|s| format!("\"{s}\"")).collect();
        let cfg = format!(
            "dataDir: {d}/data\nlogDir: {d}/log\nhost:\n  hostname: {name}\n\
             scheduler:\n  netAddrs: [{addrs}]\n  scheduleTimeout: 10s\n  announceInterval: 1s\n\
             seedPeer:\n  enable: {seed}\n\
             download:\n  unixListen:\n    socket: {d}/dfdaemon.sock\n  pieceDownloadTimeout: 10s\n  concurrentPieceCount: {concurrent_pieces}\n\
             upload:\n  tcpListen:\n    listen: {ip}\n    port: {port}\n\
             storage:\n  multiplex: true\n",
            d = dir.display(),
            name = dir.file_name().unwrap().to_string_lossy(),
            addrs = addrs.join(", "),
        );
        std::fs::write(dir.join("dfget.yaml"), cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dfdaemon"))
            .arg("--config")
            .arg(dir.join("dfget.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let d = Daemon {
            proc: Proc {
                child,
                dir: dir.to_path_buf(),
            },
            ip: ip.to_string(),
            port,
        };
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(d.socket()).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "daemon in {} did not start: {}",
            dir.display(),
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
    }

    pub fn socket(&self) -> PathBuf {
        self.proc.dir.join("dfdaemon.sock")
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.proc.dir.join("log/core.log")).unwrap_or_default()
    }

    /// Pieces per origin ("source" or a parent's ip:port) of the last finished task.
    pub fn fed(&self) -> BTreeMap<String, u32> {
        let log = self.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("peer task done, cost: "))
            .unwrap_or_else(|| panic!("no finished task in {}:\n{log}", self.proc.dir.display()));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["from"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, n) = kv.rsplit_once('=').unwrap();
                (k.to_string(), n.parse().unwrap())
            })
            .collect()
    }
}

pub async fn dfget(d: &Daemon, url: &str, out: &Path, digest: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args([url, "-O", out.to_str().unwrap(), "--digest", digest, "-q"])
        .env("DFGET_DAEMON_SOCK", d.socket())
        .output()
        .await
        .unwrap()
}

pub fn assert_ok(o: &Output, who: &str) {
    assert!(
        o.status.success(),
        "dfget on {who} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Reads a file and compares it with `data` without printing 256 MiB on failure.
pub fn same(path: &Path, data: &[u8]) -> bool {
    std::fs::read(path).map(|b| b == data).unwrap_or(false)
}

pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
