//! Real daemon and dfget processes for the output-path tests (`#[path = "support/procs.rs"] mod procs;`).

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `dfget daemon` process; killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its directory: config, `data/`, `log/`, the socket.
    pub dir: PathBuf,
}

impl Daemon {
    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("dfdaemon.sock")
    }
    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a daemon in `dir` (no parents, no scheduler) and wait for its socket.
pub fn start_daemon(dir: &Path, multiplex: bool) -> Daemon {
    std::fs::create_dir_all(dir).expect("daemon dir");
    let cfg = format!(
        "dataDir: {d}/data\nlogDir: {d}/log\ngcInterval: 1m\n\
         download:\n  unixListen:\n    socket: {d}/dfdaemon.sock\n\
         upload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {port}\n\
         storage:\n  multiplex: {multiplex}\n",
        d = dir.display(),
        port = free_port(),
    );
    std::fs::write(dir.join("dfget.yaml"), cfg).expect("write config");
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
    let child = Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args(["daemon", "--config"])
        .arg(dir.join("dfget.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn the daemon");
    let d = Daemon {
        child,
        dir: dir.to_path_buf(),
    };
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(d.socket()).is_ok() {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "daemon in {} did not start: {}",
        dir.display(),
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
    );
}

/// A dfget command talking to `socket` (a missing socket: standalone).
pub fn dfget_cmd(socket: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"));
    c.args(args)
        .env("DFGET_DAEMON_SOCK", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Run dfget to the end.
pub async fn dfget(socket: &Path, args: &[&str]) -> Output {
    dfget_cmd(socket, args).output().await.expect("run dfget")
}

/// dfget's stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert dfget succeeded.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "dfget failed: {}", stderr(o));
}

/// The names in `dir` that look like a temporary download file.
pub fn parts_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".part"))
        .collect();
    names.sort();
    names
}

/// Wait until `dir` holds a temporary download file whose name contains `marker`.
pub async fn wait_part(dir: &Path, marker: &str) -> String {
    for _ in 0..1000 {
        if let Some(p) = parts_in(dir).into_iter().find(|n| n.contains(marker)) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {marker} part file appeared in {}", dir.display());
}

/// Send `signal` (e.g. `TERM`, `KILL`) to a process with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let s = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(s.success(), "kill -{signal} {pid} failed");
}
