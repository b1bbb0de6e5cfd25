//! Real daemon processes (`dfget daemon`) for the integration tests, and dfget run against them.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub upload_port: u16,
}

impl Daemon {
    /// Start a daemon in `dir` with static `parents` (their upload ports) and its upload
    /// server on `upload_port`.
    pub fn start(dir: &Path, parents: &[u16], upload_port: u16) -> Daemon {
        Self::start_with(dir, parents, upload_port, "")
    }

    /// [`Daemon::start`] with more YAML appended to its config (top-level sections).
    pub fn start_with(dir: &Path, parents: &[u16], upload_port: u16, extra: &str) -> Daemon {
        Self::start_full(dir, parents, upload_port, "", extra)
    }

    /// [`Daemon::start_with`], with `download` lines (indented two spaces) added to the
    /// `download:` section.
    pub fn start_full(
        dir: &Path,
        parents: &[u16],
        upload_port: u16,
        download: &str,
        extra: &str,
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let parents: Vec<String> = parents
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let cfg = format!(
            "dataDir: {d}/data\nlogDir: {d}/log\ngcInterval: 1m\n\
             download:\n  unixListen:\n    socket: {d}/dfdaemon.sock\n  parents: [{p}]\n{download}\
             upload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {upload_port}\n{extra}",
            d = dir.display(),
            p = parents.join(", ")
        );
        std::fs::write(dir.join("dfget.yaml"), cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dfget"))
            .args(["daemon", "--config"])
            .arg(dir.join("dfget.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            upload_port,
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

    pub fn socket(&self) -> PathBuf {
        self.dir.join("dfdaemon.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/core.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit (the graceful shutdown).
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success(), "kill -TERM {pid}");
        for _ in 0..200 {
            if let Some(code) = self.child.try_wait().unwrap() {
                assert!(code.success(), "daemon exited with {code}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit within 10 s of SIGTERM");
    }

    /// Kill the process and wait for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Run dfget against this daemon (the arguments are taken at once, so several runs can be
    /// joined).
    pub fn dfget(&self, args: &[&str]) -> impl std::future::Future<Output = Output> + 'static {
        dfget_at(&self.socket(), args)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run dfget against the daemon listening on `socket`.
pub fn dfget_at(socket: &Path, args: &[&str]) -> impl std::future::Future<Output = Output> + use<> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"));
    cmd.args(args).env("DFGET_DAEMON_SOCK", socket);
    async move { cmd.output().await.unwrap() }
}

/// dfget's stdout, after asserting it succeeded.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "dfget failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dfget's stderr, after asserting it failed.
pub fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "dfget succeeded but should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one content file under a daemon's data directory.
pub fn content_file(data_dir: &Path) -> PathBuf {
    let mut stack = vec![data_dir.join("content")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                return p;
            }
        }
    }
    panic!("no content file under {}", data_dir.display());
}

/// Overwrite bytes of a file in place.
pub fn scribble(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}
