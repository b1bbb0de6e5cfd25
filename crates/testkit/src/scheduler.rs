//! The workspace's `scheduler` binary as a child process, for tests that need a real one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scheduler listening on `127.0.0.1` on a free port; killed when dropped.
pub struct SchedulerProcess {
    child: Child,
    port: u16,
}

impl SchedulerProcess {
    /// Start `bin` with its config and logs in `dir`, and wait until it listens.
    ///
    /// Panics with a message naming the binary or the port when it cannot (test helper).
    pub async fn start(bin: &Path, dir: &Path) -> Self {
        Self::start_wrapped(bin, dir, &[]).await
    }

    /// [`Self::start`] through `wrapper`, a command that runs the rest of its command line in
    /// its own process (`["prlimit", "--nofile=256:4096"]`), so [`Self::pid`] is the scheduler's.
    pub async fn start_wrapped(bin: &Path, dir: &Path, wrapper: &[&str]) -> Self {
        assert!(
            bin.exists(),
            "{} is missing: build the workspace (`cargo test --workspace` or `make test`)",
            bin.display()
        );
        std::fs::create_dir_all(dir).expect("scheduler dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let cfg: PathBuf = dir.join("scheduler.yaml");
        std::fs::write(
            &cfg,
            format!(
                "server:\n  listenIP: 127.0.0.1\n  port: {port}\n  logDir: {}\n",
                dir.display()
            ),
        )
        .expect("scheduler config");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} ({wrapper:?}): {e}", bin.display()));
        let me = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the scheduler did not listen on 127.0.0.1:{port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it serves gRPC on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The dfdaemon config section that points at it.
    pub fn daemon_yaml(&self) -> String {
        format!("scheduler:\n  netAddrs: [\"127.0.0.1:{}\"]\n", self.port)
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
